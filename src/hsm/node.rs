//! One HSM: its own module instance (never shared), an anchor session logged in for the life
//! of the instance, a login epoch, a handle cache warmed at start, worker threads that each
//! own one session, health state from real probes, and background re-initialization
//! (`C_Finalize` + `C_Initialize` of this instance only).

use super::error::{FailureClass, HsmError};
use super::{NodeConfig, NodeState};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serializes module loading and `C_Initialize`, because the per-HSM environment
/// (e.g. `SOFTHSM2_CONF`) is process-wide and read during `C_Initialize`.
pub(crate) static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Cache key: object class tag and `CKA_ID`.
pub(crate) type ObjKey = (u8, Vec<u8>);

/// Class tags used in the handle cache.
pub(crate) const SECRET: u8 = 0;
pub(crate) const PRIVATE: u8 = 1;
pub(crate) const PUBLIC: u8 = 2;

fn class_tag(c: ObjectClass) -> Option<u8> {
    if c == ObjectClass::SECRET_KEY {
        Some(SECRET)
    } else if c == ObjectClass::PRIVATE_KEY {
        Some(PRIVATE)
    } else if c == ObjectClass::PUBLIC_KEY {
        Some(PUBLIC)
    } else {
        None
    }
}

pub(crate) fn tag_class(t: u8) -> ObjectClass {
    match t {
        SECRET => ObjectClass::SECRET_KEY,
        PRIVATE => ObjectClass::PRIVATE_KEY,
        _ => ObjectClass::PUBLIC_KEY,
    }
}

/// `CKA_ID` of the per-HSM canary key used by health probes.
pub(crate) const CANARY_ID: &[u8] = b"hsm-kms/canary";

/// One initialization of the module for this HSM. Handles are valid only within it.
pub(crate) struct Instance {
    pub(crate) ctx: Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) epoch: u64,
    pub(crate) handles: RwLock<HashMap<ObjKey, ObjectHandle>>,
    /// What this token offers (mechanism list and probes), found at connect.
    pub(crate) caps: super::asym::Caps,
    anchor: Mutex<Option<Session>>,
}

impl Instance {
    /// Load (or re-initialize) the module, find the token by label, log in the anchor
    /// session and warm the handle cache with one find over the token.
    fn open(cfg: &NodeConfig, epoch: u64) -> Result<Instance, HsmError> {
        let hsm = cfg.name.as_str();
        let setup = |message: String| HsmError::Setup {
            hsm: hsm.to_string(),
            message,
        };
        if !cfg.module.exists() {
            return Err(setup(format!(
                "PKCS#11 module {} does not exist",
                cfg.module.display()
            )));
        }
        let ck = |e| HsmError::from_ck(hsm, e);
        let ctx = load_module(&cfg.module, &cfg.env).map_err(ck)?;
        let slot = find_slot(&ctx, &cfg.token_label)
            .map_err(ck)?
            .ok_or_else(|| setup(format!("no token labelled '{}' found", cfg.token_label)))?;
        let anchor = ctx.open_rw_session(slot).map_err(ck)?;
        let pin = AuthPin::new(cfg.pin.as_str().into());
        match anchor.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange),
                _,
            )) => {
                return Err(HsmError::LoginRefused {
                    hsm: hsm.to_string(),
                    reason: super::error::rv_name(rv),
                })
            }
            Err(e) => return Err(ck(e)),
        }
        let mut handles = HashMap::new();
        for h in anchor.find_objects(&[]).map_err(ck)? {
            let attrs = anchor
                .get_attributes(h, &[AttributeType::Class, AttributeType::Id])
                .map_err(ck)?;
            let mut class = None;
            let mut id = None;
            for a in attrs {
                match a {
                    Attribute::Class(c) => class = class_tag(c),
                    Attribute::Id(v) => id = Some(v),
                    _ => {}
                }
            }
            if let (Some(c), Some(id)) = (class, id) {
                handles.insert((c, id), h);
            }
        }
        let caps = super::asym::Caps::probe(&ctx, slot, &anchor);
        let inst = Instance {
            ctx,
            slot,
            epoch,
            handles: RwLock::new(handles),
            caps,
            anchor: Mutex::new(Some(anchor)),
        };
        inst.ensure_canary(hsm)?;
        Ok(inst)
    }

    fn ensure_canary(&self, hsm: &str) -> Result<(), HsmError> {
        let key = (SECRET, CANARY_ID.to_vec());
        if self.handles.read().contains_key(&key) {
            return Ok(());
        }
        let anchor = self.anchor.lock();
        let s = anchor.as_ref().expect("anchor present while opening");
        let h = s
            .generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &super::ops::aes_template(CANARY_ID, "hsm-kms canary", false),
            )
            .map_err(|e| HsmError::from_ck(hsm, e))?;
        self.handles.write().insert(key, h);
        Ok(())
    }

    /// Forget (never close) the anchor: used when the module is finalized, because session
    /// handle numbers restart after `C_Initialize` and closing a stale one could close a new one.
    fn abandon(&self) {
        if let Some(s) = self.anchor.lock().take() {
            std::mem::forget(s);
        }
    }
}

