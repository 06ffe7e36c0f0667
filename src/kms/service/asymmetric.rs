//! Asymmetric and HMAC keys: CreateKey material for RSA, ECC and HMAC specs, Sign/Verify,
//! GetPublicKey, GenerateMac/VerifyMac, RSA-OAEP Encrypt/Decrypt, DeriveSharedSecret and
//! GenerateDataKeyPair(WithoutPlaintext). Private and secret halves stay in the HSMs; the
//! public half (SPKI DER) is kept in the key's metadata and used in software only for
//! OAEP encryption.

use super::{Entry, Kms, Resolved};
use crate::kms::ciphertext::Blob;
use crate::kms::context::EncryptionContext;
use crate::kms::error::KmsError;
use crate::kms::model::{DecryptOutput, EncryptOutput, ReEncryptOutput};
use crate::kms::requests::ReEncrypt;
use crate::kms::types::{
    DataKeyPairSpec, EncryptionAlgorithm, KeyAgreementAlgorithm, KeySpec, KeyUsage, MacAlgorithm,
    MessageType, Origin, Plaintext, SigningAlgorithm,
};
use crate::kms::vault::{KeyKind, KeyVault, ObjectId, PairSpec, PairUse, SignScheme, CHECK_LEN};
use crate::pkix::{self, Curve, Hash};
use base64::Engine;
use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

fn b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

fn b64z<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    b64(v, s)
}

fn b64z_opt<S: Serializer>(v: &Option<Zeroizing<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => b64(v, s),
        None => s.serialize_none(),
    }
}

/// `Sign` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignOutput {
    /// `KeyId`: the ARN of the key that signed the message.
    pub key_id: String,
    /// `Signature`: the signature (base64 in JSON); DER for ECDSA.
    #[serde(serialize_with = "b64")]
    pub signature: Vec<u8>,
    /// `SigningAlgorithm`: the algorithm used.
    pub signing_algorithm: SigningAlgorithm,
}

/// `Verify` response (a signature that does not verify is an error, not `false`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyOutput {
    /// `KeyId`: the ARN of the key that verified the signature.
    pub key_id: String,
    /// `SignatureValid`: whether the signature verified.
    pub signature_valid: bool,
    /// `SigningAlgorithm`: the algorithm used.
    pub signing_algorithm: SigningAlgorithm,
}

/// `GetPublicKey` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPublicKeyOutput {
    /// `KeyId`: the ARN of the key.
    pub key_id: String,
    /// `PublicKey`: the DER-encoded SubjectPublicKeyInfo (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub public_key: Vec<u8>,
    /// `CustomerMasterKeySpec`: the deprecated alias of `KeySpec`, same value.
    pub customer_master_key_spec: KeySpec,
    /// `KeySpec`: the type of the key pair.
    pub key_spec: KeySpec,
    /// `KeyUsage`: what the key pair can be used for.
    pub key_usage: KeyUsage,
    /// `EncryptionAlgorithms`: the algorithms the key can encrypt with; omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<EncryptionAlgorithm>,
    /// `SigningAlgorithms`: the algorithms the key can sign with; omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_algorithms: Vec<SigningAlgorithm>,
    /// `KeyAgreementAlgorithms`: the key agreement algorithms the key supports; omitted
    /// when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_agreement_algorithms: Vec<KeyAgreementAlgorithm>,
}

/// `GenerateMac` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateMacOutput {
    /// `Mac`: the HMAC tag (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub mac: Vec<u8>,
    /// `MacAlgorithm`: the algorithm used.
    pub mac_algorithm: MacAlgorithm,
    /// `KeyId`: the ARN of the HMAC key used.
    pub key_id: String,
}

/// `VerifyMac` response (a MAC that does not verify is an error, not `false`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyMacOutput {
    /// `KeyId`: the ARN of the HMAC key used.
    pub key_id: String,
    /// `MacValid`: whether the MAC verified.
    pub mac_valid: bool,
    /// `MacAlgorithm`: the algorithm used.
    pub mac_algorithm: MacAlgorithm,
}

