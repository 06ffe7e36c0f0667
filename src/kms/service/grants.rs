//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant and RevokeGrant, the
//! in-memory per-key grant cache they keep (loaded at [`Kms::open`], updated after each
//! durable store write), grant tokens, and the checks authorization asks of grants
//! ([`Kms::grant_allows`], [`Kms::grant_allows_op`], [`Kms::grant_permits_child`]).
//!
//! A grant token is the URL-safe base64 (no padding) of
//!
//! ```text
//! format version (1 byte, = 1) | grant id (32 bytes) | nonce (16 bytes) | HMAC-SHA256 (32 bytes)
//! ```
//!
//! MACed with a service-wide 256-bit key kept in the store's settings. Every CreateGrant
//! answer carries a fresh token (a new nonce), and every token of a grant is as good as
//! any other, as in AWS. A grant is durable before CreateGrant answers, so it is effective
//! at once: a token only has to be one this service issued. Tokens are never logged.

use super::dispatch::Resolved;
use super::{Entry, Kms};
use crate::auth::Principal;
use crate::kms::context::{EncryptionContext, GrantConstraints};
use crate::kms::error::KmsError;
use crate::kms::marker::{self, Marker};
use crate::kms::model::epoch_seconds;
use crate::kms::operation::Operation;
use crate::kms::policy::{Caller, CallerKind};
use crate::kms::requests::{self as rq, GrantRef};
use crate::kms::types::{GrantOperation, KeyId, KeySpec, KeyState, KeyUsage};
use crate::store::{GrantRow, KeyPosition, MetadataStore, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use rand::RngCore;
use serde::Serialize;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Most grants one key may have (AWS's quota).
pub const MAX_GRANTS_PER_KEY: usize = 50_000;

/// The setting holding the grant-token MAC key.
const TOKEN_KEY_SETTING: &str = "grant_token_key";
const TOKEN_VERSION: u8 = 1;
const TOKEN_LABEL: &[u8] = b"hsm-kms grant token v1";
const ID_LEN: usize = 32;
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;

/// One grant, as cached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    /// 64 lowercase hex characters.
    id: String,
    key_id: KeyId,
    /// The key's account.
    account: String,
    name: Option<String>,
    grantee: String,
    retiring: Option<String>,
    operations: Vec<GrantOperation>,
    constraints: Option<GrantConstraints>,
    /// The 12-digit account the grant was created in.
    issuing_account: String,
    created: OffsetDateTime,
}

impl Grant {
    fn position(&self) -> KeyPosition {
        KeyPosition {
            created_at: self.created,
            key_id: self.id.clone(),
        }
    }

    fn row(&self) -> Result<GrantRow, KmsError> {
        Ok(GrantRow {
            grant_id: self.id.clone(),
            key_id: self.key_id.to_string(),
            account_id: self.account.clone(),
            name: self.name.clone(),
            grantee_principal: self.grantee.clone(),
            retiring_principal: self.retiring.clone(),
            operations: self
                .operations
                .iter()
                .map(|o| o.as_str().to_string())
                .collect(),
            constraints: self
                .constraints
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| KmsError::Internal(format!("grant constraints: {e}")))?,
            issuing_account: self.issuing_account.clone(),
            created_at: self.created,
        })
    }

    fn from_row(row: GrantRow) -> Result<Grant, KmsError> {
        let bad = |what: &str| KmsError::Internal(format!("grant {}: bad {what}", row.grant_id));
        Ok(Grant {
            key_id: KeyId::parse(&row.key_id).map_err(|_| bad("key id"))?,
            operations: row
                .operations
                .iter()
                .map(|o| GrantOperation::parse(o))
                .collect::<Result<_, _>>()
                .map_err(|_| bad("operations"))?,
            constraints: row
                .constraints
                .map(serde_json::from_value)
                .transpose()
                .map_err(|_| bad("constraints"))?,
            id: row.grant_id,
            account: row.account_id,
            name: row.name,
            grantee: row.grantee_principal,
            retiring: row.retiring_principal,
            issuing_account: row.issuing_account,
            created: row.created_at,
        })
    }

    /// Whether the grant has the same parameters as a CreateGrant request (its retry).
    fn same_as(&self, r: &rq::CreateGrant, issuing_account: &str) -> bool {
        let mut a = self.operations.clone();
        let mut b = r.operations.clone();
        a.sort();
        b.sort();
        self.name == r.name
            && self.grantee == r.grantee
            && self.retiring == r.retiring
            && a == b
            && self.constraints == r.constraints
            && self.issuing_account == issuing_account
    }
}

/// The grants of every key, and the token MAC key.
pub(super) struct Grants {
    cache: RwLock<Cache>,
    token_key: Zeroizing<[u8; 32]>,
}

