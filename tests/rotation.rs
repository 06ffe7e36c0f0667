//! Key rotation over HTTP with SigV4, on an injected clock: automatic rotation after the
//! period (performed by the maintenance pass), on demand (limit, conflict), ten rotations
//! with every generation still decrypting and ReEncrypt moving to the current one, every
//! backing key in both HSMs, a rotation while one HSM is gone and its completion after
//! recovery, the real binary restarted between rotations, and manual rotation by
//! re-pointing an alias (the README recipe).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::real_binary::{credential, start};
use common::*;
use hsm_kms::clock::ManualClock;
use hsm_kms::hsm::NodeState;
use hsm_kms::kms::ciphertext::Blob;
use serde_json::{json, Value};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600;
const DAY_S: f64 = 86_400.0;

async fn clocked() -> (Service, ManualClock) {
    let clock = ManualClock::new(time::OffsetDateTime::from_unix_timestamp(T0).unwrap());
    let s = service_with(Arc::new(clock.clone())).await;
    (s, clock)
}

async fn new_key(c: &Client) -> String {
    c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn encrypt(c: &Client, key: &str, msg: &str) -> Value {
    c.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(msg.as_bytes())}),
    )
    .await["CiphertextBlob"]
        .clone()
}

async fn decrypt(c: &Client, blob: &Value) -> (String, String) {
    let d = c.ok("Decrypt", json!({"CiphertextBlob": blob})).await;
    (
        String::from_utf8(unb64(&d["Plaintext"])).unwrap(),
        d["KeyId"].as_str().unwrap().to_string(),
    )
}

/// The backing-key version a blob's header names.
fn version_of(blob: &Value) -> u32 {
    Blob::decode(&unb64(blob)).unwrap().header.backing_version
}

async fn status(c: &Client, key: &str) -> Value {
    c.ok("GetKeyRotationStatus", json!({"KeyId": key})).await
}

async fn rotations(c: &Client, key: &str) -> Vec<Value> {
    c.ok("ListKeyRotations", json!({"KeyId": key})).await["Rotations"]
        .as_array()
        .unwrap()
        .clone()
}

