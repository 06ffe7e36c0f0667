//! The KMS API end to end over HTTP with SigV4, against real SoftHSM2 tokens: every
//! operation of the symmetric-key surface and every error path, asserted by exact
//! `__type` and HTTP status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use serde_json::json;
#[cfg(feature = "test-hooks")]
use std::time::Duration;

async fn key(c: &Client) -> String {
    c.ok("CreateKey", json!({"Description": "t"})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_describe_encrypt_decrypt_reencrypt_data_keys_aliases() {
    let s = service().await;
    let c = &s.client;
    let md = c
        .ok(
            "CreateKey",
            json!({"Description": "demo", "Tags": [{"TagKey": "team", "TagValue": "lab"}]}),
        )
        .await["KeyMetadata"]
        .clone();
    let id = md["KeyId"].as_str().unwrap().to_string();
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{id}");
    assert_eq!(md["Arn"], arn);
    assert_eq!(md["AWSAccountId"], "111122223333");
    assert_eq!(md["KeyState"], "Enabled");
    assert_eq!(md["Enabled"], true);
    assert_eq!(md["KeyManager"], "CUSTOMER");
    assert_eq!(md["Origin"], "AWS_KMS");
    assert_eq!(md["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(md["CustomerMasterKeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(md["KeyUsage"], "ENCRYPT_DECRYPT");
    assert_eq!(md["EncryptionAlgorithms"], json!(["SYMMETRIC_DEFAULT"]));
    assert_eq!(md["MultiRegion"], false);
    assert!(md["CreationDate"].is_f64() || md["CreationDate"].is_u64());
    // Both HSMs hold the key.
    let obj = format!("kms/{id}/1").into_bytes();
    let cl = &s.running.cluster;
    assert!(cl.hsm_holds("a", &obj) && cl.hsm_holds("b", &obj));

    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": id}),
    )
    .await;
    for kref in [
        id.clone(),
        arn.clone(),
        "alias/app".into(),
        "arn:aws:kms:us-east-1:111122223333:alias/app".into(),
    ] {
        let d = c.ok("DescribeKey", json!({"KeyId": kref})).await;
        assert_eq!(d["KeyMetadata"]["KeyId"], id.as_str());
    }
    // Encrypt / Decrypt with a context; order of context members does not matter.
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": "alias/app", "Plaintext": b64(b"secret data"),
                   "EncryptionContext": {"a": "1", "b": "2"}}),
        )
        .await;
    assert_eq!(e["KeyId"], arn.as_str());
    assert_eq!(e["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let blob = e["CiphertextBlob"].clone();
    let d = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"b": "2", "a": "1"}}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"secret data");
    assert_eq!(d["KeyId"], arn.as_str());
    // ReEncrypt to a second key, then decrypt there.
    let id2 = key(c).await;
    let r = c
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "SourceEncryptionContext": {"a": "1", "b": "2"},
                   "DestinationKeyId": id2, "DestinationEncryptionContext": {"x": "y"}}),
        )
        .await;
    assert_eq!(r["SourceKeyId"], arn.as_str());
    assert!(r["KeyId"].as_str().unwrap().ends_with(&id2));
    assert_eq!(r["SourceEncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let d2 = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": r["CiphertextBlob"], "EncryptionContext": {"x": "y"}, "KeyId": id2}),
        )
        .await;
    assert_eq!(unb64(&d2["Plaintext"]), b"secret data");
    // Data keys: the plaintext key works client side; the blob decrypts to the same key.
    let dk = c
        .ok(
            "GenerateDataKey",
            json!({"KeyId": id, "KeySpec": "AES_256"}),
        )
        .await;
    let plain = unb64(&dk["Plaintext"]);
    assert_eq!(plain.len(), 32);
    let back = c
        .ok("Decrypt", json!({"CiphertextBlob": dk["CiphertextBlob"]}))
        .await;
    assert_eq!(unb64(&back["Plaintext"]), plain);
    {
        use aes_gcm::aead::{Aead, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&plain).unwrap();
        let nonce = aes_gcm::Nonce::from_slice(&[7u8; 12]);
        let ct = cipher.encrypt(nonce, b"envelope".as_ref()).unwrap();
        let k2 = aes_gcm::Aes256Gcm::new_from_slice(&unb64(&back["Plaintext"])).unwrap();
        assert_eq!(k2.decrypt(nonce, ct.as_ref()).unwrap(), b"envelope");
    }
    let n = c
        .ok("GenerateDataKey", json!({"KeyId": id, "NumberOfBytes": 7}))
        .await;
    assert_eq!(unb64(&n["Plaintext"]).len(), 7);
    let wp = c
        .ok(
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": id, "KeySpec": "AES_128", "EncryptionContext": {"k": "v"}}),
        )
        .await;
    assert!(wp.get("Plaintext").is_none());
    let b = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": wp["CiphertextBlob"], "EncryptionContext": {"k": "v"}}),
        )
        .await;
    assert_eq!(unb64(&b["Plaintext"]).len(), 16);
    let rnd = c.ok("GenerateRandom", json!({"NumberOfBytes": 1024})).await;
    assert_eq!(unb64(&rnd["Plaintext"]).len(), 1024);
    // Aliases: update, list by key, delete.
    c.ok(
        "UpdateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": id2}),
    )
    .await;
    let l = c.ok("ListAliases", json!({"KeyId": id2})).await;
    assert_eq!(l["Aliases"][0]["AliasName"], "alias/app");
    assert_eq!(l["Aliases"][0]["TargetKeyId"], id2.as_str());
    assert_eq!(
        l["Aliases"][0]["AliasArn"],
        "arn:aws:kms:us-east-1:111122223333:alias/app"
    );
    assert!(l["Aliases"][0]["LastUpdatedDate"].is_number());
    assert_eq!(l["Truncated"], false);
    c.ok("DeleteAlias", json!({"AliasName": "alias/app"})).await;
    let r = c.call("DescribeKey", json!({"KeyId": "alias/app"})).await;
    assert_eq!((r.status, r.error_type()), (400, "NotFoundException"));
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_aws_type_and_status() {
    let s = service().await;
    let c = &s.client;
    let id = key(c).await;
    let id2 = key(c).await;
    let now = time::OffsetDateTime::now_utc();
    let secret = c.cred.secret_access_key.to_string();
    let body = br#"{"KeyId":"x"}"#.to_vec();
    let cases: Vec<(Reply, u16, &str)> = vec![
        (c.send_raw(Some("NoSuchOp"), b"{}".to_vec(), now, &secret, true).await, 400, "UnknownOperationException"),
        (c.send_raw(None, b"{}".to_vec(), now, &secret, true).await, 400, "UnknownOperationException"),
        (c.send_raw(Some("ListKeys"), b"{}".to_vec(), now, &secret, false).await, 400, "MissingAuthenticationTokenException"),
        (c.send_raw(Some("ListKeys"), b"{}".to_vec(), now, "wrong-secret", true).await, 400, "InvalidSignatureException"),
        (c.send_raw(Some("ListKeys"), b"{}".to_vec(), now - time::Duration::minutes(10), &secret, true).await, 400, "InvalidSignatureException"),
        (Client::new(c.url.clone(), hsm_kms::auth::Credential::new("AKIANOSUCHKEY0000000", "s", "111122223333", "arn"))
            .send_raw(Some("ListKeys"), b"{}".to_vec(), now, "s", true).await, 400, "UnrecognizedClientException"),
        (c.send_raw(Some("DescribeKey"), b"{not json".to_vec(), now, &secret, true).await, 400, "SerializationException"),
        (c.send_raw(Some("DescribeKey"), body, now, &secret, true).await, 400, "NotFoundException"),
        (c.send_raw(Some("ListKeys"), vec![b' '; 70_000], now, &secret, true).await, 413, "RequestEntityTooLargeException"),
        (c.call("DescribeKey", json!({"KeyId": 5})).await, 400, "SerializationException"),
        (c.call("DescribeKey", json!({})).await, 400, "ValidationException"),
        (c.call("DescribeKey", json!({"KeyId": ""})).await, 400, "ValidationException"),
        (c.call("DescribeKey", json!({"KeyId": "00000000-0000-0000-0000-000000000000"})).await, 400, "NotFoundException"),
        (c.call("DescribeKey", json!({"KeyId": "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-0000-0000-000000000000"})).await, 400, "NotFoundException"),
        (c.call("Encrypt", json!({"KeyId": id})).await, 400, "ValidationException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(&[0u8; 4097])})).await, 400, "ValidationException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": "%%%"})).await, 400, "SerializationException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": {"a": ""}})).await, 400, "ValidationException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": "a=b"})).await, 400, "SerializationException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})).await, 400, "InvalidKeyUsageException"),
        (c.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x"), "DryRun": true})).await, 412, "DryRunOperationException"),
        (c.call("Decrypt", json!({"CiphertextBlob": b64(&[1u8; 60])})).await, 400, "InvalidCiphertextException"),
        (c.call("Decrypt", json!({"CiphertextBlob": b64(&[9u8; 60])})).await, 400, "InvalidCiphertextException"),
        (c.call("GenerateDataKey", json!({"KeyId": id})).await, 400, "ValidationException"),
        (c.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256", "NumberOfBytes": 32})).await, 400, "ValidationException"),
        (c.call("GenerateDataKey", json!({"KeyId": id, "NumberOfBytes": 1025})).await, 400, "ValidationException"),
        (c.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_512"})).await, 400, "ValidationException"),
        (c.call("GenerateDataKey", json!({"KeyId": id, "KeySpec": "AES_256", "DryRun": true})).await, 412, "DryRunOperationException"),
        (c.call("GenerateRandom", json!({"NumberOfBytes": 0})).await, 400, "ValidationException"),
        (c.call("GenerateRandom", json!({})).await, 400, "ValidationException"),
        (c.call("ListKeys", json!({"Limit": 0})).await, 400, "ValidationException"),
        (c.call("ListKeys", json!({"Limit": 1001})).await, 400, "ValidationException"),
        (c.call("ListKeys", json!({"Marker": "bm90LWEtbWFya2Vy"})).await, 400, "InvalidMarkerException"),
        (c.call("CreateKey", json!({"KeySpec": "NOT_A_SPEC"})).await, 400, "ValidationException"),
        (c.call("CreateKey", json!({"KeyUsage": "SIGN_VERIFY"})).await, 400, "ValidationException"),
        (c.call("CreateKey", json!({"Tags": [{"TagKey": "aws:x", "TagValue": "v"}]})).await, 400, "TagException"),
        (c.call("CreateAlias", json!({"AliasName": "noprefix", "TargetKeyId": id})).await, 400, "ValidationException"),
        (c.call("CreateAlias", json!({"AliasName": "alias/aws/s3", "TargetKeyId": id})).await, 400, "NotAuthorizedException"),
        (c.call("CreateAlias", json!({"AliasName": "alias/x", "TargetKeyId": "00000000-0000-0000-0000-000000000000"})).await, 400, "NotFoundException"),
        (c.call("DeleteAlias", json!({"AliasName": "alias/none"})).await, 400, "NotFoundException"),
        (c.call("UpdateAlias", json!({"AliasName": "alias/none", "TargetKeyId": id})).await, 400, "NotFoundException"),
    ];
    for (i, (r, status, ty)) in cases.iter().enumerate() {
        assert_eq!(
            (r.status, r.error_type()),
            (*status, *ty),
            "case {i}: {}",
            r.body
        );
        assert!(r.request_id.is_some(), "case {i}: no request id");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-amz-json-1.1"),
            "case {i}"
        );
        assert!(r.body["message"].is_string(), "case {i}: {}", r.body);
    }
    // Alias conflicts and wrong-key decrypts need state first.
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/one", "TargetKeyId": id}),
    )
    .await;
    let r = c
        .call(
            "CreateAlias",
            json!({"AliasName": "alias/one", "TargetKeyId": id2}),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "AlreadyExistsException"));
    let r = c
        .call(
            "CreateAlias",
            json!({"AliasName": "alias/two", "TargetKeyId": "alias/one"}),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
    let blob = c
        .ok("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"abc")}))
        .await["CiphertextBlob"]
        .clone();
    let r = c
        .call("Decrypt", json!({"CiphertextBlob": blob, "KeyId": id2}))
        .await;
    assert_eq!((r.status, r.error_type()), (400, "IncorrectKeyException"));
    let r = c
        .call("Decrypt", json!({"CiphertextBlob": blob, "DryRun": true}))
        .await;
    assert_eq!(
        (r.status, r.error_type()),
        (412, "DryRunOperationException")
    );
    // Any single flipped byte, truncation or extension is InvalidCiphertextException.
    let raw = unb64(&blob);
    let mut variants = vec![
        raw[..raw.len() - 1].to_vec(),
        [raw.clone(), vec![0]].concat(),
    ];
    for i in [0, 5, 18, 25, 40, raw.len() - 1] {
        let mut t = raw.clone();
        t[i] ^= 0x01;
        variants.push(t);
    }
    for (i, v) in variants.iter().enumerate() {
        let r = c.call("Decrypt", json!({"CiphertextBlob": b64(v)})).await;
        assert_eq!(
            (r.status, r.error_type()),
            (400, "InvalidCiphertextException"),
            "variant {i}"
        );
    }
    // A context that differs in one value or has an extra member fails too.
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(b"abc"), "EncryptionContext": {"a": "1"}}),
        )
        .await;
    for ctx in [json!({"a": "2"}), json!({"a": "1", "b": "1"}), json!({})] {
        let r = c
            .call(
                "Decrypt",
                json!({"CiphertextBlob": e["CiphertextBlob"], "EncryptionContext": ctx}),
            )
            .await;
        assert_eq!(
            (r.status, r.error_type()),
            (400, "InvalidCiphertextException")
        );
    }
    // Bad tags never marked an HSM down.
    assert!(s
        .running
        .cluster
        .health()
        .iter()
        .all(|h| h.state == hsm_kms::hsm::NodeState::Healthy));
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_and_aliases_paginate_without_gaps() {
    let s = service().await;
    let c = &s.client;
    let mut ids = Vec::new();
    for i in 0..23 {
        let id = key(c).await;
        c.ok(
            "CreateAlias",
            json!({"AliasName": format!("alias/k{i:02}"), "TargetKeyId": id}),
        )
        .await;
        ids.push(id);
    }
    for (op, list, field) in [
        ("ListKeys", "Keys", "KeyId"),
        ("ListAliases", "Aliases", "TargetKeyId"),
    ] {
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req = json!({"Limit": 5});
            if let Some(m) = &marker {
                req["Marker"] = json!(m);
            }
            let page = c.ok(op, req).await;
            let items = page[list].as_array().unwrap();
            assert!(items.len() <= 5);
            seen.extend(items.iter().map(|k| k[field].as_str().unwrap().to_string()));
            if page["Truncated"] == true {
                marker = Some(page["NextMarker"].as_str().unwrap().to_string());
            } else {
                assert!(page.get("NextMarker").is_none());
                break;
            }
        }
        let mut a = seen.clone();
        a.sort();
        let mut b = ids.clone();
        b.sort();
        assert_eq!(a, b, "{op} returned every item exactly once");
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_succeeds_while_one_hsm_is_gone() {
    let s = service().await;
    let c = &s.client;
    let id = key(c).await;
    let dir = &s.tokens.hsms[0].token_dir;
    let moved = dir.with_extension("away");
    std::fs::rename(dir, &moved).unwrap();
    for i in 0..50 {
        let e = c
            .call(
                "Encrypt",
                json!({"KeyId": id, "Plaintext": b64(format!("m{i}").as_bytes())}),
            )
            .await;
        assert_eq!(e.status, 200, "request {i} during outage: {}", e.body);
        let d = c
            .ok(
                "Decrypt",
                json!({"CiphertextBlob": e.body["CiphertextBlob"]}),
            )
            .await;
        assert_eq!(unb64(&d["Plaintext"]), format!("m{i}").as_bytes());
    }
    std::fs::rename(&moved, dir).unwrap();
    s.running.stop().await;
}

/// CreateKey does not fail when the HSM a key is being made on hangs, as long as enough
/// others serve (three HSMs, two copies needed): the hung HSM is cut off and the key is
/// made on the next one. Each family (symmetric, HMAC, key pair) is created while "a"
/// hangs, answers 200 and works; once "a" serves again, re-sync gives it every key.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_succeeds_while_the_hsm_it_starts_on_hangs() {
    let tokens = tokens(&["a", "b", "c"]);
    let mut opts = fast_options();
    opts.call_timeout = Duration::from_millis(300);
    let (running, c) = start_tuned(
        &tokens,
        std::sync::Arc::new(hsm_kms::clock::SystemClock),
        opts,
        Duration::from_millis(300),
    )
    .await;
    let cl = running.cluster.clone();
    let mut made = Vec::new();
    for params in [
        json!({}),
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
    ] {
        made.push(create_key_while_first_hsm_hangs(&cl, &c, params).await);
    }
    assert!(cl.health()[0].host_restarts >= Some(3), "{:?}", cl.health());
    let ct = c
        .ok("Encrypt", json!({"KeyId": made[0], "Plaintext": b64(b"x")}))
        .await["CiphertextBlob"]
        .clone();
    let d = c.ok("Decrypt", json!({"CiphertextBlob": ct})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"x");
    c.ok(
        "GenerateMac",
        json!({"KeyId": made[1], "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
    )
    .await;
    c.ok(
        "Sign",
        json!({"KeyId": made[2], "Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"}),
    )
    .await;
    let objects: Vec<Vec<u8>> = made
        .iter()
        .map(|k| format!("kms/{k}/1").into_bytes())
        .collect();
    let in_a = || {
        cl.hsm_holds("a", &objects[0])
            && cl.hsm_holds("a", &objects[1])
            && cl.hsm_holds_private("a", &objects[2])
    };
    assert!(eventually(30, in_a).await, "re-sync gave \"a\" the keys");
    running.stop().await;
}

/// A captured request cannot be replayed as another operation: `X-Amz-Target` must be
/// signed. Signed as DescribeKey and sent as DisableKey, the signature does not match;
/// signed without the header and sent as DisableKey, the request is incomplete. Either
/// way the key stays enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retargeted_request_is_refused() {
    let s = service().await;
    let c = &s.client;
    let id = key(c).await;
    let r = c
        .send_retargeted(Some("DescribeKey"), "DisableKey", json!({"KeyId": id}))
        .await;
    assert_eq!(
        (r.status, r.error_type()),
        (400, "InvalidSignatureException"),
        "{}",
        r.body
    );
    let r = c
        .send_retargeted(None, "DisableKey", json!({"KeyId": id}))
        .await;
    assert_eq!(
        (r.status, r.error_type()),
        (400, "IncompleteSignatureException"),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["message"],
        "'x-amz-target' must be a 'SignedHeader' in the AWS Authorization."
    );
    let d = c.ok("DescribeKey", json!({"KeyId": id})).await;
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
    s.running.stop().await;
}

/// GCM IVs follow SP 800-38D §8.2.1: a fixed field allocated durably per process start,
/// then an invocation counter. Within a start every IV differs and counts up; after a
/// restart the fixed field is a new one; ciphertexts of both starts decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcm_ivs_are_a_durable_fixed_field_and_a_counter() {
    // The IV sits after version (1), key id (16) and backing version (4).
    fn iv(blob: &[u8]) -> [u8; 12] {
        blob[21..33].try_into().unwrap()
    }
    let s = service().await;
    let id = key(&s.client).await;
    let mut first = Vec::new();
    for i in 0..20u8 {
        let r = s
            .client
            .ok("Encrypt", json!({"KeyId": id, "Plaintext": b64(&[i])}))
            .await;
        first.push(unb64(&r["CiphertextBlob"]));
    }
    let dk = s
        .client
        .ok(
            "GenerateDataKey",
            json!({"KeyId": id, "KeySpec": "AES_256"}),
        )
        .await;
    first.push(unb64(&dk["CiphertextBlob"]));
    let fixed1 = iv(&first[0])[..4].to_vec();
    let counters: Vec<u64> = first
        .iter()
        .map(|b| {
            let v = iv(b);
            assert_eq!(v[..4], fixed1[..], "one fixed field per start");
            u64::from_be_bytes(v[4..].try_into().unwrap())
        })
        .collect();
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "invocation counters must increase: {counters:?}"
    );
    s.running.stop().await;

    let (running, c) = start_on(&s.tokens, std::sync::Arc::new(hsm_kms::clock::SystemClock)).await;
    let r = c
        .ok("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"after")}))
        .await;
    let second = unb64(&r["CiphertextBlob"]);
    let fixed2 = iv(&second)[..4].to_vec();
    assert_ne!(fixed1, fixed2, "a restart must use a new fixed field");
    assert_eq!(
        u32::from_be_bytes(fixed2.clone().try_into().unwrap()),
        u32::from_be_bytes(fixed1.clone().try_into().unwrap()) + 1
    );
    for (i, blob) in first.iter().take(20).enumerate() {
        let d = c.ok("Decrypt", json!({"CiphertextBlob": b64(blob)})).await;
        assert_eq!(unb64(&d["Plaintext"]), vec![i as u8]);
    }
    let d = c
        .ok("Decrypt", json!({"CiphertextBlob": b64(&second)}))
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"after");
    running.stop().await;
}

