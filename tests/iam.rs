//! IAM and STS at the KMS endpoint (issue 13, part 2), over real HTTP and real tokens:
//! users, access keys (2 per user; Inactive refused at once, Active again accepted,
//! deleted refused), inline policies deciding who may call IAM, roles, STS AssumeRole by
//! trust policy (a user named directly; the account root delegating to identity
//! policies), session credentials working with KMS and GetCallerIdentity, missing or
//! wrong session tokens, expiry on a moved clock, sessions surviving a restart, and the
//! legacy `hsm-kms-admin` migration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::auth::Credential;
use serde_json::json;
use std::sync::Arc;

const ACCT: &str = "111122223333";

const ALLOW_ALL_IAM: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:*","Resource":"*"}]}"#;

/// Assert a Query reply's HTTP status and IAM/STS error code.
#[track_caller]
fn expect_code(r: &QueryReply, status: u16, code: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{}", r.body);
}

/// IAM `PutUserPolicy` / `PutRolePolicy` (`kind` "User" or "Role"), which must succeed.
async fn put_policy(c: &Client, kind: &str, name: &str, policy_name: &str, document: &str) {
    c.query_ok(
        "iam",
        &format!("Put{kind}Policy"),
        &[
            (&format!("{kind}Name"), name),
            ("PolicyName", policy_name),
            ("PolicyDocument", document),
        ],
    )
    .await;
}

fn user_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCT}:user/{name}")
}

/// A client signing as the user's new access key (from a CreateAccessKey reply).
fn client_of(root: &Client, created: &QueryReply, arn: &str) -> Client {
    root.with_credentials(
        Credential::new(
            created.value("AccessKeyId"),
            created.value("SecretAccessKey"),
            ACCT,
            arn,
        ),
        None,
    )
}

