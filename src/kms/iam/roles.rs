//! IAM roles: `CreateRole`, `GetRole`, `DeleteRole`; what their inline policy actions
//! (`PutRolePolicy`, `GetRolePolicy`, `ListRolePolicies`, `DeleteRolePolicy`, served by
//! `inline.rs`) name, count and answer for roles.

use super::inline::{policy_error, Holder};
use super::names::{self, check_name, MAX_NAME};
use super::users::ROLE_POLICY_QUOTA;
use super::{Ctx, Identities};
use crate::auth::Principal;
use crate::kms::credentials;
use crate::kms::policy::{PolicyDocument, PolicyError, PolicyKind};
use crate::kms::KmsError;
use crate::store::{IamRoleRow, StoreError};
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

/// Roles' inline policies.
pub(super) const ROLES: Holder = Holder {
    actions: [
        "iam:PutRolePolicy",
        "iam:GetRolePolicy",
        "iam:ListRolePolicies",
        "iam:DeleteRolePolicy",
    ],
    word: "role",
    quota: ROLE_POLICY_QUOTA,
    authorized: |ids, p, action, name| {
        let row = ids.authorized_role(p, action, name)?;
        Ok((row.account_id, row.role_name))
    },
    no_such_holder: no_such_role,
    no_such_policy: |name| {
        KmsError::NotFound(format!("The role policy with name {name} cannot be found."))
    },
};

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
        let deleted = self
            .blocking(move |s| s.delete_iam_role(&account, &role))
            .await?;
        super::deleted(deleted, || no_such_role(name))?;
        self.state
            .write()
            .remove_role(&row.account_id, &row.role_name);
        Ok(())
    }
}