/// Load a module and `C_Initialize` it with `env` set, under the process-wide load lock
/// (SoftHSM2 reads `SOFTHSM2_CONF` in `C_Initialize`).
pub(crate) fn load_module(
    module: &std::path::Path,
    env: &[(String, String)],
) -> Result<Pkcs11, CkError> {
    let _g = LOAD_LOCK.lock();
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let ctx = Pkcs11::new(module)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(e),
    }
}

/// The slot holding the initialized token with this label.
pub(crate) fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>, CkError> {
    for slot in ctx.get_slots_with_initialized_token()? {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim() == label {
                return Ok(Some(slot));
            }
        }
    }
    Ok(None)
}

/// What a job leaves to do after its PKCS#11 work: hand the result to the caller.
type Completion = Box<dyn FnOnce() + Send>;
type JobFn = Box<dyn FnOnce(&mut WorkerCtx<'_>) -> Completion + Send>;

/// Results are handed back in small batches (when the queue runs dry or this many have
/// built up): one wake-up of the async side then serves several requests, which halves
/// the context switches per operation under load.
const COMPLETION_BATCH: usize = 8;

struct Job {
    deadline: Instant,
    run: JobFn,
}

/// What a job sees: the worker's session, this HSM's handle cache, and error recording.
pub struct WorkerCtx<'a> {
    node: &'a Node,
    inst: &'a Instance,
    session: &'a Session,
    discard_session: bool,
}

impl WorkerCtx<'_> {
    pub(crate) fn session(&self) -> &Session {
        self.session
    }

    /// Mechanisms and quirks of this token.
    pub(crate) fn caps(&self) -> &super::asym::Caps {
        &self.inst.caps
    }

    pub(crate) fn hsm(&self) -> &str {
        &self.node.cfg.name
    }

    /// Convert a cryptoki error, recording what it says about this HSM and session.
    pub(crate) fn err(&mut self, e: CkError) -> HsmError {
        let e = HsmError::from_ck(self.hsm(), e);
        match e.class() {
            FailureClass::Device => self.node.suspect(&e),
            FailureClass::Session => self.discard_session = true,
            _ => {}
        }
        e
    }

    /// The cached handle of an object; on a miss, one find by `CKA_ID` fills the cache.
    pub(crate) fn handle(&mut self, class: u8, id: &[u8]) -> Result<ObjectHandle, HsmError> {
        let key = (class, id.to_vec());
        if let Some(h) = self.inst.handles.read().get(&key) {
            return Ok(*h);
        }
        self.node.finds.fetch_add(1, Ordering::Relaxed);
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(tag_class(class)),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(|e| self.err(e))?;
        match found.first() {
            Some(h) => {
                self.inst.handles.write().insert(key, *h);
                Ok(*h)
            }
            None => Err(HsmError::KeyMissing {
                hsm: self.hsm().to_string(),
                object: hex::encode(id),
            }),
        }
    }

    pub(crate) fn remember(&self, class: u8, id: &[u8], h: ObjectHandle) {
        self.inst.handles.write().insert((class, id.to_vec()), h);
    }

    pub(crate) fn forget(&self, class: u8, id: &[u8]) {
        self.inst.handles.write().remove(&(class, id.to_vec()));
    }

    /// Run `f` with the handle of a key; a stale handle is re-found once and retried once.
    pub(crate) fn with_key<T>(
        &mut self,
        class: u8,
        id: &[u8],
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let h = self.handle(class, id)?;
        match f(self.session, h) {
            Ok(v) => Ok(v),
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)) => {
                self.forget(class, id);
                let h = self.handle(class, id)?;
                f(self.session, h).map_err(|e| self.err(e))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Health probe: token info plus a real GCM round trip with the canary key.
    pub(crate) fn probe(&mut self) -> Result<(), HsmError> {
        let slot = self.inst.slot;
        self.inst
            .ctx
            .get_token_info(slot)
            .map_err(|e| self.err(e))?;
        let pt = b"hsm-kms health probe";
        let (iv, ct) = super::ops::gcm_encrypt(self, CANARY_ID, b"probe", pt)?;
        let back = super::ops::gcm_decrypt(self, CANARY_ID, &iv, b"probe", &ct)?;
        if back.as_slice() != pt {
            return Err(HsmError::Internal(format!(
                "{}: canary round trip returned wrong data",
                self.hsm()
            )));
        }
        Ok(())
    }
}