/// A client signing with the temporary credentials of an AssumeRole reply.
fn session_client(root: &Client, assumed: &QueryReply) -> Client {
    root.with_credentials(
        Credential::new(
            assumed.value("AccessKeyId"),
            assumed.value("SecretAccessKey"),
            ACCT,
            assumed.value("Arn"),
        ),
        Some(assumed.value("SessionToken")),
    )
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_access_keys_and_inline_policies() {
    let svc = service().await;
    let root = &svc.client;

    // Unknown action or version; missing and invalid parameters.
    let r = root.query("iam", "ListGroups", &[]).await;
    expect_code(&r, 400, "InvalidAction");
    assert!(
        r.body.contains("https://iam.amazonaws.com/doc/2010-05-08/"),
        "{}",
        r.body
    );
    let r = root.query("iam", "CreateUser", &[]).await;
    expect_code(&r, 400, "ValidationError");
    assert_eq!(
        r.value("Message"),
        "1 validation error detected: Value null at 'userName' failed to satisfy constraint: Member must not be null"
    );
    for bad in ["a b", "", &"x".repeat(65)] {
        let r = root.query("iam", "CreateUser", &[("UserName", bad)]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "ValidationError"),
            "{bad}"
        );
    }
    let r = root
        .query(
            "iam",
            "CreateUser",
            &[("UserName", "x"), ("Path", "nopath")],
        )
        .await;
    expect_code(&r, 400, "ValidationError");

    // CreateUser, its exact shape; names unique without regard to case.
    let r = root
        .query_ok(
            "iam",
            "CreateUser",
            &[("UserName", "alice"), ("Path", "/team/")],
        )
        .await;
    assert!(r.body.starts_with(
        "<CreateUserResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\n  <CreateUserResult>\n    <User>\n      <Path>/team/</Path>\n      <UserName>alice</UserName>"
    ), "{}", r.body);
    assert!(
        r.body.contains("<ResponseMetadata>\n    <RequestId>"),
        "{}",
        r.body
    );
    let alice_arn = format!("arn:aws:iam::{ACCT}:user/team/alice");
    assert_eq!(r.value("Arn"), alice_arn);
    let alice_id = r.value("UserId");
    assert!(
        alice_id.starts_with("AIDA") && alice_id.len() == 21,
        "{alice_id}"
    );
    assert!(r.value("CreateDate").ends_with('Z'));
    let r = root
        .query("iam", "CreateUser", &[("UserName", "ALICE")])
        .await;
    expect_code(&r, 409, "EntityAlreadyExists");
    assert_eq!(r.value("Message"), "User with name ALICE already exists.");
    for name in ["bob", "carol"] {
        root.query_ok("iam", "CreateUser", &[("UserName", name)])
            .await;
    }

    // GetUser: by name, unknown, and the root's own shape.
    let r = root
        .query_ok("iam", "GetUser", &[("UserName", "alice")])
        .await;
    assert_eq!(r.value("UserId"), alice_id);
    let r = root
        .query("iam", "GetUser", &[("UserName", "nobody")])
        .await;
    expect_code(&r, 404, "NoSuchEntity");
    assert_eq!(
        r.value("Message"),
        "The user with name nobody cannot be found."
    );
    let r = root.query_ok("iam", "GetUser", &[]).await;
    assert_eq!(r.value("UserId"), ACCT);
    assert_eq!(r.value("Arn"), format!("arn:aws:iam::{ACCT}:root"));
    assert!(r.get("UserName").is_none(), "{}", r.body);

    // ListUsers: pages of one, then PathPrefix.
    let mut names = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut params = vec![("MaxItems", "1")];
        if let Some(m) = &marker {
            params.push(("Marker", m.as_str()));
        }
        let r = root.query_ok("iam", "ListUsers", &params).await;
        names.extend(xml_values(&r.body, "UserName"));
        if r.value("IsTruncated") == "false" {
            assert!(r.get("Marker").is_none());
            break;
        }
        marker = Some(r.value("Marker"));
    }
    assert_eq!(names, ["alice", "bob", "carol"]);
    let r = root
        .query_ok("iam", "ListUsers", &[("PathPrefix", "/team/")])
        .await;
    assert_eq!(xml_values(&r.body, "UserName"), ["alice"]);
    let r = root
        .query("iam", "ListUsers", &[("Marker", "forged")])
        .await;
    expect_code(&r, 400, "InvalidInput");
    let r = root.query("iam", "ListUsers", &[("MaxItems", "0")]).await;
    expect_code(&r, 400, "ValidationError");

    // Access keys: two per user; the secret once; the key authenticates at once.
    let k1 = root
        .query_ok("iam", "CreateAccessKey", &[("UserName", "alice")])
        .await;
    assert!(k1.value("AccessKeyId").starts_with("AKIA"));
    assert_eq!(k1.value("SecretAccessKey").len(), 40);
    assert_eq!(k1.value("Status"), "Active");
    let k2 = root
        .query_ok("iam", "CreateAccessKey", &[("UserName", "alice")])
        .await;
    let r = root
        .query("iam", "CreateAccessKey", &[("UserName", "alice")])
        .await;
    expect_code(&r, 409, "LimitExceeded");
    assert_eq!(
        r.value("Message"),
        "Cannot exceed quota for AccessKeysPerUser: 2"
    );
    let r = root
        .query("iam", "CreateAccessKey", &[("UserName", "nobody")])
        .await;
    expect_code(&r, 404, "NoSuchEntity");
    let alice = client_of(root, &k1, &alice_arn);
    let who = alice.query_ok("sts", "GetCallerIdentity", &[]).await;
    assert_eq!(who.value("Arn"), alice_arn);
    assert_eq!(who.value("UserId"), alice_id);
    let r = root
        .query_ok("iam", "ListAccessKeys", &[("UserName", "alice")])
        .await;
    let mut listed = xml_values(&r.body, "AccessKeyId");
    listed.sort();
    let mut want = vec![k1.value("AccessKeyId"), k2.value("AccessKeyId")];
    want.sort();
    assert_eq!(listed, want);
    assert!(r.get("SecretAccessKey").is_none(), "secrets are shown once");

    // Without a policy alice may do nothing in IAM (AWS's message).
    let r = alice
        .query("iam", "CreateUser", &[("UserName", "dave")])
        .await;
    expect_code(&r, 403, "AccessDenied");
    assert_eq!(
        r.value("Message"),
        format!(
            "User: {alice_arn} is not authorized to perform: iam:CreateUser on resource: {} \
             because no identity-based policy allows the iam:CreateUser action",
            user_arn("dave")
        )
    );
    // Inline policies: malformed refused; put, get (URL-encoded), list.
    let r = root
        .query(
            "iam",
            "PutUserPolicy",
            &[
                ("UserName", "alice"),
                ("PolicyName", "p"),
                ("PolicyDocument", "{\"Statement\": 1}"),
            ],
        )
        .await;
    expect_code(&r, 400, "MalformedPolicyDocument");
    put_policy(root, "User", "alice", "iam-admin", ALLOW_ALL_IAM).await;
    let r = root
        .query_ok(
            "iam",
            "GetUserPolicy",
            &[("UserName", "alice"), ("PolicyName", "iam-admin")],
        )
        .await;
    assert!(
        r.value("PolicyDocument").starts_with("%7B%22Version%22"),
        "{}",
        r.body
    );
    assert_eq!(decode(&r.value("PolicyDocument")), ALLOW_ALL_IAM);
    let r = root
        .query(
            "iam",
            "GetUserPolicy",
            &[("UserName", "alice"), ("PolicyName", "none")],
        )
        .await;
    expect_code(&r, 404, "NoSuchEntity");
    let r = root
        .query_ok("iam", "ListUserPolicies", &[("UserName", "alice")])
        .await;
    assert_eq!(xml_values(&r.body, "member"), ["iam-admin"]);
    // Now she may; an explicit deny wins, with its own message.
    alice
        .query_ok("iam", "CreateUser", &[("UserName", "dave")])
        .await;
    root.query_ok(
        "iam",
        "PutUserPolicy",
        &[
            ("UserName", "alice"),
            ("PolicyName", "no-delete"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iam:DeleteUser","Resource":"*"}]}"#,
            ),
        ],
    )
    .await;
    let r = alice
        .query("iam", "DeleteUser", &[("UserName", "dave")])
        .await;
    expect_code(&r, 403, "AccessDenied");
    assert!(
        r.value("Message")
            .ends_with("with an explicit deny in an identity-based policy"),
        "{}",
        r.body
    );
    root.query_ok(
        "iam",
        "DeleteUserPolicy",
        &[("UserName", "alice"), ("PolicyName", "no-delete")],
    )
    .await;
    alice
        .query_ok("iam", "DeleteUser", &[("UserName", "dave")])
        .await;
    // No one reaches another account: names resolve in the caller's own account only.
    let r = alice.query("iam", "GetUser", &[("UserName", "dave")]).await;
    expect_code(&r, 404, "NoSuchEntity");

    // Access key lifecycle: Inactive is refused at once (IAM and KMS), Active works again.
    let akid = k1.value("AccessKeyId");
    let r = root
        .query(
            "iam",
            "UpdateAccessKey",
            &[
                ("UserName", "alice"),
                ("AccessKeyId", &akid),
                ("Status", "Off"),
            ],
        )
        .await;
    expect_code(&r, 400, "ValidationError");
    root.query_ok(
        "iam",
        "UpdateAccessKey",
        &[
            ("UserName", "alice"),
            ("AccessKeyId", &akid),
            ("Status", "Inactive"),
        ],
    )
    .await;
    let r = alice.query("sts", "GetCallerIdentity", &[]).await;
    expect_code(&r, 403, "InvalidClientTokenId");
    let r = alice.call("ListKeys", json!({})).await;
    assert_eq!(
        (r.status, r.error_type()),
        (400, "UnrecognizedClientException")
    );
    let r = root
        .query_ok("iam", "ListAccessKeys", &[("UserName", "alice")])
        .await;
    assert!(
        r.body.contains(&format!(
            "<AccessKeyId>{akid}</AccessKeyId>\n        <Status>Inactive</Status>"
        )),
        "{}",
        r.body
    );
    // ... and stays refused after the periodic reload from the store.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        alice.query("sts", "GetCallerIdentity", &[]).await.status,
        403
    );
    root.query_ok(
        "iam",
        "UpdateAccessKey",
        &[
            ("UserName", "alice"),
            ("AccessKeyId", &akid),
            ("Status", "Active"),
        ],
    )
    .await;
    alice.query_ok("sts", "GetCallerIdentity", &[]).await;
    // Another user's key is not found through this user.
    let r = root
        .query(
            "iam",
            "DeleteAccessKey",
            &[("UserName", "bob"), ("AccessKeyId", &akid)],
        )
        .await;
    expect_code(&r, 404, "NoSuchEntity");

    // DeleteUser: access keys first, then policies.
    let r = root
        .query("iam", "DeleteUser", &[("UserName", "alice")])
        .await;
    expect_code(&r, 409, "DeleteConflict");
    assert_eq!(
        r.value("Message"),
        "Cannot delete entity, must delete access keys first."
    );
    // alice deletes her own key (no UserName: the caller) — refused from then on.
    alice
        .query_ok("iam", "DeleteAccessKey", &[("AccessKeyId", &akid)])
        .await;
    assert_eq!(
        alice.query("sts", "GetCallerIdentity", &[]).await.code(),
        "InvalidClientTokenId"
    );
    root.query_ok(
        "iam",
        "DeleteAccessKey",
        &[
            ("UserName", "alice"),
            ("AccessKeyId", &k2.value("AccessKeyId")),
        ],
    )
    .await;
    let r = root
        .query("iam", "DeleteUser", &[("UserName", "alice")])
        .await;
    assert_eq!(
        r.value("Message"),
        "Cannot delete entity, must delete policies first."
    );
    root.query_ok(
        "iam",
        "DeleteUserPolicy",
        &[("UserName", "alice"), ("PolicyName", "iam-admin")],
    )
    .await;
    let r = root
        .query_ok("iam", "DeleteUser", &[("UserName", "alice")])
        .await;
    assert!(r.body.starts_with("<DeleteUserResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\n  <ResponseMetadata>"), "{}", r.body);
    assert_eq!(
        root.query("iam", "GetUser", &[("UserName", "alice")])
            .await
            .status,
        404
    );

    // The root may make access keys for itself (two at most: it has one already).
    let rk = root.query_ok("iam", "CreateAccessKey", &[]).await;
    assert!(rk.get("UserName").is_none());
    let root2 = client_of(root, &rk, &format!("arn:aws:iam::{ACCT}:root"));
    assert_eq!(
        root2
            .query_ok("sts", "GetCallerIdentity", &[])
            .await
            .value("UserId"),
        ACCT
    );
    let r = root.query("iam", "CreateAccessKey", &[]).await;
    assert_eq!(r.code(), "LimitExceeded");
    svc.running.stop().await;
}

