//! API credentials at rest: secrets are sealed (AES-GCM) under an HSM key that is replicated
//! like every KMS key; only the sealed form reaches the metadata store. The first start
//! creates one credential for the configured account.
//!
//! The sealed form binds the whole identity of its row, so that nobody who can write the
//! database can make a secret they know authenticate as someone else:
//!
//! * **v2** (written since this format exists): `"hkc\x02"` ‖ IV ‖ ciphertext ‖ tag, with
//!   the AAD `aad_v2`: a format label and the length-prefixed access key id, account id
//!   and principal ARN. A row whose account or ARN was changed, or that received another
//!   row's sealed secret, does not open: it is logged and not loaded (the others still are).
//! * **v1** (legacy): IV ‖ ciphertext ‖ tag with the access key id alone as AAD. A v1 row
//!   still opens at start and is re-sealed as v2 in place (one durable compare-and-swap per
//!   row); once no v1 row is left, the store setting `credential_seal_format` = `2` records
//!   it and v1 is never accepted again, so a relabelled v1 row written later (e.g. from an
//!   old backup) does not open either.

use super::error::KmsError;
use super::internal_keys::InternalKey;
use super::vault::{KeyKind, KeyVault, ObjectId, VaultError, IV_LEN};
use crate::auth::{Credential, Session, SessionCredential};
use crate::store::{CredentialRow, MetadataStore, SessionRow, StoreError};
use rand::Rng;
use sha2::Digest;
use std::sync::Arc;
use zeroize::Zeroizing;

/// `CKA_ID` of the HSM key that seals credential secrets.
pub const SEALING_KEY_ID: &str = "hsm-kms/credential-sealing-key";

/// The object of the credential-sealing key, and its label in every HSM.
pub(crate) fn sealing_key() -> ObjectId {
    ObjectId::new(SEALING_KEY_ID)
}

/// The label of the credential-sealing key's objects.
pub(crate) const SEALING_KEY_LABEL: &str = "hsm-kms credential sealing key";
const SEALING_SETTING: &str = "credential_sealing_key";

/// The store setting that, once `2`, says every credential is sealed as v2 and v1 is refused.
const FORMAT_SETTING: &str = "credential_seal_format";
const FORMAT_V2: &[u8] = b"2";

/// The prefix of a v2 sealed secret (a v1 one starts directly with its IV).
const V2_PREFIX: &[u8; 4] = b"hkc\x02";
/// Length of the AES-GCM tag at the end of every sealed secret.
const TAG_LEN: usize = 16;

/// The AAD of a v2 sealed secret: a format label, then the access key id, the account id
/// and the principal ARN, each preceded by its length (8 bytes, big-endian), so that no two
/// different identities give the same bytes.
fn aad_v2(access_key_id: &str, account_id: &str, principal_arn: &str) -> Vec<u8> {
    let mut aad = b"hsm-kms credential v2".to_vec();
    for field in [access_key_id, account_id, principal_arn] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad
}

