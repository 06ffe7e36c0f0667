//! Health of each HSM: the monitor thread that probes it (token info plus a real GCM round
//! trip with the canary key, run on a worker like any job), marks it down when a probe
//! fails, and re-initializes it in the background (`C_Finalize` + `C_Initialize` of this
//! HSM's module instance only) until it answers again; a refused PIN is never retried. Also
//! which HSMs are usable, healthiest first.

use super::aes;
use super::error::{HsmError, Operation};
use super::handles::CANARY_ID;
use super::job::WorkerCtx;
use super::node::NodeState;
use super::worker::Pool;

/// Start the monitor thread of the HSM served by `pool`.
pub(super) fn watch(pool: &Pool) -> Result<(), HsmError> {
    let p = pool.clone();
    std::thread::Builder::new()
        .name(format!("hsm-{}-mon", pool.node().name()))
        .spawn(move || monitor_loop(p))
        .map_err(|e| HsmError::Internal(format!("spawn monitor: {e}")))?;
    Ok(())
}

/// The usable HSMs, healthy before suspect (otherwise in configuration order).
pub(super) fn usable(hsms: &[Pool]) -> Vec<&Pool> {
    let mut v: Vec<&Pool> = hsms.iter().filter(|p| p.node().usable()).collect();
    v.sort_by_key(|p| p.node().state() != NodeState::Healthy);
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

fn monitor_loop(pool: Pool) {
    let node = pool.node().clone();
    loop {
        node.wait_for_wake(node.opts.probe_interval);
        if node.shutting_down() {
            break;
        }
        match node.state() {
            NodeState::Healthy | NodeState::Suspect => {
                match pool.call_blocking(node.opts.probe_timeout, probe) {
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
                        try_reinit(&pool);
                    }
                }
            }
            NodeState::Down => try_reinit(&pool),
            NodeState::Failed | NodeState::NotEnrolled => {}
        }
    }
}

/// `C_Finalize` + `C_Initialize` of this HSM's instance only, re-login, re-warm, probe.
fn try_reinit(pool: &Pool) {
    let node = pool.node();
    node.close_instance();
    match node.open_next_instance() {
        Ok(epoch) => match pool.call_blocking(node.opts.probe_timeout, probe) {
            Ok(()) => {
                node.count_reinit();
                node.clear_error();
                node.set_state(NodeState::Healthy);
                tracing::info!(hsm = %node.name(), epoch, "HSM re-initialized and healthy");
            }
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
