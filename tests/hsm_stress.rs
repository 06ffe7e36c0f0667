//! Stress over HTTP against real SoftHSM2 tokens (issue 11 part 3): 32 concurrent RSA-4096
//! key generations (16 `GenerateDataKeyPair` / `…WithoutPlaintext`, 16 `CreateKey`) while
//! `Encrypt` runs at concurrency 32 for the whole time. It used to segfault inside
//! `libsofthsm2.so` (a module finalized while generations ran inside it), mark both HSMs down
//! (health probes queued behind 4-second generations) and answer 500 to Encrypts.
//!
//! At the end: the process is alive and answers, both HSMs are healthy and were never marked
//! down (nor re-initialized) during the run, no Encrypt failed, and every key generation
//! either succeeded or answered a retryable AWS error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::NodeState;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a key generation call may answer besides success: AWS's retryable errors.
const RETRYABLE: [&str; 2] = ["ThrottlingException", "DependencyTimeoutException"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_4096_generation_storm_while_encrypting() {
    let s = service().await;
    let c = s.client.clone();
    let cluster = s.running.cluster.clone();
    let kek = c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));

    // Watch the HSMs' health for the whole run.
    let worst: Arc<Mutex<Vec<(String, NodeState)>>> = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, worst, cluster) = (stop.clone(), worst.clone(), cluster.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for h in cluster.health() {
                    if h.state != NodeState::Healthy {
                        worst.lock().unwrap().push((h.name.clone(), h.state));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Encrypt at concurrency 32 until the key generations are done.
    let encrypts_ok = Arc::new(AtomicU64::new(0));
    let encrypt_failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let encrypters: Vec<_> = (0..32)
        .map(|_| {
            let (c, kek, stop) = (c.clone(), kek.clone(), stop.clone());
            let (ok, failed) = (encrypts_ok.clone(), encrypt_failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .call(
                            "Encrypt",
                            json!({"KeyId": kek, "Plaintext": b64(&[7u8; 32])}),
                        )
                        .await;
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.error_type()));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 32 RSA-4096 generations at once: 16 data key pairs, 16 KMS keys.
    let started = Instant::now();
    let keygens: Vec<_> = (0..32)
        .map(|i| {
            let (c, kek) = (c.clone(), kek.clone());
            tokio::spawn(async move {
                let (op, body) = match i % 4 {
                    0 => (
                        "GenerateDataKeyPair",
                        json!({"KeyId": kek, "KeyPairSpec": "RSA_4096"}),
                    ),
                    1 => (
                        "GenerateDataKeyPairWithoutPlaintext",
                        json!({"KeyId": kek, "KeyPairSpec": "RSA_4096"}),
                    ),
                    2 => (
                        "CreateKey",
                        json!({"KeySpec": "RSA_4096", "KeyUsage": "SIGN_VERIFY"}),
                    ),
                    _ => (
                        "CreateKey",
                        json!({"KeySpec": "RSA_4096", "KeyUsage": "ENCRYPT_DECRYPT"}),
                    ),
                };
                let start = Instant::now();
                let r = c.call(op, body).await;
                (op, r.status, r.error_type().to_string(), start.elapsed())
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(100), async {
        let mut out = Vec::new();
        for k in keygens {
            out.push(k.await.expect("key generation task"));
        }
        out
    })
    .await;
    let keygen_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for e in encrypters {
        e.await.unwrap();
    }
    watcher.await.unwrap();

    let health = cluster.health();
    let encrypts = encrypts_ok.load(Ordering::Relaxed);
    let encrypt_failures = encrypt_failures.lock().unwrap().clone();
    let worst = worst.lock().unwrap().clone();
    let all = all.unwrap_or_else(|_| {
        panic!(
            "the 32 key generations did not finish within 100 s; encrypts ok {encrypts}, \
             failed {}; not-healthy samples {}; health {health:?}",
            encrypt_failures.len(),
            worst.len()
        )
    });
    let succeeded = all.iter().filter(|(_, st, _, _)| *st == 200).count();
    let retryable: Vec<_> = all
        .iter()
        .filter(|(_, st, t, _)| *st != 200 && RETRYABLE.contains(&t.as_str()))
        .collect();
    // A full key generation lane answers at once; a deadline only after the wait.
    let refused_at_once = retryable
        .iter()
        .filter(|(_, _, _, took)| *took < Duration::from_secs(1))
        .count();
    let other: Vec<_> = all
        .iter()
        .filter(|(_, st, t, _)| *st != 200 && !RETRYABLE.contains(&t.as_str()))
        .collect();
    let slowest_success = all
        .iter()
        .filter(|(_, st, _, _)| *st == 200)
        .map(|(_, _, _, took)| *took)
        .max()
        .unwrap_or_default();
    let mut kinds: Vec<String> = all
        .iter()
        .filter(|(_, st, _, _)| *st != 200)
        .map(|(op, st, t, _)| format!("{op}: {st} {t}"))
        .collect();
    kinds.sort();
    kinds.dedup();
    let down_samples = worst
        .iter()
        .filter(|(_, st)| matches!(st, NodeState::Down | NodeState::Failed))
        .count();
    let suspect_samples = worst.len() - down_samples;
    println!(
        "stress: {keygen_secs:.1} s; key generations: {succeeded} succeeded (slowest \
         {slowest_success:.1?}), {} retryable errors ({refused_at_once} refused at once), {} \
         other errors; encrypts: {encrypts} ok, {} failed; health samples not healthy: \
         {suspect_samples} suspect, {down_samples} down/failed",
        retryable.len(),
        other.len(),
        encrypt_failures.len(),
    );
    println!("stress: key generation errors seen: {kinds:?}");
    println!("stress: health at the end: {health:?}");
    if !encrypt_failures.is_empty() {
        let mut f = encrypt_failures.clone();
        f.sort();
        f.dedup();
        println!("stress: encrypt errors seen: {f:?}");
    }

    // The process is alive and serves.
    let r = c
        .call(
            "Encrypt",
            json!({"KeyId": kek, "Plaintext": b64(b"still here")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h: serde_json::Value = reqwest::get(format!("{}/health", c.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    // Both HSMs healthy, never marked down or re-initialized during the run.
    assert_eq!(
        down_samples,
        0,
        "an HSM was marked down ({down_samples} samples); first: {:?}",
        worst.first()
    );
    for hsm in &health {
        assert_eq!(hsm.state, NodeState::Healthy, "{health:?}");
        assert_eq!(hsm.reinitializations, 0, "{health:?}");
        assert_eq!(hsm.last_error, None, "{health:?}");
    }
    // No Encrypt failed.
    assert!(encrypts > 0);
    assert!(
        encrypt_failures.is_empty(),
        "{} Encrypts failed",
        encrypt_failures.len()
    );
    // Every key generation succeeded or answered a retryable AWS error.
    assert!(other.is_empty(), "non-retryable answers: {other:?}");
    assert!(
        succeeded >= 4,
        "too few key generations succeeded: {succeeded}"
    );
    s.running.stop().await;
}
