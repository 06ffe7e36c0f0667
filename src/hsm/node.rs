//! One HSM's shared state, held (as `Arc<Node>`) by its workers, its probe thread, its
//! health monitor and the cluster: configuration, health state ([`NodeState`]) and last
//! error, the current module instance, the monitor's wake-up, and the counters of the health
//! report ([`HsmHealth`]). Nothing here starts threads or calls PKCS#11 operations.
//!
//! The module instance is swapped on re-initialization behind a call gate: every thread
//! that calls into the module (crypto and key generation workers, the probe thread) holds
//! the gate for reading for the whole of its call, and [`Node::close_instance`] takes it for
//! writing before `C_Finalize`, so a module is never finalized while a call is inside it
//! (that was a use-after-free in `libsofthsm2.so`). The monitor thread may wait there as
//! long as the longest call in flight; the request path never takes the gate for writing.

use super::error::{Fault, HsmError};
use super::instance::{Instance, NodeConfig};
use super::integrity::Expected;
use super::iv::IvSource;
use super::kinds::Protections;
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Health of one HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum NodeState {
    /// Answering probes and requests.
    Healthy = 0,
    /// A call failed or overran; a probe is under way. Still used if nothing better exists.
    Suspect = 1,
    /// Not used; re-initialized in the background until it answers again. Also an HSM that
    /// could not be opened at start: when it answers, it is proven (same cluster wrapping
    /// key) before it is used.
    Down = 2,
    /// Not retried (the token refused the PIN, or holds a different cluster wrapping key
    /// than the other HSMs): needs an operator.
    Failed = 3,
    /// The token does not hold the cluster wrapping key: never used until an operator
    /// enrolls it (`hsm-kms hsm enroll`) and restarts the service.
    NotEnrolled = 4,
}

impl NodeState {
    /// The state's name as `/health` shows it (`Healthy`, `Suspect`, …), a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Healthy => "Healthy",
            NodeState::Suspect => "Suspect",
            NodeState::Down => "Down",
            NodeState::Failed => "Failed",
            NodeState::NotEnrolled => "NotEnrolled",
        }
    }

    /// Every state, for gauges that show each (1 for the current one, 0 otherwise).
    pub const ALL: [NodeState; 5] = [
        NodeState::Healthy,
        NodeState::Suspect,
        NodeState::Down,
        NodeState::Failed,
        NodeState::NotEnrolled,
    ];

    fn from_u8(v: u8) -> NodeState {
        match v {
            0 => NodeState::Healthy,
            1 => NodeState::Suspect,
            2 => NodeState::Down,
            4 => NodeState::NotEnrolled,
            _ => NodeState::Failed,
        }
    }
}

/// The state of an HSM whose module instance could not be opened: `Failed` when the token
/// refused the PIN (never retried: tokens lock users out), else `Down` (retried).
pub(super) fn state_after_failed_open(e: &HsmError) -> NodeState {
    match e {
        HsmError::LoginRefused { .. } => NodeState::Failed,
        _ => NodeState::Down,
    }
}

/// Buckets (seconds) of the per-HSM call latency histogram: 100 µs to 5 s.
const CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The latency histogram of HSM `name` (its name as a constant label).
fn call_histogram(name: &str) -> Option<prometheus::Histogram> {
    let opts = prometheus::HistogramOpts::new(
        "hsm_kms_hsm_call_duration_seconds",
        "Latency of HSM crypto calls, queueing included, by HSM.",
    )
    .const_label("hsm", name)
    .buckets(CALL_BUCKETS.to_vec());
    prometheus::Histogram::with_opts(opts).ok()
}

