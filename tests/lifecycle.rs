//! Key lifecycle over HTTP with real SoftHSM2 tokens: the key-state table for every
//! operation that exists, scheduled deletion that really destroys the key objects on
//! both tokens (also when one token is missing during the due pass), a schedule that
//! survives a SIGKILL of the real binary, tags, AWS managed keys, and pagination.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::clock::ManualClock;
use hsm_kms::hsm::{HsmError, NodeState};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

fn start_time() -> time::OffsetDateTime {
    time::macros::datetime!(2026-01-01 00:00:00 UTC)
}

async fn key(c: &Client) -> String {
    c.ok("CreateKey", json!({"Description": "t"})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn arn(id: &str) -> String {
    format!("arn:aws:kms:us-east-1:111122223333:key/{id}")
}

fn obj(id: &str) -> Vec<u8> {
    format!("kms/{id}/1").into_bytes()
}

#[track_caller]
fn expect(r: &Reply, ty: &str, what: &str) {
    assert_eq!((r.status, r.error_type()), (400, ty), "{what}: {}", r.body);
    assert!(r.body["message"].is_string(), "{what}: {}", r.body);
}

fn epoch(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

/// Every operation that takes the key, answered as the AWS key-state table says for a
/// key in `state` (Disabled or PendingDeletion).
async fn check_state_row(
    c: &Client,
    id: &str,
    alias: &str,
    blob: &Value,
    other: &str,
    state: &str,
) {
    let crypto = if state == "Disabled" {
        "DisabledException"
    } else {
        "KMSInvalidStateException"
    };
    let pt = b64(b"x");
    for (op, body) in [
        ("Encrypt", json!({"KeyId": id, "Plaintext": pt})),
        ("Encrypt", json!({"KeyId": alias, "Plaintext": pt})),
        ("Decrypt", json!({"CiphertextBlob": blob})),
        (
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "DestinationKeyId": other}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": id, "KeySpec": "AES_256"}),
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": alias, "NumberOfBytes": 16}),
        ),
    ] {
        expect(&c.call(op, body).await, crypto, &format!("{state}: {op}"));
    }
    // ReEncrypt into the key (source usable).
    let ob = c
        .ok("Encrypt", json!({"KeyId": other, "Plaintext": pt}))
        .await["CiphertextBlob"]
        .clone();
    expect(
        &c.call(
            "ReEncrypt",
            json!({"CiphertextBlob": ob, "DestinationKeyId": id}),
        )
        .await,
        crypto,
        &format!("{state}: ReEncrypt to it"),
    );
    // DescribeKey, ListKeys, ListAliases, ListResourceTags work in every state.
    let d = c.ok("DescribeKey", json!({"KeyId": alias})).await;
    assert_eq!(d["KeyMetadata"]["KeyState"], state);
    assert_eq!(d["KeyMetadata"]["Enabled"], false);
    let l = c.ok("ListKeys", json!({})).await;
    assert!(l["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["KeyId"] == id));
    let la = c.ok("ListAliases", json!({"KeyId": id})).await;
    assert_eq!(la["Aliases"][0]["AliasName"], alias);
    c.ok("ListResourceTags", json!({"KeyId": id})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_state_table_schedule_cancel_enable_disable() {
    let clock = ManualClock::new(start_time());
    let s = service_with(Arc::new(clock.clone())).await;
    let c = &s.client;
    let id = key(c).await;
    let other = key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": id}),
    )
    .await;
    let blob = c
        .ok("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"kept")}))
        .await["CiphertextBlob"]
        .clone();

    // ---- Disabled row.
    c.ok("DisableKey", json!({"KeyId": id})).await;
    check_state_row(c, &id, "alias/app", &blob, &other, "Disabled").await;
    // Management works on a disabled key.
    c.ok(
        "UpdateKeyDescription",
        json!({"KeyId": id, "Description": "off"}),
    )
    .await;
    c.ok(
        "TagResource",
        json!({"KeyId": id, "Tags": [{"TagKey": "k", "TagValue": "v"}]}),
    )
    .await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/second", "TargetKeyId": id}),
    )
    .await;
    c.ok("DeleteAlias", json!({"AliasName": "alias/second"}))
        .await;
    c.ok("DisableKey", json!({"KeyId": id})).await; // idempotent
    expect(
        &c.call("CancelKeyDeletion", json!({"KeyId": id})).await,
        "KMSInvalidStateException",
        "cancel on a disabled key",
    );

    for a in ["alias/zz-moving", "alias/zz-gone"] {
        c.ok("CreateAlias", json!({"AliasName": a, "TargetKeyId": id}))
            .await;
    }

    // ---- ScheduleKeyDeletion from Disabled, window 7.
    clock.advance(Duration::from_secs(3600));
    let now = epoch(start_time()) + 3600.0;
    let r = c
        .ok(
            "ScheduleKeyDeletion",
            json!({"KeyId": id, "PendingWindowInDays": 7}),
        )
        .await;
    assert_eq!(r["KeyId"], arn(&id));
    assert_eq!(r["KeyState"], "PendingDeletion");
    assert_eq!(r["PendingWindowInDays"], 7);
    assert_eq!(r["DeletionDate"].as_f64().unwrap(), now + 7.0 * 86_400.0);
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "PendingDeletion");
    assert_eq!(md["DeletionDate"].as_f64().unwrap(), now + 7.0 * 86_400.0);
    assert_eq!(md["PendingDeletionWindowInDays"], 7);

    // ---- PendingDeletion row.
    check_state_row(c, &id, "alias/app", &blob, &other, "PendingDeletion").await;
    for (op, body) in [
        ("EnableKey", json!({"KeyId": id})),
        ("DisableKey", json!({"KeyId": id})),
        (
            "UpdateKeyDescription",
            json!({"KeyId": id, "Description": "d"}),
        ),
        ("ScheduleKeyDeletion", json!({"KeyId": id})),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [{"TagKey": "a", "TagValue": "b"}]}),
        ),
        ("UntagResource", json!({"KeyId": id, "TagKeys": ["k"]})),
        (
            "CreateAlias",
            json!({"AliasName": "alias/new", "TargetKeyId": id}),
        ),
        (
            "UpdateAlias",
            json!({"AliasName": "alias/app", "TargetKeyId": id}),
        ),
    ] {
        expect(
            &c.call(op, body).await,
            "KMSInvalidStateException",
            &format!("PendingDeletion: {op}"),
        );
    }
    // An alias of a key pending deletion may be moved to another key, or deleted.
    c.ok(
        "UpdateAlias",
        json!({"AliasName": "alias/zz-moving", "TargetKeyId": other}),
    )
    .await;
    c.ok("DeleteAlias", json!({"AliasName": "alias/zz-gone"}))
        .await;
    let la = c.ok("ListAliases", json!({"KeyId": id})).await;
    assert_eq!(la["Aliases"].as_array().unwrap().len(), 1, "{la}");
    let d = c
        .ok("DescribeKey", json!({"KeyId": "alias/zz-moving"}))
        .await;
    assert_eq!(d["KeyMetadata"]["KeyId"], other.as_str());
    // Nothing was destroyed: both HSMs still hold the object.
    let cl = &s.running.cluster;
    assert!(cl.hsm_holds("a", &obj(&id)) && cl.hsm_holds("b", &obj(&id)));
    // A pass before the date destroys nothing.
    clock.advance(6 * DAY);
    s.running.kms.maintenance().await.unwrap();
    assert!(cl.hsm_holds("a", &obj(&id)) && cl.hsm_holds("b", &obj(&id)));

    // ---- CancelKeyDeletion → Disabled; the old ciphertext works again once enabled.
    let r = c.ok("CancelKeyDeletion", json!({"KeyId": arn(&id)})).await;
    assert_eq!(r, json!({"KeyId": arn(&id)}));
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "Disabled");
    assert!(md.get("DeletionDate").is_none() && md.get("PendingDeletionWindowInDays").is_none());
    expect(
        &c.call("CancelKeyDeletion", json!({"KeyId": id})).await,
        "KMSInvalidStateException",
        "cancel twice",
    );
    expect(
        &c.call("Decrypt", json!({"CiphertextBlob": blob})).await,
        "DisabledException",
        "after cancel",
    );
    c.ok("EnableKey", json!({"KeyId": id})).await;
    let d = c.ok("Decrypt", json!({"CiphertextBlob": blob})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"kept");
    // The date that passed while it was pending means nothing now.
    clock.advance(30 * DAY);
    s.running.kms.maintenance().await.unwrap();
    c.ok(
        "Encrypt",
        json!({"KeyId": "alias/app", "Plaintext": b64(b"y")}),
    )
    .await;

    // ---- Default window: 30 days, from an Enabled key.
    let now = epoch(clock_now(&clock));
    let r = c.ok("ScheduleKeyDeletion", json!({"KeyId": other})).await;
    assert_eq!(r["PendingWindowInDays"], 30);
    assert_eq!(r["DeletionDate"].as_f64().unwrap(), now + 30.0 * 86_400.0);
    s.running.stop().await;
}

