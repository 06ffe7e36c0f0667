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
//!
//! A third lane, **probe**, has one thread and a one-slot queue and runs nothing but health
//! probes, on its own session: probes are never queued behind the workers' jobs (a
//! 4-second RSA-4096 generation used to make a 2-second probe time out).
//!
//! Jobs are [`Command`]s (data, not closures). A [`Pool`] either runs them on these threads
//! in the service process (in-process HSM) or sends them to the HSM's host process
//! (`host`), where a pool of the same kind runs them: the caller's side (in-flight counts,
//! deadlines, suspicion on overrun) is the same for both.

use super::command::{self, Command, Control, Done, Facts, FromReply, Lane, Reply};
use super::error::HsmError;
use super::error::Operation;
use super::host::HostLink;
use super::instance::Instance;
use super::job::WorkerCtx;
use super::node::Node;
use cryptoki::session::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Results are handed back in small batches (when the queue runs dry or this many have
/// built up): one wake-up of the async side then serves several requests, which halves
/// the context switches per operation under load.
const COMPLETION_BATCH: usize = 8;

/// The thread name tag of a lane: `hsm-<name>-w<i>` (crypto), `hsm-<name>-g<i>` (key
/// generation), `hsm-<name>-p0` (probe).
fn lane_tag(lane: Lane) -> &'static str {
    match lane {
        Lane::Crypto => "w",
        Lane::Keygen => "g",
        Lane::Probe => "p",
    }
}

/// Results handed back per batch: key generations and probes one by one (a finished
/// generation must not wait for the next one, seconds long, to be answered).
fn completion_batch(lane: Lane) -> usize {
    match lane {
        Lane::Crypto => COMPLETION_BATCH,
        Lane::Keygen | Lane::Probe => 1,
    }
}

struct Job {
    deadline: Instant,
    /// The submitter's span, entered on the worker thread while the job runs.
    span: tracing::Span,
    cmd: Command,
    done: Done,
}

/// The lanes of an HSM served in this process: the sending sides of their queues.
struct Lanes {
    crypto: crossbeam_channel::Sender<Job>,
    keygen: crossbeam_channel::Sender<Job>,
    probe: crossbeam_channel::Sender<Job>,
}

/// Where an HSM's jobs run.
#[derive(Clone)]
enum Backend {
    /// On worker threads of this process.
    Local(Arc<Lanes>),
    /// In the HSM's host process.
    Host(Arc<HostLink>),
}

/// One HSM's workers as the cluster sees them: its lanes in this process, or its host
/// process.
#[derive(Clone)]
pub(super) struct Pool {
    node: Arc<Node>,
    backend: Backend,
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
            .name(format!("hsm-{}-{}{i}", n.name(), lane_tag(lane)))
            .spawn(move || worker_loop(n, rx, lane))
            .map_err(|e| HsmError::Internal(format!("spawn worker: {e}")))?;
    }
    Ok(tx)
}

impl Pool {
    /// Serve `node` in this process: start the crypto lane (`node.opts.workers` threads),
    /// the key generation lane (`node.opts.keygen_workers` threads), each with at least one
    /// thread, and the probe lane.
    pub(super) fn start(node: Arc<Node>) -> Result<Pool, HsmError> {
        let o = &node.opts;
        let lanes = Lanes {
            crypto: start_lane(&node, Lane::Crypto, o.workers, o.queue_depth)?,
            keygen: start_lane(&node, Lane::Keygen, o.keygen_workers, o.keygen_queue_depth)?,
            probe: start_lane(&node, Lane::Probe, 1, 1)?,
        };
        Ok(Pool {
            node,
            backend: Backend::Local(Arc::new(lanes)),
        })
    }

    /// Serve `node` through its host process (`link`).
    pub(super) fn hosted(node: Arc<Node>, link: Arc<HostLink>) -> Pool {
        Pool {
            node,
            backend: Backend::Host(link),
        }
    }

    /// The HSM these workers serve.
    pub(super) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Whether the HSM is served by a host process.
    pub(super) fn is_hosted(&self) -> bool {
        matches!(self.backend, Backend::Host(_))
    }

