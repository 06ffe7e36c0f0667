//! The service's own HSM keys (the credential sealing key, the audit digest key, the import
//! token key): each is made once, replicated like every key, and marked as made by a store
//! setting. The setting also records the check value of the key's copies, read when it was
//! made ([`crate::kms::vault::NewKey`]), and every start hands that value to the vault, so a
//! copy that differs (a generation an HSM finished after the service had made the key on
//! another) is quarantined at first use, never used, as for KMS keys.
//!
//! The setting's value, a versioned codec: `v1` (made before check values were recorded at
//! creation, or made with none) or `v2:` and the check value in lowercase hex.

use super::error::KmsError;
use super::service::store_blocking;
use super::vault::{KeyKind, KeyVault, ObjectId, CHECK_LEN};
use crate::store::MetadataStore;
use std::sync::Arc;

/// The setting value of a key made with no recorded check value.
const V1: &[u8] = b"v1";
/// The prefix of a setting value that records the check value.
const V2_PREFIX: &[u8] = b"v2:";

/// The setting value that marks a key as made, with its check value if it has one.
pub(crate) fn mark(check: Option<[u8; CHECK_LEN]>) -> Vec<u8> {
    match check {
        None => V1.to_vec(),
        Some(v) => [V2_PREFIX, hex::encode(v).as_bytes()].concat(),
    }
}

/// The check value a setting value records (`None` for `v1` or anything unreadable).
pub(crate) fn recorded_check(setting: &[u8]) -> Option<[u8; CHECK_LEN]> {
    let hexed = setting.strip_prefix(V2_PREFIX)?;
    <[u8; CHECK_LEN]>::try_from(hex::decode(hexed).ok()?).ok()
}

/// One of the service's own keys.
pub(crate) struct InternalKey {
    /// Its objects' `CKA_ID`.
    pub object: fn() -> ObjectId,
    /// Its objects' label.
    pub label: &'static str,
    /// Its kind.
    pub kind: KeyKind,
    /// The store setting present once it exists.
    pub setting: &'static str,
}

impl InternalKey {
    /// Make the key in the HSMs unless the store says it exists; either way, have the vault
    /// expect its recorded check value. The store is read and written off the async
    /// workers.
    pub(crate) async fn ensure(
        &self,
        vault: &dyn KeyVault,
        store: &Arc<dyn MetadataStore>,
    ) -> Result<(), KmsError> {
        let setting = self.setting;
        if let Some(marked) = store_blocking(store, move |s| s.get_setting(setting)).await? {
            if let Some(v) = recorded_check(&marked) {
                vault.expect_check_values(vec![((self.object)(), self.kind, v)]);
            }
            return Ok(());
        }
        let made = vault
            .create_key(&(self.object)(), self.label, self.kind)
            .await?;
        let marked = mark(made.check_value);
        store_blocking(store, move |s| s.put_setting(setting, &marked)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_check_value_survives_the_setting() {
        let v = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(mark(Some(v)), b"v2:0123456789abcdef");
        assert_eq!(recorded_check(&mark(Some(v))), Some(v));
        assert_eq!(mark(None), b"v1");
        assert_eq!(recorded_check(b"v1"), None);
        assert_eq!(recorded_check(b"v2:0123"), None);
        assert_eq!(recorded_check(b"v2:0123456789abcdeg"), None);
        assert_eq!(recorded_check(b"v3:0123456789abcdef"), None);
    }

    proptest! {
        #[test]
        fn reading_a_setting_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = recorded_check(&bytes);
            let mut v2 = V2_PREFIX.to_vec();
            v2.extend(&bytes);
            let _ = recorded_check(&v2);
        }

        #[test]
        fn every_check_value_reads_back(v in any::<[u8; CHECK_LEN]>()) {
            prop_assert_eq!(recorded_check(&mark(Some(v))), Some(v));
        }
    }
}
