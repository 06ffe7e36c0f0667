//! In-memory [`CredentialLookup`]s: a fixed map from access key id to [`Credential`]
//! ([`StaticCredentials`], for tests), and the running service's set that a background task
//! replaces as credentials are created or removed ([`LiveCredentials`]); and what changed
//! to long-term access keys between two sets ([`access_key_changes`]), which the reload
//! records as changes made outside this service's API.

use super::{Credential, CredentialLookup};
use std::collections::HashMap;
use std::sync::Arc;

/// The credentials a running service accepts, replaced as a whole when the stored set
/// changes (an account created by `hsm-kms account create` while the service runs).
#[derive(Debug, Default)]
pub struct LiveCredentials {
    current: parking_lot::RwLock<Arc<StaticCredentials>>,
    /// See [`LiveCredentials::lock_changes`].
    changes: tokio::sync::Mutex<()>,
}

impl LiveCredentials {
    /// A live set starting with `initial`.
    pub fn new(initial: StaticCredentials) -> Self {
        Self {
            current: parking_lot::RwLock::new(Arc::new(initial)),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Held by whoever changes an access key in the store and then in this set (the IAM
    /// calls), from before the store write until after the set's change, and by the
    /// periodic reload from before its snapshot until after its replace. The reload then
    /// sees each such change in both the set and the store, or in neither: a difference
    /// it finds was made elsewhere (the operator CLI, another process sharing the store).
    pub async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
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

/// What became of a long-term access key between two credential sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKeyChangeKind {
    /// A key that was not there (or was there for another principal).
    Created,
    /// The same key, `Active` or `Inactive` now.
    StatusChanged,
    /// A key that is no longer there (or no longer accepted).
    Deleted,
}

/// A long-term access key that changed between two credential sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyChange {
    /// What happened to it.
    pub kind: AccessKeyChangeKind,
    /// Its id (`AKIA…`; not a secret: CloudTrail records it).
    pub access_key_id: String,
    /// Its account.
    pub account_id: String,
    /// The principal it authenticates.
    pub principal_arn: String,
    /// Its status afterwards (before, for a deleted key).
    pub active: bool,
}

/// The long-term access keys created, changed in status or deleted from `before` to
/// `after`, by access key id. Role session credentials are left out: they come and go
/// with STS calls (recorded as such) and their expiry.
pub fn access_key_changes(
    before: &StaticCredentials,
    after: &StaticCredentials,
) -> Vec<AccessKeyChange> {
    let change = |kind, c: &Credential| AccessKeyChange {
        kind,
        access_key_id: c.access_key_id.clone(),
        account_id: c.account_id.clone(),
        principal_arn: c.principal_arn.clone(),
        active: c.active,
    };
    let long_term = |s: &StaticCredentials| {
        s.by_access_key
            .values()
            .filter(|c| c.session.is_none())
            .cloned()
            .collect::<Vec<_>>()
    };
    // The same key: long-term on both sides, for the same principal.
    let same = |a: &Credential, b: &Credential| {
        a.session.is_none()
            && b.session.is_none()
            && a.account_id == b.account_id
            && a.principal_arn == b.principal_arn
    };
    let mut out = Vec::new();
    for old in long_term(before) {
        match after.get(&old.access_key_id) {
            Some(new) if same(&old, new) => {
                if new.active != old.active {
                    out.push(change(AccessKeyChangeKind::StatusChanged, new));
                }
            }
            _ => out.push(change(AccessKeyChangeKind::Deleted, &old)),
        }
    }
    for new in long_term(after) {
        if !before
            .get(&new.access_key_id)
            .is_some_and(|old| same(old, &new))
        {
            out.push(change(AccessKeyChangeKind::Created, &new));
        }
    }
    // Deleted before created for the same id (a key now another principal's).
    out.sort_by(|a, b| {
        (
            a.access_key_id.as_str(),
            a.kind != AccessKeyChangeKind::Deleted,
        )
            .cmp(&(
                b.access_key_id.as_str(),
                b.kind != AccessKeyChangeKind::Deleted,
            ))
    });
    out
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

    #[test]
    fn access_key_changes_name_long_term_keys_only() {
        let key = |id: &str, account: &str, arn: &str, active: bool| {
            let mut c = Credential::new(id, "secret", account, arn);
            c.active = active;
            c
        };
        let session = |id: &str| {
            let mut c = key(
                id,
                "111122223333",
                "arn:aws:sts::111122223333:assumed-role/r/s",
                true,
            );
            c.session = Some(crate::auth::SessionCredential {
                token_sha256: [7; 32],
                expires_at: time::OffsetDateTime::UNIX_EPOCH,
                session: crate::auth::Session {
                    role_arn: "arn:aws:iam::111122223333:role/r".into(),
                    role_id: "AROAEXAMPLE".into(),
                    session_name: "s".into(),
                },
            });
            c
        };
        let before: StaticCredentials = [
            key("AKIAKEPT", "111122223333", "arn:root", true),
            key("AKIAREVOKED", "111122223333", "arn:root", true),
            key("AKIAGONE", "111122223333", "arn:root", false),
            key("AKIAMOVED", "111122223333", "arn:root", true),
            session("ASIAOLD"),
        ]
        .into_iter()
        .collect();
        let after: StaticCredentials = [
            key("AKIAKEPT", "111122223333", "arn:root", true),
            key("AKIAREVOKED", "111122223333", "arn:root", false),
            key("AKIAMOVED", "444455556666", "arn:other", true),
            key("AKIANEW", "444455556666", "arn:other", true),
            session("ASIANEW"),
        ]
        .into_iter()
        .collect();
        let changes = access_key_changes(&before, &after);
        let got: Vec<(AccessKeyChangeKind, &str, &str, bool)> = changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.access_key_id.as_str(),
                    c.account_id.as_str(),
                    c.active,
                )
            })
            .collect();
        use AccessKeyChangeKind::*;
        assert_eq!(
            got,
            vec![
                (Deleted, "AKIAGONE", "111122223333", false),
                (Deleted, "AKIAMOVED", "111122223333", true),
                (Created, "AKIAMOVED", "444455556666", true),
                (Created, "AKIANEW", "444455556666", true),
                (StatusChanged, "AKIAREVOKED", "111122223333", false),
            ]
        );
        assert!(access_key_changes(&after, &after).is_empty());
    }
}
