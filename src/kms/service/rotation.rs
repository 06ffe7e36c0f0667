//! Key rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations, and the automatic rotations that `maintenance()`
//! performs when a key's `NextRotationDate` has come (by the injected clock).
//!
//! A rotation adds one generation of key material to `KeyDoc::backing`:
//! 1. a new AES-256 backing key is generated in one HSM and copied into every other usable
//!    HSM (`HsmCluster::create_aes_key`, which proves each copy and needs at least two);
//! 2. only then is the metadata committed (`update_doc`): the new `BackingKey` is appended
//!    (with its rotation type and date) and becomes `current_backing`.
//!
//! If the cluster cannot make enough copies (an HSM down in a two-HSM cluster) nothing
//! changes: an automatic rotation stays due and the next maintenance pass retries it; an
//! on-demand rotation answers `DependencyTimeoutException` (retryable). The key keeps
//! working with its current material throughout. Every earlier generation stays in every
//! HSM, so old ciphertexts (whose header names their backing version) still decrypt, and
//! ReEncrypt moves them to the current generation.
//!
//! Backing objects of rotated generations are named `kms/<key id>/<version>/<8 hex>`: the
//! random suffix keeps a generation that was made in the HSMs but never committed (crash
//! between the two steps) from ever colliding with a later attempt; such an orphan is never
//! referenced by metadata. Imported material (Origin EXTERNAL, `import.rs`) has the same
//! shape: a `BackingKey` whose object arrives by unwrap instead of generation; new material
//! waits above the current generation (`PENDING_ROTATION`) until RotateKeyOnDemand makes it
//! current. Automatic rotation is refused for imported keys, as AWS does.

use super::{next_generation, Entry, Kms, Resolved};
use crate::kms::audit::Resource;
use crate::kms::marker::{self, Marker};
use crate::kms::model::{epoch_seconds, BackingKey, Empty, KeyDoc, RotationSchedule, RotationType};
use crate::kms::types::{
    ExpirationModel, ImportState, KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin,
};
use crate::kms::vault::KeyKind;
use crate::kms::KmsError;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// AWS's default period for automatic rotation.
pub(crate) const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
/// AWS's lower bound for `RotationPeriodInDays`.
pub(crate) const MIN_ROTATION_PERIOD_DAYS: u32 = 90;
/// AWS's upper bound for `RotationPeriodInDays`.
pub(crate) const MAX_ROTATION_PERIOD_DAYS: u32 = 2560;
/// AWS's quota of on-demand rotations per key.
pub const DEFAULT_ON_DEMAND_ROTATION_LIMIT: u32 = 25;
/// An on-demand rotation this close to a scheduled one is a conflict (AWS).
const CONFLICT_WINDOW: Duration = Duration::minutes(20);

/// A rotation period.
fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

/// Rotation bookkeeping that is not metadata: which keys are being rotated right now (and
/// since when), and the on-demand quota.
pub(crate) struct Rotations {
    in_progress: Mutex<HashMap<KeyId, OffsetDateTime>>,
    on_demand_limit: AtomicU32,
}

impl Default for Rotations {
    fn default() -> Self {
        Rotations {
            in_progress: Mutex::new(HashMap::new()),
            on_demand_limit: AtomicU32::new(DEFAULT_ON_DEMAND_ROTATION_LIMIT),
        }
    }
}

/// Marks a key as being rotated for as long as it lives (also if the future is dropped).
struct InProgress<'a> {
    map: &'a Mutex<HashMap<KeyId, OffsetDateTime>>,
    key: KeyId,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

/// `KeyMaterialId`: 64 lowercase hex characters, derived from the backing object's id (so
/// it is stable, needs no storage, and differs for every generation).
pub(crate) fn key_material_id(object_id: &str) -> String {
    hex::encode(Sha256::digest(object_id.as_bytes()))
}

/// `KeyMetadata.CurrentKeyMaterialId`: present for symmetric encryption keys of origin
/// AWS_KMS or EXTERNAL, as AWS returns it.
pub(crate) fn current_key_material_id(doc: &KeyDoc) -> Option<String> {
    if doc.key_spec != KeySpec::SymmetricDefault
        || !matches!(doc.origin, Origin::AwsKms | Origin::External)
    {
        return None;
    }
    doc.backing(doc.current_backing)
        // Imported material has its id once it has been imported (AWS derives it from it).
        .filter(|b| b.import.is_none() || b.check_value.is_some())
        .map(|b| key_material_id(b.object_id.as_str()))
}