fn clock_now(c: &ManualClock) -> time::OffsetDateTime {
    use hsm_kms::clock::Clock;
    c.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_and_cancel_reject_bad_input_with_aws_errors() {
    let s = service().await;
    let c = &s.client;
    let id = key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/x", "TargetKeyId": id}),
    )
    .await;
    let none = "00000000-0000-0000-0000-000000000000";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"KeyId": id, "PendingWindowInDays": 6}),
            "ScheduleKeyDeletion",
            "ValidationException",
        ),
        (
            json!({"KeyId": id, "PendingWindowInDays": 31}),
            "ScheduleKeyDeletion",
            "ValidationException",
        ),
        (
            json!({"KeyId": id, "PendingWindowInDays": 0}),
            "ScheduleKeyDeletion",
            "ValidationException",
        ),
        (
            json!({"KeyId": id, "PendingWindowInDays": -3}),
            "ScheduleKeyDeletion",
            "ValidationException",
        ),
        (
            json!({"KeyId": id, "PendingWindowInDays": "7"}),
            "ScheduleKeyDeletion",
            "SerializationException",
        ),
        (
            json!({"KeyId": id, "PendingWindowInDays": 7.5}),
            "ScheduleKeyDeletion",
            "SerializationException",
        ),
        (json!({}), "ScheduleKeyDeletion", "ValidationException"),
        (
            json!({"KeyId": 7}),
            "ScheduleKeyDeletion",
            "SerializationException",
        ),
        (
            json!({"KeyId": none}),
            "ScheduleKeyDeletion",
            "NotFoundException",
        ),
        (
            json!({"KeyId": "alias/x"}),
            "ScheduleKeyDeletion",
            "NotFoundException",
        ),
        (
            json!({"KeyId": "not-a-key"}),
            "ScheduleKeyDeletion",
            "NotFoundException",
        ),
        (json!({}), "CancelKeyDeletion", "ValidationException"),
        (
            json!({"KeyId": none}),
            "CancelKeyDeletion",
            "NotFoundException",
        ),
        (
            json!({"KeyId": id}),
            "CancelKeyDeletion",
            "KMSInvalidStateException",
        ),
    ];
    for (i, (body, op, ty)) in cases.into_iter().enumerate() {
        let r = c.call(op, body).await;
        expect(&r, ty, &format!("case {i} {op}"));
    }
    // None of those changed the key.
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await;
    assert_eq!(md["KeyMetadata"]["KeyState"], "Enabled");
    s.running.stop().await;
}

