//! The audit trail on disk: append-only JSON-lines files, one writer thread, group commit,
//! a hash chain across files; and [`verify`], which checks a whole trail.
//!
//! ## Format
//! Files `trail-NNNNNNNN.jsonl` (8 decimal digits, from 1) in the audit folder; a new
//! file is started when the current one would pass the size limit. Each line is
//!
//! ```text
//! {"seq":N,"prev":"<64 hex>","event":{…CloudTrail record…}}
//! ```
//!
//! `seq` counts records from 0 across all files; `prev` is the SHA-256 of the previous
//! line's bytes (without its newline), 64 zeros for record 0. Editing, deleting or
//! reordering a line therefore breaks the chain at the next line, in whichever file.
//!
//! ## Writing
//! Callers hand serialized records to one writer thread and wait. The writer takes every
//! batch waiting, writes them with one positioned `write` and one `fdatasync`, then answers
//! them all (group commit). Before it syncs, it waits (at most 2 ms) until
//! at least half of the calls in flight wait for that sync: the request path counts calls
//! from their start ([`AuditSink::call_started`]), so a lone call is never held, and under
//! load one sync carries tens of records instead of two or three. Each sync costs the same
//! whatever it carries: on a virtual disk with a write-back cache, a write and a flush,
//! about 0.3 ms of a CPU between guest and host; one per two records was a third of the
//! service's throughput. A failed write or sync rolls the file back to its length before
//! the batch, fails the batch and marks the trail unhealthy; while unhealthy,
//! [`FileTrail`]'s `healthy()` asks the writer (at most every 200 ms) to re-open and sync
//! the current file, which makes it healthy again when that works.
//!
//! The writer keeps zeroed space, written and synced, ahead of the last record (up to
//! [`AHEAD`] bytes): a record written over it changes neither the file's size nor its
//! block map, so its `fdatasync` flushes data only, without a journal commit of the inode
//! (an appending write costs several times more under load). A file therefore ends in
//! NUL bytes while it is being written; records end at the first NUL ([`written`]; JSON
//! text never holds a raw NUL). The zeros are cut off when the writer starts the next
//! file, when it stops, and when a trail is opened.
//!
//! ## Digests
//! With a [`DigestOptions`], the writer adds a signed digest line to the same chain every
//! `every_records` event records or `every` (when records came meanwhile), and on
//! [`FileTrail::seal`] (clean shutdown):
//!
//! ```text
//! {"seq":N,"prev":"<64 hex>","digest":{"from_seq":a,"to_seq":b,"hash":"<line b's SHA-256>",…,"signature":"…"}}
//! ```
//!
//! (see [`crate::kms::digest`]). The MAC is made by the HSMs off the writer's thread: the
//! writer only notes the chain's head and hands it to a task on the runtime; the signed
//! digest comes back on a second channel and is written with the next batch (or alone
//! when none waits). A failed MAC leaves the records uncovered until the next attempt;
//! it does not make the trail unhealthy (the records themselves are durable).
//!
//! ## Reading
//! `FileTrail` is also the trail's `AuditReader` (`LookupEvents`): records newest first,
//! scanning the files from the newest (`read`).

pub mod pending;
mod read;
mod verify;

pub use verify::{check_digests, verify, DigestFound, Finding, VerifyError, VerifyReport};

use crate::kms::audit::{AuditSink, GroupCommits};
use crate::kms::digest::{Digest, DigestSigner, DIGEST_ALGORITHM};
use crate::kms::KmsError;
use base64::Engine;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the trail could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or folder operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An existing file's last line is not a record (a torn write is repaired on open;
    /// anything else is left for `audit verify`).
    #[error("{0}")]
    Corrupt(String),
    /// The writer thread is gone or failed this batch.
    #[error("audit writer: {0}")]
    Writer(String),
}

