//! The HSM host process (`hsm-kms hsm-host`): serves one HSM for the service that started
//! it. It reads its configuration from the first frame on stdin (the PIN never appears in
//! its arguments or environment), opens the HSM exactly as an in-process HSM is opened
//! (`Node`), runs each job frame on a [`Pool`] of its own (the same lanes, sessions, call
//! gate and deadlines), and writes one answer frame per job on stdout, from the worker
//! that ran it; logs go to stderr.
//! It ends when its stdin closes (the service ended it, or died), finalizing the module.

use super::command::Done;
use super::error::HsmError;
use super::host::{self, FromHost, HostInit, ToHost};
use super::instance::NodeConfig;
use super::integrity::Expected;
use super::node::{Node, NodeOptions};
use super::worker::Pool;
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Serve the HSM described by the first frame of `input`, answering on `output`, until
/// `input` ends.
pub fn serve(mut input: impl Read, output: impl Write + Send + 'static) -> Result<(), HsmError> {
    let bad = |m: String| HsmError::Internal(format!("HSM host: {m}"));
    let init: HostInit = match host::read_frame(&mut input) {
        Ok(Some(ToHost::Init(init))) if init.protocol == host::PROTOCOL => init,
        Ok(Some(ToHost::Init(init))) => {
            return Err(bad(format!(
                "the service speaks protocol {}, this host {}",
                init.protocol,
                host::PROTOCOL
            )))
        }
        Ok(_) => return Err(bad("the first frame is not its configuration".into())),
        Err(e) => return Err(bad(format!("reading its configuration: {e}"))),
    };
    let pin = String::from_utf8(init.pin.to_vec()).map_err(|_| bad("PIN is not UTF-8".into()))?;
    let cfg = NodeConfig {
        name: init.name.clone(),
        module: init.module,
        token_label: init.token_label,
        pin: Zeroizing::new(pin),
        // The service set this HSM's environment on this process.
        env: Vec::new(),
    };
    let opts = NodeOptions {
        workers: init.workers,
        queue_depth: init.queue_depth,
        keygen_workers: init.keygen_workers,
        keygen_queue_depth: init.keygen_queue_depth,
        keygen_timeout: Duration::from_millis(init.keygen_timeout_ms),
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(init.probe_timeout_ms),
        // IVs of the request path come with each job, drawn by the service's source.
        iv: None,
        checks: Arc::new(Expected::default()),
    };
    let (node, error) = Node::open(cfg, opts);
    let node = Arc::new(node);
    let pool = Pool::start(node.clone())?;
    // Answers are written by the thread that has them (a worker, after its job), one
    // write per answer under a lock: no hand-off to a writer thread.
    let output = Mutex::new(output);
    let send = move |msg: FromHost| match host::encode(&msg) {
        Ok(frame) => {
            let mut out = output.lock();
            if out.write_all(&frame).and_then(|()| out.flush()).is_err() {
                tracing::debug!("HSM host: the service no longer reads its answers");
            }
        }
        Err(e) => tracing::error!(error = %e, "HSM host: answer not encodable"),
    };
    send(FromHost::Hello {
        protocol: host::PROTOCOL,
        state: node.state(),
        error,
        facts: pool.facts(),
    });
    let send = Arc::new(send);
    loop {
        match host::read_frame::<ToHost>(&mut input) {
            Ok(Some(ToHost::Job { id, lane, ms, cmd })) => {
                let s = send.clone();
                let done = Done::new(node.shared_name(), move |result| {
                    s(FromHost::Done { id, result })
                });
                let deadline = Instant::now() + Duration::from_millis(ms);
                if let Err(e) = pool.submit(lane, deadline, cmd, done) {
                    send(FromHost::Done { id, result: Err(e) });
                }
            }
            Ok(Some(ToHost::Control(c))) => c.apply(&node),
            Ok(Some(ToHost::Init(_))) => {
                tracing::warn!("HSM host: configuration sent twice; ignored")
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "HSM host: unreadable input; ending");
                break;
            }
        }
    }
    // The process ends next: answers still queued are of no use to anyone.
    pool.shutdown();
    Ok(())
}