async fn current_material(c: &Client, key: &str) -> String {
    c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["CurrentKeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn is_material_id(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

fn assert_in_both_hsms(s: &Service, key: &str, generations: usize) {
    let objects = s.running.kms.backing_object_ids(key);
    assert_eq!(objects.len(), generations, "{objects:?}");
    for o in &objects {
        for hsm in ["a", "b"] {
            assert!(
                s.running.cluster.hsm_holds(hsm, o.as_bytes()),
                "backing key {o} missing from hsm {hsm}"
            );
        }
    }
}

fn assert_err(r: &Reply, status: u16, ty: &str) {
    assert_eq!((r.status, r.error_type()), (status, ty), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rotation_after_the_period() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{id}");
    let st = status(c, &id).await;
    assert_eq!(st, json!({"KeyRotationEnabled": false, "KeyId": arn}));
    let first = current_material(c, &id).await;
    assert!(is_material_id(&json!(first)));

    c.ok("EnableKeyRotation", json!({"KeyId": id})).await;
    let st = status(c, &arn).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["KeyId"], arn.as_str());
    assert_eq!(st["RotationPeriodInDays"], 365);
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 365.0 * DAY_S));
    assert!(st.get("OnDemandRotationStartDate").is_none());
    let old = encrypt(c, &id, "generation 1").await;
    assert_eq!(version_of(&old), 1);

    // One day early: nothing happens.
    clock.advance(DAY * 364);
    s.running.kms.maintenance().await.unwrap();
    assert!(rotations(c, &id).await.is_empty());
    assert_eq!(current_material(c, &id).await, first);

    // Due: the pass rotates, and schedules the next one a period later.
    clock.advance(DAY);
    s.running.kms.maintenance().await.unwrap();
    let r = rotations(c, &id).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["KeyId"], id.as_str());
    assert_eq!(r[0]["RotationType"], "AUTOMATIC");
    assert_eq!(r[0]["RotationDate"], json!(T0 as f64 + 365.0 * DAY_S));
    assert_eq!(r[0]["KeyMaterialState"], "CURRENT");
    assert!(is_material_id(&r[0]["KeyMaterialId"]));
    let second = current_material(c, &id).await;
    assert_ne!(second, first);
    assert_eq!(r[0]["KeyMaterialId"], second.as_str());
    let st = status(c, &id).await;
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 730.0 * DAY_S));
    // A second pass at the same time does nothing more.
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 1);

    let new = encrypt(c, &id, "generation 2").await;
    assert_eq!(version_of(&new), 2);
    assert_eq!(decrypt(c, &old).await.0, "generation 1");
    assert_eq!(decrypt(c, &new).await.0, "generation 2");
    assert_in_both_hsms(&s, &id, 2);
    // Same key id, ARN and metadata otherwise.
    let d = c.ok("DescribeKey", json!({"KeyId": id})).await;
    assert_eq!(d["KeyMetadata"]["Arn"], arn.as_str());
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");

    // A custom period; changing it keeps the same start.
    c.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 90}),
    )
    .await;
    let st = status(c, &id).await;
    assert_eq!(st["RotationPeriodInDays"], 90);
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 455.0 * DAY_S));

    // Disabled key: no rotation while disabled; once re-enabled the overdue one happens.
    c.ok("DisableKey", json!({"KeyId": id})).await;
    clock.advance(DAY * 100);
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 1);
    let st = status(c, &id).await;
    assert_eq!(
        st["KeyRotationEnabled"], true,
        "status unchanged while disabled"
    );
    c.ok("EnableKey", json!({"KeyId": id})).await;
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 2);
    // It ran 10 days late: the schedule keeps its rhythm (due date + period)...
    assert_eq!(
        status(c, &id).await["NextRotationDate"],
        json!(T0 as f64 + 545.0 * DAY_S)
    );
    // ...unless it ran more than a period late: then a full period from now, once.
    c.ok("DisableKey", json!({"KeyId": id})).await;
    clock.advance(DAY * 200); // now T0+665, due since T0+545
    c.ok("EnableKey", json!({"KeyId": id})).await;
    s.running.kms.maintenance().await.unwrap();
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 3);
    assert_eq!(
        status(c, &id).await["NextRotationDate"],
        json!(T0 as f64 + 755.0 * DAY_S)
    );

    // DisableKeyRotation stops the schedule.
    c.ok("DisableKeyRotation", json!({"KeyId": id})).await;
    assert_eq!(
        status(c, &id).await,
        json!({"KeyRotationEnabled": false, "KeyId": arn})
    );
    clock.advance(DAY * 1000);
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 3);
    for (blob, msg) in [(&old, "generation 1"), (&new, "generation 2")] {
        assert_eq!(decrypt(c, blob).await.0, msg);
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_rotation_limit_and_conflict() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    let first = current_material(c, &id).await;
    let old = encrypt(c, &id, "before").await;
    let r = c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_eq!(r, json!({"KeyId": id}));
    let list = rotations(c, &id).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["RotationType"], "ON_DEMAND");
    assert_eq!(list[0]["RotationDate"], json!(T0 as f64));
    assert_ne!(current_material(c, &id).await, first);
    assert_eq!(version_of(&encrypt(c, &id, "after").await), 2);
    assert_eq!(decrypt(c, &old).await.0, "before");
    assert_in_both_hsms(&s, &id, 2);
    // No automatic rotation was scheduled by it.
    assert_eq!(status(c, &id).await["KeyRotationEnabled"], false);

    // On-demand rotation leaves an automatic schedule as it was.
    c.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 100}),
    )
    .await;
    clock.advance(DAY);
    c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_eq!(
        status(c, &id).await["NextRotationDate"],
        json!(T0 as f64 + 100.0 * DAY_S)
    );
    // Within 20 minutes of the scheduled rotation: ConflictException.
    clock.advance(DAY * 99 - Duration::from_secs(600));
    let r = c.call("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_err(&r, 400, "ConflictException");
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(rotations(c, &id).await.len(), 2, "not due yet");
    clock.advance(Duration::from_secs(600));
    s.running.kms.maintenance().await.unwrap();
    let list = rotations(c, &id).await;
    let kinds: Vec<&str> = list
        .iter()
        .map(|r| r["RotationType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ON_DEMAND", "ON_DEMAND", "AUTOMATIC"]);

    // The per-key quota (AWS: 25; configurable): the 4th on-demand rotation is refused.
    s.running.kms.set_on_demand_rotation_limit(3);
    c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
    let r = c.call("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_err(&r, 400, "LimitExceededException");
    assert_eq!(rotations(c, &id).await.len(), 4);
    // Another key has its own quota.
    let other = new_key(c).await;
    c.ok("RotateKeyOnDemand", json!({"KeyId": other})).await;
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rotations_every_generation_decrypts_and_reencrypt_moves_to_current() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/ten", "TargetKeyId": id}),
    )
    .await;
    c.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 90}),
    )
    .await;
    let ctx = json!({"purpose": "rotation-test"});
    let mut blobs = Vec::new();
    let mut data_keys = Vec::new();
    for generation in 1..=11u32 {
        let msg = format!("generation {generation}");
        let e = c
            .ok(
                "Encrypt",
                json!({"KeyId": "alias/ten", "Plaintext": b64(msg.as_bytes()), "EncryptionContext": ctx}),
            )
            .await;
        assert_eq!(version_of(&e["CiphertextBlob"]), generation);
        blobs.push((e["CiphertextBlob"].clone(), msg));
        let dk = c
            .ok(
                "GenerateDataKey",
                json!({"KeyId": id, "KeySpec": "AES_256"}),
            )
            .await;
        assert_eq!(version_of(&dk["CiphertextBlob"]), generation);
        data_keys.push(dk);
        if generation == 11 {
            break;
        }
        if generation % 2 == 1 {
            clock.advance(DAY * 90);
            s.running.kms.maintenance().await.unwrap();
        } else {
            c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
        }
    }
    assert_in_both_hsms(&s, &id, 11);
    // Every generation still decrypts, with its own material, from either HSM.
    for (blob, msg) in &blobs {
        let d = c
            .ok(
                "Decrypt",
                json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
            )
            .await;
        assert_eq!(unb64(&d["Plaintext"]), msg.as_bytes());
    }
    for dk in &data_keys {
        let d = c
            .ok("Decrypt", json!({"CiphertextBlob": dk["CiphertextBlob"]}))
            .await;
        assert_eq!(d["Plaintext"], dk["Plaintext"]);
    }
    // A changed context still fails on an old generation.
    let r = c
        .call("Decrypt", json!({"CiphertextBlob": blobs[0].0}))
        .await;
    assert_err(&r, 400, "InvalidCiphertextException");
    // ReEncrypt moves an old blob to the current material of the same key.
    let re = c
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": blobs[0].0, "SourceEncryptionContext": ctx,
                   "DestinationKeyId": id, "DestinationEncryptionContext": ctx}),
        )
        .await;
    assert_eq!(version_of(&blobs[0].0), 1);
    assert_eq!(version_of(&re["CiphertextBlob"]), 11);
    assert_eq!(re["SourceKeyId"], re["KeyId"]);
    let d = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": re["CiphertextBlob"], "EncryptionContext": ctx}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"generation 1");

    // ListKeyRotations: ten entries, oldest first, paginated.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = json!({"KeyId": id, "Limit": 3});
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let page = c.ok("ListKeyRotations", req).await;
        let items = page["Rotations"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().cloned());
        if page["Truncated"] == true {
            marker = Some(page["NextMarker"].as_str().unwrap().to_string());
        } else {
            assert!(page.get("NextMarker").is_none());
            break;
        }
    }
    assert_eq!(seen.len(), 10);
    let kinds: Vec<&str> = seen
        .iter()
        .map(|r| r["RotationType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "AUTOMATIC",
            "ON_DEMAND",
            "AUTOMATIC",
            "ON_DEMAND",
            "AUTOMATIC",
            "ON_DEMAND",
            "AUTOMATIC",
            "ON_DEMAND",
            "AUTOMATIC",
            "ON_DEMAND"
        ]
    );
    let mut ids: Vec<&str> = seen
        .iter()
        .map(|r| r["KeyMaterialId"].as_str().unwrap())
        .collect();
    assert_eq!(seen[9]["KeyMaterialState"], "CURRENT");
    assert!(seen[..9]
        .iter()
        .all(|r| r["KeyMaterialState"] == "NON_CURRENT"));
    assert_eq!(ids[9], current_material(c, &id).await);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every generation has its own KeyMaterialId");
    // ALL_KEY_MATERIAL adds the first material (no rotation date or type).
    let all = c
        .ok(
            "ListKeyRotations",
            json!({"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"}),
        )
        .await;
    let all = all["Rotations"].as_array().unwrap();
    assert_eq!(all.len(), 11);
    assert!(all[0].get("RotationType").is_none() && all[0].get("RotationDate").is_none());
    assert_eq!(all[0]["KeyMaterialState"], "NON_CURRENT");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_errors() {
    let (s, _clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/r", "TargetKeyId": id}),
    )
    .await;
    // Validation of members.
    for period in [89, 2561] {
        let r = c
            .call(
                "EnableKeyRotation",
                json!({"KeyId": id, "RotationPeriodInDays": period}),
            )
            .await;
        assert_err(&r, 400, "ValidationException");
    }
    let r = c
        .call(
            "EnableKeyRotation",
            json!({"KeyId": id, "RotationPeriodInDays": "90"}),
        )
        .await;
    assert_err(&r, 400, "SerializationException");
    for op in [
        "EnableKeyRotation",
        "DisableKeyRotation",
        "GetKeyRotationStatus",
        "RotateKeyOnDemand",
        "ListKeyRotations",
    ] {
        assert_err(&c.call(op, json!({})).await, 400, "ValidationException");
        // Key id or key ARN only, as AWS documents; an unknown key is NotFound.
        assert_err(
            &c.call(op, json!({"KeyId": "alias/r"})).await,
            400,
            "NotFoundException",
        );
        assert_err(
            &c.call(op, json!({"KeyId": "00000000-0000-4000-8000-000000000000"}))
                .await,
            400,
            "NotFoundException",
        );
    }
    let r = c
        .call(
            "ListKeyRotations",
            json!({"KeyId": id, "IncludeKeyMaterial": "SOME"}),
        )
        .await;
    assert_err(&r, 400, "ValidationException");
    let r = c
        .call(
            "ListKeyRotations",
            json!({"KeyId": id, "Marker": "not-a-marker"}),
        )
        .await;
    assert_err(&r, 400, "InvalidMarkerException");
    let r = c
        .call("ListKeyRotations", json!({"KeyId": id, "Limit": 0}))
        .await;
    assert_err(&r, 400, "ValidationException");

    // A disabled key: DisabledException for changes, the status still reads.
    c.ok("EnableKeyRotation", json!({"KeyId": id})).await;
    c.ok("DisableKey", json!({"KeyId": id})).await;
    for op in [
        "EnableKeyRotation",
        "DisableKeyRotation",
        "RotateKeyOnDemand",
    ] {
        assert_err(
            &c.call(op, json!({"KeyId": id})).await,
            400,
            "DisabledException",
        );
    }
    assert_eq!(status(c, &id).await["KeyRotationEnabled"], true);
    assert!(rotations(c, &id).await.is_empty());
    c.ok("EnableKey", json!({"KeyId": id})).await;
    c.ok("DisableKeyRotation", json!({"KeyId": id})).await;
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_waits_while_an_hsm_is_down_then_completes() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let scheduled = new_key(c).await;
    let on_demand = new_key(c).await;
    c.ok("EnableKeyRotation", json!({"KeyId": scheduled})).await;
    let before = encrypt(c, &scheduled, "before the outage").await;

    let dir = s.tokens.hsms[0].token_dir.clone();
    let moved = dir.with_extension("away");
    std::fs::rename(&dir, &moved).unwrap();
    let kms = s.running.kms.clone();
    let cluster = s.running.cluster.clone();
    // Right away (before any probe has noticed): a retryable error, nothing committed.
    let r = c
        .call("RotateKeyOnDemand", json!({"KeyId": on_demand}))
        .await;
    assert_err(&r, 500, "DependencyTimeoutException");
    assert_eq!(kms.backing_object_ids(&on_demand).len(), 1);
    // Traffic lets the cluster notice; wait until "a" is down.
    let _ = c
        .call(
            "Encrypt",
            json!({"KeyId": scheduled, "Plaintext": b64(b"x")}),
        )
        .await;
    assert!(
        eventually(15, || cluster.health()[0].state == NodeState::Down).await,
        "{:?}",
        cluster.health()
    );

    // On demand: a retryable error, and nothing changed.
    let r = c
        .call("RotateKeyOnDemand", json!({"KeyId": on_demand}))
        .await;
    assert_err(&r, 500, "DependencyTimeoutException");
    assert!(rotations(c, &on_demand).await.is_empty());
    assert_eq!(s.running.kms.backing_object_ids(&on_demand).len(), 1);

    // Automatic: due, but one copy is not enough, so it waits.
    clock.advance(DAY * 366);
    kms.maintenance().await.unwrap();
    assert!(rotations(c, &scheduled).await.is_empty());
    let st = status(c, &scheduled).await;
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 365.0 * DAY_S));
    assert_eq!(s.running.kms.backing_object_ids(&scheduled).len(), 1);
    // The key keeps working with its current material.
    let during = encrypt(c, &scheduled, "during the outage").await;
    assert_eq!(version_of(&during), 1);
    assert_eq!(decrypt(c, &before).await.0, "before the outage");
    assert_eq!(decrypt(c, &during).await.0, "during the outage");

    // Restore the token: once "a" is healthy again the next pass performs the rotation.
    std::fs::rename(&moved, &dir).unwrap();
    assert!(
        eventually(20, || cluster.health()[0].state == NodeState::Healthy).await,
        "{:?}",
        cluster.health()
    );
    kms.maintenance().await.unwrap();
    let r = rotations(c, &scheduled).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["RotationType"], "AUTOMATIC");
    assert_eq!(
        status(c, &scheduled).await["NextRotationDate"],
        json!(T0 as f64 + 730.0 * DAY_S)
    );
    assert_in_both_hsms(&s, &scheduled, 2);
    let after = encrypt(c, &scheduled, "after the outage").await;
    assert_eq!(version_of(&after), 2);
    for (b, m) in [
        (&before, "before the outage"),
        (&during, "during the outage"),
        (&after, "after the outage"),
    ] {
        assert_eq!(decrypt(c, b).await.0, m);
    }
    // And the on-demand retry now succeeds.
    c.ok("RotateKeyOnDemand", json!({"KeyId": on_demand})).await;
    assert_in_both_hsms(&s, &on_demand, 2);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rotation_by_repointing_an_alias() {
    let s = service().await;
    let c = &s.client;
    let old_key = new_key(c).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": old_key}),
    )
    .await;
    let old_blob = encrypt(c, "alias/app", "under the old key").await;
    // The recipe: a new key, then the alias points at it.
    let new_key_id = new_key(c).await;
    c.ok(
        "UpdateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": new_key_id}),
    )
    .await;
    let d = c.ok("DescribeKey", json!({"KeyId": "alias/app"})).await;
    assert_eq!(d["KeyMetadata"]["KeyId"], new_key_id.as_str());
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": "alias/app", "Plaintext": b64(b"under the new key")}),
        )
        .await;
    assert!(e["KeyId"].as_str().unwrap().ends_with(&new_key_id));
    let new_blob = e["CiphertextBlob"].clone();
    // Old ciphertexts still decrypt: the blob names its key.
    let (pt, key) = decrypt(c, &old_blob).await;
    assert_eq!(pt, "under the old key");
    assert!(key.ends_with(&old_key));
    let (pt, key) = decrypt(c, &new_blob).await;
    assert_eq!(pt, "under the new key");
    assert!(key.ends_with(&new_key_id));
    // Naming the alias when decrypting an old blob is now the wrong key.
    let r = c
        .call(
            "Decrypt",
            json!({"CiphertextBlob": old_blob, "KeyId": "alias/app"}),
        )
        .await;
    assert_err(&r, 400, "IncorrectKeyException");
    // ReEncrypt to the alias moves old data to the new key.
    let re = c
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": old_blob, "DestinationKeyId": "alias/app"}),
        )
        .await;
    assert!(re["SourceKeyId"].as_str().unwrap().ends_with(&old_key));
    assert!(re["KeyId"].as_str().unwrap().ends_with(&new_key_id));
    let (pt, key) = decrypt(c, &re["CiphertextBlob"]).await;
    assert_eq!(pt, "under the old key");
    assert!(key.ends_with(&new_key_id));
    s.running.stop().await;
}

