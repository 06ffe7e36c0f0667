//! In-memory [`CredentialLookup`]s: a fixed map from access key id to [`Credential`]
//! ([`StaticCredentials`], for tests), and the running service's set that a background task
//! replaces as credentials are created or removed ([`LiveCredentials`]).

use super::{Credential, CredentialLookup};
use std::collections::HashMap;
use std::sync::Arc;

/// The credentials a running service accepts, replaced as a whole when the stored set
/// changes (an account created by `hsm-kms account create` while the service runs).
#[derive(Debug, Default)]
pub struct LiveCredentials {
    current: parking_lot::RwLock<Arc<StaticCredentials>>,
}

impl LiveCredentials {
    /// A live set starting with `initial`.
    pub fn new(initial: StaticCredentials) -> Self {
        Self {
            current: parking_lot::RwLock::new(Arc::new(initial)),
        }
    }

    /// The set now.
    pub fn snapshot(&self) -> Arc<StaticCredentials> {
        self.current.read().clone()
    }

    /// Replace the whole set.
    pub fn replace(&self, next: StaticCredentials) {
        *self.current.write() = Arc::new(next);
    }

    /// Replace the whole set with `next` only if it is still `based_on` (the snapshot
    /// `next` was computed from); `false`, and nothing changed, when a change was made
    /// meanwhile ([`LiveCredentials::upsert`], …), so that a periodic reload never undoes
    /// a change it did not see.
    pub fn replace_if(&self, based_on: &Arc<StaticCredentials>, next: StaticCredentials) -> bool {
        let mut current = self.current.write();
        if !Arc::ptr_eq(&current, based_on) {
            return false;
        }
        *current = Arc::new(next);
        true
    }

    /// Add (or replace) one credential, at once.
    pub fn upsert(&self, credential: Credential) {
        let mut current = self.current.write();
        let mut next = StaticCredentials::clone(&current);
        next.insert(credential);
        *current = Arc::new(next);
    }

    /// Make one credential active or inactive, at once (nothing if unknown).
    pub fn set_active(&self, access_key_id: &str, active: bool) {
        let mut current = self.current.write();
        let Some(c) = current.get(access_key_id) else {
            return;
        };
        let mut changed = Credential::clone(c);
        changed.active = active;
        let mut next = StaticCredentials::clone(&current);
        next.insert(changed);
        *current = Arc::new(next);
    }

    /// Forget one credential, at once.
    pub fn remove(&self, access_key_id: &str) {
        let mut current = self.current.write();
        if current.get(access_key_id).is_none() {
            return;
        }
        let mut next = StaticCredentials::clone(&current);
        next.by_access_key.remove(access_key_id);
        *current = Arc::new(next);
    }
}

impl CredentialLookup for LiveCredentials {
    fn lookup(&self, access_key_id: &str) -> Option<Arc<Credential>> {
        self.current.read().lookup(access_key_id)
    }
}

/// A fixed set of credentials keyed by access key id.
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials {
    by_access_key: HashMap<String, Arc<Credential>>,
}

impl StaticCredentials {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a credential under its access key id.
    pub fn insert(&mut self, credential: Credential) {
        self.by_access_key
            .insert(credential.access_key_id.clone(), Arc::new(credential));
    }

    /// Number of credentials held.
    pub fn len(&self) -> usize {
        self.by_access_key.len()
    }

    /// Whether no credentials are held.
    pub fn is_empty(&self) -> bool {
        self.by_access_key.is_empty()
    }

    /// The credential with this access key id, shared.
    pub fn get(&self, access_key_id: &str) -> Option<&Arc<Credential>> {
        self.by_access_key.get(access_key_id)
    }

    /// Adds a shared credential under its access key id.
    pub fn insert_shared(&mut self, credential: Arc<Credential>) {
        self.by_access_key
            .insert(credential.access_key_id.clone(), credential);
    }
}

impl FromIterator<Credential> for StaticCredentials {
    fn from_iter<I: IntoIterator<Item = Credential>>(iter: I) -> Self {
        let mut s = Self::new();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl CredentialLookup for StaticCredentials {
    fn lookup(&self, access_key_id: &str) -> Option<Arc<Credential>> {
        self.by_access_key.get(access_key_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_only_inserted_keys() {
        let store: StaticCredentials = [Credential::new(
            "AKID1",
            "topsecretvalue",
            "111122223333",
            "arn:1",
        )]
        .into_iter()
        .collect();
        assert_eq!(store.len(), 1);
        assert!(!store.is_empty());
        assert_eq!(store.lookup("AKID1").unwrap().principal_arn, "arn:1");
        assert!(store.lookup("AKID2").is_none());
        assert!(store.lookup("akid1").is_none());
        // The store's Debug goes through Credential's redacting Debug.
        assert!(!format!("{store:?}").contains("topsecretvalue"));
    }
}
