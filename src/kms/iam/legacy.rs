//! The start-time migration of older databases: their quick-start credential authenticates
//! as `arn:aws:iam::ACCOUNT:user/hsm-kms-admin` with no IAM user behind it. Every
//! credential whose principal is an IAM user ARN without an IAM user gets that user (same
//! name and path, a new `AIDA…` id) owning the key, with one inline policy
//! [`LEGACY_POLICY_NAME`] allowing everything, so that it keeps the full access it had
//! once authorization is enforced. One durable transaction per user; logged once.

use super::names;
use crate::kms::credentials::ID_ALPHABET;
use crate::kms::KmsError;
use crate::store::{IamPolicyRow, IamPrincipalKind, IamUserRow, MetadataStore};
use rand::Rng;
use std::collections::BTreeMap;

/// The inline policy a migrated user receives.
pub const LEGACY_POLICY_NAME: &str = "hsm-kms-legacy-admin";
/// Its document: everything on everything.
pub const LEGACY_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// Give every user credential without an IAM user its user (see the module docs).
pub(super) fn migrate(store: &dyn MetadataStore) -> Result<(), KmsError> {
    let users = store.iam_users()?;
    let exists = |account: &str, name: &str| {
        users
            .iter()
            .any(|u| u.account_id == account && u.user_name.eq_ignore_ascii_case(name))
    };
    // (account, name) → (path, created, access keys)
    let mut orphans: BTreeMap<(String, String), (String, time::OffsetDateTime, Vec<String>)> =
        BTreeMap::new();
    for c in store.credentials()? {
        if c.session.is_some() {
            continue;
        }
        let Some((account, path, name)) = names::split_arn(&c.principal_arn, "user") else {
            continue;
        };
        if account != c.account_id || exists(account, name) {
            continue;
        }
        let e = orphans
            .entry((account.to_string(), name.to_string()))
            .or_insert_with(|| (path.to_string(), c.created_at, Vec::new()));
        e.1 = e.1.min(c.created_at);
        e.2.push(c.access_key_id.clone());
    }
    for ((account, name), (path, created_at, keys)) in orphans {
        let mut rng = rand::rngs::OsRng;
        let tail: String = (0..17)
            .map(|_| {
                let i = rng.gen_range(0..ID_ALPHABET.len());
                ID_ALPHABET.get(i).map_or('A', |&c| char::from(c))
            })
            .collect();
        let row = IamUserRow {
            account_id: account.clone(),
            user_name: name.clone(),
            user_id: format!("AIDA{tail}"),
            path,
            created_at,
        };
        let policy = IamPolicyRow {
            account_id: account.clone(),
            principal_kind: IamPrincipalKind::User,
            principal_name: name.clone(),
            policy_name: LEGACY_POLICY_NAME.to_string(),
            document: LEGACY_POLICY.to_string(),
        };
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        store.create_iam_user(&row, &[policy], &keys)?;
        tracing::warn!(
            account_id = %account,
            user = %name,
            user_id = %row.user_id,
            access_keys = ?keys,
            policy = LEGACY_POLICY_NAME,
            "legacy credential: created its IAM user with a full-access inline policy; \
             narrow or remove that policy to restrict it"
        );
    }
    Ok(())
}
