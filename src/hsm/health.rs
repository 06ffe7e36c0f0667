//! Health of each HSM: a monitor thread per HSM, and which HSMs are usable, healthiest
//! first.
//!
//! * Probes (token info plus a real GCM round trip with the canary key) run in the HSM's
//!   probe lane (`worker`), on a session of their own, never queued behind the workers'
//!   jobs (a 4-second RSA-4096 generation used to make a 2-second probe time out).
//! * The **monitor thread** (`hsm-<name>-mon`) asks for a probe every `probe_interval` (or
//!   at once when a call marks the HSM suspect) and waits at most `probe_timeout` for it:
//!   that deadline measures only the probe. A probe that fails or does not answer in time
//!   marks the HSM down at once, even if the probe stays stuck inside the module. The
//!   monitor then re-initializes the HSM in the background ([`Pool::reinit`]): in process,
//!   `C_Finalize` + `C_Initialize` of this HSM's module instance only, waiting first until
//!   every call inside the module has returned ([`Node::close_instance`]); a hosted HSM,
//!   a new host process in place of the old one, killed. Until it answers again, with a back-off
//!   (from `probe_interval`, doubling, up to [`REINIT_BACKOFF_MAX`] so that a repaired HSM
//!   is back within about a second); a refused PIN is never retried. An HSM that answers
//!   again is used only once the cluster's [`Admit`] check accepts it (for one that could
//!   not be opened at start: the same cluster wrapping key as the others, see
//!   `enrollment::admit`).
//!
//! [`Node::close_instance`]: super::node::Node::close_instance
//! [`Pool::reinit`]: super::worker::Pool::reinit

use super::error::HsmError;
use super::node::{state_after_failed_open, NodeState};
use super::worker::Pool;
use std::time::Duration;

/// The longest wait between two re-initialization attempts of a down HSM (unless
/// `probe_interval` is longer): a repaired HSM is back within about this long.
pub(super) const REINIT_BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// What the cluster decides about an HSM whose module instance answers again.
#[derive(Debug)]
pub(super) enum Admission {
    /// It may be used.
    Admitted,
    /// Its token does not hold the cluster wrapping key: never used (`NotEnrolled`).
    NotEnrolled,
    /// Its token holds a different cluster wrapping key than the others: never used again
    /// (`Failed`).
    Refused(HsmError),
    /// Undecided for now (no proven HSM to compare with, a call failed…): it stays down and
    /// is tried again.
    Later(HsmError),
}

/// The cluster's check of an HSM that answers again (run on its monitor thread, blocking),
/// given that HSM's pool.
pub(super) type Admit = Box<dyn Fn(&Pool) -> Admission + Send>;

/// Start the monitor thread of the HSM served by `pool`; `admit` decides whether it may be
/// used each time it answers again after being down.
pub(super) fn watch(pool: &Pool, admit: Admit) -> Result<(), HsmError> {
    let node = pool.node().clone();
    let pool = pool.clone();
    std::thread::Builder::new()
        .name(format!("hsm-{}-mon", node.name()))
        .spawn(move || monitor_loop(pool, admit))
        .map_err(|e| HsmError::Internal(format!("spawn monitor: {e}")))?;
    Ok(())
}

/// The usable HSMs, healthy before suspect (otherwise in configuration order).
pub(super) fn usable(hsms: &[Pool]) -> Vec<&Pool> {
    let mut v: Vec<&Pool> = hsms.iter().filter(|p| p.node().usable()).collect();
    v.sort_by_key(|p| p.node().state() != NodeState::Healthy);
    v
}

/// The usable HSMs in the order a key generation tries their key generation lanes: healthy
/// before suspect, then fewest generations in flight (otherwise configuration order).
pub(super) fn keygen_order(hsms: &[Pool]) -> Vec<&Pool> {
    let mut v = usable(hsms);
    v.sort_by_key(|p| {
        let n = p.node();
        (n.state() != NodeState::Healthy, n.keygen_inflight())
    });
    v
}

fn monitor_loop(pool: Pool, admit: Admit) {
    let node = pool.node().clone();
    let interval = node.opts.probe_interval;
    let mut backoff = interval;
    loop {
        let down = node.state() == NodeState::Down;
        node.wait_for_wake(if down { backoff } else { interval });
        if node.shutting_down() {
            break;
        }
        match node.state() {
            NodeState::Healthy | NodeState::Suspect => {
                backoff = interval;
                match pool.probe(node.opts.probe_timeout) {
                    Ok(_) => {
                        if node.state() == NodeState::Suspect {
                            node.clear_error();
                        }
                        node.set_state(NodeState::Healthy);
                    }
                    Err(e) => {
                        tracing::error!(hsm = %node.name(), error = %e, "HSM probe failed; marking down");
                        node.record_error(&e);
                        node.set_state(NodeState::Down);
                        try_reinit(&pool, &admit);
                    }
                }
            }
            NodeState::Down => {
                try_reinit(&pool, &admit);
                backoff = backoff
                    .saturating_mul(2)
                    .min(interval.max(REINIT_BACKOFF_MAX));
            }
            NodeState::Failed | NodeState::NotEnrolled => {}
        }
    }
}

/// Re-initialize the HSM from nothing ([`Pool::reinit`]: re-login, re-warm), probe, then
/// the cluster's admission check.
fn try_reinit(pool: &Pool, admit: &Admit) {
    let node = pool.node();
    if node.shutting_down() {
        return;
    }
    match pool.reinit() {
        Ok(epoch) => match pool.probe(node.opts.probe_timeout) {
            Ok(_) => match admit(pool) {
                Admission::Admitted => {
                    node.count_reinit();
                    node.clear_error();
                    node.set_state(NodeState::Healthy);
                    tracing::info!(hsm = %node.name(), epoch, "HSM re-initialized and healthy");
                }
                Admission::NotEnrolled => {
                    node.set_state(NodeState::NotEnrolled);
                    tracing::warn!(
                        hsm = %node.name(),
                        "this token answers but does not hold the cluster wrapping key, so it \
                         is not used; enroll it with `hsm-kms hsm enroll {}`",
                        node.name()
                    );
                }
                Admission::Refused(e) => {
                    tracing::error!(hsm = %node.name(), error = %e, "HSM refused; left failed");
                    node.record_error(&e);
                    node.set_state(NodeState::Failed);
                }
                Admission::Later(e) => {
                    tracing::debug!(hsm = %node.name(), error = %e, "HSM answers but is not admitted yet; will retry");
                    node.record_error(&e);
                }
            },
            Err(e) => node.record_error(&e),
        },
        Err(e) => {
            node.record_error(&e);
            if state_after_failed_open(&e) == NodeState::Failed {
                // Never retry a refused PIN in a loop: tokens lock users out.
                tracing::error!(hsm = %node.name(), error = %e, "login refused; HSM left failed");
                node.set_state(NodeState::Failed);
            } else {
                tracing::debug!(hsm = %node.name(), error = %e, "re-initialization failed; will retry");
            }
        }
    }
}
