//! Reconciliation: the metadata against the objects of every HSM (`hsm-kms reconcile`, and a
//! quieter pass in the background work). Each object an HSM holds is one of:
//!
//! * **referenced**: the material of a key in the metadata, or the service's own
//!   (`hsm-kms/…`: the cluster wrapping key, the canary, the credential-sealing and audit digest keys);
//! * **missing** (the other way round): material every usable HSM should hold and this one
//!   lacks — re-synced from a copy;
//! * **orphaned**: key material (`kms/…`) no metadata refers to, left by an interrupted
//!   creation — destroyed only after a grace period during which it stayed unreferenced
//!   (a creation in flight writes its objects before its metadata), never while referenced,
//!   and recorded in the audit trail (`DeleteOrphanedKeyMaterial`, naming the HSMs);
//! * **quarantined**: a copy set aside by the integrity check (`hsm-kms/quarantine/…`),
//!   kept as evidence;
//! * **unknown**: anything else (another application's object): reported, never touched.

use super::Kms;
use crate::kms::error::KmsError;
use crate::kms::vault::ObjectId;
use crate::progress::Progress;
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;

/// How long an orphaned object must stay unreferenced before the background pass destroys
/// it (longer than any key creation can take).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// One HSM's line of a reconciliation report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileRow {
    /// The HSM's name.
    pub hsm: String,
    /// Whether it was usable (only usable HSMs are checked for missing copies).
    pub usable: bool,
    /// Objects it holds.
    pub objects: usize,
    /// Material it should hold and lacks.
    pub missing: Vec<String>,
    /// Key material no metadata refers to.
    pub orphaned: Vec<String>,
    /// Copies quarantined by the integrity check.
    pub quarantined: Vec<String>,
    /// Objects that are neither the service's nor key material.
    pub unknown: Vec<String>,
}

/// What a reconciliation found and, with `fix`, did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// One line per HSM.
    pub rows: Vec<ReconcileRow>,
    /// Copies made for missing material.
    pub copied: usize,
    /// Orphaned objects destroyed (on every HSM).
    pub destroyed: Vec<String>,
}

impl ReconcileReport {
    /// The report as a table, then one line per finding.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<16} {:>6} {:>7} {:>7} {:>8} {:>11} {:>7}\n",
            "HSM", "usable", "objects", "missing", "orphaned", "quarantined", "unknown"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<16} {:>6} {:>7} {:>7} {:>8} {:>11} {:>7}\n",
                r.hsm,
                if r.usable { "yes" } else { "no" },
                r.objects,
                r.missing.len(),
                r.orphaned.len(),
                r.quarantined.len(),
                r.unknown.len()
            ));
        }
        for r in &self.rows {
            for (what, ids) in [
                ("missing", &r.missing),
                ("orphaned", &r.orphaned),
                ("quarantined", &r.quarantined),
                ("unknown", &r.unknown),
            ] {
                for id in ids {
                    s.push_str(&format!("{}: {what}: {id}\n", r.hsm));
                }
            }
        }
        if self.copied > 0 || !self.destroyed.is_empty() {
            s.push_str(&format!(
                "fixed: {} copies made, {} orphaned objects destroyed\n",
                self.copied,
                self.destroyed.len()
            ));
        }
        s
    }
}

const SERVICE_PREFIX: &str = "hsm-kms/";
const QUARANTINE_PREFIX: &str = "hsm-kms/quarantine/";
const MATERIAL_PREFIX: &str = "kms/";

