//! Metadata store: the durable, synchronous home of everything hsm-kms keeps locally —
//! key metadata documents, aliases, grants, sealed API credentials and service-wide
//! settings.
//!
//! It never holds key material, plain or wrapped: keys live only inside the HSMs. The
//! public API here is storage-agnostic (no SQL type appears in it); [`SqliteStore`] is the
//! implementation. Every mutating method returns only after its transaction has committed
//! durably, so a crash right after a call returns loses nothing.
//!
//! The store is synchronous; async callers run it on a blocking thread.
//!
//! Timestamps are `OffsetDateTime`s with millisecond precision (finer parts are truncated
//! on write). Listings take a position to resume after and say whether more items follow;
//! turning positions into the opaque tokens clients see is the caller's business.

pub mod sqlite;
pub use sqlite::SqliteStore;

use time::OffsetDateTime;

/// Result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The addressed row does not exist (or, for alias writes, the target key does not).
    #[error("not found")]
    NotFound,
    /// A row with the same identity already exists.
    #[error("already exists")]
    AlreadyExists,
    /// Optimistic concurrency failure: the stored version is not the expected one.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The underlying storage failed or holds data this binary cannot read.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// One KMS key's metadata. `doc` is an opaque JSON document owned by the domain layer;
/// the store indexes the listed columns only.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// The key's id (primary key).
    pub key_id: String,
    /// The account that owns the key; listings are per account.
    pub account_id: String,
    /// When the key was created; with `key_id`, the listing order.
    pub created_at: OffsetDateTime,
    /// Optimistic concurrency counter; new keys should be inserted with 1. Stored as given
    /// by [`MetadataStore::insert_key`], bumped by one on every [`MetadataStore::update_key`].
    pub version: i64,
    /// The domain's document for the key, stored and returned unchanged.
    pub doc: serde_json::Value,
}

/// An alias, unique per (account, alias name), pointing at one key.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasRow {
    /// The account that owns the alias.
    pub account_id: String,
    /// The full alias name, `alias/` prefix included.
    pub alias_name: String,
    /// The id of the key the alias points at.
    pub key_id: String,
    /// When the alias was created.
    pub created_at: OffsetDateTime,
    /// When the alias was last pointed at a key (its creation, or its latest update).
    pub updated_at: OffsetDateTime,
}

/// An API credential. The secret is sealed (encrypted by an HSM key) and opaque to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
    /// The access key id (`AKIA...`), unique.
    pub access_key_id: String,
    /// The account the credential acts in.
    pub account_id: String,
    /// The ARN of the principal the credential authenticates.
    pub principal_arn: String,
    /// The secret access key as sealed by the domain (IV followed by the AES-GCM output).
    pub sealed_secret: Vec<u8>,
    /// When the credential was created.
    pub created_at: OffsetDateTime,
    /// `Active` (true) or `Inactive` (false, refused as an unknown key).
    pub active: bool,
    /// The IAM user the access key belongs to; `None` for an account's root user and for
    /// role sessions.
    pub user_name: Option<String>,
    /// For temporary credentials of a role session (STS `AssumeRole`), the session.
    pub session: Option<SessionRow>,
}

/// What a role session's temporary credential carries besides its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// SHA-256 of the session token (the token itself is never stored).
    pub token_sha256: [u8; 32],
    /// The assumed role's ARN (with its path).
    pub role_arn: String,
    /// The role's unique id (`AROA…`) when the session began.
    pub role_id: String,
    /// The session name (`RoleSessionName`).
    pub session_name: String,
    /// When the credential stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// An IAM user. Names are unique per account without regard to case.
#[derive(Debug, Clone, PartialEq)]
pub struct IamUserRow {
    /// The account the user belongs to.
    pub account_id: String,
    /// The user's name.
    pub user_name: String,
    /// The user's unique id (`AIDA…`).
    pub user_id: String,
    /// The user's path (`/` or `/a/b/`).
    pub path: String,
    /// When the user was created.
    pub created_at: OffsetDateTime,
}

/// An IAM role. Names are unique per account without regard to case.
#[derive(Debug, Clone, PartialEq)]
pub struct IamRoleRow {
    /// The account the role belongs to.
    pub account_id: String,
    /// The role's name.
    pub role_name: String,
    /// The role's unique id (`AROA…`).
    pub role_id: String,
    /// The role's path (`/` or `/a/b/`).
    pub path: String,
    /// The trust policy (`AssumeRolePolicyDocument`), verbatim.
    pub trust_policy: String,
    /// The longest session, in seconds (3600 to 43200).
    pub max_session_duration: u32,
    /// The role's description, if any.
    pub description: Option<String>,
    /// When the role was created.
    pub created_at: OffsetDateTime,
}

/// Whether an inline policy belongs to a user or a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IamPrincipalKind {
    /// An IAM user.
    User,
    /// An IAM role.
    Role,
}