#[derive(Default)]
struct Cache {
    /// Each key's grants in `(created, id)` order.
    by_key: HashMap<KeyId, Vec<Arc<Grant>>>,
    /// Which key each grant is on.
    key_of: HashMap<String, KeyId>,
}

impl Cache {
    fn insert(&mut self, g: Arc<Grant>) {
        self.key_of.insert(g.id.clone(), g.key_id);
        let list = self.by_key.entry(g.key_id).or_default();
        let at = list.partition_point(|o| (o.created, &o.id) < (g.created, &g.id));
        list.insert(at, g);
    }

    fn remove(&mut self, id: &str) {
        if let Some(key) = self.key_of.remove(id) {
            if let Some(list) = self.by_key.get_mut(&key) {
                list.retain(|g| g.id != id);
                if list.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Grant>> {
        let key = self.key_of.get(id)?;
        self.by_key.get(key)?.iter().find(|g| g.id == id).cloned()
    }
}

impl Grants {
    /// Load every grant, and the token key (made on first use).
    pub(super) fn load(store: &dyn MetadataStore) -> Result<Grants, KmsError> {
        let mut cache = Cache::default();
        for row in store.all_grants()? {
            cache.insert(Arc::new(Grant::from_row(row)?));
        }
        let mut token_key = Zeroizing::new([0u8; 32]);
        match store.get_setting(TOKEN_KEY_SETTING)? {
            Some(k) if k.len() == 32 => token_key.copy_from_slice(&k),
            Some(_) => {
                return Err(KmsError::Internal(
                    "grant token key: stored value has the wrong length".into(),
                ))
            }
            None => {
                rand::rngs::OsRng.fill_bytes(token_key.as_mut_slice());
                store.put_setting(TOKEN_KEY_SETTING, token_key.as_slice())?;
            }
        }
        Ok(Grants {
            cache: RwLock::new(cache),
            token_key,
        })
    }

    fn mac(&self, id: &[u8], nonce: &[u8]) -> Result<Hmac<Sha256>, KmsError> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(self.token_key.as_slice())
            .map_err(|e| KmsError::Internal(format!("grant token MAC: {e}")))?;
        m.update(TOKEN_LABEL);
        m.update(&[TOKEN_VERSION]);
        m.update(id);
        m.update(nonce);
        Ok(m)
    }

    /// A new token for the grant `id` (64 hex characters).
    fn token(&self, id: &str) -> Result<String, KmsError> {
        let raw = hex::decode(id).map_err(|e| KmsError::Internal(format!("grant id: {e}")))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let tag = self.mac(&raw, &nonce)?.finalize().into_bytes();
        let mut bytes = Vec::with_capacity(1 + ID_LEN + NONCE_LEN + MAC_LEN);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(&raw);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&tag);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The grant id a token names, if this service issued the token.
    fn token_grant_id(&self, token: &str) -> Result<String, KmsError> {
        let invalid = || KmsError::InvalidGrantToken("Invalid grant token".into());
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (version, rest) = bytes.split_first().ok_or_else(invalid)?;
        if *version != TOKEN_VERSION || rest.len() != ID_LEN + NONCE_LEN + MAC_LEN {
            return Err(invalid());
        }
        let (id, rest) = rest.split_at(ID_LEN);
        let (nonce, tag) = rest.split_at(NONCE_LEN);
        self.mac(id, nonce)?
            .verify_slice(tag)
            .map_err(|_| invalid())?;
        Ok(hex::encode(id))
    }

    /// Forget the grants of a deleted key.
    pub(super) fn forget_key(&self, key: &KeyId) {
        let mut c = self.cache.write();
        if let Some(list) = c.by_key.remove(key) {
            for g in list {
                c.key_of.remove(&g.id);
            }
        }
    }
}

/// Whether the grant principal `principal` names `caller`: the caller's ARN, its role's
/// ARN (a role session), or the caller's account (`111122223333` or its root ARN), which
/// names every principal of the account.
fn names(principal: &str, caller: &Caller) -> bool {
    let account = caller.account_id();
    principal == caller.arn()
        || principal == caller.principal_arn()
        || principal == account
        || (principal.starts_with("arn:") && principal.ends_with(&format!(":iam::{account}:root")))
}

/// The grant operation that allows `op`, if one does. ReEncrypt needs two
/// (`ReEncryptFrom` on the source key, `ReEncryptTo` on the destination): `None`.
pub fn grant_operation(op: Operation) -> Option<GrantOperation> {
    use GrantOperation as G;
    use Operation as O;
    Some(match op {
        O::Decrypt => G::Decrypt,
        O::Encrypt => G::Encrypt,
        O::GenerateDataKey => G::GenerateDataKey,
        O::GenerateDataKeyWithoutPlaintext => G::GenerateDataKeyWithoutPlaintext,
        O::Sign => G::Sign,
        O::Verify => G::Verify,
        O::GetPublicKey => G::GetPublicKey,
        O::CreateGrant => G::CreateGrant,
        O::RetireGrant => G::RetireGrant,
        O::DescribeKey => G::DescribeKey,
        O::GenerateDataKeyPair => G::GenerateDataKeyPair,
        O::GenerateDataKeyPairWithoutPlaintext => G::GenerateDataKeyPairWithoutPlaintext,
        O::GenerateMac => G::GenerateMac,
        O::VerifyMac => G::VerifyMac,
        O::DeriveSharedSecret => G::DeriveSharedSecret,
        _ => return None,
    })
}

/// Grant operations that take an encryption context (on a symmetric encryption key), the
/// only ones an encryption-context constraint may govern.
fn takes_context(op: GrantOperation) -> bool {
    use GrantOperation as G;
    matches!(
        op,
        G::Decrypt
            | G::Encrypt
            | G::GenerateDataKey
            | G::GenerateDataKeyWithoutPlaintext
            | G::ReEncryptFrom
            | G::ReEncryptTo
            | G::GenerateDataKeyPair
            | G::GenerateDataKeyPairWithoutPlaintext
    )
}

/// Grant operations whose permission no constraint limits (AWS: a constrained grant may
/// include them, "but the constraint doesn't apply"); CreateGrant's constraint limits the
/// grants it creates instead ([`Kms::grant_permits_child`]).
fn unconstrained(op: GrantOperation) -> bool {
    matches!(
        op,
        GrantOperation::DescribeKey | GrantOperation::RetireGrant | GrantOperation::CreateGrant
    )
}

/// Whether a key of this spec and usage can do `op`.
fn key_supports(spec: KeySpec, usage: KeyUsage, op: GrantOperation) -> bool {
    use GrantOperation as G;
    if unconstrained(op) {
        return true;
    }
    match usage {
        KeyUsage::EncryptDecrypt if spec == KeySpec::SymmetricDefault => takes_context(op),
        KeyUsage::EncryptDecrypt => matches!(
            op,
            G::Encrypt | G::Decrypt | G::ReEncryptFrom | G::ReEncryptTo | G::GetPublicKey
        ),
        KeyUsage::SignVerify => matches!(op, G::Sign | G::Verify | G::GetPublicKey),
        KeyUsage::GenerateVerifyMac => matches!(op, G::GenerateMac | G::VerifyMac),
        KeyUsage::KeyAgreement => matches!(op, G::DeriveSharedSecret | G::GetPublicKey),
    }
}

fn op_list(ops: &[GrantOperation]) -> String {
    let names: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// Whether `id` is a grant id as this service (and AWS) writes them: 64 hex characters.
fn well_formed_id(id: &str) -> bool {
    id.len() == 2 * ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn invalid_id(id: &str) -> KmsError {
    KmsError::InvalidGrantId(format!("Invalid grant ID: '{id}'"))
}

/// CreateGrant's answer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrantOutput {
    /// `GrantToken`.
    pub grant_token: String,
    /// `GrantId`.
    pub grant_id: String,
}

/// One grant as ListGrants and ListRetirableGrants show it (`GrantListEntry`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantListEntry {
    /// `KeyId`: the key's ARN.
    pub key_id: String,
    /// `GrantId`.
    pub grant_id: String,
    /// `Name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `CreationDate`.
    #[serde(with = "epoch_seconds")]
    pub creation_date: OffsetDateTime,
    /// `GranteePrincipal`.
    pub grantee_principal: String,
    /// `RetiringPrincipal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    /// `IssuingAccount`: `arn:aws:iam::ACCOUNT:root`.
    pub issuing_account: String,
    /// `Operations`.
    pub operations: Vec<GrantOperation>,
    /// `Constraints`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
}

/// ListGrants' and ListRetirableGrants' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListGrantsOutput {
    /// `Grants`.
    pub grants: Vec<GrantListEntry>,
    /// `NextMarker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<Marker>,
    /// `Truncated`.
    pub truncated: bool,
}

// The three checks below are authorization's (`Kms::authorize` calls them).
impl Kms {
    /// True when some grant on `key` names `caller` as its grantee, allows `op`, and (for an
    /// operation governed by an encryption context) its constraints hold for `context`; a
    /// constrained grant never allows such an operation without a context. For ReEncrypt use
    /// [`Kms::grant_allows_op`] with `ReEncryptFrom` (source key) and `ReEncryptTo`
    /// (destination key): this answers false. O(grants on the key), read lock only.
    pub(super) fn grant_allows(
        &self,
        key: &crate::kms::model::KeyDoc,
        caller: &Caller,
        op: Operation,
        context: Option<&EncryptionContext>,
    ) -> bool {
        grant_operation(op).is_some_and(|g| self.grant_allows_op(key, caller, g, context))
    }

