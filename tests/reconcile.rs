//! Reconciliation against real tokens: an orphaned key object (what an interrupted creation
//! leaves), another application's object and a missing copy are each reported; `--fix`
//! copies the missing material and destroys the orphan, never the unknown object, and both
//! repairs are recorded in the audit trail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use hsm_kms::hsm::softhsm::LocalHsm;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Run `f` in a user session on `hsm`'s token (the service must be stopped).
fn with_token(hsm: &LocalHsm, f: impl FnOnce(&Session)) {
    f(UserToken::open(hsm).session());
}

fn aes_token_key(s: &Session, id: &str) {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Id(id.as_bytes().to_vec()),
        ],
    )
    .unwrap();
}

const ORPHAN: &str = "kms/00000000-0000-4000-8000-000000000000/1";
const UNKNOWN: &str = "another-application/key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_and_fixes_only_what_is_ours() {
    let svc = service().await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(svc.client.create_key(json!({})).await);
    }
    let lost = format!("kms/{}/1", keys[1]);
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    with_token(&tokens.hsms[0], |s| aes_token_key(s, ORPHAN));
    with_token(&tokens.hsms[1], |s| {
        aes_token_key(s, UNKNOWN);
        for h in s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Id(lost.as_bytes().to_vec()),
            ])
            .unwrap()
        {
            s.destroy_object(h).unwrap();
        }
    });

    let (running, _c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let kms = running.kms.clone();
    let mut quiet = hsm_kms::progress::Silent;
    let report = kms
        .reconcile(false, Duration::ZERO, &mut quiet)
        .await
        .unwrap();
    println!("{}", report.table());
    let (a, b) = (&report.rows[0], &report.rows[1]);
    assert_eq!(a.orphaned, vec![ORPHAN.to_string()]);
    assert!(a.missing.is_empty() && a.unknown.is_empty());
    assert_eq!(b.missing, vec![lost.clone()]);
    assert_eq!(b.unknown, vec![UNKNOWN.to_string()]);
    assert!(b.orphaned.is_empty());

    let fixed = kms
        .reconcile(true, Duration::ZERO, &mut quiet)
        .await
        .unwrap();
    assert_eq!(fixed.copied, 1);
    assert_eq!(fixed.destroyed, vec![ORPHAN.to_string()]);
    // Both repairs are in the audit trail, as service events naming the HSMs that did them.
    let events = trail(&tokens.dir.path().join("audit")).1;
    let named = |n: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["eventName"] == n).collect()
    };
    let destroyed = named("DeleteOrphanedKeyMaterial");
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    let e = destroyed[0];
    assert_eq!(e["eventType"], "AwsServiceEvent", "{e}");
    assert_eq!(e["serviceEventDetails"], json!({"object": ORPHAN}), "{e}");
    let hsms = e["additionalEventData"]["hsms"].as_array().unwrap();
    assert!(hsms.contains(&json!("a")), "the HSM that held it: {e}");
    let synced = named("SynchronizeHsms");
    assert_eq!(synced.len(), 1, "{synced:?}");
    assert_eq!(synced[0]["serviceEventDetails"]["copiesMade"], 1);
    let after = kms
        .reconcile(false, Duration::ZERO, &mut quiet)
        .await
        .unwrap();
    println!("{}", after.table());
    for r in &after.rows {
        assert!(r.missing.is_empty() && r.orphaned.is_empty(), "{r:?}");
    }
    assert_eq!(
        after.rows[1].unknown,
        vec![UNKNOWN.to_string()],
        "never touched"
    );
    assert!(running.cluster.hsm_holds("b", lost.as_bytes()));
    running.stop().await;
}
