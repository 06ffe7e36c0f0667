//! IAM identities of every account: who a verified principal is as the policy language
//! sees it ([`Identities::caller`]) and which identity policies apply to it
//! ([`Identities::policies_for`]). Users, roles, their inline policies, access keys and
//! role sessions are managed here (IAM and STS actions); the store is the source of truth
//! and this registry its in-memory, parsed-once copy, updated after every write commits.
//!
//! | file | concern |
//! |---|---|
//! | `names.rs` | names, paths, ids, ARNs and IAM's validation messages |
//! | `registry.rs` | the in-memory copy: users, roles, parsed inline policies; loading |
//! | `legacy.rs` | the start-time migration of credentials of users that have no IAM user |
//! | `authz.rs` | who may call an IAM action: the root of the account, or an identity policy |
//! | `inline.rs` | inline policies of users and roles: one implementation for both |
//! | `users.rs` | users and their access keys; what users' inline policy actions differ in |
//! | `roles.rs` | roles; what roles' inline policy actions differ in |
//! | `sts.rs` | STS `AssumeRole` |

mod authz;
mod inline;
mod legacy;
mod names;
mod registry;
mod roles;
mod sts;
mod users;

pub use inline::PolicyView;
pub use legacy::{LEGACY_POLICY, LEGACY_POLICY_NAME};
pub use roles::{RoleView, DEFAULT_MAX_SESSION};
pub use sts::{AssumeRoleInput, AssumedRole};
pub use users::{
    AccessKeyView, UserPage, UserView, ACCESS_KEYS_PER_USER, ROLE_POLICY_QUOTA, USER_POLICY_QUOTA,
};

use super::error::KmsError;
use super::policy::{Caller, PolicyDocument};
use super::vault::KeyVault;
use crate::auth::Principal;
use crate::store::MetadataStore;
use registry::State;
use std::sync::Arc;
use tracing::Instrument;

/// The identity registry.
pub struct Identities {
    store: Arc<dyn MetadataStore>,
    state: parking_lot::RwLock<State>,
    /// Serializes this node's IAM writes (store commit, then registry update).
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("Identities")
            .field("users", &s.user_count())
            .field("roles", &s.role_count())
            .finish_non_exhaustive()
    }
}

/// What every IAM or STS action needs: who calls, the HSMs (randomness, sealing) and the
/// time.
pub struct Ctx<'a> {
    /// The verified caller.
    pub principal: &'a Principal,
    /// The HSMs, through the domain's port.
    pub vault: &'a dyn KeyVault,
    /// Now, from the injected clock.
    pub now: time::OffsetDateTime,
}

impl Identities {
    /// Load every identity from the store, first giving every credential of an IAM user
    /// ARN without an IAM user behind it (the quick-start `hsm-kms-admin` of older
    /// databases) its user, with full access (`legacy.rs`).
    pub fn load(store: &Arc<dyn MetadataStore>) -> Result<Identities, KmsError> {
        legacy::migrate(store.as_ref())?;
        let state = State::load(store.as_ref())?;
        Ok(Identities {
            store: store.clone(),
            state: parking_lot::RwLock::new(state),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// The principal `p` as the policy language sees it, with its unique id: `AIDA…` for
    /// a user, `AROA…:session` for a role session (and the role's real ARN, path
    /// included), the account id for the root user.
    pub fn caller(&self, p: &Principal) -> Result<Caller, KmsError> {
        let bad = |e: super::policy::PolicyError| KmsError::Internal(format!("principal: {e}"));
        if let Some(s) = &p.session {
            return Ok(Caller::assumed_role(&s.role_arn, &s.session_name)
                .map_err(bad)?
                .with_userid(format!("{}:{}", s.role_id, s.session_name)));
        }
        let caller = Caller::from_arn(&p.arn).map_err(bad)?;
        let id = match caller.username() {
            Some(name) => self.state.read().user_id(&p.account_id, name),
            None => Some(p.account_id.clone()),
        };
        Ok(match id {
            Some(id) => caller.with_userid(id),
            None => caller,
        })
    }

    /// The identity policies that apply to `p`: an IAM user's inline policies, a role
    /// session's role's inline policies (none once the role is deleted, even if one of the
    /// same name is created again); none for an account's root user (IAM allows it
    /// everything).
    pub fn policies_for(&self, p: &Principal) -> Vec<Arc<PolicyDocument>> {
        let state = self.state.read();
        match &p.session {
            Some(s) => state.role_policies(&p.account_id, &s.role_arn, &s.role_id),
            None => match names::split_arn(&p.arn, "user") {
                Some((_, _, name)) => state.user_policies(&p.account_id, name),
                None => Vec::new(),
            },
        }
    }

    /// Whether an IAM user or role ARN names one that exists (its name, in its account;
    /// the path is not compared); role-session ARNs are not checked, as AWS does not.
    pub fn principal_exists(&self, arn: &str) -> bool {
        let state = self.state.read();
        if let Some((account, _, name)) = names::split_arn(arn, "user") {
            return state.user(account, name).is_some();
        }
        if let Some((account, _, name)) = names::split_arn(arn, "role") {
            return state.role(account, name).is_some();
        }
        arn.starts_with("arn:aws:sts::")
    }

    /// Run blocking store work off the runtime's workers, in the caller's span.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetadataStore) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<Result<T, crate::store::StoreError>, KmsError> {
        let store = self.store.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(store.as_ref())))
            .instrument(tracing::Span::current())
            .await
            .map_err(|e| KmsError::Internal(format!("store task: {e}")))
    }
}

/// A store deletion's outcome as IAM answers it: `not_found` for a missing user or role,
/// `DeleteConflict` while it still has what must be deleted first.
fn deleted(
    r: Result<(), crate::store::StoreError>,
    not_found: impl FnOnce() -> KmsError,
) -> Result<(), KmsError> {
    use crate::store::StoreError;
    match r {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => Err(not_found()),
        Err(StoreError::Conflict(what)) => Err(KmsError::Conflict(format!(
            "Cannot delete entity, must delete {what} first."
        ))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