#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_rotation_start_date_shows_while_it_runs() {
    let (s, _clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    // Slow the HSMs down so the rotation takes a while.
    for hsm in ["a", "b"] {
        s.running
            .cluster
            .inject_stall(hsm, Duration::from_millis(400))
            .unwrap();
    }
    let c2 = c.clone();
    let id2 = id.clone();
    let task =
        tokio::spawn(async move { c2.call("RotateKeyOnDemand", json!({"KeyId": id2})).await });
    let mut seen = None;
    for _ in 0..200 {
        let st = status(c, &id).await;
        if let Some(d) = st.get("OnDemandRotationStartDate") {
            seen = Some(d.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        seen,
        Some(json!(T0 as f64)),
        "never saw the rotation in progress"
    );
    // A second one while the first runs: ConflictException.
    let r = c.call("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_err(&r, 400, "ConflictException");
    let r = task.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for hsm in ["a", "b"] {
        s.running.cluster.inject_stall(hsm, Duration::ZERO).unwrap();
    }
    assert!(status(c, &id)
        .await
        .get("OnDemandRotationStartDate")
        .is_none());
    assert_eq!(rotations(c, &id).await.len(), 1);
    assert_in_both_hsms(&s, &id, 2);
    s.running.stop().await;
}

/// Only symmetric encryption keys rotate. Asymmetric and HMAC keys arrive with issue 6: until
/// CreateKey makes them this test only checks that CreateKey refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_rotate_are_unsupported() {
    let (s, _clock) = clocked().await;
    let c = &s.client;
    for (spec, usage) in [
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ] {
        let r = c
            .call("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))
            .await;
        if r.status != 200 {
            assert_err(&r, 400, "UnsupportedOperationException");
            continue;
        }
        let id = r.body["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let d = c.ok("DescribeKey", json!({"KeyId": id})).await;
        assert!(
            d["KeyMetadata"].get("CurrentKeyMaterialId").is_none(),
            "{spec}"
        );
        for op in [
            "EnableKeyRotation",
            "DisableKeyRotation",
            "GetKeyRotationStatus",
            "RotateKeyOnDemand",
            "ListKeyRotations",
        ] {
            assert_err(
                &c.call(op, json!({"KeyId": id})).await,
                400,
                "UnsupportedOperationException",
            );
        }
    }
    s.running.stop().await;
}

/// A key pending deletion does not rotate and its status reads false; the schedule returns
/// when the deletion is cancelled. Scheduled deletion arrives with issue 5: until then this
/// test only checks that the operation is not there yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pending_deletion_does_not_rotate() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let id = new_key(c).await;
    c.ok("EnableKeyRotation", json!({"KeyId": id})).await;
    let r = c
        .call(
            "ScheduleKeyDeletion",
            json!({"KeyId": id, "PendingWindowInDays": 30}),
        )
        .await;
    if r.status != 200 {
        assert_err(&r, 400, "UnknownOperationException");
        s.running.stop().await;
        return;
    }
    for op in [
        "EnableKeyRotation",
        "DisableKeyRotation",
        "RotateKeyOnDemand",
    ] {
        assert_err(
            &c.call(op, json!({"KeyId": id})).await,
            400,
            "KMSInvalidStateException",
        );
    }
    assert_eq!(status(c, &id).await["KeyRotationEnabled"], false);
    clock.advance(DAY * 20);
    s.running.kms.maintenance().await.unwrap();
    c.ok("CancelKeyDeletion", json!({"KeyId": id})).await;
    let st = status(c, &id).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 365.0 * DAY_S));
    assert!(rotations(c, &id).await.is_empty());
    s.running.stop().await;
}

/// AWS managed keys (made on first use of `alias/aws/<service>`) rotate every year and
/// their rotation is not configurable (their fixed policy allows no rotation action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_managed_keys_rotate_every_year() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let d = c.ok("DescribeKey", json!({"KeyId": "alias/aws/ebs"})).await;
    assert_eq!(d["KeyMetadata"]["KeyManager"], "AWS");
    let id = d["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let st = status(c, &id).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 365);
    assert_eq!(st["NextRotationDate"], json!(T0 as f64 + 365.0 * DAY_S));
    for op in [
        "EnableKeyRotation",
        "DisableKeyRotation",
        "RotateKeyOnDemand",
    ] {
        assert_err(
            &c.call(op, json!({"KeyId": id})).await,
            400,
            "AccessDeniedException",
        );
    }
    clock.advance(DAY * 365);
    s.running.kms.maintenance().await.unwrap();
    let r = rotations(c, &id).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["RotationType"], "AUTOMATIC");
    assert_eq!(
        status(c, &id).await["NextRotationDate"],
        json!(T0 as f64 + 730.0 * DAY_S)
    );
    assert_in_both_hsms(&s, &id, 2);
    s.running.stop().await;
}

