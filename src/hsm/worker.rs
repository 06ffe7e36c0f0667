//! The worker threads of one HSM ([`Pool`]). Every PKCS#11 call runs on an HSM thread, never
//! on a tokio worker. Each HSM has two lanes ([`Lane`]), each with its own threads, sessions,
//! bounded queue and deadline:
//!
//! * the **crypto** lane (`ClusterOptions::workers_per_hsm` threads, queue
//!   `queue_depth`, deadline `call_timeout`): encrypt, decrypt, sign, MAC, random, the copy
//!   steps of replication, and AES/HMAC key creation (one C_GenerateKey, milliseconds). A full
//!   queue answers `Busy` and an overrun makes the HSM suspect (the cluster then fails over);
//! * the **key generation** lane (`keygen_workers_per_hsm` threads, queue
//!   `keygen_queue_depth`, deadline `keygen_timeout`): key pair generation for `CreateKey`
//!   and `GenerateDataKeyPair`, seconds per call for RSA-4096 on SoftHSM. At most
//!   `keygen_workers_per_hsm` generations run inside the module at once, and they never
//!   hold up crypto calls or health probes. A full lane answers `KeygenBusy` at once and an
//!   overrun `KeygenTimeout`; neither makes the HSM suspect (slow generation is not a dead
//!   HSM: probes, on their own thread, decide that).
//!
//! In both lanes:
//!
//! * each thread owns one session ([`OwnSession`]), opened lazily and tied to the instance's
//!   login epoch (a session of a finalized instance is forgotten, never closed: handle
//!   numbers are reused);
//! * a thread holds the HSM's call gate for the whole of a job, so the module is never
//!   finalized under it;
//! * every job carries a deadline: one already past it is dropped without touching the HSM,
//!   and the caller stops waiting at the deadline;
//! * a session whose job overran its deadline, or met a session fault, is quarantined
//!   (closed; a fresh one is opened for the next job);
//! * results of the crypto lane are handed back in small batches, so one wake-up of the
//!   async side serves several requests (key generations are answered one by one);
//! * every job runs inside the tracing span that was current when it was submitted, so log
//!   lines from HSM jobs carry the caller's span fields.

use super::error::HsmError;
use super::error::Operation;
use super::instance::Instance;
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

/// One of an HSM's worker lanes (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Short cryptographic calls.
    Crypto,
    /// Key pair generation.
    Keygen,
}

impl Lane {
    /// The thread name tag: `hsm-<name>-w<i>` (crypto), `hsm-<name>-g<i>` (key generation).
    fn tag(self) -> &'static str {
        match self {
            Lane::Crypto => "w",
            Lane::Keygen => "g",
        }
    }

    /// Results handed back per batch: key generations one by one (a finished generation
    /// must not wait for the next one, seconds long, to be answered).
    fn completion_batch(self) -> usize {
        match self {
            Lane::Crypto => COMPLETION_BATCH,
            Lane::Keygen => 1,
        }
    }
}

struct Job {
    deadline: Instant,
    /// The submitter's span, entered on the worker thread while the job runs.
    span: tracing::Span,
    run: JobFn,
}

/// The worker threads of one HSM (both lanes) and the sending sides of their queues.
#[derive(Clone)]
pub(super) struct Pool {
    node: Arc<Node>,
    tx: crossbeam_channel::Sender<Job>,
    keygen_tx: crossbeam_channel::Sender<Job>,
}

/// Start `workers` threads (at least one) of `lane` behind a queue of `depth` jobs.
fn start_lane(
    node: &Arc<Node>,
    lane: Lane,
    workers: usize,
    depth: usize,
) -> Result<crossbeam_channel::Sender<Job>, HsmError> {
    let (tx, rx) = crossbeam_channel::bounded(depth);
    for i in 0..workers.max(1) {
        let (n, rx) = (node.clone(), rx.clone());
        std::thread::Builder::new()
            .name(format!("hsm-{}-{}{i}", n.name(), lane.tag()))
            .spawn(move || worker_loop(n, rx, lane.completion_batch()))
            .map_err(|e| HsmError::Internal(format!("spawn worker: {e}")))?;
    }
    Ok(tx)
}

impl Pool {
    /// Start the crypto lane (`node.opts.workers` threads) and the key generation lane
    /// (`node.opts.keygen_workers` threads), each with at least one thread.
    pub(super) fn start(node: Arc<Node>) -> Result<Pool, HsmError> {
        let o = &node.opts;
        let tx = start_lane(&node, Lane::Crypto, o.workers, o.queue_depth)?;
        let keygen_tx = start_lane(&node, Lane::Keygen, o.keygen_workers, o.keygen_queue_depth)?;
        Ok(Pool {
            node,
            tx,
            keygen_tx,
        })
    }