/// A health report line for one HSM.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HsmHealth {
    /// Name of the HSM, as configured.
    pub name: String,
    /// Its health state.
    pub state: NodeState,
    /// Calls submitted to its crypto workers and not yet answered.
    pub in_flight: usize,
    /// Key generations submitted to its key generation lane and not yet answered.
    pub keygen_in_flight: usize,
    /// Login epoch of the current module instance; `None` while it is being re-initialized.
    pub login_epoch: Option<u64>,
    /// Object handles in the current instance's handle cache.
    pub cached_handles: usize,
    /// `C_FindObjects` calls made after start-up (handle-cache misses).
    pub request_finds: u64,
    /// Successful background re-initializations (`C_Finalize` + `C_Initialize`).
    pub reinitializations: u64,
    /// Errors recorded against it since start (failed calls, probes, re-initializations).
    pub errors: u64,
    /// Calls that failed on it and were retried on another HSM, since start.
    pub failovers: u64,
    /// Crypto worker sessions running a call now.
    pub busy_sessions: usize,
    /// Calls waiting for a crypto worker now.
    pub queued: usize,
    /// The last error recorded against this HSM, if any.
    pub last_error: Option<String>,
    /// Objects of its token that could not be read when the current instance opened
    /// (skipped, never fatal; e.g. a half-written object file).
    pub unreadable_objects: usize,
    /// The custody protections its token enforced when probed at connect (`None`: not
    /// probed, e.g. not enrolled).
    pub protections: Option<Protections>,
    /// What its token offers for each kind of key (`needs::kinds`, AWS names): `native`,
    /// `fallback: …` or `missing: <mechanism>`, found at connect (`None`: not opened).
    pub capabilities: Option<std::collections::BTreeMap<String, String>>,
    /// The PID of its host process (`None`: served in the service's process, or no host
    /// runs now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// Host processes started after the first (`None`: served in process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_restarts: Option<u64>,
    /// How the last host process that ended on its own ended (e.g. `killed by signal 11`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_last_exit: Option<String>,
}

/// Options shared by every node of a cluster.
#[derive(Debug, Clone)]
pub(super) struct NodeOptions {
    /// Crypto worker threads (one session each).
    pub(super) workers: usize,
    /// Jobs that may wait for a crypto worker.
    pub(super) queue_depth: usize,
    /// Key generation worker threads (one session each): at most this many key pair
    /// generations run inside the module at once.
    pub(super) keygen_workers: usize,
    /// Key generations that may wait for a key generation worker.
    pub(super) keygen_queue_depth: usize,
    /// Deadline of one key generation, queueing included.
    pub(super) keygen_timeout: Duration,
    pub(super) probe_interval: Duration,
    /// Deadline of one probe on the probe thread (only the probe itself: that thread runs
    /// nothing else).
    pub(super) probe_timeout: Duration,
    /// Deterministic GCM IVs shared by every HSM of the cluster; `None`: IVs from
    /// `C_GenerateRandom` (only where no durable fixed field exists, e.g. HSM-level tests).
    pub(super) iv: Option<Arc<IvSource>>,
    /// The recorded check values of the cluster's keys (shared by every HSM).
    pub(super) checks: Arc<Expected>,
}

/// A call in flight on one HSM (see [`Node::begin_call`] and [`Node::begin_keygen`]).
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One HSM of the cluster.
pub(super) struct Node {
    pub(super) cfg: NodeConfig,
    shared_name: Arc<str>,
    pub(super) opts: NodeOptions,
    state: AtomicU8,
    /// See [`Node::proven`].
    proven: AtomicBool,
    inflight: AtomicUsize,
    keygen_inflight: AtomicUsize,
    instance: RwLock<Option<Arc<Instance>>>,
    next_epoch: AtomicU64,
    call_gate: RwLock<()>,
    wake: (Mutex<bool>, Condvar),
    shutdown: AtomicBool,
    last_error: Mutex<Option<String>>,
    protections: Mutex<Option<Protections>>,
    #[cfg(feature = "test-hooks")]
    stall_ms: AtomicU64,
    #[cfg(feature = "test-hooks")]
    job_stall_ms: AtomicU64,
    reinits: AtomicU64,
    finds: AtomicU64,
    /// Errors recorded against this HSM (failed calls, probes, re-initializations).
    errors: AtomicU64,
    /// Calls that failed here and were retried on another HSM.
    failovers: AtomicU64,
    /// Latency of its crypto lane calls, queueing included (`None` if it could not be
    /// made: a metric is never a reason not to serve).
    latency: Option<prometheus::Histogram>,
    /// State changes not yet taken by [`Node::take_transitions`] (at most
    /// [`TRANSITIONS_KEPT`]; later ones are dropped until they are taken).
    transitions: Mutex<Vec<(NodeState, NodeState)>>,
}

