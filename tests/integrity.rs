//! Key-copy integrity, played as the fault hsm-facts.md §10 measured: one HSM silently
//! holds a different value for a key (SoftHSM2 keeps key values AES-CBC encrypted with no
//! MAC, so a flipped bit is a different, valid key), or a generation that an HSM finished
//! after the service had given up on it and made the key elsewhere. Before: GenerateMac
//! through that HSM answered wrong MACs with HTTP 200, and Decrypt through it failed blobs
//! the other copy made. Now every copy is checked against the value recorded when the key
//! was made, the first time it is used after the restart: the bad copy is quarantined
//! (kept as evidence, never used), every answer is right, and re-sync puts a good copy back.
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

/// The template of a KMS secret key of type `kt` holding `value`, as the service makes them.
fn secret_key(id: &[u8], label: &[u8], kt: KeyType, value: Vec<u8>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(kt),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
        Attribute::Value(value),
    ];
    if kt == KeyType::AES {
        t.extend([Attribute::Encrypt(true), Attribute::Decrypt(true)]);
    } else {
        t.extend([Attribute::Sign(true), Attribute::Verify(true)]);
    }
    t
}

/// Replace, in `hsm`'s token, every KMS secret key by a different key with the same
/// attributes (what a flipped bit in the stored value amounts to). Returns how many.
fn corrupt_secret_keys(hsm: &LocalHsm) -> usize {
    corrupt_secret_keys_where(hsm, |id| id.starts_with(b"kms/"))
}

/// [`corrupt_secret_keys`] for the secret keys whose `CKA_ID` `which` picks.
fn corrupt_secret_keys_where(hsm: &LocalHsm, which: impl Fn(&[u8]) -> bool) -> usize {
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
        if !which(id) {
            continue;
        }
        // AES-256 and HMAC_256 keys are both 32 bytes.
        let t = secret_key(id, label, *kt, vec![0x5A; 32]);
        s.destroy_object(h).unwrap();
        s.create_object(&t).unwrap();
        n += 1;
    }
    n
}

/// Remove every recorded check value from the stopped service's metadata (what a key made
/// before values were recorded at creation looks like). Returns how many keys had one.
fn forget_check_values(tokens: &Tokens) -> usize {
    let conn = rusqlite::Connection::open(tokens.dir.path().join("metadata.sqlite")).unwrap();
    let docs: Vec<(String, String)> = conn
        .prepare("SELECT key_id, doc FROM keys")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut n = 0;
    for (key_id, doc) in docs {
        let mut doc: Value = serde_json::from_str(&doc).unwrap();
        let mut had = false;
        for b in doc["backing"].as_array_mut().unwrap() {
            had |= b.as_object_mut().unwrap().remove("check_value").is_some();
        }
        if had {
            n += 1;
            conn.execute(
                "UPDATE keys SET doc = ?2 WHERE key_id = ?1",
                rusqlite::params![key_id, doc.to_string()],
            )
            .unwrap();
        }
    }
    n
}

/// Answers counted: right, wrong (HTTP 200 with another answer than the reference) or
/// failed (any other status).
#[derive(Default)]
struct Tally {
    total: usize,
    wrong: usize,
    failed: usize,
}

impl Tally {
    /// Count one answer, right when `right` says so of its body.
    fn count(&mut self, r: &Reply, right: impl FnOnce(&Value) -> bool) {
        self.total += 1;
        match r.status {
            200 if right(&r.body) => {}
            200 => self.wrong += 1,
            _ => self.failed += 1,
        }
    }

    /// Decrypt each blob, right when it gives its message back.
    async fn decrypts(&mut self, c: &Client, blobs: &[(String, Value)]) {
        for (msg, blob) in blobs {
            let r = c.call("Decrypt", json!({"CiphertextBlob": blob})).await;
            self.count(&r, |b| b["Plaintext"] == Value::String(msg.clone()));
        }
    }

    /// GenerateMac of `msg` under `key`, right when it is `mac`.
    async fn mac(&mut self, c: &Client, key: &str, alg: &str, msg: &str, mac: &Value) {
        let r = c
            .call(
                "GenerateMac",
                json!({"KeyId": key, "Message": msg, "MacAlgorithm": alg}),
            )
            .await;
        self.count(&r, |b| b["Mac"] == *mac);
    }
}

/// The `CKA_ID`s of quarantined objects in `hsm`'s token.
fn quarantined(hsm: &LocalHsm) -> usize {
    quarantined_where(hsm, b"hsm-kms/quarantine/kms/")
}

