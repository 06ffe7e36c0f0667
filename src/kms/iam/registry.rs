//! The registry's in-memory copy of the IAM tables: users and roles by account and name
//! (without regard to case, as IAM), each with its inline policies parsed once. Read under
//! a read lock on every request; changed only after the store has committed.

use super::names;
use crate::kms::policy::{PolicyDocument, PolicyKind};
use crate::kms::KmsError;
use crate::store::{IamPolicyRow, IamPrincipalKind, IamRoleRow, IamUserRow, MetadataStore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `(account, lower-cased name)`.
type Key = (String, String);

fn key(account: &str, name: &str) -> Key {
    (account.to_string(), name.to_ascii_lowercase())
}

/// Inline policies by name.
pub(super) type Policies = BTreeMap<String, Arc<PolicyDocument>>;

/// An IAM user and its inline policies.
#[derive(Debug, Clone)]
pub(super) struct User {
    pub(super) row: IamUserRow,
    pub(super) policies: Policies,
}

/// An IAM role, its parsed trust policy and its inline policies.
#[derive(Debug, Clone)]
pub(super) struct Role {
    pub(super) row: IamRoleRow,
    pub(super) trust: Arc<PolicyDocument>,
    pub(super) policies: Policies,
}

/// Every user and role.
#[derive(Debug, Default)]
pub(super) struct State {
    users: HashMap<Key, User>,
    roles: HashMap<Key, Role>,
}

/// A policy that denies everything: what a stored policy that no longer parses becomes,
/// so that a policy this binary cannot read never widens anyone's access.
const DENY_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}"#;

/// A trust policy that denies every principal.
const DENY_ALL_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":{"AWS":"*"},"Action":"*"}]}"#;

/// A stored policy, parsed; one that does not parse is logged and denies everything (an
/// error only if the built-in deny-all policy itself does not parse).
pub(super) fn parse_stored(
    text: &str,
    kind: PolicyKind,
    what: &str,
) -> Result<Arc<PolicyDocument>, KmsError> {
    match PolicyDocument::parse(text, kind) {
        Ok(p) => Ok(Arc::new(p)),
        Err(e) => {
            tracing::error!(policy = %what, error = %e, "stored policy does not parse; it denies everything");
            let deny = match kind {
                PolicyKind::Trust => DENY_ALL_TRUST,
                _ => DENY_ALL,
            };
            PolicyDocument::parse(deny, kind)
                .map(Arc::new)
                .map_err(|e| KmsError::Internal(format!("deny-all policy: {e}")))
        }
    }
}

impl State {
    /// The state the store holds.
    pub(super) fn load(store: &dyn MetadataStore) -> Result<State, KmsError> {
        let mut s = State::default();
        for row in store.iam_users()? {
            s.insert_user(row, Policies::new());
        }
        for row in store.iam_roles()? {
            let trust = parse_stored(
                &row.trust_policy,
                PolicyKind::Trust,
                &format!("trust policy of role {}", row.role_name),
            )?;
            s.insert_role(row, trust);
        }
        for p in store.iam_policies()? {
            s.put_policy_row(&p)?;
        }
        Ok(s)
    }

    fn put_policy_row(&mut self, p: &IamPolicyRow) -> Result<(), KmsError> {
        let doc = parse_stored(
            &p.document,
            PolicyKind::Identity,
            &format!("{} of {}", p.policy_name, p.principal_name),
        )?;
        self.put_policy(
            &p.account_id,
            p.principal_kind,
            &p.principal_name,
            &p.policy_name,
            doc,
        );
        Ok(())
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    pub(super) fn role_count(&self) -> usize {
        self.roles.len()
    }

    pub(super) fn user(&self, account: &str, name: &str) -> Option<&User> {
        self.users.get(&key(account, name))
    }

    pub(super) fn role(&self, account: &str, name: &str) -> Option<&Role> {
        self.roles.get(&key(account, name))
    }

    /// The users of `account`, ordered by lower-cased name.
    pub(super) fn users_of(&self, account: &str) -> Vec<(String, &User)> {
        let mut v: Vec<(String, &User)> = self
            .users
            .iter()
            .filter(|((a, _), _)| a == account)
            .map(|((_, n), u)| (n.clone(), u))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(super) fn user_id(&self, account: &str, name: &str) -> Option<String> {
        self.user(account, name).map(|u| u.row.user_id.clone())
    }

    pub(super) fn user_policies(&self, account: &str, name: &str) -> Vec<Arc<PolicyDocument>> {
        self.user(account, name)
            .map(|u| u.policies.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The inline policies of the role a session acts as: the role named by `role_arn`,
    /// only if it is still the role (same id) the session began with.
    pub(super) fn role_policies(
        &self,
        account: &str,
        role_arn: &str,
        role_id: &str,
    ) -> Vec<Arc<PolicyDocument>> {
        let Some((role_account, _, name)) = names::split_arn(role_arn, "role") else {
            return Vec::new();
        };
        if role_account != account {
            return Vec::new();
        }
        self.role(account, name)
            .filter(|r| r.row.role_id == role_id)
            .map(|r| r.policies.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn insert_user(&mut self, row: IamUserRow, policies: Policies) {
        let k = key(&row.account_id, &row.user_name);
        self.users.insert(k, User { row, policies });
    }

    pub(super) fn remove_user(&mut self, account: &str, name: &str) {
        self.users.remove(&key(account, name));
    }

    pub(super) fn insert_role(&mut self, row: IamRoleRow, trust: Arc<PolicyDocument>) {
        let k = key(&row.account_id, &row.role_name);
        self.roles.insert(
            k,
            Role {
                row,
                trust,
                policies: Policies::new(),
            },
        );
    }

    pub(super) fn remove_role(&mut self, account: &str, name: &str) {
        self.roles.remove(&key(account, name));
    }

    /// The inline policies of the user or role `principal`, if it exists.
    pub(super) fn policies(
        &self,
        account: &str,
        kind: IamPrincipalKind,
        principal: &str,
    ) -> Option<&Policies> {
        match kind {
            IamPrincipalKind::User => self.user(account, principal).map(|u| &u.policies),
            IamPrincipalKind::Role => self.role(account, principal).map(|r| &r.policies),
        }
    }

    fn policies_mut(
        &mut self,
        account: &str,
        kind: IamPrincipalKind,
        principal: &str,
    ) -> Option<&mut Policies> {
        let k = key(account, principal);
        match kind {
            IamPrincipalKind::User => self.users.get_mut(&k).map(|u| &mut u.policies),
            IamPrincipalKind::Role => self.roles.get_mut(&k).map(|r| &mut r.policies),
        }
    }

    pub(super) fn put_policy(
        &mut self,
        account: &str,
        kind: IamPrincipalKind,
        principal: &str,
        policy_name: &str,
        doc: Arc<PolicyDocument>,
    ) {
        if let Some(p) = self.policies_mut(account, kind, principal) {
            p.insert(policy_name.to_string(), doc);
        }
    }

    pub(super) fn remove_policy(
        &mut self,
        account: &str,
        kind: IamPrincipalKind,
        principal: &str,
        policy_name: &str,
    ) {
        if let Some(p) = self.policies_mut(account, kind, principal) {
            p.remove(policy_name);
        }
    }
}
