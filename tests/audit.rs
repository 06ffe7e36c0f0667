//! The audit trail over HTTP with real tokens: a CloudTrail record with the right fields for
//! every class of outcome (success, denied, invalid, bad signature, unknown operation) and
//! for IAM and STS calls; nothing the caller must keep secret in it; a cross-account call
//! recorded for both accounts; calls refused while the trail cannot be written
//! (fail-closed) and answered when configured fail-open; `hsm-kms audit verify` on a
//! real trail, intact and edited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hsm_kms::app::{self, AuditOptions, ServiceConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const A: &str = "111122223333";

/// The records of request `id`.
fn records_of(dir: &Path, id: &str) -> Vec<Value> {
    trail(dir)
        .1
        .into_iter()
        .filter(|e| e["requestID"] == id)
        .collect()
}

/// The one record of request `id`.
fn record_of(dir: &Path, id: &str) -> Value {
    let mut r = records_of(dir, id);
    assert_eq!(r.len(), 1, "records of {id}: {r:?}");
    r.remove(0)
}

/// The last record named `name`.
fn last_named(dir: &Path, name: &str) -> Value {
    trail(dir)
        .1
        .into_iter()
        .rev()
        .find(|e| e["eventName"] == name)
        .unwrap_or_else(|| panic!("no {name} record"))
}

