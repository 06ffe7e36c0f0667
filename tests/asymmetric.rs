//! Asymmetric and HMAC keys end to end over HTTP against real SoftHSM2 tokens. Every
//! signature and every OAEP ciphertext is checked independently of the service with the
//! `p256`/`p384`/`p521`/`k256` and `rsa` crates on the public key from GetPublicKey.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use serde_json::{json, Value};
use sha2::Digest;

async fn create(c: &Client, spec: &str, usage: &str) -> Value {
    c.ok("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))
        .await["KeyMetadata"]
        .clone()
}

fn id(md: &Value) -> String {
    md["KeyId"].as_str().unwrap().to_string()
}

async fn public_key(c: &Client, key: &str) -> (Value, Vec<u8>) {
    let r = c.ok("GetPublicKey", json!({"KeyId": key})).await;
    let der = unb64(&r["PublicKey"]);
    (r, der)
}

async fn sign(c: &Client, key: &str, msg: &[u8], alg: &str, mt: &str) -> Vec<u8> {
    let r = c
        .ok(
            "Sign",
            json!({"KeyId": key, "Message": b64(msg), "SigningAlgorithm": alg, "MessageType": mt}),
        )
        .await;
    assert_eq!(r["SigningAlgorithm"], alg);
    assert!(r["KeyId"].as_str().unwrap().ends_with(key));
    unb64(&r["Signature"])
}

async fn expect(c: &Client, op: &str, body: Value, ty: &str) {
    let r = c.call(op, body).await;
    assert_eq!(r.error_type(), ty, "{op}: {}", r.body);
    assert_eq!(r.status, 400, "{op}: {}", r.body);
}

/// Verify an ECDSA DER signature over `msg` independently; returns false if invalid.
fn ecdsa_ok(spec: &str, spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use p256::pkcs8::DecodePublicKey;
    match spec {
        "ECC_NIST_P256" => {
            use p256::ecdsa::signature::Verifier;
            let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
            let s = p256::ecdsa::Signature::from_der(sig).unwrap();
            k.verify(msg, &s).is_ok()
        }
        "ECC_NIST_P384" => {
            use p384::ecdsa::signature::Verifier;
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
            let s = p384::ecdsa::Signature::from_der(sig).unwrap();
            k.verify(msg, &s).is_ok()
        }
        "ECC_NIST_P521" => {
            use p521::ecdsa::signature::hazmat::PrehashVerifier;
            let pk = p521::PublicKey::from_public_key_der(spki).unwrap();
            let k = p521::ecdsa::VerifyingKey::from_affine(*pk.as_affine()).unwrap();
            let s = p521::ecdsa::Signature::from_der(sig).unwrap();
            k.verify_prehash(&sha2::Sha512::digest(msg), &s).is_ok()
        }
        "ECC_SECG_P256K1" => {
            use k256::ecdsa::signature::Verifier;
            let k = k256::ecdsa::VerifyingKey::from_public_key_der(spki).unwrap();
            let s = k256::ecdsa::Signature::from_der(sig).unwrap();
            // k256 accepts only low-S signatures (Bitcoin rule); ECDSA itself, AWS and
            // the HSM allow either S, so normalize before checking.
            let s = s.normalize_s().unwrap_or(s);
            k.verify(msg, &s).is_ok()
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_every_curve_signs_in_hsm_and_verifies_independently() {
    let s = service().await;
    let c = &s.client;
    for (spec, alg, hash_len, wrong) in [
        ("ECC_NIST_P256", "ECDSA_SHA_256", 32, "ECDSA_SHA_384"),
        ("ECC_NIST_P384", "ECDSA_SHA_384", 48, "ECDSA_SHA_256"),
        ("ECC_NIST_P521", "ECDSA_SHA_512", 64, "RSASSA_PSS_SHA_256"),
        ("ECC_SECG_P256K1", "ECDSA_SHA_256", 32, "ECDSA_SHA_512"),
    ] {
        let md = create(c, spec, "SIGN_VERIFY").await;
        assert_eq!(md["KeySpec"], spec);
        assert_eq!(md["CustomerMasterKeySpec"], spec);
        assert_eq!(md["KeyUsage"], "SIGN_VERIFY");
        assert_eq!(md["SigningAlgorithms"], json!([alg]));
        assert!(md.get("EncryptionAlgorithms").is_none());
        let k = id(&md);
        // The private key is in both HSMs.
        let obj = format!("kms/{k}/1").into_bytes();
        let cl = &s.running.cluster;
        assert!(cl.hsm_holds_private("a", &obj) && cl.hsm_holds_private("b", &obj));

        let (pk, spki) = public_key(c, &k).await;
        assert_eq!(pk["KeySpec"], spec);
        assert_eq!(pk["KeyUsage"], "SIGN_VERIFY");
        assert_eq!(pk["SigningAlgorithms"], json!([alg]));
        assert!(pk.get("EncryptionAlgorithms").is_none());

        let msg = format!("message for {spec}").into_bytes();
        // Several signatures: requests spread over both HSMs, each copy must sign right.
        for _ in 0..4 {
            let sig = sign(c, &k, &msg, alg, "RAW").await;
            assert!(ecdsa_ok(spec, &spki, &msg, &sig), "{spec} RAW signature");
            c.ok(
                "Verify",
                json!({"KeyId": k, "Message": b64(&msg), "Signature": b64(&sig), "SigningAlgorithm": alg}),
            )
            .await;
        }
        // DIGEST: the message is the digest, not hashed again.
        let digest = match hash_len {
            32 => sha2::Sha256::digest(&msg).to_vec(),
            48 => sha2::Sha384::digest(&msg).to_vec(),
            _ => sha2::Sha512::digest(&msg).to_vec(),
        };
        let sig = sign(c, &k, &digest, alg, "DIGEST").await;
        assert!(ecdsa_ok(spec, &spki, &msg, &sig), "{spec} DIGEST signature");
        let v = c
            .ok(
                "Verify",
                json!({"KeyId": k, "Message": b64(&msg), "MessageType": "RAW",
                       "Signature": b64(&sig), "SigningAlgorithm": alg}),
            )
            .await;
        assert_eq!(v["SignatureValid"], true);
        // Wrong message → KMSInvalidSignatureException; wrong digest length → Validation.
        expect(
            c,
            "Verify",
            json!({"KeyId": k, "Message": b64(b"other"), "Signature": b64(&sig), "SigningAlgorithm": alg}),
            "KMSInvalidSignatureException",
        )
        .await;
        expect(
            c,
            "Verify",
            json!({"KeyId": k, "Message": b64(&msg), "Signature": b64(b"not DER"), "SigningAlgorithm": alg}),
            "KMSInvalidSignatureException",
        )
        .await;
        expect(
            c,
            "Sign",
            json!({"KeyId": k, "Message": b64(&digest[1..]), "MessageType": "DIGEST", "SigningAlgorithm": alg}),
            "ValidationException",
        )
        .await;
        expect(
            c,
            "Sign",
            json!({"KeyId": k, "Message": b64(&msg), "SigningAlgorithm": wrong}),
            "InvalidKeyUsageException",
        )
        .await;
    }
    // RAW messages are limited to 4096 bytes.
    let k = id(&create(c, "ECC_NIST_P256", "SIGN_VERIFY").await);
    sign(c, &k, &[7u8; 4096], "ECDSA_SHA_256", "RAW").await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(&[7u8; 4097]), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "ValidationException",
    )
    .await;
    // Signing keys do not encrypt; symmetric keys do not sign.
    expect(
        c,
        "Encrypt",
        json!({"KeyId": k, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
        "InvalidKeyUsageException",
    )
    .await;
    let sym = id(&c.ok("CreateKey", json!({})).await["KeyMetadata"]);
    expect(
        c,
        "Sign",
        json!({"KeyId": sym, "Message": b64(b"x"), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
    expect(
        c,
        "GetPublicKey",
        json!({"KeyId": sym}),
        "UnsupportedOperationException",
    )
    .await;
    // Disabled keys refuse to sign.
    c.ok("DisableKey", json!({"KeyId": k})).await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(b"x"), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "DisabledException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_pkcs1_and_pss_signatures_verify_with_the_rsa_crate() {
    use rsa::pkcs8::DecodePublicKey;
    let s = service().await;
    let c = &s.client;
    let md = create(c, "RSA_2048", "SIGN_VERIFY").await;
    assert_eq!(
        md["SigningAlgorithms"],
        json!([
            "RSASSA_PKCS1_V1_5_SHA_256",
            "RSASSA_PKCS1_V1_5_SHA_384",
            "RSASSA_PKCS1_V1_5_SHA_512",
            "RSASSA_PSS_SHA_256",
            "RSASSA_PSS_SHA_384",
            "RSASSA_PSS_SHA_512"
        ])
    );
    let k = id(&md);
    let (_, spki) = public_key(c, &k).await;
    let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let msg = b"pay 100 to bob";
    let h256 = sha2::Sha256::digest(msg).to_vec();
    let h384 = sha2::Sha384::digest(msg).to_vec();
    let h512 = sha2::Sha512::digest(msg).to_vec();
    for (alg, check) in [
        ("RSASSA_PKCS1_V1_5_SHA_256", 0),
        ("RSASSA_PKCS1_V1_5_SHA_384", 1),
        ("RSASSA_PKCS1_V1_5_SHA_512", 2),
        ("RSASSA_PSS_SHA_256", 3),
        ("RSASSA_PSS_SHA_384", 4),
        ("RSASSA_PSS_SHA_512", 5),
    ] {
        let sig = sign(c, &k, msg, alg, "RAW").await;
        assert_eq!(sig.len(), 256);
        let r = match check {
            0 => pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &h256, &sig),
            1 => pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &h384, &sig),
            2 => pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &h512, &sig),
            // AWS PSS: salt length = digest length.
            3 => pk.verify(rsa::Pss::new_with_salt::<sha2::Sha256>(32), &h256, &sig),
            4 => pk.verify(rsa::Pss::new_with_salt::<sha2::Sha384>(48), &h384, &sig),
            _ => pk.verify(rsa::Pss::new_with_salt::<sha2::Sha512>(64), &h512, &sig),
        };
        assert!(r.is_ok(), "{alg}: {r:?}");
        c.ok(
            "Verify",
            json!({"KeyId": k, "Message": b64(msg), "Signature": b64(&sig), "SigningAlgorithm": alg}),
        )
        .await;
        let mut bad = sig.clone();
        bad[10] ^= 1;
        expect(
            c,
            "Verify",
            json!({"KeyId": k, "Message": b64(msg), "Signature": b64(&bad), "SigningAlgorithm": alg}),
            "KMSInvalidSignatureException",
        )
        .await;
    }
    // A signature made locally with PSS verifies in the service only under PSS.
    let sig = sign(c, &k, &h256, "RSASSA_PSS_SHA_256", "DIGEST").await;
    assert!(pk
        .verify(rsa::Pss::new_with_salt::<sha2::Sha256>(32), &h256, &sig)
        .is_ok());
    expect(
        c,
        "Verify",
        json!({"KeyId": k, "Message": b64(msg), "Signature": b64(&sig), "SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}),
        "KMSInvalidSignatureException",
    )
    .await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(msg), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
    expect(
        c,
        "Encrypt",
        json!({"KeyId": k, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
        "InvalidKeyUsageException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_oaep_encrypt_decrypt_with_exact_limits_and_local_ciphertext() {
    use rsa::pkcs8::DecodePublicKey;
    let s = service().await;
    let c = &s.client;
    let md = create(c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    assert_eq!(
        md["EncryptionAlgorithms"],
        json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
    );
    assert!(md.get("SigningAlgorithms").is_none());
    let k = id(&md);
    let (pkr, spki) = public_key(c, &k).await;
    assert_eq!(
        pkr["EncryptionAlgorithms"],
        json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
    );
    let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let mut rng = rand::thread_rng();
    for (alg, max) in [("RSAES_OAEP_SHA_1", 214usize), ("RSAES_OAEP_SHA_256", 190)] {
        // Service round trip at the exact limit; one byte more is refused.
        let pt: Vec<u8> = (0..max).map(|i| i as u8).collect();
        let e = c
            .ok(
                "Encrypt",
                json!({"KeyId": k, "Plaintext": b64(&pt), "EncryptionAlgorithm": alg}),
            )
            .await;
        assert_eq!(e["EncryptionAlgorithm"], alg);
        let ct = unb64(&e["CiphertextBlob"]);
        assert_eq!(ct.len(), 256, "ciphertext is the modulus length");
        for _ in 0..2 {
            let d = c
                .ok(
                    "Decrypt",
                    json!({"KeyId": k, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": alg}),
                )
                .await;
            assert_eq!(unb64(&d["Plaintext"]), pt);
            assert_eq!(d["EncryptionAlgorithm"], alg);
        }
        expect(
            c,
            "Encrypt",
            json!({"KeyId": k, "Plaintext": b64(&vec![1u8; max + 1]), "EncryptionAlgorithm": alg}),
            "ValidationException",
        )
        .await;
        // Ciphertext made locally with the downloaded public key decrypts in the service
        // (on both HSMs: several requests).
        let local = b"encrypted outside the service".to_vec();
        let lct = if max == 214 {
            pk.encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), &local)
        } else {
            pk.encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), &local)
        }
        .unwrap();
        for _ in 0..3 {
            let d = c
                .ok(
                    "Decrypt",
                    json!({"KeyId": k, "CiphertextBlob": b64(&lct), "EncryptionAlgorithm": alg}),
                )
                .await;
            assert_eq!(unb64(&d["Plaintext"]), local);
        }
        // Tampered ciphertext → InvalidCiphertextException (never a device failure).
        let mut bad = lct.clone();
        bad[100] ^= 0x55;
        expect(
            c,
            "Decrypt",
            json!({"KeyId": k, "CiphertextBlob": b64(&bad), "EncryptionAlgorithm": alg}),
            "InvalidCiphertextException",
        )
        .await;
    }
    // The service's own ciphertext decrypts only under the algorithm it was made with.
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": k, "Plaintext": b64(b"hello"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await;
    expect(
        c,
        "Decrypt",
        json!({"KeyId": k, "CiphertextBlob": e["CiphertextBlob"], "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
        "InvalidCiphertextException",
    )
    .await;
    expect(
        c,
        "Encrypt",
        json!({"KeyId": k, "Plaintext": b64(b"x")}),
        "InvalidKeyUsageException",
    )
    .await;
    expect(
        c,
        "Decrypt",
        json!({"KeyId": k, "CiphertextBlob": b64(&[1u8; 255]), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
        "InvalidCiphertextException",
    )
    .await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(b"x"), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
    // Both HSMs stay healthy after the bad ciphertexts.
    for h in s.running.cluster.health() {
        assert_eq!(h.state, hsm_kms::hsm::NodeState::Healthy, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_3072_and_4096_sign_and_decrypt() {
    use rsa::pkcs8::DecodePublicKey;
    let s = service().await;
    let c = &s.client;
    for (spec, bytes, sha256_max) in [("RSA_3072", 384usize, 318usize), ("RSA_4096", 512, 446)] {
        let k = id(&create(c, spec, "SIGN_VERIFY").await);
        let (_, spki) = public_key(c, &k).await;
        let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
        let sig = sign(c, &k, b"m", "RSASSA_PSS_SHA_512", "RAW").await;
        assert_eq!(sig.len(), bytes);
        pk.verify(
            rsa::Pss::new_with_salt::<sha2::Sha512>(64),
            &sha2::Sha512::digest(b"m"),
            &sig,
        )
        .unwrap();
        let k = id(&create(c, spec, "ENCRYPT_DECRYPT").await);
        let (_, spki) = public_key(c, &k).await;
        let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
        let pt = vec![9u8; sha256_max];
        let ct = pk
            .encrypt(
                &mut rand::thread_rng(),
                rsa::Oaep::new::<sha2::Sha256>(),
                &pt,
            )
            .unwrap();
        let d = c
            .ok(
                "Decrypt",
                json!({"KeyId": k, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            )
            .await;
        assert_eq!(unb64(&d["Plaintext"]), pt);
        expect(
            c,
            "Encrypt",
            json!({"KeyId": k, "Plaintext": b64(&vec![1u8; sha256_max + 1]), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            "ValidationException",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_keys_generate_and_verify_macs() {
    let s = service().await;
    let c = &s.client;
    for (spec, alg, len, wrong) in [
        ("HMAC_224", "HMAC_SHA_224", 28, "HMAC_SHA_256"),
        ("HMAC_256", "HMAC_SHA_256", 32, "HMAC_SHA_224"),
        ("HMAC_384", "HMAC_SHA_384", 48, "HMAC_SHA_512"),
        ("HMAC_512", "HMAC_SHA_512", 64, "HMAC_SHA_384"),
    ] {
        let md = create(c, spec, "GENERATE_VERIFY_MAC").await;
        assert_eq!(md["MacAlgorithms"], json!([alg]));
        assert_eq!(md["KeyUsage"], "GENERATE_VERIFY_MAC");
        let k = id(&md);
        let obj = format!("kms/{k}/1").into_bytes();
        let cl = &s.running.cluster;
        assert!(cl.hsm_holds("a", &obj) && cl.hsm_holds("b", &obj));
        let msg = b"mac me";
        let mut macs = Vec::new();
        for _ in 0..4 {
            let r = c
                .ok(
                    "GenerateMac",
                    json!({"KeyId": k, "Message": b64(msg), "MacAlgorithm": alg}),
                )
                .await;
            assert_eq!(r["MacAlgorithm"], alg);
            macs.push(unb64(&r["Mac"]));
        }
        // Deterministic across both HSMs' copies, and of the algorithm's length.
        assert!(macs.iter().all(|m| m == &macs[0] && m.len() == len));
        let v = c
            .ok(
                "VerifyMac",
                json!({"KeyId": k, "Message": b64(msg), "Mac": b64(&macs[0]), "MacAlgorithm": alg}),
            )
            .await;
        assert_eq!(v["MacValid"], true);
        let mut bad = macs[0].clone();
        bad[0] ^= 1;
        expect(
            c,
            "VerifyMac",
            json!({"KeyId": k, "Message": b64(msg), "Mac": b64(&bad), "MacAlgorithm": alg}),
            "KMSInvalidMacException",
        )
        .await;
        expect(
            c,
            "VerifyMac",
            json!({"KeyId": k, "Message": b64(b"other"), "Mac": b64(&macs[0]), "MacAlgorithm": alg}),
            "KMSInvalidMacException",
        )
        .await;
        expect(
            c,
            "GenerateMac",
            json!({"KeyId": k, "Message": b64(msg), "MacAlgorithm": wrong}),
            "InvalidKeyUsageException",
        )
        .await;
        expect(
            c,
            "GetPublicKey",
            json!({"KeyId": k}),
            "UnsupportedOperationException",
        )
        .await;
        expect(
            c,
            "Encrypt",
            json!({"KeyId": k, "Plaintext": b64(b"x")}),
            "InvalidKeyUsageException",
        )
        .await;
    }
    // Two keys of the same spec give different MACs.
    let k1 = id(&create(c, "HMAC_256", "GENERATE_VERIFY_MAC").await);
    let k2 = id(&create(c, "HMAC_256", "GENERATE_VERIFY_MAC").await);
    let m = |k: String| async move {
        unb64(
            &c.ok(
                "GenerateMac",
                json!({"KeyId": k, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await["Mac"],
        )
    };
    assert_ne!(m(k1).await, m(k2).await);
    let sym = id(&c.ok("CreateKey", json!({})).await["KeyMetadata"]);
    expect(
        c,
        "GenerateMac",
        json!({"KeyId": sym, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derive_shared_secret_matches_local_ecdh() {
    use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
    let s = service().await;
    let c = &s.client;
    let md = create(c, "ECC_NIST_P256", "KEY_AGREEMENT").await;
    assert_eq!(md["KeyAgreementAlgorithms"], json!(["ECDH"]));
    assert!(md.get("SigningAlgorithms").is_none());
    let k = id(&md);
    let (pkr, spki) = public_key(c, &k).await;
    assert_eq!(pkr["KeyAgreementAlgorithms"], json!(["ECDH"]));
    let kms_pub = p256::PublicKey::from_public_key_der(&spki).unwrap();
    for _ in 0..3 {
        let mine = p256::ecdh::EphemeralSecret::random(&mut rand::thread_rng());
        let my_spki = mine.public_key().to_public_key_der().unwrap();
        let r = c
            .ok(
                "DeriveSharedSecret",
                json!({"KeyId": k, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(my_spki.as_bytes())}),
            )
            .await;
        assert_eq!(r["KeyAgreementAlgorithm"], "ECDH");
        assert_eq!(r["KeyOrigin"], "AWS_KMS");
        let local = mine.diffie_hellman(&kms_pub);
        assert_eq!(unb64(&r["SharedSecret"]), local.raw_secret_bytes().to_vec());
    }
    // A P-384 peer key, garbage, and a point off the curve are refused.
    let other = id(&create(c, "ECC_NIST_P384", "KEY_AGREEMENT").await);
    let (_, p384_spki) = public_key(c, &other).await;
    expect(
        c,
        "DeriveSharedSecret",
        json!({"KeyId": k, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&p384_spki)}),
        "ValidationException",
    )
    .await;
    expect(
        c,
        "DeriveSharedSecret",
        json!({"KeyId": k, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(b"garbage")}),
        "ValidationException",
    )
    .await;
    let mut off = spki.clone();
    let n = off.len();
    off[n - 1] ^= 1; // y no longer matches x
    expect(
        c,
        "DeriveSharedSecret",
        json!({"KeyId": k, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&off)}),
        "ValidationException",
    )
    .await;
    for h in s.running.cluster.health() {
        assert_eq!(h.state, hsm_kms::hsm::NodeState::Healthy, "{h:?}");
    }
    // Agreement keys do not sign; signing keys do not agree.
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(b"x"), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
    let signer = id(&create(c, "ECC_NIST_P256", "SIGN_VERIFY").await);
    expect(
        c,
        "DeriveSharedSecret",
        json!({"KeyId": signer, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&spki)}),
        "InvalidKeyUsageException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_key_pairs_are_pkcs8_and_spki_and_decrypt() {
    use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
    let s = service().await;
    let c = &s.client;
    let kek = id(&c.ok("CreateKey", json!({})).await["KeyMetadata"]);
    // ECC_NIST_P256
    let r = c
        .ok(
            "GenerateDataKeyPair",
            json!({"KeyId": kek, "KeyPairSpec": "ECC_NIST_P256", "EncryptionContext": {"p": "1"}}),
        )
        .await;
    assert_eq!(r["KeyPairSpec"], "ECC_NIST_P256");
    let sk = p256::SecretKey::from_pkcs8_der(&unb64(&r["PrivateKeyPlaintext"])).unwrap();
    let pk = p256::PublicKey::from_public_key_der(&unb64(&r["PublicKey"])).unwrap();
    assert_eq!(sk.public_key(), pk);
    let d = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": r["PrivateKeyCiphertextBlob"], "EncryptionContext": {"p": "1"}}),
        )
        .await;
    assert_eq!(d["Plaintext"], r["PrivateKeyPlaintext"]);
    // RSA_2048
    let r = c
        .ok(
            "GenerateDataKeyPair",
            json!({"KeyId": kek, "KeyPairSpec": "RSA_2048"}),
        )
        .await;
    let sk = rsa::RsaPrivateKey::from_pkcs8_der(&unb64(&r["PrivateKeyPlaintext"])).unwrap();
    sk.validate().unwrap();
    let pk = rsa::RsaPublicKey::from_public_key_der(&unb64(&r["PublicKey"])).unwrap();
    assert_eq!(sk.to_public_key(), pk);
    // Other curves parse with their crates.
    for spec in ["ECC_NIST_P384", "ECC_SECG_P256K1", "ECC_NIST_P521"] {
        let r = c
            .ok(
                "GenerateDataKeyPair",
                json!({"KeyId": kek, "KeyPairSpec": spec}),
            )
            .await;
        let der = unb64(&r["PrivateKeyPlaintext"]);
        let spki = unb64(&r["PublicKey"]);
        match spec {
            "ECC_NIST_P384" => assert_eq!(
                p384::SecretKey::from_pkcs8_der(&der).unwrap().public_key(),
                p384::PublicKey::from_public_key_der(&spki).unwrap()
            ),
            "ECC_SECG_P256K1" => assert_eq!(
                k256::SecretKey::from_pkcs8_der(&der).unwrap().public_key(),
                k256::PublicKey::from_public_key_der(&spki).unwrap()
            ),
            _ => assert_eq!(
                p521::SecretKey::from_pkcs8_der(&der).unwrap().public_key(),
                p521::PublicKey::from_public_key_der(&spki).unwrap()
            ),
        }
    }
    // WithoutPlaintext: no plaintext, but the blob decrypts to a matching key.
    let r = c
        .ok(
            "GenerateDataKeyPairWithoutPlaintext",
            json!({"KeyId": kek, "KeyPairSpec": "ECC_NIST_P256"}),
        )
        .await;
    assert!(r.get("PrivateKeyPlaintext").is_none());
    let d = c
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": r["PrivateKeyCiphertextBlob"]}),
        )
        .await;
    let sk = p256::SecretKey::from_pkcs8_der(&unb64(&d["Plaintext"])).unwrap();
    assert_eq!(
        sk.public_key(),
        p256::PublicKey::from_public_key_der(&unb64(&r["PublicKey"])).unwrap()
    );
    // Only symmetric encryption keys protect data key pairs; SM2/Ed25519 pairs refused.
    let signer = id(&create(c, "ECC_NIST_P256", "SIGN_VERIFY").await);
    expect(
        c,
        "GenerateDataKeyPair",
        json!({"KeyId": signer, "KeyPairSpec": "ECC_NIST_P256"}),
        "InvalidKeyUsageException",
    )
    .await;
    expect(
        c,
        "GenerateDataKeyPair",
        json!({"KeyId": kek, "KeyPairSpec": "SM2"}),
        "UnsupportedOperationException",
    )
    .await;
    expect(
        c,
        "GenerateDataKeyPair",
        json!({"KeyId": kek, "KeyPairSpec": "RSA_1024"}),
        "ValidationException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_spec_and_usage_rules() {
    let s = service().await;
    let c = &s.client;
    for (body, ty) in [
        (json!({"KeySpec": "RSA_2048"}), "ValidationException"),
        (
            json!({"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "KEY_AGREEMENT"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "HMAC_256", "KeyUsage": "SIGN_VERIFY"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "ML_DSA_44", "KeyUsage": "SIGN_VERIFY"}),
            "UnsupportedOperationException",
        ),
        (
            json!({"KeySpec": "SM2", "KeyUsage": "SIGN_VERIFY"}),
            "UnsupportedOperationException",
        ),
    ] {
        expect(c, "CreateKey", body, ty).await;
    }
    let r = c
        .call(
            "CreateKey",
            json!({"KeySpec": "ML_DSA_65", "KeyUsage": "SIGN_VERIFY"}),
        )
        .await;
    assert!(
        r.body["message"].as_str().unwrap().contains("CKM_ML_DSA"),
        "{}",
        r.body
    );
    // The public key survives in metadata: DescribeKey + GetPublicKey agree after reload.
    let k = id(&create(c, "ECC_NIST_P384", "SIGN_VERIFY").await);
    let d = c.ok("DescribeKey", json!({"KeyId": k})).await;
    assert_eq!(
        d["KeyMetadata"]["SigningAlgorithms"],
        json!(["ECDSA_SHA_384"])
    );
    let (_, a) = public_key(c, &k).await;
    let (_, b) = public_key(c, &k).await;
    assert_eq!(a, b);
}

#[cfg(feature = "test-hooks")]
async fn start_on(t: &Tokens) -> hsm_kms::app::Running {
    hsm_kms::app::start(hsm_kms::app::ServiceConfig {
        nodes: t.hsms.iter().map(|h| h.node_config().unwrap()).collect(),
        cluster: fast_options(),
        database: t.dir.path().join("metadata.sqlite"),
        listen: "127.0.0.1:0".into(),
        region: "us-east-1".into(),
        account_id: "111122223333".into(),
        max_body_bytes: 64 * 1024,
        clock: std::sync::Arc::new(hsm_kms::clock::SystemClock),
        maintenance_interval: std::time::Duration::from_secs(3600),
        audit: hsm_kms::app::AuditOptions::in_dir(t.dir.path().join("audit")),
        metrics_public: false,
    })
    .await
    .expect("service starts")
}

#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_restart_without_finds_and_fail_over() {
    use p256::pkcs8::DecodePublicKey;
    let t = tokens(&["a", "b"]);
    let running = start_on(&t).await;
    let c = Client::new(
        format!("http://{}", running.addr),
        running.credentials[0].clone(),
    );
    let ec = id(&create(&c, "ECC_NIST_P256", "SIGN_VERIFY").await);
    let rsa_k = id(&create(&c, "RSA_2048", "ENCRYPT_DECRYPT").await);
    let mac_k = id(&create(&c, "HMAC_384", "GENERATE_VERIFY_MAC").await);
    let (_, spki) = public_key(&c, &ec).await;
    let sig = sign(&c, &ec, b"before", "ECDSA_SHA_256", "RAW").await;
    let mac = c
        .ok(
            "GenerateMac",
            json!({"KeyId": mac_k, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_384"}),
        )
        .await["Mac"]
        .clone();
    let ct = c
        .ok(
            "Encrypt",
            json!({"KeyId": rsa_k, "Plaintext": b64(b"kept"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await["CiphertextBlob"]
        .clone();
    running.stop().await;

    let running = start_on(&t).await;
    let c = Client::new(
        format!("http://{}", running.addr),
        running.credentials[0].clone(),
    );
    let (_, spki2) = public_key(&c, &ec).await;
    assert_eq!(spki, spki2);
    c.ok(
        "Verify",
        json!({"KeyId": ec, "Message": b64(b"before"), "Signature": b64(&sig), "SigningAlgorithm": "ECDSA_SHA_256"}),
    )
    .await;
    let cl = running.cluster.clone();
    // One HSM hangs: requests fail over to the other and still succeed.
    cl.inject_stall("a", std::time::Duration::from_secs(3))
        .unwrap();
    for _ in 0..3 {
        let s2 = sign(&c, &ec, b"after", "ECDSA_SHA_256", "RAW").await;
        let k = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
        use p256::ecdsa::signature::Verifier;
        k.verify(b"after", &p256::ecdsa::Signature::from_der(&s2).unwrap())
            .unwrap();
    }
    cl.inject_stall("a", std::time::Duration::ZERO).unwrap();
    let m2 = c
        .ok(
            "GenerateMac",
            json!({"KeyId": mac_k, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_384"}),
        )
        .await["Mac"]
        .clone();
    assert_eq!(mac, m2);
    let d = c
        .ok(
            "Decrypt",
            json!({"KeyId": rsa_k, "CiphertextBlob": ct, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"kept");
    // Every handle came from the warm-up: no C_FindObjects on the request path.
    for h in cl.health() {
        assert_eq!(h.request_finds, 0, "{h:?}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_hsm_receives_key_pairs_and_hmac_keys_by_resync() {
    use hsm_kms::hsm::{HsmCluster, KeyKind, PairSpec, PairUse, SignScheme};
    use hsm_kms::pkix::{Curve, Hash};
    use p256::pkcs8::DecodePublicKey;
    let t = common::unenrolled_tokens(&["a", "b", "c"]);
    hsm_kms::hsm::softhsm::enroll_local(&t.hsms[..2], &t.so).unwrap();
    let two = HsmCluster::connect(
        t.hsms[..2]
            .iter()
            .map(|h| h.node_config().unwrap())
            .collect(),
        fast_options(),
    )
    .unwrap();
    let pair = KeyKind::Pair(PairSpec::Ec(Curve::P256), PairUse::Sign);
    let spki = two
        .create_key_pair(b"pair-1", "p1", PairSpec::Ec(Curve::P256), PairUse::Sign)
        .await
        .unwrap();
    two.create_hmac_key(b"mac-1", "m1", 32).await.unwrap();
    let mac = two
        .hmac(b"mac-1", Hash::Sha256, b"m".to_vec())
        .await
        .unwrap();
    drop(two);
    hsm_kms::hsm::softhsm::enroll_local(&t.hsms, &t.so).unwrap();
    let three = connect(&t, fast_options());
    assert!(!three.hsm_holds_private("c", b"pair-1"));
    assert!(!three.hsm_holds("c", b"mac-1"));
    let keys = vec![
        (b"pair-1".to_vec(), "p1".to_string(), pair),
        (b"mac-1".to_vec(), "m1".to_string(), KeyKind::Hmac(32)),
    ];
    assert_eq!(three.replicate_missing_kinds(&keys).await.unwrap(), 2);
    assert_eq!(three.replicate_missing_kinds(&keys).await.unwrap(), 0);
    assert!(three.hsm_holds_private("c", b"pair-1") && three.hsm_holds("c", b"mac-1"));
    // The copy on c signs with the same key: verified with the original public key.
    let digest = sha2::Sha256::digest(b"from c").to_vec();
    let sig = three
        .sign_on("c", b"pair-1", SignScheme::Ecdsa(Curve::P256), digest)
        .await
        .unwrap();
    use p256::ecdsa::signature::Verifier;
    p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
        .unwrap()
        .verify(b"from c", &p256::ecdsa::Signature::from_der(&sig).unwrap())
        .unwrap();
    // Every HSM computes the same MAC.
    for _ in 0..4 {
        assert_eq!(
            three
                .hmac(b"mac-1", Hash::Sha256, b"m".to_vec())
                .await
                .unwrap(),
            mac
        );
    }
    // Destroy removes the private, public and secret objects everywhere.
    three.destroy_key(b"pair-1").await.unwrap();
    assert!(!three.hsm_holds_private("a", b"pair-1") && !three.hsm_holds_private("c", b"pair-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_encrypt_between_rsa_and_symmetric_keys() {
    let s = service().await;
    let c = &s.client;
    let sym = id(&c.ok("CreateKey", json!({})).await["KeyMetadata"]);
    let rsa_k = id(&create(c, "RSA_2048", "ENCRYPT_DECRYPT").await);
    // Symmetric → RSA.
    let blob = c
        .ok(
            "Encrypt",
            json!({"KeyId": sym, "Plaintext": b64(b"moving"), "EncryptionContext": {"a": "b"}}),
        )
        .await["CiphertextBlob"]
        .clone();
    let r = c
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "SourceEncryptionContext": {"a": "b"},
                   "DestinationKeyId": rsa_k, "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await;
    assert_eq!(r["DestinationEncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    assert_eq!(r["SourceEncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let rsa_ct = r["CiphertextBlob"].clone();
    assert_eq!(unb64(&rsa_ct).len(), 256);
    let d = c
        .ok(
            "Decrypt",
            json!({"KeyId": rsa_k, "CiphertextBlob": rsa_ct, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"moving");
    // RSA → symmetric.
    let r = c
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": rsa_ct, "SourceKeyId": rsa_k,
                   "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "DestinationKeyId": sym}),
        )
        .await;
    assert_eq!(r["SourceEncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    assert!(r["SourceKeyId"].as_str().unwrap().ends_with(&rsa_k));
    let d = c
        .ok("Decrypt", json!({"CiphertextBlob": r["CiphertextBlob"]}))
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"moving");
    // RSA destination without an algorithm → InvalidKeyUsageException.
    expect(
        c,
        "ReEncrypt",
        json!({"CiphertextBlob": blob, "SourceEncryptionContext": {"a": "b"}, "DestinationKeyId": rsa_k}),
        "InvalidKeyUsageException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_data_key_pairs_and_keys_where_the_tokens_can_replicate_them() {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
    let s = service().await;
    let c = &s.client;
    // Data key pairs need no replication: generated in an HSM on every token that has
    // CKM_EC_EDWARDS_KEY_PAIR_GEN (SoftHSM 2.6.1 does).
    let kek = id(&c.ok("CreateKey", json!({})).await["KeyMetadata"]);
    let r = c
        .ok(
            "GenerateDataKeyPair",
            json!({"KeyId": kek, "KeyPairSpec": "ECC_NIST_EDWARDS25519"}),
        )
        .await;
    let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&unb64(&r["PrivateKeyPlaintext"])).unwrap();
    assert_eq!(
        sk.verifying_key(),
        ed25519_dalek::VerifyingKey::from_public_key_der(&unb64(&r["PublicKey"])).unwrap()
    );
    if !s.running.cluster.can_hold_ed25519_keys() {
        // SoftHSM 2.6.1 cannot wrap CKK_EC_EDWARDS private keys, so a KMS key could not be
        // copied to every HSM: refused up front, naming what is missing, and nothing made.
        let r = c
            .call(
                "CreateKey",
                json!({"KeySpec": "ECC_NIST_EDWARDS25519", "KeyUsage": "SIGN_VERIFY"}),
            )
            .await;
        assert_eq!(
            r.error_type(),
            "UnsupportedOperationException",
            "{}",
            r.body
        );
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("CKK_EC_EDWARDS"),
            "{}",
            r.body
        );
        return;
    }
    let md = create(c, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY").await;
    assert_eq!(
        md["SigningAlgorithms"],
        json!(["ED25519_PH_SHA_512", "ED25519_SHA_512"])
    );
    let k = id(&md);
    let obj = format!("kms/{k}/1").into_bytes();
    let cl = &s.running.cluster;
    assert!(cl.hsm_holds_private("a", &obj) && cl.hsm_holds_private("b", &obj));
    let (_, spki) = public_key(c, &k).await;
    let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&spki).unwrap();
    let msg = b"edwards message";
    for _ in 0..3 {
        let sig = sign(c, &k, msg, "ED25519_SHA_512", "RAW").await;
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        vk.verify_strict(msg, &sig).unwrap();
    }
    let ph = |m: &[u8]| {
        let mut h = sha2::Sha512::new();
        h.update(m);
        h
    };
    let sig = sign(c, &k, msg, "ED25519_PH_SHA_512", "RAW").await;
    vk.verify_prehashed(
        ph(msg),
        None,
        &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
    )
    .unwrap();
    let digest = sha2::Sha512::digest(msg).to_vec();
    let sig2 = sign(c, &k, &digest, "ED25519_PH_SHA_512", "DIGEST").await;
    vk.verify_prehashed(
        ph(msg),
        None,
        &ed25519_dalek::Signature::from_slice(&sig2).unwrap(),
    )
    .unwrap();
    c.ok(
        "Verify",
        json!({"KeyId": k, "Message": b64(msg), "Signature": b64(&sig), "SigningAlgorithm": "ED25519_PH_SHA_512"}),
    )
    .await;
    expect(
        c,
        "Verify",
        json!({"KeyId": k, "Message": b64(b"other"), "Signature": b64(&sig), "SigningAlgorithm": "ED25519_PH_SHA_512"}),
        "KMSInvalidSignatureException",
    )
    .await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(&digest), "MessageType": "DIGEST", "SigningAlgorithm": "ED25519_SHA_512"}),
        "ValidationException",
    )
    .await;
    expect(
        c,
        "Sign",
        json!({"KeyId": k, "Message": b64(msg), "SigningAlgorithm": "ECDSA_SHA_256"}),
        "InvalidKeyUsageException",
    )
    .await;
}