    /// [`Kms::grant_allows`] for a grant operation.
    pub(super) fn grant_allows_op(
        &self,
        key: &crate::kms::model::KeyDoc,
        caller: &Caller,
        op: GrantOperation,
        context: Option<&EncryptionContext>,
    ) -> bool {
        self.any_grant_of(key, caller, op, |g| {
            unconstrained(op)
                || g.constraints
                    .as_ref()
                    .is_none_or(|c| context.is_some_and(|ctx| c.hold_for(ctx)))
        })
    }

    /// Whether some grant on `key`, made in its account, names `caller` as its grantee,
    /// allows `op`, and satisfies `also`. O(grants on the key), read lock only.
    fn any_grant_of(
        &self,
        key: &crate::kms::model::KeyDoc,
        caller: &Caller,
        op: GrantOperation,
        also: impl Fn(&Grant) -> bool,
    ) -> bool {
        let cache = self.grants.cache.read();
        cache.by_key.get(&key.key_id).is_some_and(|list| {
            list.iter().any(|g| {
                g.account == key.account_id.as_str()
                    && g.operations.contains(&op)
                    && names(&g.grantee, caller)
                    && also(g)
            })
        })
    }

    /// For a caller allowed CreateGrant only through a grant: true when some grant on `key`
    /// names `caller` as its grantee, allows CreateGrant and every operation of the new
    /// grant, and has constraints the new grant's are at least as strict as (AWS's rule).
    pub(super) fn grant_permits_child(
        &self,
        key: &crate::kms::model::KeyDoc,
        caller: &Caller,
        operations: &[GrantOperation],
        constraints: Option<&GrantConstraints>,
    ) -> bool {
        self.any_grant_of(key, caller, GrantOperation::CreateGrant, |g| {
            operations.iter().all(|o| g.operations.contains(o))
                && g.constraints
                    .as_ref()
                    .is_none_or(|c| c.at_least_as_strict(constraints))
        })
    }
}

impl Kms {
    /// Check a request's `GrantTokens`: each must be a token this service issued
    /// (`InvalidGrantTokenException` otherwise).
    pub fn check_grant_tokens(&self, tokens: &[String]) -> Result<(), KmsError> {
        for t in tokens {
            self.grants.token_grant_id(t)?;
        }
        Ok(())
    }

