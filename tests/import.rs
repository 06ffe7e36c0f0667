//! Imported key material (Origin EXTERNAL) over HTTP against real SoftHSM2 tokens: material
//! wrapped locally (the `rsa` crate, and the `openssl` command line) for every wrapping
//! variant and wrapping key size the tokens can unwrap natively, imported, and proven to be
//! that very material (a blob made locally with it decrypts on the service, the service's
//! output decrypts locally; MACs and signatures likewise); re-import, expiry (by the
//! injected clock), deletion, new material and rotation; the error cases; and absence of the
//! material from every token after deletion or expiry, checked through the tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use common::*;
use hsm_kms::clock::ManualClock;
use hsm_kms::kms::ciphertext::{aad, Blob, Header};
use hsm_kms::kms::context::EncryptionContext;
use hsm_kms::kms::types::KeyId;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600;

async fn clocked() -> (Service, ManualClock) {
    let clock = ManualClock::new(time::OffsetDateTime::from_unix_timestamp(T0).unwrap());
    let s = lab_service_with(Arc::new(clock.clone()), true).await;
    (s, clock)
}

/// A service on two fresh SoftHSM2 tokens; `unconfined`: its operator accepted
/// RSA_AES_KEY_WRAP imports without a confined ephemeral key (SoftHSM 2.6.1 has no nested
/// unwrap templates), as the tests of every wrapping variant need.
async fn lab_service_with(clock: Arc<dyn hsm_kms::clock::Clock>, unconfined: bool) -> Service {
    let tokens = tokens(&["a", "b"]);
    let mut o = fast_options();
    o.allow_unconfined_rsa_aes_import = unconfined;
    let (running, client) = start_on_with(&tokens, clock, o).await;
    Service {
        tokens,
        running,
        client,
    }
}

async fn lab_service() -> Service {
    lab_service_with(Arc::new(hsm_kms::clock::SystemClock), true).await
}

fn assert_err(r: &Reply, ty: &str) {
    assert_eq!((r.status, r.error_type()), (400, ty), "{}", r.body);
}

/// A new EXTERNAL key of this spec and usage (PendingImport).
async fn external_key(c: &Client, spec: &str, usage: &str) -> String {
    let md = c
        .ok(
            "CreateKey",
            json!({"Origin": "EXTERNAL", "KeySpec": spec, "KeyUsage": usage}),
        )
        .await["KeyMetadata"]
        .clone();
    assert_eq!(md["KeyState"], "PendingImport", "{md}");
    assert_eq!(md["Origin"], "EXTERNAL");
    assert_eq!(md["Enabled"], false);
    md["KeyId"].as_str().unwrap().to_string()
}

/// Import parameters: (wrapping public key SPKI DER, import token as sent).
async fn parameters(c: &Client, key: &str, alg: &str, spec: &str) -> (Vec<u8>, Value) {
    let p = c
        .ok(
            "GetParametersForImport",
            json!({"KeyId": key, "WrappingAlgorithm": alg, "WrappingKeySpec": spec}),
        )
        .await;
    assert!(p["KeyId"].as_str().unwrap().ends_with(key), "{p}");
    assert!(p["ParametersValidTo"].is_number(), "{p}");
    (unb64(&p["PublicKey"]), p["ImportToken"].clone())
}

fn public_key(spki: &[u8]) -> rsa::RsaPublicKey {
    rsa::RsaPublicKey::from_public_key_der(spki).expect("an RSA SPKI")
}

/// RSAES-OAEP (`hash`: "sha1" or "sha256") with the `rsa` crate.
fn oaep_rsa_crate(spki: &[u8], hash: &str, data: &[u8]) -> Vec<u8> {
    let k = public_key(spki);
    let mut rng = rand::thread_rng();
    match hash {
        "sha1" => k.encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), data),
        _ => k.encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), data),
    }
    .unwrap()
}

/// Run `openssl` with these arguments in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RSAES-OAEP with `openssl pkeyutl` (as the AWS documentation shows).
fn oaep_openssl(dir: &Path, spki: &[u8], hash: &str, data: &[u8]) -> Vec<u8> {
    std::fs::write(dir.join("wrapping.der"), spki).unwrap();
    std::fs::write(dir.join("plain.bin"), data).unwrap();
    let md = format!("rsa_oaep_md:{hash}");
    let mgf = format!("rsa_mgf1_md:{hash}");
    openssl(
        dir,
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-keyform",
            "DER",
            "-inkey",
            "wrapping.der",
            "-in",
            "plain.bin",
            "-out",
            "wrapped.bin",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &md,
            "-pkeyopt",
            &mgf,
        ],
    );
    std::fs::read(dir.join("wrapped.bin")).unwrap()
}

/// AES key wrap with padding (RFC 5649) with `openssl enc -id-aes256-wrap-pad`.
fn aes_wrap_pad_openssl(dir: &Path, kek: &[u8], data: &[u8]) -> Vec<u8> {
    std::fs::write(dir.join("material.bin"), data).unwrap();
    openssl(
        dir,
        &[
            "enc",
            "-id-aes256-wrap-pad",
            "-K",
            &hex::encode(kek),
            "-iv",
            "A65959A6",
            "-in",
            "material.bin",
            "-out",
            "material.wrapped",
        ],
    );
    std::fs::read(dir.join("material.wrapped")).unwrap()
}

