//! SQLite implementation of [`MetadataStore`]: connection setup (WAL, `synchronous=FULL`,
//! foreign keys, busy timeout), versioned schema migrations via `PRAGMA user_version`,
//! keyset pagination, and the mapping of SQLite errors onto [`StoreError`].
//!
//! Timestamps are `REAL` columns of epoch seconds with millisecond precision (the same
//! numbers the API answers with), converted to and from `OffsetDateTime` here.
//!
//! One connection behind a mutex serves both reads and writes. Every write runs in a
//! `BEGIN IMMEDIATE` transaction and returns only after `COMMIT`, which under WAL with
//! `synchronous=FULL` has been fsynced; a process killed right after a call returns loses
//! nothing.

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{ffi, params, Connection, OptionalExtension, Row, TransactionBehavior};
use time::OffsetDateTime;

use super::{
    AliasRow, CredentialRow, GrantRow, IamPolicyRow, IamPrincipalKind, IamRoleRow, IamUserRow,
    KeyPosition, KeyRow, MetadataStore, Page, SessionRow, StoreError, StoreResult,
};

/// Schema migrations by number, in increasing order; after migration `n` the database's
/// `user_version` is `n`. Numbers need not be contiguous (branches number their migrations
/// ahead of merging), but never edit a released entry or renumber it: append a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (3, include_str!("migrations/0003_grants.sql")),
    (4, include_str!("migrations/0004_iam.sql")),
    (5, include_str!("migrations/0005_pending_audit_records.sql")),
];

/// The schema version after every migration.
fn latest_schema() -> i64 {
    MIGRATIONS.last().map_or(0, |(n, _)| *n)
}

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const KEY_COLUMNS: &str = "key_id, account_id, created_at, version, doc";
const ALIAS_COLUMNS: &str = "account_id, alias_name, key_id, created_at, updated_at";
const GRANT_COLUMNS: &str = "grant_id, key_id, account_id, name, grantee_principal, \
     retiring_principal, operations, constraints, issuing_account, created_at";
const CREDENTIAL_COLUMNS: &str =
    "access_key_id, account_id, principal_arn, sealed_secret, created_at, status, user_name, \
     session_token_sha256, role_arn, role_id, session_name, expires_at";
const IAM_USER_COLUMNS: &str = "account_id, user_name, user_id, path, created_at";
const IAM_ROLE_COLUMNS: &str = "account_id, role_name, role_id, path, trust_policy, \
     max_session_duration, description, created_at";
const IAM_POLICY_COLUMNS: &str =
    "account_id, principal_kind, principal_name, policy_name, document";

/// A [`MetadataStore`] backed by one SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Fails if the file's schema is newer than this binary understands.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        create_private_file(path)?;
        let conn = Connection::open(path).map_err(sql_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "could not enable WAL journal mode (got {mode:?})"
            )));
        }
        Self::init(conn)
    }

    /// An empty, private, non-durable store (tests and tooling).
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        Self::init(Connection::open_in_memory().map_err(sql_err)?)
    }

    fn init(mut conn: Connection) -> StoreResult<SqliteStore> {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql_err)?;
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .map_err(sql_err)?;
        if fk != 1 {
            return Err(StoreError::Backend("could not enable foreign keys".into()));
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction and commits it; any error rolls back.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(sql_err)?;
        Ok(out)
    }

    /// Runs `f` (a single statement, hence a consistent snapshot) on the shared connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        f(&self.conn.lock())
    }
}

/// Run a cached SELECT and collect every row through `f`.
fn select<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    c.prepare_cached(sql)?.query_map(params, f)?.collect()
}

/// Creates the database file owner-readable only (it holds sealed secrets); SQLite gives its
/// `-wal` and `-shm` files the same permissions.
fn create_private_file(path: &Path) -> StoreResult<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))
}

/// Applies every migration past the database's `user_version`, each in its own transaction
/// together with the version bump.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql_err)?;
    let latest = latest_schema();
    if current > latest {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this binary supports ({latest})"
        )));
    }
    for (n, sql) in MIGRATIONS.iter().filter(|(n, _)| *n > current) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(sql_err)?;
        tx.execute_batch(sql).map_err(sql_err)?;
        tx.pragma_update(None, "user_version", n).map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        tracing::info!(schema_version = n, "metadata store migrated");
    }
    Ok(())
}

/// Maps a SQLite error onto the store's vocabulary. Given this schema, a primary-key
/// violation means a duplicate identity and a foreign-key violation means an alias was
/// pointed at a key that does not exist.
fn sql_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.extended_code {
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => {
                return StoreError::AlreadyExists
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => return StoreError::NotFound,
            _ => {}
        }
    }
    StoreError::Backend(e.to_string())
}

/// A timestamp as stored: epoch seconds, milliseconds exact (finer parts truncated).
fn to_real(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos().div_euclid(1_000_000) as f64 / 1000.0
}

/// A stored timestamp, rounded to the millisecond; `None` if it is no representable date.
fn from_real(secs: f64) -> Option<OffsetDateTime> {
    if !secs.is_finite() {
        return None;
    }
    let ms = (secs * 1000.0).round() as i128; // saturates; the range check follows
    OffsetDateTime::from_unix_timestamp_nanos(ms.checked_mul(1_000_000)?).ok()
}

/// Reads timestamp column `i`.
fn time_col(r: &Row<'_>, i: usize) -> rusqlite::Result<OffsetDateTime> {
    let secs: f64 = r.get(i)?;
    from_real(secs).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Real,
            format!("timestamp out of range: {secs}").into(),
        )
    })
}

fn doc_text(doc: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(doc).map_err(|e| StoreError::Backend(format!("encoding doc: {e}")))
}

/// Columns of a `keys` row before the doc is parsed (parsing errors are not SQL errors).
type RawKey = (String, String, OffsetDateTime, i64, String);

fn raw_key(r: &Row<'_>) -> rusqlite::Result<RawKey> {
    Ok((r.get(0)?, r.get(1)?, time_col(r, 2)?, r.get(3)?, r.get(4)?))
}

fn key_row((key_id, account_id, created_at, version, doc): RawKey) -> StoreResult<KeyRow> {
    let doc = serde_json::from_str(&doc)
        .map_err(|e| StoreError::Backend(format!("corrupt doc for key {key_id}: {e}")))?;
    Ok(KeyRow {
        key_id,
        account_id,
        created_at,
        version,
        doc,
    })
}

fn alias_row(r: &Row<'_>) -> rusqlite::Result<AliasRow> {
    Ok(AliasRow {
        account_id: r.get(0)?,
        alias_name: r.get(1)?,
        key_id: r.get(2)?,
        created_at: time_col(r, 3)?,
        updated_at: time_col(r, 4)?,
    })
}

/// Columns of a `grants` row before its JSON columns are parsed.
type RawGrant = (GrantRow, String, Option<String>);

fn raw_grant(r: &Row<'_>) -> rusqlite::Result<RawGrant> {
    Ok((
        GrantRow {
            grant_id: r.get(0)?,
            key_id: r.get(1)?,
            account_id: r.get(2)?,
            name: r.get(3)?,
            grantee_principal: r.get(4)?,
            retiring_principal: r.get(5)?,
            operations: Vec::new(),
            constraints: None,
            issuing_account: r.get(8)?,
            created_at: time_col(r, 9)?,
        },
        r.get(6)?,
        r.get(7)?,
    ))
}

fn grant_row((mut row, operations, constraints): RawGrant) -> StoreResult<GrantRow> {
    let bad = |e: serde_json::Error| {
        StoreError::Backend(format!("grant {}: bad stored JSON: {e}", row.grant_id))
    };
    row.operations = serde_json::from_str(&operations).map_err(bad)?;
    row.constraints = constraints
        .map(|c| serde_json::from_str(&c))
        .transpose()
        .map_err(bad)?;
    Ok(row)
}

