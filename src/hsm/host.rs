//! An HSM served by a host process of its own (`hsm-kms hsm-host`, see `hosted`): the
//! service side of the link ([`HostLink`]) and the frames both sides exchange.
//!
//! The PKCS#11 module is loaded only in the host, with that HSM's own environment (set on
//! the child process, never swapped in the service's). Each job is one frame to the host
//! and one frame back (length-prefixed postcard, zeroized after use) over the host's stdin
//! and stdout; the service's writer thread and the host's writer thread both send what has
//! built up in one write, so a busy HSM costs few system calls per job.
//!
//! Supervision: a host that exits (crash, kill -9, a module that segfaults) fails its jobs
//! in flight at once with [`HsmError::NodeDown`] (the cluster fails them over) and makes the
//! HSM suspect; a host that stops answering (SIGSTOP, a call stuck inside the module) costs
//! each job its deadline, then the monitor's probe times out. Either way the monitor
//! re-initializes the HSM by killing the host (SIGKILL) and starting a new one
//! ([`HostLink::restart`]), with its usual back-off. The service never waits on a host
//! except for a bounded time: writes go through a channel to a writer thread, answers are
//! read by a reader thread, and the start of a host has a deadline.

use super::command::{Command, Control, Done, Facts, Lane, Reply};
use super::error::HsmError;
use super::instance::NodeConfig;
use super::integrity::Expected;
use super::kinds::Secret;
use super::node::{Node, NodeState};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The largest frame either side accepts (a frame is one job or one answer: far below).
const MAX_FRAME: usize = 64 << 20;

/// The version of the frames: a host of another version (an `hsm-kms` binary replaced
/// under a running service) is refused at its hello instead of misreading jobs.
pub(super) const PROTOCOL: u32 = 1;

/// What a new host process is told first: which HSM it serves and how.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct HostInit {
    /// [`PROTOCOL`] of the service.
    pub(super) protocol: u32,
    pub(super) name: String,
    pub(super) module: PathBuf,
    pub(super) token_label: String,
    pub(super) pin: Secret,
    pub(super) workers: usize,
    pub(super) queue_depth: usize,
    pub(super) keygen_workers: usize,
    pub(super) keygen_queue_depth: usize,
    pub(super) keygen_timeout_ms: u64,
    pub(super) probe_timeout_ms: u64,
}

/// A frame from the service to a host.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum ToHost {
    /// The first frame.
    Init(HostInit),
    /// A job for lane `lane`, to be dropped unrun once `ms` milliseconds have passed.
    Job {
        id: u64,
        lane: Lane,
        ms: u64,
        cmd: Command,
    },
    /// A setting, applied before any later job starts.
    Control(Control),
}

/// A frame from a host to the service.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum FromHost {
    /// The first frame: the HSM's state once the host has opened it.
    Hello {
        /// [`PROTOCOL`] of the host.
        protocol: u32,
        state: NodeState,
        error: Option<HsmError>,
        facts: Option<Facts>,
    },
    /// The outcome of job `id` (every job is answered exactly once).
    Done {
        id: u64,
        result: Result<Reply, HsmError>,
    },
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// One frame: little-endian `u32` length, then the postcard encoding of `msg`.
pub(super) fn encode(msg: &impl serde::Serialize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    // One buffer: a length placeholder, the body serialized after it, then the length.
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&[0u8; 4]);
    let mut frame = Zeroizing::new(postcard::to_extend(msg, frame).map_err(io_err)?);
    let len = u32::try_from(frame.len().saturating_sub(4)).map_err(io_err)?;
    if let Some(prefix) = frame.get_mut(..4) {
        prefix.copy_from_slice(&len.to_le_bytes());
    }
    Ok(frame)
}

/// The next frame of `r`; `None` at a clean end of stream.
pub(super) fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io_err(format!("frame of {len} bytes")));
    }
    let mut body = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map(Some).map_err(io_err)
}

