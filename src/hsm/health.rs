//! Health of each HSM: a probe thread and a monitor thread per HSM, and which HSMs are
//! usable, healthiest first.
//!
//! * The **probe thread** (`hsm-<name>-probe`, [`Prober`]) owns its own session, opened from
//!   the current instance, and runs nothing but probes (token info plus a real GCM round
//!   trip with the canary key). Probes are never queued behind the workers' jobs (a 4-second
//!   RSA-4096 generation used to make a 2-second probe time out and the HSM be marked down).
//! * The **monitor thread** (`hsm-<name>-mon`) asks for a probe every `probe_interval` (or
//!   at once when a call marks the HSM suspect) and waits at most `probe_timeout` for it:
//!   that deadline measures only the probe. A probe that fails or does not answer in time
//!   marks the HSM down at once, even if the probe stays stuck inside the module. The
//!   monitor then re-initializes the HSM in the background (`C_Finalize` + `C_Initialize`
//!   of this HSM's module instance only), waiting first until every call inside the module
//!   has returned ([`Node::close_instance`]), until it answers again, with a back-off
//!   (from `probe_interval`, doubling, up to [`REINIT_BACKOFF_MAX`] so that a repaired HSM
//!   is back within about a second); a refused PIN is never retried. An HSM that answers
//!   again is used only once the cluster's [`Admit`] check accepts it (for one that could
//!   not be opened at start: the same cluster wrapping key as the others, see
//!   `enrollment::admit`).
//!
//! [`Node::close_instance`]: super::node::Node::close_instance

use super::aes;
use super::error::{HsmError, Operation};
use super::handles::CANARY_ID;
use super::instance::Instance;
use super::job::WorkerCtx;
use super::node::{Node, NodeState};
use super::worker::{OwnSession, Pool};
use std::sync::Arc;
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

/// Where a probe's outcome goes (one answer per request).
type ProbeReply = crossbeam_channel::Sender<Result<(), HsmError>>;

/// The probe thread of one HSM and the sending side of its one-slot request queue.
struct Prober {
    node: Arc<Node>,
    tx: crossbeam_channel::Sender<ProbeReply>,
}

impl Prober {
    /// Start the probe thread of `node`.
    fn start(node: Arc<Node>) -> Result<Prober, HsmError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let n = node.clone();
        std::thread::Builder::new()
            .name(format!("hsm-{}-probe", node.name()))
            .spawn(move || probe_loop(n, rx))
            .map_err(|e| HsmError::Internal(format!("spawn probe thread: {e}")))?;
        Ok(Prober { node, tx })
    }

    /// Probe the HSM now, waiting at most `timeout`. A probe still stuck inside the module
    /// from an earlier request fails this one at once.
    fn probe(&self, timeout: Duration) -> Result<(), HsmError> {
        let hsm = || self.node.name().to_string();
        let timed_out = || HsmError::Timeout {
            hsm: hsm(),
            ms: timeout.as_millis() as u64,
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.tx.try_send(reply).map_err(|_| timed_out())?;
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(timed_out()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(HsmError::NodeDown { hsm: hsm() })
            }
        }
    }
}

/// Start the probe and monitor threads of the HSM served by `pool`; `admit` decides whether
/// it may be used each time it answers again after being down.
pub(super) fn watch(pool: &Pool, admit: Admit) -> Result<(), HsmError> {
    let node = pool.node().clone();
    let prober = Prober::start(node.clone())?;
    let pool = pool.clone();
    std::thread::Builder::new()
        .name(format!("hsm-{}-mon", node.name()))
        .spawn(move || monitor_loop(pool, prober, admit))
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

/// Health probe: token info plus a real GCM round trip with the canary key.
fn probe(ctx: &mut WorkerCtx<'_>) -> Result<(), HsmError> {
    let inst = ctx.instance();
    let info = inst.ctx.get_token_info(inst.slot);
    info.map_err(|e| ctx.err(Operation::Probe, e))?;
    let pt = b"hsm-kms health probe";
    let (iv, ct) = aes::gcm_encrypt(ctx, CANARY_ID, b"probe", pt)?;
    let back = aes::gcm_decrypt(ctx, CANARY_ID, &iv, b"probe", &ct)?;
    if back.as_slice() != pt {
        return Err(HsmError::Internal(format!(
            "{}: canary round trip returned wrong data",
            ctx.hsm()
        )));
    }
    Ok(())
}

/// The probe thread: one probe per request, on its own session, inside the call gate.
fn probe_loop(node: Arc<Node>, rx: crossbeam_channel::Receiver<ProbeReply>) {
    let mut session = OwnSession::default();
    loop {
        let reply = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if node.shutting_down() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let outcome = {
            let _gate = node.call_gate();
            match node.current() {
                Some(inst) => {
                    node.stall_probe();
                    probe_on(&node, &inst, &mut session)
                }
                None => Err(HsmError::NodeDown {
                    hsm: node.name().to_string(),
                }),
            }
        };
        let _ = reply.try_send(outcome);
    }
}

/// One probe on the probe thread's own session of `inst`.
fn probe_on(node: &Node, inst: &Instance, session: &mut OwnSession) -> Result<(), HsmError> {
    let s = session.on(node, inst)?;
    let mut ctx = WorkerCtx::new(node, inst, s);
    let r = probe(&mut ctx);
    if ctx.session_faulted() {
        session.discard();
    }
    r
}

fn monitor_loop(pool: Pool, prober: Prober, admit: Admit) {
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
                match prober.probe(node.opts.probe_timeout) {
                    Ok(()) => {
                        if node.state() == NodeState::Suspect {
                            node.clear_error();
                        }
                        node.set_state(NodeState::Healthy);
                    }
                    Err(e) => {
                        tracing::error!(hsm = %node.name(), error = %e, "HSM probe failed; marking down");
                        node.record_error(&e);
                        node.set_state(NodeState::Down);
                        try_reinit(&pool, &prober, &admit);
                    }
                }
            }
            NodeState::Down => {
                try_reinit(&pool, &prober, &admit);
                backoff = backoff
                    .saturating_mul(2)
                    .min(interval.max(REINIT_BACKOFF_MAX));
            }
            NodeState::Failed | NodeState::NotEnrolled => {}
        }
    }
}

/// `C_Finalize` (once no call is inside the module) + `C_Initialize` of this HSM's instance
/// only, re-login, re-warm, probe, then the cluster's admission check.
fn try_reinit(pool: &Pool, prober: &Prober, admit: &Admit) {
    let node = pool.node();
    node.close_instance();
    if node.shutting_down() {
        return;
    }
    match node.open_next_instance() {
        Ok(epoch) => match prober.probe(node.opts.probe_timeout) {
            Ok(()) => match admit(pool) {
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
            if matches!(e, HsmError::LoginRefused { .. }) {
                // Never retry a refused PIN in a loop: tokens lock users out.
                tracing::error!(hsm = %node.name(), error = %e, "login refused; HSM left failed");
                node.set_state(NodeState::Failed);
            } else {
                tracing::debug!(hsm = %node.name(), error = %e, "re-initialization failed; will retry");
            }
        }
    }
}
