//! `HsmCluster` as the domain's [`KeyVault`] port: translates the domain's vocabulary
//! (object ids, key kinds, signature schemes) into cluster calls and `HsmError` into
//! [`VaultError`], keeping the HSM's own message (HSM name, PKCS#11 function and return
//! value) for the logs.

use super::cluster::HsmCluster;
use super::error::HsmError;
use super::{NodeState, IV_LEN};
use crate::kms::vault::{
    DataKeyPair, HsmStatus, ImportWrapping, KeyKind, KeyVault, NewKey, ObjectId, PairSpec, Sealed,
    SealedDataKey, SignScheme, VaultError, WrappedMaterial, CHECK_LEN,
};
use crate::pkix::{Curve, Hash};
use zeroize::Zeroizing;

impl From<HsmError> for VaultError {
    fn from(e: HsmError) -> VaultError {
        match e {
            HsmError::InvalidCiphertext => VaultError::InvalidCiphertext,
            HsmError::InvalidInput(m) => VaultError::InvalidInput(m),
            HsmError::WrongKeyMaterial(m) => VaultError::WrongKeyMaterial(m),
            HsmError::Unsupported { hsm, mechanism } => VaultError::Unsupported {
                mechanism,
                detail: hsm,
            },
            // Retryable, and answered as `DependencyTimeoutException` by the domain; a full
            // key generation lane (`KeygenBusy`) is the throttling case.
            HsmError::Timeout { .. }
            | HsmError::NodeDown { .. }
            | HsmError::Busy { .. }
            | HsmError::KeygenBusy { .. }
            | HsmError::KeygenTimeout { .. }
            | HsmError::Unconfirmed(_) => VaultError::Unavailable(e.to_string()),
            HsmError::NotEnoughHsms { healthy, needed } => {
                VaultError::TooFewCopies { healthy, needed }
            }
            other => VaultError::Failed {
                retryable: other.retryable(),
                message: other.to_string(),
            },
        }
    }
}

#[async_trait::async_trait]
impl KeyVault for HsmCluster {
    async fn create_key(
        &self,
        id: &ObjectId,
        label: &str,
        k: KeyKind,
    ) -> Result<NewKey, VaultError> {
        let created = self.create_checked(id.as_bytes(), label, k).await?;
        let public_key = match k {
            KeyKind::Pair(..) => Some(created.spki()?),
            KeyKind::Aes | KeyKind::Hmac(_) => None,
        };
        Ok(NewKey {
            public_key,
            check_value: created.check,
        })
    }

    async fn destroy_key(&self, id: &ObjectId) -> Result<(), VaultError> {
        Ok(self.destroy_key_objects(id.as_bytes()).await?)
    }

    async fn replicate_missing(
        &self,
        keys: &[(ObjectId, String, KeyKind)],
    ) -> Result<usize, VaultError> {
        let all: Vec<(Vec<u8>, String, KeyKind)> = keys
            .iter()
            .map(|(id, label, k)| (id.as_bytes().to_vec(), label.clone(), *k))
            .collect();
        Ok(self.replicate_missing_kinds(&all).await?)
    }

    async fn check_value(
        &self,
        id: &ObjectId,
        kind: KeyKind,
    ) -> Result<Option<[u8; CHECK_LEN]>, VaultError> {
        Ok(HsmCluster::check_value(self, id.as_bytes(), kind).await?)
    }

    fn reverify_copies(&self) {
        HsmCluster::reverify_copies(self);
    }

    fn expect_check_values(&self, values: Vec<(ObjectId, KeyKind, [u8; CHECK_LEN])>) {
        HsmCluster::expect_check_values(
            self,
            values
                .into_iter()
                .map(|(id, kind, v)| (id.as_bytes().to_vec(), kind, v))
                .collect(),
        );
    }