fn policy(statements: Value) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// The fields every record has, with these values.
fn common_fields(e: &Value, source: &str, name: &str, recipient: &str) {
    assert_eq!(e["eventVersion"], "1.08", "{e}");
    assert_eq!(e["eventSource"], source, "{e}");
    assert_eq!(e["eventName"], name, "{e}");
    assert_eq!(e["awsRegion"], "us-east-1", "{e}");
    assert_eq!(e["sourceIPAddress"], "127.0.0.1", "{e}");
    assert_eq!(e["eventType"], "AwsApiCall");
    assert_eq!(e["managementEvent"], true);
    assert_eq!(e["eventCategory"], "Management");
    assert_eq!(e["recipientAccountId"], recipient, "{e}");
    let t = e["eventTime"].as_str().unwrap();
    assert!(
        t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{t}"
    );
    uuid::Uuid::parse_str(e["eventID"].as_str().unwrap()).unwrap();
    assert!(e.get("requestParameters").is_some() && e.get("responseElements").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_recorded_as_cloudtrail_shows_it_and_no_secret_is() {
    let svc = service().await;
    let dir = svc.tokens.dir.path().join("audit");
    let root = &svc.client;

    // CreateKey: keyMetadata in responseElements, the policy and tags in the parameters.
    let created = root
        .call(
            "CreateKey",
            json!({"Description": "audited", "Tags": [{"TagKey": "team", "TagValue": "x"}]}),
        )
        .await;
    assert_eq!(created.status, 200);
    let k = created.body["KeyMetadata"]["KeyId"].as_str().unwrap();
    let arn = created.body["KeyMetadata"]["Arn"].as_str().unwrap();
    let e = record_of(&dir, created.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "CreateKey", A);
    assert_eq!(e["readOnly"], false);
    assert_eq!(e["responseElements"]["keyMetadata"]["keyId"], k);
    assert_eq!(e["responseElements"]["keyMetadata"]["keyState"], "Enabled");
    assert_eq!(
        e["requestParameters"],
        json!({"description": "audited", "tags": [{"tagKey": "team", "tagValue": "x"}]})
    );
    assert_eq!(e["userIdentity"]["type"], "Root");
    assert_eq!(e["userIdentity"]["principalId"], A);
    assert_eq!(
        e["userIdentity"]["accessKeyId"],
        root.cred.access_key_id.as_str()
    );
    assert!(e.get("errorCode").is_none());

    // Encrypt, a success: the parameters CloudTrail shows, the key as resource, no
    // plaintext and no blob.
    let plaintext = b"PLAINTEXT-MARKER-7f3a9c";
    let r = root
        .call(
            "Encrypt",
            json!({"KeyId": k, "Plaintext": b64(plaintext),
                   "EncryptionContext": {"Department": "Engineering"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let blob = r.body["CiphertextBlob"].as_str().unwrap().to_string();
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "Encrypt", A);
    assert_eq!(
        e["requestParameters"],
        json!({"keyId": k, "encryptionContext": {"Department": "Engineering"}})
    );
    assert_eq!(e["responseElements"], Value::Null);
    assert_eq!(e["readOnly"], true);
    assert_eq!(
        e["resources"],
        json!([{"accountId": A, "type": "AWS::KMS::Key", "ARN": arn}])
    );

    // A grant, and Decrypt with its token: neither the token nor the blob is recorded.
    let g = root
        .ok(
            "CreateGrant",
            json!({"KeyId": k, "GranteePrincipal": format!("arn:aws:iam::{A}:root"),
                   "Operations": ["Decrypt"]}),
        )
        .await;
    let token = g["GrantToken"].as_str().unwrap().to_string();
    let e = last_named(&dir, "CreateGrant");
    assert_eq!(e["responseElements"], json!({"grantId": g["GrantId"]}));
    assert_eq!(e["requestParameters"]["operations"], json!(["Decrypt"]));
    let r = root
        .call(
            "Decrypt",
            json!({"CiphertextBlob": blob, "GrantTokens": [token],
                   "EncryptionContext": {"Department": "Engineering"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(
        e["requestParameters"],
        json!({"encryptionContext": {"Department": "Engineering"}})
    );
    assert_eq!(e["resources"][0]["ARN"], arn);

    // Denied: a user without policies.
    let bob = new_user(root, "bob", &[]).await;
    let r = bob
        .call("Encrypt", json!({"KeyId": k, "Plaintext": b64(plaintext)}))
        .await;
    assert_eq!(r.error_type(), "AccessDeniedException");
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "Encrypt", A);
    assert_eq!(e["errorCode"], "AccessDeniedException");
    assert!(e["errorMessage"].as_str().unwrap().contains("bob"), "{e}");
    assert_eq!(e["userIdentity"]["type"], "IAMUser");
    assert_eq!(e["userIdentity"]["userName"], "bob");
    assert_eq!(
        e["userIdentity"]["arn"],
        format!("arn:aws:iam::{A}:user/bob")
    );
    assert!(e["userIdentity"]["principalId"]
        .as_str()
        .unwrap()
        .starts_with("AIDA"));
    assert_eq!(e["resources"][0]["ARN"], arn);

    // Invalid: no plaintext.
    let r = root.call("Encrypt", json!({"KeyId": k})).await;
    assert_eq!(r.error_type(), "ValidationException");
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(e["errorCode"], "ValidationException");
    assert_eq!(e["requestParameters"], json!({"keyId": k}));

    // A signature that does not match: who it claimed to be, no identity.
    let r = root
        .send_raw(
            Some("ListKeys"),
            b"{}".to_vec(),
            time::OffsetDateTime::now_utc(),
            "not-the-secret",
            true,
        )
        .await;
    assert_eq!(r.status, 400);
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "ListKeys", A);
    assert_eq!(e["errorCode"], r.error_type());
    assert_eq!(
        e["userIdentity"],
        json!({"type": "Unknown", "accessKeyId": root.cred.access_key_id.as_str()})
    );

    // An unknown operation.
    let r = root.call("NoSuchOperation", json!({})).await;
    assert_eq!(r.error_type(), "UnknownOperationException");
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(e["eventName"], "NoSuchOperation");
    assert_eq!(e["errorCode"], "UnknownOperationException");

    // IAM: the parameters, never the new secret.
    root.query_ok("iam", "CreateUser", &[("UserName", "carol")])
        .await;
    let e = last_named(&dir, "CreateUser");
    common_fields(&e, "iam.amazonaws.com", "CreateUser", A);
    assert_eq!(e["requestParameters"], json!({"userName": "carol"}));
    let key = root
        .query_ok("iam", "CreateAccessKey", &[("UserName", "carol")])
        .await;
    let carol_secret = key.value("SecretAccessKey");
    // Its record names the new key (as CloudTrail does), never the secret.
    let e = last_named(&dir, "CreateAccessKey");
    let made = &e["responseElements"]["accessKey"];
    assert_eq!(
        made["accessKeyId"],
        key.value("AccessKeyId").as_str(),
        "{e}"
    );
    assert_eq!(made["userName"], "carol", "{e}");
    assert_eq!(made["status"], "Active", "{e}");
    let date = made["createDate"].as_str().unwrap();
    assert!(
        date.ends_with(" AM") || date.ends_with(" PM"),
        "createDate as CloudTrail writes it: {date}"
    );
    assert_eq!(made.as_object().unwrap().len(), 4, "{e}");
    let r = root
        .query("iam", "GetUser", &[("UserName", "nobody")])
        .await;
    assert_eq!(r.code(), "NoSuchEntity");
    let e = last_named(&dir, "GetUser");
    assert_eq!(e["errorCode"], "NoSuchEntity");
    assert_eq!(e["readOnly"], true);

    // STS: GetCallerIdentity, and a role session's identity.
    root.query_ok("sts", "GetCallerIdentity", &[]).await;
    let e = last_named(&dir, "GetCallerIdentity");
    common_fields(&e, "sts.amazonaws.com", "GetCallerIdentity", A);
    root.query_ok(
        "iam",
        "CreateRole",
        &[
            ("RoleName", "ops"),
            (
                "AssumeRolePolicyDocument",
                &policy(json!([{"Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{A}:user/bob")},
                    "Action": "sts:AssumeRole"}])),
            ),
        ],
    )
    .await;
    let assumed = bob
        .query_ok(
            "sts",
            "AssumeRole",
            &[
                ("RoleArn", &format!("arn:aws:iam::{A}:role/ops")),
                ("RoleSessionName", "night"),
            ],
        )
        .await;
    let e = last_named(&dir, "AssumeRole");
    common_fields(&e, "sts.amazonaws.com", "AssumeRole", A);
    assert_eq!(
        e["requestParameters"],
        json!({"roleArn": format!("arn:aws:iam::{A}:role/ops"), "roleSessionName": "night"})
    );
    let session_token = assumed.value("SessionToken");
    let session_secret = assumed.value("SecretAccessKey");
    // The session's access key id and role session, never its secret or token.
    assert_eq!(
        e["responseElements"]["credentials"]["accessKeyId"],
        assumed.value("AccessKeyId").as_str(),
        "{e}"
    );
    assert_eq!(
        e["responseElements"]["credentials"]
            .as_object()
            .unwrap()
            .len(),
        2,
        "{e}"
    );
    assert_eq!(
        e["responseElements"]["assumedRoleUser"]["arn"],
        format!("arn:aws:sts::{A}:assumed-role/ops/night"),
        "{e}"
    );
    let ops = root.with_credentials(
        hsm_kms::auth::Credential::new(
            assumed.value("AccessKeyId"),
            session_secret.clone(),
            A,
            assumed.value("Arn"),
        ),
        Some(session_token.clone()),
    );
    let r = ops.call("ListKeys", json!({})).await;
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(e["userIdentity"]["type"], "AssumedRole");
    assert_eq!(
        e["userIdentity"]["arn"],
        format!("arn:aws:sts::{A}:assumed-role/ops/night")
    );
    assert!(e["userIdentity"]["principalId"]
        .as_str()
        .unwrap()
        .ends_with(":night"));
    let issuer = &e["userIdentity"]["sessionContext"]["sessionIssuer"];
    assert_eq!(issuer["type"], "Role");
    assert_eq!(issuer["arn"], format!("arn:aws:iam::{A}:role/ops"));
    assert_eq!(issuer["userName"], "ops");

    // Nothing secret anywhere in the trail.
    let (text, events) = trail(&dir);
    for (what, secret) in [
        ("plaintext (base64)", b64(plaintext)),
        ("plaintext", String::from_utf8(plaintext.to_vec()).unwrap()),
        ("ciphertext blob", blob.clone()),
        ("grant token", token.clone()),
        ("root's secret", root.cred.secret_access_key.to_string()),
        ("bob's secret", bob.cred.secret_access_key.to_string()),
        ("carol's secret", carol_secret.clone()),
        ("session token", session_token.clone()),
        ("session secret", session_secret.clone()),
    ] {
        assert!(!text.contains(&secret), "the trail holds the {what}");
    }
    // Every call made above (17) is there once, and the chain is intact.
    assert_eq!(events.len(), 17);
    let report = hsm_kms::audit::verify(&dir, None).unwrap();
    assert_eq!(report.finding, None);
    assert_eq!(report.records as usize, events.len());
    svc.running.stop().await;

    // `hsm-kms audit verify`: intact, then with one line edited.
    let verify = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
            .args(["audit", "verify", "--dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = verify(&dir);
    assert!(out.status.success(), "{out:?}");
    let (_, file) = hsm_kms::audit::trail_files(&dir).unwrap().remove(0);
    let text = hsm_kms::audit::records_text(&file).unwrap();
    let edited = text.replacen(
        "\"Department\":\"Engineering\"",
        "\"Department\":\"Sales\"",
        1,
    );
    assert_ne!(edited, text);
    let line = text
        .lines()
        .position(|l| l.contains("\"Department\":\"Engineering\""))
        .unwrap()
        + 1;
    std::fs::write(&file, edited).unwrap();
    let out = verify(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}:{line}: altered", file.display())),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_account_call_is_recorded_for_both_accounts() {
    const B: &str = "444455556666";
    let svc = service().await;
    let dir = svc.tokens.dir.path().join("audit");
    let root = &svc.client;
    let other = new_account(&svc, B).await;
    let mut p: Value = serde_json::from_str(&hsm_kms::kms::policy::default_key_policy(A)).unwrap();
    p["Statement"].as_array_mut().unwrap().push(json!({
        "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{B}:root")},
        "Action": "kms:Encrypt", "Resource": "*"}));
    let created = root.ok("CreateKey", json!({"Policy": p.to_string()})).await;
    let arn = created["KeyMetadata"]["Arn"].as_str().unwrap();
    let r = other
        .call("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let records = records_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(records.len(), 2, "{records:?}");
    let mut recipients: Vec<&str> = records
        .iter()
        .map(|e| e["recipientAccountId"].as_str().unwrap())
        .collect();
    recipients.sort();
    assert_eq!(recipients, [A, B]);
    assert_ne!(records[0]["eventID"], records[1]["eventID"]);
    assert!(records[0]["sharedEventID"].is_string());
    assert_eq!(records[0]["sharedEventID"], records[1]["sharedEventID"]);
    for e in &records {
        common_fields(
            e,
            "kms.amazonaws.com",
            "Encrypt",
            e["recipientAccountId"].as_str().unwrap(),
        );
        assert_eq!(e["userIdentity"]["accountId"], B);
        assert_eq!(e["resources"][0]["accountId"], A);
    }
    // A call within one account has one record, without sharedEventID.
    let r = root
        .call("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")}))
        .await;
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert!(e.get("sharedEventID").is_none());
}

async fn start_audited(t: &Tokens, audit: AuditOptions) -> (app::Running, Client) {
    let running = app::start(config(t, audit)).await.expect("service starts");
    let client = Client::new(
        format!("http://{}", running.addr),
        running.credentials[0].clone(),
    );
    (running, client)
}

fn config(t: &Tokens, audit: AuditOptions) -> ServiceConfig {
    ServiceConfig {
        nodes: t.hsms.iter().map(|h| h.node_config().unwrap()).collect(),
        cluster: fast_options(),
        database: t.dir.path().join("metadata.sqlite"),
        listen: "127.0.0.1:0".into(),
        region: "us-east-1".into(),
        account_id: A.into(),
        max_body_bytes: 64 * 1024,
        clock: std::sync::Arc::new(hsm_kms::clock::SystemClock),
        maintenance_interval: Duration::from_secs(3600),
        audit,
        metrics_public: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_signed_by_the_hsms_cover_the_trail_and_a_forged_one_is_caught() {
    let t = tokens(&["a", "b"]);
    let dir = t.dir.path().join("audit");
    let audit = AuditOptions {
        digest_every_records: 3,
        ..AuditOptions::in_dir(dir.clone())
    };
    let (running, c) = start_audited(&t, audit.clone()).await;
    // The digest key is in both HSMs, like every key.
    for (hsm, ok, objects) in
        hsm_kms::kms::vault::KeyVault::inventory(running.cluster.as_ref()).await
    {
        assert!(ok, "{hsm}");
        assert!(
            objects
                .iter()
                .any(|o| o.as_str() == hsm_kms::kms::digest::DIGEST_KEY_ID),
            "{hsm} lacks the digest key"
        );
    }
    for _ in 0..7 {
        c.ok("ListKeys", json!({})).await;
    }
    // Clean shutdown: a closing digest covers every record.
    running.stop().await;
    let r = app::verify_audit(config(&t, audit.clone()), None)
        .await
        .unwrap();
    assert_eq!(r.finding, None);
    assert!(r.macs_checked);
    assert!(r.digests.len() >= 2, "{}", r.digests.len());
    assert_eq!(r.uncovered, 0);

    // The closing digest's MAC replaced by one made without the HSMs' key.
    let (_, file) = hsm_kms::audit::trail_files(&dir).unwrap().remove(0);
    let text = hsm_kms::audit::records_text(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let last = lines.len() - 1;
    let mut v: Value = serde_json::from_str(&lines[last]).unwrap();
    let sig = v["digest"]["signature"].as_str().unwrap().to_string();
    assert_eq!(sig.len(), 44, "a 32-byte HMAC");
    let forged = b64(&[7u8; 32]);
    lines[last] = lines[last].replace(&sig, &forged);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    v["digest"]["signature"] = forged.into();
    let r = app::verify_audit(config(&t, audit), None).await.unwrap();
    let f = r.finding.expect("a forged digest is caught");
    assert_eq!(f.line, last + 1, "{f}");
    assert!(f.problem.starts_with("forged"), "{f}");
    // Without the HSMs only the chain and the ranges are checked: it passes.
    let r = hsm_kms::audit::verify(&dir, None).unwrap();
    assert_eq!(r.finding, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_refused_while_the_trail_cannot_be_written_unless_fail_open() {
    let t = tokens(&["a", "b"]);
    // A regular file where the folder should be: not even root can write through it.
    let blocked = t.dir.path().join("audit-blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();

    let (running, c) = start_audited(&t, AuditOptions::in_dir(blocked.clone())).await;
    let r = c.call("CreateKey", json!({})).await;
    assert_eq!(
        (r.status, r.error_type()),
        (500, "KMSInternalException"),
        "{}",
        r.body
    );
    assert_eq!(
        c.call("ListKeys", json!({})).await.error_type(),
        "KMSInternalException"
    );
    let q = c.query("sts", "GetCallerIdentity", &[]).await;
    assert_eq!((q.status, q.code().as_str()), (500, "ServiceFailure"));
    running.stop().await;

    // Nothing was done: with a usable trail, no key exists.
    let good = t.dir.path().join("audit");
    let (running, c) = start_audited(&t, AuditOptions::in_dir(good.clone())).await;
    let keys = c.ok("ListKeys", json!({})).await;
    assert_eq!(keys["Keys"], json!([]), "a refused CreateKey made a key");
    running.stop().await;

    // Fail-open: answered anyway.
    let (running, c) = start_audited(
        &t,
        AuditOptions {
            fail_open: true,
            ..AuditOptions::in_dir(blocked)
        },
    )
    .await;
    let r = c.call("CreateKey", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    c.query_ok("sts", "GetCallerIdentity", &[]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_trail_records_nothing_and_refuses_nothing() {
    let t = tokens(&["a", "b"]);
    let dir = t.dir.path().join("audit-off");
    let (running, c) = start_audited(
        &t,
        AuditOptions {
            enabled: false,
            ..AuditOptions::in_dir(dir.clone())
        },
    )
    .await;
    let k = c.create_key(json!({})).await;
    c.ok("Encrypt", json!({"KeyId": k, "Plaintext": b64(b"x")}))
        .await;
    assert!(trail(&dir).1.is_empty(), "a disabled trail holds records");
    running.stop().await;
}

/// The trail's records of `name`.
fn named(dir: &Path, name: &str) -> Vec<Value> {
    trail(dir)
        .1
        .into_iter()
        .filter(|e| e["eventName"] == name)
        .collect()
}

fn hsms_of(e: &Value) -> Vec<String> {
    let mut v: Vec<String> = e["additionalEventData"]["hsms"]
        .as_array()
        .unwrap_or_else(|| panic!("no additionalEventData.hsms: {e}"))
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// A service event as CloudTrail writes KMS's own: no caller, no request id.
fn assert_service_event(e: &Value, account: &str) {
    assert_eq!(e["eventType"], "AwsServiceEvent", "{e}");
    assert_eq!(
        e["userIdentity"],
        json!({"accountId": account, "invokedBy": "AWS Internal"}),
        "{e}"
    );
    assert_eq!(e["sourceIPAddress"], "AWS Internal");
    assert_eq!(e["eventSource"], "kms.amazonaws.com");
    assert_eq!(e["recipientAccountId"], account);
    assert!(e.get("requestID").is_none(), "{e}");
    assert!(e["eventID"].as_str().is_some_and(|s| s.len() == 36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hsms_that_served_and_what_the_service_did_by_itself_are_recorded() {
    let clock = hsm_kms::clock::ManualClock::new(time::macros::datetime!(2026-01-01 00:00:00 UTC));
    let s = service_with(std::sync::Arc::new(clock.clone())).await;
    let dir = s.tokens.dir.path().join("audit");
    let c = &s.client;
    let both = vec!["a".to_string(), "b".to_string()];

    // A key is made in one HSM and copied into the other: both served CreateKey.
    let r = c.call("CreateKey", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let arn = format!("arn:aws:kms:us-east-1:{A}:key/{id}");
    let created = record_of(&dir, r.request_id.as_deref().unwrap());
    assert_eq!(hsms_of(&created), both);
    assert_eq!(
        created["resources"][0]["ARN"],
        arn.as_str(),
        "the key it made"
    );
    // An Encrypt is answered by one of them.
    let r = c
        .call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")}))
        .await;
    let served = hsms_of(&record_of(&dir, r.request_id.as_deref().unwrap()));
    assert!(served == ["a"] || served == ["b"], "{served:?}");
    // A call that needs no HSM names none.
    let r = c.call("ListKeys", json!({})).await;
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    assert!(e.get("additionalEventData").is_none(), "{e}");

    // Automatic rotation when its date comes: a RotateKey service event.
    c.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 90}),
    )
    .await;
    clock.advance(Duration::from_secs(91 * 86_400));
    s.running.kms.maintenance().await.unwrap();
    let rot = named(&dir, "RotateKey");
    assert_eq!(rot.len(), 1, "{rot:?}");
    let e = &rot[0];
    assert_service_event(e, A);
    assert_eq!(e["resources"][0]["ARN"], arn.as_str());
    assert_eq!(e["serviceEventDetails"]["rotationType"], "AUTOMATIC");
    assert_eq!(e["serviceEventDetails"]["keyOrigin"], "AWS_KMS");
    let (prev, cur) = (
        e["serviceEventDetails"]["previousKeyMaterialId"]
            .as_str()
            .unwrap(),
        e["serviceEventDetails"]["currentKeyMaterialId"]
            .as_str()
            .unwrap(),
    );
    assert!(prev.len() == 64 && cur.len() == 64 && prev != cur, "{e}");
    assert_eq!(
        hsms_of(e),
        both,
        "the new material was made in one and copied to the other"
    );
    // On demand too (beside the RotateKeyOnDemand call's own record).
    c.ok("RotateKeyOnDemand", json!({"KeyId": id})).await;
    let rot = named(&dir, "RotateKey");
    assert_eq!(rot.len(), 2);
    assert_eq!(rot[1]["serviceEventDetails"]["rotationType"], "ON_DEMAND");
    assert_eq!(rot[1]["serviceEventDetails"]["previousKeyMaterialId"], cur);
    let on_demand = named(&dir, "RotateKeyOnDemand");
    assert_eq!(hsms_of(&on_demand[0]), both);

    // The end of a waiting period: a DeleteKey service event naming every HSM that
    // destroyed the material.
    c.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    )
    .await;
    clock.advance(Duration::from_secs(8 * 86_400));
    s.running.kms.maintenance().await.unwrap();
    let del: Vec<Value> = named(&dir, "DeleteKey");
    assert_eq!(del.len(), 1, "{del:?}");
    assert_service_event(&del[0], A);
    assert_eq!(del[0]["resources"][0]["ARN"], arn.as_str());
    assert_eq!(del[0]["serviceEventDetails"]["keyId"], id.as_str());
    assert_eq!(
        del[0]["serviceEventDetails"]["keyMaterialIds"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(hsms_of(&del[0]), both);

    // An HSM's host process killed: its state changes (down, then serving again once the
    // service has replaced the host) are recorded.
    let pid = s.running.cluster.host_pid("a").expect("a host process");
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut changes = Vec::new();
    let back = eventually(30, || {
        changes = named(&dir, "HsmStateChange");
        changes
            .iter()
            .any(|e| e["serviceEventDetails"]["state"] == "Healthy")
    })
    .await;
    assert!(back, "no HsmStateChange back to Healthy: {changes:?}");
    let first = &changes[0];
    assert_service_event(first, A);
    assert_eq!(first["serviceEventDetails"]["hsm"], "a");
    let was = first["serviceEventDetails"]["previousState"]
        .as_str()
        .unwrap();
    assert!(was == "Healthy" || was == "Suspect", "{first}");
    assert_ne!(first["serviceEventDetails"]["state"], "Healthy");
    assert_eq!(hsms_of(first), ["a"]);
    assert!(changes
        .iter()
        .all(|e| e["serviceEventDetails"]["hsm"] == "a"));

    let report = hsm_kms::audit::verify(&dir, None).unwrap();
    assert_eq!(report.finding, None);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_calls_before_they_run_until_space_returns() {
    let t = tokens(&["a", "b"]);
    let Some(disk) = SmallDisk::mount(&t.dir.path().join("small"), "3m") else {
        eprintln!(
            "SKIPPED a_full_disk_refuses_calls_before_they_run_until_space_returns: \
             cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN, as CI runs)"
        );
        return;
    };
    let dir = disk.0.join("audit");
    let (running, c) = start_audited(&t, AuditOptions::in_dir(dir.clone())).await;
    let k = c.create_key(json!({})).await;
    // The disk fills up (another program's file): records still go into the space the
    // trail keeps ready, then calls are refused before they run.
    let filler = fill(&disk.0);
    // Large records (the description is recorded twice: request and response) so the
    // space kept ready runs out within a few dozen calls.
    let answered = create_keys_until_refused(&c).await;
    // Each refusal is itself recorded (in the space still ready): the write that took it
    // must not let a call in before the trail has found room again. Callers in parallel
    // (as under load) arrive while the writer is between those two steps.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = c.clone();
        let k = k.clone();
        callers.spawn(async move {
            let mut answered = Vec::new();
            for _ in 0..25 {
                let r = c
                    .call("Encrypt", json!({"KeyId": k, "Plaintext": b64(b"x")}))
                    .await;
                if r.error_type() != "KMSInternalException" {
                    answered.push(r.status);
                }
            }
            answered
        });
    }
    let answered_while_full = callers.join_all().await.concat();
    assert!(
        answered_while_full.is_empty(),
        "{} of 200 calls were not refused on a full disk (statuses {:?})",
        answered_while_full.len(),
        answered_while_full
    );
    // Space returns: calls are answered again (the trail's probe finds room).
    std::fs::remove_file(filler).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if c.call("ListKeys", json!({})).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "calls still refused once the disk has room");
    // Refused before running: the refused CreateKey made no key.
    let keys = c.ok("ListKeys", json!({"Limit": 1000})).await;
    assert_eq!(
        keys["Keys"].as_array().unwrap().len(),
        answered + 1,
        "a CreateKey refused for want of room made a key"
    );
    c.ok("Encrypt", json!({"KeyId": k, "Plaintext": b64(b"x")}))
        .await;
    // Every answered call is in the trail.
    let created = named(&dir, "CreateKey")
        .into_iter()
        .filter(|e| e.get("errorCode").is_none())
        .count();
    assert_eq!(created, answered + 1);
    println!("FULL-DISK | {answered} CreateKey answered after the disk filled, then refused");
    running.stop().await;
    let r = hsm_kms::audit::verify(&dir, None).unwrap();
    assert_eq!(r.finding, None);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_records_show_the_parameters_never_the_token_or_the_material() {
    use rsa::pkcs8::DecodePublicKey;
    let svc = service().await;
    let dir = svc.tokens.dir.path().join("audit");
    let c = &svc.client;
    let k = c.ok("CreateKey", json!({"Origin": "EXTERNAL"})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .call(
            "GetParametersForImport",
            json!({"KeyId": k, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.body["ImportToken"].as_str().unwrap().to_string();
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "GetParametersForImport", A);
    assert_eq!(
        e["requestParameters"],
        json!({"keyId": k, "wrappingAlgorithm": "RSAES_OAEP_SHA_1", "wrappingKeySpec": "RSA_2048"})
    );
    assert_eq!(e["responseElements"], Value::Null);
    let public = rsa::RsaPublicKey::from_public_key_der(&unb64(&r.body["PublicKey"])).unwrap();
    let material: [u8; 32] = rand::random();
    let wrapped = b64(&public
        .encrypt(
            &mut rand::thread_rng(),
            rsa::Oaep::new::<sha1::Sha1>(),
            &material,
        )
        .unwrap());
    let r = c
        .call(
            "ImportKeyMaterial",
            json!({"KeyId": k, "ImportToken": token, "EncryptedKeyMaterial": wrapped,
                   "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "ImportKeyMaterial", A);
    assert_eq!(e["readOnly"], false);
    assert_eq!(
        e["requestParameters"],
        json!({"keyId": k, "expirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    );
    assert_eq!(
        e["responseElements"],
        json!({"keyId": r.body["KeyId"], "keyMaterialId": r.body["KeyMaterialId"]})
    );
    let r = c
        .call("DeleteImportedKeyMaterial", json!({"KeyId": k}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = record_of(&dir, r.request_id.as_deref().unwrap());
    common_fields(&e, "kms.amazonaws.com", "DeleteImportedKeyMaterial", A);
    let (text, _) = trail(&dir);
    assert!(!text.contains(&token), "the import token is in the trail");
    assert!(
        !text.contains(&wrapped),
        "the wrapped material is in the trail"
    );
    svc.running.stop().await;
}
