//! Imported key material (Origin `EXTERNAL`): `GetParametersForImport`,
//! `ImportKeyMaterial`, `DeleteImportedKeyMaterial`, and the maintenance work they leave
//! (expired material and expired wrapping keys destroyed in every HSM, destructions that an
//! HSM did not confirm retried).
//!
//! * **Parameters.** Each `GetParametersForImport` generates a fresh RSA wrapping key pair
//!   inside an HSM (`PairUse::Unwrap`: its private half only unwraps, and what it unwraps is
//!   forced sensitive), replicated to every HSM like any key so that one HSM may fail between
//!   the two calls. Its record (`KeyDoc::import_parameters`) and the import token carry its
//!   expiry, 24 hours later; the maintenance pass destroys it in every HSM after that.
//! * **Import token.** `version ‖ IV ‖ AES-256-GCM(wrapping key id, expiry)` under the
//!   service's own replicated HSM key (`hsm-kms/import-token-key`), with the KMS key's id in
//!   the AAD: a token of another key, or any other bytes, fails authentication in the HSM
//!   (`InvalidImportTokenException`); an authentic token past its expiry is
//!   `ExpiredImportTokenException`.
//! * **Import.** The wrapped material goes to the HSMs as it came: it is unwrapped inside an
//!   HSM under the wrapping key's private half into a token object with the service's own key
//!   template, checked to fit the key spec, copied to every other HSM under the cluster
//!   wrapping key and proven there (`KeyVault::import_key`). Its check value (recorded in
//!   `BackingKey::check_value`) is what tells the same material from different material on
//!   re-import: a re-import is first unwrapped into a throw-away object in one HSM and its
//!   check value compared (`KeyVault::imported_check_value`), so different material never
//!   lands under the key's object id.
//! * **Generations.** Imported material maps onto `KeyDoc::backing`: the first import fills
//!   generation 1; `ImportType=NEW_KEY_MATERIAL` (symmetric keys) adds a generation above the
//!   current one (`PENDING_ROTATION`) that `RotateKeyOnDemand` makes current. Every generation
//!   keeps its object id, so its `KeyMaterialId` and the ciphertexts that name it survive a
//!   deletion and re-import of the same material.

use super::{next_generation, object_id, Entry, Kms, Resolved};
use crate::kms::error::KmsError;
use crate::kms::internal_keys::InternalKey;
use crate::kms::model::{
    b64, epoch_seconds, BackingKey, ImportParameters, ImportedMaterial, KeyDoc,
};
use crate::kms::requests;
use crate::kms::types::{
    ExpirationModel, ImportState, ImportType, KeyId, KeySpec, KeyState, Origin, WrappingAlgorithm,
    WrappingKeySpec,
};
use crate::kms::vault::{
    ImportWrapping, KeyKind, ObjectId, PairSpec, PairUse, WrappedMaterial, CHECK_LEN,
};
use crate::pkix::Hash;
use base64::Engine;
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// `CKA_ID` of the service's key that seals import tokens.
pub const TOKEN_KEY_ID: &str = "hsm-kms/import-token-key";
const TOKEN_KEY_LABEL: &str = "hsm-kms import token key";
/// The store setting present once the token key exists.
const TOKEN_KEY_SETTING: &str = "import_token_key";
const TOKEN_AAD_LABEL: &[u8] = b"hsm-kms import token v1";
const TOKEN_VERSION: u8 = 1;
/// How long a public key and its import token may be used (AWS: 24 hours).
pub(super) const PARAMETERS_VALIDITY: Duration = Duration::hours(24);
/// The latest `ValidTo` AWS accepts: 365 days after the request.
const MAX_VALID_TO: Duration = Duration::days(365);

/// The import token key, as one of the service's own keys.
const TOKEN_KEY: InternalKey = InternalKey {
    object: token_key,
    label: TOKEN_KEY_LABEL,
    kind: KeyKind::Aes,
    setting: TOKEN_KEY_SETTING,
};

/// The object of the import token key.
pub(crate) fn token_key() -> ObjectId {
    ObjectId::new(TOKEN_KEY_ID)
}

/// The service-owned objects of this module (for re-sync).
pub(super) fn service_owned() -> (ObjectId, String, KeyKind) {
    (token_key(), TOKEN_KEY_LABEL.to_string(), KeyKind::Aes)
}

/// `GetParametersForImport` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImportOutput {
    /// `KeyId`: the key's ARN.
    pub key_id: String,
    /// `ImportToken` (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub import_token: Vec<u8>,
    /// `PublicKey`: SPKI DER of the wrapping key (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub public_key: Vec<u8>,
    /// `ParametersValidTo`.
    #[serde(with = "epoch_seconds")]
    pub parameters_valid_to: OffsetDateTime,
}

/// `ImportKeyMaterial` and `DeleteImportedKeyMaterial` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMaterialOutput {
    /// `KeyId`: the key's ARN.
    pub key_id: String,
    /// `KeyMaterialId`: the material imported or deleted.
    pub key_material_id: String,
}