/// Options shared by every node of a cluster.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub workers: usize,
    pub queue_depth: usize,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

/// One HSM of the cluster.
pub struct Node {
    pub(crate) cfg: NodeConfig,
    opts: NodeOptions,
    state: AtomicU8,
    inflight: AtomicUsize,
    instance: RwLock<Option<Arc<Instance>>>,
    next_epoch: AtomicU64,
    tx: crossbeam_channel::Sender<Job>,
    rx: crossbeam_channel::Receiver<Job>,
    call_gate: RwLock<()>,
    wake: (Mutex<bool>, Condvar),
    shutdown: AtomicBool,
    last_error: Mutex<Option<String>>,
    stall_ms: AtomicU64,
    reinits: AtomicU64,
    finds: AtomicU64,
}

impl Node {
    /// Open the HSM (blocking) and start its worker and monitor threads.
    pub(crate) fn start(cfg: NodeConfig, opts: NodeOptions) -> Result<Arc<Node>, HsmError> {
        let inst = Instance::open(&cfg, 1)?;
        let (tx, rx) = crossbeam_channel::bounded(opts.queue_depth);
        let node = Arc::new(Node {
            cfg,
            opts,
            state: AtomicU8::new(NodeState::Healthy as u8),
            inflight: AtomicUsize::new(0),
            instance: RwLock::new(Some(Arc::new(inst))),
            next_epoch: AtomicU64::new(2),
            tx,
            rx,
            call_gate: RwLock::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            shutdown: AtomicBool::new(false),
            last_error: Mutex::new(None),
            stall_ms: AtomicU64::new(0),
            reinits: AtomicU64::new(0),
            finds: AtomicU64::new(0),
        });
        for i in 0..node.opts.workers.max(1) {
            let n = node.clone();
            std::thread::Builder::new()
                .name(format!("hsm-{}-w{i}", n.cfg.name))
                .spawn(move || n.worker_loop())
                .map_err(|e| HsmError::Internal(format!("spawn worker: {e}")))?;
        }
        let n = node.clone();
        std::thread::Builder::new()
            .name(format!("hsm-{}-mon", n.cfg.name))
            .spawn(move || n.monitor_loop())
            .map_err(|e| HsmError::Internal(format!("spawn monitor: {e}")))?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub(crate) fn epoch(&self) -> Option<u64> {
        self.instance.read().as_ref().map(|i| i.epoch)
    }

    /// Whether this HSM's token does RSA-OAEP with SHA-256 itself (probed at connect).
    pub(crate) fn oaep_sha256(&self) -> bool {
        self.instance
            .read()
            .as_ref()
            .is_some_and(|i| i.caps.oaep_sha256)
    }

    /// Whether this HSM's token can generate, use and wrap Ed25519 keys (probed at connect).
    pub(crate) fn ed25519_keys(&self) -> bool {
        self.instance
            .read()
            .as_ref()
            .is_some_and(|i| i.caps.ed25519_keys)
    }

    pub(crate) fn reinit_count(&self) -> u64 {
        self.reinits.load(Ordering::Relaxed)
    }

    /// `C_FindObjects` calls made on behalf of requests (cache misses) since start.
    pub(crate) fn find_count(&self) -> u64 {
        self.finds.load(Ordering::Relaxed)
    }

    pub(crate) fn cached_handles(&self) -> usize {
        self.instance
            .read()
            .as_ref()
            .map(|i| i.handles.read().len())
            .unwrap_or(0)
    }

    pub(crate) fn has_object(&self, class: u8, id: &[u8]) -> bool {
        self.instance
            .read()
            .as_ref()
            .map(|i| i.handles.read().contains_key(&(class, id.to_vec())))
            .unwrap_or(false)
    }

    /// Test hook: every job waits this long before its PKCS#11 calls (a simulated hung HSM).
    pub(crate) fn set_stall(&self, d: Duration) {
        self.stall_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Mark the HSM suspect after a device-class failure and wake its monitor to probe now.
    pub(crate) fn suspect(&self, e: &HsmError) {
        let _ = self.state.compare_exchange(
            NodeState::Healthy as u8,
            NodeState::Suspect as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        tracing::warn!(hsm = %self.cfg.name, error = %e, "HSM suspect");
        *self.last_error.lock() = Some(e.to_string());
        self.wake_monitor();
    }

    fn wake_monitor(&self) {
        let (m, c) = &self.wake;
        *m.lock() = true;
        c.notify_one();
    }

    /// Usable for requests: healthy, or suspect while it still answers.
    pub(crate) fn usable(&self) -> bool {
        matches!(self.state(), NodeState::Healthy | NodeState::Suspect)
    }

    fn submit(&self, deadline: Instant, run: JobFn) -> Result<(), HsmError> {
        self.tx
            .try_send(Job { deadline, run })
            .map_err(|_| HsmError::Busy {
                hsm: self.cfg.name.clone(),
            })
    }

    /// Run `f` on one of this HSM's worker threads, waiting at most `timeout`.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        if !self.usable() {
            return Err(self.down());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.submit(
            deadline,
            Box::new(move |ctx| {
                let r = f(ctx);
                Box::new(move || {
                    let _ = tx.send(r);
                })
            }),
        )?;
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(timeout, rx).await;
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.down()),
            Err(_) => {
                let e = self.timeout_err(timeout);
                self.suspect(&e);
                Err(e)
            }
        }
    }

