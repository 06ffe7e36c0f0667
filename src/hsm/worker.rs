//! The worker threads of one HSM ([`Pool`]). Every PKCS#11 call runs here, never on a tokio
//! worker:
//!
//! * each thread owns one session, opened lazily and tied to the instance's login epoch (a
//!   session of a finalized instance is forgotten, never closed: handle numbers are reused);
//! * jobs wait in a bounded queue; a full queue answers `Busy` at once (the cluster then
//!   tries another HSM);
//! * every job carries a deadline: one already past it is dropped without touching the HSM,
//!   and the caller stops waiting at the deadline;
//! * a session whose job overran its deadline, or met a session fault, is quarantined
//!   (closed; a fresh one is opened for the next job);
//! * results are handed back in small batches, so one wake-up of the async side serves
//!   several requests;
//! * every job runs inside the tracing span that was current when it was submitted, so log
//!   lines from HSM jobs carry the caller's span fields.

use super::error::HsmError;
use super::error::Operation;
use super::job::WorkerCtx;
use super::node::Node;
use cryptoki::session::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a job leaves to do after its PKCS#11 work: hand the result to the caller.
type Completion = Box<dyn FnOnce() + Send>;
type JobFn = Box<dyn FnOnce(&mut WorkerCtx<'_>) -> Completion + Send>;

/// A job that runs `f` on a worker and hands its result to `reply` as a completion (run
/// by the worker after the job, in its batch of completions).
fn job<T: Send + 'static>(
    f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    reply: impl FnOnce(Result<T, HsmError>) + Send + 'static,
) -> JobFn {
    Box::new(move |ctx| {
        let r = f(ctx);
        Box::new(move || reply(r))
    })
}

/// Results are handed back in small batches (when the queue runs dry or this many have
/// built up): one wake-up of the async side then serves several requests, which halves
/// the context switches per operation under load.
const COMPLETION_BATCH: usize = 8;

struct Job {
    deadline: Instant,
    /// The submitter's span, entered on the worker thread while the job runs.
    span: tracing::Span,
    run: JobFn,
}

/// The worker threads of one HSM and the sending side of their queue.
#[derive(Clone)]
pub(super) struct Pool {
    node: Arc<Node>,
    tx: crossbeam_channel::Sender<Job>,
}

impl Pool {
    /// Start `node.opts.workers` worker threads (at least one) behind a bounded queue.
    pub(super) fn start(node: Arc<Node>) -> Result<Pool, HsmError> {
        let (tx, rx) = crossbeam_channel::bounded(node.opts.queue_depth);
        for i in 0..node.opts.workers.max(1) {
            let (n, rx) = (node.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("hsm-{}-w{i}", n.name()))
                .spawn(move || worker_loop(n, rx))
                .map_err(|e| HsmError::Internal(format!("spawn worker: {e}")))?;
        }
        Ok(Pool { node, tx })
    }

    /// The HSM these workers serve.
    pub(super) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn submit(&self, deadline: Instant, run: JobFn) -> Result<(), HsmError> {
        let job = Job {
            deadline,
            span: tracing::Span::current(),
            run,
        };
        self.tx.try_send(job).map_err(|_| HsmError::Busy {
            hsm: self.node.name().to_string(),
        })
    }

    /// Run `f` on one of this HSM's worker threads, waiting at most `timeout`.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        if !self.node.usable() {
            return Err(self.down());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            Instant::now() + timeout,
            job(f, move |r| {
                let _ = tx.send(r);
            }),
        )?;
        let in_flight = self.node.begin_call();
        let r = tokio::time::timeout(timeout, rx).await;
        drop(in_flight);
        match r {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.down()),
            Err(_) => {
                let e = self.timeout_err(timeout);
                self.node.suspect(&e);
                Err(e)
            }
        }
    }

    /// Blocking twin of [`Pool::call`] for HSM-side threads (start-up, monitor).
    pub(super) fn call_blocking<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            Instant::now() + timeout,
            job(f, move |r| {
                let _ = tx.send(r);
            }),
        )?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(self.timeout_err(timeout)),
            Err(_) => Err(self.down()),
        }
    }

    fn down(&self) -> HsmError {
        HsmError::NodeDown {
            hsm: self.node.name().to_string(),
        }
    }

    fn timeout_err(&self, d: Duration) -> HsmError {
        HsmError::Timeout {
            hsm: self.node.name().to_string(),
            ms: d.as_millis() as u64,
        }
    }
}

fn worker_loop(node: Arc<Node>, rx: crossbeam_channel::Receiver<Job>) {
    let mut session: Option<(u64, Session)> = None;
    let mut done: Vec<Completion> = Vec::with_capacity(COMPLETION_BATCH);
    loop {
        if !done.is_empty() && (rx.is_empty() || done.len() >= COMPLETION_BATCH) {
            done.drain(..).for_each(|c| c());
        }
        let job = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => j,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if node.shutting_down() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let Job {
            deadline,
            span,
            run,
        } = job;
        if Instant::now() >= deadline {
            continue; // the caller has given up; do not touch the HSM for it
        }
        let _entered = span.enter();
        #[cfg(feature = "test-hooks")]
        {
            let stall = node.stall();
            if !stall.is_zero() {
                std::thread::sleep(stall);
            }
        }
        let _gate = node.call_gate();
        let Some(inst) = node.current() else {
            continue; // HSM down: dropping the job answers NodeDown
        };
        if session.as_ref().is_some_and(|(e, _)| *e != inst.epoch()) {
            // A session of a finalized instance: never close it (handles are reused).
            if let Some((_, s)) = session.take() {
                std::mem::forget(s);
            }
        }
        if session.is_none() {
            match inst.ctx.open_rw_session(inst.slot) {
                Ok(s) => session = Some((inst.epoch(), s)),
                Err(e) => {
                    node.suspect(&HsmError::from_ck(node.name(), Operation::OpenSession, e));
                    continue;
                }
            }
        }
        let Some((_, s)) = session.as_ref() else {
            continue;
        };
        let mut ctx = WorkerCtx::new(&node, &inst, s);
        done.push(run(&mut ctx));
        let overran = Instant::now() > deadline;
        if ctx.session_faulted() || overran {
            if overran {
                tracing::warn!(hsm = %node.name(), "call overran its deadline; session quarantined");
            }
            drop(session.take()); // closes it; a fresh one is opened for the next job
        }
    }
    if let Some((_, s)) = session.take() {
        std::mem::forget(s);
    }
}