/// The attack on sealed credentials: Bob (account 444455556666) knows his own secret and
/// can write the metadata database. He swaps the two credential rows' principals, so that
/// his access key and sealed secret sit in the row of the admin of 111122223333 (and the
/// admin's in his). Sealed secrets bind access key, account and principal ARN, so neither
/// swapped row opens at the next start: both keys are unknown, and Bob never acts as the
/// admin. Undoing the swap brings both back: nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_swapped_to_another_principal_no_longer_authenticates() {
    use hsm_kms::kms::vault::KeyVault;
    use hsm_kms::store::{MetadataStore, SqliteStore};
    use std::sync::Arc;

    let s = service().await;
    let admin = s.client.cred.clone();
    let id = key(&s.client).await;
    s.running.stop().await;
    let db = s.tokens.dir.path().join("metadata.sqlite");
    let bob = {
        let cluster = connect(&s.tokens, fast_options());
        let store: Arc<dyn MetadataStore> = Arc::new(SqliteStore::open(&db).unwrap());
        let vault: &dyn KeyVault = &cluster;
        let bob = hsm_kms::kms::credentials::create(
            vault,
            &store,
            "444455556666",
            "arn:aws:iam::444455556666:user/bob",
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
        cluster.shutdown();
        bob
    };
    let clock: Arc<dyn hsm_kms::clock::Clock> = Arc::new(hsm_kms::clock::SystemClock);
    let relabel = |akid: &str, account: &str, arn: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n = conn
            .execute(
                "UPDATE credentials SET account_id = ?2, principal_arn = ?3 \
                 WHERE access_key_id = ?1",
                rusqlite::params![akid, account, arn],
            )
            .unwrap();
        assert_eq!(n, 1);
    };
    let as_ = |running: &hsm_kms::app::Running, cred: &hsm_kms::auth::Credential| {
        Client::new(format!("http://{}", running.addr), cred.clone())
    };

    // Before: Bob acts in his own account, where the admin's key does not exist.
    let (running, _) = start_on(&s.tokens, clock.clone()).await;
    let r = as_(&running, &bob)
        .call("DescribeKey", json!({"KeyId": id}))
        .await;
    assert_eq!(r.error_type(), "NotFoundException", "{}", r.body);
    running.stop().await;

    // The swap.
    relabel(&bob.access_key_id, &admin.account_id, &admin.principal_arn);
    relabel(&admin.access_key_id, &bob.account_id, &bob.principal_arn);
    let (running, _) = start_on(&s.tokens, clock.clone()).await;
    for cred in [&bob, &admin] {
        let r = as_(&running, cred)
            .call("DescribeKey", json!({"KeyId": id}))
            .await;
        assert_eq!(
            (r.status, r.error_type()),
            (400, "UnrecognizedClientException"),
            "{}: {}",
            cred.access_key_id,
            r.body
        );
    }
    assert!(running.credentials.is_empty(), "{:?}", running.credentials);
    assert!(running.new_credential.is_none());
    running.stop().await;

    // Undone: both authenticate again, each as itself.
    relabel(&bob.access_key_id, &bob.account_id, &bob.principal_arn);
    relabel(
        &admin.access_key_id,
        &admin.account_id,
        &admin.principal_arn,
    );
    let (running, _) = start_on(&s.tokens, clock).await;
    as_(&running, &admin)
        .ok("DescribeKey", json!({"KeyId": id}))
        .await;
    let r = as_(&running, &bob)
        .call("DescribeKey", json!({"KeyId": id}))
        .await;
    assert_eq!(r.error_type(), "NotFoundException", "{}", r.body);
    running.stop().await;
}