/// `DeriveSharedSecret` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeriveSharedSecretOutput {
    /// `KeyId`: the ARN of the key agreement key used.
    pub key_id: String,
    /// `SharedSecret`: the raw ECDH shared secret (base64 in JSON).
    #[serde(serialize_with = "b64z")]
    pub shared_secret: Zeroizing<Vec<u8>>,
    /// `KeyAgreementAlgorithm`: the algorithm used.
    pub key_agreement_algorithm: KeyAgreementAlgorithm,
    /// `KeyOrigin`: the source of the key material of the key used.
    pub key_origin: Origin,
}

/// `GenerateDataKeyPair` and `GenerateDataKeyPairWithoutPlaintext` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyPairOutput {
    /// `PrivateKeyCiphertextBlob`: the private key encrypted under the KMS key (base64 in
    /// JSON).
    #[serde(serialize_with = "b64")]
    pub private_key_ciphertext_blob: Vec<u8>,
    /// `PrivateKeyPlaintext`: the PKCS#8 private key in the clear (base64 in JSON); `None`
    /// for `GenerateDataKeyPairWithoutPlaintext`.
    #[serde(serialize_with = "b64z_opt", skip_serializing_if = "Option::is_none")]
    pub private_key_plaintext: Option<Zeroizing<Vec<u8>>>,
    /// `PublicKey`: the DER-encoded SubjectPublicKeyInfo (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub public_key: Vec<u8>,
    /// `KeyId`: the ARN of the KMS key that encrypted the private key.
    pub key_id: String,
    /// `KeyPairSpec`: the type of the key pair.
    pub key_pair_spec: DataKeyPairSpec,
}

/// Refuse specs this service cannot hold in its HSMs, naming what is missing: specs no
/// PKCS#11 token offers here, and specs of a kind the vault cannot make (fewer than two
/// HSMs offer what it needs; `KeyVault::kind_unavailable` names the mechanism and HSMs).
pub(super) fn check_spec_supported(
    spec: KeySpec,
    usage: KeyUsage,
    vault: &dyn KeyVault,
) -> Result<(), KmsError> {
    let missing = match spec {
        KeySpec::Sm2 => "an SM2 mechanism (PKCS#11 defines none; vendor mechanisms only)",
        KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => {
            "CKM_ML_DSA_KEY_PAIR_GEN and CKM_ML_DSA"
        }
        _ => {
            let kind = if spec == KeySpec::SymmetricDefault {
                Some(KeyKind::Aes)
            } else {
                key_kind(spec, usage)
            };
            return match kind.and_then(|k| vault.kind_unavailable(k)) {
                None => Ok(()),
                Some(why) => Err(KmsError::Unsupported(format!(
                    "KeySpec {} is not available: {why}.",
                    spec.as_str()
                ))),
            };
        }
    };
    Err(KmsError::Unsupported(format!(
        "KeySpec {} is not supported by the HSMs of this key store: it needs {missing}.",
        spec.as_str()
    )))
}

fn curve_of(spec: KeySpec) -> Option<Curve> {
    match spec {
        KeySpec::EccNistP256 => Some(Curve::P256),
        KeySpec::EccNistP384 => Some(Curve::P384),
        KeySpec::EccNistP521 => Some(Curve::P521),
        KeySpec::EccSecgP256k1 => Some(Curve::Secp256k1),
        _ => None,
    }
}

fn pair_spec(spec: KeySpec) -> Option<PairSpec> {
    match spec {
        KeySpec::Rsa2048 => Some(PairSpec::Rsa(2048)),
        KeySpec::Rsa3072 => Some(PairSpec::Rsa(3072)),
        KeySpec::Rsa4096 => Some(PairSpec::Rsa(4096)),
        KeySpec::EccNistEdwards25519 => Some(PairSpec::Ed25519),
        s => curve_of(s).map(PairSpec::Ec),
    }
}

/// Modulus length in bytes of an RSA spec.
/// True for RSA keys (their ciphertexts are raw RSA-OAEP, not service blobs).
pub(super) fn is_rsa(e: &Entry) -> bool {
    rsa_len(e.doc.key_spec).is_some()
}

fn rsa_len(spec: KeySpec) -> Option<usize> {
    match pair_spec(spec) {
        Some(PairSpec::Rsa(bits)) => Some(bits as usize / 8),
        _ => None,
    }
}