/// The `CKA_ID`s of quarantined objects in `hsm`'s token that start with `prefix`.
fn quarantined_where(hsm: &LocalHsm, prefix: &[u8]) -> usize {
    let token = UserToken::open(hsm);
    let s = token.session();
    let n = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap()
        .into_iter()
        .filter(|h| {
            matches!(
                s.get_attributes(*h, &[AttributeType::Id]).unwrap().pop(),
                Some(Attribute::Id(id)) if id.starts_with(prefix)
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
    // Each key's check value was recorded when the key was made: the service is stopped
    // before any background pass, and the copies are still told apart after the restart.
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    assert_eq!(corrupt_secret_keys(&tokens.hsms[0]), 2);

    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let mut t = Tally::default();
    for _ in 0..25 {
        for (msg, mac) in &macs {
            t.mac(&c, &mac_key, "HMAC_SHA_256", msg, mac).await;
        }
        t.decrypts(&c, &blobs).await;
    }
    let Tally {
        total,
        wrong,
        failed,
    } = t;
    println!("after the drift: {total} requests, {wrong} wrong, {failed} failed");
    assert_eq!((wrong, failed), (0, 0));
    // HSM a's two copies are quarantined: the cluster no longer counts them…
    let mac_obj = format!("kms/{mac_key}/1").into_bytes();
    let aes_obj = format!("kms/{aes_key}/1").into_bytes();
    let cl = running.cluster.clone();
    assert!(!cl.hsm_holds("a", &mac_obj) && !cl.hsm_holds("a", &aes_obj));
    // A blob that is really bad is still answered InvalidCiphertextException while a holds
    // no copy: b's copy, verified against the recorded value, is the answer (not a 500
    // because a could not say).
    let mut bad = common::unb64(&blobs[0].1);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    for _ in 0..8 {
        let r = c
            .call("Decrypt", json!({"CiphertextBlob": b64(&bad)}))
            .await;
        assert_eq!(r.error_type(), "InvalidCiphertextException");
    }
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
    let blobs = encrypted_messages(c, &key).await;
    // A key whose check value was never recorded (one made before values were recorded at
    // creation, with no background pass since): the drifted copy cannot be recognised at
    // first use, only by its failures.
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    assert_eq!(forget_check_values(&tokens), 1);
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
    // Its check value was recorded when it was made (no background pass ran).
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

/// Put a key of `kt` (`len` bytes, a value no other copy has) in `hsm`'s token under
/// `CKA_ID` `id`: what an HSM holds when it finishes a generation after the service gave
/// up on it and made the key on another HSM.
fn plant_secret_key(hsm: &LocalHsm, id: &[u8], kt: KeyType, len: usize) {
    let token = UserToken::open(hsm);
    let s = token.session();
    assert!(s
        .find_objects(&[Attribute::Id(id.to_vec())])
        .unwrap()
        .is_empty());
    s.create_object(&secret_key(id, b"late", kt, vec![0xA5; len]))
        .unwrap();
}

/// The generation window: HSM "a" hangs as each key is made on it, the key is made on "b"
/// instead (and copied to "c"), and "a" finishes its generation late: it holds a
/// *different* key under the same id. The check value recorded when the key was made tells
/// the copies apart at once, with no background pass: after a restart every answer is
/// right, a's copies are quarantined, and re-sync replaces them. (Without a value recorded
/// at creation, a's copy would pass for the key and answer wrong MACs and blobs no other
/// copy opens; the creation itself used to fail with a 500.)
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_generation_on_a_hung_hsm_is_never_used() {
    use hsm_kms::hsm::HsmError;
    use std::time::Duration;
    let tokens = tokens(&["a", "b", "c"]);
    let opts = hang_options();
    let clock = || -> Arc<dyn hsm_kms::clock::Clock> { Arc::new(hsm_kms::clock::SystemClock) };
    let (running, c) = start_tuned(&tokens, clock(), opts.clone(), Duration::from_secs(3600)).await;
    let cl = running.cluster.clone();
    let mut keys = Vec::new();
    for (params, kt, len) in [
        (json!({}), KeyType::AES, 32),
        (
            json!({"KeySpec": "HMAC_384", "KeyUsage": "GENERATE_VERIFY_MAC"}),
            KeyType::GENERIC_SECRET,
            48,
        ),
        (
            json!({"KeySpec": "HMAC_224", "KeyUsage": "GENERATE_VERIFY_MAC"}),
            KeyType::GENERIC_SECRET,
            28,
        ),
    ] {
        let id = create_key_while_first_hsm_hangs(&cl, &c, params).await;
        let object = format!("kms/{id}/1").into_bytes();
        assert!(cl.hsm_holds("b", &object) && cl.hsm_holds("c", &object));
        keys.push((id, object, kt, len));
    }
    let (aes, _, _, _) = &keys[0];
    let blobs = encrypted_messages(&c, aes).await;
    let mut macs = Vec::new();
    for ((key, ..), alg) in keys[1..].iter().zip(["HMAC_SHA_384", "HMAC_SHA_224"]) {
        let msg = b64(b"late");
        let r = c
            .ok(
                "GenerateMac",
                json!({"KeyId": key, "Message": msg, "MacAlgorithm": alg}),
            )
            .await;
        macs.push((key.clone(), alg, msg, r["Mac"].clone()));
    }
    running.stop().await;
    drop(cl);
    // "a" finished each generation late (the service never saw those objects).
    for (_, object, kt, len) in &keys {
        plant_secret_key(&tokens.hsms[0], object, *kt, *len);
    }
    let (running, c) = start_tuned(&tokens, clock(), opts, Duration::from_secs(3600)).await;
    let mut t = Tally::default();
    for _ in 0..20 {
        t.decrypts(&c, &blobs).await;
        for (key, alg, msg, mac) in &macs {
            t.mac(&c, key, alg, msg, mac).await;
        }
        // Blobs encrypted now open on every copy that is used.
        let r = c
            .call("Encrypt", json!({"KeyId": aes, "Plaintext": b64(b"now")}))
            .await;
        let opened = c
            .call(
                "Decrypt",
                json!({"CiphertextBlob": r.body["CiphertextBlob"]}),
            )
            .await;
        t.count(&opened, |b| {
            r.status == 200 && unb64(&b["Plaintext"]) == b"now"
        });
    }
    let Tally {
        total,
        wrong,
        failed,
    } = t;
    println!("after the late generations: {total} requests, {wrong} wrong, {failed} failed");
    assert_eq!((wrong, failed), (0, 0));
    let cl = running.cluster.clone();
    // Each of a's late copies is found out the first time it is used (the loop above need
    // not have sent every key's calls to "a").
    for (_, object, ..) in &keys {
        let r = cl.encrypt_on("a", object, vec![], b"x".to_vec()).await;
        assert!(matches!(r, Err(HsmError::KeyMissing { .. })), "{r:?}");
        assert!(!cl.hsm_holds("a", object), "a's late copy is never used");
    }
    assert!(running.kms.resync_hsms().await.unwrap() >= 3);
    for (_, object, ..) in &keys {
        assert!(cl.hsm_holds("a", object), "re-sync gave \"a\" a good copy");
    }
    running.stop().await;
    drop(cl);
    assert_eq!(quarantined(&tokens.hsms[0]), 3, "kept as evidence");
}

/// The service's own keys (credential sealing, audit digest, import token) get the same
/// protection: their check values, recorded when they were made, are handed to the HSMs at
/// every start, so a different copy under one of their ids (a late generation on an HSM
/// the service gave up on) is quarantined at first use, never used.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_copy_of_a_service_key_is_never_used() {
    use hsm_kms::hsm::HsmError;
    let svc = service().await;
    let c = &svc.client;
    // The import token key is made by the first GetParametersForImport.
    let key = c.ok("CreateKey", json!({"Origin": "EXTERNAL"})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(
        "GetParametersForImport",
        json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
    )
    .await;
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    let own = [
        hsm_kms::kms::credentials::SEALING_KEY_ID,
        hsm_kms::kms::digest::DIGEST_KEY_ID,
        hsm_kms::kms::service::IMPORT_TOKEN_KEY_ID,
    ];
    let n = corrupt_secret_keys_where(&tokens.hsms[0], |id| own.iter().any(|o| id == o.as_bytes()));
    assert_eq!(n, 3);
    let (running, c) = start_on(&tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    // The service works (its credentials unsealed, calls recorded and digested)…
    for _ in 0..10 {
        c.ok("ListKeys", json!({})).await;
    }
    c.ok(
        "GetParametersForImport",
        json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
    )
    .await;
    // …and none of a's different copies is ever used.
    let cl = running.cluster.clone();
    for id in own {
        let r = cl
            .encrypt_on("a", id.as_bytes(), vec![], b"x".to_vec())
            .await;
        assert!(matches!(r, Err(HsmError::KeyMissing { .. })), "{id}: {r:?}");
        let r = cl
            .encrypt_on("b", id.as_bytes(), vec![], b"x".to_vec())
            .await;
        assert!(
            !matches!(r, Err(HsmError::KeyMissing { .. })),
            "{id}: {r:?}"
        );
    }
    running.stop().await;
    drop(cl);
    assert_eq!(
        quarantined_where(&tokens.hsms[0], b"hsm-kms/quarantine/hsm-kms/"),
        3
    );
}
