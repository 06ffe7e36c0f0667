//! Who may call an IAM or STS action: an account's root user may do everything in its own
//! account; a user or a role session needs one of its identity policies to allow
//! `iam:<Action>` on the resource (and none to deny it). Every action names a resource of
//! the caller's own account, so no one reaches another account's IAM entities.

use super::Identities;
use crate::auth::Principal;
use crate::kms::policy::{self, Decision};
use crate::kms::KmsError;

/// AWS's `AccessDenied` for `caller_arn` calling `action` on `resource`.
pub(super) fn denied(caller_arn: &str, action: &str, resource: &str, explicit: bool) -> KmsError {
    KmsError::AccessDenied(if explicit {
        format!(
            "User: {caller_arn} is not authorized to perform: {action} on resource: {resource} \
             with an explicit deny in an identity-based policy"
        )
    } else {
        format!(
            "User: {caller_arn} is not authorized to perform: {action} on resource: {resource} \
             because no identity-based policy allows the {action} action"
        )
    })
}

impl Identities {
    /// Whether `p` may call `action` (`iam:CreateUser`) on `resource` (an ARN in `p`'s
    /// account): `AccessDenied` with AWS's message if not.
    pub(super) fn authorize(
        &self,
        p: &Principal,
        action: &str,
        resource: &str,
    ) -> Result<(), KmsError> {
        let caller = self.caller(p)?;
        let req = policy::Request::new(action, resource, caller);
        let policies = self.policies_for(p);
        match policy::authorize(&req, None, policies.iter().map(AsRef::as_ref), false) {
            Decision::Allowed(_) => Ok(()),
            Decision::ExplicitDeny => Err(denied(&p.arn, action, resource, true)),
            Decision::ImplicitDeny => Err(denied(&p.arn, action, resource, false)),
        }
    }
}
