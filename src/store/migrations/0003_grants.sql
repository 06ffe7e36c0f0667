-- Schema version 3: KMS grants. (Version 2 is another migration; the runner applies
-- migrations by their number, so a database may pass from 1 to 3.)
-- No key material and no grant-token secret is stored here: tokens are MACed with a
-- service-wide key kept in `settings`.

CREATE TABLE grants (
    grant_id           TEXT NOT NULL PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    account_id         TEXT NOT NULL,
    name               TEXT,
    grantee_principal  TEXT NOT NULL,
    retiring_principal TEXT,
    operations         TEXT NOT NULL,
    constraints        TEXT,
    issuing_account    TEXT NOT NULL,
    created_at         REAL NOT NULL
) STRICT;

-- Serves the delete_key cascade and per-key loading.
CREATE INDEX grants_by_key ON grants (key_id);
