//! Key policies and cross-account use over HTTP with real tokens (issue 13, parts 3, 4 and
//! 6): the default policy exactly as AWS writes it, `CreateKey` with `Policy`,
//! `PutKeyPolicy` / `GetKeyPolicy` / `ListKeyPolicies`, the validation and lockout errors,
//! explicit deny with conditions, `NotAction`, `aws:SourceIp`, `DryRun`, and a key of
//! account A shared with account B by its key policy (the seed's snapshot-sharing flow):
//! B uses it by key ARN and alias ARN, never by bare id or alias name, and loses it when
//! A takes the statement back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use serde_json::{json, Value};

const A: &str = "111122223333";
const B: &str = "444455556666";

#[track_caller]
fn expect(r: &Reply, status: u16, ty: &str) -> String {
    assert_eq!(
        (r.status, r.error_type()),
        (status, ty),
        "expected {status} {ty}, got {} {}",
        r.status,
        r.body
    );
    r.body["message"].as_str().unwrap_or_default().to_string()
}

fn key_arn(account: &str, id: &str) -> String {
    format!("arn:aws:kms:us-east-1:{account}:key/{id}")
}

/// The default policy plus `extra` statements.
fn policy_with(extra: Vec<Value>) -> String {
    let mut p: Value = serde_json::from_str(&hsm_kms::kms::policy::default_key_policy(A)).unwrap();
    p["Statement"].as_array_mut().unwrap().extend(extra);
    p.to_string()
}

/// Whether `c` may decrypt `blob` (else the refusal is AccessDeniedException).
async fn decrypts(c: &Client, blob: &Value, allowed: bool) {
    let r = c.call("Decrypt", json!({"CiphertextBlob": blob})).await;
    if allowed {
        assert_eq!(r.status, 200, "{}", r.body);
    } else {
        expect(&r, 400, "AccessDeniedException");
    }
}

async fn put(c: &Client, key: &str, policy: &str) -> Reply {
    c.call("PutKeyPolicy", json!({"KeyId": key, "Policy": policy}))
        .await
}

async fn encrypt(c: &Client, key: &str, ctx: Value) -> Reply {
    c.call(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"shared"), "EncryptionContext": ctx}),
    )
    .await
}

