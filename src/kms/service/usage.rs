//! Key last usage: the last successful cryptographic operation of every key (`Operation`,
//! `Timestamp`, the CloudTrail `eventID` of its record in the key owner's account, the
//! `x-amzn-RequestId` answered) and `GetKeyLastUsage`, which answers it.
//!
//! ## Durability
//! The request path notes a use once the call's record is durable in the audit trail
//! ([`Kms::note_key_use`]); the latest use of each key is kept in memory and written to the
//! metadata store (one setting per key, `key_last_usage/<key id>`) by the next maintenance
//! pass ([`Kms::flush_key_usage`]). What the store holds may therefore lag by at most one
//! maintenance interval (`maintenance_interval_ms`); a crash loses at most the uses of that
//! interval, which the audit trail still holds. Once written, a use is as durable as any
//! store write.
//!
//! ## Tracking start
//! Tracking began when this service first ran with it: the setting
//! `key_usage_tracking_since`, written once. A key's `TrackingStartDate` is that date or
//! the key's creation, whichever is later (as AWS defines it).

use super::{Kms, Resolved};
use crate::kms::error::KmsError;
use crate::kms::model::epoch_seconds;
use crate::kms::operation::Operation;
use crate::kms::types::KeyId;
use crate::store::MetadataStore;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;

/// The service-wide setting holding when tracking began (epoch seconds, text).
const SINCE: &str = "key_usage_tracking_since";

/// The setting of one key's last use.
fn setting(key: &KeyId) -> String {
    format!("key_last_usage/{key}")
}

/// One key's last successful cryptographic operation (`KeyLastUsageData`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyLastUsageData {
    /// The operation (`Encrypt`, `Decrypt`, …).
    pub operation: String,
    /// When the call was received.
    #[serde(with = "epoch_seconds")]
    pub timestamp: OffsetDateTime,
    /// The `eventID` of the call's record in the key owner's account.
    pub cloud_trail_event_id: String,
    /// The call's `x-amzn-RequestId`.
    pub kms_request_id: String,
}

/// `GetKeyLastUsage` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyLastUsageOutput {
    /// The key's id.
    pub key_id: String,
    /// The last use; an empty object when none since tracking began.
    pub key_last_usage: serde_json::Map<String, serde_json::Value>,
    /// When tracking began for this key.
    #[serde(with = "epoch_seconds")]
    pub tracking_start_date: OffsetDateTime,
    /// When the key was created.
    #[serde(with = "epoch_seconds")]
    pub key_creation_date: OffsetDateTime,
}

/// The last uses known in memory and those not yet written.
pub(super) struct Usage {
    since: OffsetDateTime,
    state: parking_lot::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The latest use of each key noted or read since start.
    last: HashMap<KeyId, KeyLastUsageData>,
    /// Keys whose latest use is not yet in the store.
    dirty: HashSet<KeyId>,
}

impl Usage {
    /// The tracker, reading (or, on the first run, writing) when tracking began.
    pub(super) fn load(store: &dyn MetadataStore, now: OffsetDateTime) -> Result<Usage, KmsError> {
        let since = match store.get_setting(SINCE)? {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .and_then(epoch_seconds::from_f64)
                .ok_or_else(|| KmsError::Internal(format!("setting {SINCE}: not a date")))?,
            None => {
                let now = epoch_seconds::truncate(now);
                store.put_setting(SINCE, epoch_seconds::to_f64(now).to_string().as_bytes())?;
                now
            }
        };
        Ok(Usage {
            since,
            state: parking_lot::Mutex::default(),
        })
    }
}

impl Kms {
    /// After a successful call of `op` (whose record is durable): note it as the last use
    /// of each key it used (ReEncrypt: both), with the `eventID` of the record delivered to
    /// the key's owner (`records`: recipient account and event id of each record).
    pub fn note_key_use(
        &self,
        keys: &Resolved,
        op: Operation,
        at: OffsetDateTime,
        records: &[(String, String)],
        request_id: &str,
    ) {
        if !op.tracks_last_usage() {
            return;
        }
        let mut state = self.usage.state.lock();
        for e in keys.key.iter().chain(keys.destination.iter()) {
            let owner = e.doc.account_id.as_str();
            let Some((_, event_id)) = records.iter().find(|(a, _)| a == owner) else {
                continue;
            };
            let id = e.doc.key_id;
            state.last.insert(
                id,
                KeyLastUsageData {
                    operation: op.name().to_string(),
                    timestamp: epoch_seconds::truncate(at),
                    cloud_trail_event_id: event_id.clone(),
                    kms_request_id: request_id.to_string(),
                },
            );
            state.dirty.insert(id);
        }
    }

    /// Write the uses noted since the last flush to the store (run by every maintenance
    /// pass); a use that fails to be written stays pending for the next pass.
    pub async fn flush_key_usage(&self) -> Result<(), KmsError> {
        let pending: Vec<(KeyId, KeyLastUsageData)> = {
            let mut state = self.usage.state.lock();
            let dirty = std::mem::take(&mut state.dirty);
            dirty
                .into_iter()
                .filter_map(|k| state.last.get(&k).map(|u| (k, u.clone())))
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let batch = pending.clone();
        let written = self
            .blocking(move |s| {
                for (k, u) in &batch {
                    let v = serde_json::to_vec(u).unwrap_or_default();
                    s.put_setting(&setting(k), &v)?;
                }
                Ok(())
            })
            .await;
        if written.is_err() {
            let mut state = self.usage.state.lock();
            for (k, u) in pending {
                // Unless a newer use arrived meanwhile (itself pending).
                if state.last.get(&k) == Some(&u) {
                    state.dirty.insert(k);
                }
            }
        }
        written
    }

    /// `GetKeyLastUsage`: the key's last successful cryptographic operation since tracking
    /// began, from memory or else the store.
    pub(super) async fn get_key_last_usage(
        &self,
        keys: &Resolved,
    ) -> Result<GetKeyLastUsageOutput, KmsError> {
        let e = keys.key()?;
        let id = e.doc.key_id;
        let known = self.usage.state.lock().last.get(&id).cloned();
        let last = match known {
            Some(u) => Some(u),
            None => {
                let stored = self.blocking(move |s| s.get_setting(&setting(&id))).await?;
                let parsed: Option<KeyLastUsageData> =
                    stored.and_then(|v| serde_json::from_slice(&v).ok());
                if let Some(u) = &parsed {
                    let mut state = self.usage.state.lock();
                    state.last.entry(id).or_insert_with(|| u.clone());
                }
                parsed
            }
        };
        let key_last_usage = match last {
            Some(u) => match serde_json::to_value(u) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(KmsError::Internal("key last usage: serialization".into())),
            },
            None => serde_json::Map::new(),
        };
        Ok(GetKeyLastUsageOutput {
            key_id: id.to_string(),
            key_last_usage,
            tracking_start_date: self.usage.since.max(e.doc.creation_date),
            key_creation_date: e.doc.creation_date,
        })
    }
}
