//! IAM users and their access keys: `CreateUser`, `GetUser`, `ListUsers`, `DeleteUser`,
//! `CreateAccessKey`, `ListAccessKeys`, `UpdateAccessKey`, `DeleteAccessKey`; and what
//! their inline policy actions (`PutUserPolicy`, `GetUserPolicy`, `ListUserPolicies`,
//! `DeleteUserPolicy`, served by `inline.rs`) name, count and answer for users. Each
//! validates its input, authorizes the caller on the user's ARN, commits to the store,
//! then updates the registry.

use super::inline::Holder;
use super::names::{self, check_name, MAX_NAME};
use super::registry::Policies;
use super::{Ctx, Identities};
use crate::auth::{Credential, Principal};
use crate::kms::credentials::{self, root_arn};
use crate::kms::marker::{IamUsers, Marker};
use crate::kms::KmsError;
use crate::store::{CredentialRow, IamUserRow, StoreError};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The most access keys a user (or an account's root) may have.
pub const ACCESS_KEYS_PER_USER: usize = 2;
/// The most characters (without whitespace) of all inline policies of one user.
pub const USER_POLICY_QUOTA: usize = 2048;
/// The most characters (without whitespace) of all inline policies of one role.
pub const ROLE_POLICY_QUOTA: usize = 10_240;

/// An IAM user as IAM shows it; for an account's root user (`GetUser` by the root), no
/// name and no path.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    /// The user's name (`None` for the root user).
    pub name: Option<String>,
    /// `AIDA…`, or the account id for the root user.
    pub id: String,
    /// The user's path (`None` for the root user).
    pub path: Option<String>,
    /// The user's ARN.
    pub arn: String,
    /// When the user was created.
    pub created: OffsetDateTime,
}

impl UserView {
    fn of(row: &IamUserRow) -> UserView {
        UserView {
            name: Some(row.user_name.clone()),
            id: row.user_id.clone(),
            path: Some(row.path.clone()),
            arn: names::user_arn(&row.account_id, &row.path, &row.user_name),
            created: row.created_at,
        }
    }
}

/// One page of `ListUsers`.
#[derive(Debug, Clone)]
pub struct UserPage {
    /// The users of this page.
    pub users: Vec<UserView>,
    /// The marker of the next page, when the listing was truncated.
    pub marker: Option<String>,
}

/// An access key as IAM shows it; the secret only in `CreateAccessKey`'s answer.
#[derive(Debug, Clone)]
pub struct AccessKeyView {
    /// The user it belongs to (`None`: the account's root).
    pub user_name: Option<String>,
    /// `AKIA…`.
    pub access_key_id: String,
    /// `Active` or `Inactive`.
    pub active: bool,
    /// When it was created.
    pub created: OffsetDateTime,
    /// The secret, shown once (`CreateAccessKey`).
    pub secret: Option<Zeroizing<String>>,
}

/// Whose access keys an action is about.
enum Owner {
    Root,
    User(String),
}

fn no_such_user(name: &str) -> KmsError {
    KmsError::NotFound(format!("The user with name {name} cannot be found."))
}

/// Users' inline policies.
pub(super) const USERS: Holder = Holder {
    actions: [
        "iam:PutUserPolicy",
        "iam:GetUserPolicy",
        "iam:ListUserPolicies",
        "iam:DeleteUserPolicy",
    ],
    word: "user",
    quota: USER_POLICY_QUOTA,
    authorized: |ids, p, action, name| {
        let row = ids.authorized_user(p, action, "userName", name)?;
        Ok((row.account_id, row.user_name))
    },
    no_such_holder: no_such_user,
    no_such_policy: |name| {
        KmsError::NotFound(format!("The user policy with name {name} cannot be found."))
    },
};

/// `GetUser`/`CreateAccessKey`… without `UserName` from a role session.
fn needs_user_name() -> KmsError {
    KmsError::Validation("Must specify userName when calling with non-User credentials".into())
}

impl Identities {
    /// The ARN of the user `name` of `account` (with its path when it exists).
    fn user_resource(&self, account: &str, name: &str) -> String {
        match self.state.read().user(account, name) {
            Some(u) => names::user_arn(account, &u.row.path, &u.row.user_name),
            None => names::user_arn(account, "/", name),
        }
    }

    /// The user `name` of the caller's account after authorizing `action` on it: its row,
    /// or `NoSuchEntity` (after the authorization, as IAM).
    fn authorized_user(
        &self,
        p: &Principal,
        action: &str,
        field: &str,
        name: &str,
    ) -> Result<IamUserRow, KmsError> {
        check_name(field, name, MAX_NAME)?;
        let resource = self.user_resource(&p.account_id, name);
        self.authorize(p, action, &resource)?;
        self.state
            .read()
            .user(&p.account_id, name)
            .map(|u| u.row.clone())
            .ok_or_else(|| no_such_user(name))
    }