/// Write frames from `rx` to `w`, everything that has built up in one flush, until the
/// channel closes or a write fails.
pub(super) fn write_loop(rx: crossbeam_channel::Receiver<Zeroizing<Vec<u8>>>, w: impl Write) {
    let mut w = std::io::BufWriter::with_capacity(64 << 10, w);
    while let Ok(frame) = rx.recv() {
        if w.write_all(&frame).is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if w.write_all(&frame).is_err() {
                return;
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
}

/// One running host process.
struct Conn {
    /// Frames to the writer thread (taken away to close the host's stdin).
    tx: Mutex<Option<crossbeam_channel::Sender<Zeroizing<Vec<u8>>>>>,
    pending: Mutex<HashMap<u64, Done>>,
    next: AtomicU64,
    /// The host's stdout ended: no job is taken any more.
    dead: AtomicBool,
    /// The service ended this host on purpose (restart, shutdown): its end is not a fault.
    ended: AtomicBool,
    child: Mutex<Child>,
    pid: u32,
}

impl Conn {
    fn send(&self, frame: Zeroizing<Vec<u8>>) -> bool {
        self.tx
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(frame).is_ok())
    }

    /// Kill the host process (SIGKILL, also when it is stopped) and reap it.
    fn kill(&self) {
        self.ended.store(true, Ordering::Release);
        self.tx.lock().take();
        let mut child = self.child.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The service's side of one HSM's host process, across its restarts.
pub(super) struct HostLink {
    node: Arc<Node>,
    program: PathBuf,
    cfg: NodeConfig,
    checks: Arc<Expected>,
    /// Deadline of a host's start (module load, login, warm-up).
    start_timeout: Duration,
    conn: RwLock<Option<Arc<Conn>>>,
    facts: Mutex<Option<Facts>>,
    restarts: AtomicU64,
    /// How the last host that ended on its own ended (e.g. `killed by signal 11`).
    last_exit: Arc<Mutex<Option<String>>>,
}

impl HostLink {
    /// The link of `node`'s HSM, served by `program hsm-host`; no process is started yet
    /// (see [`HostLink::restart`]).
    pub(super) fn new(
        node: Arc<Node>,
        program: PathBuf,
        checks: Arc<Expected>,
        start_timeout: Duration,
    ) -> HostLink {
        let cfg = node.cfg.clone();
        HostLink {
            node,
            program,
            cfg,
            checks,
            start_timeout,
            conn: RwLock::new(None),
            facts: Mutex::new(None),
            restarts: AtomicU64::new(0),
            last_exit: Arc::new(Mutex::new(None)),
        }
    }

    fn down(&self) -> HsmError {
        HsmError::NodeDown {
            hsm: self.cfg.name.clone(),
        }
    }

    /// Send a job to the host; `done` gets its outcome (the host answers every job, and a
    /// host that ends fails every job in flight).
    pub(super) fn submit(
        &self,
        lane: Lane,
        deadline: Instant,
        cmd: Command,
        done: Done,
    ) -> Result<(), HsmError> {
        let Some(conn) = self.conn.read().clone() else {
            done.cancel();
            return Err(self.down());
        };
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        // Rounded up: a host that dropped the job at a deadline truncated to the
        // millisecond would answer `NodeDown` before the caller's own deadline, as if the
        // HSM were down, where the caller must see its deadline pass.
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000) as u64;
        let frame = match encode(&ToHost::Job { id, lane, ms, cmd }) {
            Ok(f) => f,
            Err(e) => {
                done.cancel();
                return Err(HsmError::Internal(format!("host frame: {e}")));
            }
        };
        conn.pending.lock().insert(id, done);
        // The reader marks the host dead before it fails what is pending: a job inserted
        // after that is taken back here.
        if !conn.send(frame) || conn.dead.load(Ordering::Acquire) {
            let taken = conn.pending.lock().remove(&id);
            if let Some(d) = taken {
                d.cancel();
            }
            return Err(self.down());
        }
        Ok(())
    }

    /// Send a setting to the current host (a new host gets the check values at start).
    pub(super) fn control(&self, c: Control) {
        let conn = self.conn.read().clone();
        if let (Some(conn), Ok(frame)) = (conn, encode(&ToHost::Control(c))) {
            conn.send(frame);
        }
    }

    pub(super) fn facts(&self) -> Option<Facts> {
        if self.conn.read().is_none() {
            return None;
        }
        *self.facts.lock()
    }

    pub(super) fn set_facts(&self, f: Facts) {
        *self.facts.lock() = Some(f);
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.conn.read().as_ref().map(|c| c.pid)
    }

    /// Host processes started after the first.
    pub(super) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// How the last host that ended on its own (not ended by the service) ended.
    pub(super) fn last_exit(&self) -> Option<String> {
        self.last_exit.lock().clone()
    }

    /// End the current host process, if any (SIGKILL), and start a new one: it loads the
    /// module, logs in and warms its handle cache from nothing. Returns the new login epoch;
    /// a host that does not answer within the start deadline, or whose HSM cannot be opened,
    /// is killed again and the error returned.
    pub(super) fn restart(&self) -> Result<u64, HsmError> {
        let old = self.conn.write().take();
        if let Some(old) = old {
            old.kill();
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        if self.node.shutting_down() {
            return Err(self.down());
        }
        let (conn, hello) = self.spawn()?;
        let started = Instant::now();
        // Installed before the check values are read, so that values recorded meanwhile
        // reach this host one way or the other.
        *self.conn.write() = Some(conn.clone());
        self.control(Control::ExpectChecks(self.checks.all()));
        let fail = |e: HsmError| {
            self.conn.write().take();
            conn.kill();
            Err(e)
        };
        match hello.recv_timeout(self.start_timeout) {
            Ok((NodeState::Healthy, _, Some(facts))) => {
                self.set_facts(facts);
                tracing::info!(
                    hsm = %self.cfg.name,
                    pid = conn.pid,
                    ms = started.elapsed().as_millis() as u64,
                    "HSM host process started"
                );
                Ok(facts.epoch)
            }
            Ok((_, error, _)) => fail(error.unwrap_or_else(|| self.down())),
            Err(_) => fail(HsmError::Timeout {
                hsm: self.cfg.name.clone(),
                ms: self.start_timeout.as_millis() as u64,
            }),
        }
    }

    /// Start a host process, send it its configuration, and start the writer and reader
    /// threads; the receiver gets its hello.
    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
    ) -> Result<
        (
            Arc<Conn>,
            std::sync::mpsc::Receiver<(NodeState, Option<HsmError>, Option<Facts>)>,
        ),
        HsmError,
    > {
        let hsm = &self.cfg.name;
        let setup = |message: String| HsmError::Setup {
            hsm: hsm.clone(),
            message,
        };
        let mut child = std::process::Command::new(&self.program)
            .args(["hsm-host", "--hsm", hsm])
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                setup(format!(
                    "cannot start the HSM host process {}: {e}",
                    self.program.display()
                ))
            })?;
        let pid = child.id();
        let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(setup("the HSM host process has no pipes".into()));
        };
        let o = &self.node.opts;
        let init = ToHost::Init(HostInit {
            protocol: PROTOCOL,
            name: hsm.clone(),
            module: self.cfg.module.clone(),
            token_label: self.cfg.token_label.clone(),
            pin: Secret::new(self.cfg.pin.as_bytes().to_vec()),
            workers: o.workers,
            queue_depth: o.queue_depth,
            keygen_workers: o.keygen_workers,
            keygen_queue_depth: o.keygen_queue_depth,
            keygen_timeout_ms: o.keygen_timeout.as_millis() as u64,
            probe_timeout_ms: o.probe_timeout.as_millis() as u64,
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let frame = encode(&init).map_err(|e| setup(format!("host frame: {e}")))?;
        let _ = tx.send(frame);
        let conn = Arc::new(Conn {
            tx: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            child: Mutex::new(child),
            pid,
        });
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map(|_| ())
                .map_err(|e| HsmError::Internal(format!("spawn host link thread: {e}")))
        };
        let started = spawn(
            format!("hsm-{hsm}-tx"),
            Box::new(move || write_loop(rx, stdin)),
        )
        .and_then(|()| {
            let (hello_tx, hello_rx) = std::sync::mpsc::sync_channel(1);
            let (c, node, exit) = (conn.clone(), self.node.clone(), self.last_exit.clone());
            spawn(
                format!("hsm-{hsm}-rx"),
                Box::new(move || read_loop(&c, &node, &mut stdout, hello_tx, &exit)),
            )
            .map(|()| hello_rx)
        });
        match started {
            Ok(hello) => Ok((conn, hello)),
            Err(e) => {
                conn.kill();
                Err(e)
            }
        }
    }

    /// End the host process: close its stdin (it finalizes its module and exits), and kill
    /// it if it has not exited within `grace`.
    pub(super) fn shutdown(&self) {
        let Some(conn) = self.conn.write().take() else {
            return;
        };
        conn.ended.store(true, Ordering::Release);
        conn.tx.lock().take();
        let grace = self.node.opts.keygen_timeout.min(Duration::from_secs(5));
        let until = Instant::now() + grace;
        loop {
            match conn.child.lock().try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= until => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::warn!(hsm = %self.cfg.name, "HSM host process did not exit; killing it");
        conn.kill();
    }
}

/// The reader thread of one host: the hello, then every answer to its waiting job; at the
/// end of the host's stdout, every job still pending fails (`NodeDown`) and, unless the
/// service had ended the host itself before, how the host ended is kept in `last_exit` and
/// the HSM becomes suspect.
fn read_loop(
    conn: &Conn,
    node: &Node,
    out: &mut impl Read,
    hello: std::sync::mpsc::SyncSender<(NodeState, Option<HsmError>, Option<Facts>)>,
    last_exit: &Mutex<Option<String>>,
) {
    let mut out = std::io::BufReader::with_capacity(64 << 10, out);
    let why = loop {
        match read_frame::<FromHost>(&mut out) {
            Ok(Some(FromHost::Done { id, result })) => {
                let done = conn.pending.lock().remove(&id);
                if let Some(done) = done {
                    done.send(result);
                }
            }
            Ok(Some(FromHost::Hello {
                protocol,
                state,
                error,
                facts,
            })) => {
                let hello_of = if protocol == PROTOCOL {
                    (state, error, facts)
                } else {
                    let e = HsmError::Setup {
                        hsm: node.name().to_string(),
                        message: format!(
                            "its host process speaks protocol {protocol}, this service {PROTOCOL}: \
                             is hsm_host_program another version of hsm-kms?"
                        ),
                    };
                    (NodeState::Failed, Some(e), None)
                };
                let _ = hello.try_send(hello_of);
            }
            Ok(None) => break "its output ended".to_string(),
            Err(e) => break format!("unreadable output: {e}"),
        }
    };
    // Read before anything else: a restart that kills this (already dead) host afterwards
    // does not make its crash intentional.
    let ended_by_service = conn.ended.load(Ordering::Acquire);
    conn.dead.store(true, Ordering::Release);
    let failed: Vec<Done> = conn.pending.lock().drain().map(|(_, d)| d).collect();
    let in_flight = failed.len();
    drop(failed); // each answers NodeDown
    if ended_by_service || node.shutting_down() {
        return;
    }
    let status = exit_status(conn);
    *last_exit.lock() = Some(status.clone());
    tracing::error!(
        hsm = %node.name(),
        pid = conn.pid,
        status = %status,
        in_flight,
        "HSM host process ended ({why}); its jobs in flight fail over"
    );
    node.suspect(&HsmError::Setup {
        hsm: node.name().to_string(),
        message: format!("its host process {} ended: {status}", conn.pid),
    });
}

/// How the host exited, waiting briefly for it to be reapable.
fn exit_status(conn: &Conn) -> String {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..50 {
        match conn.child.lock().try_wait() {
            Ok(Some(s)) => {
                return match s.signal() {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!("exit code {}", s.code().unwrap_or(-1)),
                }
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return format!("unknown ({e})"),
        }
    }
    "still running".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(m: &T) -> T {
        let frame = encode(m).unwrap_or_default();
        read_frame::<T>(&mut frame.as_slice())
            .ok()
            .flatten()
            .unwrap_or_else(|| unreachable!("a frame of {m:?} reads back"))
    }

    #[test]
    fn frames_read_back_what_was_written() {
        let job = ToHost::Job {
            id: 7,
            lane: Lane::Crypto,
            ms: 1500,
            cmd: Command::Encrypt {
                key: b"kms/k/1".to_vec(),
                iv: Some([1; 12]),
                aad: b"ctx".to_vec(),
                plaintext: Secret::new(b"hello".to_vec()),
            },
        };
        let back = roundtrip(&job);
        assert_eq!(format!("{back:?}"), format!("{job:?}"));
        let done = FromHost::Done {
            id: 7,
            result: Err(HsmError::InvalidCiphertext),
        };
        assert!(matches!(
            roundtrip(&done),
            FromHost::Done {
                id: 7,
                result: Err(HsmError::InvalidCiphertext)
            }
        ));
        // Several frames in one stream, then a clean end.
        let mut stream = Vec::new();
        for id in 0..3u64 {
            let f = encode(&FromHost::Done {
                id,
                result: Ok(Reply::Bool(true)),
            })
            .unwrap_or_default();
            stream.extend_from_slice(&f);
        }
        let mut r = stream.as_slice();
        for id in 0..3u64 {
            assert!(matches!(
                read_frame::<FromHost>(&mut r),
                Ok(Some(FromHost::Done { id: i, .. })) if i == id
            ));
        }
        assert!(matches!(read_frame::<FromHost>(&mut r), Ok(None)));
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_before_it_is_read() {
        let huge = u32::try_from(MAX_FRAME + 1)
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        assert!(read_frame::<ToHost>(&mut huge.as_slice()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever a host (or a service) sends, reading it never panics: a frame is read
        /// or refused.
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_frame::<ToHost>(&mut bytes.as_slice());
            let _ = read_frame::<FromHost>(&mut bytes.as_slice());
            // With a valid length prefix too, so that the body decoder sees the bytes.
            let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = read_frame::<ToHost>(&mut framed.as_slice());
            let _ = read_frame::<FromHost>(&mut framed.as_slice());
        }
    }
}
