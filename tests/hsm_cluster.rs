//! The HSM cluster over real SoftHSM2 tokens (a copy of libsofthsm2.so per token):
//! replication, failover when a token disappears, recovery without restart, deadlines,
//! the handle cache with a full token, enrollment of a new HSM, and start-up refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::{softhsm, HsmCluster, HsmError, NodeState};
#[cfg(feature = "test-hooks")]
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn key_id(n: u32) -> Vec<u8> {
    format!("test-key-{n}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_created_on_a_decrypts_on_b() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(1), "k1").await.unwrap();
    assert!(c.hsm_holds("a", &key_id(1)) && c.hsm_holds("b", &key_id(1)));
    let (iv, ct) = c
        .encrypt_on("a", &key_id(1), b"aad".to_vec(), b"hello".to_vec())
        .await
        .unwrap();
    let pt = c
        .decrypt_on("b", &key_id(1), iv, b"aad".to_vec(), ct.clone())
        .await
        .unwrap();
    assert_eq!(pt.as_slice(), b"hello");
    // And the other way round, through the cluster API.
    let (iv2, ct2) = c
        .encrypt(&key_id(1), b"x".to_vec(), Zeroizing::new(b"round".to_vec()))
        .await
        .unwrap();
    for hsm in ["a", "b"] {
        let pt = c
            .decrypt_on(hsm, &key_id(1), iv2, b"x".to_vec(), ct2.clone())
            .await
            .unwrap();
        assert_eq!(pt.as_slice(), b"round");
    }
    // A wrong AAD is a request failure: no failover, HSMs stay healthy.
    let e = c
        .decrypt(&key_id(1), iv, b"other".to_vec(), ct)
        .await
        .unwrap_err();
    assert!(matches!(e, HsmError::InvalidCiphertext), "{e}");
    assert!(c.health().iter().all(|h| h.state == NodeState::Healthy));
    // Destroy removes every copy.
    c.destroy_key(&key_id(1)).await.unwrap();
    assert!(!c.hsm_holds("a", &key_id(1)) && !c.hsm_holds("b", &key_id(1)));
    let e = c
        .encrypt_on("b", &key_id(1), vec![], b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, HsmError::KeyMissing { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_moved_away_fails_over_and_recovers_without_restart() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(2), "k2").await.unwrap();
    let a_tokens = &t.hsms[0].token_dir;
    let moved = a_tokens.with_extension("moved");
    std::fs::rename(a_tokens, &moved).unwrap();
    // Every request keeps succeeding while hsm "a" is gone.
    for i in 0..200u32 {
        let msg = format!("msg {i}").into_bytes();
        let (iv, ct) = c
            .encrypt(&key_id(2), vec![], Zeroizing::new(msg.clone()))
            .await
            .unwrap_or_else(|e| panic!("encrypt {i} failed during outage: {e}"));
        let pt = c.decrypt(&key_id(2), iv, vec![], ct).await.unwrap();
        assert_eq!(pt.as_slice(), msg.as_slice());
    }
    assert!(
        eventually(10, || c.health()[0].state == NodeState::Down).await,
        "hsm a never marked down: {:?}",
        c.health()
    );
    let _ = c.random(16).await.unwrap();
    // Restore the folder: "a" comes back by itself (C_Finalize + C_Initialize of its copy).
    std::fs::rename(&moved, a_tokens).unwrap();
    assert!(
        eventually(15, || c.health()[0].state == NodeState::Healthy).await,
        "hsm a never recovered: {:?}",
        c.health()
    );
    assert!(c.health()[0].reinitializations >= 1);
    assert_eq!(
        c.health()[0].last_error,
        None,
        "a recovered HSM must not keep reporting its old error"
    );
    assert_eq!(
        c.health()[1].reinitializations,
        0,
        "hsm b must not be touched"
    );
    let (iv, ct) = c
        .encrypt_on("a", &key_id(2), vec![], b"back".to_vec())
        .await
        .unwrap();
    let pt = c.decrypt_on("b", &key_id(2), iv, vec![], ct).await.unwrap();
    assert_eq!(pt.as_slice(), b"back");
}

/// A client that gives up mid-call drops the request's future; the HSM's in-flight count,
/// which `pick()` balances on, must come back down (it used to leak, steering traffic away
/// from that HSM for good).
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_does_not_leak_the_in_flight_count() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(4), "k4").await.unwrap();
    for hsm in ["a", "b"] {
        c.inject_stall(hsm, Duration::from_millis(400)).unwrap();
    }
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            c.encrypt(&key_id(4), vec![], Zeroizing::new(b"x".to_vec())),
        )
        .await;
        assert!(gave_up.is_err(), "the stalled call should still be running");
    }
    for hsm in ["a", "b"] {
        c.inject_stall(hsm, Duration::ZERO).unwrap();
    }
    let in_flight: Vec<usize> = c.health().iter().map(|h| h.in_flight).collect();
    assert_eq!(in_flight, vec![0, 0], "{:?}", c.health());
}