    async fn encrypt(
        &self,
        id: &ObjectId,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Sealed, VaultError> {
        Ok(HsmCluster::encrypt(self, id.as_bytes(), aad, plaintext).await?)
    }

    async fn decrypt(
        &self,
        id: &ObjectId,
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        Ok(HsmCluster::decrypt(self, id.as_bytes(), iv, aad, ciphertext).await?)
    }

    async fn generate_data_key(
        &self,
        id: &ObjectId,
        n: usize,
        aad: Vec<u8>,
    ) -> Result<SealedDataKey, VaultError> {
        Ok(HsmCluster::generate_data_key(self, id.as_bytes(), n, aad).await?)
    }

    async fn random(&self, n: usize) -> Result<Vec<u8>, VaultError> {
        Ok(HsmCluster::random(self, n).await?)
    }

    async fn sign(
        &self,
        id: &ObjectId,
        s: SignScheme,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError> {
        Ok(HsmCluster::sign(self, id.as_bytes(), s, input).await?)
    }

    async fn verify(
        &self,
        id: &ObjectId,
        s: SignScheme,
        input: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, VaultError> {
        Ok(HsmCluster::verify(self, id.as_bytes(), s, input, signature).await?)
    }

    async fn mac(
        &self,
        id: &ObjectId,
        hash: Hash,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError> {
        Ok(self.hmac(id.as_bytes(), hash, message).await?)
    }

    async fn rsa_oaep_decrypt(
        &self,
        id: &ObjectId,
        hash: Hash,
        modulus_len: usize,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        Ok(
            HsmCluster::rsa_oaep_decrypt(self, id.as_bytes(), hash, modulus_len, ciphertext)
                .await?,
        )
    }

    async fn derive_shared_secret(
        &self,
        id: &ObjectId,
        curve: Curve,
        peer_point: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        Ok(self.ecdh(id.as_bytes(), curve, peer_point).await?)
    }

    async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, VaultError> {
        Ok(HsmCluster::generate_data_key_pair(self, spec).await?)
    }

    fn kind_unavailable(&self, kind: KeyKind) -> Option<String> {
        HsmCluster::kind_unavailable(self, kind)
    }

    fn import_unsupported(&self, wrapping: ImportWrapping) -> Option<String> {
        HsmCluster::import_unsupported(self, wrapping)
    }

    async fn import_key(
        &self,
        wrapped: &WrappedMaterial,
        id: &ObjectId,
        label: &str,
        kind: KeyKind,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        Ok(HsmCluster::import_key(self, wrapped, id.as_bytes(), label, kind).await?)
    }

    async fn imported_check_value(
        &self,
        wrapped: &WrappedMaterial,
        id: &ObjectId,
        kind: KeyKind,
    ) -> Result<[u8; CHECK_LEN], VaultError> {
        Ok(HsmCluster::imported_check_value(self, wrapped, id.as_bytes(), kind).await?)
    }

    async fn inventory(&self) -> Vec<(String, bool, Vec<ObjectId>)> {
        HsmCluster::inventory(self)
            .await
            .into_iter()
            .map(|(hsm, usable, ids)| {
                let ids = ids
                    .into_iter()
                    .map(|id| ObjectId::new(String::from_utf8_lossy(&id).into_owned()))
                    .collect();
                (hsm, usable, ids)
            })
            .collect()
    }

    fn take_state_changes(&self) -> Vec<crate::kms::vault::StateChange> {
        HsmCluster::take_state_changes(self)
            .into_iter()
            .map(|(hsm, from, to)| crate::kms::vault::StateChange {
                hsm,
                from: from.as_str(),
                to: to.as_str(),
            })
            .collect()
    }

    fn health(&self) -> Vec<HsmStatus> {
        HsmCluster::health(self)
            .into_iter()
            .map(|h| HsmStatus {
                name: h.name.clone(),
                healthy: h.state == NodeState::Healthy,
                detail: serde_json::to_value(&h).unwrap_or(serde_json::Value::Null),
                gauges: crate::kms::vault::HsmGauges {
                    state: h.state.as_str(),
                    busy_sessions: h.busy_sessions,
                    queued: h.queued,
                    errors: h.errors,
                    failovers: h.failovers,
                    reinitializations: h.reinitializations,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsError;

    #[test]
    fn a_full_or_slow_key_generation_lane_is_a_retryable_dependency_timeout() {
        for e in [
            HsmError::KeygenBusy { hsm: "a".into() },
            HsmError::KeygenTimeout {
                hsm: "a".into(),
                ms: 60_000,
            },
        ] {
            let v = VaultError::from(e);
            assert!(matches!(v, VaultError::Unavailable(_)), "{v}");
            assert!(v.retryable());
            assert_eq!(KmsError::from(v).aws_type(), "DependencyTimeoutException");
        }
    }
}