/// A second account's root client on the same service.
async fn second_account(s: &Service) -> Client {
    new_account(s, B).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_policies_read_write_validate_and_decide() {
    let s = service().await;
    let c = &s.client;
    let k = c.create_key(json!({})).await;

    // The default policy, exactly as AWS writes it; one policy name.
    let got = c.ok("GetKeyPolicy", json!({"KeyId": k})).await;
    assert_eq!(
        got["Policy"],
        hsm_kms::kms::policy::default_key_policy(A).as_str()
    );
    assert_eq!(got["PolicyName"], "default");
    let parsed: Value = serde_json::from_str(got["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["Id"], "key-default-1");
    assert_eq!(parsed["Statement"][0]["Sid"], "Enable IAM User Permissions");
    assert_eq!(
        c.ok("GetKeyPolicy", json!({"KeyId": k, "PolicyName": "default"}))
            .await["Policy"],
        got["Policy"]
    );
    expect(
        &c.call("GetKeyPolicy", json!({"KeyId": k, "PolicyName": "other"}))
            .await,
        400,
        "NotFoundException",
    );
    expect(
        &c.call("GetKeyPolicy", json!({"KeyId": k, "PolicyName": "no-dash"}))
            .await,
        400,
        "ValidationException",
    );
    let l = c.ok("ListKeyPolicies", json!({"KeyId": k})).await;
    assert_eq!(l, json!({"PolicyNames": ["default"], "Truncated": false}));

    // Refused documents change nothing, for PutKeyPolicy and CreateKey alike.
    let lockout = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{B}:root")},
        "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let huge = policy_with(vec![json!({"Sid": "x".repeat(33_000), "Effect": "Allow",
        "Principal": {"AWS": A}, "Action": "kms:Encrypt", "Resource": "*"})]);
    let bad: Vec<(String, &str)> = vec![
        ("{not json".into(), "not valid JSON"),
        (
            json!({"Version": "2012-10-17", "Statement": [], "Extra": 1}).to_string(),
            "unknown element",
        ),
        (
            policy_with(vec![json!({"Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::12:user/x"},
                "Action": "kms:*", "Resource": "*"})]),
            hsm_kms::kms::policy::INVALID_PRINCIPALS,
        ),
        (huge, "32768"),
        (
            policy_with(vec![json!({"Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{A}:user/nobody")},
                "Action": "kms:Encrypt", "Resource": "*"})]),
            hsm_kms::kms::policy::INVALID_PRINCIPALS,
        ),
        (lockout.clone(), hsm_kms::kms::policy::LOCKOUT),
    ];
    let keys_before = c.ok("ListKeys", json!({})).await["Keys"]
        .as_array()
        .unwrap()
        .len();
    for (doc, says) in &bad {
        let m = expect(
            &put(c, &k, doc).await,
            400,
            "MalformedPolicyDocumentException",
        );
        assert!(m.contains(says), "{says}: {m}");
        let m = expect(
            &c.call("CreateKey", json!({"Policy": doc})).await,
            400,
            "MalformedPolicyDocumentException",
        );
        assert!(m.contains(says), "{says}: {m}");
    }
    assert_eq!(
        c.ok("ListKeys", json!({})).await["Keys"]
            .as_array()
            .unwrap()
            .len(),
        keys_before,
        "no key made by a refused CreateKey"
    );
    assert_eq!(
        c.ok("GetKeyPolicy", json!({"KeyId": k})).await["Policy"],
        got["Policy"]
    );
    // Once the user exists, a policy naming it is accepted.
    new_user(c, "nobody", &[]).await;
    let names_nobody = policy_with(vec![json!({"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{A}:user/nobody")},
        "Action": "kms:Encrypt", "Resource": "*"})]);
    c.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": names_nobody}))
        .await;

    // An explicit deny with a condition on the encryption context wins over the allow.
    let deny_secret = policy_with(vec![json!({
        "Sid": "No secrets", "Effect": "Deny", "Principal": {"AWS": "*"},
        "Action": ["kms:Encrypt", "kms:GenerateDataKey*"], "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "secret"}}})]);
    c.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": deny_secret}))
        .await;
    assert_eq!(
        c.ok("GetKeyPolicy", json!({"KeyId": k})).await["Policy"],
        deny_secret.as_str(),
        "stored as given"
    );
    let m = expect(
        &encrypt(c, &k, json!({"purpose": "secret"})).await,
        400,
        "AccessDeniedException",
    );
    assert_eq!(
        m,
        format!(
            "User: arn:aws:iam::{A}:root is not authorized to perform: kms:Encrypt on resource: {} with an explicit deny in a resource-based policy",
            key_arn(A, &k)
        )
    );
    assert_eq!(
        encrypt(c, &k, json!({"purpose": "other"})).await.status,
        200
    );
    // DryRun answers whether the call would be authorized.
    let dry = |ctx: Value| json!({"KeyId": k, "Plaintext": b64(b"x"), "EncryptionContext": ctx, "DryRun": true});
    expect(
        &c.call("Encrypt", dry(json!({"purpose": "other"}))).await,
        412,
        "DryRunOperationException",
    );
    expect(
        &c.call("Encrypt", dry(json!({"purpose": "secret"}))).await,
        400,
        "AccessDeniedException",
    );

    // NotAction: everything but deletion; the lockout check passes (PutKeyPolicy allowed).
    let no_delete = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")},
        "NotAction": "kms:ScheduleKeyDeletion", "Resource": "*"}]})
    .to_string();
    c.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": no_delete}))
        .await;
    let m = expect(
        &c.call("ScheduleKeyDeletion", json!({"KeyId": k})).await,
        400,
        "AccessDeniedException",
    );
    assert!(
        m.ends_with("because no resource-based policy allows the kms:ScheduleKeyDeletion action"),
        "{m}"
    );
    assert_eq!(encrypt(c, &k, json!({})).await.status, 200);

    // aws:SourceIp: this client calls from 127.0.0.1.
    let from = |cidr: &str| {
        policy_with(vec![json!({"Effect": "Deny", "Principal": {"AWS": "*"},
            "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"NotIpAddress": {"aws:SourceIp": cidr}}})])
    };
    let blob = encrypt(c, &k, json!({})).await.body["CiphertextBlob"].clone();
    c.ok(
        "PutKeyPolicy",
        json!({"KeyId": k, "Policy": from("10.0.0.0/8")}),
    )
    .await;
    decrypts(c, &blob, false).await;
    c.ok(
        "PutKeyPolicy",
        json!({"KeyId": k, "Policy": from("127.0.0.0/8")}),
    )
    .await;
    decrypts(c, &blob, true).await;

    // kms:RequestAlias (the alias the request names) and kms:ResourceAliases (the aliases
    // the key has, whatever the request names).
    let by_alias = policy_with(vec![
        json!({"Sid": "Not through this alias", "Effect": "Deny", "Principal": {"AWS": "*"},
            "Action": "kms:Encrypt", "Resource": "*",
            "Condition": {"StringEquals": {"kms:RequestAlias": "alias/blocked"}}}),
        json!({"Sid": "Quarantined keys", "Effect": "Deny", "Principal": {"AWS": "*"},
            "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"ForAnyValue:StringLike": {"kms:ResourceAliases": "alias/quarantine-*"}}}),
    ]);
    c.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": by_alias}))
        .await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/blocked", "TargetKeyId": k}),
    )
    .await;
    expect(
        &encrypt(c, "alias/blocked", json!({})).await,
        400,
        "AccessDeniedException",
    );
    assert_eq!(encrypt(c, &k, json!({})).await.status, 200);
    decrypts(c, &blob, true).await;
    c.ok(
        "CreateAlias",
        json!({"AliasName": "alias/quarantine-1", "TargetKeyId": k}),
    )
    .await;
    decrypts(c, &blob, false).await;
    c.ok("DeleteAlias", json!({"AliasName": "alias/quarantine-1"}))
        .await;
    decrypts(c, &blob, true).await;

    // CreateKey with a policy; the lockout check bypassed locks the account out, as in AWS.
    let custom = c.ok("CreateKey", json!({"Policy": no_delete})).await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.ok("GetKeyPolicy", json!({"KeyId": custom})).await["Policy"],
        no_delete.as_str()
    );
    c.ok(
        "PutKeyPolicy",
        json!({"KeyId": k, "Policy": lockout, "BypassPolicyLockoutSafetyCheck": true}),
    )
    .await;
    for (op, body) in [
        ("DescribeKey", json!({"KeyId": k})),
        ("PutKeyPolicy", json!({"KeyId": k, "Policy": no_delete})),
        ("Encrypt", json!({"KeyId": k, "Plaintext": b64(b"x")})),
    ] {
        expect(&c.call(op, body).await, 400, "AccessDeniedException");
    }

    // Policies survive a restart (parsed again from the stored text).
    s.running.stop().await;
    let (running, c) = start_on(&s.tokens, std::sync::Arc::new(hsm_kms::clock::SystemClock)).await;
    assert_eq!(
        c.ok("GetKeyPolicy", json!({"KeyId": custom})).await["Policy"],
        no_delete.as_str()
    );
    expect(
        &c.call("ScheduleKeyDeletion", json!({"KeyId": custom}))
            .await,
        400,
        "AccessDeniedException",
    );
    expect(
        &c.call("DescribeKey", json!({"KeyId": k})).await,
        400,
        "AccessDeniedException",
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_shared_with_another_account_is_used_by_arn_only_and_unshared_at_once() {
    let s = service().await;
    let a = &s.client;
    let b = second_account(&s).await;
    let k = a.create_key(json!({"Description": "snapshots"})).await;
    let arn = key_arn(A, &k);
    a.ok(
        "CreateAlias",
        json!({"AliasName": "alias/shared", "TargetKeyId": k}),
    )
    .await;
    let alias_arn = format!("arn:aws:kms:us-east-1:{A}:alias/shared");
    let mine = b.create_key(json!({})).await;

    // Not shared yet: B is refused by the key policy (by ARN), and never reaches A's key by
    // bare id or alias name (those name B's own account).
    let m = expect(
        &encrypt(&b, &arn, json!({})).await,
        400,
        "AccessDeniedException",
    );
    assert_eq!(
        m,
        format!(
            "User: arn:aws:iam::{B}:root is not authorized to perform: kms:Encrypt on resource: {arn} because no resource-based policy allows the kms:Encrypt action"
        )
    );
    expect(
        &b.call("DescribeKey", json!({"KeyId": k})).await,
        400,
        "NotFoundException",
    );
    expect(
        &b.call("DescribeKey", json!({"KeyId": "alias/shared"}))
            .await,
        400,
        "NotFoundException",
    );

    // A shares it with account B (the statement AWS documents for cross-account use).
    let share = policy_with(vec![json!({
        "Sid": "Allow use of the key by account B", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{B}:root")},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                   "kms:GenerateDataKey*", "kms:DescribeKey"],
        "Resource": "*"})]);
    a.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": share}))
        .await;

    // A's snapshot, made under the shared key, is read and copied by B.
    let snap = encrypt(a, &k, json!({"snapshot": "snap-1"})).await.body["CiphertextBlob"].clone();
    let d = b
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": snap, "EncryptionContext": {"snapshot": "snap-1"}}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"shared");
    assert_eq!(d["KeyId"], arn.as_str());
    let copy = b
        .ok(
            "ReEncrypt",
            json!({"CiphertextBlob": snap, "SourceEncryptionContext": {"snapshot": "snap-1"},
                   "DestinationKeyId": mine,
                   "DestinationEncryptionContext": {"snapshot": "snap-1-copy"}}),
        )
        .await;
    assert_eq!(copy["SourceKeyId"], arn.as_str());
    assert_eq!(copy["KeyId"], key_arn(B, &mine));
    let back = b
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": copy["CiphertextBlob"],
                   "EncryptionContext": {"snapshot": "snap-1-copy"}}),
        )
        .await;
    assert_eq!(unb64(&back["Plaintext"]), b"shared");
    // By key ARN and by alias ARN; DescribeKey and GenerateDataKey too.
    assert_eq!(encrypt(&b, &arn, json!({})).await.status, 200);
    let via_alias = encrypt(&b, &alias_arn, json!({})).await;
    assert_eq!(via_alias.status, 200, "{}", via_alias.body);
    assert_eq!(via_alias.body["KeyId"], arn.as_str());
    assert_eq!(
        b.ok("DescribeKey", json!({"KeyId": arn})).await["KeyMetadata"]["Description"],
        "snapshots"
    );
    b.ok(
        "GenerateDataKey",
        json!({"KeyId": alias_arn, "KeySpec": "AES_256"}),
    )
    .await;
    // Still never by bare id or alias name; never in B's ListKeys; not B's to manage.
    expect(&encrypt(&b, &k, json!({})).await, 400, "NotFoundException");
    expect(
        &encrypt(&b, "alias/shared", json!({})).await,
        400,
        "NotFoundException",
    );
    let listed = b.ok("ListKeys", json!({})).await;
    let ids: Vec<&str> = listed["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    for (op, body) in [
        ("GetKeyPolicy", json!({"KeyId": arn})),
        ("DisableKey", json!({"KeyId": arn})),
        ("ScheduleKeyDeletion", json!({"KeyId": arn})),
        ("PutKeyPolicy", json!({"KeyId": arn, "Policy": "{}"})),
    ] {
        expect(&b.call(op, body).await, 400, "NotFoundException");
    }
    // An action the statement does not name is refused.
    expect(
        &b.call("GetKeyRotationStatus", json!({"KeyId": arn})).await,
        400,
        "AccessDeniedException",
    );

    // A takes the share back: B is refused on its very next call.
    a.ok(
        "PutKeyPolicy",
        json!({"KeyId": k, "Policy": hsm_kms::kms::policy::default_key_policy(A)}),
    )
    .await;
    expect(
        &b.call(
            "Decrypt",
            json!({"CiphertextBlob": snap, "EncryptionContext": {"snapshot": "snap-1"}}),
        )
        .await,
        400,
        "AccessDeniedException",
    );
    expect(
        &encrypt(&b, &alias_arn, json!({})).await,
        400,
        "AccessDeniedException",
    );
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_give_another_account_constrained_use_and_only_as_wide_as_their_parent() {
    let s = service().await;
    let a = &s.client;
    let b = second_account(&s).await;
    let k = a.create_key(json!({})).await;
    let arn = key_arn(A, &k);
    let b_root = format!("arn:aws:iam::{B}:root");
    let ctx = json!({"dept": "finance"});

    // No policy statement for B: refused until a grant says otherwise.
    expect(
        &encrypt(&b, &arn, ctx.clone()).await,
        400,
        "AccessDeniedException",
    );
    let g = a
        .ok(
            "CreateGrant",
            json!({"KeyId": k, "GranteePrincipal": b_root,
                   "Operations": ["Encrypt", "Decrypt", "CreateGrant"],
                   "Constraints": {"EncryptionContextSubset": ctx}}),
        )
        .await;
    let token = g["GrantToken"].as_str().unwrap().to_string();
    // Usable at once with its token, within its constraint only.
    let e = b
        .call(
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"g"), "EncryptionContext": {"dept": "finance", "x": "1"},
                   "GrantTokens": [token]}),
        )
        .await;
    assert_eq!(e.status, 200, "{}", e.body);
    let blob = e.body["CiphertextBlob"].clone();
    expect(
        &encrypt(&b, &arn, json!({"dept": "hr"})).await,
        400,
        "AccessDeniedException",
    );
    expect(
        &encrypt(&b, &arn, json!({})).await,
        400,
        "AccessDeniedException",
    );
    let d = b
        .ok(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"dept": "finance", "x": "1"}}),
        )
        .await;
    assert_eq!(unb64(&d["Plaintext"]), b"g");
    // Operations the grant does not name are refused.
    expect(
        &b.call(
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": ctx}),
        )
        .await,
        400,
        "AccessDeniedException",
    );
    // Through its CreateGrant, B may pass on no more than it has.
    let wider = b
        .call(
            "CreateGrant",
            json!({"KeyId": arn, "GranteePrincipal": b_root, "Operations": ["Encrypt", "GenerateDataKey"],
                   "Constraints": {"EncryptionContextSubset": ctx}}),
        )
        .await;
    expect(&wider, 400, "AccessDeniedException");
    let looser = b
        .call(
            "CreateGrant",
            json!({"KeyId": arn, "GranteePrincipal": b_root, "Operations": ["Decrypt"]}),
        )
        .await;
    expect(&looser, 400, "AccessDeniedException");
    let child = b
        .call(
            "CreateGrant",
            json!({"KeyId": arn, "GranteePrincipal": b_root, "Operations": ["Decrypt"],
                   "Constraints": {"EncryptionContextEquals": {"dept": "finance", "x": "1"}}}),
        )
        .await;
    assert_eq!(child.status, 200, "{}", child.body);
    // Revoked by A: B is refused on its next call (the child grant still allows its Decrypt).
    a.ok("RevokeGrant", json!({"KeyId": k, "GrantId": g["GrantId"]}))
        .await;
    expect(
        &encrypt(&b, &arn, json!({"dept": "finance"})).await,
        400,
        "AccessDeniedException",
    );
    assert_eq!(
        b.call(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"dept": "finance", "x": "1"}}),
        )
        .await
        .status,
        200
    );
    // ListRetirableGrants is for principals of the caller's own account.
    expect(
        &b.call(
            "ListRetirableGrants",
            json!({"RetiringPrincipal": format!("arn:aws:iam::{A}:root")}),
        )
        .await,
        400,
        "AccessDeniedException",
    );
    s.running.stop().await;
}
