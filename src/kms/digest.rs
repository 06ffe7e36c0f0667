//! Signed digests of the audit trail: the service-owned HSM key that authenticates them
//! (created once, replicated to every HSM like the credential-sealing key), the digest's
//! content and canonical bytes ([`Digest`]), and the port the trail's writer and
//! `hsm-kms audit verify` use to MAC and check them ([`DigestSigner`], HSM adapter
//! [`HsmDigestKey`]).
//!
//! A digest names a range of trail records `from_seq..=to_seq` and carries `hash`, the
//! SHA-256 of record `to_seq`'s line. Through the hash chain (every line holds the hash of
//! the one before) that hash commits to every record up to `to_seq`, so a record rewritten
//! with a recomputed chain, or digested records cut off, no longer match a digest whose
//! HMAC only the HSMs can make. `from_seq` is the first record since the previous digest
//! (informational: coverage is by the chain).
//!
//! HMAC-SHA256 rather than ECDSA: the vault already makes and replicates HMAC keys, a MAC
//! is one HSM call, and a verifier must open the HSMs anyway (`audit verify` does, like
//! `account create`). The price: anyone who may use the key through the HSMs can also make
//! a digest, whereas an ECDSA public key would let auditors verify offline without that
//! power.

use super::error::KmsError;
use super::internal_keys::InternalKey;
use super::vault::{KeyKind, KeyVault, ObjectId};
use crate::pkix::Hash;
use crate::store::MetadataStore;
use std::sync::Arc;

/// `CKA_ID` of the HSM key that authenticates audit digests.
pub const DIGEST_KEY_ID: &str = "hsm-kms/audit-digest-key";
/// The label of the digest key's objects in every HSM.
pub(crate) const DIGEST_KEY_LABEL: &str = "hsm-kms audit digest key";
/// The store setting present once the digest key exists.
const DIGEST_SETTING: &str = "audit_digest_key";
/// The `algorithm` of every digest written.
pub const DIGEST_ALGORITHM: &str = "HMAC_SHA_256";
/// The digest key's kind: a 32-byte HMAC key.
pub(crate) const DIGEST_KEY_KIND: KeyKind = KeyKind::Hmac(32);

/// The object of the digest key.
pub(crate) fn digest_key() -> ObjectId {
    ObjectId::new(DIGEST_KEY_ID)
}

/// Create the digest key in the HSMs (replicated to every one) unless the store says it
/// exists; either way the vault expects its recorded check value.
pub async fn ensure_digest_key(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
) -> Result<(), KmsError> {
    DIGEST_KEY.ensure(vault, store).await
}

/// The digest key, as one of the service's own keys.
const DIGEST_KEY: InternalKey = InternalKey {
    object: digest_key,
    label: DIGEST_KEY_LABEL,
    kind: DIGEST_KEY_KIND,
    setting: DIGEST_SETTING,
};

/// One digest, as written in the trail (`{"seq":N,"prev":"…","digest":{…}}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest {
    /// The first record since the previous digest.
    pub from_seq: u64,
    /// The last record covered.
    pub to_seq: u64,
    /// SHA-256 (hex) of record `to_seq`'s line: by the chain, of every record up to it.
    pub hash: String,
    /// When it was made (ISO 8601, UTC).
    pub time: String,
    /// The key's `CKA_ID`.
    pub key: String,
    /// `HMAC_SHA_256`.
    pub algorithm: String,
    /// The MAC over [`Digest::canonical`], base64.
    pub signature: String,
}

impl Digest {
    /// The bytes the MAC is computed over: a version label and every member but the
    /// signature, one per line.
    pub fn canonical(&self) -> Vec<u8> {
        format!(
            "hsm-kms audit digest v1\nfrom_seq={}\nto_seq={}\nhash={}\ntime={}\nkey={}\nalgorithm={}\n",
            self.from_seq, self.to_seq, self.hash, self.time, self.key, self.algorithm
        )
        .into_bytes()
    }
}

/// What makes and checks digest MACs (the HSMs in the service; a fake in tests).
#[async_trait::async_trait]
pub trait DigestSigner: Send + Sync {
    /// The key's name written in digests.
    fn key(&self) -> &str;
    /// The MAC of `canonical`.
    async fn sign(&self, canonical: Vec<u8>) -> Result<Vec<u8>, KmsError>;
    /// Whether `mac` is the MAC of `canonical`.
    async fn verify(&self, canonical: Vec<u8>, mac: &[u8]) -> Result<bool, KmsError> {
        let want = self.sign(canonical).await?;
        Ok(subtle::ConstantTimeEq::ct_eq(want.as_slice(), mac).into())
    }
}

/// The digest key inside the HSMs: every MAC is computed there.
pub struct HsmDigestKey {
    vault: Arc<dyn KeyVault>,
}

impl HsmDigestKey {
    /// The digest key held by `vault`'s HSMs.
    pub fn new(vault: Arc<dyn KeyVault>) -> Self {
        HsmDigestKey { vault }
    }
}

#[async_trait::async_trait]
impl DigestSigner for HsmDigestKey {
    fn key(&self) -> &str {
        DIGEST_KEY_ID
    }

    async fn sign(&self, canonical: Vec<u8>) -> Result<Vec<u8>, KmsError> {
        Ok(self
            .vault
            .mac(&digest_key(), Hash::Sha256, canonical)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kms::vault::fake::FakeVault;

    #[tokio::test]
    async fn the_mac_is_made_in_the_hsms_and_binds_every_member() {
        let vault: Arc<dyn KeyVault> = Arc::new(FakeVault::new(2));
        let store: Arc<dyn MetadataStore> =
            Arc::new(crate::store::SqliteStore::open_in_memory().unwrap());
        let key = HsmDigestKey::new(vault.clone());
        // No key yet: nothing can be signed.
        assert!(key.sign(b"x".to_vec()).await.is_err());
        ensure_digest_key(vault.as_ref(), &store).await.unwrap();
        ensure_digest_key(vault.as_ref(), &store).await.unwrap();
        let d = Digest {
            from_seq: 0,
            to_seq: 9,
            hash: "ab".repeat(32),
            time: "2024-05-01T00:00:00Z".into(),
            key: DIGEST_KEY_ID.into(),
            algorithm: DIGEST_ALGORITHM.into(),
            signature: String::new(),
        };
        let mac = key.sign(d.canonical()).await.unwrap();
        assert_eq!(mac.len(), 32);
        assert!(key.verify(d.canonical(), &mac).await.unwrap());
        let moved = Digest { to_seq: 8, ..d };
        assert!(!key.verify(moved.canonical(), &mac).await.unwrap());
    }
}