/// After a fresh connect over the same tokens (cache warmed by C_FindObjects), no HSM
/// has any of `objects`; an operation on each fails with KeyMissing on each HSM.
async fn gone_from_both_tokens_after_reconnect(t: &Tokens, objects: &[Vec<u8>]) {
    let fresh = connect(t, fast_options());
    for o in objects {
        for hsm in ["a", "b"] {
            assert!(
                !fresh.hsm_holds(hsm, o),
                "{hsm} still holds {o:?} after reconnect"
            );
            let e = fresh
                .encrypt_on(hsm, o, vec![], b"x".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(e, HsmError::KeyMissing { .. }), "{hsm}: {e}");
        }
    }
    fresh.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_deletion_destroys_the_key_on_both_hsms() {
    let clock = ManualClock::new(start_time());
    let s = service_with(Arc::new(clock.clone())).await;
    let c = &s.client;
    let id = key(c).await;
    let keep = key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/doomed", "TargetKeyId": id}),
    )
    .await;
    let blob = c
        .ok("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"bye")}))
        .await["CiphertextBlob"]
        .clone();
    let keep_blob = c
        .ok("Encrypt", json!({"KeyId": keep, "Plaintext": b64(b"stay")}))
        .await["CiphertextBlob"]
        .clone();
    c.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    )
    .await;
    let cl = s.running.cluster.clone();
    // One second before the date: nothing happens.
    clock.advance(7 * DAY - Duration::from_secs(1));
    s.running.kms.maintenance().await.unwrap();
    assert!(cl.hsm_holds("a", &obj(&id)) && cl.hsm_holds("b", &obj(&id)));
    c.ok("DescribeKey", json!({"KeyId": id})).await;
    // At the date: destroyed on every HSM, metadata and aliases gone.
    clock.advance(Duration::from_secs(1));
    s.running.kms.maintenance().await.unwrap();
    for hsm in ["a", "b"] {
        assert!(
            !cl.hsm_holds(hsm, &obj(&id)),
            "{hsm} still caches the handle"
        );
        let e = cl
            .encrypt_on(hsm, &obj(&id), vec![], b"x".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, HsmError::KeyMissing { .. }), "{hsm}: {e}");
    }
    expect(
        &c.call("DescribeKey", json!({"KeyId": id})).await,
        "NotFoundException",
        "describe destroyed key",
    );
    expect(
        &c.call("DescribeKey", json!({"KeyId": "alias/doomed"}))
            .await,
        "NotFoundException",
        "alias of destroyed key",
    );
    expect(
        &c.call("CancelKeyDeletion", json!({"KeyId": id})).await,
        "NotFoundException",
        "cancel destroyed key",
    );
    let r = c.call("Decrypt", json!({"CiphertextBlob": blob})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let keys = c.ok("ListKeys", json!({})).await;
    let ids: Vec<&str> = keys["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![keep.as_str()]);
    let aliases = c.ok("ListAliases", json!({})).await;
    assert!(
        aliases["Aliases"].as_array().unwrap().is_empty(),
        "{aliases}"
    );
    // The other key is untouched.
    let d = c.ok("Decrypt", json!({"CiphertextBlob": keep_blob})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"stay");
    // A later pass is a no-op.
    s.running.kms.maintenance().await.unwrap();
    s.running.stop().await;
    gone_from_both_tokens_after_reconnect(&s.tokens, &[obj(&id)]).await;
    // The kept key survived on both tokens.
    let fresh = connect(&s.tokens, fast_options());
    assert!(fresh.hsm_holds("a", &obj(&keep)) && fresh.hsm_holds("b", &obj(&keep)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destruction_with_an_hsm_missing_is_retried_and_the_key_never_returns() {
    let clock = ManualClock::new(start_time());
    let s = service_with(Arc::new(clock.clone())).await;
    let c = &s.client;
    let id = key(c).await;
    c.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    )
    .await;
    let cl = s.running.cluster.clone();
    // HSM "a" disappears (token folder moved away) before the due pass.
    let dir = s.tokens.hsms[0].token_dir.clone();
    let moved = dir.with_extension("away");
    std::fs::rename(&dir, &moved).unwrap();
    clock.advance(7 * DAY + Duration::from_secs(5));
    let r = s.running.kms.maintenance().await;
    assert!(
        r.is_err(),
        "the due pass must report the incomplete destruction"
    );
    // Destroyed where possible; the key stays PendingDeletion, unusable, not cancellable.
    assert!(!cl.hsm_holds("b", &obj(&id)));
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await;
    assert_eq!(md["KeyMetadata"]["KeyState"], "PendingDeletion");
    expect(
        &c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")}))
            .await,
        "KMSInvalidStateException",
        "encrypt while destruction is pending",
    );
    expect(
        &c.call("CancelKeyDeletion", json!({"KeyId": id})).await,
        "KMSInvalidStateException",
        "cancel after the date",
    );
    assert!(
        eventually(10, || cl.health()[0].state == NodeState::Down).await,
        "a never marked down: {:?}",
        cl.health()
    );
    // Another pass while "a" is still gone: still pending.
    assert!(s.running.kms.maintenance().await.is_err());
    c.ok("DescribeKey", json!({"KeyId": id})).await;
    // "a" comes back holding the key; re-sync must not copy it back into "b".
    std::fs::rename(&moved, &dir).unwrap();
    assert!(
        eventually(20, || cl.health()[0].state == NodeState::Healthy).await,
        "a never recovered: {:?}",
        cl.health()
    );
    assert!(cl.hsm_holds("a", &obj(&id)), "a's copy survived the outage");
    s.running.kms.resync_hsms().await.unwrap();
    assert!(
        !cl.hsm_holds("b", &obj(&id)),
        "re-sync resurrected a doomed key"
    );
    // The next pass completes the destruction.
    s.running.kms.maintenance().await.unwrap();
    for hsm in ["a", "b"] {
        assert!(!cl.hsm_holds(hsm, &obj(&id)));
        let e = cl
            .encrypt_on(hsm, &obj(&id), vec![], b"x".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, HsmError::KeyMissing { .. }), "{hsm}: {e}");
    }
    expect(
        &c.call("DescribeKey", json!({"KeyId": id})).await,
        "NotFoundException",
        "describe after completed destruction",
    );
    s.running.stop().await;
    gone_from_both_tokens_after_reconnect(&s.tokens, &[obj(&id)]).await;
}

fn tag(k: &str, v: &str) -> Value {
    json!({"TagKey": k, "TagValue": v})
}

async fn all_tags(c: &Client, id: &str, limit: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = json!({"KeyId": id, "Limit": limit});
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let page = c.ok("ListResourceTags", req).await;
        let tags = page["Tags"].as_array().unwrap();
        assert!(tags.len() <= limit as usize);
        out.extend(tags.iter().map(|t| {
            (
                t["TagKey"].as_str().unwrap().to_string(),
                t["TagValue"].as_str().unwrap().to_string(),
            )
        }));
        if page["Truncated"] == true {
            marker = Some(page["NextMarker"].as_str().unwrap().to_string());
        } else {
            assert!(page.get("NextMarker").is_none());
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_add_overwrite_remove_paginate_and_limits() {
    let s = service().await;
    let c = &s.client;
    let id = c
        .ok(
            "CreateKey",
            json!({"Tags": [tag("team", "lab"), tag("env", "dev")]}),
        )
        .await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let l = c.ok("ListResourceTags", json!({"KeyId": id})).await;
    assert_eq!(
        l,
        json!({"Tags": [tag("env", "dev"), tag("team", "lab")], "Truncated": false})
    );
    // Add one, overwrite one (by ARN), empty value allowed.
    let r = c
        .ok(
            "TagResource",
            json!({"KeyId": arn(&id), "Tags": [tag("env", "prod"), tag("cost", "")]}),
        )
        .await;
    assert_eq!(r, json!({}));
    assert_eq!(
        all_tags(c, &id, 50).await,
        vec![
            ("cost".into(), "".into()),
            ("env".into(), "prod".into()),
            ("team".into(), "lab".into())
        ]
    );
    // Untag: removes named keys; unknown keys are ignored.
    c.ok(
        "UntagResource",
        json!({"KeyId": id, "TagKeys": ["team", "nope"]}),
    )
    .await;
    assert_eq!(all_tags(c, &id, 50).await.len(), 2);
    // Up to 50 tags; pagination returns each once, in key order.
    let many: Vec<Value> = (0..48).map(|i| tag(&format!("k{i:02}"), "v")).collect();
    c.ok("TagResource", json!({"KeyId": id, "Tags": many}))
        .await;
    for limit in [1, 7, 50] {
        let got = all_tags(c, &id, limit).await;
        assert_eq!(got.len(), 50, "limit {limit}");
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
    }
    // The 51st tag is over the quota; overwriting an existing one is not.
    expect(
        &c.call(
            "TagResource",
            json!({"KeyId": id, "Tags": [tag("one-more", "v")]}),
        )
        .await,
        "LimitExceededException",
        "51st tag",
    );
    c.ok(
        "TagResource",
        json!({"KeyId": id, "Tags": [tag("k00", "w")]}),
    )
    .await;
    assert_eq!(all_tags(c, &id, 50).await.len(), 50);
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [tag("aws:x", "v")]}),
            "TagException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [tag("AWS:x", "v")]}),
            "TagException",
        ),
        (
            "UntagResource",
            json!({"KeyId": id, "TagKeys": ["aws:x"]}),
            "TagException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [tag(&long(129), "v")]}),
            "ValidationException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [tag("", "v")]}),
            "ValidationException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [tag("k", &long(257))]}),
            "ValidationException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [{"TagKey": "k"}]}),
            "ValidationException",
        ),
        ("TagResource", json!({"KeyId": id}), "ValidationException"),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": "k=v"}),
            "SerializationException",
        ),
        (
            "TagResource",
            json!({"KeyId": id, "Tags": [{"TagKey": 1, "TagValue": "v"}]}),
            "SerializationException",
        ),
        (
            "TagResource",
            json!({"Tags": [tag("k", "v")]}),
            "ValidationException",
        ),
        (
            "TagResource",
            json!({"KeyId": "00000000-0000-0000-0000-000000000000", "Tags": [tag("k", "v")]}),
            "NotFoundException",
        ),
        ("UntagResource", json!({"KeyId": id}), "ValidationException"),
        (
            "UntagResource",
            json!({"KeyId": id, "TagKeys": [""]}),
            "ValidationException",
        ),
        (
            "UntagResource",
            json!({"KeyId": id, "TagKeys": [long(129)]}),
            "ValidationException",
        ),
        (
            "UntagResource",
            json!({"KeyId": id, "TagKeys": [5]}),
            "SerializationException",
        ),
        (
            "ListResourceTags",
            json!({"KeyId": id, "Limit": 0}),
            "ValidationException",
        ),
        (
            "ListResourceTags",
            json!({"KeyId": id, "Limit": 51}),
            "ValidationException",
        ),
        (
            "ListResourceTags",
            json!({"KeyId": id, "Marker": "bm90LWEtbWFya2Vy"}),
            "InvalidMarkerException",
        ),
        (
            "ListResourceTags",
            json!({"KeyId": id, "Marker": ""}),
            "ValidationException",
        ),
        ("ListResourceTags", json!({}), "ValidationException"),
        (
            "ListResourceTags",
            json!({"KeyId": "00000000-0000-0000-0000-000000000000"}),
            "NotFoundException",
        ),
    ];
    for (i, (op, body, ty)) in cases.into_iter().enumerate() {
        expect(&c.call(op, body).await, ty, &format!("case {i} {op}"));
    }
    // No refused request changed anything.
    let got = all_tags(c, &id, 50).await;
    assert_eq!(got.len(), 50);
    assert!(got.contains(&("k00".into(), "w".into())));
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_managed_keys_are_created_on_first_use_and_cannot_be_managed() {
    let s = service().await;
    let c = &s.client;
    // DescribeKey of a predefined alias creates the key.
    let md = c.ok("DescribeKey", json!({"KeyId": "alias/aws/s3"})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyManager"], "AWS");
    assert_eq!(md["KeyState"], "Enabled");
    assert_eq!(md["KeySpec"], "SYMMETRIC_DEFAULT");
    let s3 = md["KeyId"].as_str().unwrap().to_string();
    let cl = &s.running.cluster;
    assert!(cl.hsm_holds("a", &obj(&s3)) && cl.hsm_holds("b", &obj(&s3)));
    // The same key on every later use, by name or alias ARN.
    let again = c
        .ok(
            "DescribeKey",
            json!({"KeyId": "arn:aws:kms:us-east-1:111122223333:alias/aws/s3"}),
        )
        .await;
    assert_eq!(again["KeyMetadata"]["KeyId"], s3.as_str());
    // Its fixed policy allows cryptography only through its service (`kms:ViaService`),
    // which no direct caller is: a direct Encrypt is refused, as in AWS.
    let e = c
        .call(
            "Encrypt",
            json!({"KeyId": "alias/aws/s3", "Plaintext": b64(b"managed")}),
        )
        .await;
    expect(&e, "AccessDeniedException", "direct Encrypt");
    assert!(
        e.body["message"].as_str().unwrap().contains(&arn(&s3)),
        "{}",
        e.body
    );
    let p = c.ok("GetKeyPolicy", json!({"KeyId": s3})).await;
    assert!(
        p["Policy"]
            .as_str()
            .unwrap()
            .contains("s3.us-east-1.amazonaws.com"),
        "{p}"
    );
    // Encrypt / GenerateDataKey also create on first use (and are then refused).
    expect(
        &c.call(
            "GenerateDataKey",
            json!({"KeyId": "alias/aws/ebs", "KeySpec": "AES_256"}),
        )
        .await,
        "AccessDeniedException",
        "direct GenerateDataKey",
    );
    let ebs = c.ok("DescribeKey", json!({"KeyId": "alias/aws/ebs"})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(ebs, s3);
    expect(
        &c.call(
            "Encrypt",
            json!({"KeyId": "alias/aws/lambda", "Plaintext": b64(b"x")}),
        )
        .await,
        "AccessDeniedException",
        "direct Encrypt",
    );
    let md = c
        .ok("DescribeKey", json!({"KeyId": "alias/aws/lambda"}))
        .await;
    assert_eq!(md["KeyMetadata"]["KeyManager"], "AWS");
    // Listed with their aliases.
    let l = c.ok("ListAliases", json!({})).await;
    let names: Vec<(&str, &str)> = l["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["AliasName"].as_str().unwrap(),
                a["TargetKeyId"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(names.contains(&("alias/aws/s3", s3.as_str())), "{l}");
    assert!(names.contains(&("alias/aws/ebs", ebs.as_str())), "{l}");
    assert_eq!(
        c.ok("ListKeys", json!({})).await["Keys"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Not disablable, not deletable, not changeable.
    for (op, body) in [
        ("DisableKey", json!({"KeyId": s3})),
        ("EnableKey", json!({"KeyId": s3})),
        (
            "ScheduleKeyDeletion",
            json!({"KeyId": s3, "PendingWindowInDays": 7}),
        ),
        ("CancelKeyDeletion", json!({"KeyId": s3})),
        (
            "UpdateKeyDescription",
            json!({"KeyId": s3, "Description": "mine"}),
        ),
        ("TagResource", json!({"KeyId": s3, "Tags": [tag("k", "v")]})),
        ("UntagResource", json!({"KeyId": s3, "TagKeys": ["k"]})),
    ] {
        expect(&c.call(op, body).await, "AccessDeniedException", op);
    }
    // Any user attempt at an alias/aws/… alias is NotAuthorizedException.
    let mine = key(c).await;
    for (op, body) in [
        (
            "CreateAlias",
            json!({"AliasName": "alias/aws/mine", "TargetKeyId": mine}),
        ),
        (
            "UpdateAlias",
            json!({"AliasName": "alias/aws/s3", "TargetKeyId": mine}),
        ),
        ("DeleteAlias", json!({"AliasName": "alias/aws/s3"})),
    ] {
        expect(&c.call(op, body).await, "NotAuthorizedException", op);
    }
    // Still enabled, still the same key, tags still readable (none).
    let md = c.ok("DescribeKey", json!({"KeyId": "alias/aws/s3"})).await["KeyMetadata"].clone();
    assert_eq!(
        (
            md["KeyId"].as_str().unwrap(),
            md["KeyState"].as_str().unwrap()
        ),
        (s3.as_str(), "Enabled")
    );
    let t = c.ok("ListResourceTags", json!({"KeyId": s3})).await;
    assert_eq!(t["Tags"], json!([]));
    // Concurrent first uses create exactly one key.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.spawn(async move {
            c.ok("DescribeKey", json!({"KeyId": "alias/aws/sqs"})).await["KeyMetadata"]["KeyId"]
                .as_str()
                .unwrap()
                .to_string()
        });
    }
    let mut used = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        used.insert(r.unwrap());
    }
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(
        c.ok("ListKeys", json!({})).await["Keys"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // A malformed reserved alias is not created.
    expect(
        &c.call("DescribeKey", json!({"KeyId": "alias/aws/"})).await,
        "NotFoundException",
        "empty service",
    );
    s.running.stop().await;
}

// ---------------------------------------------------------------- kill -9 restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_deletion_survives_sigkill_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    real_binary::setup(dir.path());
    let (child, url) = real_binary::start(dir.path());
    let mut child = real_binary::Guard(child);
    let c = Client::new(url, real_binary::credential(dir.path()));
    let id = key(&c).await;
    c.ok(
        "TagResource",
        json!({"KeyId": id, "Tags": [tag("keep", "me")]}),
    )
    .await;
    let blob = c
        .ok(
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(b"pending")}),
        )
        .await["CiphertextBlob"]
        .clone();
    let sched = c
        .ok(
            "ScheduleKeyDeletion",
            json!({"KeyId": id, "PendingWindowInDays": 9}),
        )
        .await;
    child.0.kill().unwrap(); // SIGKILL right after the acknowledgement
    child.0.wait().unwrap();
    let (c2, url) = real_binary::start(dir.path());
    child = real_binary::Guard(c2);
    let c = Client::new(url, real_binary::credential(dir.path()));
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "PendingDeletion");
    assert_eq!(md["DeletionDate"], sched["DeletionDate"]);
    assert_eq!(md["PendingDeletionWindowInDays"], 9);
    expect(
        &c.call("Decrypt", json!({"CiphertextBlob": blob})).await,
        "KMSInvalidStateException",
        "decrypt after restart",
    );
    let t = c.ok("ListResourceTags", json!({"KeyId": id})).await;
    assert_eq!(t["Tags"], json!([tag("keep", "me")]));
    // Cancel, SIGKILL again: the cancellation is durable too.
    c.ok("CancelKeyDeletion", json!({"KeyId": id})).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let (c3, url) = real_binary::start(dir.path());
    child = real_binary::Guard(c3);
    let c = Client::new(url, real_binary::credential(dir.path()));
    let md = c.ok("DescribeKey", json!({"KeyId": id})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "Disabled");
    c.ok("EnableKey", json!({"KeyId": id})).await;
    let d = c.ok("Decrypt", json!({"CiphertextBlob": blob})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"pending");
    real_binary::stop(&mut child.0);
}

