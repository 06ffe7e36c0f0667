//! Domain unit tests over [`FakeVault`]: every call runs the request path's three steps
//! (resolve → authorize → execute) on a real [`SqliteStore`] in a temporary directory and a
//! [`ManualClock`], with the HSMs simulated in memory. They check the AWS answers (exception
//! types and response fields) that `tests/lifecycle.rs` and `tests/rotation.rs` check over
//! HTTP and SoftHSM, in milliseconds: the key-state table, usage rules, aliases and AWS
//! managed keys, rotation, scheduled deletion, and HSM failures.

use super::Kms;
use crate::auth::Principal;
use crate::clock::ManualClock;
use crate::kms::ciphertext::Blob;
use crate::kms::context::EncryptionContext;
use crate::kms::error::KmsError;
use crate::kms::operation::Operation;
use crate::kms::requests::{self as rq, DataKeySize, Page, Request};
use crate::kms::types::{
    AliasName, DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, KeyRef, KeySpec, KeyUsage,
    MacAlgorithm, Plaintext, Region, SigningAlgorithm, Tag,
};
use crate::kms::vault::fake::{FakeVault, Fault};
use crate::kms::vault::{KeyKind, KeyVault, ObjectId};
use crate::store::SqliteStore;
use base64::Engine;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";
/// The clock's start (2023-11-14T22:13:20Z), whole seconds.
const T0: i64 = 1_700_000_000;
const DAY: f64 = 86_400.0;

fn principal() -> Principal {
    Principal {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        account_id: ACCOUNT.into(),
        arn: format!("arn:aws:iam::{ACCOUNT}:root"),
        session: None,
    }
}

fn arn(id: &str) -> String {
    format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
}

fn days(d: f64) -> Duration {
    Duration::from_secs_f64(d * DAY)
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap()
}

/// The backing version named in a symmetric ciphertext's header.
fn backing_version(blob: &[u8]) -> u32 {
    Blob::decode(blob).unwrap().header.backing_version
}

/// Assert that `r` failed with the AWS exception `ty`; return the error.
#[track_caller]
fn expect_err(r: Result<Value, KmsError>, ty: &str) -> KmsError {
    match r {
        Ok(v) => panic!("expected {ty}, got success: {v}"),
        Err(e) => {
            assert_eq!(e.aws_type(), ty, "{e:?}");
            e
        }
    }
}

struct Harness {
    /// The AWS service endpoint calls come through (`kms:ViaService`), as when an AWS
    /// service uses its AWS managed key; `None`: a direct call.
    via: parking_lot::Mutex<Option<String>>,
    kms: Kms,
    fake: Arc<FakeVault>,
    clock: ManualClock,
    _dir: TempDir,
}

impl Harness {
    /// Three simulated HSMs, all up.
    fn new() -> Harness {
        Harness::with_hsms(3)
    }