    /// Queue `cmd` in `lane` with `deadline`; `done` gets its outcome. A full queue answers
    /// at once (`Busy`, `KeygenBusy`, or a timeout for a probe still stuck).
    pub(super) fn submit(
        &self,
        lane: Lane,
        deadline: Instant,
        cmd: Command,
        done: Done,
    ) -> Result<(), HsmError> {
        let hsm = || self.node.name().to_string();
        let lanes = match &self.backend {
            Backend::Local(l) => l,
            Backend::Host(link) => return link.submit(lane, deadline, cmd, done),
        };
        let job = Job {
            deadline,
            span: tracing::Span::current(),
            cmd,
            done,
        };
        // Answered by the error returned here: the job never reached a worker.
        let full = |j: crossbeam_channel::TrySendError<Job>| j.into_inner().done.cancel();
        match lane {
            Lane::Crypto => lanes.crypto.try_send(job).map_err(|j| {
                full(j);
                HsmError::Busy { hsm: hsm() }
            }),
            Lane::Keygen => lanes.keygen.try_send(job).map_err(|j| {
                full(j);
                HsmError::KeygenBusy { hsm: hsm() }
            }),
            Lane::Probe => lanes.probe.try_send(job).map_err(|j| {
                full(j);
                HsmError::Timeout { hsm: hsm(), ms: 0 }
            }),
        }
    }

    /// Queue `cmd` in `lane` with `deadline` (a down HSM takes no job); the receiver gets
    /// its outcome.
    fn submit_async(
        &self,
        lane: Lane,
        deadline: Instant,
        cmd: Command,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Reply, HsmError>>, HsmError> {
        if !self.node.usable() {
            return Err(self.down());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Done::new(self.node.shared_name(), move |r| {
            let _ = tx.send(r);
        });
        self.submit(lane, deadline, cmd, done)?;
        Ok(rx)
    }

    /// Run `cmd` in this HSM's crypto lane, waiting at most `timeout`; an overrun makes the
    /// HSM suspect.
    pub(super) async fn call<T: FromReply>(
        &self,
        timeout: Duration,
        cmd: Command,
    ) -> Result<T, HsmError> {
        let started = Instant::now();
        let rx = self.submit_async(Lane::Crypto, started + timeout, cmd)?;
        let in_flight = self.node.begin_call();
        let r = tokio::time::timeout(timeout, rx).await;
        drop(in_flight);
        self.node.observe_call(started.elapsed());
        match r {
            Ok(Ok(r)) => {
                self.note_served(&r);
                command::expect(r)
            }
            Ok(Err(_)) => Err(self.down()),
            Err(_) => {
                let e = self.timeout_err(timeout);
                self.node.suspect(&e);
                Err(e)
            }
        }
    }

    /// Note (for the call's audit record) that this HSM answered, unless the job was
    /// dropped without reaching it.
    fn note_served(&self, r: &Result<Reply, HsmError>) {
        if !matches!(r, Err(HsmError::NodeDown { .. })) {
            crate::kms::vault::note_served(self.node.name());
        }
    }

    /// Run the key generation `cmd` in this HSM's key generation lane, waiting at most the
    /// key generation deadline (queueing included). A full lane answers
    /// [`HsmError::KeygenBusy`] at once and an overrun [`HsmError::KeygenTimeout`]; neither
    /// makes the HSM suspect.
    pub(super) async fn keygen<T: FromReply>(&self, cmd: Command) -> Result<T, HsmError> {
        let timeout = self.node.opts.keygen_timeout;
        let deadline = Instant::now() + timeout;
        let rx = self.submit_async(Lane::Keygen, deadline, cmd)?;
        let in_flight = self.node.begin_keygen();
        let r = tokio::time::timeout(timeout, rx).await;
        drop(in_flight);
        let overran = || HsmError::KeygenTimeout {
            hsm: self.node.name().to_string(),
            ms: timeout.as_millis() as u64,
        };
        match r {
            // The worker drops a job whose deadline passed while it waited in the queue.
            Ok(Ok(Err(HsmError::NodeDown { .. }))) if Instant::now() >= deadline => Err(overran()),
            Ok(Ok(r)) => {
                self.note_served(&r);
                command::expect(r)
            }
            Ok(Err(_)) => Err(self.down()),
            Err(_) => Err(overran()),
        }
    }

    /// Blocking twin of [`Pool::call`] for HSM-side threads (start-up, admission, tests'
    /// inspection); runs whatever the HSM's state.
    pub(super) fn call_blocking<T: FromReply>(
        &self,
        timeout: Duration,
        cmd: Command,
    ) -> Result<T, HsmError> {
        command::expect(self.blocking(Lane::Crypto, timeout, cmd))
    }

    fn blocking(&self, lane: Lane, timeout: Duration, cmd: Command) -> Result<Reply, HsmError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let done = Done::new(self.node.shared_name(), move |r| {
            let _ = tx.send(r);
        });
        self.submit(lane, Instant::now() + timeout, cmd, done)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(self.timeout_err(timeout)),
            Err(_) => Err(self.down()),
        }
    }

