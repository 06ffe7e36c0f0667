//! `Kms`: one method per KMS operation. Resolves key references (id, ARN, alias, alias
//! ARN), checks key state and usage, builds the ciphertext header and AAD, asks the HSM
//! cluster to do the cryptography, and commits metadata before answering. Metadata is
//! cached in memory (single node) with the store as the source of truth.
//!
//! This file holds the core (keys, symmetric crypto, aliases) and the shared helpers;
//! other operation families live in child modules with their own `impl Kms` blocks.

use super::ciphertext::{self, Blob, Header};
use super::context::EncryptionContext;
use super::error::KmsError;
use super::marker::{self, Marker};
use super::model::*;
use super::requests::{self, DataKeySize, Page};
use super::types::{
    AccountId, AliasArn, AliasName, EncryptionAlgorithm, KeyArn, KeyId, KeyManager, KeyRef,
    KeySpec, KeyState, KeyUsage, Origin, Plaintext, Region, Tag,
};
use super::vault::{KeyKind, KeyVault, ObjectId};
use crate::auth::Principal;
use crate::clock::Clock;
use crate::store::{AliasRow, KeyPosition, KeyRow, MetadataStore};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use zeroize::Zeroizing;

mod asymmetric;
mod authz;
pub use authz::{CallEnv, GetKeyPolicyOutput, ListKeyPoliciesOutput};
mod dispatch;
mod events;
mod grants;
mod import;
pub use import::{
    GetParametersForImportOutput, KeyMaterialOutput, TOKEN_KEY_ID as IMPORT_TOKEN_KEY_ID,
};
mod integrity;
mod reconcile;
pub use reconcile::{ReconcileReport, ReconcileRow, ORPHAN_GRACE};
mod lifecycle;
mod rotation;
mod usage;
pub use usage::{GetKeyLastUsageOutput, KeyLastUsageData};
#[cfg(test)]
mod tests;
pub use dispatch::{Output, Reply, Resolved};
pub use grants::{
    grant_operation, CreateGrantOutput, GrantListEntry, ListGrantsOutput, MAX_GRANTS_PER_KEY,
};
pub use rotation::DEFAULT_ON_DEMAND_ROTATION_LIMIT as ON_DEMAND_ROTATION_LIMIT;

pub use asymmetric::{
    DataKeyPairOutput, DeriveSharedSecretOutput, GenerateMacOutput, GetPublicKeyOutput, SignOutput,
    VerifyMacOutput, VerifyOutput,
};

/// A key as cached: its document, the store version it was read at (for the optimistic
/// updates of key-state changes) and its key policy, parsed once per policy text.
/// The store counter the readiness check increments (a real, durable write).
const READY_PROBE_COUNTER: &str = "ready_probe";

#[derive(Debug, Clone)]
struct Entry {
    doc: KeyDoc,
    version: i64,
    policy: Arc<super::policy::PolicyDocument>,
}

impl Entry {
    /// The entry of `doc`, reusing `previous`'s parsed policy when the text is unchanged.
    fn new(doc: KeyDoc, version: i64, previous: Option<&Entry>) -> Result<Entry, KmsError> {
        let policy = match previous {
            Some(p) if p.doc.policy == doc.policy => p.policy.clone(),
            _ => authz::parse_key_policy(&doc)?,
        };
        Ok(Entry {
            doc,
            version,
            policy,
        })
    }
}

/// The KMS domain service.
pub struct Kms {
    vault: Arc<dyn KeyVault>,
    store: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    region: Region,
    keys: RwLock<HashMap<KeyId, Arc<Entry>>>,
    aliases: RwLock<HashMap<(String, String), AliasRow>>,
    writes: tokio::sync::Mutex<()>,
    /// Serializes first-use creation of AWS managed keys (`alias/aws/…`).
    aws_managed: tokio::sync::Mutex<()>,
    rotation: rotation::Rotations,
    /// IAM identities: who a principal is, and its identity policies.
    iam: super::iam::Identities,
    /// Every key's grants, and the grant-token MAC key.
    grants: grants::Grants,
    /// Orphaned objects seen by the background reconciliation, and when first seen.
    orphans_seen: parking_lot::Mutex<HashMap<String, time::OffsetDateTime>>,
    /// Every key's last successful cryptographic operation (`GetKeyLastUsage`).
    usage: usage::Usage,
    /// Where service events are recorded (set once the trail is open).
    auditor: std::sync::OnceLock<Arc<super::audit::Auditor>>,
    /// Whether `watch_hsms` ran once (its first call records nothing).
    hsms_watched: std::sync::atomic::AtomicBool,
    /// Imports of key material in progress, and the import token key.
    import: import::Imports,
}

fn object_id(key: &KeyId, version: u32) -> ObjectId {
    ObjectId::new(format!("kms/{key}/{version}"))
}

