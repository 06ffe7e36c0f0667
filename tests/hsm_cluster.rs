//! The HSM cluster over real SoftHSM2 tokens (a copy of libsofthsm2.so per token):
//! replication, failover when a token disappears, recovery without restart, deadlines,
//! the handle cache with a full token, enrollment of a new HSM, and starting with the HSMs
//! that are healthy (the others reported, retried and proven when they come back).
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

/// A copy missing from one HSM (destroyed there behind the service's back) is about that
/// key, not that HSM: calls by the key fail over to the HSM that holds it (encrypt,
/// decrypt), and the HSM that lacks it stays healthy, with no error in its health report,
/// first in line for every other key. (It was made suspect at each such call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_copy_fails_over_without_making_its_hsm_suspect() {
    let t = tokens(&["a", "b"]);
    let c = connect(&t, fast_options());
    c.create_aes_key(&key_id(30), "k30").await.unwrap();
    drop(c);
    {
        let u = UserToken::open(&t.hsms[0]);
        let s = u.session();
        let found = s
            .find_objects(&[cryptoki::object::Attribute::Id(key_id(30))])
            .unwrap();
        assert_eq!(found.len(), 1);
        s.destroy_object(found[0]).unwrap();
    }
    let c = connect(&t, fast_options());
    assert!(!c.hsm_holds("a", &key_id(30)) && c.hsm_holds("b", &key_id(30)));
    for i in 0..10u32 {
        let msg = format!("msg {i}").into_bytes();
        let (iv, ct) = c
            .encrypt(&key_id(30), vec![], Zeroizing::new(msg.clone()))
            .await
            .unwrap();
        let pt = c.decrypt(&key_id(30), iv, vec![], ct).await.unwrap();
        assert_eq!(pt.as_slice(), msg.as_slice());
        let a = &c.health()[0];
        assert_eq!(
            (a.state, &a.last_error),
            (NodeState::Healthy, &None),
            "{a:?}"
        );
    }
    assert!(
        c.health()[0].failovers > 0,
        "the calls reached \"a\" and failed over: {:?}",
        c.health()
    );
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

/// An HSM that hangs (its jobs and its probes) as a key is being made on it does not fail
/// the creation when enough others serve: its probe misses the deadline, its host process
/// is killed and restarted, the job fails as a device's would, and the key is made on the
/// next HSM and copied to the third. Each family: AES, HMAC and a key pair, with three
/// HSMs and "a" hung before each creation.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_that_hangs_as_a_key_is_made_on_it_does_not_fail_the_creation() {
    use hsm_kms::hsm::{PairSpec, PairUse};
    use hsm_kms::pkix::Curve;
    let t = tokens(&["a", "b", "c"]);
    let c = connect(&t, hang_options());
    let hang = || async {
        hang_first_hsm(&c).await;
        Instant::now()
    };
    let mut took = Vec::new();
    let start = hang().await;
    c.create_aes_key(&key_id(7), "k7").await.unwrap();
    took.push(start.elapsed());
    let start = hang().await;
    c.create_hmac_key(&key_id(8), "k8", 32).await.unwrap();
    took.push(start.elapsed());
    let start = hang().await;
    c.create_key_pair(&key_id(9), "k9", PairSpec::Ec(Curve::P256), PairUse::Sign)
        .await
        .unwrap();
    took.push(start.elapsed());
    for id in [key_id(7), key_id(8)] {
        assert!(c.hsm_holds("b", &id) && c.hsm_holds("c", &id), "{id:?}");
    }
    assert!(c.hsm_holds_private("b", &key_id(9)) && c.hsm_holds_private("c", &key_id(9)));
    // Each waited for "a" to be found hung and cut off, not for its 4 s stall.
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(3)),
        "took {took:?}"
    );
    assert!(c.health()[0].host_restarts >= Some(3), "{:?}", c.health());
    let (iv, ct) = c
        .encrypt_on("b", &key_id(7), vec![], b"after a hang".to_vec())
        .await
        .unwrap();
    let pt = c.decrypt_on("c", &key_id(7), iv, vec![], ct).await.unwrap();
    assert_eq!(&pt[..], b"after a hang");
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