    /// Probe the HSM now on its probe lane, waiting at most `timeout` (blocking: the
    /// monitor thread). A probe still stuck from an earlier request fails this one at once.
    pub(super) fn probe(&self, timeout: Duration) -> Result<Facts, HsmError> {
        let facts =
            command::expect(self.blocking(Lane::Probe, timeout, Command::Probe)).map_err(|e| {
                match e {
                    HsmError::Timeout { hsm, .. } => HsmError::Timeout {
                        hsm,
                        ms: timeout.as_millis() as u64,
                    },
                    e => e,
                }
            })?;
        if let Backend::Host(link) = &self.backend {
            link.set_facts(facts);
        }
        Ok(facts)
    }

    /// Re-initialize the HSM from nothing (blocking: the monitor thread). In this process:
    /// `C_Finalize` once no call is inside the module, then `C_Initialize`, login and
    /// warm-up; a hosted HSM: its host process is killed and a new one started. Returns the
    /// new login epoch.
    pub(super) fn reinit(&self) -> Result<u64, HsmError> {
        match &self.backend {
            Backend::Local(_) => {
                self.node.close_instance();
                if self.node.shutting_down() {
                    return Err(self.down());
                }
                self.node.open_next_instance()
            }
            Backend::Host(link) => link.restart(),
        }
    }

    /// Apply a setting to the HSM (in order with the jobs that follow it).
    pub(super) fn control(&self, c: Control) {
        match &self.backend {
            Backend::Local(_) => c.apply(&self.node),
            Backend::Host(link) => link.control(c),
        }
    }

    /// What the HSM's current module instance knows of itself (a hosted HSM: as of its last
    /// probe); `None` while it is down.
    pub(super) fn facts(&self) -> Option<Facts> {
        match &self.backend {
            Backend::Local(_) => self.node.current().map(|i| command::facts_of(&i)),
            Backend::Host(link) => link.facts(),
        }
    }

    /// The PID of the HSM's host process (`None` in process, or while none runs).
    pub(super) fn host_pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Host(link) => link.pid(),
        }
    }

    /// This HSM's line of the health report.
    pub(super) fn report(&self) -> super::node::HsmHealth {
        let mut r = self.node.report();
        if let Backend::Host(link) = &self.backend {
            let f = link.facts();
            r.login_epoch = f.map(|f| f.epoch);
            r.cached_handles = f.map(|f| f.cached_handles).unwrap_or(0);
            r.unreadable_objects = f.map(|f| f.unreadable).unwrap_or(0);
            r.host_pid = link.pid();
            r.host_restarts = Some(link.restarts());
            r.host_last_exit = link.last_exit();
        }
        r.capabilities = self.facts().map(|f| {
            super::needs::kinds()
                .into_iter()
                .map(|(name, kind)| (name, super::needs::support(f.offered, kind).to_string()))
                .collect()
        });
        r
    }

    /// Stop the HSM: its threads, and its module instance finalized (in process) or its
    /// host process ended.
    pub(super) fn shutdown(&self) {
        self.node.shutdown();
        if let Backend::Host(link) = &self.backend {
            link.shutdown();
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

fn worker_loop(node: Arc<Node>, rx: crossbeam_channel::Receiver<Job>, lane: Lane) {
    let batch = completion_batch(lane);
    let mut session = OwnSession::default();
    let mut done: Vec<(Done, Result<Reply, HsmError>)> = Vec::with_capacity(batch);
    loop {
        if !done.is_empty() && (rx.is_empty() || done.len() >= batch) {
            done.drain(..).for_each(|(d, r)| d.send(r));
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
            cmd,
            done: reply,
        } = job;
        let _entered = span.enter();
        let _gate = node.call_gate(); // may wait while the module is re-initialized
        if Instant::now() >= deadline {
            continue; // the caller has given up; do not touch the HSM for it
        }
        let Some(inst) = node.current() else {
            continue; // HSM down: dropping the job answers NodeDown
        };
        match lane {
            Lane::Probe => node.stall_probe(),
            Lane::Crypto | Lane::Keygen => node.stall_job(),
        }
        let s = match session.on(&node, &inst) {
            Ok(s) => s,
            Err(e) => {
                node.suspect(&e);
                continue;
            }
        };
        let mut ctx = WorkerCtx::new(&node, &inst, s);
        done.push((reply, cmd.run(&mut ctx)));
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