/// `RSA_AES_KEY_WRAP_SHA_*`: a fresh AES-256 key OAEP-wrapped (with the `rsa` crate or
/// openssl), followed by the material wrapped under it with RFC 5649 (openssl).
fn rsa_aes_wrap(dir: &Path, spki: &[u8], hash: &str, data: &[u8], with_openssl: bool) -> Vec<u8> {
    let kek: [u8; 32] = rand::random();
    let mut out = if with_openssl {
        oaep_openssl(dir, spki, hash, &kek)
    } else {
        oaep_rsa_crate(spki, hash, &kek)
    };
    out.extend(aes_wrap_pad_openssl(dir, &kek, data));
    out
}

/// The material wrapped as `alg` says, with the rsa crate or openssl for the RSA step.
fn wrap(dir: &Path, alg: &str, spki: &[u8], data: &[u8], with_openssl: bool) -> Vec<u8> {
    let hash = if alg.ends_with("SHA_1") {
        "sha1"
    } else {
        "sha256"
    };
    if alg.starts_with("RSA_AES") {
        rsa_aes_wrap(dir, spki, hash, data, with_openssl)
    } else if with_openssl {
        oaep_openssl(dir, spki, hash, data)
    } else {
        oaep_rsa_crate(spki, hash, data)
    }
}

async fn import(c: &Client, key: &str, token: &Value, wrapped: &[u8], extra: Value) -> Reply {
    let mut body = json!({
        "KeyId": key,
        "ImportToken": token,
        "EncryptedKeyMaterial": b64(wrapped),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    c.call("ImportKeyMaterial", body).await
}

fn forever() -> Value {
    json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
}

/// A service ciphertext made locally from the material: the blob format (header, IV,
/// AES-256-GCM with AAD = header ‖ canonical context) with the `aes-gcm` crate.
fn local_blob(material: &[u8], key: &str, version: u32, msg: &[u8]) -> Vec<u8> {
    let header = Header {
        key_id: KeyId::parse(key).unwrap(),
        backing_version: version,
    };
    let iv: [u8; 12] = rand::random();
    let ct = Aes256Gcm::new_from_slice(material)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg,
                aad: &aad(&header, &EncryptionContext::new()),
            },
        )
        .unwrap();
    Blob {
        header,
        iv,
        ct_and_tag: ct,
    }
    .encode()
}

/// A service ciphertext opened locally with the material (`None` if it does not open).
fn local_open(material: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    let b = Blob::decode(blob).unwrap();
    Aes256Gcm::new_from_slice(material)
        .unwrap()
        .decrypt(
            Nonce::from_slice(&b.iv),
            Payload {
                msg: &b.ct_and_tag,
                aad: &aad(&b.header, &EncryptionContext::new()),
            },
        )
        .ok()
}

/// The imported key IS `material`: a local blob decrypts on the service, and the
/// service's ciphertext opens locally.
async fn proves_symmetric(c: &Client, key: &str, version: u32, material: &[u8]) {
    let msg = format!("made locally for {key}");
    let blob = local_blob(material, key, version, msg.as_bytes());
    let d = c.ok("Decrypt", json!({"CiphertextBlob": b64(&blob)})).await;
    assert_eq!(unb64(&d["Plaintext"]), msg.as_bytes());
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"from the service")}),
        )
        .await;
    let opened = local_open(material, &unb64(&e["CiphertextBlob"])).expect("opens locally");
    assert_eq!(opened, b"from the service");
}

