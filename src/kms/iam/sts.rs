//! STS `AssumeRole`: the role's trust policy decides (through the policy engine, with the
//! caller's identity policies where the trust policy delegates to the caller's account,
//! and always for a role of another account); the temporary credentials are sealed and
//! stored (they survive a restart until they expire) and handed to the live set at once.

use super::names;
use super::{Ctx, Identities};
use crate::auth::{Credential, Session};
use crate::kms::credentials::{self, root_arn};
use crate::kms::policy::{self, Decision};
use crate::kms::KmsError;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The session length when `DurationSeconds` is absent, and the limit of role chaining.
const DEFAULT_DURATION: i64 = 3600;
/// The shortest session.
const MIN_DURATION: i64 = 900;
/// The longest `MaxSessionDuration` a role may have.
const MAX_DURATION: i64 = 43_200;

/// The parameters of `AssumeRole`.
#[derive(Debug, Clone, Default)]
pub struct AssumeRoleInput<'a> {
    /// `RoleArn`.
    pub role_arn: &'a str,
    /// `RoleSessionName`.
    pub session_name: &'a str,
    /// `DurationSeconds`.
    pub duration_seconds: Option<i64>,
    /// Whether a session policy (`Policy` or `PolicyArns`) was given: not supported.
    pub session_policy: bool,
}

/// The answer of `AssumeRole`.
pub struct AssumedRole {
    /// The temporary credential, for the live set.
    pub credential: Credential,
    /// The session token, shown once.
    pub session_token: Zeroizing<String>,
    /// When the credential expires.
    pub expiration: OffsetDateTime,
    /// `AROA…:session`.
    pub assumed_role_id: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub arn: String,
}

impl Identities {
    /// STS `AssumeRole`.
    pub async fn assume_role(
        &self,
        ctx: &Ctx<'_>,
        input: &AssumeRoleInput<'_>,
    ) -> Result<AssumedRole, KmsError> {
        let p = ctx.principal;
        let role_arn = input.role_arn;
        if role_arn.len() < 20 {
            return Err(names::invalid(
                "roleArn",
                role_arn,
                "Member must have length greater than or equal to 20",
            ));
        }
        if role_arn.len() > 2048 {
            return Err(names::invalid(
                "roleArn",
                role_arn,
                "Member must have length less than or equal to 2048",
            ));
        }
        names::check_session_name(input.session_name)?;
        if let Some(d) = input.duration_seconds {
            names::check_range("durationSeconds", d, MIN_DURATION, MAX_DURATION)?;
        }
        if input.session_policy {
            return Err(KmsError::Validation(
                "Session policies (Policy, PolicyArns) are not supported by this service; \
                 put the permissions on the role instead."
                    .into(),
            ));
        }
        let Some((account, path, name)) = names::split_arn(role_arn, "role") else {
            return Err(KmsError::Validation(format!("{role_arn} is invalid")));
        };
        let denied = || {
            KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                p.arn
            ))
        };
        if p.session.is_none() && p.arn == root_arn(&p.account_id) {
            return Err(KmsError::AccessDenied(
                "Roles may not be assumed by root accounts.".into(),
            ));
        }
        let role = self
            .state
            .read()
            .role(account, name)
            .filter(|r| r.row.path == path && r.row.role_name == name)
            .cloned()
            .ok_or_else(denied)?;
        let caller = self.caller(p)?;
        let req = policy::Request::new("sts:AssumeRole", role_arn, caller);
        let identity = self.policies_for(p);
        let trusted = policy::authorize(
            &req,
            Some(&role.trust),
            identity.iter().map(AsRef::as_ref),
            false,
        );
        // Another account's role: the caller's own account must allow it too.
        let own = account == p.account_id
            || policy::authorize(&req, None, identity.iter().map(AsRef::as_ref), false)
                == Decision::Allowed(policy::AllowedBy::IdentityPolicy);
        if !trusted.is_allowed() || !own {
            return Err(denied());
        }
        let duration = input.duration_seconds.unwrap_or(DEFAULT_DURATION);
        if p.session.is_some() && duration > DEFAULT_DURATION {
            return Err(KmsError::Validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles \
                 assumed by role chaining."
                    .into(),
            ));
        }
        if duration > i64::from(role.row.max_session_duration) {
            return Err(KmsError::Validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                    .into(),
            ));
        }
        let now = crate::kms::model::epoch_seconds::truncate(ctx.now);
        let expiration = now + time::Duration::seconds(duration);
        let arn = format!(
            "arn:aws:sts::{account}:assumed-role/{}/{}",
            role.row.role_name, input.session_name
        );
        let session = Session {
            role_arn: role_arn.to_string(),
            role_id: role.row.role_id.clone(),
            session_name: input.session_name.to_string(),
        };
        let keys = credentials::create_session(
            ctx.vault,
            &self.store,
            account,
            &arn,
            session,
            expiration,
            now,
        )
        .await?;
        tracing::info!(
            target: "hsm_kms::audit",
            access_key_id = %keys.credential.access_key_id,
            principal = %p.arn,
            assumed = %arn,
            expiration = %expiration,
            "role assumed"
        );
        Ok(AssumedRole {
            credential: keys.credential,
            session_token: keys.session_token,
            expiration,
            assumed_role_id: format!("{}:{}", role.row.role_id, input.session_name),
            arn,
        })
    }
}
