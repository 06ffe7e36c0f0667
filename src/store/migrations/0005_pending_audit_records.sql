-- Schema version 5: audit records made by operator commands (`hsm-kms reconcile --fix`,
-- `hsm-kms hsm enroll`'s copies), which run as separate processes and cannot append to the
-- running service's trail. They wait here, in order, until the service appends them to its
-- trail and deletes them. A record is a serialized CloudTrail event: never a secret.

CREATE TABLE pending_audit_records (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    record BLOB NOT NULL
) STRICT;