/// Most state changes a node keeps for [`Node::take_transitions`].
const TRANSITIONS_KEPT: usize = 256;

impl Node {
    /// Open the HSM's first instance (blocking); no threads yet. Never fails the start: an
    /// HSM that cannot be opened (module missing, token folder missing or unreadable, no
    /// token with its label…) is returned `Down` with its error recorded, for its monitor to
    /// retry, and one whose token refused the PIN is returned `Failed` (never retried). Either
    /// way it is not [proven](Node::proven) until it has opened and shown the cluster
    /// wrapping key.
    pub(super) fn open(cfg: NodeConfig, opts: NodeOptions) -> (Node, Option<HsmError>) {
        match Instance::open(&cfg, 1) {
            Ok(inst) => (
                Node::new(cfg, opts, NodeState::Healthy, Some(Arc::new(inst)), None),
                None,
            ),
            Err(e) => {
                let state = state_after_failed_open(&e);
                tracing::error!(hsm = %cfg.name, error = %e, ?state, "HSM cannot be opened at start");
                let msg = e.to_string();
                (Node::new(cfg, opts, state, None, Some(msg)), Some(e))
            }
        }
    }

    /// An HSM served by a host process: never opened here; down until its host answers.
    pub(super) fn hosted(cfg: NodeConfig, opts: NodeOptions) -> Node {
        Node::new(cfg, opts, NodeState::Down, None, None)
    }

    fn new(
        cfg: NodeConfig,
        opts: NodeOptions,
        state: NodeState,
        inst: Option<Arc<Instance>>,
        error: Option<String>,
    ) -> Node {
        let latency = call_histogram(&cfg.name);
        Node {
            shared_name: Arc::from(cfg.name.as_str()),
            cfg,
            opts,
            state: AtomicU8::new(state as u8),
            proven: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            keygen_inflight: AtomicUsize::new(0),
            instance: RwLock::new(inst),
            next_epoch: AtomicU64::new(2),
            call_gate: RwLock::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            shutdown: AtomicBool::new(false),
            last_error: Mutex::new(error),
            protections: Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            stall_ms: AtomicU64::new(0),
            #[cfg(feature = "test-hooks")]
            job_stall_ms: AtomicU64::new(0),
            reinits: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            latency,
            finds: AtomicU64::new(0),
            transitions: Mutex::new(Vec::new()),
        }
    }