/// Key length (bytes) and hash of an HMAC spec.
fn hmac_spec(spec: KeySpec) -> Option<(usize, Hash)> {
    match spec {
        KeySpec::Hmac224 => Some((28, Hash::Sha224)),
        KeySpec::Hmac256 => Some((32, Hash::Sha256)),
        KeySpec::Hmac384 => Some((48, Hash::Sha384)),
        KeySpec::Hmac512 => Some((64, Hash::Sha512)),
        _ => None,
    }
}

fn oaep_hash(alg: EncryptionAlgorithm) -> Option<Hash> {
    match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => Some(Hash::Sha1),
        EncryptionAlgorithm::RsaesOaepSha256 => Some(Hash::Sha256),
        _ => None,
    }
}

/// The HSM scheme and digest of a signing algorithm for a key spec.
fn scheme(spec: KeySpec, alg: SigningAlgorithm) -> Option<(SignScheme, Hash)> {
    use SigningAlgorithm::*;
    match alg {
        Ed25519Sha512 => return Some((SignScheme::Ed25519, Hash::Sha512)),
        Ed25519PhSha512 => return Some((SignScheme::Ed25519ph, Hash::Sha512)),
        _ => {}
    }
    let h = match alg {
        RsassaPssSha256 | RsassaPkcs1V15Sha256 | EcdsaSha256 => Hash::Sha256,
        RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => Hash::Sha384,
        RsassaPssSha512 | RsassaPkcs1V15Sha512 | EcdsaSha512 => Hash::Sha512,
        _ => return None,
    };
    let s = match alg {
        RsassaPssSha256 | RsassaPssSha384 | RsassaPssSha512 => SignScheme::RsaPss(h),
        RsassaPkcs1V15Sha256 | RsassaPkcs1V15Sha384 | RsassaPkcs1V15Sha512 => {
            SignScheme::RsaPkcs1(h)
        }
        _ => SignScheme::Ecdsa(curve_of(spec)?),
    };
    Some((s, h))
}

/// What the HSM objects of a non-symmetric key are.
pub(super) fn key_kind(spec: KeySpec, usage: KeyUsage) -> Option<KeyKind> {
    if let Some((len, _)) = hmac_spec(spec) {
        return Some(KeyKind::Hmac(len));
    }
    let pair_use = match usage {
        KeyUsage::SignVerify => PairUse::Sign,
        KeyUsage::EncryptDecrypt => PairUse::Decrypt,
        KeyUsage::KeyAgreement => PairUse::Derive,
        KeyUsage::GenerateVerifyMac => return None,
    };
    pair_spec(spec).map(|p| KeyKind::Pair(p, pair_use))
}

impl Kms {
    /// Generate and replicate the HSM material of a non-symmetric key; returns the SPKI
    /// (base64) for key pairs and the check value of the copies.
    pub(super) async fn create_asymmetric_material(
        &self,
        spec: KeySpec,
        usage: KeyUsage,
        object: &ObjectId,
        label: &str,
    ) -> Result<(Option<String>, Option<[u8; CHECK_LEN]>), KmsError> {
        if let Some((len, _)) = hmac_spec(spec) {
            let made = self
                .vault
                .create_key(object, label, KeyKind::Hmac(len))
                .await?;
            return Ok((None, made.check_value));
        }
        let Some(KeyKind::Pair(pair, pair_use)) = key_kind(spec, usage) else {
            return Err(KmsError::Validation(format!(
                "KeyUsage {} is not compatible with KeySpec {}",
                usage.as_str(),
                spec.as_str()
            )));
        };
        let made = self
            .vault
            .create_key(object, label, KeyKind::Pair(pair, pair_use))
            .await?;
        let spki = made
            .public_key
            .ok_or_else(|| KmsError::Internal("key pair created without a public key".into()))?;
        Ok((
            Some(base64::engine::general_purpose::STANDARD.encode(spki)),
            made.check_value,
        ))
    }

    fn object_of(&self, e: &Entry) -> Result<ObjectId, KmsError> {
        e.doc
            .backing(e.doc.current_backing)
            .map(|b| b.object_id.clone())
            .ok_or_else(|| KmsError::Internal("current backing key missing".into()))
    }