    /// Whose keys an access key action is about (`UserName`, else the caller), authorized.
    fn key_owner(
        &self,
        p: &Principal,
        action: &str,
        user: Option<&str>,
    ) -> Result<Owner, KmsError> {
        match user {
            Some(name) => {
                let row = self.authorized_user(p, action, "userName", name)?;
                Ok(Owner::User(row.user_name))
            }
            None if p.session.is_some() => Err(needs_user_name()),
            None => match names::split_arn(&p.arn, "user") {
                Some((_, _, name)) => {
                    let row = self.authorized_user(p, action, "userName", name)?;
                    Ok(Owner::User(row.user_name))
                }
                None if p.arn == root_arn(&p.account_id) => Ok(Owner::Root),
                None => Err(needs_user_name()),
            },
        }
    }

    /// The stored access keys of `owner` in `account`.
    async fn keys_of(&self, account: &str, owner: &Owner) -> Result<Vec<CredentialRow>, KmsError> {
        let rows = self.blocking(|s| s.credentials()).await??;
        let root = root_arn(account);
        Ok(rows
            .into_iter()
            .filter(|r| r.account_id == account && r.session.is_none())
            .filter(|r| match owner {
                Owner::Root => r.user_name.is_none() && r.principal_arn == root,
                Owner::User(n) => r
                    .user_name
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(n)),
            })
            .collect())
    }

    /// IAM `CreateUser`.
    pub async fn create_user(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        path: Option<&str>,
    ) -> Result<UserView, KmsError> {
        let p = ctx.principal;
        check_name("userName", name, MAX_NAME)?;
        let path = path.unwrap_or("/");
        names::check_path(path)?;
        self.authorize(
            p,
            "iam:CreateUser",
            &names::user_arn(&p.account_id, path, name),
        )?;
        let _w = self.writes.lock().await;
        let exists = || KmsError::AlreadyExists(format!("User with name {name} already exists."));
        if self.state.read().user(&p.account_id, name).is_some() {
            return Err(exists());
        }
        let row = IamUserRow {
            account_id: p.account_id.clone(),
            user_name: name.to_string(),
            user_id: credentials::random_id(ctx.vault, "AIDA", 17).await?,
            path: path.to_string(),
            created_at: crate::kms::model::epoch_seconds::truncate(ctx.now),
        };
        let stored = row.clone();
        match self
            .blocking(move |s| s.create_iam_user(&stored, &[], &[]))
            .await?
        {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        self.state.write().insert_user(row.clone(), Policies::new());
        Ok(UserView::of(&row))
    }

    /// IAM `GetUser`: the user `name`, or without it the caller (the root user's own
    /// shape for the root).
    pub async fn get_user(&self, ctx: &Ctx<'_>, name: Option<&str>) -> Result<UserView, KmsError> {
        let p = ctx.principal;
        match self.key_owner(p, "iam:GetUser", name)? {
            Owner::User(n) => self
                .state
                .read()
                .user(&p.account_id, &n)
                .map(|u| UserView::of(&u.row))
                .ok_or_else(|| no_such_user(&n)),
            Owner::Root => {
                let arn = root_arn(&p.account_id);
                let created = self
                    .blocking(|s| s.credentials())
                    .await??
                    .into_iter()
                    .filter(|r| r.principal_arn == arn)
                    .map(|r| r.created_at)
                    .min()
                    .unwrap_or(ctx.now);
                Ok(UserView {
                    name: None,
                    id: p.account_id.clone(),
                    path: None,
                    arn,
                    created,
                })
            }
        }
    }

    /// IAM `ListUsers`: the account's users whose path starts with `path_prefix`, by name,
    /// `max_items` (1 to 1000, default 100) per page.
    pub fn list_users(
        &self,
        ctx: &Ctx<'_>,
        path_prefix: Option<&str>,
        marker: Option<&str>,
        max_items: Option<i64>,
    ) -> Result<UserPage, KmsError> {
        let p = ctx.principal;
        if let Some(prefix) = path_prefix {
            names::check_path_prefix(prefix)?;
        }
        let limit = max_items.unwrap_or(100);
        names::check_range("maxItems", limit, 1, 1000)?;
        let after = Marker::decode_opt(IamUsers, marker)?;
        self.authorize(
            p,
            "iam:ListUsers",
            &format!("arn:aws:iam::{}:user/", p.account_id),
        )?;
        let state = self.state.read();
        let prefix = path_prefix.unwrap_or("/");
        let mut items: Vec<(String, UserView)> = state
            .users_of(&p.account_id)
            .into_iter()
            .filter(|(n, u)| u.row.path.starts_with(prefix) && after.as_ref().is_none_or(|a| n > a))
            .take(usize::try_from(limit).unwrap_or(100) + 1)
            .map(|(n, u)| (n, UserView::of(&u.row)))
            .collect();
        let truncated = items.len() > usize::try_from(limit).unwrap_or(100);
        items.truncate(usize::try_from(limit).unwrap_or(100));
        let marker = Marker::after_last(IamUsers, truncated, &items, |(n, _)| n.clone())
            .map(|m| m.as_str().to_string());
        Ok(UserPage {
            users: items.into_iter().map(|(_, u)| u).collect(),
            marker,
        })
    }

    /// IAM `DeleteUser`: `DeleteConflict` while it has access keys or inline policies.
    pub async fn delete_user(&self, ctx: &Ctx<'_>, name: &str) -> Result<(), KmsError> {
        let p = ctx.principal;
        let row = self.authorized_user(p, "iam:DeleteUser", "userName", name)?;
        let _w = self.writes.lock().await;
        let (account, user) = (row.account_id.clone(), row.user_name.clone());
        let deleted = self
            .blocking(move |s| s.delete_iam_user(&account, &user))
            .await?;
        super::deleted(deleted, || no_such_user(name))?;
        self.state
            .write()
            .remove_user(&row.account_id, &row.user_name);
        Ok(())
    }

    /// IAM `CreateAccessKey` for `user` (else the caller): at most
    /// [`ACCESS_KEYS_PER_USER`]; the secret is in the answer only, sealed at rest. The
    /// credential is returned for the live set.
    pub async fn create_access_key(
        &self,
        ctx: &Ctx<'_>,
        user: Option<&str>,
    ) -> Result<(AccessKeyView, Credential), KmsError> {
        let p = ctx.principal;
        let owner = self.key_owner(p, "iam:CreateAccessKey", user)?;
        let _w = self.writes.lock().await;
        let (arn, user_name) = match &owner {
            Owner::Root => (root_arn(&p.account_id), None),
            Owner::User(n) => (self.user_resource(&p.account_id, n), Some(n.as_str())),
        };
        let now = crate::kms::model::epoch_seconds::truncate(ctx.now);
        let (credential, created) = credentials::create_access_key(
            ctx.vault,
            &self.store,
            &p.account_id,
            &arn,
            user_name,
            ACCESS_KEYS_PER_USER,
            now,
        )
        .await?;
        tracing::info!(
            target: "hsm_kms::audit",
            access_key_id = %credential.access_key_id,
            principal = %arn,
            "access key created"
        );
        let view = AccessKeyView {
            user_name: user_name.map(str::to_string),
            access_key_id: credential.access_key_id.clone(),
            active: true,
            created,
            secret: Some(credential.secret_access_key.clone()),
        };
        Ok((view, credential))
    }

    /// IAM `ListAccessKeys` of `user` (else the caller).
    pub async fn list_access_keys(
        &self,
        ctx: &Ctx<'_>,
        user: Option<&str>,
    ) -> Result<Vec<AccessKeyView>, KmsError> {
        let p = ctx.principal;
        let owner = self.key_owner(p, "iam:ListAccessKeys", user)?;
        let name = match &owner {
            Owner::Root => None,
            Owner::User(n) => Some(n.clone()),
        };
        Ok(self
            .keys_of(&p.account_id, &owner)
            .await?
            .into_iter()
            .map(|r| AccessKeyView {
                user_name: name.clone(),
                access_key_id: r.access_key_id,
                active: r.active,
                created: r.created_at,
                secret: None,
            })
            .collect())
    }

    /// The stored key `access_key_id` of `owner`, or IAM's `NoSuchEntity`.
    async fn owned_key(
        &self,
        account: &str,
        owner: &Owner,
        access_key_id: &str,
    ) -> Result<CredentialRow, KmsError> {
        self.keys_of(account, owner)
            .await?
            .into_iter()
            .find(|r| r.access_key_id == access_key_id)
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "The Access Key with id {access_key_id} cannot be found."
                ))
            })
    }

    /// IAM `UpdateAccessKey`: `Active` or `Inactive` (refused as an unknown key). Returns
    /// the new state for the live set.
    pub async fn update_access_key(
        &self,
        ctx: &Ctx<'_>,
        user: Option<&str>,
        access_key_id: &str,
        status: &str,
    ) -> Result<bool, KmsError> {
        let active = match status {
            "Active" => true,
            "Inactive" => false,
            other => {
                return Err(names::invalid(
                    "status",
                    other,
                    "Member must satisfy enum value set: [Active, Inactive]",
                ))
            }
        };
        let p = ctx.principal;
        let owner = self.key_owner(p, "iam:UpdateAccessKey", user)?;
        let _w = self.writes.lock().await;
        let row = self.owned_key(&p.account_id, &owner, access_key_id).await?;
        let akid = row.access_key_id.clone();
        self.blocking(move |s| s.set_credential_status(&akid, active))
            .await??;
        tracing::info!(
            target: "hsm_kms::audit",
            access_key_id = %row.access_key_id,
            status,
            "access key status changed"
        );
        Ok(active)
    }

    /// IAM `DeleteAccessKey`.
    pub async fn delete_access_key(
        &self,
        ctx: &Ctx<'_>,
        user: Option<&str>,
        access_key_id: &str,
    ) -> Result<(), KmsError> {
        let p = ctx.principal;
        let owner = self.key_owner(p, "iam:DeleteAccessKey", user)?;
        let _w = self.writes.lock().await;
        let row = self.owned_key(&p.account_id, &owner, access_key_id).await?;
        let akid = row.access_key_id.clone();
        self.blocking(move |s| s.delete_credential(&akid)).await??;
        tracing::info!(
            target: "hsm_kms::audit",
            access_key_id = %row.access_key_id,
            "access key deleted"
        );
        Ok(())
    }
}