/// The JSON 1.1 protocol's `Content-Type` is required, as AWS requires it: any other media
/// type, or none, is `UnknownOperationException`, decided before the signature is checked
/// (an unsigned request with a wrong type gets it too). The media type is compared
/// case-insensitively and may carry parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_protocol_content_type_is_an_unknown_operation() {
    let s = service().await;
    let c = &s.client;
    for ct in [
        None,
        Some("application/json"),
        Some("application/x-amz-json-1.0"),
        Some("application/x-amz-cbor-1.1"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        for sign in [true, false] {
            let r = c
                .send_with_content_type("ListKeys", b"{}".to_vec(), ct, sign)
                .await;
            assert_eq!(
                (r.status, r.error_type()),
                (400, "UnknownOperationException"),
                "{ct:?}, signed {sign}: {}",
                r.body
            );
            assert!(
                r.body["message"]
                    .as_str()
                    .unwrap()
                    .contains("application/x-amz-json-1.1"),
                "{}",
                r.body
            );
            assert_eq!(
                r.content_type.as_deref(),
                Some("application/x-amz-json-1.1")
            );
        }
    }
    // With the protocol's type, an unsigned request gets as far as authentication.
    let r = c
        .send_with_content_type(
            "ListKeys",
            b"{}".to_vec(),
            Some("application/x-amz-json-1.1"),
            false,
        )
        .await;
    assert_eq!(r.error_type(), "MissingAuthenticationTokenException");
    for ct in [
        "application/x-amz-json-1.1",
        "application/x-amz-json-1.1; charset=utf-8",
        "Application/X-Amz-Json-1.1;charset=UTF-8",
    ] {
        let r = c
            .send_with_content_type("ListKeys", b"{}".to_vec(), Some(ct), true)
            .await;
        assert_eq!(r.status, 200, "{ct}: {}", r.body);
    }
    s.running.stop().await;
}

