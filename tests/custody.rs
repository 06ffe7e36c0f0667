//! The custody attack, played as an insider holding the user PIN (which the service keeps
//! beside the tokens) would play it, on every token of a service that made keys of every
//! family: wrap a KMS key under a key of one's own; wrap it under the cluster wrapping key
//! and unwrap it as a readable key; copy or modify the cluster wrapping key; make a trusted
//! key; read a key's value. Every attempt must be refused by the token itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_kms::hsm::softhsm::LocalHsm;
use hsm_kms::hsm::CWK_ID;
use serde_json::json;

/// The token's refusal code of `r`, or a panic naming what the token let through.
fn refused<T>(what: &str, hsm: &str, r: Result<T, Error>) -> RvError {
    match r {
        Err(Error::Pkcs11(rv, _)) => rv,
        Err(e) => panic!("{hsm}: {what}: unexpected error {e}"),
        Ok(_) => panic!("{hsm}: {what}: the token allowed it"),
    }
}

fn id_of(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(h, &[AttributeType::Id]).unwrap().pop() {
        Some(Attribute::Id(id)) => id,
        other => panic!("no CKA_ID: {other:?}"),
    }
}

/// The KMS keys in the token: every secret and private key but the service's own.
fn kms_keys(s: &Session) -> Vec<(ObjectHandle, ObjectClass)> {
    let mut keys = Vec::new();
    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
        for h in s.find_objects(&[Attribute::Class(class)]).unwrap() {
            let id = id_of(s, h);
            if id != CWK_ID && id != b"hsm-kms/canary" {
                keys.push((h, class));
            }
        }
    }
    keys
}

fn attack(hsm: &LocalHsm) -> usize {
    let name = hsm.name.as_str();
    let token = UserToken::open(hsm);
    let s = token.session();
    let keys = kms_keys(s);
    assert!(
        keys.len() >= 4,
        "{name}: every key family is present: {keys:?}"
    );
    let cwk = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(CWK_ID.to_vec()),
        ])
        .unwrap()[0];

    // 1. A wrapping key of one's own: refused for every KMS key.
    let own = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )
        .unwrap();
    for (k, class) in &keys {
        let rv = refused(
            &format!("wrap a {class} KMS key under a user-made key"),
            name,
            s.wrap_key(&Mechanism::AesKeyWrapPad, own, *k),
        );
        assert_eq!(rv, RvError::KeyNotWrappable, "{name}");
        // Its value is never readable either.
        let v = s.get_attributes(*k, &[AttributeType::Value]);
        assert!(
            !matches!(v.as_deref(), Ok([Attribute::Value(_)])),
            "{name}: a KMS key's value was readable"
        );
    }

    // 2. Wrap under the cluster wrapping key (allowed: that is replication), then unwrap as
    //    a readable key, or as one that is no longer wrap-with-trusted: refused.
    let (aes, _) = keys
        .iter()
        .find(|(k, c)| {
            *c == ObjectClass::SECRET_KEY
                && s.get_attributes(*k, &[AttributeType::KeyType]).unwrap()
                    == vec![Attribute::KeyType(KeyType::AES)]
        })
        .unwrap();
    let blob = s.wrap_key(&Mechanism::AesKeyWrapPad, cwk, *aes).unwrap();
    let base = || {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Extractable(true),
        ]
    };
    for (what, extra) in [
        (
            "readable",
            vec![
                Attribute::Sensitive(false),
                Attribute::WrapWithTrusted(true),
            ],
        ),
        (
            "not wrap-with-trusted",
            vec![
                Attribute::Sensitive(true),
                Attribute::WrapWithTrusted(false),
            ],
        ),
        ("without the protections", vec![]),
    ] {
        let mut t = base();
        t.extend(extra);
        let rv = refused(
            &format!("unwrap a KMS key {what}"),
            name,
            s.unwrap_key(&Mechanism::AesKeyWrapPad, cwk, &blob, &t),
        );
        assert_eq!(rv, RvError::TemplateInconsistent, "{name}: {what}");
    }

    // 3. The cluster wrapping key cannot be copied (into an untemplated twin) or changed.
    let rv = refused(
        "copy the cluster wrapping key",
        name,
        s.copy_object(cwk, &[Attribute::Token(false)]),
    );
    assert_eq!(rv, RvError::ActionProhibited, "{name}");
    refused(
        "modify the cluster wrapping key",
        name,
        s.update_attributes(cwk, &[Attribute::Label(b"mine".to_vec())]),
    );

    // 4. No user-made key can be trusted.
    let rv = refused(
        "make a trusted key with the user PIN",
        name,
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Trusted(true),
            ],
        ),
    );
    assert_eq!(rv, RvError::AttributeReadOnly, "{name}");

    let _ = s.destroy_object(own);
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_pin_cannot_export_any_key_from_any_token() {
    let svc = service().await;
    let c = &svc.client;
    for spec in [
        json!({}),
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
        json!({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}),
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}),
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
    ] {
        c.ok("CreateKey", spec).await;
    }
    // Every token enforced every protection when the service probed it, and says so.
    for h in svc.running.cluster.health() {
        let p = h.protections.expect("probed at connect");
        assert!(p.all(), "{h:?}");
    }
    let Service {
        tokens, running, ..
    } = svc;
    running.stop().await;
    for hsm in &tokens.hsms {
        let n = attack(hsm);
        println!("{}: {n} KMS keys, every export attempt refused", hsm.name);
    }
}