/// The automatic rotation schedule in force: AWS managed keys rotate every year, always
/// (one year after their newest material); customer keys as EnableKeyRotation set it.
fn schedule_of(doc: &KeyDoc) -> Option<RotationSchedule> {
    if doc.key_manager == KeyManager::Aws {
        let newest = doc
            .backing
            .iter()
            .map(|b| b.created)
            .fold(doc.creation_date, OffsetDateTime::max);
        return Some(RotationSchedule {
            period_days: DEFAULT_ROTATION_PERIOD_DAYS,
            next_rotation_date: newest.saturating_add(days(DEFAULT_ROTATION_PERIOD_DAYS)),
        });
    }
    doc.rotation_schedule
}

/// The date after an automatic rotation at `now`: one period after the date it was due, or
/// one period from now if it ran more than a period late (no burst of catch-up rotations).
fn next_after(s: &RotationSchedule, now: OffsetDateTime) -> OffsetDateTime {
    let period = days(s.period_days);
    let next = s.next_rotation_date.saturating_add(period);
    if next <= now {
        now.saturating_add(period)
    } else {
        next
    }
}

/// `GetKeyRotationStatus` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyRotationStatusOutput {
    /// `KeyRotationEnabled`: whether automatic rotation is enabled.
    pub key_rotation_enabled: bool,
    /// `KeyId`: the ARN of the key.
    pub key_id: String,
    /// `RotationPeriodInDays`: days between automatic rotations; only when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// `NextRotationDate`: when the next automatic rotation is due; only when enabled.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub next_rotation_date: Option<OffsetDateTime>,
    /// `OnDemandRotationStartDate`: when an on-demand rotation in progress started.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub on_demand_rotation_start_date: Option<OffsetDateTime>,
}

/// `RotateKeyOnDemand` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotateKeyOnDemandOutput {
    /// `KeyId`: the id of the key whose material was rotated.
    pub key_id: String,
}

/// One entry of `ListKeyRotations`' `Rotations` (`RotationsListEntry`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationsListEntry {
    /// `KeyId`: the id of the key.
    pub key_id: String,
    /// `KeyMaterialId`: the id of this generation of key material.
    pub key_material_id: String,
    /// `KeyMaterialDescription` (imported material).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_description: Option<String>,
    /// `ImportState`: `IMPORTED` or `PENDING_IMPORT` (imported material).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_state: Option<ImportState>,
    /// `KeyMaterialState`: `CURRENT` for the material in use, `PENDING_ROTATION` for imported
    /// material not yet rotated in, else `NON_CURRENT`.
    pub key_material_state: &'static str,
    /// `ExpirationModel` (imported material).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    /// `ValidTo` (imported material that expires).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub valid_to: Option<OffsetDateTime>,
    /// `RotationDate`: when this material became current by rotation.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub rotation_date: Option<OffsetDateTime>,
    /// `RotationType`: whether the rotation was automatic or on demand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_type: Option<RotationType>,
}

/// `ListKeyRotations` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyRotationsOutput {
    /// `Rotations`: this page of rotations (with `IncludeKeyMaterial`, of all key material),
    /// oldest first.
    pub rotations: Vec<RotationsListEntry>,
    /// `NextMarker`: the `Marker` that fetches the next page; only when `Truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<Marker>,
    /// `Truncated`: whether more rotations follow this page.
    pub truncated: bool,
}

impl Kms {
    /// Change the per-key quota of on-demand rotations (AWS: 25).
    pub fn set_on_demand_rotation_limit(&self, limit: u32) {
        self.rotation
            .on_demand_limit
            .store(limit, Ordering::Relaxed);
    }