/// Poll signed `GET /health` until it answers `status` (or fail after 20 s).
async fn health_becomes(c: &Client, secret: &str, status: &str) -> Reply {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = c.health(Some(secret)).await;
        if r.body["status"] == status || std::time::Instant::now() > end {
            return r;
        }
        // Traffic also notices a lost HSM, not only the probes.
        let _ = c.call("GenerateRandom", json!({"NumberOfBytes": 8})).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `/health` tells anyone only that the process serves (`{"status":"ok"}`, 200, whatever
/// the HSMs); a SigV4-signed caller gets ok / degraded / down (200 / 200 / 503) and the
/// per-HSM detail. A bad signature gets the AWS error and no detail. No PIN, PIN file or
/// token path appears in either form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_anyone_liveness_and_a_signed_caller_the_detail() {
    let s = service().await;
    let c = &s.client;
    key(c).await;
    let secret = c.cred.secret_access_key.to_string();
    let mut seen = Vec::new();

    let r = c.health(None).await;
    assert_eq!((r.status, &r.body), (200, &json!({"status": "ok"})));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    seen.push(r.body);
    let r = c.health(Some(&secret)).await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (200, &json!("ok")),
        "{}",
        r.body
    );
    assert_eq!(r.body["keys"], 1);
    let names: Vec<&str> = r.body["hsms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(r.body["hsms"][0]["state"].is_string(), "{}", r.body);
    seen.push(r.body);
    let r = c.health(Some("not-the-secret")).await;
    assert_eq!(
        (r.status, r.error_type()),
        (400, "InvalidSignatureException"),
        "{}",
        r.body
    );
    assert!(r.body.get("hsms").is_none() && r.body.get("status").is_none());

    // One HSM gone: degraded, still serving (200).
    let dirs: Vec<_> = s.tokens.hsms.iter().map(|h| h.token_dir.clone()).collect();
    let away = |d: &std::path::PathBuf| d.with_extension("away");
    std::fs::rename(&dirs[0], away(&dirs[0])).unwrap();
    let r = health_becomes(c, &secret, "degraded").await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (200, &json!("degraded")),
        "{}",
        r.body
    );
    assert_eq!(r.body["hsms"].as_array().unwrap().len(), 2);
    seen.push(r.body);
    // None left: down, 503.
    std::fs::rename(&dirs[1], away(&dirs[1])).unwrap();
    let r = health_becomes(c, &secret, "down").await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (503, &json!("down")),
        "{}",
        r.body
    );
    seen.push(r.body);
    // Liveness: the process still serves.
    let r = c.health(None).await;
    assert_eq!((r.status, &r.body), (200, &json!({"status": "ok"})));
    seen.push(r.body);

    for h in &s.tokens.hsms {
        let pin = std::fs::read_to_string(&h.pin_file).unwrap();
        let pin = pin.trim();
        for body in &seen {
            let text = body.to_string();
            assert!(!text.contains(pin), "a PIN in {text}");
            for path in [&h.pin_file, &h.dir, &h.token_dir, &h.conf] {
                let path = path.display().to_string();
                assert!(!text.contains(&path), "{path} in {text}");
            }
        }
    }
    for d in &dirs {
        std::fs::rename(away(d), d).unwrap();
    }
    s.running.stop().await;
}