/// The next generation of `doc`'s material: its version and a fresh backing object name
/// (`kms/<key>/<version>/<random>`, so a failed attempt never collides with a retry).
fn next_generation(doc: &KeyDoc) -> (u32, ObjectId) {
    let version = doc.backing.iter().map(|b| b.version).max().unwrap_or(0) + 1;
    let object = ObjectId::new(format!(
        "{}/{}",
        object_id(&doc.key_id, version),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    (version, object)
}

/// Run `f` on `store` on a blocking thread (never a store call on an async worker), in the
/// current tracing span.
pub(crate) async fn store_blocking<T: Send + 'static>(
    store: &Arc<dyn MetadataStore>,
    f: impl FnOnce(&dyn MetadataStore) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, KmsError> {
    let store = store.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| f(store.as_ref())))
        .await
        .map_err(|e| KmsError::Internal(format!("store task: {e}")))?
        .map_err(KmsError::from)
}

impl Kms {
    /// Load every key and alias from the store into memory.
    pub fn open(
        vault: Arc<dyn KeyVault>,
        store: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        region: Region,
    ) -> Result<Kms, KmsError> {
        let all_aliases = store.all_aliases()?;
        let mut keys = HashMap::new();
        for row in store.all_keys()? {
            let mut doc: KeyDoc = serde_json::from_value(row.doc).map_err(|e| {
                KmsError::Internal(format!("key {}: bad document: {e}", row.key_id))
            })?;
            if doc.policy.is_none() && doc.key_manager == KeyManager::Aws {
                // Written before key policies: AWS's fixed policy for its service.
                doc.policy = lifecycle::aws_managed_policy_of(&doc, &all_aliases, &region);
            }
            let version = row.version;
            keys.insert(doc.key_id, Arc::new(Entry::new(doc, version, None)?));
        }
        // Every copy is verified against its recorded check value after each (re)connect.
        vault.expect_check_values(integrity::recorded(keys.values().map(|e| &e.doc)));
        let aliases = all_aliases
            .into_iter()
            .map(|a| ((a.account_id.clone(), a.alias_name.clone()), a))
            .collect();
        let iam = super::iam::Identities::load(&store)?;
        let grants = grants::Grants::load(store.as_ref())?;
        let usage = usage::Usage::load(store.as_ref(), clock.now())?;
        Ok(Kms {
            vault,
            store,
            clock,
            region,
            keys: RwLock::new(keys),
            aliases: RwLock::new(aliases),
            writes: tokio::sync::Mutex::new(()),
            aws_managed: tokio::sync::Mutex::new(()),
            rotation: rotation::Rotations::default(),
            iam,
            grants,
            orphans_seen: parking_lot::Mutex::new(HashMap::new()),
            usage,
            auditor: std::sync::OnceLock::new(),
            hsms_watched: std::sync::atomic::AtomicBool::new(false),
            import: import::Imports::default(),
        })
    }

    /// The IAM identities.
    pub fn iam(&self) -> &super::iam::Identities {
        &self.iam
    }

    /// Create an account while the service runs: its root user's credential, sealed and
    /// stored (what `hsm-kms account create` does from outside); the running service
    /// accepts it at its next credential refresh.
    pub async fn create_account(
        &self,
        account_id: &str,
    ) -> Result<crate::auth::Credential, KmsError> {
        super::credentials::create_account(self.vault.as_ref(), &self.store, account_id, self.now())
            .await
    }

    /// The HSMs, through the domain's port.
    pub fn vault(&self) -> &Arc<dyn KeyVault> {
        &self.vault
    }