    /// Number of grants on a key.
    pub fn grant_count(&self, key: &KeyId) -> usize {
        self.grants.cache.read().by_key.get(key).map_or(0, Vec::len)
    }

    /// The key a RetireGrant token's grant is on (for resolution).
    pub(super) fn grant_token_key(&self, token: &str) -> Result<Arc<Entry>, KmsError> {
        let id = self.grants.token_grant_id(token)?;
        let key = self
            .grants
            .cache
            .read()
            .key_of
            .get(&id)
            .copied()
            .ok_or_else(|| grant_not_found(&id))?;
        self.keys
            .read()
            .get(&key)
            .cloned()
            .ok_or_else(|| grant_not_found(&id))
    }

    fn list_entry(&self, g: &Grant) -> GrantListEntry {
        GrantListEntry {
            key_id: format!(
                "arn:aws:kms:{}:{}:key/{}",
                self.region.as_str(),
                g.account,
                g.key_id
            ),
            grant_id: g.id.clone(),
            name: g.name.clone(),
            creation_date: g.created,
            grantee_principal: g.grantee.clone(),
            retiring_principal: g.retiring.clone(),
            issuing_account: format!("arn:aws:iam::{}:root", g.issuing_account),
            operations: g.operations.clone(),
            constraints: g.constraints.clone(),
        }
    }

