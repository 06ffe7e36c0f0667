-- Schema version 2: IAM users, roles and inline policies; credentials gain a status, the
-- IAM user they belong to (none for an account's root) and, for role sessions (STS
-- AssumeRole), the session token's SHA-256, the role and the expiry.

ALTER TABLE credentials ADD COLUMN status TEXT NOT NULL DEFAULT 'Active'
    CHECK (status IN ('Active', 'Inactive'));
ALTER TABLE credentials ADD COLUMN user_name TEXT;
ALTER TABLE credentials ADD COLUMN session_token_sha256 BLOB;
ALTER TABLE credentials ADD COLUMN role_arn TEXT;
ALTER TABLE credentials ADD COLUMN role_id TEXT;
ALTER TABLE credentials ADD COLUMN session_name TEXT;
ALTER TABLE credentials ADD COLUMN expires_at REAL;

-- Serves the access key count and listing of one user.
CREATE INDEX credentials_by_user ON credentials (account_id, user_name);

-- IAM names are unique per account without regard to case, as in IAM.
CREATE TABLE iam_users (
    account_id TEXT NOT NULL,
    user_name  TEXT NOT NULL COLLATE NOCASE,
    user_id    TEXT NOT NULL UNIQUE,
    path       TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (account_id, user_name)
) STRICT;

CREATE TABLE iam_roles (
    account_id           TEXT    NOT NULL,
    role_name            TEXT    NOT NULL COLLATE NOCASE,
    role_id              TEXT    NOT NULL UNIQUE,
    path                 TEXT    NOT NULL,
    trust_policy         TEXT    NOT NULL,
    max_session_duration INTEGER NOT NULL,
    description          TEXT,
    created_at           REAL    NOT NULL,
    PRIMARY KEY (account_id, role_name)
) STRICT;

-- Inline policies of users and roles.
CREATE TABLE iam_policies (
    account_id     TEXT NOT NULL,
    principal_kind TEXT NOT NULL CHECK (principal_kind IN ('user', 'role')),
    principal_name TEXT NOT NULL COLLATE NOCASE,
    policy_name    TEXT NOT NULL,
    document       TEXT NOT NULL,
    PRIMARY KEY (account_id, principal_kind, principal_name, policy_name)
) STRICT;
