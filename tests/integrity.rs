//! Key-copy integrity, played as the fault hsm-facts.md §10 measured: one HSM silently
//! holds a different value for a key (SoftHSM2 keeps key values AES-CBC encrypted with no
//! MAC, so a flipped bit is a different, valid key). Before: GenerateMac through that HSM
//! answered wrong MACs with HTTP 200, and Decrypt through it failed blobs the other copy
//! made. Now every copy is checked against the value recorded when the copies agreed, the
//! first time it is used after the restart: the bad copy is quarantined (kept as evidence,
//! never used), every answer is right, and re-sync puts a good copy back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use hsm_kms::hsm::softhsm::LocalHsm;
use serde_json::{json, Value};
use std::sync::Arc;

/// Replace, in `hsm`'s token, every KMS secret key by a different key with the same
/// attributes (what a flipped bit in the stored value amounts to). Returns how many.
fn corrupt_secret_keys(hsm: &LocalHsm) -> usize {
    let token = UserToken::open(hsm);
    let s = token.session();
    let mut n = 0;
    for h in s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap()
    {
        let attrs = s
            .get_attributes(
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::KeyType,
                ],
            )
            .unwrap();
        let (Attribute::Id(id), Attribute::Label(label), Attribute::KeyType(kt)) =
            (&attrs[0], &attrs[1], &attrs[2])
        else {
            panic!("{attrs:?}")
        };
        if !id.starts_with(b"kms/") {
            continue;
        }
        // AES-256 and HMAC_256 keys are both 32 bytes.
        let len = 32;
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(*kt),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label.clone()),
            Attribute::Value(vec![0x5A; len]),
        ];
        if *kt == KeyType::AES {
            t.extend([Attribute::Encrypt(true), Attribute::Decrypt(true)]);
        } else {
            t.extend([Attribute::Sign(true), Attribute::Verify(true)]);
        }
        s.destroy_object(h).unwrap();
        s.create_object(&t).unwrap();
        n += 1;
    }
    n
}

