//! Who may do what to which key, over HTTP with real tokens (issue 13, part 4): an
//! allow/deny matrix of IAM users, a role session and another account's principals ×
//! actions × conditions, each row checked for its status, `__type` and, for refusals, AWS's
//! message naming the policy kind that refused. The rules it pins down:
//!
//! * same account: the key policy's account statement delegates to identity policies; a
//!   statement naming the principal needs no identity policy; an explicit deny anywhere wins;
//! * a role session has its role's policies and is matched by the role's ARN;
//! * another account: the key policy must allow it and its own identity policies too (its
//!   root needs none);
//! * calls on no key (`CreateKey`, `ListKeys`) are identity policy only; alias operations
//!   need the action on the alias too; `DryRun` answers as the call would be authorized.
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

fn policy(statements: Value) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

fn key_arn(account: &str, id: &str) -> String {
    format!("arn:aws:kms:us-east-1:{account}:key/{id}")
}

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    /// Refused; no policy of this kind allows it.
    NoIdentity,
    NoResource,
    /// Refused by an explicit deny in a policy of this kind.
    DenyIdentity,
    DenyResource,
    /// DryRun of an allowed call.
    DryRun,
    /// The key is not found (bare id or alias name of another account's key).
    NotFound,
}

async fn check(who: &str, c: &Client, op: &str, body: Value, resource: &str, want: Want) {
    let r = c.call(op, body.clone()).await;
    let m = r.body["message"].as_str().unwrap_or_default().to_string();
    let row = format!("{who} {op} {body} → {} {}", r.status, r.body);
    let action = format!("kms:{op}");
    let arn = &c.cred.principal_arn;
    let refused = |tail: String| {
        assert_eq!(
            (r.status, r.error_type()),
            (400, "AccessDeniedException"),
            "{row}"
        );
        assert_eq!(
            m,
            format!(
                "User: {arn} is not authorized to perform: {action} on resource: {resource} {tail}"
            ),
            "{row}"
        );
    };
    match want {
        Want::Ok => assert_eq!(r.status, 200, "{row}"),
        Want::DryRun => assert_eq!(
            (r.status, r.error_type()),
            (412, "DryRunOperationException"),
            "{row}"
        ),
        Want::NotFound => assert_eq!(
            (r.status, r.error_type()),
            (400, "NotFoundException"),
            "{row}"
        ),
        Want::NoIdentity => refused(format!(
            "because no identity-based policy allows the {action} action"
        )),
        Want::NoResource => refused(format!(
            "because no resource-based policy allows the {action} action"
        )),
        Want::DenyIdentity => refused("with an explicit deny in an identity-based policy".into()),
        Want::DenyResource => refused("with an explicit deny in a resource-based policy".into()),
    }
}