    /// `CreateGrant`: a grant on the key, durable before the answer (so effective at once).
    /// The same `Name` and parameters as an existing grant answer that grant's id again.
    pub async fn create_grant(
        &self,
        p: &Principal,
        keys: &Resolved,
        r: rq::CreateGrant,
    ) -> Result<CreateGrantOutput, KmsError> {
        let e = keys.key()?;
        if e.doc.key_state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.arn(&e.doc)
            )));
        }
        let unsupported: Vec<GrantOperation> = r
            .operations
            .iter()
            .copied()
            .filter(|o| !key_supports(e.doc.key_spec, e.doc.key_usage, *o))
            .collect();
        if !unsupported.is_empty() {
            return Err(KmsError::Validation(format!(
                "Grant operations {} are not valid for a KMS key with KeySpec {} and KeyUsage {}.",
                op_list(&unsupported),
                e.doc.key_spec.as_str(),
                e.doc.key_usage.as_str()
            )));
        }
        if r.operations == [GrantOperation::CreateGrant] {
            return Err(KmsError::Validation(
                "Grants must not contain only the CreateGrant operation.".into(),
            ));
        }
        if r.constraints.is_some() {
            let refused: Vec<GrantOperation> = r
                .operations
                .iter()
                .copied()
                .filter(|o| !unconstrained(*o) && !takes_context(*o))
                .collect();
            if !refused.is_empty() {
                return Err(KmsError::Validation(format!(
                    "Encryption context grant constraints are supported only on operations that take an encryption context, not on {}.",
                    op_list(&refused)
                )));
            }
        }
        let issuing = self.account(p)?.as_str().to_string();
        let _w = self.writes.lock().await;
        let existing = {
            let cache = self.grants.cache.read();
            let list = cache.by_key.get(&e.doc.key_id);
            if list.map_or(0, Vec::len) >= MAX_GRANTS_PER_KEY {
                return Err(KmsError::LimitExceeded(format!(
                    "The request would exceed the limit of {MAX_GRANTS_PER_KEY} grants on the KMS key {}.",
                    self.arn(&e.doc)
                )));
            }
            r.name.as_ref().and_then(|_| {
                list.and_then(|l| l.iter().find(|g| g.same_as(&r, &issuing)).cloned())
            })
        };
        if r.dry_run {
            return Err(KmsError::DryRun);
        }
        if let Some(g) = existing {
            return Ok(CreateGrantOutput {
                grant_token: self.grants.token(&g.id)?,
                grant_id: g.id.clone(),
            });
        }
        let mut raw = [0u8; ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let g = Grant {
            id: hex::encode(raw),
            key_id: e.doc.key_id,
            account: e.doc.account_id.as_str().to_string(),
            name: r.name,
            grantee: r.grantee,
            retiring: r.retiring,
            operations: r.operations,
            constraints: r.constraints,
            issuing_account: issuing,
            created: self.now(),
        };
        let row = g.row()?;
        let inserted = self
            .blocking(move |s| match s.insert_grant(&row) {
                Err(StoreError::NotFound) => Ok(false), // the key is gone
                other => other.map(|()| true),
            })
            .await?;
        if !inserted {
            return Err(self.not_found(&e.doc.account_id, &e.doc.key_id));
        }
        let out = CreateGrantOutput {
            grant_token: self.grants.token(&g.id)?,
            grant_id: g.id.clone(),
        };
        self.grants.cache.write().insert(Arc::new(g));
        Ok(out)
    }

    /// `ListGrants`: one page of the key's grants, oldest first, optionally only one grant
    /// id or one grantee principal.
    pub fn list_grants(
        &self,
        keys: &Resolved,
        r: rq::ListGrants,
    ) -> Result<ListGrantsOutput, KmsError> {
        let e = keys.key()?;
        if let Some(id) = &r.grant_id {
            if !well_formed_id(id) {
                return Err(invalid_id(id));
            }
        }
        let after = Marker::decode_opt(marker::Grants, r.page.marker.as_deref())?;
        let cache = self.grants.cache.read();
        let all = cache
            .by_key
            .get(&e.doc.key_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let matching = all.iter().filter(|g| {
            r.grant_id.as_ref().is_none_or(|id| *id == g.id)
                && r.grantee.as_ref().is_none_or(|p| *p == g.grantee)
        });
        Ok(self.page(matching, after, r.page.limit, marker::Grants))
    }

    /// `ListRetirableGrants`: one page of the grants, on keys of any account, whose retiring
    /// principal is the one given, oldest first.
    pub fn list_retirable_grants(
        &self,
        r: rq::ListRetirableGrants,
    ) -> Result<ListGrantsOutput, KmsError> {
        let after = Marker::decode_opt(marker::RetirableGrants, r.page.marker.as_deref())?;
        let cache = self.grants.cache.read();
        let mut matching: Vec<&Arc<Grant>> = cache
            .by_key
            .values()
            .flatten()
            .filter(|g| g.retiring.as_deref() == Some(r.retiring.as_str()))
            .collect();
        matching.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(self.page(
            matching.into_iter(),
            after,
            r.page.limit,
            marker::RetirableGrants,
        ))
    }

    fn page<'a, L: marker::Listing<Position = KeyPosition>>(
        &self,
        grants: impl Iterator<Item = &'a Arc<Grant>>,
        after: Option<KeyPosition>,
        limit: usize,
        listing: L,
    ) -> ListGrantsOutput {
        let limit = limit.max(1);
        let mut items: Vec<&Arc<Grant>> = grants
            .filter(|g| {
                after
                    .as_ref()
                    .is_none_or(|a| (g.created, &g.id) > (a.created_at, &a.key_id))
            })
            .take(limit + 1)
            .collect();
        let truncated = items.len() > limit;
        items.truncate(limit);
        let next_marker = Marker::after_last(listing, truncated, &items, |g| g.position());
        ListGrantsOutput {
            grants: items.into_iter().map(|g| self.list_entry(g)).collect(),
            truncated: next_marker.is_some(),
            next_marker,
        }
    }

    /// The grant `id` on the key `e`.
    fn grant_on(&self, e: &Entry, id: &str) -> Result<Arc<Grant>, KmsError> {
        if !well_formed_id(id) {
            return Err(invalid_id(id));
        }
        self.grants
            .cache
            .read()
            .get(id)
            .filter(|g| g.key_id == e.doc.key_id)
            .ok_or_else(|| grant_not_found(id))
    }

    /// Delete a grant: durable, then gone from the cache.
    async fn delete_grant(&self, id: &str) -> Result<(), KmsError> {
        let _w = self.writes.lock().await;
        let gid = id.to_string();
        let deleted = self
            .blocking(move |s| match s.delete_grant(&gid) {
                Err(StoreError::NotFound) => Ok(false),
                other => other.map(|()| true),
            })
            .await?;
        if !deleted {
            return Err(grant_not_found(id));
        }
        self.grants.cache.write().remove(id);
        Ok(())
    }

    /// `RetireGrant`: deletes the grant named by its token, or by its key and id. Allowed
    /// to the grant's retiring principal, its grantee when the grant allows RetireGrant,
    /// and the root user of the account the grant was created in; no policy governs it.
    pub async fn retire_grant(
        &self,
        p: &Principal,
        keys: &Resolved,
        r: rq::RetireGrant,
    ) -> Result<crate::kms::model::Empty, KmsError> {
        let e = keys.key()?;
        let g = match &r.grant {
            GrantRef::Token(t) => {
                let id = self.grants.token_grant_id(t)?;
                self.grant_on(&e, &id)?
            }
            GrantRef::Id { grant_id, .. } => self.grant_on(&e, grant_id)?,
        };
        let caller = self.iam.caller(p)?;
        let may = g.retiring.as_deref().is_some_and(|rp| names(rp, &caller))
            || (g.operations.contains(&GrantOperation::RetireGrant) && names(&g.grantee, &caller))
            || (*caller.kind() == CallerKind::Root && caller.account_id() == g.issuing_account);
        if !may {
            return Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: kms:RetireGrant on resource: {} because the grant does not allow it",
                p.arn,
                self.arn(&e.doc)
            )));
        }
        if r.dry_run {
            return Err(KmsError::DryRun);
        }
        self.delete_grant(&g.id).await?;
        Ok(crate::kms::model::Empty {})
    }

    /// `RevokeGrant`: deletes the grant at once.
    pub async fn revoke_grant(
        &self,
        keys: &Resolved,
        r: rq::RevokeGrant,
    ) -> Result<crate::kms::model::Empty, KmsError> {
        let e = keys.key()?;
        let g = self.grant_on(&e, &r.grant_id)?;
        if r.dry_run {
            return Err(KmsError::DryRun);
        }
        self.delete_grant(&g.id).await?;
        Ok(crate::kms::model::Empty {})
    }
}