fn credential_row(r: &Row<'_>) -> rusqlite::Result<CredentialRow> {
    let status: String = r.get(5)?;
    let token: Option<Vec<u8>> = r.get(7)?;
    let session = match token {
        None => None,
        Some(t) => {
            let token_sha256: [u8; 32] = t.as_slice().try_into().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(
                    7,
                    rusqlite::types::Type::Blob,
                    "session token hash is not 32 bytes".into(),
                )
            })?;
            let expires: Option<f64> = r.get(11)?;
            let expires_at = expires.and_then(from_real).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    11,
                    rusqlite::types::Type::Real,
                    "session without a readable expiry".into(),
                )
            })?;
            Some(SessionRow {
                token_sha256,
                role_arn: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                role_id: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
                session_name: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                expires_at,
            })
        }
    };
    Ok(CredentialRow {
        access_key_id: r.get(0)?,
        account_id: r.get(1)?,
        principal_arn: r.get(2)?,
        sealed_secret: r.get(3)?,
        created_at: time_col(r, 4)?,
        active: status == "Active",
        user_name: r.get(6)?,
        session,
    })
}

fn iam_user_row(r: &Row<'_>) -> rusqlite::Result<IamUserRow> {
    Ok(IamUserRow {
        account_id: r.get(0)?,
        user_name: r.get(1)?,
        user_id: r.get(2)?,
        path: r.get(3)?,
        created_at: time_col(r, 4)?,
    })
}

fn iam_role_row(r: &Row<'_>) -> rusqlite::Result<IamRoleRow> {
    Ok(IamRoleRow {
        account_id: r.get(0)?,
        role_name: r.get(1)?,
        role_id: r.get(2)?,
        path: r.get(3)?,
        trust_policy: r.get(4)?,
        max_session_duration: r.get(5)?,
        description: r.get(6)?,
        created_at: time_col(r, 7)?,
    })
}

fn kind_text(k: IamPrincipalKind) -> &'static str {
    match k {
        IamPrincipalKind::User => "user",
        IamPrincipalKind::Role => "role",
    }
}

fn iam_policy_row(r: &Row<'_>) -> rusqlite::Result<IamPolicyRow> {
    let kind: String = r.get(1)?;
    Ok(IamPolicyRow {
        account_id: r.get(0)?,
        principal_kind: if kind == "role" {
            IamPrincipalKind::Role
        } else {
            IamPrincipalKind::User
        },
        principal_name: r.get(2)?,
        policy_name: r.get(3)?,
        document: r.get(4)?,
    })
}

/// Inserts a credential row (every column) inside `tx`.
fn insert_credential(tx: &rusqlite::Transaction<'_>, row: &CredentialRow) -> StoreResult<()> {
    let s = row.session.as_ref();
    tx.prepare_cached(&format!(
        "INSERT INTO credentials ({CREDENTIAL_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            row.access_key_id,
            row.account_id,
            row.principal_arn,
            row.sealed_secret,
            to_real(row.created_at),
            if row.active { "Active" } else { "Inactive" },
            row.user_name,
            s.map(|s| s.token_sha256.to_vec()),
            s.map(|s| s.role_arn.as_str()),
            s.map(|s| s.role_id.as_str()),
            s.map(|s| s.session_name.as_str()),
            s.map(|s| to_real(s.expires_at)),
        ])
    })
    .map_err(sql_err)?;
    Ok(())
}

/// Writes (creates or replaces) an inline policy inside `tx`.
fn upsert_policy(tx: &rusqlite::Transaction<'_>, p: &IamPolicyRow) -> StoreResult<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO iam_policies ({IAM_POLICY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (account_id, principal_kind, principal_name, policy_name)
         DO UPDATE SET document = excluded.document"
    ))
    .and_then(|mut s| {
        s.execute(params![
            p.account_id,
            kind_text(p.principal_kind),
            p.principal_name,
            p.policy_name,
            p.document
        ])
    })
    .map_err(sql_err)?;
    Ok(())
}

/// Whether a query counting rows finds any.
fn any_row(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> StoreResult<bool> {
    tx.prepare_cached(sql)
        .and_then(|mut s| s.query_row(p, |r| r.get::<_, i64>(0)))
        .map(|n| n > 0)
        .map_err(sql_err)
}

/// Turns `limit + 1` fetched rows into a page of at most `limit` items.
fn paginate<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let truncated = items.len() > limit;
    items.truncate(limit);
    Page { items, truncated }
}

/// SQLite `LIMIT` for fetching one row more than a page holds (0 is treated as 1).
fn fetch_limit(limit: usize) -> (usize, i64) {
    let limit = limit.max(1);
    (limit, i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1)
}

