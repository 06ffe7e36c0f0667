//! IAM roles and their inline policies: `CreateRole`, `GetRole`, `DeleteRole`,
//! `PutRolePolicy`, `GetRolePolicy`, `ListRolePolicies`, `DeleteRolePolicy`.

use super::names::{self, check_name, MAX_NAME, MAX_POLICY_NAME};
use super::users::{check_quota, policy_error, PolicyView, ROLE_POLICY_QUOTA};
use super::{Ctx, Identities};
use crate::auth::Principal;
use crate::kms::credentials;
use crate::kms::policy::{PolicyDocument, PolicyError, PolicyKind};
use crate::kms::KmsError;
use crate::store::{IamPolicyRow, IamPrincipalKind, IamRoleRow, StoreError};
use std::sync::Arc;
use time::OffsetDateTime;

/// The default and bounds of a role's `MaxSessionDuration`, in seconds.
pub const DEFAULT_MAX_SESSION: u32 = 3600;
const MAX_SESSION_CEILING: i64 = 43_200;

/// A role as IAM shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleView {
    /// The role's name.
    pub name: String,
    /// `AROA…`.
    pub id: String,
    /// The role's path.
    pub path: String,
    /// The role's ARN.
    pub arn: String,
    /// When the role was created.
    pub created: OffsetDateTime,
    /// The trust policy, verbatim.
    pub trust_policy: String,
    /// The description, if any.
    pub description: Option<String>,
    /// The longest session, in seconds.
    pub max_session_duration: u32,
}

impl RoleView {
    pub(super) fn of(row: &IamRoleRow) -> RoleView {
        RoleView {
            name: row.role_name.clone(),
            id: row.role_id.clone(),
            path: row.path.clone(),
            arn: names::role_arn(&row.account_id, &row.path, &row.role_name),
            created: row.created_at,
            trust_policy: row.trust_policy.clone(),
            description: row.description.clone(),
            max_session_duration: row.max_session_duration,
        }
    }
}

fn no_such_role(name: &str) -> KmsError {
    KmsError::NotFound(format!("The role with name {name} cannot be found."))
}

fn no_such_policy(name: &str) -> KmsError {
    KmsError::NotFound(format!("The role policy with name {name} cannot be found."))
}

impl Identities {
    /// The role `name` of the caller's account after authorizing `action` on it.
    fn authorized_role(
        &self,
        p: &Principal,
        action: &str,
        name: &str,
    ) -> Result<IamRoleRow, KmsError> {
        check_name("roleName", name, MAX_NAME)?;
        let resource = match self.state.read().role(&p.account_id, name) {
            Some(r) => names::role_arn(&p.account_id, &r.row.path, &r.row.role_name),
            None => names::role_arn(&p.account_id, "/", name),
        };
        self.authorize(p, action, &resource)?;
        self.state
            .read()
            .role(&p.account_id, name)
            .map(|r| r.row.clone())
            .ok_or_else(|| no_such_role(name))
    }