#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_is_cut_by_the_deadline_and_fails_over() {
    let t = tokens(&["a", "b"]);
    let mut opts = fast_options();
    opts.call_timeout = Duration::from_millis(300);
    let c = connect(&t, opts);
    c.create_aes_key(&key_id(3), "k3").await.unwrap();
    c.inject_stall("a", Duration::from_secs(3)).unwrap();
    for _ in 0..4 {
        let start = Instant::now();
        let r = c
            .encrypt(&key_id(3), vec![], Zeroizing::new(b"x".to_vec()))
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            start.elapsed()
        );
    }
    assert_ne!(c.health()[0].state, NodeState::Healthy);
    c.inject_stall("a", Duration::ZERO).unwrap();
    assert!(
        eventually(20, || c.health()[0].state == NodeState::Healthy).await,
        "{:?}",
        c.health()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_cache_serves_a_full_token_without_finds() {
    let t = tokens(&["a", "b"]);
    softhsm::add_filler_keys(&t.hsms[0], 1000).unwrap();
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(4), "k4").await.unwrap();
    assert!(c.health()[0].cached_handles >= 1000);
    let before: Vec<u64> = c.health().iter().map(|h| h.request_finds).collect();
    for _ in 0..2000 {
        c.encrypt_on(
            "a",
            &key_id(4),
            vec![],
            b"32 bytes of plaintext, exactly!!".to_vec(),
        )
        .await
        .unwrap();
    }
    let after: Vec<u64> = c.health().iter().map(|h| h.request_finds).collect();
    assert_eq!(before, after, "no C_FindObjects on the request path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_keys_and_a_new_hsm_is_enrolled_and_resynced() {
    let t = common::unenrolled_tokens(&["a", "b", "c"]);
    softhsm::enroll_local(&t.hsms[..2], &t.so).unwrap();
    let two = HsmCluster::connect(
        t.hsms[..2]
            .iter()
            .map(|h| h.node_config().unwrap())
            .collect(),
        fast_options(),
    )
    .unwrap();
    two.create_aes_key(&key_id(5), "k5").await.unwrap();
    let (iv, ct) = two
        .encrypt(&key_id(5), vec![], Zeroizing::new(b"kept".to_vec()))
        .await
        .unwrap();
    drop(two);
    // A third, empty HSM is never enrolled by the service: it is reported and not used.
    let unenrolled = connect(&t, fast_options());
    let c = unenrolled
        .health()
        .into_iter()
        .find(|h| h.name == "c")
        .unwrap();
    assert_eq!(c.state, NodeState::NotEnrolled);
    assert!(c.protections.is_none());
    assert_eq!(
        unenrolled
            .replicate_missing(&[(key_id(5), "k5".into())])
            .await
            .unwrap(),
        0,
        "nothing is copied to a token that was not enrolled"
    );
    assert!(!unenrolled.hsm_holds("c", &key_id(5)));
    drop(unenrolled);
    // The SO ceremony enrolls it (the cluster wrapping key travels by RSA-OAEP under a
    // transport key made inside it); after a restart it receives the key by re-sync.
    softhsm::enroll_local(&t.hsms, &t.so).unwrap();
    let three = connect(&t, fast_options());
    assert!(!three.hsm_holds("c", &key_id(5)));
    let n = three
        .replicate_missing(&[(key_id(5), "k5".into())])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let pt = three
        .decrypt_on("c", &key_id(5), iv, vec![], ct)
        .await
        .unwrap();
    assert_eq!(pt.as_slice(), b"kept");
}

#[test]
fn refuses_to_start_with_one_hsm_a_wrong_pin_a_bad_label_or_module() {
    let t = tokens(&["a", "b"]);
    let cfg = |i: usize| t.hsms[i].node_config().unwrap();
    let err = |cfgs| match HsmCluster::connect(cfgs, fast_options()) {
        Ok(_) => panic!("must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(err(vec![cfg(0)]).contains("at least two HSMs"));
    let mut bad = cfg(1);
    bad.pin = Zeroizing::new("00000000".into());
    let m = err(vec![cfg(0), bad]);
    assert!(
        m.starts_with("b: the token refused the user PIN (CKR_PIN_INCORRECT)"),
        "{m}"
    );
    let mut bad = cfg(1);
    bad.token_label = "nope".into();
    assert!(err(vec![cfg(0), bad]).contains("b: no token labelled 'nope'"));
    let mut bad = cfg(1);
    bad.module = "/nonexistent/lib.so".into();
    assert!(err(vec![cfg(0), bad]).contains("b: PKCS#11 module /nonexistent/lib.so does not exist"));
    // The right PIN still works afterwards: the wrong one was tried once, not in a loop.
    let c = HsmCluster::connect(vec![cfg(0), cfg(1)], fast_options()).unwrap();
    assert_eq!(c.health().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_object_is_skipped_and_reported_never_fatal() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(7), "k7").await.unwrap();
    let (iv, ct) = c
        .encrypt(&key_id(7), vec![], Zeroizing::new(b"kept".to_vec()))
        .await
        .unwrap();
    drop(c);
    // What an interrupted C_GenerateKey leaves (hsm-facts §10): an object file holding only
    // the first 32 bytes of a real one, beside the real objects of token a.
    let token = std::fs::read_dir(&t.hsms[0].token_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let object = std::fs::read_dir(&token)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "object")
                && p.file_name().is_some_and(|n| n != "token.object")
        })
        .unwrap();
    let bytes = std::fs::read(&object).unwrap();
    let half = token.join("0badf00d-0000-4000-8000-000000000001.object");
    std::fs::write(&half, &bytes[..32]).unwrap();
    std::fs::write(token.join("0badf00d-0000-4000-8000-000000000001.lock"), b"").unwrap();
    // Before: warm-up aborted on CKR_ATTRIBUTE_VALUE_INVALID and the cluster refused to start.
    let c = connect(&t, fast_options());
    let a = c.health().into_iter().find(|h| h.name == "a").unwrap();
    assert_eq!(a.state, NodeState::Healthy, "{a:?}");
    assert_eq!(a.unreadable_objects, 1, "{a:?}");
    let pt = c.decrypt_on("a", &key_id(7), iv, vec![], ct).await.unwrap();
    assert_eq!(pt.as_slice(), b"kept");
}