/// What an import token says, once authenticated.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TokenBody {
    /// The wrapping key pair's object id.
    w: ObjectId,
    /// `ParametersValidTo`, epoch milliseconds.
    to: i64,
}

/// The AAD of a key's import tokens: the label and the key id.
fn token_aad(key: &KeyId) -> Vec<u8> {
    [TOKEN_AAD_LABEL, b"\0", key.to_string().as_bytes()].concat()
}

/// The HSM-side wrapping of a `WrappingAlgorithm`, or why it is refused.
fn wrapping_of(alg: WrappingAlgorithm) -> Result<ImportWrapping, KmsError> {
    Ok(match alg {
        WrappingAlgorithm::RsaesOaepSha1 => ImportWrapping::Oaep(Hash::Sha1),
        WrappingAlgorithm::RsaesOaepSha256 => ImportWrapping::Oaep(Hash::Sha256),
        WrappingAlgorithm::RsaAesKeyWrapSha1 => ImportWrapping::RsaAes(Hash::Sha1),
        WrappingAlgorithm::RsaAesKeyWrapSha256 => ImportWrapping::RsaAes(Hash::Sha256),
        WrappingAlgorithm::RsaesPkcs1V15 => {
            return Err(KmsError::Validation(
                "The RSAES_PKCS1_V1_5 wrapping algorithm is no longer supported; use RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1, RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1.".into(),
            ))
        }
        WrappingAlgorithm::Sm2Pke => {
            return Err(KmsError::Unsupported(
                "The SM2PKE wrapping algorithm is only available in China Regions.".into(),
            ))
        }
    })
}

/// Modulus length in bits of a wrapping key spec.
fn wrapping_bits(spec: WrappingKeySpec) -> Result<u32, KmsError> {
    match spec {
        WrappingKeySpec::Rsa2048 => Ok(2048),
        WrappingKeySpec::Rsa3072 => Ok(3072),
        WrappingKeySpec::Rsa4096 => Ok(4096),
        WrappingKeySpec::Sm2 => Err(KmsError::Unsupported(
            "The SM2 wrapping key spec is only available in China Regions.".into(),
        )),
    }
}

/// The HSM kind of a key's material.
fn material_kind(doc: &KeyDoc) -> Result<KeyKind, KmsError> {
    if doc.key_spec == KeySpec::SymmetricDefault {
        return Ok(KeyKind::Aes);
    }
    super::asymmetric::key_kind(doc.key_spec, doc.key_usage)
        .ok_or_else(|| KmsError::Internal(format!("key spec {} has no HSM kind", doc.key_spec)))
}

/// Whether key material of `spec` can be imported here; `Unsupported` with the reason if not.
pub(super) fn check_importable(spec: KeySpec) -> Result<(), KmsError> {
    let why = match spec {
        KeySpec::SymmetricDefault
        | KeySpec::Hmac224
        | KeySpec::Hmac256
        | KeySpec::Hmac384
        | KeySpec::Hmac512
        | KeySpec::Rsa2048
        | KeySpec::Rsa3072
        | KeySpec::Rsa4096
        | KeySpec::EccNistP256
        | KeySpec::EccNistP384
        | KeySpec::EccNistP521
        | KeySpec::EccSecgP256k1 => return Ok(()),
        KeySpec::EccNistEdwards25519 => {
            "the HSMs cannot unwrap Ed25519 private keys (CKK_EC_EDWARDS) with CKM_AES_KEY_WRAP_PAD"
        }
        KeySpec::Sm2 => "SM2 keys exist only in China Regions",
        KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => {
            "ML-DSA key material cannot be imported"
        }
    };
    Err(KmsError::Unsupported(format!(
        "Key material of key spec {} cannot be imported into this key store: {why}.",
        spec.as_str()
    )))
}

/// The key material state of generation `b` of `doc` (`ListKeyRotations`).
pub(super) fn material_state(doc: &KeyDoc, b: &BackingKey) -> &'static str {
    if b.version == doc.current_backing {
        "CURRENT"
    } else if b.version > doc.current_backing {
        "PENDING_ROTATION"
    } else {
        "NON_CURRENT"
    }
}

/// Whether the HSMs hold (and may hold) generation `b`: generated material always, imported
/// material while `IMPORTED`.
pub(super) fn material_present(b: &BackingKey) -> bool {
    b.import
        .as_ref()
        .is_none_or(|i| i.state == ImportState::Imported)
}

