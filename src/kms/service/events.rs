//! What the service does by itself, recorded in the audit trail as `AwsServiceEvent`
//! records (see [`crate::kms::audit::ServiceEvent`]): automatic and on-demand rotation
//! (`RotateKey`), the destruction of a key at the end of its waiting period in every HSM
//! (`DeleteKey`), imported material destroyed when it expires (`DeleteExpiredKeyMaterial`,
//! in `import.rs`), keys copied into HSMs that lacked them (`SynchronizeHsms`), and an HSM
//! becoming unavailable or serving again (`HsmStateChange`, seen by [`Kms::watch_hsms`]).
//! Each names the HSMs that did the work. Without an auditor (unit tests, the operator
//! commands) nothing is recorded.

use super::Kms;
use crate::kms::audit::{Auditor, Resource, ServiceEvent};
use serde_json::Value;
use std::sync::Arc;

impl Kms {
    /// Record service events through `auditor` from now on.
    pub fn set_auditor(&self, auditor: Arc<Auditor>) {
        let _ = self.auditor.set(auditor);
    }

    /// Record one service event (a no-op without an auditor).
    pub(super) async fn service_event(
        &self,
        event_name: &'static str,
        account: Option<String>,
        resources: Vec<Resource>,
        details: Value,
        hsms: Vec<String>,
    ) {
        let Some(a) = self.auditor.get() else { return };
        a.record_service_event(ServiceEvent {
            event_name,
            account,
            resources,
            details,
            hsms,
            time: self.now(),
        })
        .await;
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
