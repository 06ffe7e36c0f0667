//! Object handles: the typed class of the objects the layer keeps ([`ObjectKind`]), the
//! well-known `CKA_ID`s, and the handle cache of one module instance.
//!
//! Handles are valid only within the login of the instance that found them (hsm-facts.md
//! §0), so a [`HandleCache`] belongs to one instance and carries its login epoch; a
//! re-initialization starts a new cache. The cache is warmed with one find over the token at
//! start, so the request path never calls `C_FindObjects` for a known key.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use parking_lot::RwLock;
use std::collections::HashMap;

/// `CKA_ID` of the cluster wrapping key present in every token.
pub const CWK_ID: &[u8] = b"hsm-kms/cluster-wrapping-key";

/// `CKA_ID` of the per-HSM canary key used by health probes.
pub(super) const CANARY_ID: &[u8] = b"hsm-kms/canary";

/// The object classes the layer keeps, by `CKA_CLASS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(super) enum ObjectKind {
    /// `CKO_SECRET_KEY`: AES and HMAC keys.
    Secret,
    /// `CKO_PRIVATE_KEY`: the private half of a key pair.
    Private,
    /// `CKO_PUBLIC_KEY`: the public half of a key pair, kept as a token object.
    Public,
}

impl ObjectKind {
    /// Every kind, in the order objects of one `CKA_ID` are destroyed.
    pub(super) const ALL: [ObjectKind; 3] =
        [ObjectKind::Private, ObjectKind::Public, ObjectKind::Secret];

    pub(super) fn class(self) -> ObjectClass {
        match self {
            ObjectKind::Secret => ObjectClass::SECRET_KEY,
            ObjectKind::Private => ObjectClass::PRIVATE_KEY,
            ObjectKind::Public => ObjectClass::PUBLIC_KEY,
        }
    }

    fn of_class(c: ObjectClass) -> Option<ObjectKind> {
        if c == ObjectClass::SECRET_KEY {
            Some(ObjectKind::Secret)
        } else if c == ObjectClass::PRIVATE_KEY {
            Some(ObjectKind::Private)
        } else if c == ObjectClass::PUBLIC_KEY {
            Some(ObjectKind::Public)
        } else {
            None
        }
    }
}

/// Cache key: object kind and `CKA_ID`.
type ObjKey = (ObjectKind, Vec<u8>);

/// Handles of one module instance's objects, valid for its login epoch only.
pub(super) struct HandleCache {
    epoch: u64,
    map: RwLock<HashMap<ObjKey, ObjectHandle>>,
    /// Objects skipped at warm-up because they could not be read.
    unreadable: usize,
    /// Secret keys whose copy in this instance matched its recorded check value.
    verified: RwLock<std::collections::HashSet<Vec<u8>>>,
}

impl HandleCache {
    /// Warm a cache for login `epoch` with one find over the whole token (through the
    /// logged-in `session`); objects of other classes or without `CKA_ID` are skipped.
    pub(super) fn warm(
        epoch: u64,
        session: &Session,
    ) -> Result<HandleCache, cryptoki::error::Error> {
        let mut map = HashMap::new();
        let mut unreadable = 0;
        for h in session.find_objects(&[])? {
            let attrs = match session.get_attributes(h, &[AttributeType::Class, AttributeType::Id])
            {
                Ok(a) => a,
                Err(e) if super::error::is_unreadable_object(&e) => {
                    // One damaged object (e.g. left half-written by an interrupted key
                    // generation) must not keep the whole HSM down.
                    tracing::warn!(handle = %h, error = %e, "skipping an unreadable object of the token");
                    unreadable += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut kind = None;
            let mut id = None;
            for a in attrs {
                match a {
                    Attribute::Class(c) => kind = ObjectKind::of_class(c),
                    Attribute::Id(v) => id = Some(v),
                    _ => {}
                }
            }
            if let (Some(k), Some(id)) = (kind, id) {
                map.insert((k, id), h);
            }
        }
        Ok(HandleCache {
            epoch,
            map: RwLock::new(map),
            unreadable,
            verified: RwLock::default(),
        })
    }

    /// Whether secret key `id`'s copy was verified in this instance.
    pub(super) fn is_verified(&self, id: &[u8]) -> bool {
        self.verified.read().contains(id)
    }

    /// Forget every verification (each copy is checked again at its next use).
    pub(super) fn clear_all_verified(&self) {
        self.verified.write().clear();
    }

    /// Forget that secret key `id`'s copy was verified (it is checked again at its next use).
    pub(super) fn clear_verified(&self, id: &[u8]) {
        self.verified.write().remove(id);
    }

    /// Record that secret key `id`'s copy matched its check value in this instance.
    pub(super) fn set_verified(&self, id: &[u8]) {
        self.verified.write().insert(id.to_vec());
    }

    /// The `CKA_ID` of every object known in this instance (each once, whatever its class).
    pub(super) fn ids(&self) -> Vec<Vec<u8>> {
        let mut ids: Vec<Vec<u8>> = self.map.read().keys().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Objects of the token that could not be read at warm-up (skipped).
    pub(super) fn unreadable(&self) -> usize {
        self.unreadable
    }

    /// The login epoch these handles belong to.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn get(&self, kind: ObjectKind, id: &[u8]) -> Option<ObjectHandle> {
        self.map.read().get(&(kind, id.to_vec())).copied()
    }

    pub(super) fn contains(&self, kind: ObjectKind, id: &[u8]) -> bool {
        self.map.read().contains_key(&(kind, id.to_vec()))
    }

    pub(super) fn insert(&self, kind: ObjectKind, id: &[u8], h: ObjectHandle) {
        self.map.write().insert((kind, id.to_vec()), h);
    }

    pub(super) fn remove(&self, kind: ObjectKind, id: &[u8]) {
        self.map.write().remove(&(kind, id.to_vec()));
    }

    pub(super) fn len(&self) -> usize {
        self.map.read().len()
    }
}