/// `KeyMetadata.ExpirationModel` and `ValidTo` of an `EXTERNAL` key: the earliest expiry of
/// the imported material permanently associated with it (pending rotations excluded).
pub(super) fn key_expiry(doc: &KeyDoc) -> (Option<ExpirationModel>, Option<OffsetDateTime>) {
    if doc.origin != Origin::External {
        return (None, None);
    }
    let imported: Vec<&ImportedMaterial> = doc
        .backing
        .iter()
        .filter(|b| b.version <= doc.current_backing)
        .filter_map(|b| b.import.as_ref())
        .filter(|i| i.expiration_model.is_some())
        .collect();
    let earliest = imported
        .iter()
        .filter(|i| i.expiration_model == Some(ExpirationModel::KeyMaterialExpires))
        .filter_map(|i| i.valid_to)
        .min();
    match (earliest, imported.is_empty()) {
        (Some(t), _) => (Some(ExpirationModel::KeyMaterialExpires), Some(t)),
        (None, false) => (Some(ExpirationModel::KeyMaterialDoesNotExpire), None),
        (None, true) => (None, None),
    }
}

/// The expiry an import asks for, checked as AWS checks it.
fn requested_expiry(
    model: Option<ExpirationModel>,
    valid_to: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(ExpirationModel, Option<OffsetDateTime>), KmsError> {
    match (model.unwrap_or(ExpirationModel::KeyMaterialExpires), valid_to) {
        (ExpirationModel::KeyMaterialExpires, None) => Err(KmsError::Validation(
            "A ValidTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES.".into(),
        )),
        (ExpirationModel::KeyMaterialDoesNotExpire, Some(_)) => Err(KmsError::Validation(
            "A ValidTo date must not be set if the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE."
                .into(),
        )),
        (ExpirationModel::KeyMaterialExpires, Some(t)) => {
            let t = epoch_seconds::truncate(t);
            if t <= now {
                return Err(KmsError::Validation(
                    "The ValidTo date must be in the future.".into(),
                ));
            }
            if t > now.saturating_add(MAX_VALID_TO) {
                return Err(KmsError::Validation(
                    "The ValidTo date must be no more than 365 days from the time of the request."
                        .into(),
                ));
            }
            Ok((ExpirationModel::KeyMaterialExpires, Some(t)))
        }
        (ExpirationModel::KeyMaterialDoesNotExpire, None) => {
            Ok((ExpirationModel::KeyMaterialDoesNotExpire, None))
        }
    }
}

/// Whether the HSMs hold every generation permanently associated with the key.
pub(super) fn complete(doc: &KeyDoc) -> bool {
    doc.backing
        .iter()
        .filter(|b| b.version <= doc.current_backing)
        .all(material_present)
}

/// The state an `EXTERNAL` key takes after its material changed: `Enabled` (from
/// `PendingImport`) once every generation permanently associated with it is imported,
/// `PendingImport` while one is not; `Disabled` and `PendingDeletion` stay.
fn state_after(doc: &KeyDoc) -> KeyState {
    match (doc.key_state, complete(doc)) {
        (KeyState::PendingDeletion | KeyState::PendingReplicaDeletion, _) => doc.key_state,
        (KeyState::PendingImport, true) => KeyState::Enabled,
        (_, false) => KeyState::PendingImport,
        (s, true) => s,
    }
}

impl Kms {
    /// An `EXTERNAL` key, or `UnsupportedOperationException`.
    fn external(&self, e: &Entry) -> Result<(), KmsError> {
        if e.doc.origin != Origin::External {
            return Err(KmsError::Unsupported(format!(
                "{} origin is {} which is not valid for this operation.",
                self.arn(&e.doc),
                e.doc.origin.as_str()
            )));
        }
        Ok(())
    }

    fn not_deleting(&self, e: &Entry) -> Result<(), KmsError> {
        if matches!(
            e.doc.key_state,
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
        ) {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.arn(&e.doc)
            )));
        }
        Ok(())
    }

    /// Create the import token key in the HSMs (replicated to every one) unless the store
    /// says it exists.
    async fn ensure_token_key(&self) -> Result<(), KmsError> {
        if self
            .import
            .token_key_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let _one = self.import.lock.lock().await;
        TOKEN_KEY.ensure(self.vault.as_ref(), &self.store).await?;
        self.import
            .token_key_ready
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The HSM object ids of a key's unexpired import wrapping key pairs (for operator
    /// checks and tests). Empty for an unknown key id.
    pub fn import_wrapping_object_ids(&self, key_id: &str) -> Vec<String> {
        let Ok(id) = KeyId::parse(key_id) else {
            return Vec::new();
        };
        self.keys
            .read()
            .get(&id)
            .map(|e| {
                e.doc
                    .import_parameters
                    .iter()
                    .map(|p| p.object_id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Create the key that seals import tokens in the HSMs (replicated to every one) unless
    /// it exists; the service calls it at start.
    pub async fn ensure_import_token_key(&self) -> Result<(), KmsError> {
        self.ensure_token_key().await
    }

    /// Refuse a wrapping the HSMs cannot unwrap inside themselves (or not confined: see
    /// `allow_unconfined_rsa_aes_import`).
    fn importable(&self, alg: WrappingAlgorithm, wrapping: ImportWrapping) -> Result<(), KmsError> {
        match self.vault.import_unsupported(wrapping) {
            None => Ok(()),
            Some(missing) => Err(KmsError::Unsupported(format!(
                "The wrapping algorithm {} is not supported by the HSMs of this key store: it needs {missing}. Key material is unwrapped only inside the HSMs, never on the service host.",
                alg.as_str()
            ))),
        }
    }

    /// `GetParametersForImport`: a fresh wrapping key pair made in the HSMs and the import
    /// token that binds it to this key for 24 hours.
    pub async fn get_parameters_for_import(
        &self,
        keys: &Resolved,
        r: requests::GetParametersForImport,
    ) -> Result<GetParametersForImportOutput, KmsError> {
        let e = keys.key()?;
        self.external(&e)?;
        self.not_deleting(&e)?;
        let wrapping = wrapping_of(r.algorithm)?;
        let bits = wrapping_bits(r.spec)?;
        check_importable(e.doc.key_spec)?;
        if matches!(
            e.doc.key_spec,
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096
        ) && matches!(wrapping, ImportWrapping::Oaep(_))
        {
            return Err(KmsError::Validation(format!(
                "{} is not a valid wrapping algorithm for key spec {}: RSA private keys must be wrapped with RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256.",
                r.algorithm.as_str(),
                e.doc.key_spec.as_str()
            )));
        }
        if e.doc.key_spec == KeySpec::EccNistP521
            && bits == 2048
            && matches!(wrapping, ImportWrapping::Oaep(_))
        {
            return Err(KmsError::Validation(
                "An RSA_2048 wrapping key cannot wrap ECC_NIST_P521 key material with an RSAES wrapping algorithm; use an RSA_AES_KEY_WRAP algorithm or a longer wrapping key.".into(),
            ));
        }
        self.importable(r.algorithm, wrapping)?;
        self.ensure_token_key().await?;
        let arn = self.arn(&e.doc);
        let object = ObjectId::new(format!(
            "kms/{}/import/{}",
            e.doc.key_id,
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let spki = self
            .vault
            .create_key(
                &object,
                &format!("{arn} import wrapping key"),
                KeyKind::Pair(PairSpec::Rsa(bits), PairUse::Unwrap),
            )
            .await?
            .public_key
            .ok_or_else(|| KmsError::Internal("wrapping key without a public key".into()))?;
        let valid_to = self.now().saturating_add(PARAMETERS_VALIDITY);
        let body = serde_json::to_vec(&TokenBody {
            w: object.clone(),
            to: (valid_to.unix_timestamp_nanos() / 1_000_000) as i64,
        })
        .map_err(|e| KmsError::Internal(e.to_string()))?;
        let sealed = self
            .vault
            .encrypt(&token_key(), token_aad(&e.doc.key_id), Zeroizing::new(body))
            .await;
        let (iv, ct) = match sealed {
            Ok(v) => v,
            Err(err) => {
                let _ = self.vault.destroy_key(&object).await;
                return Err(err.into());
            }
        };
        let record = ImportParameters {
            object_id: object.clone(),
            bits,
            algorithm: r.algorithm,
            valid_to,
        };
        let committed = self
            .update_doc(&e.doc.key_id, move |d| {
                d.import_parameters.push(record);
                Ok(())
            })
            .await;
        if let Err(err) = committed {
            let _ = self.vault.destroy_key(&object).await;
            return Err(err);
        }
        let mut token = vec![TOKEN_VERSION];
        token.extend_from_slice(&iv);
        token.extend_from_slice(&ct);
        tracing::info!(key = %arn, wrapping_key = %object, "import parameters issued");
        Ok(GetParametersForImportOutput {
            key_id: arn,
            import_token: token,
            public_key: spki,
            parameters_valid_to: valid_to,
        })
    }

    /// The import parameters an import token names, once it proved authentic for this key
    /// and unexpired.
    async fn open_import_token(
        &self,
        e: &Entry,
        token: &[u8],
    ) -> Result<ImportParameters, KmsError> {
        let invalid = || {
            KmsError::InvalidImportToken("The import token is not valid for this KMS key.".into())
        };
        let expired = || {
            KmsError::ExpiredImportToken(
                "The import token has expired. Use GetParametersForImport to get a new public key and import token.".into(),
            )
        };
        let (version, rest) = token.split_first().ok_or_else(invalid)?;
        if *version != TOKEN_VERSION || rest.len() < crate::kms::vault::IV_LEN + 16 {
            return Err(invalid());
        }
        let (iv, ct) = rest.split_at(crate::kms::vault::IV_LEN);
        let iv: [u8; crate::kms::vault::IV_LEN] = iv.try_into().map_err(|_| invalid())?;
        self.ensure_token_key().await?;
        let body = match self
            .vault
            .decrypt(&token_key(), iv, token_aad(&e.doc.key_id), ct.to_vec())
            .await
        {
            Ok(b) => b,
            Err(crate::kms::vault::VaultError::InvalidCiphertext) => return Err(invalid()),
            Err(err) => return Err(err.into()),
        };
        let body: TokenBody = serde_json::from_slice(&body).map_err(|_| invalid())?;
        let valid_to = OffsetDateTime::from_unix_timestamp_nanos(i128::from(body.to) * 1_000_000)
            .map_err(|_| invalid())?;
        if valid_to <= self.now() {
            return Err(expired());
        }
        e.doc
            .import_parameters
            .iter()
            .find(|p| p.object_id == body.w)
            .cloned()
            // Authentic and unexpired but no longer recorded: its wrapping key is gone.
            .ok_or_else(expired)
    }

    /// `ImportKeyMaterial`: unwrap the material inside the HSMs, check it, copy it to every
    /// HSM; or re-import the same material (its expiry may change).
    pub async fn import_key_material(
        &self,
        keys: &Resolved,
        r: requests::ImportKeyMaterial,
    ) -> Result<KeyMaterialOutput, KmsError> {
        let e = keys.key()?;
        self.external(&e)?;
        self.not_deleting(&e)?;
        let symmetric = e.doc.key_spec == KeySpec::SymmetricDefault;
        if !symmetric && (r.material_id.is_some() || r.description.is_some()) {
            return Err(KmsError::Validation(
                "KeyMaterialId and KeyMaterialDescription are only valid for symmetric encryption keys.".into(),
            ));
        }
        let now = self.now();
        let (model, valid_to) = requested_expiry(r.expiration_model, r.valid_to, now)?;
        let params = self.open_import_token(&e, &r.token).await?;
        let wrapping = wrapping_of(params.algorithm)?;
        // Checked again: the HSMs (or the config) may have changed since the parameters.
        self.importable(params.algorithm, wrapping)?;
        let wrapped = WrappedMaterial {
            key: params.object_id.clone(),
            modulus_len: params.bits as usize / 8,
            wrapping,
            material: r.wrapped,
        };
        let kind = material_kind(&e.doc)?;
        let _one = self.import.lock.lock().await;
        // Re-read under the lock: another import or a deletion may have committed.
        let e = self.entry(&e.doc.account_id, &e.doc.key_id)?;
        self.not_deleting(&e)?;
        let ever_imported = e.doc.backing.iter().any(|b| b.check_value.is_some());
        let import_type = r.import_type.unwrap_or(if ever_imported {
            ImportType::ExistingKeyMaterial
        } else {
            ImportType::NewKeyMaterial
        });
        let imported = ImportedMaterial {
            state: ImportState::Imported,
            expiration_model: Some(model),
            valid_to,
            description: r.description.clone(),
            destroyed: false,
        };
        let version = match (import_type, ever_imported) {
            (ImportType::NewKeyMaterial, _) if r.material_id.is_some() => {
                return Err(KmsError::Validation(
                    "You cannot specify a KeyMaterialId with ImportType NEW_KEY_MATERIAL.".into(),
                ))
            }
            (ImportType::NewKeyMaterial, false) => {
                self.install_first(&e, &wrapped, kind, imported).await?
            }
            (ImportType::NewKeyMaterial, true) => {
                self.install_new(&e, &wrapped, kind, imported).await?
            }
            (ImportType::ExistingKeyMaterial, false) => {
                return Err(KmsError::IncorrectKeyMaterial(format!(
                    "{} has no key material imported yet; import it with ImportType NEW_KEY_MATERIAL.",
                    self.arn(&e.doc)
                )))
            }
            (ImportType::ExistingKeyMaterial, true) => {
                self.reinstall(&e, &wrapped, kind, imported, r.material_id.as_deref())
                    .await?
            }
        };
        let e = self.entry(&e.doc.account_id, &e.doc.key_id)?;
        let b = e
            .doc
            .backing(version)
            .ok_or_else(|| KmsError::Internal("imported generation vanished".into()))?;
        tracing::info!(key = %self.arn(&e.doc), version, "key material imported");
        Ok(KeyMaterialOutput {
            key_id: self.arn(&e.doc),
            key_material_id: super::rotation::key_material_id(b.object_id.as_str()),
        })
    }

    /// The first import of a key's material: into generation `current_backing`.
    async fn install_first(
        &self,
        e: &Entry,
        wrapped: &WrappedMaterial,
        kind: KeyKind,
        imported: ImportedMaterial,
    ) -> Result<u32, KmsError> {
        let version = e.doc.current_backing;
        let b = e
            .doc
            .backing(version)
            .ok_or_else(|| KmsError::Internal("current backing key missing".into()))?;
        let object = b.object_id.clone();
        let (value, spki) = self.install(e, wrapped, &object, kind).await?;
        let committed = self
            .update_doc(&e.doc.key_id, |d| {
                if let Some(b) = d.backing.iter_mut().find(|b| b.version == version) {
                    b.check_value = Some(hex::encode(value));
                    b.import = Some(imported);
                }
                if let Some(spki) = spki {
                    d.public_key = Some(base64::engine::general_purpose::STANDARD.encode(spki));
                }
                d.key_state = state_after(d);
                Ok(())
            })
            .await;
        self.after_install(committed, &object, kind, value).await?;
        Ok(version)
    }

    /// New material for a symmetric key that has some: a generation above the current one
    /// (`PENDING_ROTATION`), which must differ from every material the key has.
    async fn install_new(
        &self,
        e: &Entry,
        wrapped: &WrappedMaterial,
        kind: KeyKind,
        imported: ImportedMaterial,
    ) -> Result<u32, KmsError> {
        let arn = self.arn(&e.doc);
        if e.doc.key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "{arn} already has key material; only symmetric encryption keys take new key material."
            )));
        }
        if e.doc
            .backing
            .iter()
            .any(|b| b.version > e.doc.current_backing)
        {
            return Err(KmsError::InvalidState(format!(
                "{arn} already has key material pending rotation; rotate the key (RotateKeyOnDemand) or delete that material first."
            )));
        }
        let (version, object) = next_generation(&e.doc);
        let (value, _) = self.install(e, wrapped, &object, kind).await?;
        let known = hex::encode(value);
        if e.doc
            .backing
            .iter()
            .any(|b| b.check_value.as_deref() == Some(known.as_str()))
        {
            let _ = self.vault.destroy_key(&object).await;
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "The key material is already associated with {arn}; new key material must differ from it."
            )));
        }
        let now = self.now();
        let obj = object.clone();
        let committed = self
            .update_doc(&e.doc.key_id, move |d| {
                d.backing.push(BackingKey {
                    version,
                    object_id: obj,
                    created: now,
                    rotation: None,
                    check_value: Some(known),
                    import: Some(imported),
                });
                Ok(())
            })
            .await;
        self.after_install(committed, &object, kind, value).await?;
        Ok(version)
    }

    /// A re-import: the material must be one the key already has (the one `material_id`
    /// names, if given). Checked in a throw-away object first; then installed again if it
    /// had been deleted or had expired, and its expiry replaced.
    async fn reinstall(
        &self,
        e: &Entry,
        wrapped: &WrappedMaterial,
        kind: KeyKind,
        imported: ImportedMaterial,
        material_id: Option<&str>,
    ) -> Result<u32, KmsError> {
        let arn = self.arn(&e.doc);
        let staging = ObjectId::new(format!(
            "kms/{}/import-check/{}",
            e.doc.key_id,
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let value = self
            .vault
            .imported_check_value(wrapped, &staging, kind)
            .await?;
        let found = hex::encode(value);
        let incorrect = || {
            KmsError::IncorrectKeyMaterial(format!(
                "The key material is not the key material previously imported into {arn}."
            ))
        };
        let b = e
            .doc
            .backing
            .iter()
            .find(|b| b.check_value.as_deref() == Some(found.as_str()))
            .ok_or_else(incorrect)?;
        if material_id
            .is_some_and(|id| id != super::rotation::key_material_id(b.object_id.as_str()))
        {
            return Err(incorrect());
        }
        let (version, object) = (b.version, b.object_id.clone());
        let present = material_present(b);
        if !present {
            if !b.import.as_ref().is_some_and(|i| i.destroyed) {
                // A destruction some HSM never confirmed: finish it before the new copies.
                self.vault.destroy_key(&object).await?;
            }
            let (v, _) = self.install(e, wrapped, &object, kind).await?;
            if v != value {
                let _ = self.vault.destroy_key(&object).await;
                return Err(incorrect());
            }
        }
        let committed = self
            .update_doc(&e.doc.key_id, |d| {
                if let Some(b) = d.backing.iter_mut().find(|b| b.version == version) {
                    let description = imported
                        .description
                        .clone()
                        .or_else(|| b.import.as_ref().and_then(|i| i.description.clone()));
                    b.import = Some(ImportedMaterial {
                        description,
                        ..imported
                    });
                }
                d.key_state = state_after(d);
                Ok(())
            })
            .await;
        if present {
            committed?;
            return Ok(version);
        }
        self.after_install(committed, &object, kind, value).await?;
        Ok(version)
    }

    /// Unwrap and replicate the material as `object`, then its check value (every copy
    /// agreeing) and, for a key pair, its SPKI. On a failure after the copies exist they are
    /// destroyed.
    async fn install(
        &self,
        e: &Entry,
        wrapped: &WrappedMaterial,
        object: &ObjectId,
        kind: KeyKind,
    ) -> Result<([u8; CHECK_LEN], Option<Vec<u8>>), KmsError> {
        let spki = self
            .vault
            .import_key(wrapped, object, &self.arn(&e.doc), kind)
            .await?;
        match self.vault.check_value(object, kind).await {
            Ok(Some(v)) => Ok((v, spki)),
            other => {
                let _ = self.vault.destroy_key(object).await;
                Err(match other {
                    Err(err) => err.into(),
                    _ => KmsError::Unavailable("imported material has no check value".into()),
                })
            }
        }
    }

    /// After the metadata commit of an install: hand the check value to the vault, or undo
    /// the install if the commit failed.
    async fn after_install(
        &self,
        committed: Result<KeyDoc, KmsError>,
        object: &ObjectId,
        kind: KeyKind,
        value: [u8; CHECK_LEN],
    ) -> Result<(), KmsError> {
        if let Err(err) = committed {
            let _ = self.vault.destroy_key(object).await;
            return Err(err);
        }
        self.vault
            .expect_check_values(vec![(object.clone(), kind, value)]);
        Ok(())
    }

    /// `DeleteImportedKeyMaterial`: the material (the current one unless `KeyMaterialId`
    /// names another) is destroyed in every HSM and the key becomes `PendingImport` (a
    /// material pending rotation is simply removed).
    pub async fn delete_imported_key_material(
        &self,
        keys: &Resolved,
        r: requests::DeleteImportedKeyMaterial,
    ) -> Result<KeyMaterialOutput, KmsError> {
        let e = keys.key()?;
        self.external(&e)?;
        let _one = self.import.lock.lock().await;
        let e = self.entry(&e.doc.account_id, &e.doc.key_id)?;
        let arn = self.arn(&e.doc);
        let b = match r.material_id.as_deref() {
            Some(id) => e
                .doc
                .backing
                .iter()
                .find(|b| super::rotation::key_material_id(b.object_id.as_str()) == id)
                .ok_or_else(|| {
                    KmsError::NotFound(format!("Key material {id} is not associated with {arn}."))
                })?,
            None => e
                .doc
                .backing(e.doc.current_backing)
                .ok_or_else(|| KmsError::Internal("current backing key missing".into()))?,
        };
        let material_id = super::rotation::key_material_id(b.object_id.as_str());
        self.remove_material(&e.doc.key_id, b.version, "deleted")
            .await?;
        Ok(KeyMaterialOutput {
            key_id: arn,
            key_material_id: material_id,
        })
    }

    /// Take generation `version` of an `EXTERNAL` key out of the HSMs (deleted or expired):
    /// the metadata first (so nothing uses or re-syncs it), then the destruction in every
    /// HSM, recorded once confirmed (else the maintenance pass retries it). A generation
    /// pending rotation is dropped from the metadata altogether.
    async fn remove_material(
        &self,
        key_id: &KeyId,
        version: u32,
        why: &'static str,
    ) -> Result<(), KmsError> {
        let doc = self
            .update_doc(key_id, |d| {
                let pending = version > d.current_backing;
                if pending {
                    d.backing.retain(|b| b.version != version);
                } else if let Some(b) = d.backing.iter_mut().find(|b| b.version == version) {
                    let i = b
                        .import
                        .get_or_insert_with(ImportedMaterial::never_imported);
                    if i.state == ImportState::Imported {
                        i.state = ImportState::PendingImport;
                        i.destroyed = false;
                    }
                }
                d.key_state = state_after(d);
                Ok(())
            })
            .await?;
        let object = object_of_version(&doc, key_id, version);
        self.destroy_material(key_id, version, &object, why).await;
        Ok(())
    }

    /// Destroy `object` (generation `version`) in every HSM and record it; a failure is
    /// logged and left for the next maintenance pass.
    async fn destroy_material(&self, key_id: &KeyId, version: u32, object: &ObjectId, why: &str) {
        match self.vault.destroy_key(object).await {
            Ok(()) => {
                let recorded = self
                    .update_doc(key_id, |d| {
                        if let Some(i) = d
                            .backing
                            .iter_mut()
                            .find(|b| b.version == version)
                            .and_then(|b| b.import.as_mut())
                        {
                            i.destroyed = true;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(err) = recorded {
                    tracing::warn!(key = %key_id, error = %err, "destroyed key material not recorded; the next pass records it");
                }
                tracing::info!(key = %key_id, version, object = %object, "imported key material {why}: destroyed in every HSM");
            }
            Err(err) => tracing::warn!(
                key = %key_id, version, object = %object, error = %err,
                "imported key material {why} but not yet destroyed in every HSM; the maintenance pass retries"
            ),
        }
    }

    /// The maintenance work of imports (by the injected clock): material past its `ValidTo`
    /// is removed (the key becomes `PendingImport`), destructions no HSM confirmed yet are
    /// retried, and wrapping key pairs past their `ParametersValidTo` are destroyed in every
    /// HSM. Returns how many objects were destroyed.
    pub(crate) async fn import_maintenance(&self) -> Result<usize, KmsError> {
        let now = self.now();
        let _one = self.import.lock.lock().await;
        let docs: Vec<KeyDoc> = self
            .keys
            .read()
            .values()
            .filter(|e| e.doc.origin == Origin::External)
            .map(|e| e.doc.clone())
            .collect();
        let mut destroyed = 0;
        let mut failed = 0;
        for doc in docs {
            for b in &doc.backing {
                let Some(i) = &b.import else { continue };
                let expired = i.state == ImportState::Imported
                    && i.expiration_model == Some(ExpirationModel::KeyMaterialExpires)
                    && i.valid_to.is_some_and(|t| t <= now);
                if expired {
                    tracing::info!(key = %doc.key_id, version = b.version, "imported key material expired");
                    let (removed, hsms) = crate::kms::vault::served_by(self.remove_material(
                        &doc.key_id,
                        b.version,
                        "expired",
                    ))
                    .await;
                    removed?;
                    destroyed += 1;
                    // As AWS KMS records it: a service event in the key's account.
                    self.service_event(
                        "DeleteExpiredKeyMaterial",
                        Some(doc.account_id.to_string()),
                        vec![crate::kms::audit::Resource::key(self.arn(&doc))],
                        serde_json::json!({
                            "keyId": doc.key_id.to_string(),
                            "keyMaterialId": super::rotation::key_material_id(b.object_id.as_str()),
                        }),
                        hsms,
                    )
                    .await;
                } else if i.state == ImportState::PendingImport && !i.destroyed {
                    self.destroy_material(&doc.key_id, b.version, &b.object_id, "deleted")
                        .await;
                }
            }
            let stale: Vec<ImportParameters> = doc
                .import_parameters
                .iter()
                .filter(|p| p.valid_to <= now)
                .cloned()
                .collect();
            for p in stale {
                match self.vault.destroy_key(&p.object_id).await {
                    Ok(()) => {
                        let id = p.object_id.clone();
                        self.update_doc(&doc.key_id, move |d| {
                            d.import_parameters.retain(|q| q.object_id != id);
                            Ok(())
                        })
                        .await?;
                        tracing::info!(key = %doc.key_id, wrapping_key = %p.object_id, "expired import wrapping key destroyed in every HSM");
                        destroyed += 1;
                    }
                    Err(err) => {
                        failed += 1;
                        tracing::warn!(key = %doc.key_id, wrapping_key = %p.object_id, error = %err, "expired import wrapping key not yet destroyed in every HSM; will retry");
                    }
                }
            }
        }
        if failed > 0 {
            return Err(KmsError::Unavailable(format!(
                "{failed} expired import wrapping keys not yet destroyed"
            )));
        }
        Ok(destroyed)
    }

    /// `RotateKeyOnDemand` of an `EXTERNAL` key: the material pending rotation becomes
    /// current (it was imported with `ImportType=NEW_KEY_MATERIAL`).
    pub(super) async fn rotate_imported(&self, key_id: &KeyId) -> Result<(), KmsError> {
        let _one = self.import.lock.lock().await;
        let now = self.now();
        let mut promoted = None;
        let doc = self
            .update_doc(key_id, |d| {
                let current = d.current_backing;
                let Some(b) = d
                    .backing
                    .iter_mut()
                    .filter(|b| b.version > current && material_present(b))
                    .min_by_key(|b| b.version)
                else {
                    return Err(KmsError::Unsupported(
                        "This key has imported key material: on-demand rotation needs new key material imported first (ImportKeyMaterial with ImportType NEW_KEY_MATERIAL).".into(),
                    ));
                };
                b.rotation = Some(crate::kms::model::RotationType::OnDemand);
                b.created = now;
                promoted = Some(b.version);
                d.current_backing = b.version;
                Ok(())
            })
            .await?;
        tracing::info!(key = %doc.key_id, version = ?promoted, "imported key material rotated on demand");
        Ok(())
    }
}

/// The object id of generation `version` (the key's first object id if it has gone).
fn object_of_version(doc: &KeyDoc, key_id: &KeyId, version: u32) -> ObjectId {
    doc.backing(version)
        .map(|b| b.object_id.clone())
        .unwrap_or_else(|| object_id(key_id, version))
}

/// Import bookkeeping that is not metadata.
#[derive(Default)]
pub(super) struct Imports {
    /// One import, deletion or expiry at a time (they are rare and touch every HSM).
    pub(super) lock: tokio::sync::Mutex<()>,
    /// The token key is known to exist.
    pub(super) token_key_ready: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules_are_awss() {
        let now = epoch_seconds::from_f64(1_700_000_000.0).unwrap();
        let day = Duration::days(1);
        assert!(requested_expiry(None, None, now).is_err());
        assert!(requested_expiry(
            Some(ExpirationModel::KeyMaterialDoesNotExpire),
            Some(now + day),
            now
        )
        .is_err());
        assert!(requested_expiry(None, Some(now), now).is_err());
        assert!(requested_expiry(None, Some(now + Duration::days(366)), now).is_err());
        assert_eq!(
            requested_expiry(None, Some(now + day), now).unwrap(),
            (ExpirationModel::KeyMaterialExpires, Some(now + day))
        );
        assert_eq!(
            requested_expiry(Some(ExpirationModel::KeyMaterialDoesNotExpire), None, now).unwrap(),
            (ExpirationModel::KeyMaterialDoesNotExpire, None)
        );
    }
}