    /// The HSM object ids (`CKA_ID`) of every generation of a key's material, oldest first:
    /// for operator drift checks and tests. Empty for an unknown key id.
    pub fn backing_object_ids(&self, key_id: &str) -> Vec<String> {
        let Ok(id) = KeyId::parse(key_id) else {
            return Vec::new();
        };
        self.keys
            .read()
            .get(&id)
            .map(|e| {
                e.doc
                    .backing
                    .iter()
                    .map(|b| b.object_id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rotation of AWS managed keys is not configurable (they rotate every year).
    fn customer_managed(&self, e: &Entry) -> Result<(), KmsError> {
        if e.doc.key_manager == KeyManager::Aws {
            return Err(KmsError::Unsupported(format!(
                "{} is an AWS managed key; its rotation cannot be changed.",
                self.arn(&e.doc)
            )));
        }
        Ok(())
    }

    /// Only symmetric encryption keys with KMS-made material rotate.
    fn rotatable(&self, e: &Entry) -> Result<(), KmsError> {
        let arn = self.arn(&e.doc);
        self.symmetric_for_rotation(e)?;
        match e.doc.origin {
            Origin::AwsKms => Ok(()),
            Origin::External => Err(KmsError::Unsupported(format!(
                "{arn} has imported key material; it does not support automatic rotation, and on-demand rotation needs newly imported material."
            ))),
            _ => Err(KmsError::Unsupported(format!(
                "{arn} is in a custom key store; its key material cannot be rotated."
            ))),
        }
    }

    /// Asymmetric, HMAC and custom-key-store keys have no rotation status at all.
    fn symmetric_for_rotation(&self, e: &Entry) -> Result<(), KmsError> {
        let arn = self.arn(&e.doc);
        if e.doc.key_spec != KeySpec::SymmetricDefault
            || e.doc.key_usage != KeyUsage::EncryptDecrypt
        {
            return Err(KmsError::Unsupported(format!(
                "{arn} is not a symmetric encryption key; only symmetric encryption keys rotate."
            )));
        }
        if matches!(e.doc.origin, Origin::AwsCloudhsm | Origin::ExternalKeyStore) {
            return Err(KmsError::Unsupported(format!(
                "{arn} is in a custom key store; its key material cannot be rotated."
            )));
        }
        Ok(())
    }

    /// `LimitExceededException` once the key used its quota of on-demand rotations.
    fn on_demand_quota(&self, e: &Entry) -> Result<(), KmsError> {
        let limit = self.rotation.on_demand_limit.load(Ordering::Relaxed);
        let used = e
            .doc
            .backing
            .iter()
            .filter(|b| b.rotation == Some(RotationType::OnDemand))
            .count();
        if used >= limit as usize {
            return Err(KmsError::LimitExceeded(format!(
                "{} has reached its limit of {limit} on-demand rotations.",
                self.arn(&e.doc)
            )));
        }
        Ok(())
    }

    /// Key state for the rotation operations that change something: Enabled only.
    fn rotation_state(&self, e: &Entry) -> Result<(), KmsError> {
        let arn = self.arn(&e.doc);
        match e.doc.key_state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!("{arn} is disabled."))),
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                KmsError::InvalidState(format!("{arn} is pending deletion.")),
            ),
            other => Err(KmsError::InvalidState(format!(
                "{arn} is {}.",
                other.as_str()
            ))),
        }
    }