fn grant_not_found(id: &str) -> KmsError {
    KmsError::NotFound(format!("Grant ID {id} not found"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::clock::ManualClock;
    use crate::kms::types::{KeyRef, Region};
    use crate::kms::vault::fake::FakeVault;
    use crate::store::SqliteStore;

    const ACCOUNT: &str = "111122223333";

    fn root() -> Principal {
        Principal {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            account_id: ACCOUNT.into(),
            arn: format!("arn:aws:iam::{ACCOUNT}:root"),
            session: None,
        }
    }

    fn kms() -> Kms {
        Kms::open(
            Arc::new(FakeVault::new(2)),
            Arc::new(SqliteStore::open_in_memory().unwrap()),
            Arc::new(ManualClock::new(
                OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            )),
            Region::parse("us-east-1").unwrap(),
        )
        .unwrap()
    }

    async fn key(k: &Kms, spec: KeySpec, usage: KeyUsage) -> Arc<Entry> {
        let out = k
            .create_key(
                &root(),
                rq::CreateKey {
                    key_spec: Some(spec),
                    key_usage: Some(usage),
                    ..rq::CreateKey::default()
                },
            )
            .await
            .unwrap();
        let id = KeyId::parse(&out.key_metadata.key_id).unwrap();
        k.keys.read().get(&id).cloned().unwrap()
    }

    async fn grant(
        k: &Kms,
        e: &Arc<Entry>,
        grantee: &str,
        ops: &[GrantOperation],
        constraints: Option<GrantConstraints>,
    ) -> Result<CreateGrantOutput, KmsError> {
        let keys = Resolved {
            key: Some(e.clone()),
            ..Resolved::default()
        };
        k.create_grant(
            &root(),
            &keys,
            rq::CreateGrant {
                key: KeyRef::Id(e.doc.key_id),
                grantee: grantee.into(),
                retiring: None,
                operations: ops.to_vec(),
                constraints,
                name: None,
                dry_run: false,
            },
        )
        .await
    }

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
            .unwrap()
    }

    fn user(name: &str) -> Caller {
        Caller::from_arn(&format!("arn:aws:iam::{ACCOUNT}:user/{name}")).unwrap()
    }

    #[tokio::test]
    async fn grant_allows_matches_grantee_operation_and_constraints() {
        use GrantOperation as G;
        let k = kms();
        let e = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let other = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let alice = user("alice");
        let empty = EncryptionContext::new();
        // Nothing before a grant.
        assert!(!k.grant_allows(&e.doc, &alice, Operation::Encrypt, Some(&empty)));
        grant(&k, &e, alice.arn(), &[G::Encrypt, G::DescribeKey], None)
            .await
            .unwrap();
        assert!(k.grant_allows(&e.doc, &alice, Operation::Encrypt, Some(&empty)));
        assert!(k.grant_allows(&e.doc, &alice, Operation::DescribeKey, None));
        // Not an operation the grant has, not another key, not another user or account.
        assert!(!k.grant_allows(&e.doc, &alice, Operation::Decrypt, Some(&empty)));
        assert!(!k.grant_allows(&other.doc, &alice, Operation::Encrypt, Some(&empty)));
        assert!(!k.grant_allows(&e.doc, &user("bob"), Operation::Encrypt, Some(&empty)));
        let stranger = Caller::from_arn("arn:aws:iam::444455556666:user/alice").unwrap();
        assert!(!k.grant_allows(&e.doc, &stranger, Operation::Encrypt, Some(&empty)));
        // ReEncrypt only through its two grant operations.
        assert!(!k.grant_allows(&e.doc, &alice, Operation::ReEncrypt, Some(&empty)));
        grant(&k, &e, alice.arn(), &[G::ReEncryptFrom], None)
            .await
            .unwrap();
        assert!(k.grant_allows_op(&e.doc, &alice, G::ReEncryptFrom, Some(&empty)));
        assert!(!k.grant_allows_op(&e.doc, &alice, G::ReEncryptTo, Some(&empty)));
        assert_eq!(k.grant_count(&e.doc.key_id), 2);
    }

    #[tokio::test]
    async fn role_sessions_and_accounts_as_grantees() {
        use GrantOperation as G;
        let k = kms();
        let e = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let role = format!("arn:aws:iam::{ACCOUNT}:role/app");
        let session = Caller::assumed_role(&role, "s1").unwrap();
        let empty = EncryptionContext::new();
        grant(&k, &e, &role, &[G::Decrypt], None).await.unwrap();
        assert!(k.grant_allows(&e.doc, &session, Operation::Decrypt, Some(&empty)));
        assert!(!k.grant_allows(&e.doc, &user("app"), Operation::Decrypt, Some(&empty)));
        // A session ARN names that session only.
        grant(&k, &e, session.arn(), &[G::Encrypt], None)
            .await
            .unwrap();
        assert!(k.grant_allows(&e.doc, &session, Operation::Encrypt, Some(&empty)));
        let s2 = Caller::assumed_role(&role, "s2").unwrap();
        assert!(!k.grant_allows(&e.doc, &s2, Operation::Encrypt, Some(&empty)));
        // The account (root ARN or bare id) names every principal of the account.
        grant(
            &k,
            &e,
            &format!("arn:aws:iam::{ACCOUNT}:root"),
            &[G::DescribeKey],
            None,
        )
        .await
        .unwrap();
        grant(&k, &e, ACCOUNT, &[G::GenerateDataKey], None)
            .await
            .unwrap();
        for c in [user("zed"), s2.clone()] {
            assert!(k.grant_allows(&e.doc, &c, Operation::DescribeKey, None));
            assert!(k.grant_allows(&e.doc, &c, Operation::GenerateDataKey, Some(&empty)));
        }
        let stranger = Caller::from_arn("arn:aws:iam::444455556666:root").unwrap();
        assert!(!k.grant_allows(&e.doc, &stranger, Operation::DescribeKey, None));
    }

    #[tokio::test]
    async fn constraints_equals_and_subset() {
        use GrantOperation as G;
        let k = kms();
        let e = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let (a, b) = (user("a"), user("b"));
        let equals = GrantConstraints::new(None, Some(ctx(&[("dept", "it")]))).unwrap();
        let subset = GrantConstraints::new(Some(ctx(&[("dept", "it")])), None).unwrap();
        grant(&k, &e, a.arn(), &[G::Decrypt, G::DescribeKey], equals)
            .await
            .unwrap();
        grant(&k, &e, b.arn(), &[G::Decrypt], subset).await.unwrap();
        let exact = ctx(&[("dept", "it")]);
        let more = ctx(&[("dept", "it"), ("x", "y")]);
        let wrong = ctx(&[("dept", "hr")]);
        let d = Operation::Decrypt;
        assert!(k.grant_allows(&e.doc, &a, d, Some(&exact)));
        assert!(!k.grant_allows(&e.doc, &a, d, Some(&more)));
        assert!(!k.grant_allows(&e.doc, &a, d, Some(&wrong)));
        assert!(!k.grant_allows(&e.doc, &a, d, None));
        assert!(!k.grant_allows(&e.doc, &a, d, Some(&EncryptionContext::new())));
        assert!(k.grant_allows(&e.doc, &b, d, Some(&exact)));
        assert!(k.grant_allows(&e.doc, &b, d, Some(&more)));
        assert!(!k.grant_allows(&e.doc, &b, d, Some(&wrong)));
        assert!(!k.grant_allows(&e.doc, &b, d, None));
        // DescribeKey is not governed by the constraint.
        assert!(k.grant_allows(&e.doc, &a, Operation::DescribeKey, None));
    }

    #[tokio::test]
    async fn child_grants_no_wider_than_their_parent() {
        use GrantOperation as G;
        let k = kms();
        let e = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let a = user("a");
        let subset = GrantConstraints::new(Some(ctx(&[("dept", "it")])), None).unwrap();
        grant(
            &k,
            &e,
            a.arn(),
            &[G::CreateGrant, G::Decrypt, G::Encrypt],
            subset,
        )
        .await
        .unwrap();
        let stricter_subset =
            GrantConstraints::new(Some(ctx(&[("dept", "it"), ("x", "y")])), None).unwrap();
        let equals_superset = GrantConstraints::new(None, Some(ctx(&[("dept", "it")]))).unwrap();
        let looser = GrantConstraints::new(Some(ctx(&[("x", "y")])), None).unwrap();
        assert!(k.grant_permits_child(&e.doc, &a, &[G::Decrypt], stricter_subset.as_ref()));
        assert!(k.grant_permits_child(&e.doc, &a, &[G::Decrypt], equals_superset.as_ref()));
        assert!(!k.grant_permits_child(&e.doc, &a, &[G::Decrypt], looser.as_ref()));
        assert!(!k.grant_permits_child(&e.doc, &a, &[G::Decrypt], None));
        assert!(!k.grant_permits_child(
            &e.doc,
            &a,
            &[G::Decrypt, G::ReEncryptFrom],
            stricter_subset.as_ref()
        ));
        assert!(!k.grant_permits_child(
            &e.doc,
            &user("b"),
            &[G::Decrypt],
            stricter_subset.as_ref()
        ));
        // Only a grant with CreateGrant permits children.
        let b = user("b");
        grant(&k, &e, b.arn(), &[G::Decrypt], None).await.unwrap();
        assert!(!k.grant_permits_child(&e.doc, &b, &[G::Decrypt], None));
        // An Equals parent needs the very same Equals.
        let c = user("c");
        let eq = GrantConstraints::new(None, Some(ctx(&[("k", "v")]))).unwrap();
        grant(&k, &e, c.arn(), &[G::CreateGrant, G::Decrypt], eq.clone())
            .await
            .unwrap();
        assert!(k.grant_permits_child(&e.doc, &c, &[G::Decrypt], eq.as_ref()));
        let eq_more = GrantConstraints::new(None, Some(ctx(&[("k", "v"), ("l", "w")]))).unwrap();
        assert!(!k.grant_permits_child(&e.doc, &c, &[G::Decrypt], eq_more.as_ref()));
    }

    #[tokio::test]
    async fn tokens_authenticate() {
        use GrantOperation as G;
        let k = kms();
        let e = key(&k, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
        let out = grant(&k, &e, user("a").arn(), &[G::Encrypt], None)
            .await
            .unwrap();
        assert_eq!(out.grant_id.len(), 64);
        k.check_grant_tokens(std::slice::from_ref(&out.grant_token))
            .unwrap();
        // Any altered byte, or another service's key, and the token is refused.
        let mut bytes = URL_SAFE_NO_PAD.decode(&out.grant_token).unwrap();
        for i in [0, 5, 40, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let t = URL_SAFE_NO_PAD.encode(&b);
            let err = k.check_grant_tokens(&[t]).unwrap_err();
            assert_eq!(err.aws_type(), "InvalidGrantTokenException");
        }
        bytes.pop();
        assert!(k
            .check_grant_tokens(&[URL_SAFE_NO_PAD.encode(&bytes)])
            .is_err());
        assert!(kms().check_grant_tokens(&[out.grant_token]).is_err());
        assert!(k.check_grant_tokens(&["garbage".into()]).is_err());
    }

    #[test]
    fn operations_map_to_grant_operations() {
        assert_eq!(
            grant_operation(Operation::Encrypt),
            Some(GrantOperation::Encrypt)
        );
        assert_eq!(grant_operation(Operation::ReEncrypt), None);
        assert_eq!(grant_operation(Operation::CreateKey), None);
        for g in GrantOperation::ALL {
            if !matches!(
                g,
                GrantOperation::ReEncryptFrom | GrantOperation::ReEncryptTo
            ) {
                let op = Operation::from_name(g.as_str()).unwrap();
                assert_eq!(grant_operation(op), Some(*g));
            }
        }
    }
}