/// An inline policy of an IAM user or role.
#[derive(Debug, Clone, PartialEq)]
pub struct IamPolicyRow {
    /// The account of the user or role.
    pub account_id: String,
    /// User or role.
    pub principal_kind: IamPrincipalKind,
    /// The user's or role's name.
    pub principal_name: String,
    /// The policy's name, unique per user or role.
    pub policy_name: String,
    /// The policy document, verbatim.
    pub document: String,
}

/// A KMS grant on one key. The store keeps its fields as given; their meaning (principal
/// forms, operation names, constraint shapes) is the domain's.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRow {
    /// The grant's id (primary key), unique across keys and accounts.
    pub grant_id: String,
    /// The key the grant is on; the grant goes when the key is deleted.
    pub key_id: String,
    /// The account that owns the key.
    pub account_id: String,
    /// The grant's optional friendly name.
    pub name: Option<String>,
    /// Who gets the grant's permissions.
    pub grantee_principal: String,
    /// Who may retire the grant, if anyone besides the defaults.
    pub retiring_principal: Option<String>,
    /// The operations the grant allows, by wire name.
    pub operations: Vec<String>,
    /// The grant's constraints as a JSON document, if any.
    pub constraints: Option<serde_json::Value>,
    /// The account the grant was created in.
    pub issuing_account: String,
    /// When the grant was created.
    pub created_at: OffsetDateTime,
}

/// A place in the `(created_at, key_id)` order of [`MetadataStore::list_keys`]. The key
/// there need not exist (any more): a page resumes after the position, not after a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPosition {
    /// Creation time of the key at this position.
    pub created_at: OffsetDateTime,
    /// Id of the key at this position (breaks ties of `created_at`).
    pub key_id: String,
}

impl KeyPosition {
    /// The position of a listed key.
    pub fn of(row: &KeyRow) -> KeyPosition {
        KeyPosition {
            created_at: row.created_at,
            key_id: row.key_id.clone(),
        }
    }
}

/// One page of a listing. `truncated` is true exactly when further items follow the last
/// one; the next page starts after the last item's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page, in listing order.
    pub items: Vec<T>,
    /// Whether further items follow the last one.
    pub truncated: bool,
}

