//! The client side, as a user runs it: the `hsm-kms` binary against a real service over
//! HTTP on fresh SoftHSM2 tokens.
//! - `hsm-kms bench` counts successful requests and shows every failed one (a wrong secret
//!   gives only errors, counted, and exit status 1), for each operation it drives;
//! - `hsm-kms envelope` round-trips a 1 GiB file with a flat peak RSS, and refuses every
//!   altered file (header, data key, chunk bytes, truncation, dropped / duplicated /
//!   reordered / appended chunks, another context or key) without leaving any output.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{service, Service};
use hsm_kms::client::envelope::format::{Header, TAG_LEN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The environment variables a client reads, cleared so the caller's shell cannot leak in.
const CLIENT_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "KMS_ENDPOINT",
];

/// `hsm-kms ARGS` signing as the service's root user with `secret`.
fn hsm_kms(s: &Service, secret: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
    for v in CLIENT_ENV {
        c.env_remove(v);
    }
    c.args(args)
        .env("AWS_ACCESS_KEY_ID", &s.client.cred.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("KMS_ENDPOINT", format!("http://{}", s.running.addr));
    c
}

fn secret(s: &Service) -> String {
    s.client.cred.secret_access_key.as_str().to_string()
}

async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `hsm-kms bench --json ARGS`: exit status and the runs.
async fn bench(s: &Service, secret: &str, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let mut all = vec!["bench", "--json", "--warmup", "0.2"];
    all.extend_from_slice(args);
    let o = output(hsm_kms(s, secret, &all)).await;
    let j: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        )
    });
    (o.status.code(), j["runs"].as_array().unwrap().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_successes_and_counts_errors() {
    let s = service().await;
    let key = s.client.create_key(json!({})).await;
    let args = [
        "--op",
        "Encrypt",
        "--key-id",
        key.as_str(),
        "-c",
        "4",
        "--duration",
        "1",
        "--size",
        "64",
    ];
    let (code, runs) = bench(&s, &secret(&s), &args).await;
    assert_eq!(code, Some(0), "{runs:?}");
    let r = &runs[0];
    assert_eq!(r["label"], "Encrypt 64 B");
    assert_eq!(r["connections"], 4);
    assert!(r["requests"].as_u64().unwrap() > 50, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["warmup_errors"], 0, "{r}");
    assert!(r["rps"].as_f64().unwrap() > 50.0, "{r}");
    let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{r}");

    // A wrong secret: every request fails, each is counted and shown, none is a success.
    let (code, runs) = bench(&s, "not-the-secret", &args).await;
    assert_eq!(code, Some(1), "{runs:?}");
    let r = &runs[0];
    assert_eq!(r["requests"], 0, "{r}");
    let errors = r["errors"].as_u64().unwrap();
    assert!(errors > 10, "{r}");
    let kind = &r["error_kinds"]["HTTP 400 InvalidSignatureException"];
    assert_eq!(kind["count"].as_u64(), Some(errors), "{r}");
    assert!(kind["warmup"].as_u64().unwrap() > 0, "{r}");
    assert!(
        kind["message"]
            .as_str()
            .unwrap()
            .starts_with("The request signature we calculated does not match"),
        "{r}"
    );
    // The people's output shows them too.
    let o = output(hsm_kms(
        &s,
        "not-the-secret",
        &[
            "bench",
            "--op",
            "Encrypt",
            "--key-id",
            key.as_str(),
            "-c",
            "1",
            "--duration",
            "0.2",
            "--warmup",
            "0",
        ],
    ))
    .await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("RESULT op=Encrypt c=1 requests=0 "), "{text}");
    assert!(
        text.contains(": HTTP 400 InvalidSignatureException: "),
        "{text}"
    );
}

/// Every operation the load generator drives, on keys it creates (and schedules for
/// deletion), succeeds on the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_every_operation_on_keys_it_creates() {
    let s = service().await;
    for args in [
        &["--op", "Decrypt", "--context", "app=bench"][..],
        &["--op", "GenerateDataKey"],
        &["--op", "Sign", "--message-type", "DIGEST"],
        &[
            "--op",
            "Sign",
            "--signing-algorithm",
            "RSASSA_PSS_SHA_256",
            "--size",
            "100",
        ],
        &["--op", "GenerateMac", "--size", "1024"],
    ] {
        let mut all = vec!["-c", "2", "--duration", "0.3"];
        all.extend_from_slice(args);
        let (code, runs) = bench(&s, &secret(&s), &all).await;
        assert_eq!(code, Some(0), "{args:?}: {runs:?}");
        let r = &runs[0];
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let d = s
            .client
            .ok("DescribeKey", json!({"KeyId": r["key_id"]}))
            .await;
        assert_eq!(d["KeyMetadata"]["KeyState"], "PendingDeletion", "{args:?}");
    }
}

