//! Availability drills (issue 12, part 6), bounded and on loopback only: a mixed load from
//! several concurrent clients (no client retries) through the real HTTP API — Encrypt then
//! Decrypt compared, Decrypt of blobs made before the drill, Sign ECDSA P-256 verified
//! locally with `p256`, GenerateMac compared with the first MAC of each message — while a
//! fault is injected into one HSM's token and then repaired:
//!
//! 1. the token folder moved away, then back;
//! 2. `token.object` overwritten with random bytes, then restored;
//! 3. every file of the token moved out, then back;
//! 4. one HSM of three lost (folder moved away) while keys are created, then back.
//!
//! Each drill asserts: the HSM really went down; no wrong answer; no failed request except
//! ones answered with a retryable AWS error (`DependencyTimeoutException`, counted); the HSM
//! is healthy again within 2 s of the repair, without a restart; every ciphertext made
//! during the drill decrypts afterwards (and in drill 4, the keys created while the HSM was
//! lost reach it). One line per drill is printed (run with `--nocapture`): the README's
//! availability table. The drills run one at a time (they measure recovery times).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::NodeState;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The drills run one at a time: each measures a recovery time on 2 shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long each fault lasts.
const FAULT: Duration = Duration::from_secs(3);
/// Concurrent clients of the load.
const CLIENTS: usize = 4;
/// The promise: healthy again this soon after the repair.
const RECOVERY: Duration = Duration::from_secs(2);

/// The keys the load uses, made before the drill, and what is known about them.
struct Keys {
    sym: String,
    sign: String,
    spki: Vec<u8>,
    mac: String,
    /// (message, its first MAC).
    mac_refs: Vec<(Vec<u8>, Vec<u8>)>,
    /// (ciphertext blob, plaintext) made before the drill.
    old: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    /// Answered with a retryable AWS error (`DependencyTimeoutException`).
    retryable: AtomicU64,
    /// Any other failure.
    other: AtomicU64,
    /// HTTP 200 with a wrong answer.
    wrong: AtomicU64,
    notes: Mutex<Vec<String>>,
    /// (ciphertext blob, plaintext) of every Encrypt that succeeded during the drill.
    made: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The longest any one request of the load took.
    slowest: Mutex<Duration>,
}

impl Tally {
    /// Count one reply; its body if it succeeded.
    fn reply(&self, op: &str, r: Reply) -> Option<Value> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if r.status == 200 {
            return Some(r.body);
        }
        if r.error_type() == "DependencyTimeoutException" {
            self.retryable.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
            self.note(format!("{op} failed: {} {}", r.status, r.body));
        }
        None
    }

    fn wrong(&self, what: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        self.note(what);
    }

    fn note(&self, what: String) {
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < 20 {
            notes.push(what);
        }
    }
}