impl MetadataStore for SqliteStore {
    fn insert_key(&self, row: &KeyRow) -> StoreResult<()> {
        let doc = doc_text(&row.doc)?;
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO keys (key_id, account_id, created_at, version, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    row.key_id,
                    row.account_id,
                    to_real(row.created_at),
                    row.version,
                    doc
                ])
            })
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn get_key(&self, key_id: &str) -> StoreResult<Option<KeyRow>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = ?1"))
                .and_then(|mut s| s.query_row([key_id], raw_key).optional())
                .map_err(sql_err)?
                .map(key_row)
                .transpose()
        })
    }

    fn update_key(
        &self,
        key_id: &str,
        expected_version: i64,
        doc: &serde_json::Value,
    ) -> StoreResult<i64> {
        let doc = doc_text(doc)?;
        self.write(|tx| {
            let stored: Option<i64> = tx
                .prepare_cached("SELECT version FROM keys WHERE key_id = ?1")
                .and_then(|mut s| s.query_row([key_id], |r| r.get(0)).optional())
                .map_err(sql_err)?;
            let stored = stored.ok_or(StoreError::NotFound)?;
            if stored != expected_version {
                return Err(StoreError::Conflict(format!(
                    "key {key_id}: expected version {expected_version}, stored version {stored}"
                )));
            }
            let new_version = stored
                .checked_add(1)
                .ok_or_else(|| StoreError::Conflict(format!("key {key_id}: version overflow")))?;
            tx.prepare_cached("UPDATE keys SET doc = ?2, version = ?3 WHERE key_id = ?1")
                .and_then(|mut s| s.execute(params![key_id, doc, new_version]))
                .map_err(sql_err)?;
            Ok(new_version)
        })
    }

    fn delete_key(&self, key_id: &str) -> StoreResult<()> {
        self.write(|tx| {
            // Explicit as well as ON DELETE CASCADE, so the aliases go even if the schema's
            // foreign keys were somehow not enforced.
            tx.prepare_cached("DELETE FROM aliases WHERE key_id = ?1")
                .and_then(|mut s| s.execute([key_id]))
                .map_err(sql_err)?;
            tx.prepare_cached("DELETE FROM grants WHERE key_id = ?1")
                .and_then(|mut s| s.execute([key_id]))
                .map_err(sql_err)?;
            let n = tx
                .prepare_cached("DELETE FROM keys WHERE key_id = ?1")
                .and_then(|mut s| s.execute([key_id]))
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound); // rolls back (nothing was deleted anyway)
            }
            Ok(())
        })
    }

    fn list_keys(
        &self,
        account_id: &str,
        after: Option<&KeyPosition>,
        limit: usize,
    ) -> StoreResult<Page<KeyRow>> {
        let (limit, fetch) = fetch_limit(limit);
        let raw = self.read(|c| {
            let rows = match after {
                None => select(
                    c,
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE account_id = ?1
                         ORDER BY created_at, key_id LIMIT ?2"
                    ),
                    params![account_id, fetch],
                    raw_key,
                ),
                Some(KeyPosition { created_at, key_id }) => select(
                    c,
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM keys
                         WHERE account_id = ?1 AND (created_at, key_id) > (?2, ?3)
                         ORDER BY created_at, key_id LIMIT ?4"
                    ),
                    params![account_id, to_real(*created_at), key_id, fetch],
                    raw_key,
                ),
            };
            rows.map_err(sql_err)
        })?;
        let items = raw.into_iter().map(key_row).collect::<StoreResult<_>>()?;
        Ok(paginate(items, limit))
    }

    fn all_keys(&self) -> StoreResult<Vec<KeyRow>> {
        let raw = self.read(|c| {
            select(
                c,
                &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, key_id"),
                [],
                raw_key,
            )
            .map_err(sql_err)
        })?;
        raw.into_iter().map(key_row).collect()
    }

    fn create_alias(&self, row: &AliasRow) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO aliases ({ALIAS_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    row.account_id,
                    row.alias_name,
                    row.key_id,
                    to_real(row.created_at),
                    to_real(row.updated_at)
                ])
            })
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn update_alias(
        &self,
        account_id: &str,
        alias_name: &str,
        new_key_id: &str,
        updated_at: OffsetDateTime,
    ) -> StoreResult<()> {
        let updated_at = to_real(updated_at);
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE aliases SET key_id = ?3, updated_at = ?4
                     WHERE account_id = ?1 AND alias_name = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![account_id, alias_name, new_key_id, updated_at])
                })
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn delete_alias(&self, account_id: &str, alias_name: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM aliases WHERE account_id = ?1 AND alias_name = ?2")
                .and_then(|mut s| s.execute([account_id, alias_name]))
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn get_alias(&self, account_id: &str, alias_name: &str) -> StoreResult<Option<AliasRow>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ALIAS_COLUMNS} FROM aliases WHERE account_id = ?1 AND alias_name = ?2"
            ))
            .and_then(|mut s| s.query_row([account_id, alias_name], alias_row).optional())
            .map_err(sql_err)
        })
    }

    fn list_aliases(
        &self,
        account_id: &str,
        key_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<AliasRow>> {
        let (limit, fetch) = fetch_limit(limit);
        let items = self.read(|c| {
            select(
                c,
                &format!(
                    "SELECT {ALIAS_COLUMNS} FROM aliases
                 WHERE account_id = ?1
                   AND (?2 IS NULL OR key_id = ?2)
                   AND (?3 IS NULL OR alias_name > ?3)
                 ORDER BY alias_name LIMIT ?4"
                ),
                params![account_id, key_id, after, fetch],
                alias_row,
            )
            .map_err(sql_err)
        })?;
        Ok(paginate(items, limit))
    }

    fn all_aliases(&self) -> StoreResult<Vec<AliasRow>> {
        self.read(|c| {
            select(
                c,
                &format!("SELECT {ALIAS_COLUMNS} FROM aliases ORDER BY account_id, alias_name"),
                [],
                alias_row,
            )
            .map_err(sql_err)
        })
    }

    fn insert_grant(&self, row: &GrantRow) -> StoreResult<()> {
        let operations = serde_json::to_string(&row.operations)
            .map_err(|e| StoreError::Backend(format!("encoding operations: {e}")))?;
        let constraints = row.constraints.as_ref().map(doc_text).transpose()?;
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    row.grant_id,
                    row.key_id,
                    row.account_id,
                    row.name,
                    row.grantee_principal,
                    row.retiring_principal,
                    operations,
                    constraints,
                    row.issuing_account,
                    to_real(row.created_at),
                ])
            })
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn delete_grant(&self, grant_id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM grants WHERE grant_id = ?1")
                .and_then(|mut s| s.execute([grant_id]))
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn all_grants(&self) -> StoreResult<Vec<GrantRow>> {
        let raw = self.read(|c| {
            select(
                c,
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM grants ORDER BY key_id, created_at, grant_id"
                ),
                [],
                raw_grant,
            )
            .map_err(sql_err)
        })?;
        raw.into_iter().map(grant_row).collect()
    }

    fn put_credential(&self, row: &CredentialRow) -> StoreResult<()> {
        self.write(|tx| insert_credential(tx, row))
    }

    fn credentials(&self) -> StoreResult<Vec<CredentialRow>> {
        self.read(|c| {
            select(
                c,
                &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY access_key_id"),
                [],
                credential_row,
            )
            .map_err(sql_err)
        })
    }

    fn reseal_credential(
        &self,
        access_key_id: &str,
        expected: &[u8],
        sealed: &[u8],
    ) -> StoreResult<()> {
        self.write(|tx| {
            let stored: Option<Vec<u8>> = tx
                .prepare_cached("SELECT sealed_secret FROM credentials WHERE access_key_id = ?1")
                .and_then(|mut s| s.query_row([access_key_id], |r| r.get(0)).optional())
                .map_err(sql_err)?;
            if stored.ok_or(StoreError::NotFound)? != expected {
                return Err(StoreError::Conflict(format!(
                    "credential {access_key_id}: the sealed secret changed"
                )));
            }
            tx.prepare_cached("UPDATE credentials SET sealed_secret = ?2 WHERE access_key_id = ?1")
                .and_then(|mut s| s.execute(params![access_key_id, sealed]))
                .map_err(sql_err)?;
            Ok(())
        })
    }

    fn get_setting(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM settings WHERE name = ?1")
                .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
                .map_err(sql_err)
        })
    }

    fn put_pending_record(&self, record: &[u8]) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached("INSERT INTO pending_audit_records (record) VALUES (?1)")
                .and_then(|mut s| s.execute([record]))
                .map_err(sql_err)?;
            Ok(())
        })
    }

    fn pending_records(&self, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        self.read(|c| {
            select(
                c,
                "SELECT seq, record FROM pending_audit_records ORDER BY seq LIMIT ?1",
                [limit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql_err)
        })
    }

    fn delete_pending_records(&self, through: i64) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM pending_audit_records WHERE seq <= ?1")
                .and_then(|mut s| s.execute([through]))
                .map_err(sql_err)?;
            Ok(())
        })
    }

    fn next_counter(&self, name: &str) -> StoreResult<u64> {
        self.write(|tx| {
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM settings WHERE name = ?1")
                .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
                .map_err(sql_err)?;
            let current =
                match current {
                    None => 0,
                    Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                        StoreError::Backend(format!("counter {name} is not 8 bytes"))
                    })?),
                };
            let next = current
                .checked_add(1)
                .ok_or_else(|| StoreError::Backend(format!("counter {name} is exhausted")))?;
            tx.prepare_cached(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![name, next.to_be_bytes().to_vec()]))
            .map_err(sql_err)?;
            Ok(next)
        })
    }

    fn iam_users(&self) -> StoreResult<Vec<IamUserRow>> {
        self.read(|c| {
            select(
                c,
                &format!("SELECT {IAM_USER_COLUMNS} FROM iam_users ORDER BY account_id, user_name"),
                [],
                iam_user_row,
            )
            .map_err(sql_err)
        })
    }

    fn iam_roles(&self) -> StoreResult<Vec<IamRoleRow>> {
        self.read(|c| {
            select(
                c,
                &format!("SELECT {IAM_ROLE_COLUMNS} FROM iam_roles ORDER BY account_id, role_name"),
                [],
                iam_role_row,
            )
            .map_err(sql_err)
        })
    }

    fn iam_policies(&self) -> StoreResult<Vec<IamPolicyRow>> {
        self.read(|c| {
            select(
                c,
                &format!(
                    "SELECT {IAM_POLICY_COLUMNS} FROM iam_policies
                     ORDER BY account_id, principal_kind, principal_name, policy_name"
                ),
                [],
                iam_policy_row,
            )
            .map_err(sql_err)
        })
    }

    fn create_iam_user(
        &self,
        row: &IamUserRow,
        policies: &[IamPolicyRow],
        access_keys: &[&str],
    ) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO iam_users ({IAM_USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    row.account_id,
                    row.user_name,
                    row.user_id,
                    row.path,
                    to_real(row.created_at)
                ])
            })
            .map_err(sql_err)?;
            for p in policies {
                upsert_policy(tx, p)?;
            }
            for akid in access_keys {
                let n = tx
                    .prepare_cached(
                        "UPDATE credentials SET user_name = ?2 WHERE access_key_id = ?1",
                    )
                    .and_then(|mut s| s.execute(params![akid, row.user_name]))
                    .map_err(sql_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
            }
            Ok(())
        })
    }

    fn delete_iam_user(&self, account_id: &str, user_name: &str) -> StoreResult<()> {
        self.write(|tx| {
            if !any_row(
                tx,
                "SELECT count(*) FROM iam_users WHERE account_id = ?1 AND user_name = ?2",
                params![account_id, user_name],
            )? {
                return Err(StoreError::NotFound);
            }
            if any_row(
                tx,
                "SELECT count(*) FROM credentials
                 WHERE account_id = ?1 AND user_name = ?2 COLLATE NOCASE",
                params![account_id, user_name],
            )? {
                return Err(StoreError::Conflict("access keys".into()));
            }
            if any_row(
                tx,
                "SELECT count(*) FROM iam_policies
                 WHERE account_id = ?1 AND principal_kind = 'user' AND principal_name = ?2",
                params![account_id, user_name],
            )? {
                return Err(StoreError::Conflict("policies".into()));
            }
            tx.prepare_cached("DELETE FROM iam_users WHERE account_id = ?1 AND user_name = ?2")
                .and_then(|mut s| s.execute(params![account_id, user_name]))
                .map_err(sql_err)?;
            Ok(())
        })
    }

    fn create_iam_role(&self, row: &IamRoleRow) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO iam_roles ({IAM_ROLE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    row.account_id,
                    row.role_name,
                    row.role_id,
                    row.path,
                    row.trust_policy,
                    row.max_session_duration,
                    row.description,
                    to_real(row.created_at)
                ])
            })
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn delete_iam_role(&self, account_id: &str, role_name: &str) -> StoreResult<()> {
        self.write(|tx| {
            if !any_row(
                tx,
                "SELECT count(*) FROM iam_roles WHERE account_id = ?1 AND role_name = ?2",
                params![account_id, role_name],
            )? {
                return Err(StoreError::NotFound);
            }
            if any_row(
                tx,
                "SELECT count(*) FROM iam_policies
                 WHERE account_id = ?1 AND principal_kind = 'role' AND principal_name = ?2",
                params![account_id, role_name],
            )? {
                return Err(StoreError::Conflict("policies".into()));
            }
            tx.prepare_cached("DELETE FROM iam_roles WHERE account_id = ?1 AND role_name = ?2")
                .and_then(|mut s| s.execute(params![account_id, role_name]))
                .map_err(sql_err)?;
            Ok(())
        })
    }

    fn put_iam_policy(&self, row: &IamPolicyRow) -> StoreResult<()> {
        self.write(|tx| {
            let owner = match row.principal_kind {
                IamPrincipalKind::User => {
                    "SELECT count(*) FROM iam_users WHERE account_id = ?1 AND user_name = ?2"
                }
                IamPrincipalKind::Role => {
                    "SELECT count(*) FROM iam_roles WHERE account_id = ?1 AND role_name = ?2"
                }
            };
            if !any_row(tx, owner, params![row.account_id, row.principal_name])? {
                return Err(StoreError::NotFound);
            }
            upsert_policy(tx, row)
        })
    }

    fn delete_iam_policy(
        &self,
        account_id: &str,
        kind: IamPrincipalKind,
        principal_name: &str,
        policy_name: &str,
    ) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM iam_policies WHERE account_id = ?1 AND principal_kind = ?2
                     AND principal_name = ?3 AND policy_name = ?4",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        account_id,
                        kind_text(kind),
                        principal_name,
                        policy_name
                    ])
                })
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn put_access_key(&self, row: &CredentialRow, limit: usize) -> StoreResult<()> {
        self.write(|tx| {
            let count: i64 = match &row.user_name {
                Some(user) => {
                    if !any_row(
                        tx,
                        "SELECT count(*) FROM iam_users WHERE account_id = ?1 AND user_name = ?2",
                        params![row.account_id, user],
                    )? {
                        return Err(StoreError::NotFound);
                    }
                    tx.prepare_cached(
                        "SELECT count(*) FROM credentials
                         WHERE account_id = ?1 AND user_name = ?2 COLLATE NOCASE",
                    )
                    .and_then(|mut s| s.query_row(params![row.account_id, user], |r| r.get(0)))
                    .map_err(sql_err)?
                }
                None => tx
                    .prepare_cached(
                        "SELECT count(*) FROM credentials
                         WHERE account_id = ?1 AND principal_arn = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![row.account_id, row.principal_arn], |r| r.get(0))
                    })
                    .map_err(sql_err)?,
            };
            if usize::try_from(count).unwrap_or(usize::MAX) >= limit {
                return Err(StoreError::Conflict("access key limit".into()));
            }
            insert_credential(tx, row)
        })
    }

    fn set_credential_status(&self, access_key_id: &str, active: bool) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("UPDATE credentials SET status = ?2 WHERE access_key_id = ?1")
                .and_then(|mut s| {
                    s.execute(params![
                        access_key_id,
                        if active { "Active" } else { "Inactive" }
                    ])
                })
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn delete_credential(&self, access_key_id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM credentials WHERE access_key_id = ?1")
                .and_then(|mut s| s.execute([access_key_id]))
                .map_err(sql_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> StoreResult<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![name, value]))
            .map_err(sql_err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;

    /// The time `secs` epoch seconds (millisecond precision).
    fn t(secs: f64) -> OffsetDateTime {
        from_real(secs).unwrap()
    }

    fn key(id: &str, account: &str, created_at: f64) -> KeyRow {
        KeyRow {
            key_id: id.to_owned(),
            account_id: account.to_owned(),
            created_at: t(created_at),
            version: 1,
            doc: json!({ "KeyId": id, "KeyState": "Enabled", "n": 0 }),
        }
    }

    fn alias(account: &str, name: &str, key_id: &str, secs: f64) -> AliasRow {
        AliasRow {
            account_id: account.to_owned(),
            alias_name: name.to_owned(),
            key_id: key_id.to_owned(),
            created_at: t(secs),
            updated_at: t(secs),
        }
    }

    fn cred(id: &str, secret: &[u8]) -> CredentialRow {
        CredentialRow {
            access_key_id: id.to_owned(),
            account_id: "111122223333".to_owned(),
            principal_arn: format!("arn:aws:iam::111122223333:user/{id}"),
            sealed_secret: secret.to_vec(),
            created_at: t(1_700_000_000.5),
            active: true,
            user_name: None,
            session: None,
        }
    }

    fn mem() -> SqliteStore {
        SqliteStore::open_in_memory().unwrap()
    }

    /// Follows the pages until the end, asserting every page respects `limit`.
    fn all_pages_keys(store: &SqliteStore, account: &str, limit: usize) -> Vec<KeyRow> {
        let mut out = Vec::new();
        let mut after: Option<KeyPosition> = None;
        loop {
            let page = store.list_keys(account, after.as_ref(), limit).unwrap();
            assert!(page.items.len() <= limit.max(1));
            assert!(!page.items.is_empty() || !page.truncated);
            after = page.items.last().map(KeyPosition::of);
            out.extend(page.items);
            if !page.truncated {
                return out;
            }
        }
    }

    #[test]
    fn store_is_send_sync_and_object_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SqliteStore>();
        let s: Arc<dyn MetadataStore> = Arc::new(mem());
        assert!(s.get_key("x").unwrap().is_none());
    }

    #[test]
    fn key_insert_get_duplicate() {
        let s = mem();
        let k = key("k1", "acct", 10.25);
        s.insert_key(&k).unwrap();
        assert_eq!(s.get_key("k1").unwrap(), Some(k.clone()));
        assert!(s.get_key("k2").unwrap().is_none());

        let mut dup = key("k1", "other", 99.0);
        dup.doc = json!({ "different": true });
        assert!(matches!(s.insert_key(&dup), Err(StoreError::AlreadyExists)));
        // The original is untouched.
        assert_eq!(s.get_key("k1").unwrap(), Some(k));
    }

    #[test]
    fn key_update_optimistic_concurrency() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();

        let v2 = s.update_key("k1", 1, &json!({ "n": 1 })).unwrap();
        assert_eq!(v2, 2);
        let got = s.get_key("k1").unwrap().unwrap();
        assert_eq!((got.version, got.doc), (2, json!({ "n": 1 })));

        // A writer still holding version 1 loses, and changes nothing.
        assert!(matches!(
            s.update_key("k1", 1, &json!({ "n": "stale" })),
            Err(StoreError::Conflict(_))
        ));
        // A version from the future loses too.
        assert!(matches!(
            s.update_key("k1", 3, &json!({ "n": "future" })),
            Err(StoreError::Conflict(_))
        ));
        let got = s.get_key("k1").unwrap().unwrap();
        assert_eq!((got.version, got.doc), (2, json!({ "n": 1 })));

        assert_eq!(s.update_key("k1", 2, &json!({ "n": 2 })).unwrap(), 3);
        assert!(matches!(
            s.update_key("nope", 1, &json!({})),
            Err(StoreError::NotFound)
        ));
        // Indexed columns are not touched by update.
        let got = s.get_key("k1").unwrap().unwrap();
        assert_eq!(
            (got.account_id.as_str(), got.created_at, got.version),
            ("acct", t(1.0), 3)
        );
    }

    #[test]
    fn concurrent_read_modify_write_loses_no_update() {
        let s = Arc::new(mem());
        s.insert_key(&key("k", "acct", 0.0)).unwrap();
        let threads = 8;
        let per_thread = 25;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        loop {
                            let row = s.get_key("k").unwrap().unwrap();
                            let n = row.doc["n"].as_i64().unwrap();
                            match s.update_key("k", row.version, &json!({ "n": n + 1 })) {
                                Ok(_) => break,
                                Err(StoreError::Conflict(_)) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let row = s.get_key("k").unwrap().unwrap();
        assert_eq!(row.doc["n"], json!(threads * per_thread));
        assert_eq!(row.version, 1 + threads * per_thread);
    }

    #[test]
    fn delete_key_and_not_found() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();
        s.insert_key(&key("k2", "acct", 2.0)).unwrap();
        s.delete_key("k1").unwrap();
        assert!(s.get_key("k1").unwrap().is_none());
        assert!(s.get_key("k2").unwrap().is_some());
        assert!(matches!(s.delete_key("k1"), Err(StoreError::NotFound)));
        // The id is free again.
        s.insert_key(&key("k1", "acct", 3.0)).unwrap();
    }

    #[test]
    fn delete_key_cascades_to_its_aliases_only() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();
        s.insert_key(&key("k2", "acct", 2.0)).unwrap();
        s.create_alias(&alias("acct", "alias/a", "k1", 1.0))
            .unwrap();
        s.create_alias(&alias("acct", "alias/b", "k1", 1.0))
            .unwrap();
        s.create_alias(&alias("acct", "alias/c", "k2", 1.0))
            .unwrap();

        s.delete_key("k1").unwrap();
        assert!(s.get_alias("acct", "alias/a").unwrap().is_none());
        assert!(s.get_alias("acct", "alias/b").unwrap().is_none());
        let names: Vec<_> = s
            .all_aliases()
            .unwrap()
            .into_iter()
            .map(|a| a.alias_name)
            .collect();
        assert_eq!(names, ["alias/c"]);
        // The freed alias names can be reused.
        s.create_alias(&alias("acct", "alias/a", "k2", 2.0))
            .unwrap();
    }

    fn grant(id: &str, key_id: &str, secs: f64) -> GrantRow {
        GrantRow {
            grant_id: id.to_owned(),
            key_id: key_id.to_owned(),
            account_id: "acct".to_owned(),
            name: Some("n".to_owned()),
            grantee_principal: "arn:aws:iam::111122223333:user/u".to_owned(),
            retiring_principal: None,
            operations: vec!["Encrypt".to_owned(), "Decrypt".to_owned()],
            constraints: Some(json!({"EncryptionContextSubset": {"a": "b"}})),
            issuing_account: "arn:aws:iam::111122223333:root".to_owned(),
            created_at: t(secs),
        }
    }

    #[test]
    fn grants_round_trip_and_go_with_their_key() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();
        s.insert_key(&key("k2", "acct", 2.0)).unwrap();
        let g1 = grant("g1", "k1", 3.5);
        let mut g2 = grant("g2", "k2", 4.0);
        g2.name = None;
        g2.constraints = None;
        g2.retiring_principal = Some("111122223333".to_owned());
        s.insert_grant(&g1).unwrap();
        s.insert_grant(&g2).unwrap();
        assert!(matches!(
            s.insert_grant(&g1),
            Err(StoreError::AlreadyExists)
        ));
        assert!(matches!(
            s.insert_grant(&grant("g3", "ghost", 1.0)),
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.all_grants().unwrap(), vec![g1.clone(), g2.clone()]);
        s.delete_grant("g2").unwrap();
        assert!(matches!(s.delete_grant("g2"), Err(StoreError::NotFound)));
        s.insert_grant(&g2).unwrap();
        s.delete_key("k1").unwrap();
        assert_eq!(s.all_grants().unwrap(), vec![g2]);
    }

    #[test]
    fn all_keys_spans_accounts_in_order() {
        let s = mem();
        s.insert_key(&key("b", "acct2", 5.0)).unwrap();
        s.insert_key(&key("c", "acct1", 1.0)).unwrap();
        s.insert_key(&key("a", "acct1", 5.0)).unwrap();
        let ids: Vec<_> = s
            .all_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.key_id)
            .collect();
        assert_eq!(ids, ["c", "a", "b"]);
        assert!(mem().all_keys().unwrap().is_empty());
    }

    #[test]
    fn list_keys_pagination_2500() {
        let s = mem();
        // Many created_at ties, and key ids whose order disagrees with insertion order, so
        // both sort columns matter.
        let mut expected = Vec::new();
        for i in 0..2500u32 {
            let id = format!("{:08x}-{i}", i.wrapping_mul(2_654_435_761));
            let k = key(&id, "acct", f64::from(i / 3) + 0.5);
            s.insert_key(&k).unwrap();
            expected.push(k);
        }
        for i in 0..40 {
            s.insert_key(&key(&format!("other-{i}"), "acct-other", 0.0))
                .unwrap();
        }
        expected.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        for limit in [1, 7, 1000] {
            let got = all_pages_keys(&s, "acct", limit);
            assert_eq!(got.len(), 2500, "limit {limit}");
            assert_eq!(got, expected, "limit {limit}");
        }
        // Exactly one page when everything fits; truncated only when more remain.
        let page = s.list_keys("acct", None, 2500).unwrap();
        assert_eq!((page.items.len(), page.truncated), (2500, false));
        let page = s.list_keys("acct", None, 2499).unwrap();
        assert_eq!((page.items.len(), page.truncated), (2499, true));
        let after = page.items.last().map(KeyPosition::of);
        let last = s.list_keys("acct", after.as_ref(), 2499).unwrap();
        assert_eq!(last.items, expected[2499..]);
        assert!(!last.truncated);
    }

    #[test]
    fn list_keys_edge_cases() {
        let s = mem();
        let empty = s.list_keys("acct", None, 10).unwrap();
        assert!(empty.items.is_empty() && !empty.truncated);

        for i in 0..3 {
            s.insert_key(&key(&format!("k{i}"), "acct", f64::from(i)))
                .unwrap();
        }
        // limit 0 behaves as 1 rather than looping forever.
        let p = s.list_keys("acct", None, 0).unwrap();
        assert_eq!(p.items.len(), 1);
        assert!(p.truncated);

        // A position stays valid when the key there is deleted.
        let p = s.list_keys("acct", None, 1).unwrap();
        assert_eq!(p.items[0].key_id, "k0");
        s.delete_key("k0").unwrap();
        let ids: Vec<_> = s
            .list_keys("acct", Some(&KeyPosition::of(&p.items[0])), 10)
            .unwrap()
            .items
            .into_iter()
            .map(|k| k.key_id)
            .collect();
        assert_eq!(ids, ["k1", "k2"]);
    }

    #[test]
    fn positions_resume_after_a_place_that_need_not_exist() {
        let s = mem();
        for (id, secs) in [("a", 1.0), ("b", 2.0), ("c", 2.0), ("d", 3.0)] {
            s.insert_key(&key(id, "acct", secs)).unwrap();
        }
        let after = |secs: f64, key_id: &str| {
            let p = KeyPosition {
                created_at: t(secs),
                key_id: key_id.to_owned(),
            };
            let page = s.list_keys("acct", Some(&p), 10).unwrap();
            assert!(!page.truncated);
            page.items.into_iter().map(|k| k.key_id).collect::<Vec<_>>()
        };
        assert_eq!(after(0.0, ""), ["a", "b", "c", "d"]);
        assert_eq!(after(2.0, "b"), ["c", "d"]);
        assert_eq!(after(2.0, "bb"), ["c", "d"]);
        assert_eq!(after(2.5, ""), ["d"]);
        assert!(after(3.0, "d").is_empty());

        s.create_alias(&alias("acct", "alias/a", "a", 1.0)).unwrap();
        s.create_alias(&alias("acct", "alias/c", "a", 1.0)).unwrap();
        let names: Vec<_> = s
            .list_aliases("acct", None, Some("alias/b"), 10)
            .unwrap()
            .items
            .into_iter()
            .map(|a| a.alias_name)
            .collect();
        assert_eq!(names, ["alias/c"]);
    }

    #[test]
    fn timestamps_are_epoch_seconds_with_millisecond_precision() {
        let s = mem();
        // Written as earlier versions wrote them: REAL epoch seconds.
        s.conn
            .lock()
            .execute_batch(
                "INSERT INTO keys VALUES ('old', 'acct', 1700000000.123, 1, '{}');
                 INSERT INTO aliases VALUES ('acct', 'alias/old', 'old', 1700000000.5, 1700000001.25);
                 INSERT INTO credentials (access_key_id, account_id, principal_arn, sealed_secret, created_at)
                 VALUES ('AKID', 'acct', 'arn', x'00', 1700000002.001);",
            )
            .unwrap();
        let at = |ms: i128| OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap();
        assert_eq!(
            s.get_key("old").unwrap().unwrap().created_at,
            at(1_700_000_000_123)
        );
        let a = s.get_alias("acct", "alias/old").unwrap().unwrap();
        assert_eq!(
            (a.created_at, a.updated_at),
            (at(1_700_000_000_500), at(1_700_000_001_250))
        );
        assert_eq!(
            s.credentials().unwrap()[0].created_at,
            at(1_700_000_002_001)
        );

        // Written now: the same REAL numbers; sub-millisecond parts are truncated.
        let fine = at(1_700_000_003_456) + time::Duration::nanoseconds(999_999);
        s.insert_key(&KeyRow {
            created_at: fine,
            ..key("new", "acct", 0.0)
        })
        .unwrap();
        s.update_alias("acct", "alias/old", "new", fine).unwrap();
        let reals: (f64, f64) = s
            .conn
            .lock()
            .query_row(
                "SELECT k.created_at, a.updated_at FROM keys k, aliases a
                 WHERE k.key_id = 'new' AND a.alias_name = 'alias/old'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(reals, (1_700_000_003.456, 1_700_000_003.456));
        assert_eq!(
            s.get_key("new").unwrap().unwrap().created_at,
            at(1_700_000_003_456)
        );
        // Positions compare with the stored numbers exactly.
        let after_old = KeyPosition::of(&s.get_key("old").unwrap().unwrap());
        let page = s.list_keys("acct", Some(&after_old), 10).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].key_id, "new");
    }

    #[test]
    fn ms_round_trip_is_exact_across_the_date_range() {
        for ms in [
            0i128,
            1,
            -1,
            999,
            1_700_000_000_123,
            2_147_483_647_999,
            -377_705_116_800_000,
            253_402_300_799_999,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap();
            assert_eq!(from_real(to_real(t)), Some(t), "{ms}");
        }
        assert_eq!(from_real(f64::NAN), None);
        assert_eq!(from_real(f64::INFINITY), None);
        assert_eq!(from_real(1e300), None);
        assert_eq!(from_real(-1e300), None);
    }

    #[test]
    fn alias_lifecycle_and_errors() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();
        s.insert_key(&key("k2", "acct", 2.0)).unwrap();
        let a = alias("acct", "alias/app", "k1", 100.0);
        s.create_alias(&a).unwrap();
        assert_eq!(s.get_alias("acct", "alias/app").unwrap(), Some(a.clone()));
        assert!(s.get_alias("acct2", "alias/app").unwrap().is_none());
        assert!(s.get_alias("acct", "alias/none").unwrap().is_none());

        // Same name, same account: duplicate, even pointing elsewhere.
        assert!(matches!(
            s.create_alias(&alias("acct", "alias/app", "k2", 1.0)),
            Err(StoreError::AlreadyExists)
        ));
        // Same name in another account is a different alias.
        s.create_alias(&alias("acct2", "alias/app", "k2", 1.0))
            .unwrap();
        // Target key must exist.
        assert!(matches!(
            s.create_alias(&alias("acct", "alias/dangling", "ghost", 1.0)),
            Err(StoreError::NotFound)
        ));
        assert!(s.get_alias("acct", "alias/dangling").unwrap().is_none());

        s.update_alias("acct", "alias/app", "k2", t(200.0)).unwrap();
        let got = s.get_alias("acct", "alias/app").unwrap().unwrap();
        assert_eq!(
            (got.key_id.as_str(), got.created_at, got.updated_at),
            ("k2", t(100.0), t(200.0))
        );
        assert!(matches!(
            s.update_alias("acct", "alias/none", "k1", t(1.0)),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.update_alias("acct", "alias/app", "ghost", t(300.0)),
            Err(StoreError::NotFound)
        ));
        // A failed update changes nothing.
        assert_eq!(s.get_alias("acct", "alias/app").unwrap(), Some(got));

        s.delete_alias("acct", "alias/app").unwrap();
        assert!(s.get_alias("acct", "alias/app").unwrap().is_none());
        assert!(matches!(
            s.delete_alias("acct", "alias/app"),
            Err(StoreError::NotFound)
        ));
        // The other account's alias of the same name survives.
        assert!(s.get_alias("acct2", "alias/app").unwrap().is_some());
        // Deleting an alias leaves its key alone.
        assert!(s.get_key("k1").unwrap().is_some());
    }

    #[test]
    fn list_aliases_filters_orders_and_paginates() {
        let s = mem();
        s.insert_key(&key("k1", "acct", 1.0)).unwrap();
        s.insert_key(&key("k2", "acct", 2.0)).unwrap();
        s.insert_key(&key("kx", "acct2", 2.0)).unwrap();
        let mut all = Vec::new();
        let mut on_k1 = Vec::new();
        for i in (0..25).rev() {
            let name = format!("alias/n{i:02}");
            let target = if i % 3 == 0 { "k1" } else { "k2" };
            s.create_alias(&alias("acct", &name, target, 1.0)).unwrap();
            all.push(name.clone());
            if target == "k1" {
                on_k1.push(name);
            }
        }
        s.create_alias(&alias("acct2", "alias/n00", "kx", 1.0))
            .unwrap();
        all.sort();
        on_k1.sort();

        let walk = |key_id: Option<&str>, limit: usize| {
            let mut names = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let p = s
                    .list_aliases("acct", key_id, after.as_deref(), limit)
                    .unwrap();
                assert!(p.items.len() <= limit);
                assert!(p.items.iter().all(|a| a.account_id == "acct"));
                after = p.items.last().map(|a| a.alias_name.clone());
                names.extend(p.items.into_iter().map(|a| a.alias_name));
                if !p.truncated {
                    return names;
                }
            }
        };
        for limit in [1, 4, 25, 100] {
            assert_eq!(walk(None, limit), all, "limit {limit}");
            assert_eq!(walk(Some("k1"), limit), on_k1, "limit {limit}");
        }
        assert!(walk(Some("kx"), 10).is_empty());
        let p = s.list_aliases("acct", None, None, 25).unwrap();
        assert!(!p.truncated);

        let every: Vec<_> = s
            .all_aliases()
            .unwrap()
            .into_iter()
            .map(|a| (a.account_id, a.alias_name))
            .collect();
        assert_eq!(every.len(), 26);
        assert_eq!(every[0].0, "acct");
        assert_eq!(every[25], ("acct2".to_owned(), "alias/n00".to_owned()));
    }

    #[test]
    fn credentials_roundtrip_and_duplicate() {
        let s = mem();
        assert!(s.credentials().unwrap().is_empty());
        let b = cred("AKIDB", &[0, 1, 2, 255, 0]);
        let a = cred("AKIDA", b"sealed");
        s.put_credential(&b).unwrap();
        s.put_credential(&a).unwrap();
        assert!(matches!(
            s.put_credential(&cred("AKIDA", b"other")),
            Err(StoreError::AlreadyExists)
        ));
        assert_eq!(s.credentials().unwrap(), [a, b]);
    }

    #[test]
    fn reseal_credential_replaces_only_the_expected_secret() {
        let s = mem();
        let a = cred("AKIDA", b"v1-sealed");
        s.put_credential(&a).unwrap();
        assert!(matches!(
            s.reseal_credential("AKIDA", b"something else", b"v2"),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.reseal_credential("AKIDX", b"v1-sealed", b"v2"),
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.credentials().unwrap(), std::slice::from_ref(&a));
        s.reseal_credential("AKIDA", b"v1-sealed", b"v2-sealed")
            .unwrap();
        let got = s.credentials().unwrap();
        assert_eq!(got[0].sealed_secret, b"v2-sealed".to_vec());
        // Only the sealed secret changed.
        assert_eq!(
            CredentialRow {
                sealed_secret: a.sealed_secret.clone(),
                ..got[0].clone()
            },
            a
        );
    }

    fn iam_user(name: &str) -> IamUserRow {
        IamUserRow {
            account_id: "111122223333".into(),
            user_name: name.into(),
            user_id: format!("AIDA{}", name.to_uppercase()),
            path: "/".into(),
            created_at: t(1_700_000_000.0),
        }
    }

    fn iam_policy(kind: IamPrincipalKind, owner: &str, name: &str) -> IamPolicyRow {
        IamPolicyRow {
            account_id: "111122223333".into(),
            principal_kind: kind,
            principal_name: owner.into(),
            policy_name: name.into(),
            document: "{}".into(),
        }
    }

    #[test]
    fn iam_users_keys_and_policies_with_their_conflicts() {
        let s = mem();
        s.create_iam_user(&iam_user("alice"), &[], &[]).unwrap();
        // Names are unique without regard to case.
        assert!(matches!(
            s.create_iam_user(&iam_user("ALICE"), &[], &[]),
            Err(StoreError::AlreadyExists)
        ));
        let mut key = cred("AKIAALICE1", b"s");
        key.user_name = Some("alice".into());
        s.put_access_key(&key, 2).unwrap();
        s.put_access_key(&cred_for("AKIAALICE2", "alice"), 2)
            .unwrap();
        assert!(matches!(
            s.put_access_key(&cred_for("AKIAALICE3", "alice"), 2),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.put_access_key(&cred_for("AKIANOBODY", "nobody"), 2),
            Err(StoreError::NotFound)
        ));
        s.put_iam_policy(&iam_policy(IamPrincipalKind::User, "Alice", "p1"))
            .unwrap();
        assert!(matches!(
            s.put_iam_policy(&iam_policy(IamPrincipalKind::User, "bob", "p1")),
            Err(StoreError::NotFound)
        ));
        // DeleteUser: keys first, then policies.
        assert!(
            matches!(s.delete_iam_user("111122223333", "alice"), Err(StoreError::Conflict(w)) if w == "access keys")
        );
        s.set_credential_status("AKIAALICE1", false).unwrap();
        let rows = s.credentials().unwrap();
        assert!(
            !rows
                .iter()
                .find(|r| r.access_key_id == "AKIAALICE1")
                .unwrap()
                .active
        );
        assert!(
            rows.iter()
                .find(|r| r.access_key_id == "AKIAALICE2")
                .unwrap()
                .active
        );
        s.delete_credential("AKIAALICE1").unwrap();
        s.delete_credential("AKIAALICE2").unwrap();
        assert!(matches!(
            s.delete_credential("AKIAALICE2"),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.set_credential_status("AKIAALICE2", true),
            Err(StoreError::NotFound)
        ));
        assert!(
            matches!(s.delete_iam_user("111122223333", "alice"), Err(StoreError::Conflict(w)) if w == "policies")
        );
        s.delete_iam_policy("111122223333", IamPrincipalKind::User, "alice", "p1")
            .unwrap();
        assert!(matches!(
            s.delete_iam_policy("111122223333", IamPrincipalKind::User, "alice", "p1"),
            Err(StoreError::NotFound)
        ));
        s.delete_iam_user("111122223333", "alice").unwrap();
        assert!(s.iam_users().unwrap().is_empty());
        // Roles: policies block deletion; rows read back as written.
        let role = IamRoleRow {
            account_id: "111122223333".into(),
            role_name: "app".into(),
            role_id: "AROAAPP".into(),
            path: "/svc/".into(),
            trust_policy: "{\"Statement\":[]}".into(),
            max_session_duration: 7200,
            description: Some("d".into()),
            created_at: t(1_700_000_000.5),
        };
        s.create_iam_role(&role).unwrap();
        assert_eq!(s.iam_roles().unwrap(), vec![role.clone()]);
        s.put_iam_policy(&iam_policy(IamPrincipalKind::Role, "app", "r1"))
            .unwrap();
        assert!(matches!(
            s.delete_iam_role("111122223333", "app"),
            Err(StoreError::Conflict(_))
        ));
        s.delete_iam_policy("111122223333", IamPrincipalKind::Role, "app", "r1")
            .unwrap();
        s.delete_iam_role("111122223333", "app").unwrap();
        assert!(matches!(
            s.delete_iam_role("111122223333", "app"),
            Err(StoreError::NotFound)
        ));
        // A session credential round-trips.
        let mut session = cred("ASIASESSION", b"x");
        session.session = Some(SessionRow {
            token_sha256: [7; 32],
            role_arn: "arn:aws:iam::111122223333:role/svc/app".into(),
            role_id: "AROAAPP".into(),
            session_name: "s".into(),
            expires_at: t(1_700_003_600.25),
        });
        s.put_credential(&session).unwrap();
        assert_eq!(s.credentials().unwrap(), vec![session]);
    }

    fn cred_for(id: &str, user: &str) -> CredentialRow {
        CredentialRow {
            user_name: Some(user.into()),
            ..cred(id, b"s")
        }
    }

    #[test]
    fn settings_get_put_overwrite() {
        let s = mem();
        assert!(s.get_setting("cluster_id").unwrap().is_none());
        s.put_setting("cluster_id", b"abc").unwrap();
        s.put_setting("empty", b"").unwrap();
        assert_eq!(
            s.get_setting("cluster_id").unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(s.get_setting("empty").unwrap().as_deref(), Some(&b""[..]));
        s.put_setting("cluster_id", &[0, 9]).unwrap();
        assert_eq!(s.get_setting("cluster_id").unwrap(), Some(vec![0, 9]));
    }

    #[test]
    fn unreadable_timestamps_are_backend_errors() {
        let s = mem();
        s.conn
            .lock()
            .execute_batch("INSERT INTO keys VALUES ('far', 'acct', 1e300, 1, '{}');")
            .unwrap();
        assert!(matches!(s.get_key("far"), Err(StoreError::Backend(_))));
        assert!(matches!(s.all_keys(), Err(StoreError::Backend(_))));
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let k = KeyRow {
            doc: json!({ "nested": { "list": [1, "two", null, true] }, "s": "ü\u{1F511}" }),
            ..key("k1", "acct", 1_700_000_000.0)
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_key(&k).unwrap();
            s.insert_key(&key("k2", "acct", 2.0)).unwrap();
            s.update_key("k2", 1, &json!({ "updated": true })).unwrap();
            s.create_alias(&alias("acct", "alias/x", "k1", 5.0))
                .unwrap();
            s.put_credential(&cred("AKID", b"\x00sealed\xff")).unwrap();
            s.put_setting("cluster_id", b"c-1").unwrap();
            {
                let c = s.conn.lock();
                let mode: String = c
                    .pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .unwrap();
                let sync: i64 = c
                    .pragma_query_value(None, "synchronous", |r| r.get(0))
                    .unwrap();
                assert_eq!((mode.as_str(), sync), ("wal", 2)); // 2 = FULL
            }
        } // dropped: connection closed
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get_key("k1").unwrap(), Some(k));
        let k2 = s.get_key("k2").unwrap().unwrap();
        assert_eq!((k2.version, k2.doc), (2, json!({ "updated": true })));
        assert_eq!(
            s.get_alias("acct", "alias/x").unwrap().unwrap().key_id,
            "k1"
        );
        assert_eq!(
            s.credentials().unwrap()[0].sealed_secret,
            b"\x00sealed\xff".to_vec()
        );
        assert_eq!(s.get_setting("cluster_id").unwrap(), Some(b"c-1".to_vec()));
        // Reopening re-enforces foreign keys (a per-connection setting).
        assert!(matches!(
            s.create_alias(&alias("acct", "alias/y", "ghost", 1.0)),
            Err(StoreError::NotFound)
        ));
        let version: i64 = s
            .conn
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, latest_schema());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", latest_schema() + 1)
                .unwrap();
        }
        match SqliteStore::open(&path) {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("newer"), "{msg}"),
            other => panic!("expected Backend error, got {other:?}"),
        }
    }

    const CRASH_CHILD_ENV: &str = "HSM_KMS_STORE_CRASH_CHILD_DB";
    const CRASH_CHILD_TEST: &str = "store::sqlite::tests::crash_child_helper";

    /// Not a test on its own: when re-executed by `acknowledged_writes_survive_sigkill` with
    /// the env var set, it writes rows forever, printing each id once its writes returned.
    #[test]
    fn crash_child_helper() {
        let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
            return;
        };
        let s = SqliteStore::open(Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0..1_000_000u32 {
            let id = format!("key-{i:07}");
            s.insert_key(&key(&id, "acct", f64::from(i))).unwrap();
            s.create_alias(&alias("acct", &format!("alias/{id}"), &id, 0.0))
                .unwrap();
            s.update_key(&id, 1, &json!({ "acked": i })).unwrap();
            // Fails (ending the child) once the parent is gone.
            writeln!(out, "ACK {id}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn pending_records_come_back_in_order_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending.db");
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.pending_records(10).unwrap().is_empty());
        for r in [&b"first"[..], b"second", b"third"] {
            s.put_pending_record(r).unwrap();
        }
        // Another process (the service) sees them, oldest first, `limit` at a time.
        let other = SqliteStore::open(&path).unwrap();
        let two = other.pending_records(2).unwrap();
        let records: Vec<&[u8]> = two.iter().map(|(_, r)| r.as_slice()).collect();
        assert_eq!(records, [&b"first"[..], b"second"]);
        other.delete_pending_records(two[1].0).unwrap();
        let left = s.pending_records(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, b"third");
        assert!(left[0].0 > two[1].0);
        other.delete_pending_records(left[0].0).unwrap();
        assert!(s.pending_records(10).unwrap().is_empty());
    }

    #[test]
    fn acknowledged_writes_survive_sigkill() {
        const WANT: usize = 120;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.db");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                CRASH_CHILD_TEST,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while acked.len() < WANT {
            match lines.next() {
                Some(line) => {
                    // The harness may print "test … ... " on the same line as the first ACK.
                    if let Some((_, id)) = line.unwrap().split_once("ACK ") {
                        acked.push(id.to_owned());
                    }
                }
                None => break,
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-write
        let status = child.wait().unwrap();
        assert_eq!(acked.len(), WANT, "child ended early: {status:?}");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "child was not killed: {status:?}");
        }

        let s = SqliteStore::open(&path).unwrap();
        for (i, id) in acked.iter().enumerate() {
            assert_eq!(id, &format!("key-{i:07}"));
            let row = s
                .get_key(id)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {id} lost"));
            assert_eq!((row.version, row.doc), (2, json!({ "acked": i })), "{id}");
            assert!(
                s.get_alias("acct", &format!("alias/{id}"))
                    .unwrap()
                    .is_some(),
                "acknowledged alias of {id} lost"
            );
        }
        // Nothing beyond a clean prefix: every stored key is in sequence.
        let stored = s.all_keys().unwrap();
        assert!(stored.len() >= WANT);
        for (i, k) in stored.iter().enumerate() {
            assert_eq!(k.key_id, format!("key-{i:07}"));
        }
        let check: String = s
            .conn
            .lock()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the timestamps (ties included) and page size, walking the pages yields
        /// exactly the account's keys in (created_at, key_id) order.
        #[test]
        fn pagination_is_exact_for_any_data(
            rows in proptest::collection::vec(
                ("[a-z0-9:-]{1,8}", -3i32..4, proptest::bool::ANY),
                0..60,
            ),
            limit in 1usize..9,
        ) {
            let s = mem();
            let mut expected = Vec::new();
            let mut seen = HashSet::new();
            for (id, t, mine) in rows {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let k = key(&id, if mine { "acct" } else { "elsewhere" }, f64::from(t) / 2.0);
                s.insert_key(&k).unwrap();
                if mine {
                    expected.push(k);
                }
            }
            expected.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
            proptest::prop_assert_eq!(all_pages_keys(&s, "acct", limit), expected);
        }
    }
}