    /// `EnableKeyRotation`: automatic rotation every `period_days` (default 365).
    pub async fn enable_key_rotation(
        &self,
        keys: &Resolved,
        period_days: Option<u32>,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.customer_managed(&e)?;
        self.rotatable(&e)?;
        self.rotation_state(&e)?;
        let period = period_days.unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
        if !(MIN_ROTATION_PERIOD_DAYS..=MAX_ROTATION_PERIOD_DAYS).contains(&period) {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{period}' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between {MIN_ROTATION_PERIOD_DAYS} and {MAX_ROTATION_PERIOD_DAYS}"
            )));
        }
        let now = self.now();
        self.update_doc(&e.doc.key_id, |d| {
            // Already enabled: a new period counts from the same start as the old one.
            let next = match d.rotation_schedule {
                Some(s) => s
                    .next_rotation_date
                    .saturating_sub(days(s.period_days))
                    .saturating_add(days(period)),
                None => now.saturating_add(days(period)),
            };
            d.rotation_schedule = Some(RotationSchedule {
                period_days: period,
                next_rotation_date: next,
            });
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    /// `DisableKeyRotation`: no more automatic rotations; existing material is kept.
    pub async fn disable_key_rotation(&self, keys: &Resolved) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.customer_managed(&e)?;
        self.rotatable(&e)?;
        self.rotation_state(&e)?;
        self.update_doc(&e.doc.key_id, |d| {
            d.rotation_schedule = None;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    /// `GetKeyRotationStatus`: whether and when the key rotates automatically.
    pub fn get_key_rotation_status(
        &self,
        keys: &Resolved,
    ) -> Result<KeyRotationStatusOutput, KmsError> {
        let e = keys.key()?;
        self.symmetric_for_rotation(&e)?;
        // Disabled: the status is unchanged (rotation waits). Pending deletion: the status
        // reads false, and the schedule returns if the deletion is cancelled.
        let schedule = match e.doc.key_state {
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => None,
            KeyState::Unavailable => {
                return Err(KmsError::InvalidState(format!(
                    "{} is unavailable.",
                    self.arn(&e.doc)
                )))
            }
            _ => schedule_of(&e.doc),
        };
        Ok(KeyRotationStatusOutput {
            key_rotation_enabled: schedule.is_some(),
            key_id: self.arn(&e.doc),
            rotation_period_in_days: schedule.map(|s| s.period_days),
            next_rotation_date: schedule.map(|s| s.next_rotation_date),
            on_demand_rotation_start_date: self
                .rotation
                .in_progress
                .lock()
                .get(&e.doc.key_id)
                .copied(),
        })
    }

    /// `RotateKeyOnDemand`: a new generation of key material now, within the per-key quota.
    pub async fn rotate_key_on_demand(
        &self,
        keys: &Resolved,
    ) -> Result<RotateKeyOnDemandOutput, KmsError> {
        let e = keys.key()?;
        self.customer_managed(&e)?;
        if e.doc.origin == Origin::External {
            self.symmetric_for_rotation(&e)?;
            self.rotation_state(&e)?;
            self.on_demand_quota(&e)?;
            self.rotate_imported(&e.doc.key_id).await?;
            return Ok(RotateKeyOnDemandOutput {
                key_id: e.doc.key_id.to_string(),
            });
        }
        self.rotatable(&e)?;
        self.rotation_state(&e)?;
        self.rotate(&e.doc.key_id, RotationType::OnDemand).await?;
        Ok(RotateKeyOnDemandOutput {
            key_id: e.doc.key_id.to_string(),
        })
    }

    /// `ListKeyRotations`: one page of the key's completed rotations, oldest first.
    pub fn list_key_rotations(
        &self,
        keys: &Resolved,
        include_all_material: bool,
        limit: usize,
        marker: Option<&str>,
    ) -> Result<ListKeyRotationsOutput, KmsError> {
        let e = keys.key()?;
        self.symmetric_for_rotation(&e)?;
        let from = Marker::decode_opt(marker::KeyRotations, marker)?.unwrap_or(0);
        let mut all: Vec<&BackingKey> = e
            .doc
            .backing
            .iter()
            .filter(|b| b.version >= from && (include_all_material || b.rotation.is_some()))
            .collect();
        all.sort_by_key(|b| b.version);
        let next_marker = all
            .get(limit)
            .map(|b| Marker::encode(marker::KeyRotations, &b.version));
        let rotations = all
            .into_iter()
            .take(limit)
            .map(|b| {
                // Imported material: its import state and expiry (symmetric EXTERNAL keys).
                let imported = b
                    .import
                    .as_ref()
                    .filter(|_| e.doc.origin == Origin::External);
                RotationsListEntry {
                    key_id: e.doc.key_id.to_string(),
                    key_material_id: key_material_id(b.object_id.as_str()),
                    key_material_description: imported.and_then(|i| i.description.clone()),
                    import_state: imported.map(|i| i.state),
                    key_material_state: super::import::material_state(&e.doc, b),
                    expiration_model: imported.and_then(|i| i.expiration_model),
                    valid_to: imported.and_then(|i| i.valid_to),
                    rotation_date: b.rotation.map(|_| b.created),
                    rotation_type: b.rotation,
                }
            })
            .collect();
        Ok(ListKeyRotationsOutput {
            rotations,
            truncated: next_marker.is_some(),
            next_marker,
        })
    }

    /// Perform every automatic rotation that is due (keys Enabled, schedule on, date
    /// reached). A rotation that fails (e.g. not enough HSMs) stays due for the next pass.
    /// Returns how many keys were rotated.
    pub(crate) async fn rotate_due_keys(&self) -> usize {
        let now = self.now();
        let due: Vec<KeyId> = self
            .keys
            .read()
            .values()
            .filter(|e| {
                e.doc.key_state == KeyState::Enabled
                    && schedule_of(&e.doc).is_some_and(|s| s.next_rotation_date <= now)
                    && self.rotatable(e).is_ok()
            })
            .map(|e| e.doc.key_id)
            .collect();
        let mut done = 0;
        for id in due {
            match self.rotate(&id, RotationType::Automatic).await {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(err) => tracing::warn!(
                    key = %id, error = %err,
                    "automatic rotation failed; it stays due and is retried on the next pass"
                ),
            }
        }
        done
    }

    /// One rotation of one key: new material in every HSM first, then the metadata commit
    /// that makes it current. Returns false if an automatic rotation turned out not to be
    /// due any more. At most one rotation per key runs at a time.
    async fn rotate(&self, key_id: &KeyId, kind: RotationType) -> Result<bool, KmsError> {
        let started = self.now();
        let _mark = {
            let mut m = self.rotation.in_progress.lock();
            if m.contains_key(key_id) {
                return Err(KmsError::Conflict(format!(
                    "A rotation of key {key_id} is already in progress."
                )));
            }
            m.insert(*key_id, started);
            InProgress {
                map: &self.rotation.in_progress,
                key: *key_id,
            }
        };
        // Re-read under the mark: the document may have changed since the caller looked.
        let e: Arc<Entry> = self
            .keys
            .read()
            .get(key_id)
            .cloned()
            .ok_or_else(|| KmsError::Internal(format!("key {key_id} vanished")))?;
        self.rotatable(&e)?;
        self.rotation_state(&e)?;
        let arn = self.arn(&e.doc);
        match kind {
            RotationType::Automatic => {
                if schedule_of(&e.doc).is_none_or(|s| s.next_rotation_date > started) {
                    return Ok(false);
                }
            }
            RotationType::OnDemand => {
                self.customer_managed(&e)?;
                self.on_demand_quota(&e)?;
                if schedule_of(&e.doc).is_some_and(|s| {
                    s.next_rotation_date <= started.saturating_add(CONFLICT_WINDOW)
                }) {
                    return Err(KmsError::Conflict(format!(
                        "An automatic rotation of {arn} is in progress or scheduled to begin within the next 20 minutes."
                    )));
                }
            }
        }
        let (version, object) = next_generation(&e.doc);
        // Nothing is committed yet, so any HSM failure other than a refused request is one
        // the caller may simply retry (DependencyTimeoutException), even one that a health
        // probe has not yet turned into "HSM down".
        let (created, hsms) =
            crate::kms::vault::served_by(self.vault.create_key(&object, &arn, KeyKind::Aes)).await;
        let check_value = created
            .map_err(|e| {
                if e.retryable() {
                    KmsError::Unavailable(e.to_string())
                } else {
                    KmsError::from(e)
                }
            })?
            .check_value
            .map(hex::encode);
        let now = self.now();
        let obj = object.clone();
        let committed = self
            .update_doc(key_id, move |d| {
                d.backing.push(BackingKey {
                    version,
                    object_id: obj,
                    created: now,
                    rotation: Some(kind),
                    check_value,
                    import: None,
                });
                d.current_backing = version;
                if kind == RotationType::Automatic {
                    if let Some(s) = d.rotation_schedule.as_mut() {
                        s.next_rotation_date = next_after(s, now);
                    }
                }
                Ok(())
            })
            .await;
        if let Err(err) = committed {
            // Never current, never referenced: remove it so no HSM keeps unused material.
            let _ = self.vault.destroy_key(&object).await;
            return Err(err);
        }
        tracing::info!(key = %arn, version, rotation = ?kind, "key rotated");
        let previous = e.doc.backing(e.doc.current_backing);
        self.service_event(
            "RotateKey",
            Some(e.doc.account_id.to_string()),
            vec![Resource::key(arn)],
            serde_json::json!({
                "rotationType": kind,
                "keyOrigin": e.doc.origin,
                "previousKeyMaterialId": previous.map(|b| key_material_id(b.object_id.as_str())),
                "currentKeyMaterialId": key_material_id(object.as_str()),
            }),
            hsms,
        )
        .await;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::vault::ObjectId;

    /// The time `secs` epoch seconds after 1970.
    fn at(secs: f64) -> OffsetDateTime {
        epoch_seconds::from_f64(secs).unwrap()
    }

    const DAY: f64 = 86_400.0;

    #[test]
    fn key_material_id_is_64_lowercase_hex_and_differs_per_generation() {
        let a = key_material_id("kms/k/1");
        let b = key_material_id("kms/k/2/0a1b2c3d");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_ne!(a, b);
        assert_eq!(a, key_material_id("kms/k/1"), "stable");
    }

    #[test]
    fn next_date_keeps_the_rhythm_unless_a_period_late() {
        let s = RotationSchedule {
            period_days: 90,
            next_rotation_date: at(1000.0 * DAY),
        };
        assert_eq!(next_after(&s, at(1000.0 * DAY)), at(1090.0 * DAY));
        assert_eq!(next_after(&s, at(1010.0 * DAY)), at(1090.0 * DAY));
        assert_eq!(next_after(&s, at(1090.0 * DAY)), at(1180.0 * DAY));
        assert_eq!(next_after(&s, at(1200.0 * DAY)), at(1290.0 * DAY));
        // At the end of the representable dates it saturates instead of panicking.
        let end = RotationSchedule {
            period_days: 2560,
            next_rotation_date: at(253_402_300_799.0),
        };
        assert!(next_after(&end, end.next_rotation_date) >= end.next_rotation_date);
    }

    #[test]
    fn aws_managed_keys_rotate_yearly_after_their_newest_material() {
        let mut doc: KeyDoc = serde_json::from_value(serde_json::json!({
            "key_id": KeyId::new_random().to_string(),
            "account_id": "111122223333",
            "description": "",
            "key_spec": "SYMMETRIC_DEFAULT",
            "key_usage": "ENCRYPT_DECRYPT",
            "key_state": "Enabled",
            "origin": "AWS_KMS",
            "key_manager": "AWS",
            "creation_date": 10.0,
            "backing": [{"version": 1, "object_id": "kms/x/1", "created": 10.0}],
            "current_backing": 1
        }))
        .unwrap();
        let s = schedule_of(&doc).unwrap();
        assert_eq!(
            (s.period_days, s.next_rotation_date),
            (365, at(10.0 + 365.0 * DAY))
        );
        doc.backing.push(BackingKey {
            version: 2,
            object_id: ObjectId::new("kms/x/2/00"),
            created: at(400.0 * DAY),
            rotation: Some(RotationType::Automatic),
            check_value: None,
            import: None,
        });
        assert_eq!(
            schedule_of(&doc).unwrap().next_rotation_date,
            at(765.0 * DAY)
        );
        doc.key_manager = KeyManager::Customer;
        assert_eq!(schedule_of(&doc), None);
    }

    #[test]
    fn documents_written_before_rotation_still_load() {
        let old = serde_json::json!({
            "key_id": KeyId::new_random().to_string(),
            "account_id": "111122223333",
            "description": "",
            "key_spec": "SYMMETRIC_DEFAULT",
            "key_usage": "ENCRYPT_DECRYPT",
            "key_state": "Enabled",
            "origin": "AWS_KMS",
            "key_manager": "CUSTOMER",
            "creation_date": 1.0,
            "backing": [{"version": 1, "object_id": "kms/x/1", "created": 1.0}],
            "current_backing": 1
        });
        let doc: KeyDoc = serde_json::from_value(old).unwrap();
        assert_eq!(doc.rotation_schedule, None);
        assert_eq!(doc.backing[0].rotation, None);
        assert_eq!(doc.creation_date, at(1.0));
        assert_eq!(doc.deletion_date, None);
        assert_eq!(
            current_key_material_id(&doc),
            Some(key_material_id("kms/x/1"))
        );
        // And a rotated document round-trips.
        let mut d = doc.clone();
        d.backing.push(BackingKey {
            version: 2,
            object_id: ObjectId::new("kms/x/2/00000000"),
            created: at(2.0),
            rotation: Some(RotationType::OnDemand),
            check_value: None,
            import: None,
        });
        d.current_backing = 2;
        d.rotation_schedule = Some(RotationSchedule {
            period_days: 365,
            next_rotation_date: at(3.0),
        });
        let back: KeyDoc = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            serde_json::to_value(RotationType::OnDemand).unwrap(),
            "ON_DEMAND"
        );
    }

    /// A document as the f64-timestamp code wrote it (field order and numbers as
    /// serde_json wrote them) loads with the same instants and is written back byte for
    /// byte.
    #[test]
    fn documents_written_with_f64_timestamps_load_and_rewrite_identically() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let written = format!(
            concat!(
                r#"{{"key_id":"{id}","account_id":"111122223333","description":"app","#,
                r#""key_spec":"SYMMETRIC_DEFAULT","key_usage":"ENCRYPT_DECRYPT","#,
                r#""key_state":"PendingDeletion","origin":"AWS_KMS","key_manager":"CUSTOMER","#,
                r#""creation_date":1700000000.123,"deletion_date":1702592000.123,"#,
                r#""pending_window_days":30,"backing":["#,
                r#"{{"version":1,"object_id":"kms/{id}/1","created":1700000000.123,"rotation":null}},"#,
                r#"{{"version":2,"object_id":"kms/{id}/2/0a1b2c3d","created":1700086400.5,"rotation":"ON_DEMAND"}},"#,
                r#"{{"version":3,"object_id":"kms/{id}/3/00ff00ff","created":1731536000.001,"rotation":"AUTOMATIC"}}],"#,
                r#""current_backing":3,"tags":[{{"TagKey":"env","TagValue":"prod"}}],"#,
                r#""rotation_schedule":{{"period_days":365,"next_rotation_date":1763072000.001}}}}"#
            ),
            id = id
        );
        let doc: KeyDoc = serde_json::from_str(&written).unwrap();
        let ms = |ms: i128| OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap();
        assert_eq!(doc.creation_date, ms(1_700_000_000_123));
        assert_eq!(doc.deletion_date, Some(ms(1_702_592_000_123)));
        assert_eq!(
            doc.deletion_date,
            Some(doc.creation_date + Duration::days(30))
        );
        assert_eq!(doc.backing[1].created, ms(1_700_086_400_500));
        assert_eq!(doc.backing[2].created, ms(1_731_536_000_001));
        let s = doc.rotation_schedule.unwrap();
        assert_eq!(s.next_rotation_date, ms(1_763_072_000_001));
        assert_eq!(
            next_after(&s, doc.backing[2].created),
            ms(1_794_608_000_001)
        );
        assert_eq!(serde_json::to_string(&doc).unwrap(), written);

        // What the answers carry: the same numbers.
        let status = KeyRotationStatusOutput {
            key_rotation_enabled: true,
            key_id: id.into(),
            rotation_period_in_days: Some(s.period_days),
            next_rotation_date: Some(s.next_rotation_date),
            on_demand_rotation_start_date: None,
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            format!(
                r#"{{"KeyRotationEnabled":true,"KeyId":"{id}","RotationPeriodInDays":365,"NextRotationDate":1763072000.001}}"#
            )
        );

        // Whole seconds are written as they were (`1.0`), and integers are read.
        let whole: KeyDoc = serde_json::from_str(&written.replace(
            "1700000000.123,\"deletion_date\"",
            "1700000000,\"deletion_date\"",
        ))
        .unwrap();
        assert_eq!(whole.creation_date, ms(1_700_000_000_000));
        assert!(serde_json::to_string(&whole)
            .unwrap()
            .contains(r#""creation_date":1700000000.0,"#));
    }

    #[test]
    fn unreadable_dates_are_refused() {
        let doc = |creation: &str| {
            serde_json::from_str::<KeyDoc>(&format!(
                r#"{{"key_id":"1234abcd-12ab-34cd-56ef-1234567890ab","account_id":"111122223333",
                "description":"","key_spec":"SYMMETRIC_DEFAULT","key_usage":"ENCRYPT_DECRYPT",
                "key_state":"Enabled","origin":"AWS_KMS","key_manager":"CUSTOMER",
                "creation_date":{creation},"backing":[],"current_backing":1}}"#
            ))
        };
        assert!(doc("1.5").is_ok());
        for bad in ["1e300", "-1e300", "\"1.5\"", "null", "true"] {
            assert!(doc(bad).is_err(), "{bad}");
        }
    }
}