fn io(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Default size at which a new file is started.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// `prev` of record 0.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most records written in one group commit.
const MAX_BATCH: usize = 4096;
/// A sync waits for more records at most this long ([`Shared::enough_wait`]).
const GATHER_MAX: Duration = Duration::from_millis(2);
/// A sync waits until at least one in this many calls in flight waits for it.
const GATHER_SHARE: usize = 2;
/// Shortest time between two health probes.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Most zeroed bytes kept ready after the last record (bounded by the file size limit).
pub const AHEAD: u64 = 1 << 20;
/// Fewest kept: a file size limit below this still gets this much.
const AHEAD_MIN: u64 = 4096;
/// Why the trail turned unhealthy when it could not keep space ready.
const NO_ROOM: &str =
    "the audit folder has no room for the next records: calls are refused until it has";

/// Split a trail file's bytes into its records (everything before the first NUL byte) and
/// what follows: the zeroed space kept ready while the file is written, possibly with the
/// remains of a write interrupted by a power loss, never acknowledged.
pub fn written(data: &[u8]) -> (&[u8], &[u8]) {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    data.split_at(end)
}

/// The records of trail file `path` as text: its bytes up to the zeroed space kept ready
/// after them ([`written`]).
pub fn records_text(path: &Path) -> std::io::Result<String> {
    let data = std::fs::read(path)?;
    String::from_utf8(written(&data).0.to_vec())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The name of trail file number `n`.
pub fn file_name(n: u64) -> String {
    format!("trail-{n:08}.jsonl")
}

/// The trail files of `dir`, in order, with their numbers.
pub fn trail_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_prefix("trail-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Default number of event records between two digests.
pub const DEFAULT_DIGEST_RECORDS: u64 = 1000;
/// Default longest time between two digests (while records come).
pub const DEFAULT_DIGEST_EVERY: Duration = Duration::from_secs(60);
/// Shortest time between two attempts after a failed MAC.
const DIGEST_RETRY: Duration = Duration::from_secs(1);
/// How long the writer sleeps when it has no digest to time.
const IDLE: Duration = Duration::from_secs(3600);

/// When and with what the writer makes digests.
#[derive(Clone)]
pub struct DigestOptions {
    /// Makes the MACs (the HSMs).
    pub signer: Arc<dyn DigestSigner>,
    /// A digest after this many event records.
    pub every_records: u64,
    /// A digest at least this often while records come.
    pub every: Duration,
}

/// What the writer took from its channel for one group commit.
#[derive(Default)]
struct Taken {
    batches: Vec<Batch>,
    probe: bool,
    stop: bool,
    /// Records in `batches`.
    count: usize,
}

/// One queued batch and where to answer.
struct Batch {
    records: Vec<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

enum Msg {
    Write(Batch),
    Probe,
    /// Write a digest covering every record so far; answer once it is durable.
    Seal(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Write what came before, cut the file after its records and end (the trail is
    /// dropped).
    Stop,
}

/// A signed digest (or why it could not be made) coming back to the writer.
type Signed = Result<Digest, String>;

/// The writer's digest state.
struct Digests {
    opts: DigestOptions,
    runtime: tokio::runtime::Handle,
    signed_tx: crossbeam_channel::Sender<Signed>,
    /// `from_seq` of the next digest.
    from: u64,
    /// Event records written since the last digest asked for.
    uncovered: u64,
    /// Event records the digest being signed covers (restored if it fails).
    in_flight: Option<u64>,
    /// A signed digest waiting to be written.
    ready: Option<Digest>,
    /// When the last digest was asked for (or failed).
    last: Instant,
    /// No attempt before this (after a failure).
    not_before: Instant,
    /// `seal` callers, answered once nothing is uncovered.
    sealers: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// Shared between the trail and its writer thread.
struct Shared {
    healthy: AtomicBool,
    /// Calls started whose records will come ([`AuditSink::call_started`]).
    in_flight: AtomicUsize,
    /// Records handed to the writer and not yet answered.
    waiting: AtomicUsize,
    /// Group commits (one write and one sync each) that worked, and their event records.
    commits: AtomicU64,
    committed_records: AtomicU64,
    /// Milliseconds since `epoch` of the last probe asked.
    last_probe_ms: AtomicU64,
    epoch: Instant,
}

/// The file adapter of [`AuditSink`].
pub struct FileTrail {
    /// The audit folder (read by `LookupEvents`).
    dir: PathBuf,
    tx: crossbeam_channel::Sender<Msg>,
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The writer thread, woken when enough records wait ([`Shared::enough_wait`]).
    writer_thread: Option<std::thread::Thread>,
}

impl Drop for FileTrail {
    /// Ends the writer once it has written what was handed to it, so the files are
    /// finished (cut after their records) when the trail is gone.
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Where the chain stands: the next sequence number and the hash of the last line (hex,
/// as [`line_hash_hex`] makes it).
struct Head {
    seq: u64,
    prev: [u8; 64],
}

impl Head {
    /// The head of an empty trail: record 0 comes next, its `prev` is [`GENESIS`].
    const GENESIS: Head = Head {
        seq: 0,
        prev: [b'0'; 64],
    };
}

/// The file being written.
struct OpenFile {
    file: File,
    /// Its number.
    n: u64,
    /// The length of its records: the next record goes here.
    len: u64,
    /// Its size: `len..size` are zeros, written and synced.
    size: u64,
}

/// The writer's state.
struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    head: Head,
    /// The open file; `None` until opened (or after a failure).
    file: Option<OpenFile>,
    /// The number of the last file seen on disk (0 when none).
    last_number: u64,
    digests: Option<Digests>,
    /// `to_seq` of the last digest line found in the newest file on open.
    last_digest_to: Option<u64>,
}

impl FileTrail {
    /// The trail in `dir` (created if absent), continuing the chain of the files already
    /// there. Never fails: a folder that cannot be used makes an unhealthy trail (calls
    /// are then refused, fail-closed), re-checked by probes.
    pub fn open(dir: &Path, max_file_bytes: u64) -> FileTrail {
        FileTrail::open_with_digests(dir, max_file_bytes, None)
    }

    /// [`FileTrail::open`], adding signed digests made through `digests` (on the current
    /// tokio runtime; without one, no digests are made and an `error!` line says so).
    pub fn open_with_digests(
        dir: &Path,
        max_file_bytes: u64,
        digests: Option<DigestOptions>,
    ) -> FileTrail {
        let shared = Arc::new(Shared::new());
        let mut w = Writer {
            dir: dir.to_path_buf(),
            max_file_bytes: max_file_bytes.max(1),
            head: Head::GENESIS,
            file: None,
            last_number: 0,
            digests: None,
            last_digest_to: None,
        };
        match w.reopen() {
            Ok(()) => shared.healthy.store(true, Ordering::SeqCst),
            Err(e) => tracing::error!(
                target: "hsm_kms::audit",
                error = %e,
                "audit trail cannot be opened; calls are refused until it can"
            ),
        }
        let (signed_tx, signed_rx) = crossbeam_channel::unbounded::<Signed>();
        if let Some(opts) = digests {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let now = Instant::now();
                    w.digests = Some(Digests {
                        opts,
                        runtime,
                        signed_tx,
                        from: w.last_digest_to.map_or(w.head.seq, |t| t + 1),
                        // Records left by a run that stopped without a digest are covered
                        // by this run's first one.
                        // (not the digest line itself).
                        uncovered: match w.last_digest_to {
                            Some(t) => w.head.seq.saturating_sub(t + 2),
                            None => w.head.seq,
                        },
                        in_flight: None,
                        ready: None,
                        last: now,
                        not_before: now,
                        sealers: Vec::new(),
                    });
                }
                Err(e) => tracing::error!(
                    target: "hsm_kms::audit",
                    error = %e,
                    "no runtime to sign audit digests on: the trail gets none"
                ),
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let s2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(&rx, &signed_rx, &s2));
        let writer = match spawned {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(target: "hsm_kms::audit", error = %e, "audit writer not started");
                shared.healthy.store(false, Ordering::SeqCst);
                None
            }
        };
        let writer_thread = writer.as_ref().map(|w| w.thread().clone());
        FileTrail {
            dir: dir.to_path_buf(),
            tx,
            shared,
            writer,
            writer_thread,
        }
    }
}

impl FileTrail {
    /// Write a digest covering every record written so far (at clean shutdown); resolves
    /// once it is durable, at once when the trail makes no digests or nothing is new.
    pub async fn seal(&self) -> Result<(), KmsError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Seal(done))
            .map_err(|_| KmsError::Internal("audit trail: writer stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(KmsError::Internal(format!("audit digest: {e}"))),
            Err(_) => Err(KmsError::Internal("audit trail: writer stopped".into())),
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for FileTrail {
    fn healthy(&self) -> bool {
        if self.shared.healthy.load(Ordering::Acquire) {
            return true;
        }
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let last = self.shared.last_probe_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64
            && self
                .shared
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.tx.send(Msg::Probe);
        }
        false
    }

    async fn append(&self, records: Vec<Vec<u8>>) -> Result<(), KmsError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let n = records.len();
        // Counted before the writer can answer (and uncount) them.
        let waiting = self.shared.waiting.fetch_add(n, Ordering::AcqRel) + n;
        if self.tx.send(Msg::Write(Batch { records, done })).is_err() {
            self.shared.waiting.fetch_sub(n, Ordering::AcqRel);
            return Err(KmsError::Internal("audit trail: writer stopped".into()));
        }
        self.wake_writer_if_enough(waiting);
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(KmsError::Internal(format!("audit trail: {e}"))),
            Err(_) => Err(KmsError::Internal("audit trail: writer stopped".into())),
        }
    }

    fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    fn group_commits(&self) -> GroupCommits {
        GroupCommits {
            commits: self.shared.commits.load(Ordering::Relaxed),
            records: self.shared.committed_records.load(Ordering::Relaxed),
        }
    }

    fn call_started(&self) {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn call_ended(&self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The writer may be holding a sync for this call's record, which will not come.
        self.wake_writer_if_enough(self.shared.waiting.load(Ordering::Acquire));
    }
}

impl FileTrail {
    /// Wake the writer when `waiting` records are enough for it to stop gathering and
    /// sync ([`Shared::enough_wait`]).
    fn wake_writer_if_enough(&self, waiting: usize) {
        if self.shared.enough_wait(waiting) {
            if let Some(t) = &self.writer_thread {
                t.unpark();
            }
        }
    }
}

impl Shared {
    /// Unhealthy (until the trail is opened), nothing counted.
    fn new() -> Shared {
        Shared {
            healthy: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether `waiting` records are enough to sync now rather than wait for more: at
    /// least one in [`GATHER_SHARE`] of the calls in flight waits for the sync.
    fn enough_wait(&self, waiting: usize) -> bool {
        waiting.saturating_mul(GATHER_SHARE) >= self.in_flight.load(Ordering::Acquire)
    }
}

/// The SHA-256 of a line (without its newline), in hex.
pub fn line_hash(line: &[u8]) -> String {
    String::from_utf8_lossy(&line_hash_hex(line)).into_owned()
}

/// [`line_hash`] as bytes, without allocating (the writer hashes every line it writes).
fn line_hash_hex(line: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    // 32 bytes of SHA-256 always fill 64 hex digits: this cannot fail.
    let _ = hex::encode_to_slice(Sha256::digest(line), &mut out);
    out
}

impl Writer {
    fn run(
        mut self,
        rx: &crossbeam_channel::Receiver<Msg>,
        signed: &crossbeam_channel::Receiver<Signed>,
        shared: &Shared,
    ) {
        loop {
            let mut first = None;
            crossbeam_channel::select! {
                recv(rx) -> m => match m {
                    Ok(m) => first = Some(m),
                    Err(_) => break,
                },
                recv(signed) -> s => if let Ok(s) = s {
                    self.signed(s);
                },
                default(self.digest_wait()) => {}
            }
            let mut taken = Taken::default();
            self.take(first, rx, &mut taken);
            // Group commit: while calls in flight will hand their records soon, wait (at
            // most GATHER_MAX) until enough of them share this sync. Each sync costs the
            // same whatever it carries (and, on a virtual disk, a lot of CPU).
            if !taken.batches.is_empty() && !taken.stop {
                let deadline = Instant::now() + GATHER_MAX;
                while taken.count < MAX_BATCH
                    && !taken.stop
                    && !shared.enough_wait(shared.waiting.load(Ordering::Acquire))
                {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::park_timeout(deadline - now);
                    self.take(None, rx, &mut taken);
                }
                self.take(None, rx, &mut taken);
            }
            let Taken {
                batches,
                probe,
                stop,
                count,
            } = taken;
            let digest = self.digests.as_mut().and_then(|d| d.ready.take());
            if probe && batches.is_empty() && digest.is_none() {
                let ok = self.probe();
                shared.healthy.store(ok, Ordering::Release);
            } else if !batches.is_empty() || digest.is_some() {
                // Only space kept ready makes the trail healthy: a write that worked
                // (a refused call's record, say) answers its callers first, and a call
                // they make next must not be admitted before `prepare` has found room.
                let ok = self.write_and_answer(batches, digest, shared);
                shared.waiting.fetch_sub(count, Ordering::AcqRel);
                if ok && !stop {
                    let room = self.prepare();
                    shared.healthy.store(room, Ordering::Release);
                    if !room {
                        tracing::error!(target: "hsm_kms::audit", "{NO_ROOM}");
                    }
                }
            }
            if stop {
                break;
            }
            self.maybe_digest();
        }
        self.finish_file();
    }

    /// Take `first` (if any) then the messages waiting, up to [`MAX_BATCH`] records or a
    /// stop.
    fn take(&mut self, first: Option<Msg>, rx: &crossbeam_channel::Receiver<Msg>, t: &mut Taken) {
        let mut next = match first {
            Some(m) => Some(m),
            None if t.count < MAX_BATCH && !t.stop => rx.try_recv().ok(),
            None => None,
        };
        while let Some(m) = next.take() {
            match m {
                Msg::Write(b) => {
                    t.count += b.records.len();
                    t.batches.push(b);
                }
                Msg::Probe => t.probe = true,
                Msg::Stop => t.stop = true,
                Msg::Seal(done) => match self.digests.as_mut() {
                    Some(d) => d.sealers.push(done),
                    None => {
                        let _ = done.send(Ok(()));
                    }
                },
            }
            if t.count < MAX_BATCH && !t.stop {
                next = rx.try_recv().ok();
            }
        }
    }

    /// Write `digest` (if any) then `batches` in one group commit, and answer them.
    /// Returns whether the write worked; a failure makes the trail unhealthy at once
    /// (success does not make it healthy: see the caller).
    fn write_and_answer(
        &mut self,
        batches: Vec<Batch>,
        digest: Option<Digest>,
        shared: &Shared,
    ) -> bool {
        let digest_line = digest.as_ref().and_then(|d| serde_json::to_vec(d).ok());
        let mut lines: Vec<(&str, &[u8])> = Vec::new();
        if let Some(d) = &digest_line {
            lines.push(("digest", d));
        }
        lines.extend(
            batches
                .iter()
                .flat_map(|b| b.records.iter())
                .map(|r| ("event", r.as_slice())),
        );
        // The event records of the batches (the digest line is not one).
        let records: u64 = batches.iter().map(|b| b.records.len() as u64).sum();
        let result = self.write(&lines);
        if result.is_err() {
            shared.healthy.store(false, Ordering::Release);
        } else {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .committed_records
                .fetch_add(records, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            tracing::error!(target: "hsm_kms::audit", error = %e, "audit write failed");
        }
        if let Some(d) = self.digests.as_mut() {
            if result.is_ok() {
                d.uncovered += records;
                if let Some(dg) = &digest {
                    d.from = dg.to_seq + 1;
                }
            } else if digest.is_some() {
                // The signed digest is lost with the batch: cover its records again, later.
                d.uncovered = d.uncovered.max(1);
                d.not_before = Instant::now() + DIGEST_RETRY;
                for s in d.sealers.drain(..) {
                    let _ = s.send(Err("the digest could not be written".into()));
                }
            }
        }
        for b in batches {
            let _ = b
                .done
                .send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        result.is_ok()
    }

    /// How long to wait for messages before a digest may fall due.
    fn digest_wait(&self) -> Duration {
        match &self.digests {
            Some(d) if d.uncovered > 0 && d.in_flight.is_none() && d.ready.is_none() => {
                // Due by count or asked for (retried after a failure): at `not_before`.
                let due = if d.uncovered >= d.opts.every_records || !d.sealers.is_empty() {
                    d.not_before
                } else {
                    (d.last + d.opts.every).max(d.not_before)
                };
                due.saturating_duration_since(Instant::now())
            }
            _ => IDLE,
        }
    }

    /// A digest back from the HSMs: keep it for the next write, or note the failure.
    fn signed(&mut self, s: Signed) {
        let Some(d) = self.digests.as_mut() else {
            return;
        };
        let covered = d.in_flight.take().unwrap_or(0);
        match s {
            Ok(digest) => d.ready = Some(digest),
            Err(e) => {
                tracing::error!(target: "hsm_kms::audit", error = %e, "audit digest not signed; will retry");
                d.uncovered += covered;
                let now = Instant::now();
                d.last = now;
                d.not_before = now + DIGEST_RETRY;
                for s in d.sealers.drain(..) {
                    let _ = s.send(Err(e.clone()));
                }
            }
        }
    }

    /// Ask for a digest when one is due; answer `seal` callers once nothing is uncovered.
    fn maybe_digest(&mut self) {
        let (seq, prev) = (
            self.head.seq,
            String::from_utf8_lossy(&self.head.prev).into_owned(),
        );
        let Some(d) = self.digests.as_mut() else {
            return;
        };
        if d.in_flight.is_some() || d.ready.is_some() {
            return;
        }
        if d.uncovered == 0 || seq == 0 {
            for s in d.sealers.drain(..) {
                let _ = s.send(Ok(()));
            }
            return;
        }
        let now = Instant::now();
        let due = d.uncovered >= d.opts.every_records
            || now >= d.last + d.opts.every
            || !d.sealers.is_empty();
        if !due || now < d.not_before {
            return;
        }
        let digest = Digest {
            from_seq: d.from.min(seq - 1),
            to_seq: seq - 1,
            hash: prev,
            time: crate::kms::audit::timestamp(time::OffsetDateTime::now_utc()),
            key: d.opts.signer.key().to_string(),
            algorithm: DIGEST_ALGORITHM.to_string(),
            signature: String::new(),
        };
        d.in_flight = Some(d.uncovered);
        d.uncovered = 0;
        d.last = now;
        let (signer, tx) = (d.opts.signer.clone(), d.signed_tx.clone());
        d.runtime.spawn(async move {
            let r = signer
                .sign(digest.canonical())
                .await
                .map(|mac| Digest {
                    signature: base64::engine::general_purpose::STANDARD.encode(mac),
                    ..digest
                })
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
    }

    /// Re-open the current file if needed and sync it.
    fn probe(&mut self) -> bool {
        if self.file.is_none() {
            if let Err(e) = self.reopen() {
                tracing::error!(target: "hsm_kms::audit", error = %e, "audit trail still unavailable");
                return false;
            }
        }
        let synced = match &self.file {
            Some(f) => f.file.sync_data().is_ok(),
            None => false,
        };
        synced && self.prepare()
    }

    /// Find the last file and the chain's head in it (repairing a torn last line), and
    /// open it for appending.
    fn reopen(&mut self) -> Result<(), AuditError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let files = trail_files(&self.dir).map_err(|e| io(&self.dir, e))?;
        let Some((n, path)) = files.last().cloned() else {
            self.head = Head::GENESIS;
            self.last_number = 0;
            return self.start_file(1);
        };
        // The head: the last complete line of the newest file that has one.
        let mut head = None;
        for (_, p) in files.iter().rev() {
            if let Some(h) = last_record(p)? {
                head = Some(h);
                break;
            }
        }
        self.last_digest_to = last_digest_to(&path)?;
        self.head = head.unwrap_or(Head::GENESIS);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // `last_record` cut the file after its last record.
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        self.last_number = n;
        self.file = Some(OpenFile {
            file,
            n,
            len,
            size: len,
        });
        if !self.prepare() {
            return Err(AuditError::Writer(NO_ROOM.into()));
        }
        Ok(())
    }

    /// Create file `n` and make its entry durable (the current file, if any, is cut to
    /// its records first).
    fn start_file(&mut self, n: u64) -> Result<(), AuditError> {
        self.finish_file();
        let path = self.dir.join(file_name(n));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))?;
        self.last_number = n;
        self.file = Some(OpenFile {
            file,
            n,
            len: 0,
            size: 0,
        });
        // A new file without room still takes the batch that needed it (its own write
        // reports a failure); the trail turns unhealthy after it.
        self.prepare();
        Ok(())
    }

    /// Keep zeroed space ready after the last record: when less than half of it is left,
    /// write zeros up to [`AHEAD`] bytes past the records (at most the file size limit) and
    /// sync them. Returns whether at least a quarter of it is ready: when not (a full
    /// disk), the trail counts as unhealthy, so calls are refused before they run rather
    /// than after (fail-closed) while the records of calls already running still fit.
    fn prepare(&mut self) -> bool {
        let ahead = AHEAD.min(self.max_file_bytes).max(AHEAD_MIN);
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        if f.size.saturating_sub(f.len) >= ahead / 2 {
            return true;
        }
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let target = f.len + ahead;
        let mut at = f.size.max(f.len);
        let mut r = Ok(());
        while at < target && r.is_ok() {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            r = f.file.write_all_at(ZEROS.get(..n).unwrap_or_default(), at);
            at += n as u64;
        }
        match r.and_then(|_| f.file.sync_data()) {
            Ok(()) => f.size = target,
            Err(e) => {
                tracing::warn!(target: "hsm_kms::audit", error = %e, ready = f.size.saturating_sub(f.len), "no room to keep zeroed space ahead of the trail")
            }
        }
        f.size.saturating_sub(f.len) >= ahead / 4
    }

    /// Cut the current file after its records (rotation, stop); a failure leaves zeros,
    /// which readers skip.
    fn finish_file(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if f.size > f.len {
                match f.file.set_len(f.len).and_then(|_| f.file.sync_all()) {
                    Ok(()) => f.size = f.len,
                    Err(e) => {
                        tracing::warn!(target: "hsm_kms::audit", error = %e, "trail file not cut after its last record")
                    }
                }
            }
        }
    }

    /// Append `lines` (each `(member, JSON)`: `event` or `digest`) with one write and
    /// one sync.
    fn write(&mut self, lines: &[(&str, &[u8])]) -> Result<(), AuditError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut buf = Vec::with_capacity(lines.iter().map(|(_, r)| r.len() + 110).sum());
        let Head { mut seq, mut prev } = self.head;
        for (member, r) in lines {
            let start = buf.len();
            buf.extend_from_slice(b"{\"seq\":");
            // Writing to a Vec cannot fail.
            let _ = write!(buf, "{seq}");
            buf.extend_from_slice(b",\"prev\":\"");
            buf.extend_from_slice(&prev);
            buf.extend_from_slice(b"\",\"");
            buf.extend_from_slice(member.as_bytes());
            buf.extend_from_slice(b"\":");
            buf.extend_from_slice(r);
            buf.push(b'}');
            prev = line_hash_hex(buf.get(start..).unwrap_or_default());
            buf.push(b'\n');
            seq += 1;
        }
        let head = Head { seq, prev };
        if let Some(f) = &self.file {
            if f.len > 0 && f.len.saturating_add(buf.len() as u64) > self.max_file_bytes {
                let next = self.last_number + 1;
                self.start_file(next)?;
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Err(AuditError::Writer("no open file".into()));
        };
        let path = self.dir.join(file_name(f.n));
        let before = f.len;
        let r = f
            .file
            .write_all_at(&buf, before)
            .and_then(|_| f.file.sync_data());
        if let Err(e) = r {
            // Roll back a partial write (and the zeroed space after it); if even that
            // fails, the file is re-opened (and its torn tail repaired) before the next
            // write.
            match f.file.set_len(before).and_then(|_| f.file.sync_data()) {
                Ok(()) => f.size = before,
                Err(_) => self.file = None,
            }
            return Err(io(&path, e));
        }
        f.len += buf.len() as u64;
        f.size = f.size.max(f.len);
        self.head = head;
        Ok(())
    }
}

/// `to_seq` of the last digest line of `path`, if it has one.
fn last_digest_to(path: &Path) -> Result<Option<u64>, AuditError> {
    let data = std::fs::read(path).map_err(|e| io(path, e))?;
    let mut last = None;
    for line in written(&data).0.split(|b| *b == b'\n') {
        // `{"seq":N,"prev":"<64>","digest":` — look past the prefix only.
        if line.windows(10).any(|w| w == b"\"digest\":{") {
            #[derive(serde::Deserialize)]
            struct Line {
                digest: Digest,
            }
            if let Ok(l) = serde_json::from_slice::<Line>(line) {
                last = Some(l.digest.to_seq);
            }
        }
    }
    Ok(last)
}

/// The chain head after the last complete record of `path`. The file is cut after that
/// record: the zeroed space a writer kept ready, and a torn last line (a crash mid-write,
/// never acknowledged) with whatever an interrupted write left after it.
fn last_record(path: &Path) -> Result<Option<Head>, AuditError> {
    let data = std::fs::read(path).map_err(|e| io(path, e))?;
    let (records, after) = written(&data);
    let good_len = records
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if good_len < data.len() {
        let torn = good_len < records.len() || after.iter().any(|b| *b != 0);
        if torn {
            tracing::warn!(target: "hsm_kms::audit", file = %path.display(), "cutting a torn last line (a write interrupted by a crash)");
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        f.set_len(good_len as u64)
            .and_then(|_| f.sync_all())
            .map_err(|e| io(path, e))?;
    }
    let last = records
        .get(..good_len.saturating_sub(1))
        .and_then(|r| r.split(|b| *b == b'\n').next_back())
        .filter(|l| !l.is_empty());
    let Some(line) = last else { return Ok(None) };
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let s: Seq = serde_json::from_slice(line).map_err(|e| {
        AuditError::Corrupt(format!(
            "{}: the last line is not a trail record ({e}); run `hsm-kms audit verify`",
            path.display()
        ))
    })?;
    Ok(Some(Head {
        seq: s.seq + 1,
        prev: line_hash_hex(line),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use std::sync::Arc;

    fn record(i: usize) -> Vec<u8> {
        format!(r#"{{"eventTime":"2024-05-10T00:00:00Z","n":{i}}}"#).into_bytes()
    }

    /// One call as the request path makes it: started, executing for `exec`, then its
    /// record handed over and waited for.
    async fn call(t: &FileTrail, i: usize, exec: Duration) {
        t.call_started();
        tokio::time::sleep(exec).await;
        let r = t.append(vec![record(i)]).await;
        t.call_ended();
        r.unwrap();
    }

    /// The writer's own forms of the chain's start and of a line's hash are those
    /// `verify` checks against.
    #[test]
    fn the_writers_genesis_and_line_hashes_are_the_published_ones() {
        assert_eq!(&Head::GENESIS.prev[..], GENESIS.as_bytes());
        let line = br#"{"seq":0,"prev":"0","event":{}}"#;
        assert_eq!(
            &line_hash_hex(line)[..],
            hex::encode(Sha256::digest(line)).as_bytes()
        );
        assert_eq!(line_hash(line), hex::encode(Sha256::digest(line)));
    }

    #[test]
    fn a_sync_waits_for_a_share_of_the_calls_in_flight() {
        let s = Shared::new();
        // A record of no call in flight (a service event): at once.
        assert!(s.enough_wait(1));
        s.in_flight.store(1, Ordering::SeqCst);
        assert!(s.enough_wait(1), "a lone call is never held");
        s.in_flight.store(8, Ordering::SeqCst);
        assert!(!s.enough_wait(1));
        assert!(!s.enough_wait(3));
        assert!(s.enough_wait(8 / GATHER_SHARE));
    }

    /// 8 callers whose calls take 1 to 2.8 ms each hand their records at scattered
    /// moments; each sync must carry several (about 2 a sync, as syncs came when the
    /// writer was free, was the cost that made the trail slow: every `fdatasync` is a
    /// write and a cache flush).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_in_flight_share_their_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(FileTrail::open(dir.path(), DEFAULT_MAX_FILE_BYTES));
        let (callers, each) = (8, 25);
        let mut tasks = Vec::new();
        for c in 0..callers {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..each {
                    let exec = Duration::from_micros(1000 + ((c * 7 + j * 13) % 10) as u64 * 200);
                    call(&t, c * each + j, exec).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let g = t.group_commits();
        assert_eq!(g.records, (callers * each) as u64);
        assert!(
            g.records >= 3 * g.commits,
            "{} records in {} syncs: fewer than 3 a sync",
            g.records,
            g.commits
        );
        drop(Arc::try_unwrap(t).ok().unwrap());
        let report = verify(dir.path(), None).unwrap();
        assert!(report.finding.is_none(), "{report:?}");
        assert_eq!(report.records, (callers * each) as u64);
    }

    /// A sync waits for the records of other calls in flight (up to `GATHER_MAX`); a
    /// lone call's does not (`a_sync_waits_for_a_share_of_the_calls_in_flight`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_waits_for_records_that_may_come() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTrail::open(dir.path(), DEFAULT_MAX_FILE_BYTES);
        // Three other calls in flight that never hand a record: each sync waits for them.
        for _ in 0..3 {
            t.call_started();
        }
        let n = 10;
        let started = Instant::now();
        for i in 0..n {
            call(&t, i, Duration::ZERO).await;
        }
        let held = started.elapsed();
        assert!(held >= GATHER_MAX * n as u32, "{held:?}");
        assert_eq!(t.group_commits().records, n as u64);
        assert_eq!(t.group_commits().commits, n as u64);
    }
}