/// The state and last error of HSM `name`.
fn state_of(c: &HsmCluster, name: &str) -> (NodeState, Option<String>) {
    let h = c.health().into_iter().find(|h| h.name == name).unwrap();
    (h.state, h.last_error)
}

/// Start with what is healthy: fewer than two HSMs configured is refused, but one HSM of two
/// that cannot be opened (refused PIN, no such token label, no such module) no longer stops
/// the start: it is reported with its error (a refused PIN `Failed`, never retried; the
/// others `Down`, retried) and the other HSM serves the keys. With no enrolled HSM that
/// opens, the start is refused and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_the_healthy_hsm_and_reports_a_wrong_pin_a_bad_label_or_module() {
    let t = tokens(&["a", "b"]);
    let cfg = |i: usize| t.hsms[i].node_config().unwrap();
    let both = HsmCluster::connect(vec![cfg(0), cfg(1)], fast_options()).unwrap();
    both.create_aes_key(&key_id(8), "k8").await.unwrap();
    let (iv, ct) = both
        .encrypt(&key_id(8), vec![], Zeroizing::new(b"kept".to_vec()))
        .await
        .unwrap();
    drop(both);
    let refused = |cfgs| match HsmCluster::connect(cfgs, fast_options()) {
        Ok(_) => panic!("must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(refused(vec![cfg(0)]).contains("at least two HSMs"));
    let mut wrong_pin = cfg(1);
    wrong_pin.pin = Zeroizing::new("00000000".into());
    let mut bad_label = cfg(1);
    bad_label.token_label = "nope".into();
    let mut bad_module = cfg(1);
    bad_module.module = "/nonexistent/lib.so".into();
    let cases = [
        (
            wrong_pin.clone(),
            NodeState::Failed,
            "b: the token refused the user PIN (CKR_PIN_INCORRECT)",
        ),
        (bad_label, NodeState::Down, "b: no token labelled 'nope'"),
        (
            bad_module.clone(),
            NodeState::Down,
            "b: PKCS#11 module /nonexistent/lib.so does not exist",
        ),
    ];
    for (bad, state, message) in cases {
        let c = HsmCluster::connect(vec![cfg(0), bad], fast_options())
            .unwrap_or_else(|e| panic!("{message}: the start must go on with a: {e}"));
        let (s, error) = state_of(&c, "b");
        assert_eq!(s, state, "{message}");
        assert!(
            error.as_deref().is_some_and(|e| e.starts_with(message)),
            "{message}: {error:?}"
        );
        assert_eq!(state_of(&c, "a").0, NodeState::Healthy);
        // The healthy HSM serves the existing key; creating a key needs two HSMs.
        let pt = c.decrypt(&key_id(8), iv, vec![], ct.clone()).await.unwrap();
        assert_eq!(pt.as_slice(), b"kept");
        assert!(c.create_aes_key(&key_id(9), "k9").await.is_err());
        // Retried in the background (a refused PIN never): still reported, never used.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let b = c.health().into_iter().find(|h| h.name == "b").unwrap();
        assert_eq!(b.state, state, "{message}: {b:?}");
        assert_eq!(b.reinitializations, 0);
        assert!(b.protections.is_none());
    }
    // No enrolled HSM opens: refused, naming each reason.
    let m = refused(vec![bad_module.clone(), {
        let mut c = wrong_pin.clone();
        c.name = "c".into();
        c
    }]);
    assert!(m.contains("0 of 2 HSMs are enrolled"), "{m}");
    assert!(m.contains("b: PKCS#11 module /nonexistent/lib.so"), "{m}");
    assert!(m.contains("c: the token refused the user PIN"), "{m}");
    // The right PIN still works afterwards: the wrong one was tried once each, not in a loop.
    let c = HsmCluster::connect(vec![cfg(0), cfg(1)], fast_options()).unwrap();
    assert_eq!(c.health().len(), 2);
    assert!(c.health().iter().all(|h| h.state == NodeState::Healthy));
}

/// An HSM whose token folder is missing at start is started down; when the folder is put
/// back it is proven (same cluster wrapping key, custody probed) and used, without a
/// restart. One whose token lacks the cluster wrapping key becomes `NotEnrolled`, one
/// holding another cluster's wrapping key `Failed`: neither is ever used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_unreachable_at_start_is_proven_when_it_comes_back() {
    let t = tokens(&["a", "b"]);
    let stranger = common::unenrolled_tokens(&["c"]);
    let other_cluster = tokens(&["d"]);
    let away = |h: &softhsm::LocalHsm| {
        let moved = h.token_dir.with_extension("away");
        std::fs::rename(&h.token_dir, &moved).unwrap();
        move |h: &softhsm::LocalHsm| std::fs::rename(&moved, &h.token_dir).unwrap()
    };
    let back_b = away(&t.hsms[1]);
    let back_c = away(&stranger.hsms[0]);
    let back_d = away(&other_cluster.hsms[0]);
    let cfgs = vec![
        t.hsms[0].node_config().unwrap(),
        t.hsms[1].node_config().unwrap(),
        stranger.hsms[0].node_config().unwrap(),
        other_cluster.hsms[0].node_config().unwrap(),
    ];
    let c = HsmCluster::connect(cfgs, fast_options()).expect("starts with a alone");
    for name in ["b", "c", "d"] {
        let (s, e) = state_of(&c, name);
        assert_eq!(s, NodeState::Down, "{name}");
        assert!(e.is_some(), "{name}: the reason must be reported");
    }
    assert!(
        c.create_aes_key(&key_id(10), "k10").await.is_err(),
        "one HSM cannot hold two copies"
    );
    back_b(&t.hsms[1]);
    back_c(&stranger.hsms[0]);
    back_d(&other_cluster.hsms[0]);
    assert!(
        eventually(5, || state_of(&c, "b").0 == NodeState::Healthy).await,
        "{:?}",
        c.health()
    );
    let b = c.health().into_iter().find(|h| h.name == "b").unwrap();
    assert!(
        b.protections.is_some(),
        "custody probed when admitted: {b:?}"
    );
    assert_eq!(b.last_error, None);
    assert!(
        eventually(5, || state_of(&c, "c").0 == NodeState::NotEnrolled).await,
        "{:?}",
        c.health()
    );
    assert!(
        eventually(5, || state_of(&c, "d").0 == NodeState::Failed).await,
        "{:?}",
        c.health()
    );
    let (_, e) = state_of(&c, "d");
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("different cluster wrapping key")),
        "{e:?}"
    );
    // Two proven HSMs now: keys can be created, and land on a and b only.
    c.create_aes_key(&key_id(10), "k10").await.unwrap();
    assert!(c.hsm_holds("a", &key_id(10)) && c.hsm_holds("b", &key_id(10)));
    assert!(!c.hsm_holds("c", &key_id(10)) && !c.hsm_holds("d", &key_id(10)));
    let (iv, ct) = c
        .encrypt_on("b", &key_id(10), vec![], b"via b".to_vec())
        .await
        .unwrap();
    let pt = c
        .decrypt_on("a", &key_id(10), iv, vec![], ct)
        .await
        .unwrap();
    assert_eq!(pt.as_slice(), b"via b");
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

/// One module file for two HSMs: refused in process (they would share one module
/// instance), served with host processes (each loads its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_module_file_for_two_hsms_needs_host_processes() {
    let t = tokens(&["a", "b"]);
    let shared = || {
        t.hsms
            .iter()
            .map(|h| {
                let mut c = h.node_config().unwrap();
                c.module = t.hsms[0].module.clone();
                c
            })
            .collect::<Vec<_>>()
    };
    let e = HsmCluster::connect(shared(), in_process_options())
        .err()
        .expect("refused in process");
    assert!(e.to_string().contains("its own copy"), "{e}");
    let c = HsmCluster::connect(shared(), fast_options()).expect("hosted");
    c.create_aes_key(&key_id(20), "k20").await.unwrap();
    assert!(c.hsm_holds("a", &key_id(20)) && c.hsm_holds("b", &key_id(20)));
}
