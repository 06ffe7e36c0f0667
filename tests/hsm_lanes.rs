//! The HSM layer's lanes and module lifecycle over real SoftHSM2 tokens (issue 11 part 3):
//! a module is never finalized while a call is inside it; health probes run on their own
//! thread and session (never queued behind the workers' jobs) and a hung probe still marks
//! the HSM down promptly; key generation runs in its own bounded lane whose full queue or
//! deadline never makes an HSM suspect; a failed re-initialization finalizes the module so
//! that the next attempt sees the repaired token.
#![cfg(feature = "test-hooks")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::{HsmError, NodeState, PairSpec};
use hsm_kms::pkix::Curve;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn key_id(n: u32) -> Vec<u8> {
    format!("lanes-key-{n}").into_bytes()
}

/// Re-initialization (C_Finalize + C_Initialize) waits until the call inside the module has
/// returned: while a key generation is stalled inside the module, both HSMs are marked down
/// (their probes hang too) but no instance is finalized and re-opened (the login epoch never
/// moves past 1 while the call is inside), and the generation completes on the instance it
/// started on. (With a bounded wait followed by C_Finalize, new instances were opened under
/// the running call, which then used a stale session on another instance or a finalized
/// module, or crashed the process.) In process only: a hosted HSM is re-initialized by
/// killing its host process, which no call survives (see `tests/drills.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinitialization_waits_for_the_call_inside_the_module() {
    let t = tokens(&["a", "b"]);
    let mut opts = in_process_options();
    opts.call_timeout = Duration::from_millis(300);
    opts.probe_interval = Duration::from_millis(100);
    opts.keygen_timeout = Duration::from_secs(20);
    let c = std::sync::Arc::new(connect(&t, opts));
    for hsm in ["a", "b"] {
        c.inject_stall(hsm, Duration::from_millis(2500)).unwrap();
    }
    let started = Instant::now();
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.generate_data_key_pair(PairSpec::Ec(Curve::P256)).await })
    };
    let mut epochs = Vec::new();
    while !call.is_finished() {
        epochs.extend(c.health().iter().map(|h| (h.name.clone(), h.login_epoch)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pair = call.await.unwrap();
    let took = started.elapsed();
    // Probes hung too: both HSMs were marked down while the generation was inside a module.
    let health = c.health();
    for hsm in ["a", "b"] {
        c.inject_stall(hsm, Duration::ZERO).unwrap();
    }
    assert!(
        health.iter().all(|h| h.state == NodeState::Down),
        "{health:?}"
    );
    let reopened: Vec<_> = epochs
        .iter()
        .filter(|(_, e)| !matches!(e, None | Some(1)))
        .collect();
    assert!(
        reopened.is_empty(),
        "a module was re-initialized while a call was inside it: {:?}",
        reopened.first()
    );
    assert!(
        epochs.iter().any(|(_, e)| e.is_none()),
        "no instance was ever closed during the call"
    );
    let (private, public) = pair.unwrap_or_else(|e| {
        panic!("the generation inside the module failed after {took:?}: {e}; {health:?}")
    });
    {
        use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
        let sk = p256::SecretKey::from_pkcs8_der(&private).unwrap();
        let pk = p256::PublicKey::from_public_key_der(&public).unwrap();
        assert_eq!(sk.public_key(), pk);
    }
    assert!(
        eventually(20, || c
            .health()
            .iter()
            .all(|h| h.state == NodeState::Healthy && h.reinitializations >= 1))
        .await,
        "{:?}",
        c.health()
    );
    c.create_aes_key(&key_id(1), "k1").await.unwrap();
    for hsm in ["a", "b"] {
        c.encrypt_on(hsm, &key_id(1), vec![], b"x".to_vec())
            .await
            .unwrap();
    }
}

/// A probe stuck inside the module does not keep the HSM "healthy" or the monitor blind: the
/// HSM is marked down within the probe deadline, while the probe is still stuck, and the
/// other HSM keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_probe_marks_the_hsm_down_within_its_deadline() {
    let t = tokens(&["a", "b"]);
    let mut opts = fast_options();
    opts.call_timeout = Duration::from_millis(300);
    opts.probe_interval = Duration::from_millis(100);
    let c = connect(&t, opts);
    c.create_aes_key(&key_id(2), "k2").await.unwrap();
    c.inject_stall("a", Duration::from_secs(4)).unwrap();
    let stalled = Instant::now();
    // Marked down: in process it stays down while the probe is stuck; a hosted HSM is
    // re-initialized at once (its stuck host killed, a new one started), so the sign may
    // be the re-initialization alone.
    assert!(
        eventually(2, || {
            let a = &c.health()[0];
            a.state == NodeState::Down || a.reinitializations >= 1
        })
        .await,
        "{:?}",
        c.health()
    );
    assert!(stalled.elapsed() < Duration::from_secs(2));
    for _ in 0..20 {
        c.encrypt(&key_id(2), vec![], Zeroizing::new(b"x".to_vec()))
            .await
            .unwrap();
    }
    c.inject_stall("a", Duration::ZERO).unwrap();
    assert!(
        eventually(20, || c.health()[0].state == NodeState::Healthy).await,
        "{:?}",
        c.health()
    );
    assert_eq!(c.health()[1].reinitializations, 0);
}

/// Health probes are not queued behind the workers' jobs: with every job on HSM "a" taking
/// 1.5 s (2.5 times the probe deadline), its probes still answer, so "a" is never marked
/// down or re-initialized. (Probes used to be queued on the workers and time out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_not_queued_behind_slow_jobs() {
    let t = tokens(&["a", "b"]);
    let mut opts = fast_options();
    opts.workers_per_hsm = 1;
    opts.call_timeout = Duration::from_millis(600);
    opts.probe_interval = Duration::from_millis(100);
    let c = std::sync::Arc::new(connect(&t, opts));
    c.create_aes_key(&key_id(3), "k3").await.unwrap();
    c.inject_job_stall("a", Duration::from_millis(1500))
        .unwrap();
    // Keep a's only worker busy with slow jobs for ~4.5 s.
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1400 * i)).await;
                let _ = c
                    .encrypt_on("a", &key_id(3), vec![], b"slow".to_vec())
                    .await;
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_millis(4500);
    let mut seen = Vec::new();
    while Instant::now() < end {
        seen.push(c.health()[0].state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in busy {
        b.await.unwrap();
    }
    c.inject_job_stall("a", Duration::ZERO).unwrap();
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, NodeState::Down | NodeState::Failed)),
        "a was marked down ({} of {} samples); {:?}",
        seen.iter().filter(|s| **s == NodeState::Down).count(),
        seen.len(),
        c.health()
    );
    assert_eq!(c.health()[0].reinitializations, 0, "{:?}", c.health());
    // The slow jobs overran their deadlines, which makes "a" suspect; its probes clear it.
    assert!(
        eventually(5, || c.health()[0].state == NodeState::Healthy).await,
        "{:?}",
        c.health()
    );
}