// ------------------------------------------------- the real binary, restarted

fn stop(child: &mut Child, sigkill: bool) {
    if sigkill {
        child.kill().unwrap();
    } else {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_rotations_keeps_every_generation() {
    let dir = tempfile::tempdir().unwrap();
    common::real_binary::setup(dir.path());
    // The on-demand quota from the config file (top-level keys precede the [[hsm]] tables).
    let cfg = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("on_demand_rotation_limit = 3\n{text}")).unwrap();
    let (mut child, url) = start(dir.path());
    let mut c = Client::new(url, credential(dir.path()));
    let id = new_key(&c).await;
    c.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 400}),
    )
    .await;
    let schedule = status(&c, &id).await;
    let mut blobs = vec![(encrypt(&c, &id, "g1").await, "g1".to_string())];
    for generation in 2..=4u32 {
        c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
        let msg = format!("g{generation}");
        let b = encrypt(&c, &id, &msg).await;
        assert_eq!(version_of(&b), generation);
        blobs.push((b, msg));
        // Alternate a hard kill and a clean stop between rotations.
        stop(&mut child, generation % 2 == 0);
        let (ch, url) = start(dir.path());
        child = ch;
        c = Client::new(url, credential(dir.path()));
        for (b, m) in &blobs {
            assert_eq!(&decrypt(&c, b).await.0, m, "after restart {generation}");
        }
        assert_eq!(rotations(&c, &id).await.len(), generation as usize - 1);
        assert_eq!(status(&c, &id).await, schedule);
        // New encryptions use the newest generation; ReEncrypt moves the oldest to it.
        assert_eq!(version_of(&encrypt(&c, &id, "x").await), generation);
        let re = c
            .ok(
                "ReEncrypt",
                json!({"CiphertextBlob": blobs[0].0, "DestinationKeyId": id}),
            )
            .await;
        assert_eq!(version_of(&re["CiphertextBlob"]), generation);
    }
    let r = c.call("RotateKeyOnDemand", json!({"KeyId": id})).await;
    assert_err(&r, 400, "LimitExceededException");
    stop(&mut child, false);
}
