//! Inline policies of users and roles, one implementation for both, parameterised by the
//! principal kind: `PutUserPolicy`/`PutRolePolicy`, `GetUserPolicy`/`GetRolePolicy`,
//! `ListUserPolicies`/`ListRolePolicies`, `DeleteUserPolicy`/`DeleteRolePolicy`. What
//! differs between a user's and a role's (a `Holder`: the IAM action names, the quota,
//! the not-found errors) is declared by `users.rs` and `roles.rs`.

use super::names::{check_name, MAX_POLICY_NAME};
use super::registry::Policies;
use super::roles::ROLES;
use super::users::USERS;
use super::{Ctx, Identities};
use crate::auth::Principal;
use crate::kms::policy::{PolicyDocument, PolicyError, PolicyKind};
use crate::kms::KmsError;
use crate::store::{IamPolicyRow, IamPrincipalKind, StoreError};
use std::sync::Arc;

/// An inline policy (`GetUserPolicy`, `GetRolePolicy`).
#[derive(Debug, Clone)]
pub struct PolicyView {
    /// The user's or role's name.
    pub principal_name: String,
    /// The policy's name.
    pub policy_name: String,
    /// The document, verbatim.
    pub document: String,
}

/// The holder `name` of the caller's account after authorizing an action on it (caller,
/// action, name): its account and stored name.
pub(super) type Authorized =
    fn(&Identities, &Principal, &str, &str) -> Result<(String, String), KmsError>;

/// A kind of principal that holds inline policies, as its IAM actions differ.
pub(super) struct Holder {
    /// `Put…Policy`, `Get…Policy`, `List…Policies`, `Delete…Policy`, as IAM actions.
    pub(super) actions: [&'static str; 4],
    /// `user`/`role`, in the quota's message.
    pub(super) word: &'static str,
    /// The most characters (without whitespace) of all inline policies of one holder.
    pub(super) quota: usize,
    /// The holder `name` of the caller's account after authorizing `action` on it: its
    /// account and stored name.
    pub(super) authorized: Authorized,
    /// `NoSuchEntity` for the holder of this name.
    pub(super) no_such_holder: fn(&str) -> KmsError,
    /// `NoSuchEntity` for the inline policy of this name.
    pub(super) no_such_policy: fn(&str) -> KmsError,
}

/// What the inline policy actions of `kind` differ in.
fn holder(kind: IamPrincipalKind) -> &'static Holder {
    match kind {
        IamPrincipalKind::User => &USERS,
        IamPrincipalKind::Role => &ROLES,
    }
}

/// A policy refused by the engine, as IAM answers it.
pub(super) fn policy_error(e: PolicyError) -> KmsError {
    match e {
        PolicyError::Malformed(m) | PolicyError::InvalidCaller(m) => {
            KmsError::MalformedPolicyDocument(m)
        }
        too_large @ PolicyError::TooLarge { .. } => KmsError::LimitExceeded(too_large.to_string()),
    }
}

/// Characters of a policy that count against the inline policy quotas (whitespace is not
/// counted, as in IAM).
fn quota_size(text: &str) -> usize {
    text.chars().filter(|c| !c.is_whitespace()).count()
}

/// The new set of inline policies with `name` set to `doc` stays within `quota`.
fn check_quota(
    existing: &Policies,
    name: &str,
    doc: &str,
    quota: usize,
    what: &str,
) -> Result<(), KmsError> {
    let total: usize = existing
        .iter()
        .filter(|(n, _)| n.as_str() != name)
        .map(|(_, p)| quota_size(p.text()))
        .sum::<usize>()
        + quota_size(doc);
    if total > quota {
        return Err(KmsError::LimitExceeded(format!(
            "Maximum policy size of {quota} bytes exceeded for {what}"
        )));
    }
    Ok(())
}

impl Identities {
    /// IAM `PutUserPolicy` or `PutRolePolicy` (creates or replaces the inline policy).
    pub async fn put_policy(
        &self,
        ctx: &Ctx<'_>,
        kind: IamPrincipalKind,
        principal: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), KmsError> {
        let holder = holder(kind);
        let action = holder.actions[0];
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let doc = PolicyDocument::parse(document, PolicyKind::Identity).map_err(policy_error)?;
        let (account, stored_name) = (holder.authorized)(self, ctx.principal, action, principal)?;
        let _w = self.writes.lock().await;
        {
            let state = self.state.read();
            let existing = state
                .policies(&account, kind, &stored_name)
                .cloned()
                .unwrap_or_default();
            check_quota(
                &existing,
                policy_name,
                document,
                holder.quota,
                &format!("{} {stored_name}", holder.word),
            )?;
        }
        let stored = IamPolicyRow {
            account_id: account.clone(),
            principal_kind: kind,
            principal_name: stored_name.clone(),
            policy_name: policy_name.to_string(),
            document: document.to_string(),
        };
        match self.blocking(move |s| s.put_iam_policy(&stored)).await? {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err((holder.no_such_holder)(principal)),
            Err(e) => return Err(e.into()),
        }
        self.state
            .write()
            .put_policy(&account, kind, &stored_name, policy_name, Arc::new(doc));
        Ok(())
    }

    /// IAM `GetUserPolicy` or `GetRolePolicy`.
    pub fn get_policy(
        &self,
        ctx: &Ctx<'_>,
        kind: IamPrincipalKind,
        principal: &str,
        policy_name: &str,
    ) -> Result<PolicyView, KmsError> {
        let holder = holder(kind);
        let action = holder.actions[1];
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let (account, stored_name) = (holder.authorized)(self, ctx.principal, action, principal)?;
        let state = self.state.read();
        state
            .policies(&account, kind, &stored_name)
            .and_then(|p| p.get(policy_name))
            .map(|d| PolicyView {
                principal_name: stored_name.clone(),
                policy_name: policy_name.to_string(),
                document: d.text().to_string(),
            })
            .ok_or_else(|| (holder.no_such_policy)(policy_name))
    }

    /// IAM `ListUserPolicies` or `ListRolePolicies`: the names of the user's or role's
    /// inline policies.
    pub fn list_policies(
        &self,
        ctx: &Ctx<'_>,
        kind: IamPrincipalKind,
        principal: &str,
    ) -> Result<Vec<String>, KmsError> {
        let holder = holder(kind);
        let action = holder.actions[2];
        let (account, stored_name) = (holder.authorized)(self, ctx.principal, action, principal)?;
        Ok(self
            .state
            .read()
            .policies(&account, kind, &stored_name)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// IAM `DeleteUserPolicy` or `DeleteRolePolicy`.
    pub async fn delete_policy(
        &self,
        ctx: &Ctx<'_>,
        kind: IamPrincipalKind,
        principal: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        let holder = holder(kind);
        let action = holder.actions[3];
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let (account, stored_name) = (holder.authorized)(self, ctx.principal, action, principal)?;
        let _w = self.writes.lock().await;
        let (a, n, policy) = (
            account.clone(),
            stored_name.clone(),
            policy_name.to_string(),
        );
        match self
            .blocking(move |s| s.delete_iam_policy(&a, kind, &n, &policy))
            .await?
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err((holder.no_such_policy)(policy_name)),
            Err(e) => return Err(e.into()),
        }
        self.state
            .write()
            .remove_policy(&account, kind, &stored_name, policy_name);
        Ok(())
    }
}
