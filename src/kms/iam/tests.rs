//! Unit tests of the identity registry: the legacy migration, users, policies and role
//! sessions as the policy engine sees them, stored policies that no longer parse.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use super::*;
use crate::kms::policy;
use crate::kms::vault::fake::FakeVault;
use crate::store::{CredentialRow, IamPrincipalKind, SqliteStore};

const ACCT: &str = "111122223333";

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn principal(arn: &str) -> Principal {
    Principal {
        access_key_id: "AKIAEXAMPLE".into(),
        account_id: ACCT.into(),
        arn: arn.into(),
        session: None,
    }
}

fn allows(iam: &Identities, p: &Principal, action: &str) -> bool {
    let caller = iam.caller(p).unwrap();
    let req = policy::Request::new(action, "arn:aws:kms:us-east-1:111122223333:key/x", caller);
    let docs = iam.policies_for(p);
    policy::authorize(&req, None, docs.iter().map(AsRef::as_ref), false).is_allowed()
}

/// An older database: the quick-start credential of `user/hsm-kms-admin` with no IAM user.
/// The load creates the user (durably, owning the key) with the full-access policy, once.
#[test]
fn legacy_user_credentials_get_their_user_with_full_access() {
    let store: Arc<dyn MetadataStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let arn = format!("arn:aws:iam::{ACCT}:user/hsm-kms-admin");
    for (akid, principal_arn) in [
        ("AKIALEGACY0000000001", arn.clone()),
        ("AKIAROOT000000000001", format!("arn:aws:iam::{ACCT}:root")),
    ] {
        store
            .put_credential(&CredentialRow {
                access_key_id: akid.into(),
                account_id: ACCT.into(),
                principal_arn,
                sealed_secret: vec![1, 2, 3],
                created_at: now(),
                active: true,
                user_name: None,
                session: None,
            })
            .unwrap();
    }
    let admin = principal(&arn);
    let iam = Identities::load(&store).unwrap();
    let users = store.iam_users().unwrap();
    assert_eq!(users.len(), 1, "only the user ARN gets a user: {users:?}");
    assert_eq!(users[0].user_name, "hsm-kms-admin");
    assert_eq!(users[0].path, "/");
    assert!(users[0].user_id.starts_with("AIDA") && users[0].user_id.len() == 21);
    let policies = store.iam_policies().unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].policy_name, LEGACY_POLICY_NAME);
    assert_eq!(policies[0].document, LEGACY_POLICY);
    let key = store
        .credentials()
        .unwrap()
        .into_iter()
        .find(|c| c.access_key_id == "AKIALEGACY0000000001")
        .unwrap();
    assert_eq!(key.user_name.as_deref(), Some("hsm-kms-admin"));
    // Full access through the identity policy, and its unique id.
    assert!(allows(&iam, &admin, "kms:CreateKey"));
    assert!(allows(&iam, &admin, "iam:CreateUser"));
    assert_eq!(
        iam.caller(&admin).unwrap().userid(),
        Some(users[0].user_id.as_str())
    );
    // Root: no policies, its account as id.
    let root = principal(&format!("arn:aws:iam::{ACCT}:root"));
    assert!(iam.policies_for(&root).is_empty());
    assert_eq!(iam.caller(&root).unwrap().userid(), Some(ACCT));
    // Once: a second load creates nothing more.
    Identities::load(&store).unwrap();
    assert_eq!(store.iam_users().unwrap(), users);
    assert_eq!(store.iam_policies().unwrap().len(), 1);
}

#[tokio::test]
async fn users_policies_and_role_sessions_reach_the_engine() {
    let store: Arc<dyn MetadataStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let vault = FakeVault::new(2);
    let iam = Identities::load(&store).unwrap();
    let root = principal(&format!("arn:aws:iam::{ACCT}:root"));
    let ctx = Ctx {
        principal: &root,
        vault: &vault,
        now: now(),
    };
    let alice = iam
        .create_user(&ctx, "alice", Some("/team/"))
        .await
        .unwrap();
    assert_eq!(alice.arn, format!("arn:aws:iam::{ACCT}:user/team/alice"));
    let p = principal(&alice.arn);
    assert!(!allows(&iam, &p, "kms:Encrypt"));
    iam.put_policy(
        &ctx,
        IamPrincipalKind::User,
        "ALICE",
        "enc",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}"#,
    )
    .await
    .unwrap();
    assert!(allows(&iam, &p, "kms:Encrypt"));
    assert!(!allows(&iam, &p, "kms:Decrypt"));
    assert_eq!(iam.caller(&p).unwrap().userid(), Some(alice.id.as_str()));
    // The user may not manage IAM without a policy allowing it.
    let as_alice = Ctx {
        principal: &p,
        vault: &vault,
        now: now(),
    };
    let e = iam.create_user(&as_alice, "bob", None).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "User: {} is not authorized to perform: iam:CreateUser on resource: \
             arn:aws:iam::{ACCT}:user/bob because no identity-based policy allows the \
             iam:CreateUser action",
            alice.arn
        )
    );
    // A role session: its role's policies, its real role ARN, AROA…:session.
    let role = iam
        .create_role(
            &ctx,
            "app",
            Some("/svc/"),
            &format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{}"}},"Action":"sts:AssumeRole"}}]}}"#,
                alice.arn
            ),
            None,
            None,
        )
        .await
        .unwrap();
    iam.put_policy(
        &ctx,
        IamPrincipalKind::Role,
        "app",
        "dec",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}"#,
    )
    .await
    .unwrap();
    let session = iam
        .assume_role(
            &as_alice,
            &AssumeRoleInput {
                role_arn: &role.arn,
                session_name: "s1",
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sp = session.credential.principal();
    assert_eq!(sp.arn, format!("arn:aws:sts::{ACCT}:assumed-role/app/s1"));
    let caller = iam.caller(&sp).unwrap();
    assert_eq!(caller.principal_arn(), role.arn);
    assert_eq!(caller.userid(), Some(format!("{}:s1", role.id).as_str()));
    assert!(allows(&iam, &sp, "kms:Decrypt"));
    assert!(!allows(&iam, &sp, "kms:Encrypt"));
    // Deleting the role (policies first) takes the session's permissions away.
    iam.delete_policy(&ctx, IamPrincipalKind::Role, "app", "dec")
        .await
        .unwrap();
    iam.delete_role(&ctx, "app").await.unwrap();
    assert!(iam.policies_for(&sp).is_empty());
    // A registry loaded again from the store agrees.
    let again = Identities::load(&store).unwrap();
    assert!(allows(&again, &p, "kms:Encrypt"));
    assert_eq!(again.caller(&p).unwrap().userid(), Some(alice.id.as_str()));
}

#[test]
fn a_stored_policy_that_does_not_parse_denies_everything() {
    let deny = registry::parse_stored("{", policy::PolicyKind::Identity, "x").unwrap();
    let caller = policy::Caller::from_arn(&format!("arn:aws:iam::{ACCT}:user/u")).unwrap();
    let req = policy::Request::new("kms:Encrypt", "*", caller.clone());
    assert_eq!(deny.evaluate(&req), policy::PolicyEffect::ExplicitDeny);
    let trust = registry::parse_stored("{", policy::PolicyKind::Trust, "x").unwrap();
    let req = policy::Request::new("sts:AssumeRole", "*", caller);
    assert_eq!(trust.evaluate(&req), policy::PolicyEffect::ExplicitDeny);
}