    /// Whether this HSM has shown, in this process, that it holds the cluster wrapping key
    /// the other HSMs hold (at connect, or when it first came back after being unreachable
    /// at start): until then it is never used.
    pub(super) fn proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }

    /// Record that this HSM holds the cluster's wrapping key (see [`Node::proven`]).
    pub(super) fn set_proven(&self) {
        self.proven.store(true, Ordering::Release);
    }

    pub(super) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The name, shared (what each job's [`Done`](super::command::Done) carries).
    pub(super) fn shared_name(&self) -> Arc<str> {
        self.shared_name.clone()
    }

    pub(super) fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(super) fn set_state(&self, s: NodeState) {
        let was = NodeState::from_u8(self.state.swap(s as u8, Ordering::AcqRel));
        if was != s {
            let mut t = self.transitions.lock();
            if t.len() < TRANSITIONS_KEPT {
                t.push((was, s));
            }
        }
    }

    /// The state changes made through [`Node::set_state`] since the last call, oldest
    /// first (a call becoming suspect is not one).
    pub(super) fn take_transitions(&self) -> Vec<(NodeState, NodeState)> {
        std::mem::take(&mut *self.transitions.lock())
    }

    /// Usable for requests: healthy, or suspect while it still answers.
    pub(super) fn usable(&self) -> bool {
        matches!(self.state(), NodeState::Healthy | NodeState::Suspect)
    }

    /// Mark the HSM suspect after a device fault and wake its monitor to probe now.
    /// An HSM that is not usable (down, failed) is left to its monitor's back-off: waking
    /// the monitor for each failure of a crash-looping host would restart it at once, in
    /// a loop. A key fault (a copy missing on this HSM, a stale handle) is about one key,
    /// not the HSM, and leaves it as it is: calls fail over for that key, re-sync puts the
    /// copy back, and the HSM stays first in line for every other key.
    pub(super) fn suspect(&self, e: &HsmError) {
        if e.fault() == Fault::Key {
            return;
        }
        let _ = self.state.compare_exchange(
            NodeState::Healthy as u8,
            NodeState::Suspect as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.record_error(e);
        if self.usable() {
            tracing::warn!(hsm = %self.cfg.name, error = %e, "HSM suspect");
            self.wake_monitor();
        }
    }

    /// Keep `e` as the last error of the health report.
    pub(super) fn record_error(&self, e: &HsmError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }

    pub(super) fn wake_monitor(&self) {
        let (m, c) = &self.wake;
        *m.lock() = true;
        c.notify_one();
    }

    /// Monitor side: wait until woken or `interval` has passed.
    pub(super) fn wait_for_wake(&self, interval: Duration) {
        let (m, c) = &self.wake;
        let mut woken = m.lock();
        if !*woken {
            c.wait_for(&mut woken, interval);
        }
        *woken = false;
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The current module instance, if the HSM is not being re-initialized.
    pub(super) fn current(&self) -> Option<Arc<Instance>> {
        self.instance.read().clone()
    }

    /// Held (for reading) by every thread for the whole of its calls into the module:
    /// [`Node::close_instance`] waits for it before `C_Finalize`.
    pub(super) fn call_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.call_gate.read()
    }

    /// Take the current instance away (new calls then find none and answer `NodeDown`),
    /// wait until every call inside the module has returned, and finalize it. Blocks as long
    /// as the longest call in flight (a key generation may take its whole deadline; a hung
    /// module, until it answers): only the monitor thread calls this, after marking the HSM
    /// down, so nothing on the request path waits for it.
    pub(super) fn close_instance(&self) {
        let old = self.instance.write().take();
        if let Some(old) = old {
            let _no_call_inside = self.call_gate.write();
            old.finalize();
        }
    }

    /// Open a new instance (next login epoch) and make it current; returns its epoch. An
    /// instance opened while the HSM shuts down is finalized at once instead.
    pub(super) fn open_next_instance(&self) -> Result<u64, HsmError> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::AcqRel);
        let inst = Instance::open(&self.cfg, epoch)?;
        let mut current = self.instance.write();
        if self.shutting_down() {
            drop(current);
            inst.finalize();
            return Err(HsmError::NodeDown {
                hsm: self.name().to_string(),
            });
        }
        *current = Some(Arc::new(inst));
        Ok(epoch)
    }

    /// Count a call in flight until the returned guard is dropped, which also happens when
    /// the caller's future is dropped mid-call (a client that gave up): `pick()` balances on
    /// this count, so it must never leak.
    pub(super) fn begin_call(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.inflight)
    }

    /// Count a key generation in flight until the returned guard is dropped; counted apart
    /// from [`Node::begin_call`] so that long generations do not steer crypto calls away.
    pub(super) fn begin_keygen(&self) -> InFlight<'_> {
        self.keygen_inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.keygen_inflight)
    }

    pub(super) fn keygen_inflight(&self) -> usize {
        self.keygen_inflight.load(Ordering::Relaxed)
    }

    /// Forget the last error (the HSM has recovered).
    pub(super) fn clear_error(&self) {
        *self.last_error.lock() = None;
    }

    pub(super) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A `C_FindObjects` made on behalf of a request (handle-cache miss).
    pub(super) fn count_find(&self) {
        self.finds.fetch_add(1, Ordering::Relaxed);
    }

    /// A call that failed here was retried on another HSM.
    pub(super) fn count_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// One crypto lane call took `d` (queueing included).
    pub(super) fn observe_call(&self, d: Duration) {
        if let Some(h) = &self.latency {
            h.observe(d.as_secs_f64());
        }
    }

    /// The histogram of this HSM's call latencies (`hsm_kms_hsm_call_duration_seconds`).
    pub(super) fn latency(&self) -> Option<&prometheus::Histogram> {
        self.latency.as_ref()
    }

    pub(super) fn count_reinit(&self) {
        self.reinits.fetch_add(1, Ordering::Relaxed);
    }

    /// This HSM's line of the health report.
    pub(super) fn report(&self) -> HsmHealth {
        let inst = self.current();
        HsmHealth {
            name: self.name().to_string(),
            state: self.state(),
            in_flight: self.inflight(),
            keygen_in_flight: self.keygen_inflight(),
            login_epoch: inst.as_ref().map(|i| i.epoch()),
            cached_handles: inst.as_ref().map(|i| i.handles.len()).unwrap_or(0),
            request_finds: self.finds.load(Ordering::Relaxed),
            reinitializations: self.reinits.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            busy_sessions: self.inflight().min(self.opts.workers),
            queued: self.inflight().saturating_sub(self.opts.workers),
            last_error: self.last_error.lock().clone(),
            protections: *self.protections.lock(),
            capabilities: None,
            unreadable_objects: inst.as_ref().map(|i| i.handles.unreadable()).unwrap_or(0),
            host_pid: None,
            host_restarts: None,
            host_last_exit: None,
        }
    }

    /// Record what the custody probe found on this token.
    pub(super) fn set_protections(&self, p: Protections) {
        *self.protections.lock() = Some(p);
    }

    /// Stop the threads (they see the flag) and finalize the module (clean shutdown). Waits
    /// at most `opts.keygen_timeout` (the longest legitimate call) for calls inside the
    /// module to return; past that the instance is left initialized rather than finalized
    /// under a running call (the process is ending; a later `C_Initialize` in this process
    /// would then find the module already initialized, with its old state).
    pub(super) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.wake_monitor();
        let old = self.instance.write().take();
        if let Some(old) = old {
            match self.call_gate.try_write_for(self.opts.keygen_timeout) {
                Some(_no_call_inside) => old.finalize(),
                None => tracing::error!(
                    hsm = %self.name(),
                    "a call is still inside the module at shutdown; instance left unfinalized"
                ),
            }
        }
    }

    /// Test hook: every call into the module (worker jobs and probes) waits `all_ms` inside
    /// the call gate before its PKCS#11 calls (a call hung inside the module), and every
    /// worker job (not probes) `job_ms` more (slow operations); `None` keeps a stall as it
    /// is. A no-op without the `test-hooks` feature.
    pub(super) fn set_stalls(&self, all_ms: Option<u64>, job_ms: Option<u64>) {
        #[cfg(feature = "test-hooks")]
        {
            if let Some(ms) = all_ms {
                self.stall_ms.store(ms, Ordering::SeqCst);
            }
            if let Some(ms) = job_ms {
                self.job_stall_ms.store(ms, Ordering::SeqCst);
            }
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = (all_ms, job_ms);
    }

    /// Test hook: a worker job waits the stalls set by [`Node::set_stalls`]. Call with the call gate held.
    pub(super) fn stall_job(&self) {
        #[cfg(feature = "test-hooks")]
        sleep_ms(self.stall_ms.load(Ordering::Relaxed) + self.job_stall_ms.load(Ordering::Relaxed));
    }

    /// Test hook: a probe waits the stall set by [`Node::set_stalls`]. Call with the call
    /// gate held.
    pub(super) fn stall_probe(&self) {
        #[cfg(feature = "test-hooks")]
        sleep_ms(self.stall_ms.load(Ordering::Relaxed));
    }
}

/// Sleep `ms` milliseconds (test hooks).
#[cfg(feature = "test-hooks")]
fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}
