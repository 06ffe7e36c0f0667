//! What the service does by itself, recorded in the audit trail as `AwsServiceEvent`
//! records (see [`crate::kms::audit::ServiceEvent`]): automatic and on-demand rotation
//! (`RotateKey`), the destruction of a key at the end of its waiting period in every HSM
//! (`DeleteKey`), imported material destroyed when it expires (`DeleteExpiredKeyMaterial`,
//! in `import.rs`), key material no key refers to destroyed after its grace period
//! (`DeleteOrphanedKeyMaterial`, in `reconcile.rs`), keys copied into HSMs that lacked them
//! (`SynchronizeHsms`), and an HSM
//! becoming unavailable or serving again (`HsmStateChange`, seen by [`Kms::watch_hsms`]).
//! Each names the HSMs that did the work. Access keys found created, changed in status or
//! deleted in the store without a call to this service (the operator CLI's `credentials
//! revoke` and `account create`) are IAM service events of the same names as the calls
//! ([`Kms::record_access_key_changes`]). Without an auditor (unit tests, the operator
//! commands) nothing is recorded.

use super::Kms;
use crate::auth::credentials::{AccessKeyChange, AccessKeyChangeKind};
use crate::kms::audit::{Auditor, Resource, ServiceEvent, Source};
use serde_json::Value;
use std::sync::Arc;

impl Kms {
    /// Record service events through `auditor` from now on.
    pub fn set_auditor(&self, auditor: Arc<Auditor>) {
        let _ = self.auditor.set(auditor);
    }

    /// Record one KMS service event (a no-op without an auditor).
    pub(super) async fn service_event(
        &self,
        event_name: &'static str,
        account: Option<String>,
        resources: Vec<Resource>,
        details: Value,
        hsms: Vec<String>,
    ) {
        self.service_event_of(Source::Kms, event_name, account, resources, details, hsms)
            .await;
    }

    /// [`Kms::service_event`] for the service `source`.
    async fn service_event_of(
        &self,
        source: Source,
        event_name: &'static str,
        account: Option<String>,
        resources: Vec<Resource>,
        details: Value,
        hsms: Vec<String>,
    ) {
        let Some(a) = self.auditor.get() else { return };
        a.record_service_event(ServiceEvent {
            source,
            event_name,
            account,
            resources,
            details,
            hsms,
            time: self.now(),
        })
        .await;
    }

    /// Record access keys found changed in the store that no call to this service changed
    /// (the periodic credential reload finds them: see
    /// [`crate::auth::LiveCredentials::lock_changes`]): one IAM service event each, named
    /// as the IAM call that would have made it, in the key's account, the key as its
    /// resource. The key's id and principal are recorded, never its secret.
    pub async fn record_access_key_changes(&self, changes: &[AccessKeyChange]) {
        if self.auditor.get().is_none() {
            return;
        }
        for c in changes {
            let event_name = match c.kind {
                AccessKeyChangeKind::Created => "CreateAccessKey",
                AccessKeyChangeKind::StatusChanged => "UpdateAccessKey",
                AccessKeyChangeKind::Deleted => "DeleteAccessKey",
            };
            let status = if c.active { "Active" } else { "Inactive" };
            tracing::info!(
                target: "hsm_kms::audit",
                access_key_id = %c.access_key_id,
                account_id = %c.account_id,
                event = event_name,
                status,
                "access key changed outside the API"
            );
            self.service_event_of(
                Source::Iam,
                event_name,
                Some(c.account_id.clone()),
                vec![Resource {
                    account_id: c.account_id.clone(),
                    kind: "AWS::IAM::AccessKey",
                    arn: c.access_key_id.clone(),
                }],
                serde_json::json!({
                    "accessKeyId": c.access_key_id,
                    "principalArn": c.principal_arn,
                    "status": status,
                    "changedIn": "metadata store",
                }),
                Vec::new(),
            )
            .await;
        }
    }

    /// Record the HSMs' state changes since the last call that matter to an auditor: between
    /// serving (`Healthy`, `Suspect`) and not serving (`Down`, `Failed`, `NotEnrolled`),
    /// or between two states of not serving. The first call only clears what the start
    /// did (HSMs coming up).
    pub async fn watch_hsms(&self) {
        let changes = self.vault.take_state_changes();
        if !self
            .hsms_watched
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        for c in changes {
            if serving(c.from) == serving(c.to) && serving(c.to) {
                continue;
            }
            tracing::info!(target: "hsm_kms::audit", hsm = %c.hsm, from = c.from, to = c.to, "HSM state change");
            self.service_event(
                "HsmStateChange",
                None,
                Vec::new(),
                serde_json::json!({"hsm": c.hsm, "previousState": c.from, "state": c.to}),
                vec![c.hsm.clone()],
            )
            .await;
        }
    }
}

/// Whether an HSM in `state` serves calls.
fn serving(state: &str) -> bool {
    matches!(state, "Healthy" | "Suspect")
}