// ---------------------------------------------------------------- pagination at scale

async fn list_all(
    c: &Client,
    op: &str,
    list: &str,
    field: &str,
    limit: Option<u32>,
) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut marker: Option<String> = None;
    loop {
        let mut req = json!({});
        if let Some(l) = limit {
            req["Limit"] = json!(l);
        }
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let page = c.ok(op, req).await;
        pages += 1;
        let items = page[list].as_array().unwrap();
        assert!(items.len() <= limit.unwrap_or(100) as usize);
        seen.extend(items.iter().map(|k| k[field].as_str().unwrap().to_string()));
        if page["Truncated"] == true {
            marker = Some(page["NextMarker"].as_str().unwrap().to_string());
        } else {
            assert!(page.get("NextMarker").is_none());
            return (seen, pages);
        }
    }
}

/// 2,000 real keys (each generated in one HSM and copied into the other), 2,000 aliases:
/// ListKeys and ListAliases return each exactly once at Limit 1000, the default 100, and 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_keys_and_aliases_paginate_over_2000_keys() {
    const N: usize = 2000;
    let s = service().await;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let c = s.client.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (w..N).step_by(8) {
                let id = key(&c).await;
                c.ok(
                    "CreateAlias",
                    json!({"AliasName": format!("alias/k{i:04}"), "TargetKeyId": id}),
                )
                .await;
                ids.push(id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    eprintln!("created {N} keys and aliases in {:?}", started.elapsed());
    assert_eq!(ids.len(), N);
    assert_eq!(s.running.kms.key_count(), N);
    ids.sort();
    let c = &s.client;
    for (limit, pages) in [(Some(1000), 2), (None, 20), (Some(7), N.div_ceil(7))] {
        for (op, list, field) in [
            ("ListKeys", "Keys", "KeyId"),
            ("ListAliases", "Aliases", "TargetKeyId"),
        ] {
            let (mut seen, n) = list_all(c, op, list, field, limit).await;
            assert_eq!(n, pages, "{op} {limit:?}: pages");
            seen.sort();
            assert_eq!(seen, ids, "{op} {limit:?}: every item exactly once");
        }
    }
    // Destroyed keys drop out of the listing.
    let gone = ids[0].clone();
    let r = c
        .ok(
            "ScheduleKeyDeletion",
            json!({"KeyId": gone, "PendingWindowInDays": 7}),
        )
        .await;
    assert_eq!(r["KeyState"], "PendingDeletion");
    let (seen, _) = list_all(c, "ListKeys", "Keys", "KeyId", Some(1000)).await;
    assert_eq!(seen.len(), N, "a key pending deletion is still listed");
    s.running.stop().await;
}

/// Rotation gives a key several backing objects (`kms/<id>/<version>`); destruction must
/// remove every one from every token. The second generation here is a real AES key made
/// in both tokens by the cluster and recorded in the key's stored document, as rotation
/// records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destruction_removes_every_backing_version_from_both_tokens() {
    use hsm_kms::store::MetadataStore;
    let clock = ManualClock::new(start_time());
    let s = service_with(Arc::new(clock.clone())).await;
    let id = key(&s.client).await;
    let v1 = obj(&id);
    let v2 = format!("kms/{id}/2").into_bytes();
    let cl = s.running.cluster.clone();
    cl.create_aes_key(&v2, "second generation").await.unwrap();
    assert!(cl.hsm_holds("a", &v2) && cl.hsm_holds("b", &v2));
    drop(cl);
    s.running.stop().await;
    {
        let store = hsm_kms::store::SqliteStore::open(&s.tokens.dir.path().join("metadata.sqlite"))
            .unwrap();
        let row = store.get_key(&id).unwrap().unwrap();
        let mut doc = row.doc.clone();
        doc["backing"].as_array_mut().unwrap().push(json!({
            "version": 2, "object_id": format!("kms/{id}/2"), "created": epoch(start_time())
        }));
        store.update_key(&id, row.version, &doc).unwrap();
    }
    let (running, c) = start_on(&s.tokens, Arc::new(clock.clone())).await;
    c.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    )
    .await;
    clock.advance(7 * DAY);
    running.kms.maintenance().await.unwrap();
    let cl = running.cluster.clone();
    for o in [&v1, &v2] {
        for hsm in ["a", "b"] {
            assert!(!cl.hsm_holds(hsm, o), "{hsm} holds {o:?}");
        }
    }
    expect(
        &c.call("DescribeKey", json!({"KeyId": id})).await,
        "NotFoundException",
        "describe destroyed key",
    );
    drop(cl);
    running.stop().await;
    gone_from_both_tokens_after_reconnect(&s.tokens, &[v1, v2]).await;
}