    fn with_hsms(n: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("kms.db")).unwrap();
        let fake = Arc::new(FakeVault::new(n));
        let clock = ManualClock::new(time::OffsetDateTime::from_unix_timestamp(T0).unwrap());
        let kms = Kms::open(
            fake.clone(),
            Arc::new(store),
            Arc::new(clock.clone()),
            Region::parse(REGION).unwrap(),
        )
        .unwrap();
        Harness {
            via: parking_lot::Mutex::new(None),
            kms,
            fake,
            clock,
            _dir: dir,
        }
    }

    /// A restart: a new `Kms` on the same metadata store, HSMs and clock (the cache is
    /// rebuilt from the store, so only what was committed survives).
    fn reopen(self) -> Harness {
        let store = SqliteStore::open(&self._dir.path().join("kms.db")).unwrap();
        let kms = Kms::open(
            self.fake.clone(),
            Arc::new(store),
            Arc::new(self.clock.clone()),
            Region::parse(REGION).unwrap(),
        )
        .unwrap();
        drop(self.kms);
        Harness { kms, ..self }
    }

    /// One call down the request path: resolve → authorize → execute, and the JSON body.
    async fn call(&self, op: Operation, req: Request) -> Result<Value, KmsError> {
        let p = principal();
        let resolved = self.kms.resolve(&p, op, &req).await?;
        let env = crate::kms::CallEnv {
            via_service: self.via.lock().clone(),
            ..Default::default()
        };
        self.kms.authorize(&p, op, &req, &resolved, &env)?;
        let reply = self.kms.execute(&p, req, &resolved).await?;
        Ok(serde_json::from_slice(&reply.to_json().unwrap()).unwrap())
    }

    /// Later calls come through the AWS service `prefix` (`ec2`, `s3`), in this region.
    fn through(&self, prefix: &str) {
        *self.via.lock() = Some(format!("{prefix}.{REGION}.amazonaws.com"));
    }

    async fn run(&self, (op, req): (Operation, Request)) -> Result<Value, KmsError> {
        self.call(op, req).await
    }

    async fn ok(&self, r: (Operation, Request)) -> Value {
        let op = r.0;
        match self.run(r).await {
            Ok(v) => v,
            Err(e) => panic!("{op}: {} {e:?}", e.aws_type()),
        }
    }

    async fn create(&self, spec: KeySpec, usage: KeyUsage) -> String {
        let v = self.ok(create_key(spec, usage)).await;
        v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
    }

    async fn sym(&self) -> String {
        self.create(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt)
            .await
    }

    async fn encrypt(&self, key: &str, pt: &[u8]) -> Vec<u8> {
        b64(&self.ok(encrypt(key, pt)).await["CiphertextBlob"])
    }

    async fn decrypt(&self, blob: &[u8]) -> Result<Vec<u8>, KmsError> {
        self.run(decrypt(blob, None))
            .await
            .map(|v| b64(&v["Plaintext"]))
    }

    async fn describe(&self, key: &str) -> Result<Value, KmsError> {
        self.run(key_op(Operation::DescribeKey, key))
            .await
            .map(|v| v["KeyMetadata"].clone())
    }

    async fn key_ids(&self) -> Vec<String> {
        let v = self.ok(list_keys()).await;
        assert_eq!(v["Truncated"], false);
        v["Keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["KeyId"].as_str().unwrap().to_string())
            .collect()
    }

    /// (alias name, target key id) of every alias, or of `key`'s.
    async fn aliases(&self, key: Option<&str>) -> Vec<(String, String)> {
        let v = self.ok(list_aliases(key)).await;
        v["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["AliasName"].as_str().unwrap().to_string(),
                    a["TargetKeyId"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn objects(&self, key: &str) -> Vec<ObjectId> {
        self.kms
            .backing_object_ids(key)
            .into_iter()
            .map(ObjectId::new)
            .collect()
    }

    /// Whether every simulated HSM holds every backing object of `key`.
    fn everywhere(&self, objects: &[ObjectId]) -> bool {
        (0..self.fake.hsm_count()).all(|h| objects.iter().all(|o| self.fake.holds(h, o)))
    }

    fn nowhere(&self, objects: &[ObjectId]) -> bool {
        (0..self.fake.hsm_count()).all(|h| objects.iter().all(|o| !self.fake.holds(h, o)))
    }

    /// The current time as the answers write it (epoch seconds).
    fn epoch(&self) -> f64 {
        crate::kms::model::epoch_seconds::to_f64(self.kms.now())
    }
}

// ------------------------------------------------------------------ request builders

fn kref(s: &str) -> KeyRef {
    KeyRef::from_member(s).unwrap()
}

fn pt(b: &[u8]) -> Plaintext {
    Plaintext::new(b.to_vec()).unwrap()
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    EncryptionContext::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .unwrap()
}

fn alias(name: &str) -> AliasName {
    AliasName::parse(name).unwrap()
}

fn page(limit: usize, marker: Option<&str>) -> Page {
    Page {
        limit,
        marker: marker.map(str::to_string),
    }
}

fn create_key(spec: KeySpec, usage: KeyUsage) -> (Operation, Request) {
    (
        Operation::CreateKey,
        Request::CreateKey(rq::CreateKey {
            key_spec: Some(spec),
            key_usage: Some(usage),
            ..rq::CreateKey::default()
        }),
    )
}

fn key_op(op: Operation, key: &str) -> (Operation, Request) {
    (op, Request::Key(op, kref(key)))
}

fn list_keys() -> (Operation, Request) {
    (Operation::ListKeys, Request::ListKeys(page(1000, None)))
}

fn encrypt(key: &str, plaintext: &[u8]) -> (Operation, Request) {
    encrypt_with(key, plaintext, EncryptionContext::new(), None, false)
}

fn encrypt_with(
    key: &str,
    plaintext: &[u8],
    context: EncryptionContext,
    algorithm: Option<EncryptionAlgorithm>,
    dry_run: bool,
) -> (Operation, Request) {
    (
        Operation::Encrypt,
        Request::Encrypt(rq::Encrypt {
            key: kref(key),
            plaintext: pt(plaintext),
            context,
            algorithm,
            dry_run,
        }),
    )
}

fn decrypt(blob: &[u8], key: Option<&str>) -> (Operation, Request) {
    decrypt_with(blob, key, EncryptionContext::new(), false)
}

fn decrypt_with(
    blob: &[u8],
    key: Option<&str>,
    context: EncryptionContext,
    dry_run: bool,
) -> (Operation, Request) {
    (
        Operation::Decrypt,
        Request::Decrypt(rq::Decrypt {
            ciphertext: blob.to_vec(),
            key: key.map(kref),
            context,
            algorithm: None,
            dry_run,
        }),
    )
}

fn re_encrypt(blob: &[u8], destination: &str, dry_run: bool) -> (Operation, Request) {
    (
        Operation::ReEncrypt,
        Request::ReEncrypt(rq::ReEncrypt {
            ciphertext: blob.to_vec(),
            source_key: None,
            source_context: EncryptionContext::new(),
            source_algorithm: None,
            destination_key: kref(destination),
            destination_context: EncryptionContext::new(),
            destination_algorithm: None,
            dry_run,
        }),
    )
}

fn data_key(key: &str, with_plaintext: bool, dry_run: bool) -> (Operation, Request) {
    let op = if with_plaintext {
        Operation::GenerateDataKey
    } else {
        Operation::GenerateDataKeyWithoutPlaintext
    };
    (
        op,
        Request::GenerateDataKey(rq::GenerateDataKey {
            key: kref(key),
            size: DataKeySize::Spec(DataKeySpec::Aes256),
            context: EncryptionContext::new(),
            with_plaintext,
            dry_run,
        }),
    )
}

fn sign(
    key: &str,
    message: &[u8],
    algorithm: SigningAlgorithm,
    signature: Option<Vec<u8>>,
    dry_run: bool,
) -> (Operation, Request) {
    let op = if signature.is_some() {
        Operation::Verify
    } else {
        Operation::Sign
    };
    (
        op,
        Request::Sign(rq::Sign {
            key: kref(key),
            message: pt(message),
            message_type: None,
            algorithm,
            signature,
            dry_run,
        }),
    )
}

fn mac(
    key: &str,
    message: &[u8],
    algorithm: MacAlgorithm,
    mac: Option<Vec<u8>>,
    dry_run: bool,
) -> (Operation, Request) {
    let op = if mac.is_some() {
        Operation::VerifyMac
    } else {
        Operation::GenerateMac
    };
    (
        op,
        Request::Mac(rq::Mac {
            key: kref(key),
            message: pt(message),
            algorithm,
            mac,
            dry_run,
        }),
    )
}

fn data_key_pair(key: &str, with_plaintext: bool) -> (Operation, Request) {
    let op = if with_plaintext {
        Operation::GenerateDataKeyPair
    } else {
        Operation::GenerateDataKeyPairWithoutPlaintext
    };
    (
        op,
        Request::GenerateDataKeyPair(rq::GenerateDataKeyPair {
            key: kref(key),
            spec: DataKeyPairSpec::EccNistP256,
            context: EncryptionContext::new(),
            with_plaintext,
            dry_run: false,
        }),
    )
}

fn list_tags(key: &str, limit: usize, marker: Option<&str>) -> (Operation, Request) {
    (
        Operation::ListResourceTags,
        Request::ListResourceTags(rq::KeyPage {
            key: kref(key),
            page: page(limit, marker),
            include_all_material: false,
        }),
    )
}

fn describe_req(key: &str) -> (Operation, Request) {
    key_op(Operation::DescribeKey, key)
}

fn update_description(key: &str, description: &str) -> (Operation, Request) {
    (
        Operation::UpdateKeyDescription,
        Request::UpdateKeyDescription(rq::UpdateKeyDescription {
            key: kref(key),
            description: description.into(),
        }),
    )
}

fn tag_resource(key: &str, k: &str, v: &str) -> (Operation, Request) {
    (
        Operation::TagResource,
        Request::TagResource(rq::TagResource {
            key: kref(key),
            tags: vec![Tag::new(k, v).unwrap()],
        }),
    )
}

fn untag_resource(key: &str, k: &str) -> (Operation, Request) {
    (
        Operation::UntagResource,
        Request::UntagResource(rq::UntagResource {
            key: kref(key),
            tag_keys: vec![k.into()],
        }),
    )
}

fn schedule_deletion(key: &str, window_days: Option<u32>) -> (Operation, Request) {
    (
        Operation::ScheduleKeyDeletion,
        Request::ScheduleKeyDeletion(rq::ScheduleKeyDeletion {
            key: kref(key),
            window_days,
        }),
    )
}

fn enable_rotation(key: &str, period_days: Option<u32>) -> (Operation, Request) {
    (
        Operation::EnableKeyRotation,
        Request::EnableKeyRotation(rq::EnableKeyRotation {
            key: kref(key),
            period_days,
        }),
    )
}

fn list_rotations(
    key: &str,
    all_material: bool,
    limit: usize,
    marker: Option<&str>,
) -> (Operation, Request) {
    (
        Operation::ListKeyRotations,
        Request::ListKeyRotations(rq::KeyPage {
            key: kref(key),
            page: page(limit, marker),
            include_all_material: all_material,
        }),
    )
}

fn set_alias(op: Operation, name: &str, target: &str) -> (Operation, Request) {
    let r = rq::SetAlias {
        alias: alias(name),
        target: kref(target),
    };
    let req = match op {
        Operation::CreateAlias => Request::CreateAlias(r),
        Operation::UpdateAlias => Request::UpdateAlias(r),
        other => panic!("{other} does not set an alias"),
    };
    (op, req)
}

fn delete_alias(name: &str) -> (Operation, Request) {
    (Operation::DeleteAlias, Request::DeleteAlias(alias(name)))
}

fn list_aliases(key: Option<&str>) -> (Operation, Request) {
    (
        Operation::ListAliases,
        Request::ListAliases(rq::ListAliases {
            key: key.map(kref),
            page: page(100, None),
        }),
    )
}

// ------------------------------------------------------------------ 1. key-state table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl State {
    const ALL: [State; 3] = [State::Enabled, State::Disabled, State::PendingDeletion];

    fn name(self) -> &'static str {
        match self {
            State::Enabled => "Enabled",
            State::Disabled => "Disabled",
            State::PendingDeletion => "PendingDeletion",
        }
    }
}

/// What AWS answers: success or an exception type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Ok,
    Err(&'static str),
}

const OK: Want = Want::Ok;
const DISABLED: Want = Want::Err("DisabledException");
const INVALID: Want = Want::Err("KMSInvalidStateException");

/// Keys put into one state: a symmetric key (with a ciphertext made while it was
/// enabled), an ECC signing key (with a signature), an HMAC key (with a MAC), and an
/// enabled symmetric key `other` (with a ciphertext) for ReEncrypt.
struct Fixture {
    sym: String,
    blob: Vec<u8>,
    other: String,
    other_blob: Vec<u8>,
    sign: String,
    sig: Vec<u8>,
    mac: String,
    tag: Vec<u8>,
    /// An alias of `sym`, and one of `other` (made before the state change).
    alias_sym: String,
    alias_other: String,
}

const MSG: &[u8] = b"state table";

impl Fixture {
    async fn new(h: &Harness, state: State) -> Fixture {
        let sym = h.sym().await;
        let blob = h.encrypt(&sym, b"secret").await;
        let other = h.sym().await;
        let other_blob = h.encrypt(&other, b"other").await;
        let sign_key = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
        let sig = b64(&h
            .ok(sign(
                &sign_key,
                MSG,
                SigningAlgorithm::EcdsaSha256,
                None,
                false,
            ))
            .await["Signature"]);
        let mac_key = h
            .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
            .await;
        let tag = b64(&h
            .ok(mac(&mac_key, MSG, MacAlgorithm::HmacSha256, None, false))
            .await["Mac"]);
        h.ok(enable_rotation(&sym, None)).await;
        let alias_sym = format!("alias/s-{sym}");
        let alias_other = format!("alias/o-{sym}");
        h.ok(set_alias(Operation::CreateAlias, &alias_sym, &sym))
            .await;
        h.ok(set_alias(Operation::CreateAlias, &alias_other, &other))
            .await;
        for k in [&sym, &sign_key, &mac_key] {
            match state {
                State::Enabled => {}
                State::Disabled => {
                    h.ok(key_op(Operation::DisableKey, k)).await;
                }
                State::PendingDeletion => {
                    h.ok(schedule_deletion(k, Some(7))).await;
                }
            }
            assert_eq!(h.describe(k).await.unwrap()["KeyState"], state.name());
        }
        Fixture {
            sym,
            blob,
            other,
            other_blob,
            sign: sign_key,
            sig,
            mac: mac_key,
            tag,
            alias_sym,
            alias_other,
        }
    }
}

type Probe = fn(&Fixture) -> Vec<(Operation, Request)>;

/// AWS's key-state table (developer guide, "Key states of AWS KMS keys") for the operation
/// families this service answers: for a key Enabled, Disabled, PendingDeletion.
fn state_table() -> Vec<(&'static str, Probe, [Want; 3])> {
    vec![
        (
            "Encrypt/Decrypt/GenerateDataKey/ReEncrypt",
            |f| {
                vec![
                    encrypt(&f.sym, b"x"),
                    decrypt(&f.blob, None),
                    decrypt(&f.blob, Some(&f.sym)),
                    data_key(&f.sym, true, false),
                    data_key(&f.sym, false, false),
                    re_encrypt(&f.blob, &f.other, false),
                    re_encrypt(&f.other_blob, &f.sym, false),
                    re_encrypt(&f.other_blob, &f.alias_sym, false),
                    encrypt(&f.alias_sym, b"x"),
                    data_key_pair(&f.sym, true),
                    data_key_pair(&f.sym, false),
                ]
            },
            [OK, DISABLED, INVALID],
        ),
        (
            "GetPublicKey",
            |f| vec![key_op(Operation::GetPublicKey, &f.sign)],
            [OK, DISABLED, INVALID],
        ),
        (
            "Sign/Verify",
            |f| {
                vec![
                    sign(&f.sign, MSG, SigningAlgorithm::EcdsaSha256, None, false),
                    sign(
                        &f.sign,
                        MSG,
                        SigningAlgorithm::EcdsaSha256,
                        Some(f.sig.clone()),
                        false,
                    ),
                ]
            },
            [OK, DISABLED, INVALID],
        ),
        (
            "GenerateMac/VerifyMac",
            |f| {
                vec![
                    mac(&f.mac, MSG, MacAlgorithm::HmacSha256, None, false),
                    mac(
                        &f.mac,
                        MSG,
                        MacAlgorithm::HmacSha256,
                        Some(f.tag.clone()),
                        false,
                    ),
                ]
            },
            [OK, DISABLED, INVALID],
        ),
        (
            "DescribeKey",
            |f| {
                vec![
                    describe_req(&f.sym),
                    describe_req(&f.sign),
                    describe_req(&f.mac),
                ]
            },
            [OK, OK, OK],
        ),
        (
            "ListResourceTags/ListAliases",
            |f| vec![list_tags(&f.sym, 50, None), list_aliases(Some(&f.sym))],
            [OK, OK, OK],
        ),
        (
            "CreateAlias/UpdateAlias to the key",
            |f| {
                vec![
                    set_alias(Operation::CreateAlias, "alias/row", &f.sym),
                    set_alias(Operation::UpdateAlias, &f.alias_other, &f.sym),
                ]
            },
            [OK, OK, INVALID],
        ),
        (
            "UpdateAlias away from the key, DeleteAlias",
            |f| {
                vec![
                    set_alias(Operation::UpdateAlias, &f.alias_sym, &f.other),
                    delete_alias(&f.alias_sym),
                ]
            },
            [OK, OK, OK],
        ),
        (
            "EnableKey",
            |f| vec![key_op(Operation::EnableKey, &f.sym)],
            [OK, OK, INVALID],
        ),
        (
            "DisableKey",
            |f| vec![key_op(Operation::DisableKey, &f.sym)],
            [OK, OK, INVALID],
        ),
        (
            "UpdateKeyDescription",
            |f| vec![update_description(&f.sym, "new")],
            [OK, OK, INVALID],
        ),
        (
            "TagResource/UntagResource",
            |f| vec![tag_resource(&f.sym, "k", "v"), untag_resource(&f.sym, "k")],
            [OK, OK, INVALID],
        ),
        (
            "ScheduleKeyDeletion",
            |f| vec![schedule_deletion(&f.sym, Some(7))],
            [OK, OK, INVALID],
        ),
        (
            "CancelKeyDeletion",
            |f| vec![key_op(Operation::CancelKeyDeletion, &f.sym)],
            [INVALID, INVALID, OK],
        ),
        (
            "EnableKeyRotation",
            |f| vec![enable_rotation(&f.sym, None)],
            [OK, DISABLED, INVALID],
        ),
        (
            "DisableKeyRotation",
            |f| vec![key_op(Operation::DisableKeyRotation, &f.sym)],
            [OK, DISABLED, INVALID],
        ),
        (
            "GetKeyRotationStatus/ListKeyRotations",
            |f| {
                vec![
                    key_op(Operation::GetKeyRotationStatus, &f.sym),
                    list_rotations(&f.sym, false, 10, None),
                ]
            },
            [OK, OK, OK],
        ),
    ]
}

#[tokio::test]
async fn key_state_table() {
    let table = state_table();
    for (col, state) in State::ALL.into_iter().enumerate() {
        let h = Harness::new();
        for (family, probe, wants) in &table {
            // Every row gets fresh keys: some of its operations change the state.
            let f = Fixture::new(&h, state).await;
            for r in probe(&f) {
                let op = r.0;
                let got = h.run(r).await;
                let what = format!("{} key: {family}: {op}", state.name());
                match (wants[col], got) {
                    (Want::Ok, Ok(_)) => {}
                    (Want::Err(ty), Err(e)) => assert_eq!(e.aws_type(), ty, "{what}: {e:?}"),
                    (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn state_table_answers_carry_the_state_fields() {
    let h = Harness::new();
    for state in State::ALL {
        let f = Fixture::new(&h, state).await;
        for k in [&f.sym, &f.sign, &f.mac] {
            let md = h.describe(k).await.unwrap();
            assert_eq!(md["KeyState"], state.name());
            assert_eq!(md["Enabled"], state == State::Enabled);
            assert_eq!(
                md.get("DeletionDate").is_some(),
                state == State::PendingDeletion,
                "{md}"
            );
        }
        // The rotation status reads in every state; pending deletion shows it off.
        let st = h.ok(key_op(Operation::GetKeyRotationStatus, &f.sym)).await;
        assert_eq!(
            st["KeyRotationEnabled"],
            state != State::PendingDeletion,
            "{st}"
        );
        assert_eq!(st["KeyId"], arn(&f.sym));
        // The message names the key.
        if state != State::Enabled {
            let e = h.run(encrypt(&f.sym, b"x")).await.unwrap_err();
            assert!(e.to_string().contains(&arn(&f.sym)), "{e}");
        }
    }
}

// ------------------------------------------------------------------ 2. usage rules

#[tokio::test]
async fn usage_rules_key_usage_and_algorithms() {
    let h = Harness::new();
    let sym = h.sym().await;
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;

    // Encrypt / GenerateDataKey with a SIGN_VERIFY or MAC key.
    for k in [&ecc, &hmac] {
        expect_err(h.run(encrypt(k, b"x")).await, "InvalidKeyUsageException");
        expect_err(
            h.run(data_key(k, true, false)).await,
            "InvalidKeyUsageException",
        );
    }
    // Sign with an encryption key, or with an algorithm the key does not list.
    expect_err(
        h.run(sign(&sym, b"m", SigningAlgorithm::EcdsaSha256, None, false))
            .await,
        "InvalidKeyUsageException",
    );
    let md = h.describe(&ecc).await.unwrap();
    assert_eq!(
        md["SigningAlgorithms"],
        serde_json::json!(["ECDSA_SHA_256"])
    );
    for alg in [
        SigningAlgorithm::EcdsaSha384,
        SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::Ed25519Sha512,
    ] {
        let e = expect_err(
            h.run(sign(&ecc, b"m", alg, None, false)).await,
            "InvalidKeyUsageException",
        );
        assert!(e.to_string().contains(alg.as_str()), "{e}");
    }
    // GenerateMac with a wrong MAC algorithm, or with a key that is not an HMAC key.
    expect_err(
        h.run(mac(&hmac, b"m", MacAlgorithm::HmacSha512, None, false))
            .await,
        "InvalidKeyUsageException",
    );
    expect_err(
        h.run(mac(&sym, b"m", MacAlgorithm::HmacSha256, None, false))
            .await,
        "InvalidKeyUsageException",
    );
    // A symmetric key with an RSA algorithm.
    expect_err(
        h.run(encrypt_with(
            &sym,
            b"x",
            EncryptionContext::new(),
            Some(EncryptionAlgorithm::RsaesOaepSha256),
            false,
        ))
        .await,
        "InvalidKeyUsageException",
    );
    // A wrong signature and a wrong MAC are their own exceptions.
    expect_err(
        h.run(sign(
            &ecc,
            b"m",
            SigningAlgorithm::EcdsaSha256,
            Some(vec![0x30, 0x00]),
            false,
        ))
        .await,
        "KMSInvalidSignatureException",
    );
    expect_err(
        h.run(mac(
            &hmac,
            b"m",
            MacAlgorithm::HmacSha256,
            Some(vec![0; 32]),
            false,
        ))
        .await,
        "KMSInvalidMacException",
    );
}

#[tokio::test]
async fn rsa_encrypt_refuses_an_encryption_context() {
    let h = Harness::new();
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await;
    let oaep = Some(EncryptionAlgorithm::RsaesOaepSha256);
    expect_err(
        h.run(encrypt_with(&rsa, b"x", ctx(&[("a", "b")]), oaep, false))
            .await,
        "ValidationException",
    );
    // No algorithm: SYMMETRIC_DEFAULT is not one an RSA key lists.
    expect_err(h.run(encrypt(&rsa, b"x")).await, "InvalidKeyUsageException");
    // Without a context it works, and Decrypt needs the key named.
    let ct = h
        .ok(encrypt_with(
            &rsa,
            b"rsa",
            EncryptionContext::new(),
            oaep,
            false,
        ))
        .await;
    assert_eq!(ct["EncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    let blob = b64(&ct["CiphertextBlob"]);
    assert_eq!(blob.len(), 256);
    let (op, mut req) = decrypt(&blob, Some(&rsa));
    if let Request::Decrypt(d) = &mut req {
        d.algorithm = oaep;
    }
    let d = h.call(op, req).await.unwrap();
    assert_eq!(b64(&d["Plaintext"]), b"rsa");
}

#[tokio::test]
async fn decrypt_checks_the_key_and_the_blob() {
    let h = Harness::new();
    let a = h.sym().await;
    let b = h.sym().await;
    h.ok(set_alias(Operation::CreateAlias, "alias/b", &b)).await;
    let blob = h.encrypt(&a, b"payload").await;

    // The named key must be the blob's key, by id, ARN or alias.
    for other in [b.clone(), arn(&b), "alias/b".to_string()] {
        expect_err(
            h.run(decrypt(&blob, Some(&other))).await,
            "IncorrectKeyException",
        );
    }
    let d = h.ok(decrypt(&blob, Some(&arn(&a)))).await;
    assert_eq!(b64(&d["Plaintext"]), b"payload");
    assert_eq!(d["KeyId"], arn(&a));
    assert_eq!(d["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");

    // Any flipped bit after the format byte, a wrong context, a truncated or foreign blob.
    let decrypts_before = h.fake.calls("decrypt");
    for i in [1, 18, 20, 25, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        expect_err(
            h.decrypt(&bad).await.map(|_| Value::Null),
            "InvalidCiphertextException",
        );
    }
    expect_err(
        h.run(decrypt_with(&blob, None, ctx(&[("k", "v")]), false))
            .await,
        "InvalidCiphertextException",
    );
    for bad in [&blob[..40], b"not a blob at all".as_slice(), &[][..]] {
        expect_err(
            h.decrypt(bad).await.map(|_| Value::Null),
            "InvalidCiphertextException",
        );
    }
    assert!(h.fake.calls("decrypt") > decrypts_before);
    // The original still decrypts.
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"payload");
}

#[tokio::test]
async fn dry_run_answers_dry_run_without_touching_the_hsms() {
    let h = Harness::new();
    let sym = h.sym().await;
    let other = h.sym().await;
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let blob = h.encrypt(&sym, b"x").await;
    let counted = [
        "encrypt",
        "decrypt",
        "generate_data_key",
        "sign",
        "verify",
        "mac",
    ];
    let before: Vec<usize> = counted.iter().map(|c| h.fake.calls(c)).collect();
    let es = SigningAlgorithm::EcdsaSha256;
    let hs = MacAlgorithm::HmacSha256;
    for r in [
        encrypt_with(&sym, b"x", EncryptionContext::new(), None, true),
        decrypt_with(&blob, None, EncryptionContext::new(), true),
        data_key(&sym, true, true),
        data_key(&sym, false, true),
        re_encrypt(&blob, &other, true),
        sign(&ecc, b"m", es, None, true),
        sign(&ecc, b"m", es, Some(vec![0x30, 0x00]), true),
        mac(&hmac, b"m", hs, None, true),
        mac(&hmac, b"m", hs, Some(vec![0; 32]), true),
    ] {
        let op = r.0;
        let e = expect_err(h.run(r).await, "DryRunOperationException");
        assert_eq!(
            e.to_string(),
            "The request would have succeeded, but the DryRun option is set.",
            "{op}"
        );
    }
    let after: Vec<usize> = counted.iter().map(|c| h.fake.calls(c)).collect();
    assert_eq!(before, after, "{counted:?}");
    // A request that would fail answers its failure, not DryRun.
    h.ok(key_op(Operation::DisableKey, &sym)).await;
    expect_err(
        h.run(encrypt_with(
            &sym,
            b"x",
            EncryptionContext::new(),
            None,
            true,
        ))
        .await,
        "DisabledException",
    );
    expect_err(
        h.run(sign(&ecc, b"m", SigningAlgorithm::EcdsaSha384, None, true))
            .await,
        "InvalidKeyUsageException",
    );
}

// ------------------------------------------------------------------ 3. aliases

#[tokio::test]
async fn aliases_create_update_delete_and_list() {
    let h = Harness::new();
    let a = h.sym().await;
    let b = h.sym().await;
    h.ok(set_alias(Operation::CreateAlias, "alias/app", &a))
        .await;
    h.ok(set_alias(Operation::CreateAlias, "alias/second", &arn(&a)))
        .await;
    assert_eq!(
        h.aliases(None).await,
        vec![
            ("alias/app".to_string(), a.clone()),
            ("alias/second".to_string(), a.clone())
        ]
    );
    let l = h.ok(list_aliases(Some(&a))).await;
    assert_eq!(
        l["Aliases"][0]["AliasArn"],
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/app")
    );
    assert_eq!(l["Truncated"], false);
    // The alias resolves for crypto and DescribeKey, by name and ARN.
    let e = h.ok(encrypt("alias/app", b"via alias")).await;
    assert_eq!(e["KeyId"], arn(&a));
    let by_arn = format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/app");
    assert_eq!(h.describe(&by_arn).await.unwrap()["KeyId"], a.as_str());

    // UpdateAlias moves it.
    h.ok(set_alias(Operation::UpdateAlias, "alias/app", &b))
        .await;
    assert_eq!(h.describe("alias/app").await.unwrap()["KeyId"], b.as_str());
    assert_eq!(
        h.aliases(Some(&a)).await,
        vec![("alias/second".to_string(), a.clone())]
    );
    assert_eq!(
        h.aliases(Some(&b)).await,
        vec![("alias/app".to_string(), b.clone())]
    );
    // A blob made through the alias still belongs to a.
    let d = h.ok(decrypt(&b64(&e["CiphertextBlob"]), None)).await;
    assert_eq!(d["KeyId"], arn(&a));

    // DeleteAlias, and the name is gone.
    h.ok(delete_alias("alias/app")).await;
    let e = expect_err(h.describe("alias/app").await, "NotFoundException");
    assert!(e.to_string().contains("alias/app"), "{e}");
    expect_err(h.run(delete_alias("alias/app")).await, "NotFoundException");
    expect_err(
        h.run(set_alias(Operation::UpdateAlias, "alias/app", &a))
            .await,
        "NotFoundException",
    );
    assert_eq!(
        h.aliases(None).await,
        vec![("alias/second".to_string(), a.clone())]
    );
    // Unknown target key.
    expect_err(
        h.run(set_alias(
            Operation::CreateAlias,
            "alias/nokey",
            "00000000-0000-4000-8000-000000000000",
        ))
        .await,
        "NotFoundException",
    );
}

#[tokio::test]
async fn alias_rules_reserved_duplicate_alias_target_and_spec() {
    let h = Harness::new();
    let a = h.sym().await;
    let b = h.sym().await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    h.ok(set_alias(Operation::CreateAlias, "alias/a", &a)).await;

    // alias/aws/… is reserved.
    for r in [
        set_alias(Operation::CreateAlias, "alias/aws/mine", &a),
        set_alias(Operation::UpdateAlias, "alias/aws/ebs", &a),
        delete_alias("alias/aws/ebs"),
    ] {
        let op = r.0;
        let e = expect_err(h.run(r).await, "NotAuthorizedException");
        assert!(e.to_string().contains("alias/aws/"), "{op}: {e}");
    }
    // Duplicate name, to the same or another key.
    for k in [&a, &b] {
        expect_err(
            h.run(set_alias(Operation::CreateAlias, "alias/a", k)).await,
            "AlreadyExistsException",
        );
    }
    // An alias cannot target an alias.
    for target in [
        "alias/a".to_string(),
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/a"),
    ] {
        expect_err(
            h.run(set_alias(Operation::CreateAlias, "alias/c", &target))
                .await,
            "ValidationException",
        );
        expect_err(
            h.run(set_alias(Operation::UpdateAlias, "alias/a", &target))
                .await,
            "ValidationException",
        );
    }
    // UpdateAlias only to a key of the same spec and usage.
    expect_err(
        h.run(set_alias(Operation::UpdateAlias, "alias/a", &hmac))
            .await,
        "ValidationException",
    );
    assert_eq!(h.describe("alias/a").await.unwrap()["KeyId"], a.as_str());
    h.ok(set_alias(Operation::UpdateAlias, "alias/a", &b)).await;
    // No alias to a key pending deletion.
    h.ok(schedule_deletion(&a, Some(7))).await;
    expect_err(
        h.run(set_alias(Operation::CreateAlias, "alias/doomed", &a))
            .await,
        "KMSInvalidStateException",
    );
    assert_eq!(
        h.aliases(None).await,
        vec![("alias/a".to_string(), b.clone())]
    );
}

#[tokio::test]
async fn aws_managed_key_is_created_once_on_first_use_and_cannot_be_managed() {
    let h = Harness::new();
    assert!(h.key_ids().await.is_empty());
    let creates = h.fake.calls("create_key");

    // Not made by an operation that does not create it.
    expect_err(
        h.run(sign(
            "alias/aws/ebs",
            b"m",
            SigningAlgorithm::EcdsaSha256,
            None,
            false,
        ))
        .await,
        "NotFoundException",
    );
    assert_eq!(h.fake.calls("create_key"), creates);

    // First use by Encrypt creates it; DescribeKey and a second Encrypt find the same key.
    // Used directly (not through EBS), its policy refuses the Encrypt, as in AWS; through
    // EBS (`kms:ViaService` ec2.REGION.amazonaws.com) it encrypts.
    let e = expect_err(
        h.run(encrypt("alias/aws/ebs", b"managed")).await,
        "AccessDeniedException",
    );
    assert!(e.to_string().contains("kms:Encrypt"), "{e}");
    assert_eq!(h.fake.calls("create_key"), creates + 1);
    h.through("s3");
    expect_err(
        h.run(encrypt("alias/aws/ebs", b"managed")).await,
        "AccessDeniedException",
    );
    h.through("ec2");
    let e = h.ok(encrypt("alias/aws/ebs", b"managed")).await;
    assert_eq!(h.fake.calls("create_key"), creates + 1);
    let md = h.describe("alias/aws/ebs").await.unwrap();
    let ebs = md["KeyId"].as_str().unwrap().to_string();
    assert_eq!(e["KeyId"], arn(&ebs));
    assert_eq!(md["KeyManager"], "AWS");
    assert_eq!(md["KeyState"], "Enabled");
    assert_eq!(md["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(md["KeyUsage"], "ENCRYPT_DECRYPT");
    h.ok(encrypt(
        &format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/aws/ebs"),
        b"again",
    ))
    .await;
    assert_eq!(h.fake.calls("create_key"), creates + 1);
    assert_eq!(h.key_ids().await, vec![ebs.clone()]);
    assert!(h.everywhere(&h.objects(&ebs)));
    assert_eq!(
        h.aliases(None).await,
        vec![("alias/aws/ebs".to_string(), ebs.clone())]
    );
    assert_eq!(
        h.decrypt(&b64(&e["CiphertextBlob"])).await.unwrap(),
        b"managed"
    );

    // First use by DescribeKey creates another service's key, once; concurrent first
    // uses by Encrypt create exactly one.
    let s3 = h.describe("alias/aws/s3").await.unwrap()["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(s3, ebs);
    h.through("sqs");
    let (x, y, z) = tokio::join!(
        h.run(encrypt("alias/aws/sqs", b"1")),
        h.run(encrypt("alias/aws/sqs", b"2")),
        h.run(data_key("alias/aws/sqs", true, false)),
    );
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    assert_eq!(x["KeyId"], y["KeyId"]);
    assert_eq!(x["KeyId"], z["KeyId"]);
    assert_eq!(h.fake.calls("create_key"), creates + 3);
    assert_eq!(h.key_ids().await.len(), 3);

    // Its management operations are denied by its fixed policy.
    for r in [
        key_op(Operation::DisableKey, &ebs),
        key_op(Operation::EnableKey, &ebs),
        schedule_deletion(&ebs, Some(7)),
        key_op(Operation::CancelKeyDeletion, &ebs),
        tag_resource(&ebs, "k", "v"),
        untag_resource(&ebs, "k"),
        update_description(&ebs, "mine"),
    ] {
        let op = r.0;
        let e = expect_err(h.run(r).await, "AccessDeniedException");
        let m = e.to_string();
        assert!(m.contains(op.action()) && m.contains(&arn(&ebs)), "{m}");
        assert!(m.contains(&format!("arn:aws:iam::{ACCOUNT}:root")), "{m}");
    }
    let md = h.describe(&ebs).await.unwrap();
    assert_eq!(md["KeyState"], "Enabled");
    assert!(md["Description"].as_str().unwrap().contains("ebs"), "{md}");

    // "alias/aws/" alone names no service and creates nothing; neither does a service AWS
    // makes no managed key for (no caller can fill the HSMs with undeletable keys).
    expect_err(h.describe("alias/aws/").await, "NotFoundException");
    let creates = h.fake.calls("create_key");
    for made_up in ["alias/aws/not-a-service", "alias/aws/mine"] {
        expect_err(h.describe(made_up).await, "NotFoundException");
        expect_err(h.run(encrypt(made_up, b"x")).await, "NotFoundException");
    }
    assert_eq!(h.fake.calls("create_key"), creates);
    assert_eq!(h.key_ids().await.len(), 3);
}

#[tokio::test]
async fn malformed_and_unknown_key_ids_are_not_found() {
    let h = Harness::new();
    h.sym().await;
    for bad in [
        "not-a-key-id",
        "134f2428cec14b25a1ae9048164dba47",
        "mrk-fake",
    ] {
        let r = kref(bad);
        assert!(matches!(r, KeyRef::Malformed(_)), "{bad}: {r:?}");
        for req in [
            describe_req(bad),
            encrypt(bad, b"x"),
            key_op(Operation::DisableKey, bad),
            schedule_deletion(bad, None),
            set_alias(Operation::CreateAlias, "alias/x", bad),
        ] {
            let op = req.0;
            let e = expect_err(h.run(req).await, "NotFoundException");
            assert_eq!(e.to_string(), format!("Invalid keyId '{bad}'"), "{op}");
        }
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    let e = expect_err(h.describe(unknown).await, "NotFoundException");
    assert_eq!(
        e.to_string(),
        format!("Key '{}' does not exist", arn(unknown))
    );
    // Key-only operations do not take aliases.
    let id = h.key_ids().await[0].clone();
    h.ok(set_alias(Operation::CreateAlias, "alias/k", &id))
        .await;
    expect_err(
        h.run(key_op(Operation::DisableKey, "alias/k")).await,
        "NotFoundException",
    );
    // Another region or account in an ARN.
    for other in [
        format!("arn:aws:kms:eu-west-1:{ACCOUNT}:key/{id}"),
        format!("arn:aws:kms:{REGION}:444455556666:key/{id}"),
    ] {
        expect_err(h.describe(&other).await, "NotFoundException");
    }
}

// ------------------------------------------------------------------ 4. rotation

async fn current_material(h: &Harness, key: &str) -> String {
    h.describe(key).await.unwrap()["CurrentKeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Each material's check value is recorded with the key when the material is made (not
/// left to the background pass): CreateKey of each secret kind and each rotation store the
/// value of the copies the vault made.
#[tokio::test]
async fn each_material_records_its_check_value_when_it_is_made() {
    let h = Harness::new();
    let recorded = |key: &str| -> Vec<(ObjectId, Option<String>)> {
        let keys = h.kms.keys.read();
        let e = keys
            .values()
            .find(|e| e.doc.key_id.to_string() == key)
            .unwrap();
        e.doc
            .backing
            .iter()
            .map(|b| (b.object_id.clone(), b.check_value.clone()))
            .collect()
    };
    let sym = h.sym().await;
    let mac_key = h
        .create(KeySpec::Hmac384, KeyUsage::GenerateVerifyMac)
        .await;
    h.ok(key_op(Operation::RotateKeyOnDemand, &sym)).await;
    for (key, kind, n) in [(&sym, KeyKind::Aes, 2), (&mac_key, KeyKind::Hmac(48), 1)] {
        let backing = recorded(key);
        assert_eq!(backing.len(), n);
        for (object, value) in backing {
            let made = h.fake.check_value(&object, kind).await.unwrap().unwrap();
            assert_eq!(value, Some(hex::encode(made)), "{key} {object}");
        }
    }
    assert_eq!(
        h.kms.record_check_values().await.unwrap(),
        0,
        "nothing left to record"
    );
}

#[tokio::test]
async fn on_demand_rotation_makes_new_material_and_keeps_the_old() {
    let h = Harness::new();
    let k = h.sym().await;
    let old = h.encrypt(&k, b"generation one").await;
    let m1 = current_material(&h, &k).await;
    assert_eq!(m1.len(), 64);
    let creates = h.fake.calls("create_key");

    let r = h.ok(key_op(Operation::RotateKeyOnDemand, &k)).await;
    assert_eq!(r, serde_json::json!({"KeyId": k}));
    assert_eq!(h.fake.calls("create_key"), creates + 1);
    let objects = h.objects(&k);
    assert_eq!(objects.len(), 2);
    assert!(h.everywhere(&objects), "both generations in every HSM");
    let m2 = current_material(&h, &k).await;
    assert_ne!(m1, m2);

    // New ciphertexts use generation 2; old ones still decrypt; ReEncrypt moves them.
    let new = h.encrypt(&k, b"generation two").await;
    assert_eq!((backing_version(&old), backing_version(&new)), (1, 2));
    assert_eq!(h.decrypt(&old).await.unwrap(), b"generation one");
    assert_eq!(h.decrypt(&new).await.unwrap(), b"generation two");
    let moved = b64(&h.ok(re_encrypt(&old, &k, false)).await["CiphertextBlob"]);
    assert_eq!(backing_version(&moved), 2);
    assert_eq!(h.decrypt(&moved).await.unwrap(), b"generation one");
    let dk = h.ok(data_key(&k, true, false)).await;
    assert_eq!(backing_version(&b64(&dk["CiphertextBlob"])), 2);

    // The rotation is listed as ON_DEMAND and CURRENT.
    let l = h.ok(list_rotations(&k, false, 10, None)).await;
    let rot = l["Rotations"].as_array().unwrap();
    assert_eq!(rot.len(), 1, "{l}");
    assert_eq!(rot[0]["RotationType"], "ON_DEMAND");
    assert_eq!(rot[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(rot[0]["KeyMaterialId"], m2.as_str());
    assert_eq!(rot[0]["RotationDate"].as_f64().unwrap(), T0 as f64);
    // The on-demand quota.
    h.kms.set_on_demand_rotation_limit(1);
    expect_err(
        h.run(key_op(Operation::RotateKeyOnDemand, &k)).await,
        "LimitExceededException",
    );
    assert_eq!(h.fake.calls("create_key"), creates + 1);
}

#[tokio::test]
async fn list_key_rotations_pages() {
    let h = Harness::new();
    let k = h.sym().await;
    for _ in 0..3 {
        h.ok(key_op(Operation::RotateKeyOnDemand, &k)).await;
    }
    let p1 = h.ok(list_rotations(&k, false, 2, None)).await;
    assert_eq!(p1["Rotations"].as_array().unwrap().len(), 2, "{p1}");
    assert_eq!(p1["Truncated"], true);
    let marker = p1["NextMarker"].as_str().unwrap().to_string();
    let p2 = h.ok(list_rotations(&k, false, 2, Some(&marker))).await;
    assert_eq!(p2["Rotations"].as_array().unwrap().len(), 1, "{p2}");
    assert_eq!(p2["Truncated"], false);
    assert!(p2.get("NextMarker").is_none());
    let mut ids: Vec<Value> = p1["Rotations"].as_array().unwrap().clone();
    ids.extend(p2["Rotations"].as_array().unwrap().iter().cloned());
    let states: Vec<&str> = ids
        .iter()
        .map(|r| r["KeyMaterialState"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["NON_CURRENT", "NON_CURRENT", "CURRENT"]);
    let distinct: std::collections::BTreeSet<&str> = ids
        .iter()
        .map(|r| r["KeyMaterialId"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 3);
    // ALL_KEY_MATERIAL includes the original material (no rotation type or date).
    let all = h.ok(list_rotations(&k, true, 10, None)).await;
    let all = all["Rotations"].as_array().unwrap();
    assert_eq!(all.len(), 4);
    assert!(all[0].get("RotationType").is_none() && all[0].get("RotationDate").is_none());
    assert_eq!(all[0]["KeyMaterialState"], "NON_CURRENT");
    // A bad marker.
    expect_err(
        h.run(list_rotations(&k, false, 2, Some("not-a-marker")))
            .await,
        "InvalidMarkerException",
    );
}

#[tokio::test]
async fn automatic_rotation_after_the_period() {
    let h = Harness::new();
    let k = h.sym().await;
    let idle = h.sym().await;
    h.ok(enable_rotation(&k, Some(90))).await;
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 90);
    let due = T0 as f64 + 90.0 * DAY;
    assert_eq!(st["NextRotationDate"].as_f64().unwrap(), due);
    let before = h.encrypt(&k, b"before").await;
    let m1 = current_material(&h, &k).await;

    // One second early: nothing.
    h.clock.advance(days(90.0) - Duration::from_secs(1));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 1);
    // At the date: rotated, listed as AUTOMATIC, next date one period on.
    h.clock.advance(Duration::from_secs(1));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 2);
    assert!(h.everywhere(&h.objects(&k)));
    assert_ne!(current_material(&h, &k).await, m1);
    let l = h.ok(list_rotations(&k, false, 10, None)).await;
    assert_eq!(l["Rotations"][0]["RotationType"], "AUTOMATIC", "{l}");
    assert_eq!(l["Rotations"][0]["RotationDate"].as_f64().unwrap(), due);
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["NextRotationDate"].as_f64().unwrap(), due + 90.0 * DAY);
    // A second pass does not rotate again; the key without rotation never rotated.
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 2);
    assert_eq!(h.objects(&idle).len(), 1);
    let after = h.encrypt(&k, b"after").await;
    assert_eq!(backing_version(&after), 2);
    assert_eq!(h.decrypt(&before).await.unwrap(), b"before");
    // Rotation periods outside 90–2560 days.
    for p in [89, 2561] {
        expect_err(
            h.run(enable_rotation(&idle, Some(p))).await,
            "ValidationException",
        );
    }
}

#[tokio::test]
async fn aws_managed_keys_rotate_yearly_by_themselves() {
    let h = Harness::new();
    h.through("ec2");
    let blob = b64(&h.ok(encrypt("alias/aws/ebs", b"managed")).await["CiphertextBlob"]);
    let id = h.describe("alias/aws/ebs").await.unwrap()["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &id)).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 365);
    h.clock.advance(days(365.0));
    h.kms.maintenance().await.unwrap();
    let l = h.ok(list_rotations(&id, false, 10, None)).await;
    assert_eq!(l["Rotations"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["Rotations"][0]["RotationType"], "AUTOMATIC");
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"managed");
}

#[tokio::test]
async fn rotation_is_refused_for_asymmetric_hmac_and_aws_managed_keys() {
    let h = Harness::new();
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await;
    let creates = h.fake.calls("create_key");
    for k in [&ecc, &hmac, &rsa] {
        assert!(h
            .describe(k)
            .await
            .unwrap()
            .get("CurrentKeyMaterialId")
            .is_none());
        for r in [
            enable_rotation(k, None),
            key_op(Operation::DisableKeyRotation, k),
            key_op(Operation::GetKeyRotationStatus, k),
            key_op(Operation::RotateKeyOnDemand, k),
            list_rotations(k, false, 10, None),
        ] {
            let op = r.0;
            let e = expect_err(h.run(r).await, "UnsupportedOperationException");
            assert!(e.to_string().contains(&arn(k)), "{op}: {e}");
        }
    }
    // AWS managed: the status reads (directly: its policy allows `kms:Get*` to the
    // account), but it cannot be changed.
    h.through("s3");
    h.ok(encrypt("alias/aws/s3", b"x")).await;
    let creates = creates + 1;
    let s3 = h.describe("alias/aws/s3").await.unwrap()["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(key_op(Operation::GetKeyRotationStatus, &s3)).await;
    for r in [
        enable_rotation(&s3, None),
        key_op(Operation::DisableKeyRotation, &s3),
        key_op(Operation::RotateKeyOnDemand, &s3),
    ] {
        // Its fixed policy allows no rotation action, not even through the service.
        expect_err(h.run(r).await, "AccessDeniedException");
    }
    assert_eq!(h.fake.calls("create_key"), creates, "no material made");
}

#[tokio::test]
async fn rotation_with_one_hsm_up_is_a_dependency_timeout_and_commits_nothing() {
    let h = Harness::new();
    let k = h.sym().await;
    let scheduled = h.sym().await;
    h.ok(enable_rotation(&scheduled, Some(90))).await;
    let before = h.encrypt(&k, b"kept").await;
    let m1 = current_material(&h, &k).await;
    let objects_before = h.fake.object_count();
    h.fake.set_down(1, true);
    h.fake.set_down(2, true);

    expect_err(
        h.run(key_op(Operation::RotateKeyOnDemand, &k)).await,
        "DependencyTimeoutException",
    );
    assert_eq!(h.objects(&k).len(), 1);
    assert_eq!(current_material(&h, &k).await, m1);
    let l = h.ok(list_rotations(&k, false, 10, None)).await;
    assert_eq!(l["Rotations"], serde_json::json!([]));
    assert_eq!(h.fake.object_count(), objects_before);
    // An automatic rotation that is due waits too.
    h.clock.advance(days(91.0));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&scheduled).len(), 1);
    let st = h
        .ok(key_op(Operation::GetKeyRotationStatus, &scheduled))
        .await;
    assert_eq!(
        st["NextRotationDate"].as_f64().unwrap(),
        T0 as f64 + 90.0 * DAY
    );
    // The key keeps working on its current material with one HSM.
    let during = h.encrypt(&k, b"during").await;
    assert_eq!(backing_version(&during), 1);
    assert_eq!(h.decrypt(&before).await.unwrap(), b"kept");

    // Back up: both rotations go through.
    h.fake.set_down(1, false);
    h.fake.set_down(2, false);
    h.ok(key_op(Operation::RotateKeyOnDemand, &k)).await;
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 2);
    assert_eq!(h.objects(&scheduled).len(), 2);
    assert!(h.everywhere(&h.objects(&k)));
    assert_eq!(h.decrypt(&during).await.unwrap(), b"during");
}

// ------------------------------------------------------------------ 5. deletion

#[tokio::test]
async fn schedule_and_cancel_deletion() {
    let h = Harness::new();
    let k = h.sym().await;
    let blob = h.encrypt(&k, b"kept").await;
    for w in [0, 6, 31, 365] {
        let e = expect_err(
            h.run(schedule_deletion(&k, Some(w))).await,
            "ValidationException",
        );
        assert!(e.to_string().contains(&format!("'{w}'")), "{e}");
    }
    assert_eq!(h.describe(&k).await.unwrap()["KeyState"], "Enabled");

    h.clock.advance(Duration::from_secs(3600));
    let now = h.epoch();
    let r = h.ok(schedule_deletion(&k, Some(7))).await;
    assert_eq!(r["KeyId"], arn(&k));
    assert_eq!(r["KeyState"], "PendingDeletion");
    assert_eq!(r["PendingWindowInDays"], 7);
    assert_eq!(r["DeletionDate"].as_f64().unwrap(), now + 7.0 * DAY);
    let md = h.describe(&k).await.unwrap();
    assert_eq!(md["KeyState"], "PendingDeletion");
    assert_eq!(md["Enabled"], false);
    assert_eq!(md["DeletionDate"], r["DeletionDate"]);
    assert_eq!(md["PendingDeletionWindowInDays"], 7);
    expect_err(
        h.run(schedule_deletion(&k, Some(30))).await,
        "KMSInvalidStateException",
    );
    // Nothing destroyed before the date.
    h.clock.advance(days(6.0));
    h.kms.maintenance().await.unwrap();
    assert!(h.everywhere(&h.objects(&k)));
    assert!(h.fake.destroyed().is_empty());

    // Cancel → Disabled, dates gone; then enable and the old ciphertext works.
    let r = h.ok(key_op(Operation::CancelKeyDeletion, &arn(&k))).await;
    assert_eq!(r, serde_json::json!({"KeyId": arn(&k)}));
    let md = h.describe(&k).await.unwrap();
    assert_eq!(md["KeyState"], "Disabled");
    assert!(md.get("DeletionDate").is_none() && md.get("PendingDeletionWindowInDays").is_none());
    expect_err(
        h.run(key_op(Operation::CancelKeyDeletion, &k)).await,
        "KMSInvalidStateException",
    );
    expect_err(
        h.decrypt(&blob).await.map(|_| Value::Null),
        "DisabledException",
    );
    h.ok(key_op(Operation::EnableKey, &k)).await;
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"kept");
    // The date that passed while pending means nothing now.
    h.clock.advance(days(30.0));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"kept");

    // The default window is 30 days.
    let now = h.epoch();
    let r = h.ok(schedule_deletion(&k, None)).await;
    assert_eq!(r["PendingWindowInDays"], 30);
    assert_eq!(r["DeletionDate"].as_f64().unwrap(), now + 30.0 * DAY);
}

#[tokio::test]
async fn due_deletion_destroys_every_generation_on_every_hsm() {
    let h = Harness::new();
    let k = h.sym().await;
    let keep = h.sym().await;
    h.ok(key_op(Operation::RotateKeyOnDemand, &k)).await;
    h.ok(set_alias(Operation::CreateAlias, "alias/doomed", &k))
        .await;
    let blob = h.encrypt(&k, b"bye").await;
    let keep_blob = h.encrypt(&keep, b"stay").await;
    let objects = h.objects(&k);
    assert_eq!(objects.len(), 2);
    assert!(h.everywhere(&objects));
    h.ok(schedule_deletion(&k, Some(7))).await;

    // One second before the date: nothing; at the date the waiting period has ended.
    h.clock.advance(days(7.0) - Duration::from_secs(1));
    h.kms.maintenance().await.unwrap();
    assert!(h.everywhere(&objects));
    h.clock.advance(Duration::from_secs(1));
    let e = expect_err(
        h.run(key_op(Operation::CancelKeyDeletion, &k)).await,
        "KMSInvalidStateException",
    );
    assert!(e.to_string().contains("waiting period has ended"), "{e}");
    h.kms.maintenance().await.unwrap();

    let mut destroyed = h.fake.destroyed();
    destroyed.sort();
    let mut want = objects.clone();
    want.sort();
    assert_eq!(destroyed, want);
    assert!(h.nowhere(&objects));
    expect_err(h.describe(&k).await, "NotFoundException");
    expect_err(h.describe("alias/doomed").await, "NotFoundException");
    expect_err(
        h.run(key_op(Operation::CancelKeyDeletion, &k)).await,
        "NotFoundException",
    );
    expect_err(
        h.decrypt(&blob).await.map(|_| Value::Null),
        "InvalidCiphertextException",
    );
    assert_eq!(h.key_ids().await, vec![keep.clone()]);
    assert!(h.aliases(None).await.is_empty());
    assert!(h.kms.backing_object_ids(&k).is_empty());
    // The other key is untouched; a later pass is a no-op.
    assert_eq!(h.decrypt(&keep_blob).await.unwrap(), b"stay");
    let destroys = h.fake.calls("destroy_key");
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.fake.calls("destroy_key"), destroys);
    assert!(h.everywhere(&h.objects(&keep)));
}

#[tokio::test]
async fn destruction_with_an_hsm_down_is_retried_and_never_resynced_back() {
    let h = Harness::new();
    let k = h.sym().await;
    let obj = h.objects(&k);
    assert_eq!(obj.len(), 1);
    h.ok(schedule_deletion(&k, Some(7))).await;
    h.fake.set_down(2, true);
    h.clock.advance(days(7.0) + Duration::from_secs(5));

    // The due pass reports the incomplete destruction; destroyed where it could be.
    let e = h.kms.maintenance().await.unwrap_err();
    assert_eq!(e.aws_type(), "DependencyTimeoutException", "{e:?}");
    assert!(!h.fake.holds(0, &obj[0]) && !h.fake.holds(1, &obj[0]));
    assert!(h.fake.holds(2, &obj[0]), "the down HSM keeps its copy");
    assert!(h.fake.destroyed().is_empty());
    // Still PendingDeletion: unusable and not cancellable.
    assert_eq!(h.describe(&k).await.unwrap()["KeyState"], "PendingDeletion");
    expect_err(h.run(encrypt(&k, b"x")).await, "KMSInvalidStateException");
    expect_err(
        h.run(key_op(Operation::CancelKeyDeletion, &k)).await,
        "KMSInvalidStateException",
    );
    // Still down: still pending.
    assert!(h.kms.maintenance().await.is_err());
    h.describe(&k).await.unwrap();

    // The HSM is back holding the key, but this pass's destruction fails: the re-sync of
    // the same pass must not copy the doomed key back into HSMs 0 and 1.
    h.fake.set_down(2, false);
    h.fake.fail_next_op("destroy_key", 1, Fault::Unavailable);
    assert!(h.kms.maintenance().await.is_err());
    assert!(!h.fake.holds(0, &obj[0]) && !h.fake.holds(1, &obj[0]));
    assert!(h.fake.holds(2, &obj[0]));
    h.kms.resync_hsms().await.unwrap();
    assert!(!h.fake.holds(0, &obj[0]) && !h.fake.holds(1, &obj[0]));

    // The next pass completes it.
    h.kms.maintenance().await.unwrap();
    assert!(h.nowhere(&obj));
    assert_eq!(h.fake.destroyed(), obj);
    expect_err(h.describe(&k).await, "NotFoundException");
    assert!(h.key_ids().await.is_empty());
}

// ------------------------------------------------------------------ 6. vault failures

#[tokio::test]
async fn vault_unavailable_is_a_dependency_timeout() {
    let h = Harness::new();
    let k = h.sym().await;
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let blob = h.encrypt(&k, b"x").await;
    for (i, r) in [
        encrypt(&k, b"x"),
        decrypt(&blob, None),
        data_key(&k, true, false),
        re_encrypt(&blob, &k, false),
        sign(&ecc, b"m", SigningAlgorithm::EcdsaSha256, None, false),
        mac(&hmac, b"m", MacAlgorithm::HmacSha256, None, false),
        create_key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
    ]
    .into_iter()
    .enumerate()
    {
        let op = r.0;
        h.fake.fail_next(1, Fault::Unavailable);
        let e = expect_err(h.run(r).await, "DependencyTimeoutException");
        assert_eq!(
            e.client_message(),
            "The HSMs did not answer in time; retry the request.",
            "{i}: {op}"
        );
    }
    // Every HSM down.
    for i in 0..3 {
        h.fake.set_down(i, true);
    }
    expect_err(h.run(encrypt(&k, b"x")).await, "DependencyTimeoutException");
    expect_err(
        h.decrypt(&blob).await.map(|_| Value::Null),
        "DependencyTimeoutException",
    );
    // One up is enough to use a key.
    h.fake.set_down(0, false);
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"x");
    // A fatal device error is an internal error with no detail for the client.
    h.fake.fail_next(1, Fault::Fatal);
    let e = expect_err(h.run(encrypt(&k, b"x")).await, "KMSInternalException");
    assert_eq!(e.client_message(), "An internal error occurred.");
    h.ok(encrypt(&k, b"x")).await;
    assert_eq!(h.key_ids().await.len(), 3);
}

#[tokio::test]
async fn create_key_with_fewer_than_two_hsms_up_leaves_nothing() {
    let h = Harness::new();
    let existing = h.sym().await;
    let before = h.key_ids().await;
    let objects = h.fake.object_count();
    h.fake.set_down(0, true);
    h.fake.set_down(2, true);
    for (spec, usage) in [
        (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        (KeySpec::EccNistP256, KeyUsage::SignVerify),
        (KeySpec::Hmac256, KeyUsage::GenerateVerifyMac),
    ] {
        let e = expect_err(
            h.run(create_key(spec, usage)).await,
            "DependencyTimeoutException",
        );
        // The reason is the two-copy quorum, and the client is told so.
        assert_eq!(
            e.client_message(),
            "Fewer than 2 HSMs hold a healthy copy of the key material (1 available); \
             retry the request when an HSM returns."
        );
    }
    // Nor does first use of an AWS managed alias.
    expect_err(
        h.run(encrypt("alias/aws/ebs", b"x")).await,
        "DependencyTimeoutException",
    );
    assert_eq!(h.key_ids().await, before);
    assert_eq!(h.kms.key_count(), 1);
    assert_eq!(h.fake.object_count(), objects);
    assert!(h.aliases(None).await.is_empty());
    // The existing key still works with one HSM.
    h.encrypt(&existing, b"x").await;
    // Two up: creation works again, in the up HSMs; re-sync fills in the third later.
    h.fake.set_down(2, false);
    let k = h.sym().await;
    let obj = h.objects(&k);
    assert!(h.fake.holds(1, &obj[0]) && h.fake.holds(2, &obj[0]));
    assert!(!h.fake.holds(0, &obj[0]));
    h.fake.set_down(0, false);
    h.kms.maintenance().await.unwrap();
    assert!(h.everywhere(&obj));
}

#[tokio::test]
async fn a_two_hsm_cluster_with_one_down_cannot_create() {
    let h = Harness::with_hsms(2);
    h.fake.set_down(1, true);
    expect_err(
        h.run(create_key(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
        ))
        .await,
        "DependencyTimeoutException",
    );
    assert!(h.key_ids().await.is_empty());
    assert_eq!(h.fake.object_count(), 0);
    h.fake.set_down(1, false);
    h.sym().await;
    assert_eq!(h.key_ids().await.len(), 1);
}

// ------------------------------------------------------------------ more domain rules

#[tokio::test]
async fn create_key_refusals_create_nothing() {
    let h = Harness::new();
    h.fake.set_ed25519_keys(false);
    let long = "d".repeat(8193);
    let cases: Vec<(rq::CreateKey, &str)> = vec![
        (
            rq::CreateKey {
                key_spec: Some(KeySpec::Hmac256),
                ..Default::default()
            },
            "ValidationException",
        ),
        (
            rq::CreateKey {
                key_spec: Some(KeySpec::Rsa2048),
                key_usage: Some(KeyUsage::KeyAgreement),
                ..Default::default()
            },
            "ValidationException",
        ),
        (
            rq::CreateKey {
                key_usage: Some(KeyUsage::SignVerify),
                ..Default::default()
            },
            "ValidationException",
        ),
        (
            rq::CreateKey {
                description: Some(long),
                ..Default::default()
            },
            "ValidationException",
        ),
        (
            rq::CreateKey {
                origin: Some(crate::kms::types::Origin::AwsCloudhsm),
                ..Default::default()
            },
            "UnsupportedOperationException",
        ),
        (
            rq::CreateKey {
                multi_region: true,
                ..Default::default()
            },
            "UnsupportedOperationException",
        ),
        (
            rq::CreateKey {
                key_spec: Some(KeySpec::EccNistEdwards25519),
                key_usage: Some(KeyUsage::SignVerify),
                ..Default::default()
            },
            "UnsupportedOperationException",
        ),
        (
            rq::CreateKey {
                key_spec: Some(KeySpec::Sm2),
                key_usage: Some(KeyUsage::SignVerify),
                ..Default::default()
            },
            "UnsupportedOperationException",
        ),
        (
            rq::CreateKey {
                tags: vec![Tag::new("aws:reserved", "x").unwrap()],
                ..Default::default()
            },
            "TagException",
        ),
    ];
    for (i, (input, ty)) in cases.into_iter().enumerate() {
        let e = expect_err(
            h.call(Operation::CreateKey, Request::CreateKey(input))
                .await,
            ty,
        );
        assert!(!e.to_string().is_empty(), "case {i}");
    }
    assert_eq!(h.fake.calls("create_key"), 0);
    assert!(h.key_ids().await.is_empty());
    // Accepted: the metadata AWS shows for a new key.
    let v = h
        .call(
            Operation::CreateKey,
            Request::CreateKey(rq::CreateKey {
                description: Some("mine".into()),
                tags: vec![Tag::new("a", "1").unwrap(), Tag::new("a", "2").unwrap()],
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let md = &v["KeyMetadata"];
    let id = md["KeyId"].as_str().unwrap();
    assert_eq!(md["Arn"], arn(id));
    assert_eq!(md["AWSAccountId"], ACCOUNT);
    assert_eq!(md["CreationDate"].as_f64().unwrap(), T0 as f64);
    assert_eq!(md["Description"], "mine");
    assert_eq!(md["KeyState"], "Enabled");
    assert_eq!(md["Enabled"], true);
    assert_eq!(md["KeyManager"], "CUSTOMER");
    assert_eq!(md["Origin"], "AWS_KMS");
    assert_eq!(md["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(
        md["EncryptionAlgorithms"],
        serde_json::json!(["SYMMETRIC_DEFAULT"])
    );
    assert_eq!(md["MultiRegion"], false);
    let t = h.ok(list_tags(id, 50, None)).await;
    assert_eq!(
        t["Tags"],
        serde_json::json!([{"TagKey": "a", "TagValue": "2"}])
    );
    assert_eq!(h.fake.calls("create_key"), 1);
}

#[tokio::test]
async fn tags_and_description() {
    let h = Harness::new();
    let k = h.sym().await;
    h.ok(tag_resource(&k, "b", "1")).await;
    h.ok(tag_resource(&k, "a", "1")).await;
    h.ok(tag_resource(&k, "b", "2")).await; // overwrite
    let p1 = h.ok(list_tags(&k, 1, None)).await;
    assert_eq!(
        p1["Tags"],
        serde_json::json!([{"TagKey": "a", "TagValue": "1"}])
    );
    assert_eq!(p1["Truncated"], true);
    let m = p1["NextMarker"].as_str().unwrap().to_string();
    let p2 = h.ok(list_tags(&k, 1, Some(&m))).await;
    assert_eq!(
        p2["Tags"],
        serde_json::json!([{"TagKey": "b", "TagValue": "2"}])
    );
    assert_eq!(p2["Truncated"], false);
    expect_err(
        h.run(list_tags(&k, 1, Some("garbage"))).await,
        "InvalidMarkerException",
    );
    h.ok(untag_resource(&k, "a")).await;
    h.ok(untag_resource(&k, "nope")).await;
    assert_eq!(
        h.ok(list_tags(&k, 50, None)).await["Tags"],
        serde_json::json!([{"TagKey": "b", "TagValue": "2"}])
    );
    // Reserved prefix, either case, and the 50-tag quota (nothing applied).
    expect_err(h.run(tag_resource(&k, "AWS:x", "v")).await, "TagException");
    expect_err(h.run(untag_resource(&k, "aws:x")).await, "TagException");
    for i in 0..49 {
        h.ok(tag_resource(&k, &format!("t{i:02}"), "v")).await;
    }
    expect_err(
        h.run(tag_resource(&k, "one-too-many", "v")).await,
        "LimitExceededException",
    );
    h.ok(tag_resource(&k, "b", "overwrite is fine")).await;
    let all = h.ok(list_tags(&k, 100, None)).await;
    assert_eq!(all["Tags"].as_array().unwrap().len(), 50);
    // Description.
    h.ok(update_description(&k, "new words")).await;
    assert_eq!(h.describe(&k).await.unwrap()["Description"], "new words");
}

#[tokio::test]
async fn data_keys_random_and_contexts() {
    let h = Harness::new();
    let k = h.sym().await;
    let c = ctx(&[("purpose", "test")]);
    let (op, mut req) = data_key(&k, true, false);
    if let Request::GenerateDataKey(r) = &mut req {
        r.context = c.clone();
        r.size = DataKeySize::Bytes(64);
    }
    let dk = h.call(op, req).await.unwrap();
    let plain = b64(&dk["Plaintext"]);
    assert_eq!(plain.len(), 64);
    assert_eq!(dk["KeyId"], arn(&k));
    let blob = b64(&dk["CiphertextBlob"]);
    expect_err(
        h.decrypt(&blob).await.map(|_| Value::Null),
        "InvalidCiphertextException",
    );
    let d = h.ok(decrypt_with(&blob, None, c.clone(), false)).await;
    assert_eq!(b64(&d["Plaintext"]), plain);
    let wp = h.ok(data_key(&k, false, false)).await;
    assert!(wp.get("Plaintext").is_none(), "{wp}");
    assert_eq!(
        h.decrypt(&b64(&wp["CiphertextBlob"])).await.unwrap().len(),
        32
    );
    // The context binds Encrypt too.
    let e = h
        .ok(encrypt_with(&k, b"bound", c.clone(), None, false))
        .await;
    let eb = b64(&e["CiphertextBlob"]);
    assert_eq!(
        b64(&h.ok(decrypt_with(&eb, None, c, false)).await["Plaintext"]),
        b"bound"
    );
    expect_err(
        h.run(decrypt_with(&eb, None, ctx(&[("purpose", "other")]), false))
            .await,
        "InvalidCiphertextException",
    );
    // GenerateRandom.
    let r = h
        .call(Operation::GenerateRandom, Request::GenerateRandom(16))
        .await
        .unwrap();
    assert_eq!(b64(&r["Plaintext"]).len(), 16);
    h.fake.fail_next(1, Fault::Unavailable);
    expect_err(
        h.call(Operation::GenerateRandom, Request::GenerateRandom(16))
            .await,
        "DependencyTimeoutException",
    );
}

#[tokio::test]
async fn signatures_and_macs_verify_independently() {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let h = Harness::new();
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let s = h
        .ok(sign(
            &ecc,
            b"hello",
            SigningAlgorithm::EcdsaSha256,
            None,
            false,
        ))
        .await;
    assert_eq!(s["KeyId"], arn(&ecc));
    assert_eq!(s["SigningAlgorithm"], "ECDSA_SHA_256");
    let sig = b64(&s["Signature"]);
    let pk = h.ok(key_op(Operation::GetPublicKey, &ecc)).await;
    assert_eq!(pk["KeyUsage"], "SIGN_VERIFY");
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&b64(&pk["PublicKey"])).unwrap();
    let parsed = p256::ecdsa::Signature::from_der(&sig).unwrap();
    vk.verify(b"hello", &parsed).unwrap();
    let v = h
        .ok(sign(
            &ecc,
            b"hello",
            SigningAlgorithm::EcdsaSha256,
            Some(sig.clone()),
            false,
        ))
        .await;
    assert_eq!(v["SignatureValid"], true);
    expect_err(
        h.run(sign(
            &ecc,
            b"other",
            SigningAlgorithm::EcdsaSha256,
            Some(sig),
            false,
        ))
        .await,
        "KMSInvalidSignatureException",
    );
    // GetPublicKey of a symmetric key.
    let sym = h.sym().await;
    expect_err(
        h.run(key_op(Operation::GetPublicKey, &sym)).await,
        "UnsupportedOperationException",
    );
    // HMAC: deterministic, verifiable.
    let m1 = h
        .ok(mac(&hmac, b"msg", MacAlgorithm::HmacSha256, None, false))
        .await;
    let m2 = h
        .ok(mac(&hmac, b"msg", MacAlgorithm::HmacSha256, None, false))
        .await;
    assert_eq!(m1["Mac"], m2["Mac"]);
    assert_eq!(b64(&m1["Mac"]).len(), 32);
    let v = h
        .ok(mac(
            &hmac,
            b"msg",
            MacAlgorithm::HmacSha256,
            Some(b64(&m1["Mac"])),
            false,
        ))
        .await;
    assert_eq!(v["MacValid"], true);
}

#[tokio::test]
async fn rotation_schedule_changes_conflicts_and_pauses() {
    let h = Harness::new();
    let k = h.sym().await;
    h.ok(enable_rotation(&k, Some(90))).await;
    // A new period counts from the same start.
    h.clock.advance(days(10.0));
    h.ok(enable_rotation(&k, Some(180))).await;
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["RotationPeriodInDays"], 180);
    let due = T0 as f64 + 180.0 * DAY;
    assert_eq!(st["NextRotationDate"].as_f64().unwrap(), due);
    // On demand within 20 minutes of the scheduled rotation: ConflictException.
    h.clock
        .set(time::OffsetDateTime::from_unix_timestamp(T0 + 180 * 86_400 - 600).unwrap());
    expect_err(
        h.run(key_op(Operation::RotateKeyOnDemand, &k)).await,
        "ConflictException",
    );
    // Disabled: the due rotation waits, the status still reads enabled.
    h.ok(key_op(Operation::DisableKey, &k)).await;
    h.clock.advance(days(1.0));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 1);
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    // Pending deletion: reads off; cancelled: the schedule is back.
    h.ok(schedule_deletion(&k, Some(7))).await;
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["KeyRotationEnabled"], false);
    assert!(st.get("NextRotationDate").is_none());
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 1);
    h.ok(key_op(Operation::CancelKeyDeletion, &k)).await;
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["NextRotationDate"].as_f64().unwrap(), due);
    // Enabled again: the overdue rotation happens on the next pass.
    h.ok(key_op(Operation::EnableKey, &k)).await;
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 2);
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["NextRotationDate"].as_f64().unwrap(), due + 180.0 * DAY);
    // DisableKeyRotation stops it.
    h.ok(key_op(Operation::DisableKeyRotation, &k)).await;
    h.clock.advance(days(400.0));
    h.kms.maintenance().await.unwrap();
    assert_eq!(h.objects(&k).len(), 2);
}

#[tokio::test]
async fn maintenance_resyncs_an_hsm_that_missed_keys() {
    let h = Harness::new();
    h.fake.set_down(2, true);
    let sym = h.sym().await;
    h.ok(key_op(Operation::RotateKeyOnDemand, &sym)).await;
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let all: Vec<ObjectId> = [&sym, &ecc, &hmac]
        .iter()
        .flat_map(|k| h.objects(k))
        .collect();
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|o| !h.fake.holds(2, o)));
    h.fake.set_down(2, false);
    h.kms.maintenance().await.unwrap();
    assert!(h.everywhere(&all));
    // HSM 2 alone now answers for every key.
    let blob = h.encrypt(&sym, b"x").await;
    h.fake.set_down(0, true);
    h.fake.set_down(1, true);
    assert_eq!(h.decrypt(&blob).await.unwrap(), b"x");
    h.ok(sign(&ecc, b"m", SigningAlgorithm::EcdsaSha256, None, false))
        .await;
    h.ok(mac(&hmac, b"m", MacAlgorithm::HmacSha256, None, false))
        .await;
}

#[tokio::test]
async fn asymmetric_and_hmac_keys_are_destroyed_and_never_resynced_back() {
    let h = Harness::new();
    let ecc = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    let hmac = h
        .create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac)
        .await;
    let objs: Vec<ObjectId> = [&ecc, &hmac].iter().flat_map(|k| h.objects(k)).collect();
    for k in [&ecc, &hmac] {
        h.ok(schedule_deletion(k, Some(7))).await;
    }
    h.fake.set_down(0, true);
    h.clock.advance(days(7.0));
    assert!(h.kms.maintenance().await.is_err());
    assert!(objs
        .iter()
        .all(|o| h.fake.holds(0, o) && !h.fake.holds(1, o)));
    h.fake.set_down(0, false);
    h.fake.fail_next_op("destroy_key", 2, Fault::Unavailable);
    assert!(h.kms.maintenance().await.is_err());
    h.kms.resync_hsms().await.unwrap();
    assert!(
        objs.iter()
            .all(|o| !h.fake.holds(1, o) && !h.fake.holds(2, o)),
        "re-sync resurrected a doomed key pair or HMAC key"
    );
    h.kms.maintenance().await.unwrap();
    assert!(h.nowhere(&objs));
    assert!(h.key_ids().await.is_empty());
}

#[tokio::test]
async fn committed_metadata_survives_a_restart_and_failures_leave_none() {
    let h = Harness::new();
    let k = h.sym().await;
    let doomed = h.sym().await;
    h.ok(set_alias(Operation::CreateAlias, "alias/k", &k)).await;
    h.ok(tag_resource(&k, "t", "v")).await;
    h.ok(enable_rotation(&k, Some(100))).await;
    let old = h.encrypt(&k, b"one").await;
    h.ok(key_op(Operation::RotateKeyOnDemand, &k)).await;
    let sched = h.ok(schedule_deletion(&doomed, Some(9))).await;
    // A failed rotation commits nothing.
    h.fake.fail_next_op("create_key", 1, Fault::Unavailable);
    expect_err(
        h.run(key_op(Operation::RotateKeyOnDemand, &k)).await,
        "DependencyTimeoutException",
    );
    // A failed creation commits nothing; an HSM failing while it is in flight is a
    // retryable DependencyTimeoutException, not a 500 internal error (issue 12).
    h.fake.fail_next_op("create_key", 1, Fault::Retryable);
    expect_err(
        h.run(create_key(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
        ))
        .await,
        "DependencyTimeoutException",
    );
    let md = h.describe(&k).await.unwrap();

    let h = h.reopen();
    assert_eq!(h.describe(&k).await.unwrap(), md);
    assert_eq!(h.objects(&k).len(), 2);
    let mut ids = h.key_ids().await;
    ids.sort();
    let mut want = vec![k.clone(), doomed.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        h.aliases(None).await,
        vec![("alias/k".to_string(), k.clone())]
    );
    assert_eq!(
        h.ok(list_tags(&k, 50, None)).await["Tags"],
        serde_json::json!([{"TagKey": "t", "TagValue": "v"}])
    );
    let st = h.ok(key_op(Operation::GetKeyRotationStatus, &k)).await;
    assert_eq!(st["RotationPeriodInDays"], 100);
    assert_eq!(h.decrypt(&old).await.unwrap(), b"one");
    let d = h.describe(&doomed).await.unwrap();
    assert_eq!(d["KeyState"], "PendingDeletion");
    assert_eq!(d["DeletionDate"], sched["DeletionDate"]);
    assert_eq!(d["PendingDeletionWindowInDays"], 9);
    // The scheduled deletion still happens after the restart.
    h.clock.advance(days(9.0));
    h.kms.maintenance().await.unwrap();
    expect_err(h.describe(&doomed).await, "NotFoundException");
    let h = h.reopen();
    expect_err(h.describe(&doomed).await, "NotFoundException");
    assert_eq!(h.key_ids().await, vec![k]);
}

// ------------------------------------------------------------------ interleavings

/// ScheduleKeyDeletion and a concurrent EnableKey/DisableKey: in any order the answers must
/// agree with the final state. If the deletion was scheduled (success), the key must end
/// PendingDeletion: either the state change came first, or it came second and was refused
/// with KMSInvalidStateException. Polled with `join!` on one thread, the schedule commits
/// first while the state change, having checked the state before waiting for the writer
/// lock, then overwrites it.
#[tokio::test]
async fn a_concurrent_enable_or_disable_cannot_undo_a_scheduled_deletion() {
    let h = Harness::new();
    for op in [Operation::DisableKey, Operation::EnableKey] {
        let k = h.sym().await;
        if op == Operation::EnableKey {
            h.ok(key_op(Operation::DisableKey, &k)).await;
        }
        let (scheduled, changed) =
            tokio::join!(h.run(schedule_deletion(&k, Some(7))), h.run(key_op(op, &k)),);
        let scheduled = scheduled.expect("ScheduleKeyDeletion");
        let md = h.describe(&k).await.unwrap();
        assert_eq!(
            md["KeyState"], "PendingDeletion",
            "{op} answered {changed:?} after the deletion was scheduled ({scheduled}); \
             now {md}"
        );
        if let Err(e) = changed {
            assert_eq!(e.aws_type(), "KMSInvalidStateException", "{op}");
        }
        h.clock.advance(days(7.0));
        h.kms.maintenance().await.unwrap();
        expect_err(h.describe(&k).await, "NotFoundException");
    }
}

/// An audit sink keeping every record in memory.
#[derive(Default)]
struct Kept(parking_lot::Mutex<Vec<Value>>);

#[async_trait::async_trait]
impl crate::kms::audit::AuditSink for Kept {
    fn healthy(&self) -> bool {
        true
    }
    async fn append(&self, records: Vec<Vec<u8>>) -> Result<(), KmsError> {
        let mut kept = self.0.lock();
        for r in records {
            kept.push(serde_json::from_slice(&r).unwrap());
        }
        Ok(())
    }
}

impl Kept {
    /// The records named `name`.
    fn named(&self, name: &str) -> Vec<Value> {
        let kept = self.0.lock();
        kept.iter()
            .filter(|e| e["eventName"] == name)
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn background_reconciliation_destroys_an_orphan_only_after_the_grace_period() {
    let h = Harness::new();
    let trail = Arc::new(Kept::default());
    h.kms.set_auditor(Arc::new(crate::kms::audit::Auditor::new(
        trail.clone(),
        false,
        REGION,
        "111122223333",
    )));
    let kept = h.sym().await;
    let orphan = ObjectId::new("kms/00000000-0000-4000-8000-000000000000/1");
    // What an interrupted creation leaves: material no metadata refers to.
    crate::kms::vault::KeyVault::create_key(
        h.fake.as_ref(),
        &orphan,
        "left behind",
        crate::kms::vault::KeyKind::Aes,
    )
    .await
    .unwrap();
    let report = h.kms.reconcile_report().await;
    assert!(report
        .rows
        .iter()
        .all(|r| r.orphaned == vec![orphan.to_string()]));
    h.kms.maintenance().await.unwrap();
    assert!(h.fake.holds(0, &orphan), "not before the grace period");
    h.clock
        .advance(super::ORPHAN_GRACE - Duration::from_secs(1));
    h.kms.maintenance().await.unwrap();
    assert!(h.fake.holds(0, &orphan));
    assert!(trail.named("DeleteOrphanedKeyMaterial").is_empty());
    h.clock.advance(Duration::from_secs(1));
    h.kms.maintenance().await.unwrap();
    assert!(
        (0..3).all(|i| !h.fake.holds(i, &orphan)),
        "destroyed everywhere"
    );
    // Recorded once, as a service event.
    let recorded = trail.named("DeleteOrphanedKeyMaterial");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["eventType"], "AwsServiceEvent");
    assert_eq!(
        recorded[0]["serviceEventDetails"]["object"],
        orphan.to_string()
    );
    // (The fake vault names no HSM; tests/reconcile.rs checks the names on real tokens.)
    // Referenced material is never touched.
    h.ok(encrypt(&kept, b"still here")).await;
    assert!(h
        .kms
        .reconcile_report()
        .await
        .rows
        .iter()
        .all(|r| r.orphaned.is_empty()));
}