/// After a fresh connect over the same tokens (a find over each whole token), whether any
/// HSM holds an object with this id.
fn in_any_token(t: &Tokens, object: &[u8]) -> bool {
    let fresh = connect(t, fast_options());
    let held = ["a", "b"]
        .iter()
        .any(|h| fresh.hsm_holds(h, object) || fresh.hsm_holds_private(h, object));
    fresh.shutdown();
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrapping_variant_and_size_imports_that_very_material() {
    let s = lab_service().await;
    let c = &s.client;
    let dir = tempfile::tempdir().unwrap();
    for alg in ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"] {
        for spec in ["RSA_2048", "RSA_3072", "RSA_4096"] {
            let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
            let (spki, token) = parameters(c, &key, alg, spec).await;
            let bits = public_key(&spki).size() * 8;
            assert_eq!(format!("RSA_{bits}"), spec);
            let material: [u8; 32] = rand::random();
            // The rsa crate for the RSA step...
            let wrapped = wrap(dir.path(), alg, &spki, &material, false);
            let r = import(c, &key, &token, &wrapped, forever()).await;
            assert_eq!(r.status, 200, "{alg} {spec}: {}", r.body);
            let material_id = r.body["KeyMaterialId"].as_str().unwrap().to_string();
            assert_eq!(material_id.len(), 64);
            let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
            assert_eq!(md["KeyState"], "Enabled");
            assert_eq!(md["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
            assert_eq!(md["CurrentKeyMaterialId"], json!(material_id));
            proves_symmetric(c, &key, 1, &material).await;
            // ...and openssl: the same material again (a re-import) with the same token.
            let wrapped = wrap(dir.path(), alg, &spki, &material, true);
            let r = import(c, &key, &token, &wrapped, forever()).await;
            assert_eq!(r.status, 200, "{alg} {spec} (openssl): {}", r.body);
            assert_eq!(r.body["KeyMaterialId"], json!(material_id));
            // Both HSMs hold the material.
            for o in s.running.kms.backing_object_ids(&key) {
                assert!(s.running.cluster.hsm_holds("a", o.as_bytes()));
                assert!(s.running.cluster.hsm_holds("b", o.as_bytes()));
            }
        }
    }
    // The SHA-256 variants: SoftHSM 2.6.1 refuses OAEP with SHA-256, and the material is
    // never decoded on the host instead: refused up front, naming algorithm and mechanism.
    let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    for alg in ["RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256"] {
        let r = c
            .call(
                "GetParametersForImport",
                json!({"KeyId": key, "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}),
            )
            .await;
        assert_err(&r, "UnsupportedOperationException");
        let m = r.body["message"].as_str().unwrap();
        assert!(
            m.contains(alg) && m.contains("CKM_RSA_PKCS_OAEP with SHA-256"),
            "{m}"
        );
    }
    let r = c
        .call(
            "GetParametersForImport",
            json!({"KeyId": key, "WrappingAlgorithm": "RSAES_PKCS1_V1_5", "WrappingKeySpec": "RSA_2048"}),
        )
        .await;
    assert_err(&r, "ValidationException");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletion_reimport_and_the_error_cases() {
    let (s, clock) = clocked().await;
    let c = &s.client;
    let dir = tempfile::tempdir().unwrap();
    let alg = "RSAES_OAEP_SHA_1";
    let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let other = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    // Before any material: no crypto, no EnableKey, no existing-material import.
    let r = c
        .call("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))
        .await;
    assert_err(&r, "KMSInvalidStateException");
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .ends_with("is pending import."));
    assert_err(
        &c.call("EnableKey", json!({"KeyId": key})).await,
        "KMSInvalidStateException",
    );
    let (spki, token) = parameters(c, &key, alg, "RSA_2048").await;
    let (other_spki, other_token) = parameters(c, &other, alg, "RSA_2048").await;
    let material: [u8; 32] = rand::random();
    let wrapped = wrap(dir.path(), alg, &spki, &material, false);
    let now = T0 as f64;

    // ValidTo rules.
    for (extra, what) in [
        (json!({}), "no ValidTo with KEY_MATERIAL_EXPIRES"),
        (json!({"ValidTo": now - 1.0}), "a past ValidTo"),
        (
            json!({"ValidTo": now + 366.0 * 86_400.0}),
            "ValidTo beyond 365 days",
        ),
        (
            json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ValidTo": now + 60.0}),
            "ValidTo with KEY_MATERIAL_DOES_NOT_EXPIRE",
        ),
    ] {
        let r = import(c, &key, &token, &wrapped, extra).await;
        assert_eq!(r.error_type(), "ValidationException", "{what}: {}", r.body);
    }
    // Token errors: garbage, another key's token (authentic, but bound to that key).
    let r = import(c, &key, &json!(b64(&[7u8; 64])), &wrapped, forever()).await;
    assert_err(&r, "InvalidImportTokenException");
    let r = import(c, &key, &other_token, &wrapped, forever()).await;
    assert_err(&r, "InvalidImportTokenException");
    let mut flipped = unb64(&token);
    *flipped.last_mut().unwrap() ^= 1;
    let r = import(c, &key, &json!(b64(&flipped)), &wrapped, forever()).await;
    assert_err(&r, "InvalidImportTokenException");
    // Material errors: garbage, wrapped under another key's public key, the wrong length.
    let r = import(c, &key, &token, &[0x5a; 256], forever()).await;
    assert_err(&r, "InvalidCiphertextException");
    let r = import(c, &key, &token, &wrapped[..100], forever()).await;
    assert_err(&r, "InvalidCiphertextException");
    let under_other = wrap(dir.path(), alg, &other_spki, &material, false);
    let r = import(c, &key, &token, &under_other, forever()).await;
    assert_err(&r, "InvalidCiphertextException");
    let short: [u8; 16] = rand::random();
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &short, false),
        forever(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    // None of that imported anything.
    let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "PendingImport");

    // The import, expiring in 10 days.
    let valid_to = now + 10.0 * 86_400.0;
    let r = import(c, &key, &token, &wrapped, json!({"ValidTo": valid_to})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
    assert_eq!(md["KeyState"], "Enabled");
    assert_eq!(md["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(md["ValidTo"], json!(valid_to));
    proves_symmetric(c, &key, 1, &material).await;
    let before = c
        .ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"kept")}))
        .await["CiphertextBlob"]
        .clone();
    // Different material is refused; the key keeps working.
    let different: [u8; 32] = rand::random();
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &different, false),
        forever(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    c.ok("Decrypt", json!({"CiphertextBlob": before})).await;
    // The same material again changes the expiry (here: twelve hours).
    let r = import(
        c,
        &key,
        &token,
        &wrapped,
        json!({"ValidTo": now + 43_200.0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
    assert_eq!(md["ValidTo"], json!(now + 43_200.0));
    // Automatic rotation is refused for imported keys.
    assert_err(
        &c.call("EnableKeyRotation", json!({"KeyId": key})).await,
        "UnsupportedOperationException",
    );

    // Expiry, by the injected clock: PendingImport, the material gone from every token.
    let object = s.running.kms.backing_object_ids(&key)[0].clone();
    clock.advance(DAY / 2 - Duration::from_secs(1));
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(
        c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["KeyState"],
        "Enabled"
    );
    clock.advance(Duration::from_secs(1));
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(
        c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["KeyState"],
        "PendingImport"
    );
    assert_err(
        &c.call("Decrypt", json!({"CiphertextBlob": before})).await,
        "KMSInvalidStateException",
    );
    assert!(
        !in_any_token(&s.tokens, object.as_bytes()),
        "expired material still in a token"
    );
    // Recorded as AWS KMS records it: a DeleteExpiredKeyMaterial service event naming the
    // HSMs that destroyed the material.
    let expired: Vec<Value> = trail(&s.tokens.dir.path().join("audit"))
        .1
        .into_iter()
        .filter(|e| e["eventName"] == "DeleteExpiredKeyMaterial")
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["eventType"], "AwsServiceEvent");
    assert_eq!(expired[0]["serviceEventDetails"]["keyId"], key.as_str());
    let mut hsms: Vec<&str> = expired[0]["additionalEventData"]["hsms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    hsms.sort();
    assert_eq!(hsms, ["a", "b"]);
    let rot = c
        .ok(
            "ListKeyRotations",
            json!({"KeyId": key, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"}),
        )
        .await["Rotations"][0]
        .clone();
    assert_eq!(rot["ImportState"], "PENDING_IMPORT", "{rot}");
    assert_eq!(rot["KeyMaterialState"], "CURRENT");

    // The token (and its wrapping key) lives 24 hours: then it is expired, and the
    // maintenance pass destroys the wrapping keys in every token.
    let wrapping = s.running.kms.import_wrapping_object_ids(&key);
    assert_eq!(wrapping.len(), 1);
    assert!(in_any_token(&s.tokens, wrapping[0].as_bytes()));
    clock.advance(DAY / 2 - Duration::from_secs(1));
    s.running.kms.maintenance().await.unwrap();
    assert_eq!(s.running.kms.import_wrapping_object_ids(&key), wrapping);
    clock.advance(Duration::from_secs(1));
    let r = import(c, &key, &token, &wrapped, forever()).await;
    assert_err(&r, "ExpiredImportTokenException");
    s.running.kms.maintenance().await.unwrap();
    assert!(s.running.kms.import_wrapping_object_ids(&key).is_empty());
    assert!(
        !in_any_token(&s.tokens, wrapping[0].as_bytes()),
        "expired wrapping key kept"
    );
    let r = import(c, &key, &token, &wrapped, forever()).await;
    assert_err(&r, "ExpiredImportTokenException");

    // Re-import with new parameters (RSA_AES this time): the old ciphertext decrypts again.
    let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_3072").await;
    let wrapped = wrap(dir.path(), "RSA_AES_KEY_WRAP_SHA_1", &spki, &material, true);
    let r = import(c, &key, &token, &wrapped, forever()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = c.ok("Decrypt", json!({"CiphertextBlob": before})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"kept");
    assert!(in_any_token(&s.tokens, object.as_bytes()));

    // DeleteImportedKeyMaterial: PendingImport, gone from every token; re-import restores.
    let del = c
        .ok("DeleteImportedKeyMaterial", json!({"KeyId": key}))
        .await;
    assert_eq!(del["KeyMaterialId"], r.body["KeyMaterialId"]);
    assert_eq!(
        c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["KeyState"],
        "PendingImport"
    );
    assert!(
        !in_any_token(&s.tokens, object.as_bytes()),
        "deleted material still in a token"
    );
    assert_err(
        &c.call("Decrypt", json!({"CiphertextBlob": before})).await,
        "KMSInvalidStateException",
    );
    let r = import(c, &key, &token, &wrapped, forever()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = c.ok("Decrypt", json!({"CiphertextBlob": before})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"kept");
    // Not an EXTERNAL key: the import operations are refused.
    let own = c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"].clone();
    for (op, body) in [
        (
            "GetParametersForImport",
            json!({"KeyId": own, "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}),
        ),
        ("DeleteImportedKeyMaterial", json!({"KeyId": own})),
    ] {
        assert_err(&c.call(op, body).await, "UnsupportedOperationException");
    }
    s.running.stop().await;
}

/// A local RSA-2048 key pair: (PKCS#8 DER of the private key, the key).
fn local_rsa() -> (Vec<u8>, rsa::RsaPrivateKey) {
    use rsa::pkcs8::EncodePrivateKey;
    let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    (k.to_pkcs8_der().unwrap().as_bytes().to_vec(), k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_and_rsa_material_is_that_material() {
    use hmac::Mac;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
    let s = lab_service().await;
    let c = &s.client;
    let dir = tempfile::tempdir().unwrap();

    // HMAC_256: 32 bytes, RSAES_OAEP_SHA_1 (openssl). GenerateMac equals the local HMAC.
    let key = external_key(c, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    let (spki, token) = parameters(c, &key, "RSAES_OAEP_SHA_1", "RSA_2048").await;
    let material: [u8; 32] = rand::random();
    let too_short: [u8; 24] = rand::random();
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &too_short, true),
        forever(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &material, true),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let msg = b"a message to authenticate";
    let mut local = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&material).unwrap();
    local.update(msg);
    let local = local.finalize().into_bytes().to_vec();
    let m = c
        .ok(
            "GenerateMac",
            json!({"KeyId": key, "Message": b64(msg), "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .await;
    assert_eq!(unb64(&m["Mac"]), local);
    let v = c
        .ok(
            "VerifyMac",
            json!({"KeyId": key, "Message": b64(msg), "MacAlgorithm": "HMAC_SHA_256", "Mac": b64(&local)}),
        )
        .await;
    assert_eq!(v["MacValid"], true);
    // New material is refused for HMAC keys; a different key is IncorrectKeyMaterial.
    let other: [u8; 32] = rand::random();
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &other, false),
        forever(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &other, false),
        json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ImportType": "NEW_KEY_MATERIAL"}),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");

    // RSA_2048 signing key: PKCS#8 wrapped with RSA_AES_KEY_WRAP_SHA_1 (RSAES alone cannot
    // carry an RSA private key, as AWS says).
    let key = external_key(c, "RSA_2048", "SIGN_VERIFY").await;
    let r = c
        .call(
            "GetParametersForImport",
            json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_4096"}),
        )
        .await;
    assert_err(&r, "ValidationException");
    assert_err(
        &c.call("GetPublicKey", json!({"KeyId": key})).await,
        "KMSInvalidStateException",
    );
    let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048").await;
    let (pkcs8, local_key) = local_rsa();
    // Not a 2048-bit key? A 1024-bit one is refused.
    {
        use rsa::pkcs8::EncodePrivateKey;
        let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let der = small.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let r = import(
            c,
            &key,
            &token,
            &rsa_aes_wrap(dir.path(), &spki, "sha1", &der, false),
            forever(),
        )
        .await;
        assert_err(&r, "IncorrectKeyMaterialException");
    }
    let r = import(
        c,
        &key,
        &token,
        &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, false),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let pk = c.ok("GetPublicKey", json!({"KeyId": key})).await;
    let local_spki = local_key
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    assert_eq!(
        unb64(&pk["PublicKey"]),
        local_spki,
        "the public half read from the token"
    );
    // Signed locally, verified by the service; signed by the service, verified locally.
    let msg = b"signed with imported material";
    let signer = rsa::pss::SigningKey::<sha2::Sha256>::new(local_key.clone());
    let sig = signer.sign_with_rng(&mut rand::thread_rng(), msg).to_vec();
    let v = c
        .ok(
            "Verify",
            json!({"KeyId": key, "Message": b64(msg), "Signature": b64(&sig), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        )
        .await;
    assert_eq!(v["SignatureValid"], true);
    let out = c
        .ok(
            "Sign",
            json!({"KeyId": key, "Message": b64(msg), "SigningAlgorithm": "RSASSA_PKCS1_V1_5_SHA_256"}),
        )
        .await;
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(local_key.to_public_key());
    let sig = rsa::pkcs1v15::Signature::try_from(unb64(&out["Signature"]).as_slice()).unwrap();
    verifier
        .verify(msg, &sig)
        .expect("the service signed with the imported key");
    // Another RSA key is not the material imported; the same one re-imports (openssl).
    let (other, _) = local_rsa();
    let r = import(
        c,
        &key,
        &token,
        &rsa_aes_wrap(dir.path(), &spki, "sha1", &other, true),
        forever(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    let r = import(
        c,
        &key,
        &token,
        &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, true),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Deleted: gone from every token (both halves); re-imported: the same public key.
    let object = s.running.kms.backing_object_ids(&key)[0].clone();
    c.ok("DeleteImportedKeyMaterial", json!({"KeyId": key}))
        .await;
    assert!(!in_any_token(&s.tokens, object.as_bytes()));
    let r = import(
        c,
        &key,
        &token,
        &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, false),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let pk = c.ok("GetPublicKey", json!({"KeyId": key})).await;
    assert_eq!(unb64(&pk["PublicKey"]), local_spki);

    // RSA_2048 encryption key: encrypted locally, decrypted by the service.
    let key = external_key(c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_3072").await;
    let (pkcs8, local_key) = local_rsa();
    let r = import(
        c,
        &key,
        &token,
        &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, true),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = local_key
        .to_public_key()
        .encrypt(
            &mut rand::thread_rng(),
            rsa::Oaep::new::<sha1::Sha1>(),
            b"for the imported key",
        )
        .unwrap();
    let d = c
        .ok(
            "Decrypt",
            json!({"KeyId": key, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"for the imported key");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_key_material_pending_rotation_and_on_demand_rotation() {
    let s = lab_service().await;
    let c = &s.client;
    let dir = tempfile::tempdir().unwrap();
    let alg = "RSAES_OAEP_SHA_1";
    let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let (spki, token) = parameters(c, &key, alg, "RSA_2048").await;
    let (m1, m2): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &m1, false),
        forever(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id1 = r.body["KeyMaterialId"].as_str().unwrap().to_string();
    let c1 = c
        .ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"first")}))
        .await["CiphertextBlob"]
        .clone();
    // Nothing pending: on-demand rotation of an imported key needs new material first.
    assert_err(
        &c.call("RotateKeyOnDemand", json!({"KeyId": key})).await,
        "UnsupportedOperationException",
    );
    // New material: the same material again is refused, different material is pending.
    let new = json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "second ceremony"});
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &m1, false),
        new.clone(),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &m2, true),
        new.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id2 = r.body["KeyMaterialId"].as_str().unwrap().to_string();
    assert_ne!(id1, id2);
    let all = json!({"KeyId": key, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"});
    let rots = c.ok("ListKeyRotations", all.clone()).await["Rotations"].clone();
    assert_eq!(rots.as_array().unwrap().len(), 2, "{rots}");
    assert_eq!(rots[0]["KeyMaterialId"], json!(id1));
    assert_eq!(rots[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(rots[0]["ImportState"], "IMPORTED");
    assert_eq!(rots[0]["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    assert_eq!(rots[1]["KeyMaterialId"], json!(id2));
    assert_eq!(rots[1]["KeyMaterialState"], "PENDING_ROTATION");
    assert_eq!(rots[1]["KeyMaterialDescription"], "second ceremony");
    assert!(rots[1].get("RotationDate").is_none(), "{rots}");
    // Still encrypting with m1 until the rotation.
    let e = c
        .ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"still m1")}),
        )
        .await;
    assert!(local_open(&m1, &unb64(&e["CiphertextBlob"])).is_some());
    c.ok("RotateKeyOnDemand", json!({"KeyId": key})).await;
    let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
    assert_eq!(md["CurrentKeyMaterialId"], json!(id2));
    let rots = c.ok("ListKeyRotations", all.clone()).await["Rotations"].clone();
    assert_eq!(rots[0]["KeyMaterialState"], "NON_CURRENT");
    assert_eq!(rots[1]["KeyMaterialState"], "CURRENT");
    assert_eq!(rots[1]["RotationType"], "ON_DEMAND");
    // m2 encrypts now (a local m2 blob decrypts, the service's output opens with m2), and
    // m1's ciphertexts still decrypt.
    let version = s.running.kms.backing_object_ids(&key).len() as u32;
    proves_symmetric(c, &key, version, &m2).await;
    let d = c.ok("Decrypt", json!({"CiphertextBlob": c1})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"first");
    // Delete the older material by id: the key waits for it; re-import it by id.
    let del = c
        .ok(
            "DeleteImportedKeyMaterial",
            json!({"KeyId": key, "KeyMaterialId": id1}),
        )
        .await;
    assert_eq!(del["KeyMaterialId"], json!(id1));
    assert_eq!(
        c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["KeyState"],
        "PendingImport"
    );
    let object1 = s.running.kms.backing_object_ids(&key)[0].clone();
    assert!(!in_any_token(&s.tokens, object1.as_bytes()));
    // m2 named with m1's id is refused.
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &m2, false),
        json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "KeyMaterialId": id1}),
    )
    .await;
    assert_err(&r, "IncorrectKeyMaterialException");
    let r = import(
        c,
        &key,
        &token,
        &wrap(dir.path(), alg, &spki, &m1, false),
        json!({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "KeyMaterialId": id1}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["KeyMaterialId"], json!(id1));
    assert_eq!(
        c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["KeyState"],
        "Enabled"
    );
    let d = c.ok("Decrypt", json!({"CiphertextBlob": c1})).await;
    assert_eq!(unb64(&d["Plaintext"]), b"first");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_keys_before_import_and_small_conformance_items() {
    let s = lab_service().await;
    let c = &s.client;
    // Every spec AWS imports that these tokens can: PendingImport, no material, no use.
    for (spec, usage, op, body) in [
        (
            "SYMMETRIC_DEFAULT",
            "ENCRYPT_DECRYPT",
            "GenerateDataKey",
            json!({"KeySpec": "AES_256"}),
        ),
        (
            "HMAC_224",
            "GENERATE_VERIFY_MAC",
            "GenerateMac",
            json!({"Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_224"}),
        ),
        (
            "HMAC_512",
            "GENERATE_VERIFY_MAC",
            "GenerateMac",
            json!({"Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_512"}),
        ),
        (
            "RSA_3072",
            "SIGN_VERIFY",
            "Sign",
            json!({"Message": b64(b"m"), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        ),
        ("RSA_4096", "ENCRYPT_DECRYPT", "GetPublicKey", json!({})),
    ] {
        let key = external_key(c, spec, usage).await;
        let mut b = body.clone();
        b["KeyId"] = json!(key);
        let r = c.call(op, b).await;
        assert_err(&r, "KMSInvalidStateException");
        assert!(s
            .running
            .kms
            .backing_object_ids(&key)
            .iter()
            .all(|o| !s.running.cluster.hsm_holds("a", o.as_bytes())));
        let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
        assert!(md.get("ExpirationModel").is_none(), "{md}");
        // Deletion can be scheduled and cancelled: the key goes back to waiting.
        c.ok(
            "ScheduleKeyDeletion",
            json!({"KeyId": key, "PendingWindowInDays": 7}),
        )
        .await;
        c.ok("CancelKeyDeletion", json!({"KeyId": key})).await;
        let md = c.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"].clone();
        assert_eq!(md["KeyState"], "PendingImport");
    }
    // Key specs whose material these HSMs cannot take are refused at creation, clearly.
    for spec in ["ECC_NIST_EDWARDS25519", "ML_DSA_44"] {
        let r = c
            .call(
                "CreateKey",
                json!({"Origin": "EXTERNAL", "KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}),
            )
            .await;
        assert_err(&r, "UnsupportedOperationException");
    }
    // TagResource with one tag key twice in a request.
    let key = c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"].clone();
    let r = c
        .call(
            "TagResource",
            json!({"KeyId": key, "Tags": [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "a", "TagValue": "2"}]}),
        )
        .await;
    assert_err(&r, "TagException");
    let tags = c.ok("ListResourceTags", json!({"KeyId": key})).await;
    assert_eq!(tags["Tags"], json!([]));
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_material_is_that_material() {
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let s = lab_service().await;
    let c = &s.client;
    let dir = tempfile::tempdir().unwrap();
    // ECC_NIST_P256 signing key, both wrapping algorithm families.
    for alg in ["RSA_AES_KEY_WRAP_SHA_1", "RSAES_OAEP_SHA_1"] {
        let key = external_key(c, "ECC_NIST_P256", "SIGN_VERIFY").await;
        let (spki, token) = parameters(c, &key, alg, "RSA_3072").await;
        let local = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let secret = p256::SecretKey::from(local.clone());
        let pkcs8 = secret.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let r = import(
            c,
            &key,
            &token,
            &wrap(dir.path(), alg, &spki, &pkcs8, alg.contains("AES")),
            forever(),
        )
        .await;
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        let pk = c.ok("GetPublicKey", json!({"KeyId": key})).await;
        let local_spki = secret
            .public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        assert_eq!(
            unb64(&pk["PublicKey"]),
            local_spki,
            "{alg}: the public point derived in the token"
        );
        let msg = b"signed with imported EC material";
        let sig: p256::ecdsa::DerSignature = local.sign(msg);
        let v = c
            .ok(
                "Verify",
                json!({"KeyId": key, "Message": b64(msg), "Signature": b64(sig.as_bytes()), "SigningAlgorithm": "ECDSA_SHA_256"}),
            )
            .await;
        assert_eq!(v["SignatureValid"], true);
        let out = c
            .ok(
                "Sign",
                json!({"KeyId": key, "Message": b64(msg), "SigningAlgorithm": "ECDSA_SHA_256"}),
            )
            .await;
        let sig = p256::ecdsa::DerSignature::try_from(unb64(&out["Signature"]).as_slice()).unwrap();
        local
            .verifying_key()
            .verify(msg, &sig)
            .expect("the service signed with the imported key");
        // Another curve's key is refused.
        let k384 = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let der = k384.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let r = import(
            c,
            &key,
            &token,
            &wrap(dir.path(), alg, &spki, &der, false),
            forever(),
        )
        .await;
        assert_err(&r, "IncorrectKeyMaterialException");
    }
    // ECC_SECG_P256K1 and ECC_NIST_P384 key agreement keys: the shared secret agrees.
    {
        let key = external_key(c, "ECC_NIST_P384", "KEY_AGREEMENT").await;
        let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048").await;
        let mine = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let pkcs8 = mine.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let r = import(
            c,
            &key,
            &token,
            &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, true),
            forever(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let pk = c.ok("GetPublicKey", json!({"KeyId": key})).await;
        assert_eq!(
            unb64(&pk["PublicKey"]),
            mine.public_key().to_public_key_der().unwrap().as_bytes()
        );
        let peer = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let z = c
            .ok(
                "DeriveSharedSecret",
                json!({"KeyId": key, "KeyAgreementAlgorithm": "ECDH",
                       "PublicKey": b64(peer.public_key().to_public_key_der().unwrap().as_bytes())}),
            )
            .await;
        let local =
            p384::ecdh::diffie_hellman(peer.to_nonzero_scalar(), mine.public_key().as_affine());
        assert_eq!(
            unb64(&z["SharedSecret"]),
            local.raw_secret_bytes().as_slice()
        );
    }
    {
        let key = external_key(c, "ECC_SECG_P256K1", "SIGN_VERIFY").await;
        let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048").await;
        let local = k256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let pkcs8 = k256::SecretKey::from(local.clone())
            .to_pkcs8_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let r = import(
            c,
            &key,
            &token,
            &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, false),
            forever(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let out = c
            .ok(
                "Sign",
                json!({"KeyId": key, "Message": b64(b"k1"), "SigningAlgorithm": "ECDSA_SHA_256"}),
            )
            .await;
        let sig = k256::ecdsa::Signature::from_der(&unb64(&out["Signature"])).unwrap();
        // k256 verifies low-S signatures only; the token's S may be either.
        let sig = sig.normalize_s().unwrap_or(sig);
        local
            .verifying_key()
            .verify(b"k1", &sig)
            .expect("secp256k1 signature");
    }
    {
        // P-521 with RSAES and an RSA_2048 wrapping key cannot be carried (as AWS says).
        let key = external_key(c, "ECC_NIST_P521", "SIGN_VERIFY").await;
        let r = c
            .call(
                "GetParametersForImport",
                json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
            )
            .await;
        assert_err(&r, "ValidationException");
        let (spki, token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048").await;
        let local = p521::SecretKey::random(&mut rand::rngs::OsRng);
        let pkcs8 = local.to_pkcs8_der().unwrap().as_bytes().to_vec();
        let r = import(
            c,
            &key,
            &token,
            &rsa_aes_wrap(dir.path(), &spki, "sha1", &pkcs8, true),
            forever(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let pk = c.ok("GetPublicKey", json!({"KeyId": key})).await;
        assert_eq!(
            unb64(&pk["PublicKey"]),
            local.public_key().to_public_key_der().unwrap().as_bytes()
        );
    }
    s.running.stop().await;
}

/// The custody attack on imports, played by an insider who holds the user PIN and captured
/// a customer's wrapped material on its way to the service: unwrap it with the import
/// wrapping key (which the user PIN can use) into a readable object.
/// * `RSAES_OAEP_*`: the wrapping key's unwrap template makes the token refuse.
/// * `RSA_AES_KEY_WRAP_*`: the ephemeral AES key comes out sensitive, but on a token
///   without nested unwrap templates (SoftHSM 2.6.1) nothing confines what *it* unwraps,
///   so the material comes out readable. Such imports are therefore refused unless the
///   operator opts in (`allow_unconfined_rsa_aes_import`), and under that opt-in the
///   exposure is real: this test shows it, so that the README's warning stays true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_wrapped_material_cannot_be_unwrapped_readable_with_the_user_pin() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    let dir = tempfile::tempdir().unwrap();
    let material: [u8; 32] = rand::random();
    let readable = || {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ]
    };
    let ephemeral = || {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::WrapWithTrusted(true),
            Attribute::Unwrap(true),
        ]
    };
    let oaep = Mechanism::RsaPkcsOaep(cryptoki::mechanism::rsa::PkcsOaepParams::new(
        cryptoki::mechanism::MechanismType::SHA1,
        cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA1,
        cryptoki::mechanism::rsa::PkcsOaepSource::empty(),
    ));
    let wrapping_key = |s: &cryptoki::session::Session, object: &str| {
        s.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(object.as_bytes().to_vec()),
        ])
        .unwrap()[0]
    };

    // The default: RSAES is offered and the token refuses the attack; RSA_AES is refused
    // up front on these tokens, naming what they lack.
    let svc = lab_service_with(Arc::new(hsm_kms::clock::SystemClock), false).await;
    let c = &svc.client;
    let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let r = c
        .call(
            "GetParametersForImport",
            json!({"KeyId": key, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
        )
        .await;
    assert_err(&r, "UnsupportedOperationException");
    let m = r.body["message"].as_str().unwrap();
    assert!(
        m.contains("RSA_AES_KEY_WRAP_SHA_1") && m.contains("CKA_UNWRAP_TEMPLATE"),
        "{m}"
    );
    let (spki, _token) = parameters(c, &key, "RSAES_OAEP_SHA_1", "RSA_2048").await;
    let captured = wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &material, false);
    let object = svc
        .running
        .kms
        .import_wrapping_object_ids(&key)
        .pop()
        .unwrap();
    for hsm in &svc.tokens.hsms {
        let t = UserToken::open(hsm);
        let s = t.session();
        let k = wrapping_key(s, &object);
        let r = s.unwrap_key(&oaep, k, &captured, &readable());
        assert!(
            matches!(
                r,
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::TemplateInconsistent,
                    _
                ))
            ),
            "{}: the user PIN unwrapped RSAES-wrapped material readable: {r:?}",
            hsm.name
        );
    }
    svc.running.stop().await;

    // Under the operator's opt-in, on a token without nested unwrap templates: the
    // two-step unwrap gives the material back in plaintext.
    let svc = lab_service().await;
    let c = &svc.client;
    let key = external_key(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let (spki, _token) = parameters(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048").await;
    let captured = wrap(
        dir.path(),
        "RSA_AES_KEY_WRAP_SHA_1",
        &spki,
        &material,
        false,
    );
    let (wrapped_eph, wrapped_material) = captured.split_at(256);
    let object = svc
        .running
        .kms
        .import_wrapping_object_ids(&key)
        .pop()
        .unwrap();
    let hsm = &svc.tokens.hsms[0];
    let t = UserToken::open(hsm);
    let s = t.session();
    let k = wrapping_key(s, &object);
    // The ephemeral key cannot come out readable...
    let r = s.unwrap_key(&oaep, k, wrapped_eph, &readable());
    assert!(r.is_err(), "the ephemeral key came out readable");
    // ...but as a sensitive unwrapping key it can, and what it unwraps is not confined.
    let eph = s.unwrap_key(&oaep, k, wrapped_eph, &ephemeral()).unwrap();
    let out = s
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            eph,
            wrapped_material,
            &readable(),
        )
        .unwrap();
    let value = s.get_attributes(out, &[AttributeType::Value]).unwrap();
    assert_eq!(
        value,
        vec![Attribute::Value(material.to_vec())],
        "under the opt-in, SoftHSM 2.6.1 gives the material back (the README says so)"
    );
    drop(t);
    svc.running.stop().await;
}

/// Sends SIGCONT to a host process stopped by the test, also when the test fails.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// One HSM hangs (its host process stopped) between GetParametersForImport and
/// ImportKeyMaterial, the last one the copy reaches (still counted usable then): the
/// import is unwrapped in another one and copied to the HSMs that serve, without a failed
/// answer; the HSM that hung gets its copy once it is back (re-sync), and then uses the
/// very material. (Before, the copy that timed out destroyed every copy and the call
/// answered DependencyTimeoutException.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_that_hangs_between_the_two_import_calls_fails_nothing() {
    let tokens = tokens(&["a", "b", "c"]);
    let (running, c) = start_tuned(
        &tokens,
        Arc::new(hsm_kms::clock::SystemClock),
        fast_options(),
        Duration::from_millis(500),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = external_key(&c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let (spki, token) = parameters(&c, &key, "RSAES_OAEP_SHA_1", "RSA_3072").await;
    let object = running.kms.import_wrapping_object_ids(&key).pop().unwrap();
    for h in ["a", "b", "c"] {
        assert!(
            running.cluster.hsm_holds_private(h, object.as_bytes()),
            "HSM {h} lacks the wrapping key"
        );
    }
    let material: [u8; 32] = rand::random();
    let wrapped = wrap(dir.path(), "RSAES_OAEP_SHA_1", &spki, &material, false);

    let pid = running.cluster.host_pid("c").expect("a host process");
    assert!(Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let stopped = Stopped(pid);
    let started = std::time::Instant::now();
    let r = import(&c, &key, &token, &wrapped, forever()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let took = started.elapsed();
    // Used at once, while HSM c still hangs: that very material.
    proves_symmetric(&c, &key, 1, &material).await;
    let backing = running.kms.backing_object_ids(&key);
    for o in &backing {
        assert!(running.cluster.hsm_holds("a", o.as_bytes()));
        assert!(running.cluster.hsm_holds("b", o.as_bytes()));
    }
    drop(stopped);
    // HSM c back: re-sync gives it its copy (the same material: it encrypts what the
    // local copy of the material opens).
    let back = eventually(60, || {
        backing
            .iter()
            .all(|o| running.cluster.hsm_holds("c", o.as_bytes()))
    })
    .await;
    assert!(back, "HSM c never received the imported material");
    let o = backing.last().unwrap();
    let (iv, ct) = running
        .cluster
        .encrypt_on("c", o.as_bytes(), b"aad".to_vec(), b"from c".to_vec())
        .await
        .unwrap();
    let opened = Aes256Gcm::new_from_slice(&material)
        .unwrap()
        .decrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: &ct,
                aad: b"aad",
            },
        )
        .expect("HSM c's copy is the imported material");
    assert_eq!(opened.as_slice(), b"from c");
    println!(
        "IMPORT-HANG | import answered in {} ms with HSM c stopped; c re-synced afterwards",
        took.as_millis()
    );
    running.stop().await;
}