    /// The HSM these workers serve.
    pub(super) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn submit(&self, lane: Lane, deadline: Instant, run: JobFn) -> Result<(), HsmError> {
        let job = Job {
            deadline,
            span: tracing::Span::current(),
            run,
        };
        let hsm = || self.node.name().to_string();
        match lane {
            Lane::Crypto => self
                .tx
                .try_send(job)
                .map_err(|_| HsmError::Busy { hsm: hsm() }),
            Lane::Keygen => self
                .keygen_tx
                .try_send(job)
                .map_err(|_| HsmError::KeygenBusy { hsm: hsm() }),
        }
    }

    /// Queue `f` in `lane` with `deadline` (a down HSM takes no job); the receiver gets its
    /// result.
    fn submit_async<T: Send + 'static>(
        &self,
        lane: Lane,
        deadline: Instant,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, HsmError>>, HsmError> {
        if !self.node.usable() {
            return Err(self.down());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            lane,
            deadline,
            job(f, move |r| {
                let _ = tx.send(r);
            }),
        )?;
        Ok(rx)
    }

    /// Run `f` in this HSM's crypto lane, waiting at most `timeout`; an overrun makes the
    /// HSM suspect.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let rx = self.submit_async(Lane::Crypto, Instant::now() + timeout, f)?;
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

    /// Run the key generation `f` in this HSM's key generation lane, waiting at most the
    /// key generation deadline (queueing included). A full lane answers
    /// [`HsmError::KeygenBusy`] at once and an overrun [`HsmError::KeygenTimeout`]; neither
    /// makes the HSM suspect.
    pub(super) async fn keygen<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let timeout = self.node.opts.keygen_timeout;
        let deadline = Instant::now() + timeout;
        let rx = self.submit_async(Lane::Keygen, deadline, f)?;
        let in_flight = self.node.begin_keygen();
        let r = tokio::time::timeout(timeout, rx).await;
        drop(in_flight);
        let overran = || HsmError::KeygenTimeout {
            hsm: self.node.name().to_string(),
            ms: timeout.as_millis() as u64,
        };
        match r {
            Ok(Ok(r)) => r,
            // The worker drops a job whose deadline passed while it waited in the queue.
            Ok(Err(_)) if Instant::now() >= deadline => Err(overran()),
            Ok(Err(_)) => Err(self.down()),
            Err(_) => Err(overran()),
        }
    }

    /// Blocking twin of [`Pool::call`] for HSM-side threads (start-up).
    pub(super) fn call_blocking<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            Lane::Crypto,
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

/// The session an HSM thread owns, tied to the login epoch of the instance that opened it.
#[derive(Default)]
pub(super) struct OwnSession(Option<(u64, Session)>);

impl OwnSession {
    /// This thread's session on `inst`, opened if there is none yet. A session of an older
    /// instance (finalized since) is forgotten, never closed: session handle numbers restart
    /// after `C_Initialize`, so closing it could close another thread's new session.
    pub(super) fn on(&mut self, node: &Node, inst: &Instance) -> Result<&Session, HsmError> {
        let current = match self.0.take() {
            Some((epoch, s)) if epoch == inst.epoch() => (epoch, s),
            stale => {
                if let Some((_, s)) = stale {
                    std::mem::forget(s);
                }
                let s = inst
                    .ctx
                    .open_rw_session(inst.slot)
                    .map_err(|e| HsmError::from_ck(node.name(), Operation::OpenSession, e))?;
                (inst.epoch(), s)
            }
        };
        Ok(&self.0.insert(current).1)
    }

    /// Close the session (quarantine: a fresh one is opened for the next job).
    pub(super) fn discard(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for OwnSession {
    /// A thread ends: forget (never close) its session, whose instance may be finalized.
    fn drop(&mut self) {
        if let Some((_, s)) = self.0.take() {
            std::mem::forget(s);
        }
    }
}

fn worker_loop(node: Arc<Node>, rx: crossbeam_channel::Receiver<Job>, batch: usize) {
    let mut session = OwnSession::default();
    let mut done: Vec<Completion> = Vec::with_capacity(batch);
    loop {
        if !done.is_empty() && (rx.is_empty() || done.len() >= batch) {
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
        let _entered = span.enter();
        let _gate = node.call_gate(); // may wait while the module is re-initialized
        if Instant::now() >= deadline {
            continue; // the caller has given up; do not touch the HSM for it
        }
        let Some(inst) = node.current() else {
            continue; // HSM down: dropping the job answers NodeDown
        };
        node.stall_job();
        let s = match session.on(&node, &inst) {
            Ok(s) => s,
            Err(e) => {
                node.suspect(&e);
                continue;
            }
        };
        let mut ctx = WorkerCtx::new(&node, &inst, s);
        done.push(run(&mut ctx));
        let faulted = ctx.session_faulted();
        let overran = Instant::now() > deadline;
        if faulted || overran {
            if overran {
                tracing::warn!(hsm = %node.name(), "call overran its deadline; session quarantined");
            }
            session.discard();
        }
    }
}