/// The AAD of a role session's sealed secret: [`aad_v2`]'s fields under another label,
/// then the session token's hash, the role ARN and id, the session name and the expiry
/// (Unix milliseconds), so that nobody who can write the database extends a session or
/// moves it to another role.
fn aad_session(row: &CredentialRow, s: &SessionRow) -> Vec<u8> {
    let mut aad = b"hsm-kms session credential v1".to_vec();
    let expires = (s.expires_at.unix_timestamp_nanos() / 1_000_000).to_string();
    for field in [
        row.access_key_id.as_bytes(),
        row.account_id.as_bytes(),
        row.principal_arn.as_bytes(),
        &s.token_sha256,
        s.role_arn.as_bytes(),
        s.role_id.as_bytes(),
        s.session_name.as_bytes(),
        expires.as_bytes(),
    ] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

/// The AAD a v2 row is sealed under: [`aad_session`] for a role session, else [`aad_v2`].
fn aad_of(row: &CredentialRow) -> Vec<u8> {
    match &row.session {
        Some(s) => aad_session(row, s),
        None => aad_v2(&row.access_key_id, &row.account_id, &row.principal_arn),
    }
}

/// The credential-sealing key, as one of the service's own keys.
const SEALING_KEY: InternalKey = InternalKey {
    object: sealing_key,
    label: SEALING_KEY_LABEL,
    kind: KeyKind::Aes,
    setting: SEALING_SETTING,
};

async fn ensure_sealing_key(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
) -> Result<(), KmsError> {
    SEALING_KEY.ensure(vault, store).await
}

fn random_string(alphabet: &[u8], len: usize, seed: &[u8]) -> Result<String, KmsError> {
    let no_input = || KmsError::Internal("credential generation: no alphabet or no seed".into());
    if alphabet.is_empty() || seed.is_empty() {
        return Err(no_input());
    }
    // Characters drawn from HSM randomness (seed, repeated as needed), mixed with the OS
    // generator.
    let mut rng = rand::rngs::OsRng;
    seed.iter()
        .cycle()
        .take(len)
        .map(|&s| {
            let r = s as usize ^ rng.gen::<u8>() as usize;
            alphabet
                .get(r % alphabet.len())
                .map(|&c| c as char)
                .ok_or_else(no_input)
        })
        .collect()
}

/// Seal `secret` for the credential `(access_key_id, account_id, principal_arn)` (v2).
async fn seal(
    vault: &dyn KeyVault,
    access_key_id: &str,
    account_id: &str,
    principal_arn: &str,
    secret: &[u8],
) -> Result<Vec<u8>, KmsError> {
    seal_with(
        vault,
        aad_v2(access_key_id, account_id, principal_arn),
        secret,
    )
    .await
}

/// Seal `secret` (v2 layout) under `aad`.
async fn seal_with(vault: &dyn KeyVault, aad: Vec<u8>, secret: &[u8]) -> Result<Vec<u8>, KmsError> {
    let (iv, ct) = vault
        .encrypt(&sealing_key(), aad, Zeroizing::new(secret.to_vec()))
        .await?;
    let mut sealed = Vec::with_capacity(V2_PREFIX.len() + IV_LEN + ct.len());
    sealed.extend_from_slice(V2_PREFIX);
    sealed.extend_from_slice(&iv);
    sealed.extend_from_slice(&ct);
    Ok(sealed)
}

/// The sealed format a row opened under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    V1,
    V2,
}