impl Kms {
    /// Every object id the metadata refers to (any key state), and the service's own.
    fn referenced(&self) -> BTreeSet<ObjectId> {
        let mut ids: BTreeSet<ObjectId> = self
            .keys
            .read()
            .values()
            .flat_map(|e| {
                e.doc
                    .backing
                    .iter()
                    .map(|b| b.object_id.clone())
                    .chain(e.doc.import_parameters.iter().map(|p| p.object_id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.insert(crate::kms::credentials::sealing_key());
        ids.insert(super::import::token_key());
        ids.insert(crate::kms::digest::digest_key());
        ids
    }

    /// Compare the metadata with every HSM's objects.
    pub async fn reconcile_report(&self) -> ReconcileReport {
        let referenced = self.referenced();
        let needed: BTreeSet<ObjectId> = self
            .resync_list()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        let rows = self
            .vault
            .inventory()
            .await
            .into_iter()
            .map(|(hsm, usable, ids)| {
                let held: BTreeSet<&ObjectId> = ids.iter().collect();
                let mut row = ReconcileRow {
                    hsm,
                    usable,
                    objects: ids.len(),
                    ..ReconcileRow::default()
                };
                if usable {
                    row.missing = needed
                        .iter()
                        .filter(|id| !held.contains(id))
                        .map(ToString::to_string)
                        .collect();
                }
                for id in &ids {
                    let name = id.as_str();
                    if referenced.contains(id) {
                        continue;
                    } else if name.starts_with(QUARANTINE_PREFIX) {
                        row.quarantined.push(name.to_string());
                    } else if name.starts_with(SERVICE_PREFIX) {
                        continue;
                    } else if name.starts_with(MATERIAL_PREFIX) {
                        row.orphaned.push(name.to_string());
                    } else {
                        row.unknown.push(name.to_string());
                    }
                }
                row
            })
            .collect();
        ReconcileReport {
            rows,
            ..ReconcileReport::default()
        }
    }

    /// Reconcile; with `fix`, copy missing material and destroy the orphaned objects that
    /// are still unreferenced after `grace` (waited once, after the first look).
    pub async fn reconcile(
        &self,
        fix: bool,
        grace: Duration,
        progress: &mut dyn Progress,
    ) -> Result<ReconcileReport, KmsError> {
        progress.stage("comparing the metadata with every HSM's objects", 0);
        let mut report = self.reconcile_report().await;
        progress.finish();
        if !fix {
            return Ok(report);
        }
        report.copied = self.resync_hsms_with_progress(progress).await?;
        let orphans: BTreeSet<String> = report
            .rows
            .iter()
            .flat_map(|r| r.orphaned.iter().cloned())
            .collect();
        if orphans.is_empty() {
            return Ok(report);
        }
        progress.stage(
            &format!(
                "{} orphaned objects: waiting {} s for them to stay unreferenced",
                orphans.len(),
                grace.as_secs()
            ),
            0,
        );
        tokio::time::sleep(grace).await;
        progress.finish();
        let referenced = self.referenced();
        progress.stage("destroying orphaned objects", orphans.len() as u64);
        for name in orphans {
            let id = ObjectId::new(name.clone());
            progress.advance(1);
            if referenced.contains(&id) {
                continue;
            }
            self.destroy_orphan(&name, &id).await?;
            report.destroyed.push(name);
        }
        progress.finish();
        Ok(report)
    }

    /// The background pass: log findings when first seen, and destroy orphaned objects that
    /// stayed unreferenced for [`ORPHAN_GRACE`].
    pub(super) async fn reconcile_background(&self, now: OffsetDateTime) -> Result<(), KmsError> {
        let report = self.reconcile_report().await;
        let orphans: BTreeSet<String> = report
            .rows
            .iter()
            .flat_map(|r| r.orphaned.iter().cloned())
            .collect();
        let due: Vec<String> = {
            let mut seen = self.orphans_seen.lock();
            seen.retain(|id, _| orphans.contains(id));
            for id in &orphans {
                seen.entry(id.clone()).or_insert_with(|| {
                    tracing::warn!(target: "hsm_kms::audit", object = %id, "orphaned object found; destroyed if still unreferenced after the grace period");
                    now
                });
            }
            seen.iter()
                .filter(|(_, first)| now - **first >= ORPHAN_GRACE)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let referenced = self.referenced();
        for name in due {
            let id = ObjectId::new(name.clone());
            if referenced.contains(&id) {
                continue;
            }
            self.destroy_orphan(&name, &id).await?;
            self.orphans_seen.lock().remove(&name);
        }
        Ok(())
    }

    /// Destroy the orphaned object `name` in every HSM and record it: a
    /// `DeleteOrphanedKeyMaterial` service event of the service's own account, naming the
    /// HSMs that destroyed it.
    async fn destroy_orphan(&self, name: &str, id: &ObjectId) -> Result<(), KmsError> {
        let (done, hsms) = crate::kms::vault::served_by(self.vault.destroy_key(id)).await;
        done?;
        tracing::warn!(target: "hsm_kms::audit", object = %name, "destroyed an orphaned object");
        self.service_event(
            "DeleteOrphanedKeyMaterial",
            None,
            Vec::new(),
            serde_json::json!({ "object": name }),
            hsms,
        )
        .await;
        Ok(())
    }
}
