//! Property test of the JSON front end: any operation with arbitrary members of arbitrary
//! JSON types (and random raw bodies) is answered with 200 or an AWS-style 4xx error —
//! never a 5xx, a panic, or a body without `__type`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::kms::operation::Operation;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Every operation of the AWS KMS API (the service's own list, so a new operation is
/// fuzzed the day it is added), plus a name that is none.
fn ops() -> Vec<&'static str> {
    Operation::ALL
        .iter()
        .map(|o| o.name())
        .chain(["NoSuchOperation"])
        .collect()
}
const MEMBERS: &[&str] = &[
    "KeyId",
    "Plaintext",
    "CiphertextBlob",
    "EncryptionContext",
    "KeySpec",
    "NumberOfBytes",
    "Limit",
    "Marker",
    "AliasName",
    "TargetKeyId",
    "DestinationKeyId",
    "SourceKeyId",
    "Description",
    "Tags",
    "KeyUsage",
    "Origin",
    "DryRun",
    "GrantTokens",
    "EncryptionAlgorithm",
    "SourceEncryptionContext",
    "DestinationEncryptionContext",
    "SourceEncryptionAlgorithm",
    "DestinationEncryptionAlgorithm",
    "MultiRegion",
    "Message",
    "MessageType",
    "SigningAlgorithm",
    "Signature",
    "MacAlgorithm",
    "Mac",
    "KeyAgreementAlgorithm",
    "PublicKey",
    "KeyPairSpec",
    "PendingWindowInDays",
    "TagKeys",
    "RotationPeriodInDays",
    "IncludeKeyMaterial",
    "Recipient",
    "CustomKeyStoreId",
    "Policy",
    "PolicyName",
    "BypassPolicyLockoutSafetyCheck",
    "GranteePrincipal",
    "RetiringPrincipal",
    "Operations",
    "Constraints",
    "Name",
    "GrantId",
    "GrantToken",
];

/// Key policies a fuzzed `Policy` may be: valid ones (with every kind of condition and
/// hostile values) and near-misses.
fn policies() -> Vec<String> {
    let stmt = |extra: Value| {
        let mut s = json!({"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:*",
            "Resource": "*"});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": "kms:*", "Resource": "*"}, s]})
        .to_string()
    };
    vec![
        hsm_kms::kms::policy::default_key_policy("111122223333"),
        stmt(json!({"Condition": {"StringLike": {"kms:EncryptionContext:a": "*?*?*?*?*"}}})),
        stmt(json!({"Condition": {"NumericGreaterThan": {"kms:RotationPeriodInDays": "1e999"}}})),
        stmt(json!({"Condition": {"DateLessThan": {"aws:CurrentTime": "9999-99-99"}}})),
        stmt(json!({"Condition": {"IpAddress": {"aws:SourceIp": "::/0"}}})),
        stmt(
            json!({"Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": []}}}),
        ),
        stmt(json!({"Condition": {"Null": {"kms:RequestAlias": "maybe"}}})),
        stmt(
            json!({"NotAction": "kms:*", "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:*:*"}}}),
        ),
        stmt(json!({"Principal": {"AWS": "arn:aws:iam::1:user/x"}})),
        stmt(json!({"Principal": {"AWS": ["*", 7]}})),
        stmt(
            json!({"Condition": {"StringEquals": {"kms:EncryptionContext:${aws:username}": "${"}}}),
        ),
    ]
}

fn leaf(real_key: String) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0i64..1100).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| json!(b64(&b))),
        Just(json!(real_key.clone())),
        Just(json!("alias/fuzz")),
        Just(json!("AES_256")),
        Just(json!("ECC_NIST_P256")),
        Just(json!("HMAC_SHA_256")),
        Just(json!("ECDSA_SHA_256")),
        Just(json!("DIGEST")),
        Just(json!({"a": "b"})),
        Just(json!([{"TagKey": "k", "TagValue": "v"}])),
        proptest::sample::select(policies()).prop_map(Value::String),
        Just(json!("default")),
        Just(json!("arn:aws:iam::111122223333:user/fuzz")),
        Just(json!(["Encrypt", "DescribeKey"])),
        Just(json!({"EncryptionContextSubset": {"a": "b"}})),
        Just(json!("a".repeat(64))),
    ]
}

fn body(real_key: String) -> impl Strategy<Value = Value> {
    let v = leaf(real_key).prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map(proptest::sample::select(MEMBERS), v, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

#[test]
fn no_input_yields_a_5xx_or_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(service());
    let c = s.client.clone();
    let real_key = rt.block_on(async {
        let id = c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_string();
        c.ok(
            "CreateAlias",
            json!({"AliasName": "alias/fuzz", "TargetKeyId": id}),
        )
        .await;
        id
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 700,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::sample::select(ops()),
        body(real_key),
        proptest::option::weighted(0.1, proptest::collection::vec(any::<u8>(), 0..64)),
    );
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    runner
        .run(&strategy, |(op, body, raw)| {
            seen.lock().unwrap().insert(op);
            let bytes = raw.unwrap_or_else(|| body.to_string().into_bytes());
            let r = rt.block_on(c.send_raw(
                Some(op),
                bytes,
                time::OffsetDateTime::now_utc(),
                &c.cred.secret_access_key.clone(),
                true,
            ));
            prop_assert!(r.status < 500, "{op} {body} -> {} {}", r.status, r.body);
            if r.status != 200 {
                prop_assert!(!r.error_type().is_empty(), "{op}: {}", r.body);
                // Correctly signed: every request got past authentication.
                prop_assert!(
                    !r.error_type().contains("Signature") && !r.error_type().contains("Client"),
                    "{op}: {}",
                    r.body
                );
            }
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let missed: Vec<_> = ops().into_iter().filter(|o| !seen.contains(o)).collect();
    assert!(missed.is_empty(), "operations never fuzzed: {missed:?}");
    rt.block_on(s.running.stop());
}