/// The `CKA_ID`s of quarantined objects in `hsm`'s token.
fn quarantined(hsm: &LocalHsm) -> usize {
    let token = UserToken::open(hsm);
    let s = token.session();
    let n = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap()
        .into_iter()
        .filter(|h| {
            matches!(
                s.get_attributes(*h, &[AttributeType::Id]).unwrap().pop(),
                Some(Attribute::Id(id)) if id.starts_with(b"hsm-kms/quarantine/kms/")
            )
        })
        .count();
    drop(token);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_copy_is_never_used_and_is_replaced() {
    let svc = service().await;
    let c = &svc.client;
    let mac_key = c
        .create_key(json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}))
        .await;
    let aes_key = c.create_key(json!({})).await;
    let mut macs = Vec::new();
    let mut blobs = Vec::new();
    for i in 0..4 {
        let msg = b64(format!("message {i}").as_bytes());
        let r = c
            .ok(
                "GenerateMac",
                json!({"KeyId": mac_key, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await;
        macs.push((msg.clone(), r["Mac"].clone()));
        let r = c
            .ok("Encrypt", json!({"KeyId": aes_key, "Plaintext": msg}))
            .await;
        blobs.push((msg, r["CiphertextBlob"].clone()));
    }
    // The background pass records each key's check value once the copies agree.
    let recorded = svc.running.kms.record_check_values().await.unwrap();
    assert_eq!(recorded, 2);
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    assert_eq!(corrupt_secret_keys(&tokens.hsms[0]), 2);

    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let (mut wrong, mut failed, mut total) = (0, 0, 0);
    for _ in 0..25 {
        for (msg, mac) in &macs {
            total += 1;
            let r = c
                .call(
                    "GenerateMac",
                    json!({"KeyId": mac_key, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
                )
                .await;
            match r.status {
                200 if r.body["Mac"] == *mac => {}
                200 => wrong += 1,
                _ => failed += 1,
            }
        }
        for (msg, blob) in &blobs {
            total += 1;
            let r = c.call("Decrypt", json!({"CiphertextBlob": blob})).await;
            match r.status {
                200 if r.body["Plaintext"] == Value::String(msg.clone()) => {}
                200 => wrong += 1,
                _ => failed += 1,
            }
        }
    }
    println!("after the drift: {total} requests, {wrong} wrong, {failed} failed");
    assert_eq!((wrong, failed), (0, 0));
    // HSM a's two copies are quarantined: the cluster no longer counts them…
    let mac_obj = format!("kms/{mac_key}/1").into_bytes();
    let aes_obj = format!("kms/{aes_key}/1").into_bytes();
    let cl = running.cluster.clone();
    assert!(!cl.hsm_holds("a", &mac_obj) && !cl.hsm_holds("a", &aes_obj));
    // …and re-sync copies good ones back from b.
    assert!(running.kms.resync_hsms().await.unwrap() >= 2);
    assert!(cl.hsm_holds("a", &mac_obj) && cl.hsm_holds("a", &aes_obj));
    running.stop().await;
    drop(cl);
    assert_eq!(quarantined(&tokens.hsms[0]), 2, "kept as evidence");
    // After another restart every request is served right, by either HSM.
    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    for (msg, mac) in &macs {
        for _ in 0..4 {
            let r = c
                .ok(
                    "GenerateMac",
                    json!({"KeyId": mac_key, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
                )
                .await;
            assert_eq!(r["Mac"], *mac);
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_failure_on_one_hsm_is_retried_on_another() {
    let svc = service().await;
    let c = &svc.client;
    let key = c.create_key(json!({})).await;
    let mut blobs = Vec::new();
    for i in 0..4 {
        let msg = b64(format!("message {i}").as_bytes());
        let r = c
            .ok("Encrypt", json!({"KeyId": key, "Plaintext": msg}))
            .await;
        blobs.push((msg, r["CiphertextBlob"].clone()));
    }
    // No check value recorded yet (the background pass has not run): the drifted copy
    // cannot be recognised at first use, only by its failures.
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    assert_eq!(corrupt_secret_keys(&tokens.hsms[0]), 1);
    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let (mut failed, mut total) = (0, 0);
    for _ in 0..10 {
        for (msg, blob) in &blobs {
            total += 1;
            let r = c.call("Decrypt", json!({"CiphertextBlob": blob})).await;
            if r.status != 200 || r.body["Plaintext"] != Value::String(msg.clone()) {
                failed += 1;
            }
        }
    }
    println!("tag failures retried: {total} decrypts, {failed} failed");
    assert_eq!(failed, 0);
    // A blob that is really bad still answers InvalidCiphertextException.
    let mut bad = common::unb64(&blobs[0].1);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = c
        .call("Decrypt", json!({"CiphertextBlob": b64(&bad)}))
        .await;
    assert_eq!(r.error_type(), "InvalidCiphertextException");
    // The copies disagree and nothing recorded says which is right: nothing is recorded
    // (a drift finding is logged for an operator).
    assert_eq!(running.kms.record_check_values().await.unwrap(), 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paranoid_mode_never_sends_an_answer_another_hsm_does_not_confirm() {
    let svc = service().await;
    let c = &svc.client;
    let mac_key = c
        .create_key(json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}))
        .await;
    let msg = b64(b"paranoid");
    let reference = c
        .ok(
            "GenerateMac",
            json!({"KeyId": mac_key, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .await["Mac"]
        .clone();
    // No check value recorded: first-use verification cannot catch the drift; only the
    // second HSM's confirmation can.
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    corrupt_secret_keys(&tokens.hsms[0]);
    let paranoid = hsm_kms::hsm::ClusterOptions {
        paranoid: true,
        ..fast_options()
    };
    let (running, c) =
        start_on_with(&tokens, Arc::new(hsm_kms::clock::SystemClock), paranoid).await;
    let (mut right, mut refused, mut wrong) = (0, 0, 0);
    for _ in 0..40 {
        let r = c
            .call(
                "GenerateMac",
                json!({"KeyId": mac_key, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await;
        match r.status {
            200 if r.body["Mac"] == reference => right += 1,
            200 => wrong += 1,
            _ => {
                assert_eq!(r.error_type(), "DependencyTimeoutException", "{:?}", r.body);
                refused += 1;
            }
        }
    }
    println!("paranoid: {right} right, {refused} refused (retryable), {wrong} wrong");
    assert_eq!(wrong, 0);
    assert!(refused > 0, "the drifted copy answered and was refuted");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_refused_by_one_hsm_is_checked_on_another() {
    use cryptoki::mechanism::Mechanism;
    let svc = service().await;
    let c = &svc.client;
    let key = c
        .create_key(json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}))
        .await;
    let msg = b64(b"signed");
    let sig = c
        .ok(
            "Sign",
            json!({"KeyId": key, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .await["Signature"]
        .clone();
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    // HSM a's copy of the public key becomes another key's (a drifted public object).
    {
        let token = UserToken::open(&tokens.hsms[0]);
        let s = token.session();
        let id = format!("kms/{key}/1").into_bytes();
        for h in s
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.clone()),
            ])
            .unwrap()
        {
            s.destroy_object(h).unwrap();
        }
        let p256 = hsm_kms::pkix::Curve::P256.params_der().to_vec();
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(p256),
                Attribute::Id(id),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    }
    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let mut refused = 0;
    for _ in 0..20 {
        let r = c
            .call(
                "Verify",
                json!({"KeyId": key, "Message": msg, "Signature": sig,
                       "SigningAlgorithm": "ECDSA_SHA_256"}),
            )
            .await;
        if r.status != 200 || r.body["SignatureValid"] != json!(true) {
            refused += 1;
        }
    }
    println!("verify with a drifted public copy: 20 calls, {refused} refused");
    assert_eq!(refused, 0);
    running.stop().await;
}

/// Replace, in `hsm`'s token, the private half of key pair `object` by another P-256 private
/// key with the same `CKA_ID` (what a flipped bit in its stored value amounts to), keeping
/// the public half.
fn corrupt_private_key(hsm: &LocalHsm, object: &[u8]) {
    use cryptoki::mechanism::Mechanism;
    let token = UserToken::open(hsm);
    let s = token.session();
    let old = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(object.to_vec()),
        ])
        .unwrap();
    assert_eq!(old.len(), 1, "one private copy");
    s.destroy_object(old[0]).unwrap();
    // P-256: OID 1.2.840.10045.3.1.7.
    let p256 = vec![0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(p256),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Id(object.to_vec()),
        ],
    )
    .unwrap();
}

/// The same as [`a_drifted_copy_is_never_used_and_is_replaced`] for a key pair: one HSM's
/// private half is another key. Before key pairs had check values, half of the Sign answers
/// (those served by that HSM) were signatures that do not verify under the key's public key,
/// with HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_key_pair_copy_is_never_used() {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let svc = service().await;
    let c = &svc.client;
    let key = c
        .create_key(json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}))
        .await;
    let spki = c.ok("GetPublicKey", json!({"KeyId": key})).await["PublicKey"].clone();
    let public = p256::ecdsa::VerifyingKey::from_public_key_der(&unb64(&spki)).unwrap();
    assert_eq!(svc.running.kms.record_check_values().await.unwrap(), 1);
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    let object = format!("kms/{key}/1").into_bytes();
    corrupt_private_key(&tokens.hsms[0], &object);

    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let (mut wrong, mut failed) = (0, 0);
    for i in 0..100 {
        let msg = format!("message {i}").into_bytes();
        let r = c
            .call(
                "Sign",
                json!({"KeyId": key, "Message": b64(&msg), "SigningAlgorithm": "ECDSA_SHA_256"}),
            )
            .await;
        if r.status != 200 {
            failed += 1;
            continue;
        }
        let sig = p256::ecdsa::Signature::from_der(&unb64(&r.body["Signature"])).unwrap();
        if public.verify(&msg, &sig).is_err() {
            wrong += 1;
        }
    }
    println!("after the drift: 100 Sign requests, {wrong} wrong, {failed} failed");
    assert_eq!((wrong, failed), (0, 0));
    // HSM a's copy is quarantined (kept as evidence, never used), and re-sync replaces it.
    let cl = running.cluster.clone();
    assert!(!cl.hsm_holds_private("a", &object));
    assert!(running.kms.resync_hsms().await.unwrap() >= 1);
    assert!(cl.hsm_holds_private("a", &object));
    running.stop().await;
}