    fn spki_of(&self, e: &Entry) -> Result<Vec<u8>, KmsError> {
        let s =
            e.doc.public_key.as_deref().ok_or_else(|| {
                KmsError::Internal(format!("key {} has no public key", e.doc.key_id))
            })?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| KmsError::Internal(format!("stored public key: {e}")))
    }

    fn incompatible(&self, e: &Entry, alg: &str) -> KmsError {
        KmsError::InvalidKeyUsage(format!(
            "Algorithm {alg} is incompatible with key spec {}.",
            e.doc.key_spec.as_str()
        ))
    }

    /// The digest to sign or verify, and the HSM scheme.
    fn signing_input(
        &self,
        e: &Entry,
        message: &[u8],
        message_type: Option<MessageType>,
        alg: SigningAlgorithm,
    ) -> Result<(SignScheme, Vec<u8>), KmsError> {
        if !e
            .doc
            .key_spec
            .signing_algorithms(e.doc.key_usage)
            .contains(&alg)
        {
            return Err(self.incompatible(e, alg.as_str()));
        }
        let (scheme, h) =
            scheme(e.doc.key_spec, alg).ok_or_else(|| self.incompatible(e, alg.as_str()))?;
        match message_type.unwrap_or(MessageType::Raw) {
            // Pure Ed25519 signs the message itself (and only RAW messages).
            MessageType::Raw if scheme == SignScheme::Ed25519 => Ok((scheme, message.to_vec())),
            MessageType::Digest if scheme == SignScheme::Ed25519 => Err(KmsError::Validation(
                "The signing algorithm ED25519_SHA_512 supports only MessageType RAW.".into(),
            )),
            MessageType::Raw => Ok((scheme, h.digest(message))),
            MessageType::Digest => {
                if message.len() != h.len() {
                    return Err(KmsError::Validation(format!(
                        "Digest is invalid length for algorithm {}.",
                        alg.as_str()
                    )));
                }
                Ok((scheme, message.to_vec()))
            }
            MessageType::ExternalMu => Err(KmsError::Validation(
                "MessageType EXTERNAL_MU is valid only for ML_DSA keys.".into(),
            )),
        }
    }

    /// `Sign`: signs `message` (or, for `DIGEST`, the digest it is) with the key's private
    /// half in the HSMs.
    pub async fn sign(
        &self,
        keys: &Resolved,
        message: Plaintext,
        message_type: Option<MessageType>,
        alg: SigningAlgorithm,
        dry_run: bool,
    ) -> Result<SignOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::SignVerify)?;
        let (scheme, digest) = self.signing_input(&e, message.as_bytes(), message_type, alg)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let signature = self
            .vault
            .sign(&self.object_of(&e)?, scheme, digest)
            .await?;
        Ok(SignOutput {
            key_id: self.arn(&e.doc),
            signature,
            signing_algorithm: alg,
        })
    }

    /// `Verify`: checks `signature` over `message` with the key pair; a signature that does
    /// not verify is `KMSInvalidSignatureException`.
    #[allow(clippy::too_many_arguments)]
    pub async fn verify(
        &self,
        keys: &Resolved,
        message: Plaintext,
        message_type: Option<MessageType>,
        signature: Vec<u8>,
        alg: SigningAlgorithm,
        dry_run: bool,
    ) -> Result<VerifyOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::SignVerify)?;
        let (scheme, digest) = self.signing_input(&e, message.as_bytes(), message_type, alg)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        if !self
            .vault
            .verify(&self.object_of(&e)?, scheme, digest, signature)
            .await?
        {
            return Err(KmsError::InvalidSignature(
                "The signature is not valid for this message, key and signing algorithm.".into(),
            ));
        }
        Ok(VerifyOutput {
            key_id: self.arn(&e.doc),
            signature_valid: true,
            signing_algorithm: alg,
        })
    }

    /// `GetPublicKey`: the public half of an asymmetric key, with what it may be used for.
    pub fn get_public_key(&self, keys: &Resolved) -> Result<GetPublicKeyOutput, KmsError> {
        let e = keys.key()?;
        if pair_spec(e.doc.key_spec).is_none() {
            return Err(KmsError::Unsupported(format!(
                "{} is not an asymmetric KMS key; only asymmetric keys have a public key.",
                self.arn(&e.doc)
            )));
        }
        self.usable_for(&e, e.doc.key_usage)?;
        let (spec, usage) = (e.doc.key_spec, e.doc.key_usage);
        Ok(GetPublicKeyOutput {
            key_id: self.arn(&e.doc),
            public_key: self.spki_of(&e)?,
            customer_master_key_spec: spec,
            key_spec: spec,
            key_usage: usage,
            encryption_algorithms: spec.encryption_algorithms(usage),
            signing_algorithms: spec.signing_algorithms(usage),
            key_agreement_algorithms: spec.key_agreement_algorithms(usage),
        })
    }

    fn mac_hash(&self, e: &Entry, alg: MacAlgorithm) -> Result<Hash, KmsError> {
        match hmac_spec(e.doc.key_spec) {
            Some((_, h))
                if e.doc
                    .key_spec
                    .mac_algorithms(e.doc.key_usage)
                    .contains(&alg) =>
            {
                Ok(h)
            }
            _ => Err(self.incompatible(e, alg.as_str())),
        }
    }

    /// `GenerateMac`: the HMAC of `message` under an HMAC key.
    pub async fn generate_mac(
        &self,
        keys: &Resolved,
        message: Plaintext,
        alg: MacAlgorithm,
        dry_run: bool,
    ) -> Result<GenerateMacOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::GenerateVerifyMac)?;
        let h = self.mac_hash(&e, alg)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let mac = self
            .vault
            .mac(&self.object_of(&e)?, h, message.as_bytes().to_vec())
            .await?;
        Ok(GenerateMacOutput {
            mac,
            mac_algorithm: alg,
            key_id: self.arn(&e.doc),
        })
    }

    /// `VerifyMac`: checks `mac` over `message`; a MAC that does not match is
    /// `KMSInvalidMacException`.
    pub async fn verify_mac(
        &self,
        keys: &Resolved,
        message: Plaintext,
        mac: Vec<u8>,
        alg: MacAlgorithm,
        dry_run: bool,
    ) -> Result<VerifyMacOutput, KmsError> {
        use subtle::ConstantTimeEq;
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::GenerateVerifyMac)?;
        let h = self.mac_hash(&e, alg)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let want = self
            .vault
            .mac(&self.object_of(&e)?, h, message.as_bytes().to_vec())
            .await?;
        if want.len() != mac.len() || !bool::from(want.ct_eq(&mac)) {
            return Err(KmsError::InvalidMac(
                "The MAC is not valid for this message, key and MAC algorithm.".into(),
            ));
        }
        Ok(VerifyMacOutput {
            key_id: self.arn(&e.doc),
            mac_valid: true,
            mac_algorithm: alg,
        })
    }

    /// The OAEP hash of an RSA encryption request (algorithm required and listed).
    fn rsa_algorithm(
        &self,
        e: &Entry,
        alg: Option<EncryptionAlgorithm>,
        ctx: &EncryptionContext,
    ) -> Result<(EncryptionAlgorithm, Hash), KmsError> {
        let alg = alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        let h = oaep_hash(alg)
            .filter(|_| {
                e.doc
                    .key_spec
                    .encryption_algorithms(e.doc.key_usage)
                    .contains(&alg)
            })
            .ok_or_else(|| self.incompatible(e, alg.as_str()))?;
        if !ctx.is_empty() {
            return Err(KmsError::Validation(
                "EncryptionContext is not supported with asymmetric KMS keys.".into(),
            ));
        }
        Ok((alg, h))
    }

    /// Encrypt with an RSA key: OAEP in software with the key's public half.
    pub(super) async fn rsa_encrypt(
        &self,
        e: &Entry,
        plaintext: Plaintext,
        ctx: &EncryptionContext,
        alg: Option<EncryptionAlgorithm>,
        dry_run: bool,
    ) -> Result<EncryptOutput, KmsError> {
        use rsa::pkcs8::DecodePublicKey;
        let (alg, h) = self.rsa_algorithm(e, alg, ctx)?;
        let k = rsa_len(e.doc.key_spec).ok_or_else(|| self.incompatible(e, alg.as_str()))?;
        let max = k - 2 * h.len() - 2;
        if plaintext.len() > max {
            return Err(KmsError::Validation(format!(
                "Plaintext is too long: {} with {} encrypts at most {max} bytes.",
                alg.as_str(),
                e.doc.key_spec.as_str()
            )));
        }
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let public = rsa::RsaPublicKey::from_public_key_der(&self.spki_of(e)?)
            .map_err(|err| KmsError::Internal(format!("stored RSA public key: {err}")))?;
        let mut rng = rand::thread_rng();
        let ct = match h {
            Hash::Sha1 => public.encrypt(
                &mut rng,
                rsa::Oaep::new::<sha1::Sha1>(),
                plaintext.as_bytes(),
            ),
            _ => public.encrypt(
                &mut rng,
                rsa::Oaep::new::<sha2::Sha256>(),
                plaintext.as_bytes(),
            ),
        }
        .map_err(|err| KmsError::Internal(format!("OAEP encryption: {err}")))?;
        Ok(EncryptOutput {
            ciphertext_blob: ct,
            key_id: self.arn(&e.doc),
            encryption_algorithm: alg,
        })
    }

    /// Decrypt a raw RSA-OAEP ciphertext with a caller-named RSA key.
    pub(super) async fn rsa_decrypt(
        &self,
        e: &Entry,
        blob: &[u8],
        ctx: &EncryptionContext,
        alg: Option<EncryptionAlgorithm>,
        dry_run: bool,
    ) -> Result<DecryptOutput, KmsError> {
        let k = rsa_len(e.doc.key_spec).ok_or_else(|| {
            KmsError::Internal("request path: RSA decryption with a non-RSA key".into())
        })?;
        self.usable_for(e, KeyUsage::EncryptDecrypt)?;
        let (alg, h) = self.rsa_algorithm(e, alg, ctx)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        if blob.len() != k {
            return Err(KmsError::InvalidCiphertext(String::new()));
        }
        let plaintext = self
            .vault
            .rsa_oaep_decrypt(&self.object_of(e)?, h, k, blob.to_vec())
            .await?;
        Ok(DecryptOutput {
            key_id: self.arn(&e.doc),
            plaintext,
            encryption_algorithm: alg,
        })
    }

    /// ReEncrypt where the source (`blob` is `None`: a raw RSA ciphertext) or the
    /// destination is an RSA key.
    pub(super) async fn asymmetric_re_encrypt(
        &self,
        src: &Entry,
        blob: Option<Blob>,
        dst: &Entry,
        r: ReEncrypt,
    ) -> Result<ReEncryptOutput, KmsError> {
        // Destination checks first, so that nothing is decrypted for a request that fails.
        self.usable_for(dst, KeyUsage::EncryptDecrypt)?;
        let dst_rsa = is_rsa(dst);
        if dst_rsa {
            self.rsa_algorithm(dst, r.destination_algorithm, &r.destination_context)?;
        } else {
            self.symmetric_algorithm(dst, r.destination_algorithm)?;
        }
        let (plaintext, source_arn, source_alg) = match blob {
            None => {
                let d = self
                    .rsa_decrypt(
                        src,
                        &r.ciphertext,
                        &r.source_context,
                        r.source_algorithm,
                        r.dry_run,
                    )
                    .await?;
                (d.plaintext, d.key_id, d.encryption_algorithm)
            }
            Some(b) => {
                self.usable_for(src, KeyUsage::EncryptDecrypt)?;
                let alg = self.symmetric_algorithm(src, r.source_algorithm)?;
                if r.dry_run {
                    return Err(KmsError::DryRun);
                }
                (
                    self.unseal(src, b, &r.source_context).await?,
                    self.arn(&src.doc),
                    alg,
                )
            }
        };
        let (ciphertext_blob, destination_alg) = if dst_rsa {
            let out = self
                .rsa_encrypt(
                    dst,
                    Plaintext::new(plaintext)?,
                    &r.destination_context,
                    r.destination_algorithm,
                    false,
                )
                .await?;
            (out.ciphertext_blob, out.encryption_algorithm)
        } else {
            let alg = self.symmetric_algorithm(dst, r.destination_algorithm)?;
            (
                self.seal(dst, &r.destination_context, plaintext).await?,
                alg,
            )
        };
        Ok(ReEncryptOutput {
            ciphertext_blob,
            source_key_id: source_arn,
            key_id: self.arn(&dst.doc),
            source_encryption_algorithm: source_alg,
            destination_encryption_algorithm: destination_alg,
        })
    }

    /// `DeriveSharedSecret`: ECDH between the key's private half and the peer's
    /// `public_key` (DER SubjectPublicKeyInfo).
    pub async fn derive_shared_secret(
        &self,
        keys: &Resolved,
        alg: KeyAgreementAlgorithm,
        public_key: &[u8],
        dry_run: bool,
    ) -> Result<DeriveSharedSecretOutput, KmsError> {
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::KeyAgreement)?;
        if !e
            .doc
            .key_spec
            .key_agreement_algorithms(e.doc.key_usage)
            .contains(&alg)
        {
            return Err(self.incompatible(&e, alg.as_str()));
        }
        let curve = curve_of(e.doc.key_spec).ok_or_else(|| self.incompatible(&e, alg.as_str()))?;
        let (peer_curve, point) = pkix::parse_ec_spki(public_key).ok_or_else(|| {
            KmsError::Validation(
                "PublicKey must be a DER-encoded X.509 SubjectPublicKeyInfo of an elliptic-curve key with an uncompressed point.".into(),
            )
        })?;
        if peer_curve != curve {
            return Err(KmsError::Validation(format!(
                "The public key's curve does not match the key spec {}.",
                e.doc.key_spec.as_str()
            )));
        }
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let shared_secret = self
            .vault
            .derive_shared_secret(&self.object_of(&e)?, curve, point)
            .await?;
        Ok(DeriveSharedSecretOutput {
            key_id: self.arn(&e.doc),
            shared_secret,
            key_agreement_algorithm: alg,
            key_origin: e.doc.origin,
        })
    }

    /// `GenerateDataKeyPair` (`with_plaintext`) or `GenerateDataKeyPairWithoutPlaintext`: a
    /// new key pair whose private key is encrypted under a symmetric KMS key.
    pub async fn generate_data_key_pair(
        &self,
        keys: &Resolved,
        spec: DataKeyPairSpec,
        ctx: EncryptionContext,
        with_plaintext: bool,
        dry_run: bool,
    ) -> Result<DataKeyPairOutput, KmsError> {
        let pair = match spec {
            DataKeyPairSpec::Rsa2048 => PairSpec::Rsa(2048),
            DataKeyPairSpec::Rsa3072 => PairSpec::Rsa(3072),
            DataKeyPairSpec::Rsa4096 => PairSpec::Rsa(4096),
            DataKeyPairSpec::EccNistP256 => PairSpec::Ec(Curve::P256),
            DataKeyPairSpec::EccNistP384 => PairSpec::Ec(Curve::P384),
            DataKeyPairSpec::EccNistP521 => PairSpec::Ec(Curve::P521),
            DataKeyPairSpec::EccSecgP256k1 => PairSpec::Ec(Curve::Secp256k1),
            DataKeyPairSpec::EccNistEdwards25519 => PairSpec::Ed25519,
            other => {
                return Err(KmsError::Unsupported(format!(
                    "KeyPairSpec {} is not supported by the HSMs of this key store.",
                    other.as_str()
                )))
            }
        };
        let e = keys.key()?;
        self.usable_for(&e, KeyUsage::EncryptDecrypt)?;
        self.symmetric_algorithm(&e, None)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let (private, public) = self.vault.generate_data_key_pair(pair).await?;
        let blob = self.seal(&e, &ctx, private.clone()).await?;
        debug_assert!(Blob::decode(&blob).is_ok());
        Ok(DataKeyPairOutput {
            private_key_ciphertext_blob: blob,
            private_key_plaintext: with_plaintext.then_some(private),
            public_key: public,
            key_id: self.arn(&e.doc),
            key_pair_spec: spec,
        })
    }
}