fn enc(key: &str, ctx: Value) -> Value {
    json!({"KeyId": key, "Plaintext": b64(b"m"), "EncryptionContext": ctx})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what_to_which_key() {
    use Want::*;
    let s = service().await;
    let root = &s.client;

    // Principals of account A.
    let alice = new_user(
        root,
        "alice",
        &[&policy(json!([{"Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:team": "${aws:username}"}}},
            {"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"}]))],
    )
    .await;
    let bob = new_user(root, "bob", &[]).await;
    let carol = new_user(
        root,
        "carol",
        &[
            &policy(json!([{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}])),
            &policy(json!([{"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}])),
        ],
    )
    .await;
    let erin = new_user(
        root,
        "erin",
        &[&policy(
            json!([{"Effect": "Allow", "Action": ["kms:CreateAlias", "kms:DeleteAlias"],
            "Resource": "arn:aws:kms:*:*:key/*"}]),
        )],
    )
    .await;
    let frank = new_user(
        root,
        "frank",
        &[&policy(
            json!([{"Effect": "Allow", "Action": ["kms:CreateAlias", "kms:DeleteAlias"],
            "Resource": ["arn:aws:kms:*:*:key/*", "arn:aws:kms:*:*:alias/frank-*"]}]),
        )],
    )
    .await;
    root.query_ok(
        "iam",
        "CreateRole",
        &[
            ("RoleName", "ops"),
            (
                "AssumeRolePolicyDocument",
                &policy(json!([{"Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{A}:user/alice")},
                    "Action": "sts:AssumeRole"}])),
            ),
        ],
    )
    .await;
    root.query_ok(
        "iam",
        "PutRolePolicy",
        &[
            ("RoleName", "ops"),
            ("PolicyName", "read"),
            (
                "PolicyDocument",
                &policy(json!([{"Effect": "Allow",
                    "Action": ["kms:ListKeys", "kms:DescribeKey", "kms:CreateKey"], "Resource": "*"}])),
            ),
        ],
    )
    .await;
    let assumed = alice
        .query_ok(
            "sts",
            "AssumeRole",
            &[
                ("RoleArn", &format!("arn:aws:iam::{A}:role/ops")),
                ("RoleSessionName", "night"),
            ],
        )
        .await;
    let ops = root.with_credentials(
        hsm_kms::auth::Credential::new(
            assumed.value("AccessKeyId"),
            assumed.value("SecretAccessKey"),
            A,
            assumed.value("Arn"),
        ),
        Some(assumed.value("SessionToken")),
    );

    // Keys: k1 the default policy (delegates to IAM); k2 also names bob directly for
    // Encrypt and denies Encrypt to everyone with ctx purpose=secret; k3 names the ops
    // role for Encrypt.
    let k1 = root.create_key(json!({})).await;
    let default = hsm_kms::kms::policy::default_key_policy(A);
    let with = |extra: Value| {
        let mut p: Value = serde_json::from_str(&default).unwrap();
        p["Statement"]
            .as_array_mut()
            .unwrap()
            .extend(extra.as_array().unwrap().clone());
        p.to_string()
    };
    let k2 = root
        .ok(
            "CreateKey",
            json!({"Policy": with(json!([
                {"Sid": "bob", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/bob")},
                 "Action": "kms:Encrypt", "Resource": "*"},
                {"Sid": "no secrets", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt",
                 "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "secret"}}}]))}),
        )
        .await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let k3 = root
        .ok(
            "CreateKey",
            json!({"Policy": with(json!([
                {"Sid": "ops", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:role/ops")},
                 "Action": "kms:Encrypt", "Resource": "*",
                 "Condition": {"StringEquals": {"aws:PrincipalArn": format!("arn:aws:iam::{A}:role/ops")}}}]))}),
        )
        .await["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let (a1, a2, a3) = (key_arn(A, &k1), key_arn(A, &k2), key_arn(A, &k3));
    let blob1 =
        root.ok("Encrypt", enc(&k1, json!({"team": "alice"}))).await["CiphertextBlob"].clone();

    let alias_erin = format!("arn:aws:kms:us-east-1:{A}:alias/erin-1");
    let alias_other = format!("arn:aws:kms:us-east-1:{A}:alias/other");
    let rows: Vec<(&str, &Client, &str, Value, &str, Want)> = vec![
        // alice: identity policy with a condition using a policy variable.
        (
            "alice",
            &alice,
            "Encrypt",
            enc(&k1, json!({"team": "alice"})),
            &a1,
            Ok,
        ),
        (
            "alice",
            &alice,
            "Encrypt",
            enc(&k1, json!({"team": "bob"})),
            &a1,
            NoIdentity,
        ),
        (
            "alice",
            &alice,
            "Encrypt",
            enc(&k1, json!({})),
            &a1,
            NoIdentity,
        ),
        (
            "alice",
            &alice,
            "Decrypt",
            json!({"CiphertextBlob": blob1, "EncryptionContext": {"team": "alice"}}),
            &a1,
            Ok,
        ),
        (
            "alice",
            &alice,
            "DescribeKey",
            json!({"KeyId": k1}),
            &a1,
            Ok,
        ),
        (
            "alice",
            &alice,
            "DisableKey",
            json!({"KeyId": k1}),
            &a1,
            NoIdentity,
        ),
        ("alice", &alice, "CreateKey", json!({}), "*", NoIdentity),
        ("alice", &alice, "ListKeys", json!({}), "*", NoIdentity),
        // bob: no identity policy; k2's policy names him for Encrypt only.
        ("bob", &bob, "Encrypt", enc(&k1, json!({})), &a1, NoIdentity),
        ("bob", &bob, "Encrypt", enc(&k2, json!({})), &a2, Ok),
        (
            "bob",
            &bob,
            "Encrypt",
            enc(&k2, json!({"purpose": "secret"})),
            &a2,
            DenyResource,
        ),
        (
            "bob",
            &bob,
            "DescribeKey",
            json!({"KeyId": k2}),
            &a2,
            NoIdentity,
        ),
        (
            "bob",
            &bob,
            "Encrypt",
            json!({"KeyId": k2, "Plaintext": b64(b"m"), "DryRun": true}),
            &a2,
            DryRun,
        ),
        (
            "bob",
            &bob,
            "Encrypt",
            json!({"KeyId": k1, "Plaintext": b64(b"m"), "DryRun": true}),
            &a1,
            NoIdentity,
        ),
        // carol: allow all, but an explicit deny on Decrypt.
        ("carol", &carol, "Encrypt", enc(&k1, json!({})), &a1, Ok),
        (
            "carol",
            &carol,
            "Decrypt",
            json!({"CiphertextBlob": blob1, "EncryptionContext": {"team": "alice"}}),
            &a1,
            DenyIdentity,
        ),
        (
            "carol",
            &carol,
            "ScheduleKeyDeletion",
            json!({"KeyId": k3, "PendingWindowInDays": 7}),
            &a3,
            Ok,
        ),
        (
            "carol",
            &carol,
            "CancelKeyDeletion",
            json!({"KeyId": k3}),
            &a3,
            Ok,
        ),
        ("carol", &carol, "EnableKey", json!({"KeyId": k3}), &a3, Ok),
        // The role session: the role's policies; matched by the role's ARN in k3's policy.
        ("ops", &ops, "ListKeys", json!({}), "*", Ok),
        ("ops", &ops, "DescribeKey", json!({"KeyId": k1}), &a1, Ok),
        ("ops", &ops, "Encrypt", enc(&k1, json!({})), &a1, NoIdentity),
        ("ops", &ops, "Encrypt", enc(&k3, json!({})), &a3, Ok),
        // Aliases: the action on the alias ARN (identity) and on the key.
        (
            "erin",
            &erin,
            "CreateAlias",
            json!({"AliasName": "alias/erin-1", "TargetKeyId": k1}),
            &alias_erin,
            NoIdentity,
        ),
        (
            "frank",
            &frank,
            "CreateAlias",
            json!({"AliasName": "alias/frank-1", "TargetKeyId": k1}),
            "",
            Ok,
        ),
        (
            "frank",
            &frank,
            "CreateAlias",
            json!({"AliasName": "alias/other", "TargetKeyId": k1}),
            &alias_other,
            NoIdentity,
        ),
        (
            "frank",
            &frank,
            "DeleteAlias",
            json!({"AliasName": "alias/frank-1"}),
            "",
            Ok,
        ),
    ];
    for (who, c, op, body, resource, want) in rows {
        check(who, c, op, body, resource, want).await;
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_principals_need_the_key_policy_and_their_own_policies() {
    use Want::*;
    let s = service().await;
    let root = &s.client;
    let b_root = new_account(&s, B).await;
    let dave = new_user(&b_root, "dave", &[]).await;
    let k = root.create_key(json!({})).await;
    let arn = key_arn(A, &k);
    // Allowed by an identity policy of B for A's key only.
    let gina = new_user(
        &b_root,
        "gina",
        &[&policy(json!([{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": arn}]))],
    )
    .await;
    let rows_before: Vec<(&str, &Client, Value, Want)> = vec![
        ("B root", &b_root, enc(&arn, json!({})), NoResource),
        ("gina", &gina, enc(&arn, json!({})), NoResource),
        ("gina", &gina, enc(&k, json!({})), NotFound),
    ];
    for (who, c, body, want) in rows_before {
        check(who, c, "Encrypt", body, &arn, want).await;
    }
    // A shares with account B (its root: delegation to B's IAM) and names dave directly.
    let mut p: Value = serde_json::from_str(&hsm_kms::kms::policy::default_key_policy(A)).unwrap();
    p["Statement"].as_array_mut().unwrap().push(json!({
        "Sid": "B", "Effect": "Allow",
        "Principal": {"AWS": [format!("arn:aws:iam::{B}:root"), format!("arn:aws:iam::{B}:user/dave")]},
        "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*",
        "Condition": {"StringEquals": {"kms:CallerAccount": B}}}));
    root.ok("PutKeyPolicy", json!({"KeyId": k, "Policy": p.to_string()}))
        .await;
    let rows: Vec<(&str, &Client, &str, Value, Want)> = vec![
        ("B root", &b_root, "Encrypt", enc(&arn, json!({})), Ok),
        ("gina", &gina, "Encrypt", enc(&arn, json!({})), Ok),
        ("gina", &gina, "DescribeKey", json!({"KeyId": arn}), Ok),
        // Named directly by A's key policy, but B's IAM allows dave nothing.
        ("dave", &dave, "Encrypt", enc(&arn, json!({})), NoIdentity),
        // Not in A's statement for B.
        (
            "gina",
            &gina,
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
            NoResource,
        ),
        (
            "B root",
            &b_root,
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
            NoResource,
        ),
    ];
    for (who, c, op, body, want) in rows {
        check(who, c, op, body, &arn, want).await;
    }
    s.running.stop().await;
}