    /// Blocking twin of [`Node::call`] for HSM-side threads (start-up, monitor).
    pub(crate) fn call_blocking<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        self.submit(
            deadline,
            Box::new(move |ctx| {
                let r = f(ctx);
                Box::new(move || {
                    let _ = tx.send(r);
                })
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
            hsm: self.cfg.name.clone(),
        }
    }

    fn timeout_err(&self, d: Duration) -> HsmError {
        HsmError::Timeout {
            hsm: self.cfg.name.clone(),
            ms: d.as_millis() as u64,
        }
    }

    fn current(&self) -> Option<Arc<Instance>> {
        self.instance.read().clone()
    }

    fn worker_loop(self: Arc<Self>) {
        let mut session: Option<(u64, Session)> = None;
        let mut done: Vec<Completion> = Vec::with_capacity(COMPLETION_BATCH);
        loop {
            if !done.is_empty() && (self.rx.is_empty() || done.len() >= COMPLETION_BATCH) {
                done.drain(..).for_each(|c| c());
            }
            let job = match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(j) => j,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.shutdown.load(Ordering::Acquire) {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            };
            if Instant::now() >= job.deadline {
                continue; // the caller has given up; do not touch the HSM for it
            }
            let stall = self.stall_ms.load(Ordering::Relaxed);
            if stall > 0 {
                std::thread::sleep(Duration::from_millis(stall));
            }
            let _gate = self.call_gate.read();
            let Some(inst) = self.current() else {
                continue; // HSM down: dropping the job answers NodeDown
            };
            if session.as_ref().is_some_and(|(e, _)| *e != inst.epoch) {
                // A session of a finalized instance: never close it (handles are reused).
                if let Some((_, s)) = session.take() {
                    std::mem::forget(s);
                }
            }
            if session.is_none() {
                match inst.ctx.open_rw_session(inst.slot) {
                    Ok(s) => session = Some((inst.epoch, s)),
                    Err(e) => {
                        self.suspect(&HsmError::from_ck(&self.cfg.name, e));
                        continue;
                    }
                }
            }
            let Some((_, s)) = session.as_ref() else {
                continue;
            };
            let mut ctx = WorkerCtx {
                node: &self,
                inst: &inst,
                session: s,
                discard_session: false,
            };
            done.push((job.run)(&mut ctx));
            let overran = Instant::now() > job.deadline;
            if ctx.discard_session || overran {
                if overran {
                    tracing::warn!(hsm = %self.cfg.name, "call overran its deadline; session quarantined");
                }
                drop(session.take()); // closes it; a fresh one is opened for the next job
            }
        }
        if let Some((_, s)) = session.take() {
            std::mem::forget(s);
        }
    }

    fn monitor_loop(self: Arc<Self>) {
        loop {
            {
                let (m, c) = &self.wake;
                let mut woken = m.lock();
                if !*woken {
                    c.wait_for(&mut woken, self.opts.probe_interval);
                }
                *woken = false;
            }
            if self.shutdown.load(Ordering::Acquire) {
                break;
            }
            match self.state() {
                NodeState::Healthy | NodeState::Suspect => {
                    match self.call_blocking(self.opts.probe_timeout, |ctx| ctx.probe()) {
                        Ok(()) => self
                            .state
                            .store(NodeState::Healthy as u8, Ordering::Release),
                        Err(e) => {
                            tracing::error!(hsm = %self.cfg.name, error = %e, "HSM probe failed; marking down");
                            *self.last_error.lock() = Some(e.to_string());
                            self.state.store(NodeState::Down as u8, Ordering::Release);
                            self.try_reinit();
                        }
                    }
                }
                NodeState::Down => self.try_reinit(),
                NodeState::Failed => {}
            }
        }
    }

    /// `C_Finalize` + `C_Initialize` of this HSM's instance only, re-login, re-warm.
    fn try_reinit(&self) {
        let old = self.instance.write().take();
        if let Some(old) = old {
            // Wait (bounded) for calls in flight on the old instance to return.
            let gate = self.call_gate.try_write_for(self.opts.probe_timeout);
            old.abandon();
            let _ = old.ctx.clone().finalize();
            drop(gate);
        }
        let epoch = self.next_epoch.fetch_add(1, Ordering::AcqRel);
        match Instance::open(&self.cfg, epoch) {
            Ok(inst) => {
                *self.instance.write() = Some(Arc::new(inst));
                match self.call_blocking(self.opts.probe_timeout, |ctx| ctx.probe()) {
                    Ok(()) => {
                        self.reinits.fetch_add(1, Ordering::Relaxed);
                        self.state
                            .store(NodeState::Healthy as u8, Ordering::Release);
                        tracing::info!(hsm = %self.cfg.name, epoch, "HSM re-initialized and healthy");
                    }
                    Err(e) => {
                        *self.last_error.lock() = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                let fatal = matches!(e, HsmError::LoginRefused { .. });
                *self.last_error.lock() = Some(e.to_string());
                if fatal {
                    // Never retry a refused PIN in a loop: tokens lock users out.
                    tracing::error!(hsm = %self.cfg.name, error = %e, "login refused; HSM left failed");
                    self.state.store(NodeState::Failed as u8, Ordering::Release);
                } else {
                    tracing::debug!(hsm = %self.cfg.name, error = %e, "re-initialization failed; will retry");
                }
            }
        }
    }

    /// Stop threads and finalize the module (clean shutdown).
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.wake_monitor();
        let old = self.instance.write().take();
        if let Some(old) = old {
            let gate = self.call_gate.try_write_for(self.opts.probe_timeout);
            old.abandon();
            let _ = old.ctx.clone().finalize();
            drop(gate);
        }
    }
}