/// `IV ‖ ciphertext ‖ tag` opened under `aad`; `None` when it does not authenticate (or is
/// too short to be a sealed secret). HSM failures are errors.
async fn unseal(
    vault: &dyn KeyVault,
    blob: &[u8],
    aad: Vec<u8>,
) -> Result<Option<Zeroizing<Vec<u8>>>, KmsError> {
    let Some((iv, ct)) = blob.split_first_chunk::<IV_LEN>() else {
        return Ok(None);
    };
    if ct.len() <= TAG_LEN {
        return Ok(None);
    }
    match vault.decrypt(&sealing_key(), *iv, aad, ct.to_vec()).await {
        Ok(secret) => Ok(Some(secret)),
        Err(VaultError::InvalidCiphertext | VaultError::InvalidInput(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Open a row's sealed secret: as v2, or as v1 while `legacy` is allowed. `None` when it
/// opens under neither (it was moved to another row, or its row was relabelled).
async fn open(
    vault: &dyn KeyVault,
    row: &CredentialRow,
    legacy: bool,
) -> Result<Option<(Zeroizing<Vec<u8>>, Format)>, KmsError> {
    if let Some(rest) = row.sealed_secret.strip_prefix(V2_PREFIX) {
        if let Some(secret) = unseal(vault, rest, aad_of(row)).await? {
            return Ok(Some((secret, Format::V2)));
        }
    }
    if legacy && row.session.is_none() {
        // A v1 secret whose random IV happens to start with the v2 prefix lands here too.
        let aad = row.access_key_id.as_bytes().to_vec();
        if let Some(secret) = unseal(vault, &row.sealed_secret, aad).await? {
            return Ok(Some((secret, Format::V1)));
        }
    }
    Ok(None)
}

fn credential(row: CredentialRow, secret: &[u8]) -> Result<Credential, KmsError> {
    let secret = std::str::from_utf8(secret)
        .map_err(|_| KmsError::Internal("credential secret is not UTF-8".into()))?;
    let mut c = Credential::new(row.access_key_id, secret, row.account_id, row.principal_arn);
    c.active = row.active;
    c.session = row.session.map(|s| SessionCredential {
        token_sha256: s.token_sha256,
        expires_at: s.expires_at,
        session: Session {
            role_arn: s.role_arn,
            role_id: s.role_id,
            session_name: s.session_name,
        },
    });
    Ok(c)
}

/// Whether the open credential `c` is what `row` says (but for the secret): then a reload
/// reuses it instead of unsealing the row again.
fn same_identity(c: &Credential, row: &CredentialRow) -> bool {
    c.account_id == row.account_id
        && c.principal_arn == row.principal_arn
        && c.session.as_ref().map(|s| (&s.token_sha256, s.expires_at))
            == row
                .session
                .as_ref()
                .map(|s| (&s.token_sha256, s.expires_at))
}

/// How long after its expiry a role session's credential row is deleted (until then a
/// request with it gets `ExpiredToken` rather than an unknown-key error).
pub const EXPIRED_SESSION_RETENTION: time::Duration = time::Duration::days(1);

/// The ARN of an account's root user.
pub fn root_arn(account_id: &str) -> String {
    format!("arn:aws:iam::{account_id}:root")
}

/// Create an account: a credential for its root user (`hsm-kms account create`). Refused
/// when the account has a credential already.
pub async fn create_account(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    now: time::OffsetDateTime,
) -> Result<Credential, KmsError> {
    if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KmsError::Validation(format!(
            "an account id is 12 digits, not '{account_id}'"
        )));
    }
    if store
        .credentials()?
        .iter()
        .any(|r| r.account_id == account_id)
    {
        return Err(KmsError::AlreadyExists(format!(
            "account {account_id} exists already"
        )));
    }
    create(vault, store, account_id, &root_arn(account_id), now).await
}

/// The stored credentials as they are now, reusing the already open ones of `known` (by
/// access key id and unchanged row) and unsealing only new rows: `None` when nothing
/// changed. Rows that do not open are left out, logged once and remembered in `refused`.
///
/// Role session credentials expired for longer than [`EXPIRED_SESSION_RETENTION`] at `now`
/// are deleted from the store.
pub async fn refresh(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    known: &crate::auth::StaticCredentials,
    refused: &mut std::collections::HashSet<String>,
    now: time::OffsetDateTime,
) -> Result<Option<crate::auth::StaticCredentials>, KmsError> {
    // A periodic read on the runtime: off its worker threads, as every store call.
    let s2 = store.clone();
    let mut rows = tokio::task::spawn_blocking(move || {
        let rows = s2.credentials()?;
        let mut kept = Vec::with_capacity(rows.len());
        for r in rows {
            match &r.session {
                Some(s) if s.expires_at + EXPIRED_SESSION_RETENTION < now => {
                    match s2.delete_credential(&r.access_key_id) {
                        Ok(()) | Err(StoreError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => kept.push(r),
            }
        }
        Ok::<_, StoreError>(kept)
    })
    .await
    .map_err(|e| KmsError::Internal(format!("credential refresh: {e}")))??;
    rows.retain(|r| !refused.contains(&r.access_key_id));
    let same = rows.len() == known.len()
        && rows.iter().all(|r| {
            known
                .get(&r.access_key_id)
                .is_some_and(|c| same_identity(c, r) && c.active == r.active)
        });
    if same {
        return Ok(None);
    }
    let mut next = crate::auth::StaticCredentials::new();
    for row in rows {
        if let Some(c) = known.get(&row.access_key_id) {
            if same_identity(c, &row) {
                if c.active == row.active {
                    next.insert_shared(c.clone());
                } else {
                    let mut changed = Credential::clone(c);
                    changed.active = row.active;
                    next.insert(changed);
                }
                continue;
            }
        }
        match open(vault, &row, false).await? {
            Some((secret, _)) => {
                tracing::info!(
                    target: "hsm_kms::audit",
                    access_key_id = %row.access_key_id,
                    account_id = %row.account_id,
                    principal = %row.principal_arn,
                    "credential loaded"
                );
                next.insert(credential(row, &secret)?);
            }
            None => {
                tracing::error!(
                    access_key_id = %row.access_key_id,
                    "credential not loaded: its sealed secret does not open for this access \
                     key, account and principal (the row was altered)"
                );
                refused.insert(row.access_key_id);
            }
        }
    }
    Ok(Some(next))
}

/// The upper-case base32 alphabet of AWS's ids (`AKIA…`, `AIDA…`, `AROA…`).
pub(crate) const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `prefix` followed by `len` characters of [`ID_ALPHABET`], drawn as every credential is
/// (HSM randomness mixed with the OS generator).
pub(crate) async fn random_id(
    vault: &dyn KeyVault,
    prefix: &str,
    len: usize,
) -> Result<String, KmsError> {
    let seed = vault.random(32).await?;
    Ok(format!(
        "{prefix}{}",
        random_string(ID_ALPHABET, len, &seed)?
    ))
}

/// The alphabet of secret access keys and session tokens.
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A fresh access key id with `prefix` (`AKIA`/`ASIA`) and a secret access key.
async fn new_key_pair(
    vault: &dyn KeyVault,
    prefix: &str,
) -> Result<(String, Zeroizing<String>), KmsError> {
    let seed = vault.random(64).await?;
    let (akid_seed, secret_seed) = seed
        .split_at_checked(32)
        .ok_or_else(|| KmsError::Internal("the HSM returned too little randomness".into()))?;
    let akid = format!("{prefix}{}", random_string(ID_ALPHABET, 16, akid_seed)?);
    let secret = Zeroizing::new(random_string(SECRET_ALPHABET, 40, secret_seed)?);
    Ok((akid, secret))
}

/// A new credential row of `principal_arn` in `account_id` (of the IAM user `user_name`,
/// if any), its access key id prefixed `prefix` (`AKIA`/`ASIA`), not sealed yet, and its
/// secret; the sealing key is created first if there is none.
async fn new_row(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    prefix: &str,
    account_id: &str,
    principal_arn: &str,
    user_name: Option<&str>,
    now: time::OffsetDateTime,
) -> Result<(CredentialRow, Zeroizing<String>), KmsError> {
    ensure_sealing_key(vault, store).await?;
    let (akid, secret) = new_key_pair(vault, prefix).await?;
    let row = CredentialRow {
        access_key_id: akid,
        account_id: account_id.to_string(),
        principal_arn: principal_arn.to_string(),
        sealed_secret: Vec::new(),
        created_at: now,
        active: true,
        user_name: user_name.map(str::to_string),
        session: None,
    };
    Ok((row, secret))
}

/// Seal `secret` into `row`, under the row's AAD ([`aad_of`]: v2, or the session's).
async fn seal_row(
    vault: &dyn KeyVault,
    row: &mut CredentialRow,
    secret: &Zeroizing<String>,
) -> Result<(), KmsError> {
    row.sealed_secret = seal_with(vault, aad_of(row), secret.as_bytes()).await?;
    Ok(())
}

/// Run blocking store work off the runtime's workers.
async fn off_runtime<T: Send + 'static>(
    store: &Arc<dyn MetadataStore>,
    f: impl FnOnce(&dyn MetadataStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<Result<T, StoreError>, KmsError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| KmsError::Internal(format!("store task: {e}")))
}

/// Create, seal (v2) and store a new credential for `principal_arn` in `account_id`.
pub async fn create(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    principal_arn: &str,
    now: time::OffsetDateTime,
) -> Result<Credential, KmsError> {
    let (mut row, secret) =
        new_row(vault, store, "AKIA", account_id, principal_arn, None, now).await?;
    seal_row(vault, &mut row, &secret).await?;
    store.put_credential(&row)?;
    credential(row, secret.as_bytes())
}

/// A new long-term access key (`AKIA…`) of the IAM user `user_name` (`None`: the account's
/// root, `principal_arn` its ARN), sealed (v2) and stored if that principal has fewer than
/// `limit` keys (the store checks it: `StoreError::Conflict` at the limit). Blocking store
/// work runs off the runtime's workers.
pub async fn create_access_key(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    principal_arn: &str,
    user_name: Option<&str>,
    limit: usize,
    now: time::OffsetDateTime,
) -> Result<(Credential, time::OffsetDateTime), KmsError> {
    let (mut row, secret) = new_row(
        vault,
        store,
        "AKIA",
        account_id,
        principal_arn,
        user_name,
        now,
    )
    .await?;
    seal_row(vault, &mut row, &secret).await?;
    let stored = row.clone();
    off_runtime(store, move |s| s.put_access_key(&stored, limit))
        .await?
        .map_err(|e| match e {
            StoreError::Conflict(_) => KmsError::LimitExceeded(format!(
                "Cannot exceed quota for AccessKeysPerUser: {limit}"
            )),
            StoreError::NotFound => KmsError::NotFound(format!(
                "The user with name {} cannot be found.",
                user_name.unwrap_or_default()
            )),
            other => other.into(),
        })?;
    Ok((credential(row, secret.as_bytes())?, now))
}

/// A role session's temporary credential: an `ASIA…` key, its secret and session token.
pub struct SessionKeys {
    /// The credential as the live set holds it (the token as its hash).
    pub credential: Credential,
    /// The session token, shown once.
    pub session_token: Zeroizing<String>,
}

/// Issue temporary credentials for `session` (assumed-role ARN `principal_arn`) until
/// `expires_at`: sealed under the session AAD (which binds the token's hash, the role and
/// the expiry) and stored, so they survive a restart until they expire.
pub async fn create_session(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    principal_arn: &str,
    session: Session,
    expires_at: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Result<SessionKeys, KmsError> {
    let (mut row, secret) =
        new_row(vault, store, "ASIA", account_id, principal_arn, None, now).await?;
    let token_seed = vault.random(96).await?;
    let mut token = Zeroizing::new(String::from("IQoJb3JpZ2luX2VjE"));
    token.push_str(&random_string(SECRET_ALPHABET, 192, &token_seed)?);
    let token_sha256: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let session_row = SessionRow {
        token_sha256,
        role_arn: session.role_arn.clone(),
        role_id: session.role_id.clone(),
        session_name: session.session_name.clone(),
        // Stored with millisecond precision: seal what will be read back.
        expires_at: crate::kms::model::epoch_seconds::truncate(expires_at),
    };
    row.session = Some(session_row);
    seal_row(vault, &mut row, &secret).await?;
    let stored = row.clone();
    off_runtime(store, move |s| s.put_credential(&stored)).await??;
    let credential = credential(row, secret.as_bytes())?;
    Ok(SessionKeys {
        credential,
        session_token: token,
    })
}

/// Unseal every stored credential (re-sealing v1 rows as v2); on first start create one for
/// `account_id`. Returns all credentials that open and, if one was just created, that one.
/// A row that does not open is logged and left out; it never makes a first start happen.
pub async fn load_or_create(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    now: time::OffsetDateTime,
) -> Result<(Vec<Credential>, Option<Credential>), KmsError> {
    ensure_sealing_key(vault, store).await?;
    let rows = store.credentials()?;
    if rows.is_empty() {
        let principal_arn = root_arn(account_id);
        let c = create(vault, store, account_id, &principal_arn, now).await?;
        store.put_setting(FORMAT_SETTING, FORMAT_V2)?;
        return Ok((vec![c.clone()], Some(c)));
    }
    let legacy = store.get_setting(FORMAT_SETTING)?.as_deref() != Some(FORMAT_V2);
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match open(vault, &row, legacy).await? {
            None => tracing::error!(
                access_key_id = %row.access_key_id,
                account_id = %row.account_id,
                principal = %row.principal_arn,
                "credential not loaded: its sealed secret does not open for this access key, \
                 account and principal (the row was altered)"
            ),
            Some((secret, Format::V2)) => out.push(credential(row, &secret)?),
            Some((secret, Format::V1)) => {
                let sealed = seal(
                    vault,
                    &row.access_key_id,
                    &row.account_id,
                    &row.principal_arn,
                    &secret,
                )
                .await?;
                store.reseal_credential(&row.access_key_id, &row.sealed_secret, &sealed)?;
                tracing::info!(
                    access_key_id = %row.access_key_id,
                    "credential re-sealed in format v2 (bound to its account and principal)"
                );
                out.push(credential(row, &secret)?);
            }
        }
    }
    if legacy {
        // Every row that opened is v2 now: from here on v1 never opens.
        store.put_setting(FORMAT_SETTING, FORMAT_V2)?;
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use crate::kms::vault::fake::FakeVault;
    use crate::store::SqliteStore;

    const ALICE: (&str, &str) = ("111122223333", "arn:aws:iam::111122223333:user/alice");
    const BOB: (&str, &str) = ("444455556666", "arn:aws:iam::444455556666:user/bob");

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn setup() -> (Arc<FakeVault>, Arc<dyn MetadataStore>) {
        (
            Arc::new(FakeVault::new(2)),
            Arc::new(SqliteStore::open_in_memory().unwrap()),
        )
    }

    /// A row sealed as the previous binary did: IV ‖ ct ‖ tag, AAD = access key id.
    async fn put_v1(
        vault: &FakeVault,
        store: &Arc<dyn MetadataStore>,
        akid: &str,
        (account, arn): (&str, &str),
        secret: &str,
    ) -> Vec<u8> {
        ensure_sealing_key(vault, store).await.unwrap();
        let (iv, ct) = vault
            .encrypt(
                &sealing_key(),
                akid.as_bytes().to_vec(),
                Zeroizing::new(secret.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let sealed = [iv.as_slice(), &ct].concat();
        store
            .put_credential(&CredentialRow {
                access_key_id: akid.into(),
                account_id: account.into(),
                principal_arn: arn.into(),
                sealed_secret: sealed.clone(),
                created_at: now(),
                active: true,
                user_name: None,
                session: None,
            })
            .unwrap();
        sealed
    }

    fn loaded(creds: &[Credential]) -> Vec<(String, String, String, String)> {
        creds
            .iter()
            .map(|c| {
                (
                    c.access_key_id.clone(),
                    c.secret_access_key.to_string(),
                    c.account_id.clone(),
                    c.principal_arn.clone(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn first_start_creates_one_v2_credential_and_later_starts_load_it() {
        let (vault, store) = setup();
        let (all, new) = load_or_create(vault.as_ref(), &store, "111122223333", now())
            .await
            .unwrap();
        let new = new.unwrap();
        assert_eq!(loaded(&all), loaded(std::slice::from_ref(&new)));
        assert_eq!(new.principal_arn, "arn:aws:iam::111122223333:root");
        let row = &store.credentials().unwrap()[0];
        assert!(row.sealed_secret.starts_with(V2_PREFIX));
        assert!(!row
            .sealed_secret
            .windows(new.secret_access_key.len())
            .any(|w| w == new.secret_access_key.as_bytes()));
        assert_eq!(
            store.get_setting(FORMAT_SETTING).unwrap().as_deref(),
            Some(FORMAT_V2)
        );
        let (again, none) = load_or_create(vault.as_ref(), &store, "111122223333", now())
            .await
            .unwrap();
        assert!(none.is_none());
        assert_eq!(loaded(&again), loaded(&[new]));
    }

    /// The attack through the store: Bob, who knows his own secret and can write the
    /// database, moves his access key and sealed secret onto Alice's account and ARN. The
    /// relabelled row no longer opens (before v2 it opened and Bob signed as Alice).
    #[tokio::test]
    async fn a_relabelled_row_does_not_open() {
        let (vault, store) = setup();
        let alice = create(vault.as_ref(), &store, ALICE.0, ALICE.1, now())
            .await
            .unwrap();
        // Bob's row, made in a scratch store (same vault and sealing key) and then written
        // into the real one with Alice's account and ARN.
        let bob_store: Arc<dyn MetadataStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
        bob_store.put_setting(SEALING_SETTING, b"v1").unwrap();
        let bob = create(vault.as_ref(), &bob_store, BOB.0, BOB.1, now())
            .await
            .unwrap();
        let bob_row = bob_store.credentials().unwrap().remove(0);
        store
            .put_credential(&CredentialRow {
                account_id: ALICE.0.into(),
                principal_arn: ALICE.1.into(),
                ..bob_row
            })
            .unwrap();
        let (all, new) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert!(new.is_none());
        assert_eq!(loaded(&all), loaded(&[alice]));
        assert!(all.iter().all(|c| c.access_key_id != bob.access_key_id));
    }

    #[tokio::test]
    async fn v1_rows_open_once_and_are_resealed_as_v2_in_place() {
        let (vault, store) = setup();
        let old_a = put_v1(&vault, &store, "AKIAOLDALICE", ALICE, "alice-secret").await;
        put_v1(&vault, &store, "AKIAOLDBOB", BOB, "bob-secret").await;
        assert!(store.get_setting(FORMAT_SETTING).unwrap().is_none());
        let (all, new) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert!(new.is_none());
        let want = vec![
            (
                "AKIAOLDALICE".to_string(),
                "alice-secret".to_string(),
                ALICE.0.to_string(),
                ALICE.1.to_string(),
            ),
            (
                "AKIAOLDBOB".to_string(),
                "bob-secret".to_string(),
                BOB.0.to_string(),
                BOB.1.to_string(),
            ),
        ];
        assert_eq!(loaded(&all), want);
        // Durably re-sealed: every row is v2 now, and the store says v1 is over.
        let rows = store.credentials().unwrap();
        assert!(rows.iter().all(|r| r.sealed_secret.starts_with(V2_PREFIX)));
        assert_ne!(rows[0].sealed_secret, old_a);
        assert_eq!(
            store.get_setting(FORMAT_SETTING).unwrap().as_deref(),
            Some(FORMAT_V2)
        );
        let encrypts = vault.calls("encrypt");
        let (again, _) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert_eq!(loaded(&again), want);
        assert_eq!(vault.calls("encrypt"), encrypts, "nothing re-sealed twice");
    }

    /// Once every row is v2, a v1 row (say Bob's pre-migration row from a backup,
    /// relabelled as Alice) is refused: the legacy format cannot be replayed.
    #[tokio::test]
    async fn after_the_migration_a_v1_row_is_refused() {
        let (vault, store) = setup();
        let alice = create(vault.as_ref(), &store, ALICE.0, ALICE.1, now())
            .await
            .unwrap();
        load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        put_v1(&vault, &store, "AKIAOLDBOB", ALICE, "bob-secret").await;
        let (all, _) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert_eq!(loaded(&all), loaded(&[alice]));
    }

    #[tokio::test]
    async fn rows_that_do_not_open_never_cause_a_first_start() {
        let (vault, store) = setup();
        ensure_sealing_key(vault.as_ref(), &store).await.unwrap();
        store.put_setting(FORMAT_SETTING, FORMAT_V2).unwrap();
        for (akid, sealed) in [
            ("AKIASHORT", vec![1u8; 5]),
            ("AKIAGARBAGE", [V2_PREFIX.as_slice(), &[7u8; 60]].concat()),
        ] {
            store
                .put_credential(&CredentialRow {
                    access_key_id: akid.into(),
                    account_id: ALICE.0.into(),
                    principal_arn: ALICE.1.into(),
                    sealed_secret: sealed,
                    created_at: now(),
                    active: true,
                    user_name: None,
                    session: None,
                })
                .unwrap();
        }
        let (all, new) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert!(all.is_empty() && new.is_none());
        assert_eq!(store.credentials().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_hsm_outage_fails_the_load_instead_of_dropping_rows() {
        let (vault, store) = setup();
        create(vault.as_ref(), &store, ALICE.0, ALICE.1, now())
            .await
            .unwrap();
        vault.set_down(0, true);
        vault.set_down(1, true);
        assert!(load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .is_err());
    }

    #[test]
    fn aad_fields_cannot_be_shifted_into_each_other() {
        assert_ne!(
            aad_v2("AKIA1", "2345", "arn"),
            aad_v2("AKIA", "12345", "arn")
        );
        assert_ne!(aad_v2("a", "b", "c"), aad_v2("a", "", "bc"));
    }

    /// Another node made a key Inactive (or deleted it, or a session expired long ago):
    /// the refresh here follows the store without unsealing again.
    #[tokio::test]
    async fn refresh_follows_status_deletion_and_old_sessions() {
        let (vault, store) = setup();
        let alice = create(vault.as_ref(), &store, ALICE.0, ALICE.1, now())
            .await
            .unwrap();
        let session = create_session(
            vault.as_ref(),
            &store,
            ALICE.0,
            "arn:aws:sts::111122223333:assumed-role/r/s",
            Session {
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                role_id: "AROAEXAMPLE".into(),
                session_name: "s".into(),
            },
            now() + time::Duration::hours(1),
            now(),
        )
        .await
        .unwrap();
        let (all, _) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "the session reloads from the store");
        let known: crate::auth::StaticCredentials = all.into_iter().collect();
        let mut refused = std::collections::HashSet::new();
        store
            .set_credential_status(&alice.access_key_id, false)
            .unwrap();
        let decrypts = vault.calls("decrypt");
        let next = refresh(vault.as_ref(), &store, &known, &mut refused, now())
            .await
            .unwrap()
            .unwrap();
        assert!(!next.get(&alice.access_key_id).unwrap().active);
        assert_eq!(vault.calls("decrypt"), decrypts, "no unseal for a status");
        let s = next.get(&session.credential.access_key_id).unwrap();
        assert_eq!(
            s.session.as_ref().unwrap().token_sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(session.session_token.as_bytes()))
        );
        // A day after its expiry the session row is deleted.
        let later = now()
            + time::Duration::hours(1)
            + EXPIRED_SESSION_RETENTION
            + time::Duration::seconds(1);
        let next = refresh(vault.as_ref(), &store, &next, &mut refused, later)
            .await
            .unwrap()
            .unwrap();
        assert!(next.get(&session.credential.access_key_id).is_none());
        assert_eq!(store.credentials().unwrap().len(), 1);
        store.delete_credential(&alice.access_key_id).unwrap();
        let next = refresh(vault.as_ref(), &store, &next, &mut refused, later)
            .await
            .unwrap()
            .unwrap();
        assert!(next.is_empty());
    }

    #[tokio::test]
    async fn refresh_picks_up_new_accounts_and_reuses_open_credentials() {
        let (vault, store) = setup();
        let (first, _) = load_or_create(vault.as_ref(), &store, ALICE.0, now())
            .await
            .unwrap();
        let known: crate::auth::StaticCredentials = first.into_iter().collect();
        let mut refused = std::collections::HashSet::new();
        assert!(refresh(vault.as_ref(), &store, &known, &mut refused, now())
            .await
            .unwrap()
            .is_none());
        let bob = create_account(vault.as_ref(), &store, BOB.0, now())
            .await
            .unwrap();
        assert_eq!(bob.principal_arn, "arn:aws:iam::444455556666:root");
        let next = refresh(vault.as_ref(), &store, &known, &mut refused, now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.len(), 2);
        assert_eq!(
            next.get(&bob.access_key_id)
                .unwrap()
                .secret_access_key
                .as_str(),
            bob.secret_access_key.as_str()
        );
        assert!(matches!(
            create_account(vault.as_ref(), &store, BOB.0, now()).await,
            Err(KmsError::AlreadyExists(_))
        ));
        assert!(matches!(
            create_account(vault.as_ref(), &store, "12345", now()).await,
            Err(KmsError::Validation(_))
        ));
    }
}