/// A trust policy allowing `principal` to assume the role.
fn trust(principal: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{principal}"}},"Action":"sts:AssumeRole"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_assume_role_by_trust_policy() {
    let svc = service().await;
    let root = &svc.client;
    for name in ["alice", "bob"] {
        root.query_ok("iam", "CreateUser", &[("UserName", name)])
            .await;
    }
    let alice = client_of(
        root,
        &root
            .query_ok("iam", "CreateAccessKey", &[("UserName", "alice")])
            .await,
        &user_arn("alice"),
    );
    let bob = client_of(
        root,
        &root
            .query_ok("iam", "CreateAccessKey", &[("UserName", "bob")])
            .await,
        &user_arn("bob"),
    );

    // CreateRole validation.
    let t = trust(&user_arn("alice"));
    for (extra, code) in [
        (("MaxSessionDuration", "3599"), "ValidationError"),
        (("MaxSessionDuration", "43201"), "ValidationError"),
        (("Path", "bad"), "ValidationError"),
    ] {
        let r = root
            .query(
                "iam",
                "CreateRole",
                &[("RoleName", "r"), ("AssumeRolePolicyDocument", &t), extra],
            )
            .await;
        assert_eq!((r.status, r.code().as_str()), (400, code), "{extra:?}");
    }
    let r = root
        .query(
            "iam",
            "CreateRole",
            &[("RoleName", "r"), ("AssumeRolePolicyDocument", "{}")],
        )
        .await;
    expect_code(&r, 400, "MalformedPolicyDocument");
    // Roles: alice named directly; "acct" delegating to the account's identity policies.
    let r = root
        .query_ok(
            "iam",
            "CreateRole",
            &[
                ("RoleName", "app"),
                ("Path", "/svc/"),
                ("AssumeRolePolicyDocument", &t),
                ("Description", "the app"),
                ("MaxSessionDuration", "7200"),
            ],
        )
        .await;
    let app_arn = format!("arn:aws:iam::{ACCT}:role/svc/app");
    assert_eq!(r.value("Arn"), app_arn);
    let role_id = r.value("RoleId");
    assert!(role_id.starts_with("AROA") && role_id.len() == 21);
    assert_eq!(decode(&r.value("AssumeRolePolicyDocument")), t);
    assert_eq!(r.value("MaxSessionDuration"), "7200");
    let r = root
        .query(
            "iam",
            "CreateRole",
            &[("RoleName", "APP"), ("AssumeRolePolicyDocument", &t)],
        )
        .await;
    expect_code(&r, 409, "EntityAlreadyExists");
    let r = root
        .query_ok("iam", "GetRole", &[("RoleName", "app")])
        .await;
    assert_eq!(
        (r.value("RoleId"), r.value("Description")),
        (role_id.clone(), "the app".into())
    );
    assert_eq!(
        root.query("iam", "GetRole", &[("RoleName", "none")])
            .await
            .status,
        404
    );
    root.query_ok(
        "iam",
        "CreateRole",
        &[
            ("RoleName", "acct"),
            (
                "AssumeRolePolicyDocument",
                &trust(&format!("arn:aws:iam::{ACCT}:root")),
            ),
        ],
    )
    .await;

    // Role inline policies.
    let kms_all = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#;
    put_policy(root, "Role", "app", "kms", kms_all).await;
    let r = root
        .query_ok(
            "iam",
            "GetRolePolicy",
            &[("RoleName", "app"), ("PolicyName", "kms")],
        )
        .await;
    assert_eq!(
        (r.value("RoleName"), decode(&r.value("PolicyDocument"))),
        ("app".into(), kms_all.into())
    );
    let r = root
        .query_ok("iam", "ListRolePolicies", &[("RoleName", "app")])
        .await;
    assert_eq!(xml_values(&r.body, "member"), ["kms"]);
    let r = root
        .query(
            "iam",
            "GetRolePolicy",
            &[("RoleName", "app"), ("PolicyName", "x")],
        )
        .await;
    assert_eq!(
        (r.status, r.value("Message").as_str()),
        (404, "The role policy with name x cannot be found.")
    );

    // AssumeRole: the root may not; bob is not trusted; alice is.
    let assume = |session: &str| {
        vec![
            ("RoleArn", app_arn.clone()),
            ("RoleSessionName", session.to_string()),
        ]
    };
    let call = |c: &Client, extra: &[(&str, &str)], session: &str| {
        let mut p: Vec<(String, String)> = assume(session)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let c = c.clone();
        async move {
            let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            c.query("sts", "AssumeRole", &refs).await
        }
    };
    let r = call(root, &[], "s0").await;
    assert_eq!(
        (r.status, r.code().as_str(), r.value("Message").as_str()),
        (
            403,
            "AccessDenied",
            "Roles may not be assumed by root accounts."
        )
    );
    let r = call(&bob, &[], "s0").await;
    expect_code(&r, 403, "AccessDenied");
    assert_eq!(
        r.value("Message"),
        format!(
            "User: {} is not authorized to perform: sts:AssumeRole on resource: {app_arn}",
            user_arn("bob")
        )
    );
    for (extra, code) in [
        (vec![("DurationSeconds", "899")], "ValidationError"),
        (vec![("DurationSeconds", "7201")], "ValidationError"),
        (vec![("Policy", "{}")], "ValidationError"),
    ] {
        let r = call(&alice, &extra, "s0").await;
        assert_eq!((r.status, r.code().as_str()), (400, code), "{extra:?}");
    }
    assert_eq!(
        call(&alice, &[], "x").await.code(),
        "ValidationError",
        "session names are 2+"
    );
    let r = call(&alice, &[("DurationSeconds", "7200")], "s1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <AssumeRoleResult>"), "{}", r.body);
    assert_eq!(r.value("AssumedRoleId"), format!("{role_id}:s1"));
    assert_eq!(
        r.value("Arn"),
        format!("arn:aws:sts::{ACCT}:assumed-role/app/s1")
    );
    assert!(r.value("AccessKeyId").starts_with("ASIA"));
    let exp = time::OffsetDateTime::parse(
        &r.value("Expiration"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = exp - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(7100) && left <= time::Duration::seconds(7200),
        "{left}"
    );

    // The session works at once, with KMS too; it is who it says.
    let s1 = session_client(root, &r);
    let who = s1.query_ok("sts", "GetCallerIdentity", &[]).await;
    assert_eq!(
        who.value("Arn"),
        format!("arn:aws:sts::{ACCT}:assumed-role/app/s1")
    );
    assert_eq!(who.value("UserId"), format!("{role_id}:s1"));
    s1.ok("ListKeys", json!({})).await;
    let key = s1.create_key(json!({})).await;
    assert!(
        root.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .contains(ACCT)
    );
    // Without its token, or with another, it is an unknown key.
    let mut no_token = s1.clone();
    no_token.session_token = None;
    assert_eq!(
        no_token.call("ListKeys", json!({})).await.error_type(),
        "UnrecognizedClientException"
    );
    assert_eq!(
        no_token.query("sts", "GetCallerIdentity", &[]).await.code(),
        "InvalidClientTokenId"
    );
    let mut wrong = s1.clone();
    wrong.session_token = Some("IQoJb3JpZ2luX2VjEwrong".into());
    assert_eq!(
        wrong.call("ListKeys", json!({})).await.error_type(),
        "UnrecognizedClientException"
    );
    // A session with the role's policy may not call IAM (no iam:* allowed); chaining is
    // limited to an hour.
    assert_eq!(
        s1.query("iam", "GetRole", &[("RoleName", "app")])
            .await
            .code(),
        "AccessDenied"
    );
    let r = s1.query("iam", "GetUser", &[]).await;
    assert_eq!(r.code(), "ValidationError");

    // The account-root trust delegates to identity policies: alice needs one.
    let acct_arn = format!("arn:aws:iam::{ACCT}:role/acct");
    let r = alice
        .query(
            "sts",
            "AssumeRole",
            &[("RoleArn", &acct_arn), ("RoleSessionName", "s2")],
        )
        .await;
    expect_code(&r, 403, "AccessDenied");
    root.query_ok("iam", "PutUserPolicy", &[
        ("UserName", "alice"), ("PolicyName", "assume"),
        ("PolicyDocument", &format!(r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"sts:AssumeRole","Resource":"{acct_arn}"}}]}}"#)),
    ]).await;
    let r = alice
        .query_ok(
            "sts",
            "AssumeRole",
            &[("RoleArn", &acct_arn), ("RoleSessionName", "s2")],
        )
        .await;
    let s2 = session_client(root, &r);
    s2.query_ok("sts", "GetCallerIdentity", &[]).await;
    // bob, without the identity policy, still may not.
    assert_eq!(
        bob.query(
            "sts",
            "AssumeRole",
            &[("RoleArn", &acct_arn), ("RoleSessionName", "s3")]
        )
        .await
        .code(),
        "AccessDenied"
    );

    // Role chaining: the role session assumes the root-delegating role only with an
    // identity policy of its role; at most one hour.
    let r = s1
        .query(
            "sts",
            "AssumeRole",
            &[("RoleArn", &acct_arn), ("RoleSessionName", "c1")],
        )
        .await;
    assert_eq!(r.code(), "AccessDenied");
    put_policy(root, "Role", "app", "chain", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole","Resource":"*"}]}"#).await;
    let r = s1
        .query(
            "sts",
            "AssumeRole",
            &[
                ("RoleArn", &acct_arn),
                ("RoleSessionName", "c1"),
                ("DurationSeconds", "3601"),
            ],
        )
        .await;
    assert_eq!(r.code(), "ValidationError");
    assert!(r.value("Message").contains("role chaining"), "{}", r.body);
    let r = s1
        .query_ok(
            "sts",
            "AssumeRole",
            &[("RoleArn", &acct_arn), ("RoleSessionName", "c1")],
        )
        .await;
    assert_eq!(
        r.value("Arn"),
        format!("arn:aws:sts::{ACCT}:assumed-role/acct/c1")
    );

    // DeleteRole: policies first.
    let r = root
        .query("iam", "DeleteRole", &[("RoleName", "app")])
        .await;
    expect_code(&r, 409, "DeleteConflict");
    for p in ["kms", "chain"] {
        root.query_ok(
            "iam",
            "DeleteRolePolicy",
            &[("RoleName", "app"), ("PolicyName", p)],
        )
        .await;
    }
    assert_eq!(
        root.query(
            "iam",
            "DeleteRolePolicy",
            &[("RoleName", "app"), ("PolicyName", "kms")]
        )
        .await
        .status,
        404
    );
    root.query_ok("iam", "DeleteRole", &[("RoleName", "app")])
        .await;
    assert_eq!(
        root.query("iam", "GetRole", &[("RoleName", "app")])
            .await
            .status,
        404
    );
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_expire_on_the_clock() {
    let clock = hsm_kms::clock::ManualClock::new(time::OffsetDateTime::now_utc());
    let svc = service_with(Arc::new(clock.clone())).await;
    let root = &svc.client;
    root.query_ok("iam", "CreateUser", &[("UserName", "alice")])
        .await;
    let alice = client_of(
        root,
        &root
            .query_ok("iam", "CreateAccessKey", &[("UserName", "alice")])
            .await,
        &user_arn("alice"),
    );
    root.query_ok(
        "iam",
        "CreateRole",
        &[
            ("RoleName", "app"),
            ("AssumeRolePolicyDocument", &trust(&user_arn("alice"))),
        ],
    )
    .await;
    // The role may list keys (KMS authorization: its session has the role's policies).
    root.query_ok(
        "iam",
        "PutRolePolicy",
        &[
            ("RoleName", "app"),
            ("PolicyName", "list"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:ListKeys","Resource":"*"}]}"#,
            ),
        ],
    )
    .await;
    let r = alice
        .query_ok(
            "sts",
            "AssumeRole",
            &[
                ("RoleArn", &format!("arn:aws:iam::{ACCT}:role/app")),
                ("RoleSessionName", "s0"),
                ("DurationSeconds", "900"),
            ],
        )
        .await;
    let session = session_client(root, &r);
    session.ok("ListKeys", json!({})).await;

    // A restart: the session (sealed in the store) still works.
    svc.running.stop().await;
    let (running, root2) = start_on(&svc.tokens, Arc::new(clock.clone())).await;
    let mut session = session.clone();
    session.url = root2.url.clone();
    session.ok("ListKeys", json!({})).await;
    let who = session.query_ok("sts", "GetCallerIdentity", &[]).await;
    assert_eq!(
        who.value("Arn"),
        format!("arn:aws:sts::{ACCT}:assumed-role/app/s0")
    );
    let mut alice = alice.clone();
    alice.url = root2.url.clone();
    alice.query_ok("sts", "GetCallerIdentity", &[]).await;

    // Just before the expiry it works; at it, it is expired (KMS and Query shapes).
    clock.advance(std::time::Duration::from_secs(899));
    session.ok("ListKeys", json!({})).await;
    clock.advance(std::time::Duration::from_secs(1));
    let r = session.call("ListKeys", json!({})).await;
    assert_eq!((r.status, r.error_type()), (400, "ExpiredTokenException"));
    assert_eq!(
        r.body["message"],
        "The security token included in the request is expired"
    );
    let r = session.query("sts", "GetCallerIdentity", &[]).await;
    expect_code(&r, 403, "ExpiredToken");
    // The long-term key is not affected.
    alice.query_ok("sts", "GetCallerIdentity", &[]).await;
    running.stop().await;
}

/// An older database: its quick-start credential is `user/hsm-kms-admin`, with no IAM user.
/// The next start gives it its user (owning the key) with the full-access policy, so it
/// may still do everything (here: IAM, which enforces identity policies already).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_admin_credential_gets_its_iam_user() {
    let svc = service().await;
    let store: Arc<dyn hsm_kms::store::MetadataStore> = Arc::new(
        hsm_kms::store::SqliteStore::open(&svc.tokens.dir.path().join("metadata.sqlite")).unwrap(),
    );
    let admin_arn = user_arn("hsm-kms-admin");
    let legacy = hsm_kms::kms::credentials::create(
        svc.running.kms.vault().as_ref(),
        &store,
        ACCT,
        &admin_arn,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    drop(store);
    assert_eq!(
        svc.client
            .query_ok("iam", "ListUsers", &[])
            .await
            .get("UserName"),
        None
    );
    svc.running.stop().await;

    let (running, root) = start_on(&svc.tokens, Arc::new(hsm_kms::clock::SystemClock)).await;
    let r = root
        .query_ok("iam", "GetUser", &[("UserName", "hsm-kms-admin")])
        .await;
    let admin_id = r.value("UserId");
    assert_eq!(r.value("Arn"), admin_arn);
    let r = root
        .query_ok("iam", "ListUserPolicies", &[("UserName", "hsm-kms-admin")])
        .await;
    assert_eq!(xml_values(&r.body, "member"), ["hsm-kms-legacy-admin"]);
    let r = root
        .query_ok(
            "iam",
            "GetUserPolicy",
            &[
                ("UserName", "hsm-kms-admin"),
                ("PolicyName", "hsm-kms-legacy-admin"),
            ],
        )
        .await;
    assert_eq!(
        decode(&r.value("PolicyDocument")),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
    );
    let r = root
        .query_ok("iam", "ListAccessKeys", &[("UserName", "hsm-kms-admin")])
        .await;
    assert_eq!(
        xml_values(&r.body, "AccessKeyId"),
        vec![legacy.access_key_id.clone()]
    );
    // The admin: who it is, and full access.
    let admin = root.with_credentials(legacy, None);
    let who = admin.query_ok("sts", "GetCallerIdentity", &[]).await;
    assert_eq!(
        (who.value("Arn"), who.value("UserId")),
        (admin_arn.clone(), admin_id)
    );
    admin
        .query_ok("iam", "CreateUser", &[("UserName", "new")])
        .await;
    admin.ok("ListKeys", json!({})).await;
    // Deleting the user is refused while its key exists (it owns it now).
    assert_eq!(
        root.query("iam", "DeleteUser", &[("UserName", "hsm-kms-admin")])
            .await
            .code(),
        "DeleteConflict"
    );
    running.stop().await;
}
