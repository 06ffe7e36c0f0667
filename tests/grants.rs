//! Grants over HTTP with real SoftHSM2 tokens, as the account's root user: the lifecycle
//! (CreateGrant, ListGrants with filters and pages, the idempotent `Name`, RetireGrant by
//! token and by key and id, RevokeGrant), AWS's validation answers, grant tokens on the
//! cryptographic operations, DryRun, grants that go with their destroyed key, and grants
//! that survive a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cloned_ref_to_slice_refs
)]

mod common;
use common::*;
use hsm_kms::clock::ManualClock;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ACCOUNT: &str = "111122223333";
const DAY: Duration = Duration::from_secs(86_400);

fn user(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

fn arn(id: &str) -> String {
    format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{id}")
}

#[track_caller]
fn expect(r: &Reply, ty: &str, what: &str) {
    assert_eq!((r.status, r.error_type()), (400, ty), "{what}: {}", r.body);
    assert!(r.body["message"].is_string(), "{what}: {}", r.body);
}

async fn create(c: &Client, body: Value) -> (String, String) {
    let r = c.ok("CreateGrant", body).await;
    let id = r["GrantId"].as_str().unwrap().to_string();
    let token = r["GrantToken"].as_str().unwrap().to_string();
    (id, token)
}

fn ids(list: &Value) -> Vec<String> {
    list["Grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GrantId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_lifecycle() {
    let s = service().await;
    let c = &s.client;
    let key = c.create_key(json!({})).await;
    let before = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let (g1, t1) = create(
        c,
        json!({
            "KeyId": key,
            "GranteePrincipal": user("alice"),
            "RetiringPrincipal": user("ops"),
            "Operations": ["Decrypt", "Encrypt", "DescribeKey"],
            "Constraints": {"EncryptionContextSubset": {"dept": "it"}},
            "Name": "alice-decrypt",
        }),
    )
    .await;
    assert_eq!(g1.len(), 64);
    assert!(g1.bytes().all(|b| b.is_ascii_hexdigit()), "{g1}");
    // The same Name and parameters: the same grant (a new token, as good as the first).
    let (again, t1b) = create(
        c,
        json!({
            "KeyId": arn(&key),
            "GranteePrincipal": user("alice"),
            "RetiringPrincipal": user("ops"),
            "Operations": ["Encrypt", "DescribeKey", "Decrypt"],
            "Constraints": {"EncryptionContextSubset": {"dept": "it"}},
            "Name": "alice-decrypt",
        }),
    )
    .await;
    assert_eq!(again, g1);
    assert_ne!(t1b, t1);
    // The same Name with other parameters is another grant; so is no Name.
    let (g2, _) = create(
        c,
        json!({"KeyId": key, "GranteePrincipal": user("bob"), "Operations": ["Encrypt"], "Name": "alice-decrypt"}),
    )
    .await;
    let (g3, t3) = create(
        c,
        json!({"KeyId": key, "GranteePrincipal": user("bob"), "Operations": ["GenerateDataKey", "RetireGrant"]}),
    )
    .await;
    let (g3b, _) = create(
        c,
        json!({"KeyId": key, "GranteePrincipal": user("bob"), "Operations": ["GenerateDataKey", "RetireGrant"]}),
    )
    .await;
    assert_ne!(g3, g3b);
    let all = [g1.clone(), g2.clone(), g3.clone(), g3b.clone()];

    // ListGrants: every field as AWS shapes it.
    let l = c.ok("ListGrants", json!({"KeyId": key})).await;
    assert_eq!(l["Truncated"], false);
    assert!(l.get("NextMarker").is_none());
    let mut listed = ids(&l);
    listed.sort();
    let mut want = all.to_vec();
    want.sort();
    assert_eq!(listed, want);
    let first = l["Grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["GrantId"] == g1.as_str())
        .unwrap();
    assert_eq!(first["KeyId"], arn(&key));
    assert_eq!(first["Name"], "alice-decrypt");
    assert_eq!(first["GranteePrincipal"], user("alice"));
    assert_eq!(first["RetiringPrincipal"], user("ops"));
    assert_eq!(
        first["IssuingAccount"],
        format!("arn:aws:iam::{ACCOUNT}:root")
    );
    assert_eq!(
        first["Operations"],
        json!(["Decrypt", "Encrypt", "DescribeKey"])
    );
    assert_eq!(
        first["Constraints"],
        json!({"EncryptionContextSubset": {"dept": "it"}})
    );
    let created = first["CreationDate"].as_f64().unwrap();
    assert!(
        created >= before - 1.0 && created < before + 120.0,
        "{created}"
    );
    // Filters.
    let l = c
        .ok("ListGrants", json!({"KeyId": key, "GrantId": g2}))
        .await;
    assert_eq!(ids(&l), [g2.clone()]);
    let l = c
        .ok(
            "ListGrants",
            json!({"KeyId": key, "GranteePrincipal": user("bob")}),
        )
        .await;
    assert_eq!(ids(&l).len(), 3);
    assert!(!ids(&l).contains(&g1));
    // Pages of one: every grant once, in order, then no marker.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = json!({"KeyId": key, "Limit": 1});
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let page = c.ok("ListGrants", req).await;
        seen.extend(ids(&page));
        if page["Truncated"] == false {
            assert!(page.get("NextMarker").is_none());
            break;
        }
        marker = Some(page["NextMarker"].as_str().unwrap().to_string());
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, want);
    // Another key's grants are not listed; other keys' listings are empty.
    let other = c.create_key(json!({})).await;
    let l = c.ok("ListGrants", json!({"KeyId": other})).await;
    assert_eq!(l["Grants"], json!([]));
    // ListRetirableGrants.
    let l = c
        .ok(
            "ListRetirableGrants",
            json!({"RetiringPrincipal": user("ops")}),
        )
        .await;
    assert_eq!(ids(&l), [g1.clone()]);
    assert_eq!(l["Grants"][0]["KeyId"], arn(&key));

    // The tokens are accepted by the operations that take them.
    let ct = c
        .ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "GrantTokens": [t1, t1b, t3]}),
        )
        .await["CiphertextBlob"]
        .clone();
    c.ok(
        "Decrypt",
        json!({"CiphertextBlob": ct, "GrantTokens": [t3]}),
    )
    .await;

    // RetireGrant by token (the account's root user may retire any grant it issued).
    c.ok("RetireGrant", json!({"GrantToken": t3})).await;
    let r = c.call("RetireGrant", json!({"GrantToken": t3})).await;
    expect(&r, "NotFoundException", "retire twice");
    // By key and id.
    c.ok("RetireGrant", json!({"KeyId": arn(&key), "GrantId": g3b}))
        .await;
    // RevokeGrant.
    c.ok("RevokeGrant", json!({"KeyId": key, "GrantId": g2}))
        .await;
    let r = c
        .call("RevokeGrant", json!({"KeyId": key, "GrantId": g2}))
        .await;
    expect(&r, "NotFoundException", "revoke twice");
    // A grant is named on its own key only.
    let r = c
        .call("RevokeGrant", json!({"KeyId": other, "GrantId": g1}))
        .await;
    expect(&r, "NotFoundException", "revoke on another key");
    let l = c.ok("ListGrants", json!({"KeyId": key})).await;
    assert_eq!(ids(&l), [g1.clone()]);
    // A retired grant's token is still a token this service issued.
    c.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"x"), "GrantTokens": [t3]}),
    )
    .await;
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_answers() {
    let s = service().await;
    let c = &s.client;
    let key = c.create_key(json!({})).await;
    let sign = c
        .create_key(json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}))
        .await;
    let base = || json!({"KeyId": key, "GranteePrincipal": user("a"), "Operations": ["Encrypt"]});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"KeyId": key, "Operations": ["Encrypt"]}),
            "ValidationException",
            "no grantee",
        ),
        (
            json!({"KeyId": key, "GranteePrincipal": user("a")}),
            "ValidationException",
            "no operations",
        ),
        (
            {
                let mut b = base();
                b["Operations"] = json!([]);
                b
            },
            "ValidationException",
            "empty operations",
        ),
        (
            {
                let mut b = base();
                b["Operations"] = json!(["Fly"]);
                b
            },
            "ValidationException",
            "unknown operation",
        ),
        (
            {
                let mut b = base();
                b["Operations"] = json!(["CreateGrant"]);
                b
            },
            "ValidationException",
            "only CreateGrant",
        ),
        (
            {
                let mut b = base();
                b["Operations"] = json!(["Sign"]);
                b
            },
            "ValidationException",
            "Sign on a symmetric key",
        ),
        (
            {
                let mut b = base();
                b["GranteePrincipal"] = json!("nobody");
                b
            },
            "ValidationException",
            "bad grantee",
        ),
        (
            {
                let mut b = base();
                b["GranteePrincipal"] = json!("a b");
                b
            },
            "ValidationException",
            "grantee pattern",
        ),
        (
            {
                let mut b = base();
                b["RetiringPrincipal"] = json!("arn:aws:iam::1:user/x");
                b
            },
            "ValidationException",
            "bad retiring",
        ),
        (
            {
                let mut b = base();
                b["Name"] = json!("has space");
                b
            },
            "ValidationException",
            "bad name",
        ),
        (
            {
                let mut b = base();
                b["Name"] = json!("x".repeat(257));
                b
            },
            "ValidationException",
            "long name",
        ),
        (
            {
                let mut b = base();
                b["Operations"] = json!("Encrypt");
                b
            },
            "SerializationException",
            "operations not a list",
        ),
        (
            {
                let mut b = base();
                b["Constraints"] = json!("x");
                b
            },
            "SerializationException",
            "constraints not a structure",
        ),
        (
            {
                let mut b = base();
                b["KeyId"] = json!("alias/x");
                b
            },
            "NotFoundException",
            "alias",
        ),
        (
            {
                let mut b = base();
                b["KeyId"] = json!("11111111-2222-3333-4444-555555555555");
                b
            },
            "NotFoundException",
            "unknown key",
        ),
        (
            {
                let mut b = base();
                b["GrantTokens"] = json!(["garbage"]);
                b
            },
            "InvalidGrantTokenException",
            "garbage token",
        ),
        (
            {
                let mut b = base();
                b["GrantTokens"] = json!([""]);
                b
            },
            "ValidationException",
            "empty token",
        ),
        (
            {
                let mut b = base();
                b["GrantTokens"] = json!(vec!["t"; 11]);
                b
            },
            "ValidationException",
            "eleven tokens",
        ),
        (
            json!({"KeyId": sign, "GranteePrincipal": user("a"), "Operations": ["Sign"], "Constraints": {"EncryptionContextEquals": {"a": "b"}}}),
            "ValidationException",
            "constraint on Sign",
        ),
        (
            json!({"KeyId": sign, "GranteePrincipal": user("a"), "Operations": ["Encrypt"]}),
            "ValidationException",
            "Encrypt on a signing key",
        ),
        (
            {
                let mut b = base();
                b["Constraints"] = json!({"EncryptionContextSubset": (0..9).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()});
                b
            },
            "ValidationException",
            "nine pairs",
        ),
    ];
    for (body, ty, what) in cases {
        expect(&c.call("CreateGrant", body).await, ty, what);
    }
    // Accepted: asymmetric operations on the signing key; a constraint with DescribeKey.
    create(c, json!({"KeyId": sign, "GranteePrincipal": user("a"), "Operations": ["Sign", "Verify", "GetPublicKey"]})).await;
    create(c, json!({"KeyId": key, "GranteePrincipal": ACCOUNT, "Operations": ["Decrypt", "DescribeKey"], "Constraints": {"EncryptionContextEquals": {"a": "b"}}})).await;
    create(c, json!({"KeyId": key, "GranteePrincipal": format!("arn:aws:sts::{ACCOUNT}:assumed-role/app/s1"), "Operations": ["Encrypt"]})).await;
    create(c, json!({"KeyId": key, "GranteePrincipal": "logs.us-east-1.amazonaws.com", "Operations": ["Encrypt"]})).await;

    // ListGrants / ListRetirableGrants.
    for (op, body, ty, what) in [
        ("ListGrants", json!({}), "ValidationException", "no key"),
        (
            "ListGrants",
            json!({"KeyId": key, "Limit": 0}),
            "ValidationException",
            "limit 0",
        ),
        (
            "ListGrants",
            json!({"KeyId": key, "Limit": 101}),
            "ValidationException",
            "limit 101",
        ),
        (
            "ListGrants",
            json!({"KeyId": key, "Marker": "bogus"}),
            "InvalidMarkerException",
            "marker",
        ),
        (
            "ListGrants",
            json!({"KeyId": key, "GrantId": "nothex"}),
            "InvalidGrantIdException",
            "grant id",
        ),
        (
            "ListRetirableGrants",
            json!({}),
            "ValidationException",
            "no principal",
        ),
        (
            "ListRetirableGrants",
            json!({"RetiringPrincipal": user("a"), "Limit": 101}),
            "ValidationException",
            "limit",
        ),
        (
            "ListRetirableGrants",
            json!({"RetiringPrincipal": user("a"), "Marker": "bogus"}),
            "InvalidMarkerException",
            "marker",
        ),
    ] {
        expect(&c.call(op, body).await, ty, &format!("{op}: {what}"));
    }
    let l = c
        .ok(
            "ListGrants",
            json!({"KeyId": key, "GrantId": "0".repeat(64)}),
        )
        .await;
    assert_eq!(l["Grants"], json!([]));
    // RetireGrant / RevokeGrant.
    for (op, body, ty, what) in [
        (
            "RetireGrant",
            json!({}),
            "ValidationException",
            "nothing named",
        ),
        (
            "RetireGrant",
            json!({"KeyId": key}),
            "ValidationException",
            "no grant id",
        ),
        (
            "RetireGrant",
            json!({"GrantToken": "garbage"}),
            "InvalidGrantTokenException",
            "garbage token",
        ),
        (
            "RetireGrant",
            json!({"GrantToken": "x".repeat(8193)}),
            "ValidationException",
            "long token",
        ),
        (
            "RetireGrant",
            json!({"KeyId": key, "GrantId": "nothex"}),
            "InvalidGrantIdException",
            "bad id",
        ),
        (
            "RetireGrant",
            json!({"KeyId": key, "GrantId": "a".repeat(64)}),
            "NotFoundException",
            "unknown id",
        ),
        (
            "RevokeGrant",
            json!({"KeyId": key}),
            "ValidationException",
            "no grant id",
        ),
        (
            "RevokeGrant",
            json!({"GrantId": "a".repeat(64)}),
            "ValidationException",
            "no key",
        ),
        (
            "RevokeGrant",
            json!({"KeyId": key, "GrantId": "nothex"}),
            "InvalidGrantIdException",
            "bad id",
        ),
        (
            "RevokeGrant",
            json!({"KeyId": key, "GrantId": "a".repeat(64)}),
            "NotFoundException",
            "unknown id",
        ),
    ] {
        expect(&c.call(op, body).await, ty, &format!("{op}: {what}"));
    }
    // Garbage tokens on the cryptographic operations.
    let ct = c
        .ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))
        .await["CiphertextBlob"]
        .clone();
    for (op, body) in [
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "GrantTokens": ["garbage"]}),
        ),
        (
            "Decrypt",
            json!({"CiphertextBlob": ct, "GrantTokens": ["AQ"]}),
        ),
        (
            "DescribeKey",
            json!({"KeyId": key, "GrantTokens": ["x".repeat(8192)]}),
        ),
    ] {
        expect(&c.call(op, body).await, "InvalidGrantTokenException", op);
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let s = service().await;
    let c = &s.client;
    let key = c.create_key(json!({})).await;
    let r = c
        .call(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": user("a"), "Operations": ["Encrypt"], "DryRun": true}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_type()),
        (412, "DryRunOperationException"),
        "{}",
        r.body
    );
    // A request that would fail answers its error, not DryRun.
    let r = c
        .call(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": user("a"), "Operations": ["Sign"], "DryRun": true}),
        )
        .await;
    expect(&r, "ValidationException", "dry run of a bad grant");
    let l = c.ok("ListGrants", json!({"KeyId": key})).await;
    assert_eq!(l["Grants"], json!([]));
    let (id, token) = create(
        c,
        json!({"KeyId": key, "GranteePrincipal": user("a"), "Operations": ["Encrypt"]}),
    )
    .await;
    for (op, body) in [
        ("RetireGrant", json!({"GrantToken": token, "DryRun": true})),
        (
            "RevokeGrant",
            json!({"KeyId": key, "GrantId": id, "DryRun": true}),
        ),
    ] {
        let r = c.call(op, body).await;
        assert_eq!(
            (r.status, r.error_type()),
            (412, "DryRunOperationException"),
            "{op}: {}",
            r.body
        );
    }
    let l = c.ok("ListGrants", json!({"KeyId": key})).await;
    assert_eq!(ids(&l), [id]);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_survive_a_restart_and_go_with_their_key() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-01-01 00:00:00 UTC),
    ));
    let s = service_with(clock.clone()).await;
    let c = &s.client;
    let key = c.create_key(json!({})).await;
    let keep = c.create_key(json!({})).await;
    let (gone, gone_token) = create(
        c,
        json!({"KeyId": key, "GranteePrincipal": user("a"), "RetiringPrincipal": user("r"), "Operations": ["Encrypt"]}),
    )
    .await;
    let (kept, kept_token) = create(
        c,
        json!({"KeyId": keep, "GranteePrincipal": user("a"), "RetiringPrincipal": user("r"), "Operations": ["Decrypt"], "Name": "n"}),
    )
    .await;
    // Pending deletion: no new grant; the existing ones are still listed.
    c.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .await;
    let r = c
        .call(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": user("a"), "Operations": ["Encrypt"]}),
        )
        .await;
    expect(
        &r,
        "KMSInvalidStateException",
        "grant on a key pending deletion",
    );
    assert_eq!(
        ids(&c.ok("ListGrants", json!({"KeyId": key})).await),
        [gone.clone()]
    );

    // A restart: grants, their tokens and the idempotent Name survive.
    s.running.stop().await;
    let (running, c) = start_on(&s.tokens, clock.clone()).await;
    assert_eq!(
        ids(&c.ok("ListGrants", json!({"KeyId": keep})).await),
        [kept.clone()]
    );
    assert_eq!(
        ids(&c.ok("ListGrants", json!({"KeyId": key})).await),
        [gone.clone()]
    );
    c.ok(
        "Encrypt",
        json!({"KeyId": keep, "Plaintext": b64(b"x"), "GrantTokens": [kept_token, gone_token]}),
    )
    .await;
    let (again, _) = create(
        &c,
        json!({"KeyId": keep, "GranteePrincipal": user("a"), "RetiringPrincipal": user("r"), "Operations": ["Decrypt"], "Name": "n"}),
    )
    .await;
    assert_eq!(again, kept);

    // The key is destroyed: its grants go with it (listings, and a restart's reload).
    clock.advance(7 * DAY + Duration::from_secs(1));
    running.kms.maintenance().await.unwrap();
    let l = c
        .ok(
            "ListRetirableGrants",
            json!({"RetiringPrincipal": user("r")}),
        )
        .await;
    assert_eq!(ids(&l), [kept.clone()]);
    running.stop().await;
    let (running, c) = start_on(&s.tokens, clock).await;
    let l = c
        .ok(
            "ListRetirableGrants",
            json!({"RetiringPrincipal": user("r")}),
        )
        .await;
    assert_eq!(ids(&l), [kept]);
    running.stop().await;
}