    /// The region this service answers for; it appears in every ARN it issues.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Number of keys known (all accounts).
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// Number of keys in each `KeyState` (all accounts; every state, zeros included).
    pub fn key_counts_by_state(&self) -> Vec<(KeyState, usize)> {
        let mut counts: Vec<(KeyState, usize)> = KeyState::ALL.iter().map(|s| (*s, 0)).collect();
        for e in self.keys.read().values() {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == e.doc.key_state) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Whether the metadata store takes a durable write now (one counter increment, the
    /// readiness check); the store's error otherwise.
    pub async fn metadata_writable(&self) -> Result<(), KmsError> {
        self.blocking(|s| s.next_counter(READY_PROBE_COUNTER))
            .await
            .map(|_| ())
    }

    /// Copy keys that an HSM lacks (it was down when they were created) from a healthy one.
    pub async fn resync_hsms(&self) -> Result<usize, KmsError> {
        self.resync_hsms_with_progress(&mut crate::progress::Silent)
            .await
    }

    /// [`Kms::resync_hsms`] in batches, advancing `progress` by the keys of each (for
    /// `hsm-kms hsm enroll` and `reconcile --fix`); returns the copies made.
    pub async fn resync_hsms_with_progress(
        &self,
        progress: &mut dyn crate::progress::Progress,
    ) -> Result<usize, KmsError> {
        const BATCH: usize = 16;
        let keys = self.resync_list();
        progress.stage("copying keys", keys.len() as u64);
        let (mut copies, mut hsms) = (0, Vec::new());
        for batch in keys.chunks(BATCH) {
            let (made, by) = super::vault::served_by(self.vault.replicate_missing(batch)).await;
            copies += made?;
            for h in by {
                if !hsms.contains(&h) {
                    hsms.push(h);
                }
            }
            progress.advance(batch.len() as u64);
        }
        progress.finish();
        if copies > 0 {
            self.service_event(
                "SynchronizeHsms",
                None,
                Vec::new(),
                serde_json::json!({ "copiesMade": copies }),
                hsms,
            )
            .await;
        }
        Ok(copies)
    }

    /// Every HSM object the service needs in every HSM: its own credential-sealing and audit
    /// digest keys, the backing keys of symmetric keys (all versions), the current material
    /// of the others. A key pending deletion is never copied back into an HSM that destroyed it (and an
    /// object no HSM holds is skipped by the vault).
    fn resync_list(&self) -> Vec<(ObjectId, String, KeyKind)> {
        let keys = self.keys.read();
        let live = || {
            keys.values()
                .filter(|e| e.doc.key_state != KeyState::PendingDeletion)
        };
        // Imported material that was deleted or expired is never copied back.
        let symmetric = live()
            .filter(|e| e.doc.key_spec == KeySpec::SymmetricDefault)
            .flat_map(|e| {
                e.doc
                    .backing
                    .iter()
                    .filter(|b| import::material_present(b))
                    .map(|b| (b.object_id.clone(), self.arn(&e.doc), KeyKind::Aes))
                    .collect::<Vec<_>>()
            });
        let others = live().filter_map(|e| {
            let kind = asymmetric::key_kind(e.doc.key_spec, e.doc.key_usage)?;
            let b = e.doc.backing(e.doc.current_backing)?;
            import::material_present(b).then(|| (b.object_id.clone(), self.arn(&e.doc), kind))
        });
        // Unexpired import wrapping keys: an HSM that was away gets them too.
        let now = self.now();
        let wrapping = live().flat_map(|e| {
            e.doc
                .import_parameters
                .iter()
                .filter(|p| p.valid_to > now)
                .map(|p| {
                    (
                        p.object_id.clone(),
                        format!("{} import wrapping key", self.arn(&e.doc)),
                        KeyKind::Pair(
                            super::vault::PairSpec::Rsa(p.bits),
                            super::vault::PairUse::Unwrap,
                        ),
                    )
                })
                .collect::<Vec<_>>()
        });
        let service_owned = [
            (
                crate::kms::credentials::sealing_key(),
                crate::kms::credentials::SEALING_KEY_LABEL.to_string(),
                KeyKind::Aes,
            ),
            (
                crate::kms::digest::digest_key(),
                crate::kms::digest::DIGEST_KEY_LABEL.to_string(),
                crate::kms::digest::DIGEST_KEY_KIND,
            ),
        ];
        service_owned
            .into_iter()
            .chain([import::service_owned()])
            .chain(symmetric)
            .chain(others)
            .chain(wrapping)
            .collect()
    }

    /// One pass of background work, driven by the injected clock: re-sync HSMs that lack
    /// keys (and, as they arrive, due deletions and rotations). Safe to call at any time;
    /// `app` runs it every `maintenance_interval_ms`, tests call it after moving the clock.
    pub async fn maintenance(&self) -> Result<(), KmsError> {
        let destroyed = self.destroy_due_keys().await;
        let imports = self.import_maintenance().await;
        // Copies are verified at first use after each (re)connect and again after every pass.
        self.vault.reverify_copies();
        let checked = self.record_check_values().await;
        let resync = self.resync_hsms().await;
        let reconciled = self.reconcile_background(self.now()).await;
        self.rotate_due_keys().await;
        let usage = self.flush_key_usage().await;
        destroyed?;
        imports?;
        usage?;
        checked?;
        reconciled?;
        resync.map(|_| ())
    }

    /// The current time, to the millisecond (the precision of stored and answered dates).
    pub(crate) fn now(&self) -> OffsetDateTime {
        epoch_seconds::truncate(self.clock.now())
    }

    fn arn(&self, doc: &KeyDoc) -> String {
        KeyArn::new(self.region.clone(), doc.account_id.clone(), doc.key_id).to_string()
    }

    fn account(&self, p: &Principal) -> Result<AccountId, KmsError> {
        AccountId::parse(&p.account_id).map_err(|e| KmsError::Internal(e.to_string()))
    }

    fn alias_arn(&self, account: &AccountId, alias: &AliasName) -> String {
        AliasArn::new(self.region.clone(), account.clone(), alias.clone()).to_string()
    }

    fn not_found(&self, account: &AccountId, id: &KeyId) -> KmsError {
        KmsError::NotFound(format!(
            "Key '{}' does not exist",
            KeyArn::new(self.region.clone(), account.clone(), *id)
        ))
    }

    fn entry(&self, account: &AccountId, id: &KeyId) -> Result<Arc<Entry>, KmsError> {
        match self.keys.read().get(id) {
            Some(e) if &e.doc.account_id == account => Ok(e.clone()),
            _ => Err(self.not_found(account, id)),
        }
    }

    /// Resolve a `KeyId` member: key id, key ARN, and (where `aliases`) alias name or ARN.
    /// Only an ARN reaches another account's key, and only where `cross` (the operation
    /// allows cross-account use); whether the caller may use it is authorization's call.
    fn resolve_ref(
        &self,
        p: &Principal,
        r: &KeyRef,
        aliases: bool,
        cross: bool,
    ) -> Result<Arc<Entry>, KmsError> {
        let account = self.account(p)?;
        let invalid = || KmsError::NotFound(format!("Invalid keyId '{r}'"));
        let arn_account = |region: &Region, owner: &AccountId| {
            if *region != self.region || (*owner != account && !cross) {
                return Err(KmsError::NotFound(format!(
                    "Invalid arn {}",
                    region.as_str()
                )));
            }
            Ok(owner.clone())
        };
        match r {
            KeyRef::Id(id) => self.entry(&account, id),
            KeyRef::KeyArn(a) => self.entry(&arn_account(&a.region, &a.account)?, &a.key_id),
            KeyRef::AliasName(name) if aliases => self.by_alias(&account, name),
            KeyRef::AliasArn(a) if aliases => {
                self.by_alias(&arn_account(&a.region, &a.account)?, &a.alias)
            }
            _ => Err(invalid()),
        }
    }

    /// The key an alias of the caller's account points at now (`None` when the alias does
    /// not exist: the operation reports that).
    fn alias_key(&self, p: &Principal, name: &AliasName) -> Result<Option<Arc<Entry>>, KmsError> {
        let account = self.account(p)?;
        Ok(self.by_alias(&account, name).ok())
    }

    fn by_alias(&self, account: &AccountId, name: &AliasName) -> Result<Arc<Entry>, KmsError> {
        let target = self
            .aliases
            .read()
            .get(&(account.as_str().to_string(), name.as_str().to_string()))
            .map(|a| a.key_id.clone());
        let missing = || {
            KmsError::NotFound(format!(
                "Alias '{}' is not found.",
                self.alias_arn(account, name)
            ))
        };
        let id = KeyId::parse(&target.ok_or_else(missing)?).map_err(|_| missing())?;
        self.entry(account, &id)
    }

    /// State and usage checks for a cryptographic operation.
    fn usable_for(&self, e: &Entry, usage: KeyUsage) -> Result<(), KmsError> {
        // The ARN is formatted only for an error (not on every successful call).
        let arn = || self.arn(&e.doc);
        match e.doc.key_state {
            KeyState::Enabled => {}
            KeyState::Disabled => {
                return Err(KmsError::Disabled(format!("{} is disabled.", arn())))
            }
            KeyState::PendingDeletion => {
                return Err(KmsError::InvalidState(format!(
                    "{} is pending deletion.",
                    arn()
                )))
            }
            KeyState::PendingImport => {
                return Err(KmsError::InvalidState(format!(
                    "{} is pending import.",
                    arn()
                )))
            }
            other => {
                return Err(KmsError::InvalidState(format!(
                    "{} is {}.",
                    arn(),
                    other.as_str()
                )))
            }
        }
        if e.doc.key_usage != usage {
            return Err(KmsError::InvalidKeyUsage(format!(
                "{} key usage is {} which is not valid for this operation.",
                arn(),
                e.doc.key_usage.as_str()
            )));
        }
        Ok(())
    }

    fn symmetric_algorithm(
        &self,
        e: &Entry,
        alg: Option<EncryptionAlgorithm>,
    ) -> Result<EncryptionAlgorithm, KmsError> {
        match alg {
            None | Some(EncryptionAlgorithm::SymmetricDefault)
                if e.doc.key_spec == KeySpec::SymmetricDefault =>
            {
                Ok(EncryptionAlgorithm::SymmetricDefault)
            }
            Some(a) => Err(KmsError::InvalidKeyUsage(format!(
                "Algorithm {} is incompatible with key spec {}.",
                a.as_str(),
                e.doc.key_spec.as_str()
            ))),
            None => Err(KmsError::InvalidKeyUsage(format!(
                "{} is not a symmetric encryption key.",
                self.arn(&e.doc)
            ))),
        }
    }

    /// The `KeyMetadata` AWS would return for the key `doc` describes.
    pub fn metadata(&self, doc: &KeyDoc) -> KeyMetadata {
        KeyMetadata {
            aws_account_id: doc.account_id.as_str().to_string(),
            key_id: doc.key_id.to_string(),
            arn: self.arn(doc),
            creation_date: doc.creation_date,
            enabled: doc.key_state == KeyState::Enabled,
            description: doc.description.clone(),
            key_usage: doc.key_usage,
            key_state: doc.key_state,
            deletion_date: doc.deletion_date,
            pending_deletion_window_in_days: doc.pending_window_days,
            origin: doc.origin,
            key_manager: doc.key_manager,
            customer_master_key_spec: doc.key_spec,
            key_spec: doc.key_spec,
            encryption_algorithms: doc.key_spec.encryption_algorithms(doc.key_usage),
            signing_algorithms: doc.key_spec.signing_algorithms(doc.key_usage),
            mac_algorithms: doc.key_spec.mac_algorithms(doc.key_usage),
            key_agreement_algorithms: doc.key_spec.key_agreement_algorithms(doc.key_usage),
            multi_region: false,
            current_key_material_id: rotation::current_key_material_id(doc),
            expiration_model: import::key_expiry(doc).0,
            valid_to: import::key_expiry(doc).1,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetadataStore) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, KmsError> {
        store_blocking(&self.store, f).await
    }

    /// Change one key's metadata: `f` edits a copy of the document; the change is committed
    /// to the store (optimistic on the stored version) before the cache is updated and the
    /// new document returned. Writers are serialized, so a conflict means another node.
    pub(crate) async fn update_doc(
        &self,
        key_id: &KeyId,
        f: impl FnOnce(&mut KeyDoc) -> Result<(), KmsError>,
    ) -> Result<KeyDoc, KmsError> {
        let _w = self.writes.lock().await;
        let current = self
            .keys
            .read()
            .get(key_id)
            .cloned()
            .ok_or_else(|| KmsError::Internal(format!("key {key_id} vanished")))?;
        let mut doc = current.doc.clone();
        f(&mut doc)?;
        let value = serde_json::to_value(&doc).map_err(|e| KmsError::Internal(e.to_string()))?;
        let (id, expected) = (key_id.to_string(), current.version);
        let version = self
            .blocking(move |s| s.update_key(&id, expected, &value))
            .await?;
        let entry = Entry::new(doc.clone(), version, Some(&current))?;
        self.keys.write().insert(*key_id, Arc::new(entry));
        Ok(doc)
    }

    /// Remove a key's metadata (and its aliases and grants) once its material is gone from
    /// every HSM.
    pub(crate) async fn forget_key(&self, key_id: &KeyId) -> Result<(), KmsError> {
        let _w = self.writes.lock().await;
        let id = key_id.to_string();
        self.blocking(move |s| s.delete_key(&id)).await?;
        self.keys.write().remove(key_id);
        self.grants.forget_key(key_id);
        let id = key_id.to_string();
        self.aliases.write().retain(|_, a| a.key_id != id);
        Ok(())
    }

    // ------------------------------------------------------------------ keys

    /// `CreateKey`: a new key in the caller's account, its material generated in the HSMs.
    pub async fn create_key(
        &self,
        p: &Principal,
        input: requests::CreateKey,
    ) -> Result<KeyMetadataOutput, KmsError> {
        let account = self.account(p)?;
        let spec = input.key_spec.unwrap_or(KeySpec::SymmetricDefault);
        let usage = match input.key_usage {
            Some(u) => u,
            None => spec.default_usage().ok_or_else(|| {
                KmsError::Validation(format!(
                    "You must specify a KeyUsage value for a {} KMS key.",
                    spec.as_str()
                ))
            })?,
        };
        if !spec.default_usage_allowed(usage) {
            return Err(KmsError::Validation(format!(
                "KeyUsage {} is not compatible with KeySpec {}",
                usage.as_str(),
                spec.as_str()
            )));
        }
        asymmetric::check_spec_supported(spec, usage, self.vault.as_ref())?;
        let origin = input.origin.unwrap_or(Origin::AwsKms);
        match origin {
            Origin::AwsKms => {}
            Origin::External => import::check_importable(spec)?,
            _ => {
                return Err(KmsError::Unsupported(format!(
                    "Origin {} is not supported by this service yet.",
                    origin.as_str()
                )))
            }
        }
        if input.multi_region {
            return Err(KmsError::Unsupported(
                "Multi-Region keys are not supported by this service.".into(),
            ));
        }
        let description = input.description.unwrap_or_default();
        if description.chars().count() > 8192 {
            return Err(KmsError::Validation(
                "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192".into(),
            ));
        }
        check_tags(&input.tags)?;
        let key_id = KeyId::new_random();
        let policy = match input.policy {
            Some(text) => {
                let parsed = self.parse_given_policy(&text)?;
                if !input.bypass_policy_lockout_safety_check {
                    let arn = KeyArn::new(self.region.clone(), account.clone(), key_id);
                    self.lockout_check(p, &parsed, &arn.to_string())?;
                }
                text
            }
            None => super::policy::default_key_policy(account.as_str()),
        };
        let now = self.now();
        let obj = object_id(&key_id, 1);
        let mut doc = KeyDoc {
            key_id,
            account_id: account,
            description,
            key_spec: spec,
            key_usage: usage,
            key_state: if origin == Origin::External {
                KeyState::PendingImport
            } else {
                KeyState::Enabled
            },
            origin,
            key_manager: KeyManager::Customer,
            creation_date: now,
            deletion_date: None,
            pending_window_days: None,
            backing: vec![BackingKey {
                version: 1,
                object_id: obj.clone(),
                created: now,
                rotation: None,
                check_value: None,
                import: (origin == Origin::External)
                    .then(super::model::ImportedMaterial::never_imported),
            }],
            current_backing: 1,
            tags: dedup_tags(input.tags),
            public_key: None,
            rotation_schedule: None,
            policy: Some(policy),
            import_parameters: Vec::new(),
        };
        // The check value of the new material's copies is recorded with the key at once
        // (see `integrity`): an HSM that failed while making it may still finish later and
        // then hold a different key under the same name.
        let check_value = if origin == Origin::External {
            // No material until ImportKeyMaterial brings it.
            None
        } else if spec == KeySpec::SymmetricDefault {
            self.vault
                .create_key(&obj, &self.arn(&doc), KeyKind::Aes)
                .await?
                .check_value
        } else {
            let (public_key, check_value) = self
                .create_asymmetric_material(spec, usage, &obj, &self.arn(&doc))
                .await?;
            doc.public_key = public_key;
            check_value
        };
        if let Some(b) = doc.backing.first_mut() {
            b.check_value = check_value.map(hex::encode);
        }
        let row = KeyRow {
            key_id: key_id.to_string(),
            account_id: doc.account_id.as_str().to_string(),
            created_at: now,
            version: 1,
            doc: serde_json::to_value(&doc).map_err(|e| KmsError::Internal(e.to_string()))?,
        };
        if let Err(e) = self.blocking(move |s| s.insert_key(&row)).await {
            let _ = self.vault.destroy_key(&obj).await;
            return Err(e);
        }
        let meta = self.metadata(&doc);
        let entry = Entry::new(doc, 1, None)?;
        self.keys.write().insert(key_id, Arc::new(entry));
        Ok(KeyMetadataOutput { key_metadata: meta })
    }

    /// `DescribeKey`: the key's metadata.
    pub fn describe_key(&self, keys: &Resolved) -> Result<KeyMetadataOutput, KmsError> {
        let e = keys.key()?;
        Ok(KeyMetadataOutput {
            key_metadata: self.metadata(&e.doc),
        })
    }

    /// `ListKeys`: one page of the caller's account's keys, oldest first.
    pub async fn list_keys(
        &self,
        p: &Principal,
        Page { limit, marker }: Page,
    ) -> Result<ListKeysOutput, KmsError> {
        let account = p.account_id.clone();
        let after = Marker::decode_opt(marker::Keys, marker.as_deref())?;
        let page = self
            .blocking(move |s| s.list_keys(&account, after.as_ref(), limit))
            .await?;
        let next_marker =
            Marker::after_last(marker::Keys, page.truncated, &page.items, KeyPosition::of);
        let keys = page
            .items
            .into_iter()
            .map(|r| KeyListEntry {
                key_arn: format!(
                    "arn:aws:kms:{}:{}:key/{}",
                    self.region.as_str(),
                    r.account_id,
                    r.key_id
                ),
                key_id: r.key_id,
            })
            .collect();
        Ok(ListKeysOutput {
            keys,
            truncated: next_marker.is_some(),
            next_marker,
        })
    }

    // ------------------------------------------------------------------ crypto

    async fn seal(
        &self,
        e: &Entry,
        ctx: &EncryptionContext,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Vec<u8>, KmsError> {
        let header = Header {
            key_id: e.doc.key_id,
            backing_version: e.doc.current_backing,
        };
        let backing = e
            .doc
            .backing(e.doc.current_backing)
            .ok_or_else(|| KmsError::Internal("current backing key missing".into()))?;
        let (iv, ct) = self
            .vault
            .encrypt(&backing.object_id, ciphertext::aad(&header, ctx), plaintext)
            .await?;
        Ok(Blob {
            header,
            iv,
            ct_and_tag: ct,
        }
        .encode())
    }

    /// Parse a blob and find its key (checked against an optional caller-given key).
    fn open_blob(
        &self,
        p: &Principal,
        blob: &[u8],
        key: Option<&KeyRef>,
    ) -> Result<(Blob, Arc<Entry>), KmsError> {
        let blob = Blob::decode(blob).map_err(|_| KmsError::InvalidCiphertext(String::new()))?;
        // A ciphertext names its key by id; it may be another account's key (Decrypt and
        // ReEncrypt are cross-account operations): authorization decides.
        let owner = self
            .keys
            .read()
            .get(&blob.header.key_id)
            .cloned()
            .ok_or_else(|| KmsError::InvalidCiphertext(String::new()))?;
        if let Some(k) = key {
            let given = self.resolve_ref(p, k, true, true)?;
            if given.doc.key_id != owner.doc.key_id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation."
                        .into(),
                ));
            }
        }
        Ok((blob, owner))
    }

    async fn unseal(
        &self,
        e: &Entry,
        blob: Blob,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let backing = e
            .doc
            .backing(blob.header.backing_version)
            .ok_or_else(|| KmsError::InvalidCiphertext(String::new()))?;
        Ok(self
            .vault
            .decrypt(
                &backing.object_id,
                blob.iv,
                ciphertext::aad(&blob.header, ctx),
                blob.ct_and_tag,
            )
            .await?)
    }

    /// `Encrypt`: `plaintext` encrypted under the key (a ciphertext blob for a symmetric
    /// key, RSAES-OAEP for an RSA key).
    pub async fn encrypt(
        &self,
        keys: &Resolved,
        plaintext: Plaintext,
        ctx: EncryptionContext,
        alg: Option<EncryptionAlgorithm>,
        dry_run: bool,
    ) -> Result<EncryptOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::EncryptDecrypt)?;
        if e.doc.key_spec != KeySpec::SymmetricDefault {
            return self.rsa_encrypt(&e, plaintext, &ctx, alg, dry_run).await;
        }
        let alg = self.symmetric_algorithm(&e, alg)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let blob = self.seal(&e, &ctx, plaintext.into_inner()).await?;
        Ok(EncryptOutput {
            ciphertext_blob: blob,
            key_id: self.arn(&e.doc),
            encryption_algorithm: alg,
        })
    }

    /// `Decrypt`: the plaintext of a ciphertext made by `Encrypt` or `GenerateDataKey*`.
    pub async fn decrypt(
        &self,
        keys: &Resolved,
        r: requests::Decrypt,
    ) -> Result<DecryptOutput, KmsError> {
        let e = keys.key()?;
        let Some(blob) = keys.blob.clone() else {
            return self
                .rsa_decrypt(&e, &r.ciphertext, &r.context, r.algorithm, r.dry_run)
                .await;
        };
        self.usable_for(&e, KeyUsage::EncryptDecrypt)?;
        let alg = self.symmetric_algorithm(&e, r.algorithm)?;
        if r.dry_run {
            return Err(KmsError::DryRun);
        }
        let plaintext = self.unseal(&e, blob, &r.context).await?;
        Ok(DecryptOutput {
            key_id: self.arn(&e.doc),
            plaintext,
            encryption_algorithm: alg,
        })
    }

    /// `ReEncrypt`: decrypts a ciphertext and encrypts its plaintext under the destination
    /// key, without the plaintext leaving the service.
    pub async fn re_encrypt(
        &self,
        keys: &Resolved,
        r: requests::ReEncrypt,
    ) -> Result<ReEncryptOutput, KmsError> {
        let (src, dst) = (keys.key()?, keys.destination()?);
        if keys.blob.is_none() || asymmetric::is_rsa(&dst) {
            return self
                .asymmetric_re_encrypt(&src, keys.blob.clone(), &dst, r)
                .await;
        }
        let blob = keys
            .blob
            .clone()
            .ok_or_else(|| KmsError::InvalidCiphertext(String::new()))?;
        self.usable_for(&src, KeyUsage::EncryptDecrypt)?;
        let source_alg = self.symmetric_algorithm(&src, r.source_algorithm)?;
        self.usable_for(&dst, KeyUsage::EncryptDecrypt)?;
        let destination_alg = self.symmetric_algorithm(&dst, r.destination_algorithm)?;
        if r.dry_run {
            return Err(KmsError::DryRun);
        }
        let plaintext = self.unseal(&src, blob, &r.source_context).await?;
        let out = self.seal(&dst, &r.destination_context, plaintext).await?;
        Ok(ReEncryptOutput {
            ciphertext_blob: out,
            source_key_id: self.arn(&src.doc),
            key_id: self.arn(&dst.doc),
            source_encryption_algorithm: source_alg,
            destination_encryption_algorithm: destination_alg,
        })
    }

    /// `GenerateDataKey` (`with_plaintext`) or `GenerateDataKeyWithoutPlaintext`: a new
    /// data key encrypted under a symmetric key.
    pub async fn generate_data_key(
        &self,
        keys: &Resolved,
        size: DataKeySize,
        ctx: EncryptionContext,
        with_plaintext: bool,
        dry_run: bool,
    ) -> Result<DataKeyOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::EncryptDecrypt)?;
        self.symmetric_algorithm(&e, None)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let n = match size {
            DataKeySize::Spec(s) => s.byte_len(),
            DataKeySize::Bytes(n) => n,
        };
        let header = Header {
            key_id: e.doc.key_id,
            backing_version: e.doc.current_backing,
        };
        let backing = e
            .doc
            .backing(e.doc.current_backing)
            .ok_or_else(|| KmsError::Internal("current backing key missing".into()))?;
        let (dk, iv, ct) = self
            .vault
            .generate_data_key(&backing.object_id, n, ciphertext::aad(&header, &ctx))
            .await?;
        Ok(DataKeyOutput {
            ciphertext_blob: Blob {
                header,
                iv,
                ct_and_tag: ct,
            }
            .encode(),
            plaintext: with_plaintext.then_some(dk),
            key_id: self.arn(&e.doc),
        })
    }

    /// `GenerateRandom`: `n` random bytes from the HSMs.
    pub async fn generate_random(&self, n: usize) -> Result<RandomOutput, KmsError> {
        Ok(RandomOutput {
            plaintext: self.vault.random(n).await?,
        })
    }

    // ------------------------------------------------------------------ aliases

    /// An alias a caller may create, update or delete (not `alias/aws/…`).
    fn user_alias(&self, name: &AliasName) -> Result<(), KmsError> {
        if name.is_aws_reserved() {
            return Err(KmsError::NotAuthorized(
                "Cannot create, update or delete an alias with the reserved prefix alias/aws/."
                    .into(),
            ));
        }
        Ok(())
    }

    /// An alias target: a customer key named by id or ARN, not pending deletion.
    fn alias_target(&self, p: &Principal, target: &KeyRef) -> Result<Arc<Entry>, KmsError> {
        let e = self
            .resolve_ref(p, target, false, false)
            .map_err(|err| match target {
                KeyRef::AliasName(_) | KeyRef::AliasArn(_) => {
                    KmsError::Validation("Aliases must refer to keys. Not aliases".into())
                }
                _ => err,
            })?;
        if e.doc.key_state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.arn(&e.doc)
            )));
        }
        Ok(e)
    }

    /// `CreateAlias`: a new alias in the caller's account pointing at the key.
    pub async fn create_alias(
        &self,
        p: &Principal,
        keys: &Resolved,
        name: AliasName,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        let account = self.account(p)?;
        let _w = self.writes.lock().await;
        let k = (account.as_str().to_string(), name.as_str().to_string());
        if self.aliases.read().contains_key(&k) {
            return Err(KmsError::AlreadyExists(format!(
                "An alias with the name {} already exists",
                self.alias_arn(&account, &name)
            )));
        }
        let now = self.now();
        let row = AliasRow {
            account_id: k.0.clone(),
            alias_name: k.1.clone(),
            key_id: e.doc.key_id.to_string(),
            created_at: now,
            updated_at: now,
        };
        let r2 = row.clone();
        self.blocking(move |s| s.create_alias(&r2)).await?;
        self.aliases.write().insert(k, row);
        Ok(Empty {})
    }

    /// `UpdateAlias`: points an existing alias at another key.
    pub async fn update_alias(
        &self,
        p: &Principal,
        keys: &Resolved,
        name: AliasName,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        let account = self.account(p)?;
        let _w = self.writes.lock().await;
        let k = (account.as_str().to_string(), name.as_str().to_string());
        let current = self.aliases.read().get(&k).cloned().ok_or_else(|| {
            KmsError::NotFound(format!(
                "Alias '{}' is not found.",
                self.alias_arn(&account, &name)
            ))
        })?;
        if let Ok(old) = KeyId::parse(&current.key_id).and_then(|id| {
            self.entry(&account, &id)
                .map_err(|_| super::types::ValidationError::new(""))
        }) {
            if old.doc.key_usage != e.doc.key_usage || old.doc.key_spec != e.doc.key_spec {
                return Err(KmsError::Validation(
                    "The new target key must have the same key spec and key usage as the current target key.".into(),
                ));
            }
        }
        let now = self.now();
        let (a, n, id) = (k.0.clone(), k.1.clone(), e.doc.key_id.to_string());
        self.blocking(move |s| s.update_alias(&a, &n, &id, now))
            .await?;
        let mut row = current;
        row.key_id = e.doc.key_id.to_string();
        row.updated_at = now;
        self.aliases.write().insert(k, row);
        Ok(Empty {})
    }

    /// `DeleteAlias`: removes the alias; the key it pointed at is unaffected.
    pub async fn delete_alias(&self, p: &Principal, name: AliasName) -> Result<Empty, KmsError> {
        let account = self.account(p)?;
        let _w = self.writes.lock().await;
        let k = (account.as_str().to_string(), name.as_str().to_string());
        if !self.aliases.read().contains_key(&k) {
            return Err(KmsError::NotFound(format!(
                "Alias '{}' is not found.",
                self.alias_arn(&account, &name)
            )));
        }
        let (a, n) = k.clone();
        self.blocking(move |s| s.delete_alias(&a, &n)).await?;
        self.aliases.write().remove(&k);
        Ok(Empty {})
    }

    /// `ListAliases`: one page of the caller's account's aliases (only the key's, when one
    /// was named), in name order.
    pub async fn list_aliases(
        &self,
        p: &Principal,
        keys: &Resolved,
        Page { limit, marker }: Page,
    ) -> Result<ListAliasesOutput, KmsError> {
        let account = self.account(p)?;
        let key_id = keys.key.as_ref().map(|e| e.doc.key_id.to_string());
        let a = account.as_str().to_string();
        let after = Marker::decode_opt(marker::Aliases, marker.as_deref())?;
        let page = self
            .blocking(move |s| s.list_aliases(&a, key_id.as_deref(), after.as_deref(), limit))
            .await?;
        let next_marker = Marker::after_last(marker::Aliases, page.truncated, &page.items, |a| {
            a.alias_name.clone()
        });
        let aliases = page
            .items
            .into_iter()
            .map(|r| AliasListEntry {
                alias_arn: format!(
                    "arn:aws:kms:{}:{}:{}",
                    self.region.as_str(),
                    r.account_id,
                    r.alias_name
                ),
                alias_name: r.alias_name,
                target_key_id: Some(r.key_id),
                creation_date: r.created_at,
                last_updated_date: r.updated_at,
            })
            .collect();
        Ok(ListAliasesOutput {
            aliases,
            truncated: next_marker.is_some(),
            next_marker,
        })
    }
}

fn check_tags(tags: &[Tag]) -> Result<(), KmsError> {
    if tags.len() > 50 {
        return Err(KmsError::Tag("Tag limit exceeded: at most 50 tags".into()));
    }
    if let Some(t) = tags.iter().find(|t| t.is_aws_reserved()) {
        return Err(KmsError::Tag(format!(
            "Tags beginning with aws: are reserved ('{}')",
            t.key()
        )));
    }
    Ok(())
}

fn dedup_tags(tags: Vec<Tag>) -> Vec<Tag> {
    let mut out: Vec<Tag> = Vec::new();
    for t in tags {
        out.retain(|o| o.key() != t.key());
        out.push(t);
    }
    out
}