    /// IAM `CreateRole`.
    pub async fn create_role(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        path: Option<&str>,
        trust_policy: &str,
        description: Option<&str>,
        max_session_duration: Option<i64>,
    ) -> Result<RoleView, KmsError> {
        let p = ctx.principal;
        check_name("roleName", name, MAX_NAME)?;
        let path = path.unwrap_or("/");
        names::check_path(path)?;
        if let Some(d) = description {
            names::check_description(d)?;
        }
        let max = max_session_duration.unwrap_or(i64::from(DEFAULT_MAX_SESSION));
        names::check_range(
            "maxSessionDuration",
            max,
            i64::from(DEFAULT_MAX_SESSION),
            MAX_SESSION_CEILING,
        )?;
        let trust =
            PolicyDocument::parse(trust_policy, PolicyKind::Trust).map_err(|e| match e {
                PolicyError::TooLarge { .. } => {
                    KmsError::LimitExceeded("Cannot exceed quota for ACLSizePerRole: 2048".into())
                }
                other => policy_error(other),
            })?;
        self.authorize(
            p,
            "iam:CreateRole",
            &names::role_arn(&p.account_id, path, name),
        )?;
        let _w = self.writes.lock().await;
        let exists = || KmsError::AlreadyExists(format!("Role with name {name} already exists."));
        if self.state.read().role(&p.account_id, name).is_some() {
            return Err(exists());
        }
        let row = IamRoleRow {
            account_id: p.account_id.clone(),
            role_name: name.to_string(),
            role_id: credentials::random_id(ctx.vault, "AROA", 17).await?,
            path: path.to_string(),
            trust_policy: trust_policy.to_string(),
            max_session_duration: u32::try_from(max).unwrap_or(DEFAULT_MAX_SESSION),
            description: description.map(str::to_string),
            created_at: crate::kms::model::epoch_seconds::truncate(ctx.now),
        };
        let stored = row.clone();
        match self.blocking(move |s| s.create_iam_role(&stored)).await? {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        self.state.write().insert_role(row.clone(), Arc::new(trust));
        Ok(RoleView::of(&row))
    }

    /// IAM `GetRole`.
    pub fn get_role(&self, ctx: &Ctx<'_>, name: &str) -> Result<RoleView, KmsError> {
        let row = self.authorized_role(ctx.principal, "iam:GetRole", name)?;
        Ok(RoleView::of(&row))
    }

    /// IAM `DeleteRole`: `DeleteConflict` while it has inline policies. Its sessions lose
    /// the role's policies at once (they are bound to the role's id).
    pub async fn delete_role(&self, ctx: &Ctx<'_>, name: &str) -> Result<(), KmsError> {
        let row = self.authorized_role(ctx.principal, "iam:DeleteRole", name)?;
        let _w = self.writes.lock().await;
        let (account, role) = (row.account_id.clone(), row.role_name.clone());
        match self
            .blocking(move |s| s.delete_iam_role(&account, &role))
            .await?
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(no_such_role(name)),
            Err(StoreError::Conflict(what)) => {
                return Err(KmsError::Conflict(format!(
                    "Cannot delete entity, must delete {what} first."
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.state
            .write()
            .remove_role(&row.account_id, &row.role_name);
        Ok(())
    }

    /// IAM `PutRolePolicy`.
    pub async fn put_role_policy(
        &self,
        ctx: &Ctx<'_>,
        role: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), KmsError> {
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let doc = PolicyDocument::parse(document, PolicyKind::Identity).map_err(policy_error)?;
        let row = self.authorized_role(ctx.principal, "iam:PutRolePolicy", role)?;
        let _w = self.writes.lock().await;
        {
            let state = self.state.read();
            let existing = state
                .role(&row.account_id, &row.role_name)
                .map(|r| r.policies.clone())
                .unwrap_or_default();
            check_quota(
                &existing,
                policy_name,
                document,
                ROLE_POLICY_QUOTA,
                &format!("role {}", row.role_name),
            )?;
        }
        let stored = IamPolicyRow {
            account_id: row.account_id.clone(),
            principal_kind: IamPrincipalKind::Role,
            principal_name: row.role_name.clone(),
            policy_name: policy_name.to_string(),
            document: document.to_string(),
        };
        match self.blocking(move |s| s.put_iam_policy(&stored)).await? {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(no_such_role(role)),
            Err(e) => return Err(e.into()),
        }
        self.state.write().put_policy(
            &row.account_id,
            IamPrincipalKind::Role,
            &row.role_name,
            policy_name,
            Arc::new(doc),
        );
        Ok(())
    }

    /// IAM `GetRolePolicy`.
    pub fn get_role_policy(
        &self,
        ctx: &Ctx<'_>,
        role: &str,
        policy_name: &str,
    ) -> Result<PolicyView, KmsError> {
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let row = self.authorized_role(ctx.principal, "iam:GetRolePolicy", role)?;
        let state = self.state.read();
        state
            .role(&row.account_id, &row.role_name)
            .and_then(|r| r.policies.get(policy_name))
            .map(|d| PolicyView {
                principal_name: row.role_name.clone(),
                policy_name: policy_name.to_string(),
                document: d.text().to_string(),
            })
            .ok_or_else(|| no_such_policy(policy_name))
    }

    /// IAM `ListRolePolicies`: the names of the role's inline policies.
    pub fn list_role_policies(&self, ctx: &Ctx<'_>, role: &str) -> Result<Vec<String>, KmsError> {
        let row = self.authorized_role(ctx.principal, "iam:ListRolePolicies", role)?;
        Ok(self
            .state
            .read()
            .role(&row.account_id, &row.role_name)
            .map(|r| r.policies.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// IAM `DeleteRolePolicy`.
    pub async fn delete_role_policy(
        &self,
        ctx: &Ctx<'_>,
        role: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        check_name("policyName", policy_name, MAX_POLICY_NAME)?;
        let row = self.authorized_role(ctx.principal, "iam:DeleteRolePolicy", role)?;
        let _w = self.writes.lock().await;
        let (account, name, policy) = (
            row.account_id.clone(),
            row.role_name.clone(),
            policy_name.to_string(),
        );
        match self
            .blocking(move |s| {
                s.delete_iam_policy(&account, IamPrincipalKind::Role, &name, &policy)
            })
            .await?
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(no_such_policy(policy_name)),
            Err(e) => return Err(e.into()),
        }
        self.state.write().remove_policy(
            &row.account_id,
            IamPrincipalKind::Role,
            &row.role_name,
            policy_name,
        );
        Ok(())
    }
}