fn key_id(r: &Value) -> String {
    r["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// Verify an ECDSA P-256 (SHA-256) DER signature over `msg` with the SPKI `spki`.
fn ecdsa_ok(spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
    match p256::ecdsa::Signature::from_der(sig) {
        Ok(s) => k.verify(msg, &s).is_ok(),
        Err(_) => false,
    }
}

/// Make the load's keys, blobs and reference MACs (all on healthy HSMs).
async fn make_keys(c: &Client) -> Keys {
    let sym = key_id(&c.ok("CreateKey", json!({})).await);
    let sign = key_id(
        &c.ok(
            "CreateKey",
            json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
        )
        .await,
    );
    let spki = unb64(&c.ok("GetPublicKey", json!({"KeyId": sign})).await["PublicKey"]);
    let mac = key_id(
        &c.ok(
            "CreateKey",
            json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
        )
        .await,
    );
    let mut mac_refs = Vec::new();
    for i in 0..8 {
        let msg = format!("mac message {i}").into_bytes();
        let r = c
            .ok(
                "GenerateMac",
                json!({"KeyId": mac, "Message": b64(&msg), "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await;
        mac_refs.push((msg, unb64(&r["Mac"])));
    }
    let mut old = Vec::new();
    for i in 0..16 {
        let pt = format!("old message {i}").into_bytes();
        let r = c
            .ok("Encrypt", json!({"KeyId": sym, "Plaintext": b64(&pt)}))
            .await;
        old.push((unb64(&r["CiphertextBlob"]), pt));
    }
    Keys {
        sym,
        sign,
        spki,
        mac,
        mac_refs,
        old,
    }
}

/// One request of the load, its time counted in [`Tally::slowest`].
async fn timed(c: &Client, tally: &Tally, op: &str, body: Value) -> common::Reply {
    let start = Instant::now();
    let r = c.call(op, body).await;
    let took = start.elapsed();
    let mut slowest = tally.slowest.lock().unwrap();
    *slowest = (*slowest).max(took);
    r
}

/// One client of the load: the four request kinds in turn until `stop`.
async fn client_loop(
    c: Client,
    n: usize,
    keys: Arc<Keys>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        match i % 4 {
            0 => {
                let pt = format!("client {n} message {i}").into_bytes();
                let r = timed(
                    &c,
                    &tally,
                    "Encrypt",
                    json!({"KeyId": keys.sym, "Plaintext": b64(&pt)}),
                )
                .await;
                if let Some(b) = tally.reply("Encrypt", r) {
                    let blob = unb64(&b["CiphertextBlob"]);
                    tally.made.lock().unwrap().push((blob.clone(), pt.clone()));
                    let r =
                        timed(&c, &tally, "Decrypt", json!({"CiphertextBlob": b64(&blob)})).await;
                    if let Some(d) = tally.reply("Decrypt", r) {
                        if unb64(&d["Plaintext"]) != pt {
                            tally.wrong(format!("Decrypt of a fresh blob gave {d}"));
                        }
                    }
                }
            }
            1 => {
                let (blob, pt) = &keys.old[i % keys.old.len()];
                let r = timed(&c, &tally, "Decrypt", json!({"CiphertextBlob": b64(blob)})).await;
                if let Some(d) = tally.reply("Decrypt", r) {
                    if &unb64(&d["Plaintext"]) != pt {
                        tally.wrong(format!("Decrypt of an old blob gave {d}"));
                    }
                }
            }
            2 => {
                let msg = format!("client {n} sign {i}").into_bytes();
                let r = timed(
                    &c,
                    &tally,
                    "Sign",
                    json!({"KeyId": keys.sign, "Message": b64(&msg),
                           "SigningAlgorithm": "ECDSA_SHA_256", "MessageType": "RAW"}),
                )
                .await;
                if let Some(s) = tally.reply("Sign", r) {
                    if !ecdsa_ok(&keys.spki, &msg, &unb64(&s["Signature"])) {
                        tally.wrong(format!("Sign gave a signature that does not verify: {s}"));
                    }
                }
            }
            _ => {
                let (msg, mac) = &keys.mac_refs[i % keys.mac_refs.len()];
                let r = timed(
                    &c,
                    &tally,
                    "GenerateMac",
                    json!({"KeyId": keys.mac, "Message": b64(msg), "MacAlgorithm": "HMAC_SHA_256"}),
                )
                .await;
                if let Some(m) = tally.reply("GenerateMac", r) {
                    if &unb64(&m["Mac"]) != mac {
                        tally.wrong(format!("GenerateMac gave another MAC: {m}"));
                    }
                }
            }
        }
        i += 1;
        // Leave the 2 cores some room for the HSM threads whose timing is measured.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The load, running until [`Load::finish`].
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Client, keys: &Arc<Keys>) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|n| {
                tokio::spawn(client_loop(
                    c.clone(),
                    n,
                    keys.clone(),
                    tally.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            tally,
            stop,
            clients,
        }
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        self.tally
    }
}

/// The state of HSM `name`.
fn state(s: &Started, name: &str) -> NodeState {
    s.running
        .cluster
        .health()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap()
        .state
}

/// A service for one drill.
struct Started {
    tokens: Tokens,
    running: hsm_kms::app::Running,
    client: Client,
}

async fn start(names: &[&str], maintenance: Duration) -> Started {
    let tokens = tokens(names);
    let (running, client) = start_tuned(
        &tokens,
        Arc::new(hsm_kms::clock::SystemClock),
        fast_options(),
        maintenance,
    )
    .await;
    Started {
        tokens,
        running,
        client,
    }
}

/// One row of the availability table.
struct Row {
    fault: &'static str,
    /// What the recovery time is counted from.
    since: &'static str,
    requests: u64,
    failed: u64,
    wrong: u64,
    recovered: Duration,
    extra: String,
}

impl Row {
    /// The line of a drill whose load was counted in `tally`.
    fn of(fault: &'static str, tally: &Tally, recovered: Duration, extra: String) -> Row {
        Row {
            fault,
            since: "the repair",
            requests: tally.requests.load(Ordering::Relaxed),
            failed: tally.retryable.load(Ordering::Relaxed),
            wrong: tally.wrong.load(Ordering::Relaxed),
            recovered,
            extra,
        }
    }

    fn print(&self) {
        println!(
            "DRILL | {} | {} requests | {} failed (DependencyTimeoutException) | {} wrong | healthy {:.2} s after {}{}",
            self.fault,
            self.requests,
            self.failed,
            self.wrong,
            self.recovered.as_secs_f64(),
            self.since,
            self.extra
        );
    }
}

/// Poll until HSM `name` has left `Healthy` (true) or `within` passed (false).
async fn goes_down(s: &Started, name: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if state(s, name) != NodeState::Healthy {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Poll until HSM `name` is healthy; the time it took (or `None` after 15 s).
async fn recovers(s: &Started, name: &str) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if state(s, name) == NodeState::Healthy {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// After the drill: every ciphertext made during it decrypts to its plaintext.
async fn all_made_decrypt(c: &Client, tally: &Tally) -> usize {
    let made = tally.made.lock().unwrap().clone();
    for (blob, pt) in &made {
        let r = c
            .call("Decrypt", json!({"CiphertextBlob": b64(blob)}))
            .await;
        assert_eq!(r.status, 200, "a blob made during the drill: {}", r.body);
        assert_eq!(&unb64(&r.body["Plaintext"]), pt);
    }
    made.len()
}

/// The checks every drill makes, then its printed row.
fn judge(row: &Row, tally: &Tally) {
    row.print();
    let notes = tally.notes.lock().unwrap();
    assert_eq!(
        tally.wrong.load(Ordering::Relaxed),
        0,
        "{}: {notes:#?}",
        row.fault
    );
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "{}: only retryable failures are allowed: {notes:#?}",
        row.fault
    );
    assert!(
        row.recovered <= RECOVERY,
        "{}: healthy {:?} after the repair",
        row.fault,
        row.recovered
    );
}

/// Run a drill on HSM "a" of a two-HSM service: load, `fault`, [`FAULT`] later `repair`,
/// wait for "a" to be healthy, a little more load, then every check.
async fn drill_on_a(
    fault: &'static str,
    inject: impl FnOnce(&Path) -> Box<dyn FnOnce() + Send>,
) -> Row {
    let _serial = SERIAL.lock().await;
    let s = start(&["a", "b"], Duration::from_secs(3600)).await;
    drill_on_started(s, fault, |s| inject(&s.tokens.hsms[0].token_dir)).await
}

/// [`drill_on_a`] on a service already started; `inject` sees the service.
async fn drill_on_started(
    s: Started,
    fault: &'static str,
    inject: impl FnOnce(&Started) -> Box<dyn FnOnce() + Send>,
) -> Row {
    let keys = Arc::new(make_keys(&s.client).await);
    let load = Load::start(&s.client, &keys);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let repair = inject(&s);
    let injected = Instant::now();
    let down = goes_down(&s, "a", FAULT).await;
    tokio::time::sleep(FAULT.saturating_sub(injected.elapsed())).await;
    repair();
    let recovered = recovers(&s, "a").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    assert!(
        down,
        "{fault}: hsm a never left Healthy: the drill proves nothing"
    );
    let recovered = recovered.unwrap_or_else(|| {
        panic!(
            "{fault}: hsm a never recovered: {:?}",
            s.running.cluster.health()
        )
    });
    let n = all_made_decrypt(&s.client, &tally).await;
    let row = Row::of(
        fault,
        &tally,
        recovered,
        format!(" | {n} blobs made during the drill all decrypt"),
    );
    judge(&row, &tally);
    assert_eq!(
        s.running.cluster.health()[1].reinitializations,
        0,
        "hsm b must not be touched"
    );
    row
}

/// How a drill ends HSM a's host process.
#[derive(Clone, Copy, PartialEq)]
enum HostFault {
    /// `kill -9`.
    Kill,
    /// SIGSTOP for [`FAULT`], then SIGCONT (if the service has not replaced it already).
    Stop,
    /// Its module segfaults on every `C_Encrypt` for [`FAULT`] (see `tests/support`).
    Segv,
}

/// Send `signal` (e.g. `-KILL`) to `pid`, a host process this test's service started.
fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Build `tests/support/segv_module.c` into `dir`: a module forwarding to `real` that
/// segfaults in `C_Encrypt` while `trigger` exists, and hangs in `C_Initialize` while
/// `trigger` with the extension `hang` exists.
fn segv_module(dir: &Path, real: &Path, trigger: &Path) -> PathBuf {
    let out = dir.join("libsegv-pkcs11.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/segv_module.c");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(format!("-DREAL=\"{}\"", real.display()))
        .arg(format!("-DTRIGGER=\"{}\"", trigger.display()))
        .arg(format!(
            "-DHANG=\"{}\"",
            trigger.with_extension("hang").display()
        ))
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc (gcc) builds the drills' segfaulting module");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// A drill on HSM a's host process under the load: `how` ends it; the service must fail
/// the jobs it had in flight over to b, kill and replace it, and take a back as soon as it
/// answers (for [`HostFault::Kill`] at once; otherwise once the fault is repaired).
async fn drill_on_host(fault: &'static str, how: HostFault) -> Row {
    let _serial = SERIAL.lock().await;
    let mut tokens = tokens(&["a", "b"]);
    let trigger = tokens.dir.path().join("segv-trigger");
    if how == HostFault::Segv {
        let real = tokens.hsms[0].module.clone();
        tokens.hsms[0].module = segv_module(tokens.dir.path(), &real, &trigger);
    }
    let opts = fast_options();
    let deadline = opts.call_timeout;
    let (running, client) = start_tuned(
        &tokens,
        Arc::new(hsm_kms::clock::SystemClock),
        opts,
        Duration::from_secs(3600),
    )
    .await;
    let s = Started {
        tokens,
        running,
        client,
    };
    let cl = s.running.cluster.clone();
    let pid = cl.host_pid("a").expect("hsm a runs in a host process");
    let keys = Arc::new(make_keys(&s.client).await);
    let load = Load::start(&s.client, &keys);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let injected = Instant::now();
    match how {
        HostFault::Kill => assert!(signal(pid, "-KILL")),
        HostFault::Stop => assert!(signal(pid, "-STOP")),
        HostFault::Segv => std::fs::write(&trigger, b"").unwrap(),
    }
    let down = goes_down(&s, "a", FAULT).await;
    // A killed or stopped host needs no repair: the service replaces it by itself, so the
    // time counts from the fault. A segfaulting module keeps its new hosts crashing (with
    // back-off) until it is repaired.
    let recovered = if how == HostFault::Segv {
        tokio::time::sleep(FAULT.saturating_sub(injected.elapsed())).await;
        std::fs::remove_file(&trigger).unwrap();
        recovers(&s, "a").await
    } else {
        let r = recovers(&s, "a").await.map(|_| injected.elapsed());
        tokio::time::sleep(FAULT.saturating_sub(injected.elapsed())).await;
        // Only if the service has not killed it yet (it has: that PID is no longer ours).
        if how == HostFault::Stop && cl.host_pid("a") == Some(pid) {
            signal(pid, "-CONT");
        }
        r
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    assert!(
        down,
        "{fault}: hsm a never left Healthy: the drill proves nothing"
    );
    let recovered =
        recovered.unwrap_or_else(|| panic!("{fault}: hsm a never recovered: {:?}", cl.health()));
    let a = cl.health().into_iter().find(|h| h.name == "a").unwrap();
    let new_pid = a.host_pid.expect("a host process again");
    assert_ne!(new_pid, pid, "{fault}: the host process was not replaced");
    let restarts = a.host_restarts.unwrap_or(0);
    let exit = a.host_last_exit.clone().unwrap_or_default();
    match how {
        HostFault::Kill => assert!(exit.contains("signal 9"), "{exit:?}"),
        HostFault::Segv => {
            assert!(
                exit.contains("signal 11"),
                "the module did not segfault: {exit:?}"
            );
            assert!(
                restarts >= 2,
                "hosts that crashed while the fault lasted: {restarts}"
            );
            // With the monitor's back-off (a crash-looping host is not restarted at once).
            assert!(
                restarts <= 12,
                "{restarts} host restarts in {FAULT:?}: no back-off"
            );
        }
        HostFault::Stop => {}
    }
    let slowest = *tally.slowest.lock().unwrap();
    // A hung host costs a request at most one call deadline (then b answers it).
    assert!(
        slowest <= deadline + Duration::from_millis(1000),
        "{fault}: a request took {slowest:?} (call deadline {deadline:?})"
    );
    let n = all_made_decrypt(&s.client, &tally).await;
    let mut row = Row::of(
        fault,
        &tally,
        recovered,
        format!(
            " | slowest request {} ms | {restarts} host restarts | {n} blobs made during the drill all decrypt",
            slowest.as_millis()
        ),
    );
    if how != HostFault::Segv {
        row.since = "the fault (no repair needed)";
    }
    judge(&row, &tally);
    assert_eq!(
        cl.health()[1].reinitializations,
        0,
        "hsm b must not be touched"
    );
    assert_eq!(
        cl.health()[1].host_restarts,
        Some(0),
        "hsm b must not be touched"
    );
    row
}

/// A module that hangs in `C_Initialize` when the service starts: the start waits for it at
/// most its deadline (the larger of the key generation and call deadlines, 3 s here), then
/// serves with the other HSM (existing keys; new key material refused with the retryable
/// quorum error) while a new host is tried in the background; once the module answers
/// again the HSM is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_9_a_module_hung_at_start() {
    let _serial = SERIAL.lock().await;
    let mut tokens = tokens(&["a", "b"]);
    let trigger = tokens.dir.path().join("segv-trigger");
    let hang = trigger.with_extension("hang");
    let real = tokens.hsms[0].module.clone();
    tokens.hsms[0].module = segv_module(tokens.dir.path(), &real, &trigger);
    let mut opts = fast_options();
    opts.keygen_timeout = Duration::from_secs(3);
    let clock = Arc::new(hsm_kms::clock::SystemClock);
    let (running, c) = start_tuned(
        &tokens,
        clock.clone(),
        opts.clone(),
        Duration::from_secs(3600),
    )
    .await;
    let key = c.create_key(json!({})).await;
    let blob = c
        .ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"before")}),
        )
        .await["CiphertextBlob"]
        .clone();
    running.stop().await;

    std::fs::write(&hang, b"").unwrap();
    let started = Instant::now();
    let (running, c) = start_tuned(&tokens, clock, opts, Duration::from_secs(3600)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "the start waited {took:?} for a hung module"
    );
    let s = Started {
        tokens,
        running,
        client: c,
    };
    assert_ne!(state(&s, "a"), NodeState::Healthy);
    let d = s
        .client
        .ok("Decrypt", json!({"CiphertextBlob": blob}))
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"before");
    let r = s.client.call("CreateKey", json!({})).await;
    assert_eq!(r.error_type(), "DependencyTimeoutException", "{}", r.body);
    std::fs::remove_file(&hang).unwrap();
    let repaired = Instant::now();
    let back = recovers(&s, "a").await.expect("a answers again");
    // At most one start attempt (3 s) was under way when the module was repaired.
    assert!(
        back <= Duration::from_secs(3) + RECOVERY,
        "healthy {back:?} after the repair"
    );
    s.client.create_key(json!({})).await;
    println!(
        "DRILL | PKCS#11 module hung in C_Initialize at start | start took {:.2} s (deadline 3 s), served by the other HSM | healthy {:.2} s after the repair",
        took.as_secs_f64(),
        repaired.elapsed().min(back).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_6_host_process_killed() {
    drill_on_host("HSM host process killed (kill -9)", HostFault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_7_host_process_stopped_then_continued() {
    drill_on_host(
        "HSM host process stopped (SIGSTOP 3 s, then SIGCONT)",
        HostFault::Stop,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_8_module_segfaults() {
    drill_on_host(
        "PKCS#11 module segfaults on every C_Encrypt for 3 s",
        HostFault::Segv,
    )
    .await;
}

/// The one token folder (named by its serial) inside a SoftHSM2 token directory.
fn token_folder(token_dir: &Path) -> PathBuf {
    std::fs::read_dir(token_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a token folder")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_1_token_folder_moved_away_and_back() {
    drill_on_a("token folder moved away 3 s, then back", |dir| {
        let (dir, away) = (dir.to_path_buf(), dir.with_extension("away"));
        std::fs::rename(&dir, &away).unwrap();
        Box::new(move || std::fs::rename(&away, &dir).unwrap())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_2_token_object_overwritten_then_restored() {
    drill_on_a(
        "token.object overwritten with random bytes 3 s, then restored",
        |dir| {
            let file = token_folder(dir).join("token.object");
            let original = std::fs::read(&file).unwrap();
            let mut noise = vec![0u8; original.len()];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut noise)
                .unwrap();
            std::fs::write(&file, &noise).unwrap();
            Box::new(move || std::fs::write(&file, &original).unwrap())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_3_every_file_of_the_token_moved_out_then_back() {
    drill_on_a("every file of the token moved out 3 s, then back", |dir| {
        let folder = token_folder(dir);
        let aside = dir.with_extension("aside");
        std::fs::create_dir_all(&aside).unwrap();
        let names: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        for n in &names {
            std::fs::rename(folder.join(n), aside.join(n)).unwrap();
        }
        Box::new(move || {
            for n in &names {
                std::fs::rename(aside.join(n), folder.join(n)).unwrap();
            }
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_4_one_hsm_of_three_lost_while_keys_are_created() {
    let fault = "one HSM of three lost (folder moved away 3 s) while keys are created";
    let _serial = SERIAL.lock().await;
    let s = start(&["a", "b", "c"], Duration::from_millis(300)).await;
    let keys = Arc::new(make_keys(&s.client).await);
    let load = Load::start(&s.client, &keys);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = s.tokens.hsms[0].token_dir.clone();
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    let lost_at = Instant::now();
    let down = goes_down(&s, "a", FAULT).await;
    // Keys created (and used) while "a" is lost: two copies on b and c.
    let mut created = Vec::new();
    while lost_at.elapsed() < FAULT {
        let r = s.client.call("CreateKey", json!({})).await;
        if let Some(b) = load.tally.reply("CreateKey", r) {
            let k = key_id(&b);
            let pt = format!("under {k}").into_bytes();
            let r = s
                .client
                .call("Encrypt", json!({"KeyId": k, "Plaintext": b64(&pt)}))
                .await;
            if let Some(e) = load.tally.reply("Encrypt", r) {
                let blob = unb64(&e["CiphertextBlob"]);
                load.tally.made.lock().unwrap().push((blob, pt));
            }
            created.push(k);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::fs::rename(&away, &dir).unwrap();
    let repaired = Instant::now();
    let recovered = recovers(&s, "a").await;
    // Re-sync by the background maintenance pass: every key created meanwhile reaches "a".
    let objects: Vec<Vec<u8>> = created
        .iter()
        .map(|k| format!("kms/{k}/1").into_bytes())
        .collect();
    let cl = &s.running.cluster;
    let resynced = eventually(10, || objects.iter().all(|o| cl.hsm_holds("a", o))).await;
    let resync_time = repaired.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.finish().await;
    assert!(down, "hsm a never left Healthy: the drill proves nothing");
    assert!(
        created.len() >= 3,
        "too few keys created while a was lost: {}",
        created.len()
    );
    for o in &objects {
        assert!(cl.hsm_holds("b", o) && cl.hsm_holds("c", o));
    }
    assert!(resynced, "keys created while a was lost never reached it");
    let recovered = recovered.unwrap_or_else(|| panic!("hsm a never recovered: {:?}", cl.health()));
    let n = all_made_decrypt(&s.client, &tally).await;
    let row = Row::of(fault, &tally, recovered, format!(
            " | {} keys created meanwhile, on a {:.2} s after the repair | {n} blobs made during the drill all decrypt",
            created.len(),
            resync_time.as_secs_f64()
        ));
    judge(&row, &tally);
}

/// The service restarted while one HSM's token folder is away: it starts and serves the
/// existing keys from the other HSM, reports the missing one, refuses new key material with
/// the retryable quorum error, and takes the HSM back (proven) once its folder returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_5_a_restart_with_one_hsm_away() {
    let _serial = SERIAL.lock().await;
    let s = start(&["a", "b"], Duration::from_secs(3600)).await;
    let keys = make_keys(&s.client).await;
    let Started {
        tokens,
        running,
        client: _,
    } = s;
    running.stop().await;
    let dir = tokens.hsms[1].token_dir.clone();
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    let (running, c) = start_tuned(
        &tokens,
        Arc::new(hsm_kms::clock::SystemClock),
        fast_options(),
        Duration::from_secs(3600),
    )
    .await;
    let s = Started {
        tokens,
        running,
        client: c.clone(),
    };
    let b = s.running.cluster.health()[1].clone();
    assert_eq!(b.state, NodeState::Down, "{b:?}");
    assert!(b.last_error.is_some(), "the reason must be reported: {b:?}");
    for (blob, pt) in &keys.old {
        let d = c.ok("Decrypt", json!({"CiphertextBlob": b64(blob)})).await;
        assert_eq!(&unb64(&d["Plaintext"]), pt);
    }
    let r = c.call("CreateKey", json!({})).await;
    assert_eq!(r.error_type(), "DependencyTimeoutException", "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Fewer than 2 HSMs hold a healthy copy"),
        "{}",
        r.body
    );
    std::fs::rename(&away, &dir).unwrap();
    let recovered = recovers(&s, "b")
        .await
        .unwrap_or_else(|| panic!("b never came back: {:?}", s.running.cluster.health()));
    assert!(s.running.cluster.health()[1].protections.is_some());
    let k = key_id(&c.ok("CreateKey", json!({})).await);
    let o = format!("kms/{k}/1").into_bytes();
    assert!(s.running.cluster.hsm_holds("a", &o) && s.running.cluster.hsm_holds("b", &o));
    println!(
        "DRILL | restart with one HSM's token folder away, then back | served from the other; CreateKey refused (DependencyTimeoutException) until it returned | healthy {:.2} s after the repair",
        recovered.as_secs_f64()
    );
    assert!(
        recovered <= RECOVERY,
        "healthy {recovered:?} after the repair"
    );
}
