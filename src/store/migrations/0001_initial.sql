-- Schema version 1: key metadata, aliases, sealed credentials, settings.
-- No key material is ever stored here.

CREATE TABLE keys (
    key_id     TEXT    NOT NULL PRIMARY KEY,
    account_id TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    version    INTEGER NOT NULL,
    doc        TEXT    NOT NULL
) STRICT;

-- Serves list_keys: one account's keys in (created_at, key_id) order.
CREATE INDEX keys_by_account ON keys (account_id, created_at, key_id);

CREATE TABLE aliases (
    account_id TEXT NOT NULL,
    alias_name TEXT NOT NULL,
    key_id     TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (account_id, alias_name)
) STRICT;

-- Serves the delete_key cascade and the key_id filter of list_aliases.
CREATE INDEX aliases_by_key ON aliases (key_id);

CREATE TABLE credentials (
    access_key_id TEXT NOT NULL PRIMARY KEY,
    account_id    TEXT NOT NULL,
    principal_arn TEXT NOT NULL,
    sealed_secret BLOB NOT NULL,
    created_at    REAL NOT NULL
) STRICT;

CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