/// The metadata store. Implementations are synchronous and safe to share between threads.
///
/// Listing `limit`s of 0 are treated as 1 (the domain layer validates the KMS `Limit`).
pub trait MetadataStore: Send + Sync {
    /// Inserts a key. `AlreadyExists` if `key_id` is taken.
    fn insert_key(&self, row: &KeyRow) -> StoreResult<()>;
    /// Fetches a key by id.
    fn get_key(&self, key_id: &str) -> StoreResult<Option<KeyRow>>;
    /// Replaces `doc` if the stored version equals `expected_version`, bumps the version and
    /// returns the new one. `Conflict` on a version mismatch, `NotFound` if the key is absent.
    fn update_key(
        &self,
        key_id: &str,
        expected_version: i64,
        doc: &serde_json::Value,
    ) -> StoreResult<i64>;
    /// Deletes a key and, atomically with it, every alias pointing at it and every grant on
    /// it. `NotFound` if absent.
    fn delete_key(&self, key_id: &str) -> StoreResult<()>;
    /// One page of an account's keys in stable `(created_at, key_id)` order, starting
    /// after `after` (from the first key when `None`).
    fn list_keys(
        &self,
        account_id: &str,
        after: Option<&KeyPosition>,
        limit: usize,
    ) -> StoreResult<Page<KeyRow>>;
    /// Every key of every account, in `(created_at, key_id)` order (cache warm-up).
    fn all_keys(&self) -> StoreResult<Vec<KeyRow>>;
    /// Creates an alias. `AlreadyExists` if `(account_id, alias_name)` exists;
    /// `NotFound` if the target key does not exist.
    fn create_alias(&self, row: &AliasRow) -> StoreResult<()>;
    /// Repoints an alias. `NotFound` if the alias or the new target key does not exist.
    fn update_alias(
        &self,
        account_id: &str,
        alias_name: &str,
        new_key_id: &str,
        updated_at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Deletes an alias. `NotFound` if absent.
    fn delete_alias(&self, account_id: &str, alias_name: &str) -> StoreResult<()>;
    /// Fetches an alias.
    fn get_alias(&self, account_id: &str, alias_name: &str) -> StoreResult<Option<AliasRow>>;
    /// One page of an account's aliases ordered by `alias_name`, optionally only those
    /// pointing at `key_id`, starting after the alias name `after` (from the first when
    /// `None`).
    fn list_aliases(
        &self,
        account_id: &str,
        key_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<AliasRow>>;
    /// Every alias of every account, ordered by `(account_id, alias_name)`.
    fn all_aliases(&self) -> StoreResult<Vec<AliasRow>>;
    // ---- grants. Every write is durable once it returns.
    /// Inserts a grant. `AlreadyExists` if `grant_id` is taken, `NotFound` if its key does
    /// not exist.
    fn insert_grant(&self, row: &GrantRow) -> StoreResult<()>;
    /// Deletes a grant (retired or revoked). `NotFound` if absent.
    fn delete_grant(&self, grant_id: &str) -> StoreResult<()>;
    /// Every grant of every key, in `(key_id, created_at, grant_id)` order (cache warm-up).
    fn all_grants(&self) -> StoreResult<Vec<GrantRow>>;
    /// Stores a credential. `AlreadyExists` if `access_key_id` is taken.
    fn put_credential(&self, row: &CredentialRow) -> StoreResult<()>;
    /// Every credential, ordered by `access_key_id`.
    fn credentials(&self) -> StoreResult<Vec<CredentialRow>>;
    /// Replaces a credential's sealed secret with `sealed` if it is still `expected` (a
    /// re-seal in a newer format). `NotFound` if the credential is absent, `Conflict` if its
    /// sealed secret is no longer `expected`. Durable once it returns.
    fn reseal_credential(
        &self,
        access_key_id: &str,
        expected: &[u8],
        sealed: &[u8],
    ) -> StoreResult<()>;
    /// Reads a service-wide setting.
    fn get_setting(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Writes (inserts or replaces) a service-wide setting.
    fn put_setting(&self, name: &str, value: &[u8]) -> StoreResult<()>;

    // ---- IAM identities (users, roles, inline policies, access key states) ----

    /// Every IAM user of every account, ordered by `(account_id, user_name)`.
    fn iam_users(&self) -> StoreResult<Vec<IamUserRow>>;
    /// Every IAM role of every account, ordered by `(account_id, role_name)`.
    fn iam_roles(&self) -> StoreResult<Vec<IamRoleRow>>;
    /// Every inline policy, ordered by account, kind, principal name and policy name.
    fn iam_policies(&self) -> StoreResult<Vec<IamPolicyRow>>;
    /// Creates a user together with its first inline `policies`, making it the owner of
    /// the existing credentials `access_keys` (their `user_name`), all or nothing.
    /// `AlreadyExists` if the account has a user of that name (any case) or the user id is
    /// taken; `NotFound` if one of `access_keys` does not exist. Durable once it returns.
    fn create_iam_user(
        &self,
        row: &IamUserRow,
        policies: &[IamPolicyRow],
        access_keys: &[&str],
    ) -> StoreResult<()>;
    /// Deletes a user. `NotFound` if absent; `Conflict("access keys")` while it has access
    /// keys, `Conflict("policies")` while it has inline policies (checked in the same
    /// transaction). Durable once it returns.
    fn delete_iam_user(&self, account_id: &str, user_name: &str) -> StoreResult<()>;
    /// Creates a role. `AlreadyExists` if the account has a role of that name (any case).
    /// Durable once it returns.
    fn create_iam_role(&self, row: &IamRoleRow) -> StoreResult<()>;
    /// Deletes a role. `NotFound` if absent; `Conflict("policies")` while it has inline
    /// policies. Durable once it returns.
    fn delete_iam_role(&self, account_id: &str, role_name: &str) -> StoreResult<()>;
    /// Writes (creates or replaces) an inline policy. `NotFound` if its user or role does
    /// not exist (checked in the same transaction). Durable once it returns.
    fn put_iam_policy(&self, row: &IamPolicyRow) -> StoreResult<()>;
    /// Deletes an inline policy. `NotFound` if absent. Durable once it returns.
    fn delete_iam_policy(
        &self,
        account_id: &str,
        kind: IamPrincipalKind,
        principal_name: &str,
        policy_name: &str,
    ) -> StoreResult<()>;
    /// Stores a long-term access key of `row.user_name` (`None`: the account's root) if
    /// that principal has fewer than `limit` keys: `Conflict` at the limit, `NotFound` if
    /// the user does not exist, `AlreadyExists` if the access key id is taken; all checked
    /// in the same transaction. Durable once it returns.
    fn put_access_key(&self, row: &CredentialRow, limit: usize) -> StoreResult<()>;
    /// Sets a credential's status (`Active` when `active`). `NotFound` if absent. Durable
    /// once it returns.
    fn set_credential_status(&self, access_key_id: &str, active: bool) -> StoreResult<()>;
    /// Deletes a credential. `NotFound` if absent. Durable once it returns.
    fn delete_credential(&self, access_key_id: &str) -> StoreResult<()>;

    /// Increments the counter `name` (starting at 1) and returns its new value. Durable and
    /// atomic: once this returns, no caller (of this or any process sharing the store) ever
    /// gets the same value again, even after a crash.
    fn next_counter(&self, name: &str) -> StoreResult<u64>;

    // ---- audit records of operator commands, waiting for the service's trail.
    /// Keeps `record` (a serialized audit event made by an operator command) until the
    /// service appends it to its trail. Durable once it returns.
    fn put_pending_record(&self, record: &[u8]) -> StoreResult<()>;
    /// The oldest `limit` pending records with their numbers, in the order they were put.
    fn pending_records(&self, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>>;
    /// Deletes the pending records numbered `through` and below. Durable once it returns.
    fn delete_pending_records(&self, through: i64) -> StoreResult<()>;
}