/// The key generation lane is bounded and separate: with one generation worker and no
/// queue per HSM, a third concurrent RSA-4096 generation is refused at once
/// (`KeygenBusy`), encryption on both HSMs is not held up meanwhile, and neither the
/// refusal nor a generation that overruns its deadline (`KeygenTimeout`) makes an HSM
/// suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_slow_keygen_lane_never_makes_an_hsm_suspect() {
    let t = tokens(&["a", "b"]);
    let mut opts = fast_options();
    opts.keygen_workers_per_hsm = 1;
    opts.keygen_queue_depth = 0;
    opts.keygen_timeout = Duration::from_secs(30);
    let c = std::sync::Arc::new(connect(&t, opts));
    c.create_aes_key(&key_id(4), "k4").await.unwrap();
    let rsa = |c: std::sync::Arc<hsm_kms::hsm::HsmCluster>| {
        tokio::spawn(async move { c.generate_data_key_pair(PairSpec::Rsa(4096)).await })
    };
    let first = rsa(c.clone());
    let second = rsa(c.clone());
    assert!(
        eventually(5, || c.health().iter().all(|h| h.keygen_in_flight == 1)).await,
        "{:?}",
        c.health()
    );
    let refused = Instant::now();
    let third = c.generate_data_key_pair(PairSpec::Rsa(4096)).await;
    assert!(
        matches!(third, Err(HsmError::KeygenBusy { .. })),
        "{third:?}"
    );
    assert!(refused.elapsed() < Duration::from_millis(500));
    // Crypto calls on both HSMs are served while both generation lanes are busy.
    for hsm in ["a", "b"] {
        let start = Instant::now();
        c.encrypt_on(hsm, &key_id(4), vec![], b"x".to_vec())
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(500));
    }
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    drop(c);

    // A deadline shorter than an RSA-4096 generation, and than a host process's start:
    // the start waits for its own deadline (the call deadline here), so the HSMs open.
    let mut opts = fast_options();
    opts.keygen_timeout = Duration::from_millis(1);
    let c = connect(&t, opts);
    let e = c
        .generate_data_key_pair(PairSpec::Rsa(4096))
        .await
        .unwrap_err();
    assert!(matches!(e, HsmError::KeygenTimeout { .. }), "{e}");
    assert!(e.retryable());
    // Give the monitors time to act on anything the refusal or the deadline reported.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for h in c.health() {
        assert_eq!(h.state, NodeState::Healthy, "{h:?}");
        assert_eq!(h.last_error, None, "{h:?}");
    }
}

/// Every file of HSM "a"'s token moved out, then back: re-initialization attempts fail in
/// between, and each failure finalizes the module, so the attempt after the repair loads the
/// token afresh. (A failed attempt that dropped the initialized module without C_Finalize
/// left every later C_Initialize with the stale state: "a" never recovered without a
/// restart, hsm-facts.md §10.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_emptied_and_restored_recovers_without_restart() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(5), "k5").await.unwrap();
    let token = std::fs::read_dir(&t.hsms[0].token_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a token folder");
    let aside = t.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    let files: Vec<_> = std::fs::read_dir(&token)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for f in &files {
        std::fs::rename(token.join(f), aside.join(f)).unwrap();
    }
    assert!(
        eventually(10, || c.health()[0].state == NodeState::Down).await,
        "{:?}",
        c.health()
    );
    // Let a few re-initialization attempts fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for f in &files {
        std::fs::rename(aside.join(f), token.join(f)).unwrap();
    }
    assert!(
        eventually(15, || c.health()[0].state == NodeState::Healthy).await,
        "hsm a never recovered: {:?}",
        c.health()
    );
    c.encrypt_on("a", &key_id(5), vec![], b"back".to_vec())
        .await
        .unwrap();
}