/// A fast PRNG stream (xorshift64*), so that 1 GiB is generated and checked without being
/// kept anywhere.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Runs `c` to completion, polling the child's peak RSS (`VmHWM`) meanwhile: (output, peak
/// RSS in KiB).
async fn run_measured(mut c: Command) -> (Output, u64) {
    tokio::task::spawn_blocking(move || {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = format!("/proc/{}/status", child.id());
        let mut peak = 0u64;
        loop {
            if let Ok(text) = std::fs::read_to_string(&status) {
                if let Some(kb) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kb);
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (child.wait_with_output().unwrap(), peak)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_round_trips_1_gib_in_constant_memory() {
    const GIB: u64 = 1 << 30;
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    const BOUND_KB: u64 = 64 * 1024;
    let s = service().await;
    let key = s.client.create_key(json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let (plain, sealed, opened) = (
        dir.path().join("big.bin"),
        dir.path().join("big.hkev"),
        dir.path().join("big.out"),
    );
    let started = std::time::Instant::now();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&plain).unwrap());
        let (mut rng, mut buf) = (Stream(SEED), vec![0u8; 1 << 20]);
        for _ in 0..GIB >> 20 {
            rng.fill(&mut buf);
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let (o, enc_peak) = run_measured(hsm_kms(
        &s,
        &secret(&s),
        &[
            "envelope",
            "encrypt",
            "--key-id",
            key.as_str(),
            "--in",
            p(&plain).as_str(),
            "--out",
            p(&sealed).as_str(),
            "--context",
            "size=1GiB",
        ],
    ))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&plain).unwrap();
    let chunks = GIB / 65536;
    let header_len = {
        let mut f = std::fs::File::open(&sealed).unwrap();
        Header::read(&mut f, &sealed).unwrap().1.len() as u64
    };
    assert_eq!(
        std::fs::metadata(&sealed).unwrap().len(),
        header_len + GIB + chunks * TAG_LEN as u64
    );
    let (o, dec_peak) = run_measured(hsm_kms(
        &s,
        &secret(&s),
        &[
            "envelope",
            "decrypt",
            "--in",
            p(&sealed).as_str(),
            "--out",
            p(&opened).as_str(),
            "--context",
            "size=1GiB",
        ],
    ))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&sealed).unwrap();
    // The plaintext is the stream, byte for byte.
    {
        assert_eq!(std::fs::metadata(&opened).unwrap().len(), GIB);
        let mut f = std::fs::File::open(&opened).unwrap();
        let (mut rng, mut want, mut got) = (Stream(SEED), vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        for i in 0..GIB >> 20 {
            rng.fill(&mut want);
            f.read_exact(&mut got).unwrap();
            assert!(want == got, "MiB {i} differs");
        }
    }
    std::fs::remove_file(&opened).unwrap();
    println!(
        "1 GiB envelope round trip: peak RSS encrypt {enc_peak} KiB, decrypt {dec_peak} KiB, \
         {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    assert!(enc_peak > 0 && dec_peak > 0, "VmHWM was not read");
    assert!(enc_peak < BOUND_KB, "encrypt peak RSS {enc_peak} KiB");
    assert!(dec_peak < BOUND_KB, "decrypt peak RSS {dec_peak} KiB");
}

/// The names in `dir` (to see that no output or temporary file is left).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_refuses_every_altered_file() {
    const CHUNK: usize = 65536;
    let s = service().await;
    let key = s.client.create_key(json!({})).await;
    let other_key = s.client.create_key(json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| -> PathBuf { dir.path().join(n) };
    let p = |n: &str| path(n).to_str().unwrap().to_string();
    // 3 full chunks and a partial one.
    let data: Vec<u8> = (0..3 * CHUNK + 12_345)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    std::fs::write(path("plain"), &data).unwrap();
    let sec = secret(&s);
    let run = |args: &[&str]| output(hsm_kms(&s, &sec, args));
    let ctx = ["--context", "purpose=test", "--context", "team=ops"];

    let (plain, sealed) = (p("plain"), p("sealed"));
    let mut enc = vec![
        "envelope",
        "encrypt",
        "--key-id",
        key.as_str(),
        "--in",
        plain.as_str(),
        "--out",
        sealed.as_str(),
    ];
    enc.extend_from_slice(&ctx);
    let o = run(&enc).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let good = std::fs::read(path("sealed")).unwrap();
    let (header, raw) = Header::read(&mut &good[..], &path("sealed")).unwrap();
    let h = raw.len();
    let c = CHUNK + TAG_LEN;
    assert_eq!(good.len(), h + data.len() + 4 * TAG_LEN);
    assert_eq!(header.context.len(), 2);

    // The untouched file decrypts, with or without a subset of its context and its key.
    let out = p("out");
    for extra in [
        &[][..],
        &["--context", "team=ops", "--key-id", key.as_str()][..],
    ] {
        let mut args = vec![
            "envelope",
            "decrypt",
            "--in",
            sealed.as_str(),
            "--out",
            out.as_str(),
        ];
        args.extend_from_slice(extra);
        let o = run(&args).await;
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::read(path("out")).unwrap() == data);
        std::fs::remove_file(path("out")).unwrap();
    }
    let baseline = names(dir.path());

    let chunk = |k: usize| &good[h + k * c..(h + (k + 1) * c).min(good.len())];
    let flip = |at: usize| {
        let mut m = good.clone();
        m[at] ^= 0x40;
        m
    };
    let edk_at = 7 + header.encrypted_data_key.len() / 2;
    let ctx_value_at = raw
        .windows(4)
        .position(|w| w == b"test")
        .expect("the context value is in the header");
    let header_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic byte", flip(0), "not a valid envelope file"),
        ("version byte", flip(4), "not a valid envelope file"),
        (
            "data key blob byte",
            flip(edk_at),
            "InvalidCiphertextException",
        ),
        (
            "context value byte",
            flip(ctx_value_at),
            "InvalidCiphertextException",
        ),
        ("chunk size byte", flip(h - 10), "failed authentication"),
        ("nonce prefix byte", flip(h - 1), "failed authentication"),
        (
            "first chunk byte",
            flip(h + 10),
            "chunk 0 failed authentication",
        ),
        (
            "middle chunk byte",
            flip(h + c + c / 2),
            "chunk 1 failed authentication",
        ),
        (
            "last chunk byte",
            flip(good.len() - 20),
            "chunk 3 failed authentication",
        ),
        (
            "last tag byte",
            flip(good.len() - 1),
            "chunk 3 failed authentication",
        ),
        (
            "cut at the chunk 3 boundary",
            good[..h + 3 * c].to_vec(),
            "chunk 2 failed authentication",
        ),
        (
            "cut at the chunk 1 boundary",
            good[..h + c].to_vec(),
            "chunk 0 failed authentication",
        ),
        (
            "cut inside the last chunk",
            good[..good.len() - 100].to_vec(),
            "chunk 3 failed authentication",
        ),
        (
            "cut after the header",
            good[..h].to_vec(),
            "ends inside chunk 0",
        ),
        (
            "cut inside the header",
            good[..h - 3].to_vec(),
            "ends inside the header",
        ),
        (
            "chunk 1 dropped",
            [&good[..h], chunk(0), chunk(2), chunk(3)].concat(),
            "chunk 1 failed authentication",
        ),
        (
            "chunk 0 duplicated",
            [&good[..h], chunk(0), chunk(0), chunk(1), chunk(2), chunk(3)].concat(),
            "chunk 1 failed authentication",
        ),
        (
            "chunks 1 and 2 swapped",
            [&good[..h], chunk(0), chunk(2), chunk(1), chunk(3)].concat(),
            "chunk 1 failed authentication",
        ),
        (
            "a chunk appended",
            [&good[..], chunk(1)].concat(),
            "chunk 3 failed authentication",
        ),
        (
            "a byte appended",
            [&good[..], &[0u8][..]].concat(),
            "chunk 3 failed authentication",
        ),
    ];
    let bad = p("bad");
    for (what, bytes, want) in header_cases {
        std::fs::write(path("bad"), &bytes).unwrap();
        let o = run(&[
            "envelope",
            "decrypt",
            "--in",
            bad.as_str(),
            "--out",
            out.as_str(),
        ])
        .await;
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(e.contains(want), "{what}: {e}");
        assert!(!path("out").exists(), "{what}: output left");
        std::fs::remove_file(path("bad")).unwrap();
        assert_eq!(names(dir.path()), baseline, "{what}: files left");
    }

    // The right file with another context or key.
    for (what, extra, want) in [
        (
            "another context value",
            &["--context", "purpose=prod"][..],
            "another value for \"purpose\"",
        ),
        (
            "a context key the file lacks",
            &["--context", "owner=me"],
            "no key \"owner\"",
        ),
        (
            "another key",
            &["--key-id", other_key.as_str()],
            "IncorrectKeyException",
        ),
    ] {
        let mut args = vec![
            "envelope",
            "decrypt",
            "--in",
            sealed.as_str(),
            "--out",
            out.as_str(),
        ];
        args.extend_from_slice(extra);
        let o = run(&args).await;
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(e.contains(want), "{what}: {e}");
        assert_eq!(names(dir.path()), baseline, "{what}: files left");
    }

    // No output over an existing file without --force; no output at all when KMS refuses.
    std::fs::write(path("out"), b"keep").unwrap();
    let o = run(&[
        "envelope",
        "decrypt",
        "--in",
        sealed.as_str(),
        "--out",
        out.as_str(),
    ])
    .await;
    assert!(stderr(&o).contains("pass --force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(path("out")).unwrap(), b"keep");
    let o = run(&[
        "envelope",
        "decrypt",
        "--in",
        sealed.as_str(),
        "--out",
        out.as_str(),
        "--force",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(path("out")).unwrap() == data);
    let mut args = enc.clone();
    args[3] = "alias/does-not-exist";
    let other = p("other");
    args[7] = other.as_str();
    let o = run(&args).await;
    assert!(stderr(&o).contains("NotFoundException"), "{}", stderr(&o));
    assert!(!path("other").exists());
}
