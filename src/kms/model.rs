//! What the domain stores per key (`KeyDoc`, kept as the store's opaque JSON document) and
//! what it answers (output records named and shaped as in the AWS KMS API, serialized by
//! the API layer). Blobs serialize as base64; timestamps as epoch seconds.

use super::types::{
    AccountId, EncryptionAlgorithm, KeyId, KeyManager, KeySpec, KeyState, KeyUsage, Origin, Tag,
};
use super::vault::ObjectId;
use base64::Engine;
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

/// One backing key: the HSM object that holds one generation of a KMS key's material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackingKey {
    pub version: u32,
    /// `CKA_ID` of the object in every HSM.
    pub object_id: ObjectId,
    pub created: f64,
    /// How this generation became current: `None` for the key's first material, else the
    /// rotation that made it (its `created` is the rotation date).
    #[serde(default)]
    pub rotation: Option<RotationType>,
}

/// How a rotation was started (`RotationType`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RotationType {
    Automatic,
    OnDemand,
}

/// An enabled automatic rotation: the period and the next due date (epoch seconds).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RotationSchedule {
    pub period_days: u32,
    pub next_rotation_date: f64,
}

/// The stored metadata of one KMS key. Never holds key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyDoc {
    pub key_id: KeyId,
    pub account_id: AccountId,
    pub description: String,
    pub key_spec: KeySpec,
    pub key_usage: KeyUsage,
    pub key_state: KeyState,
    pub origin: Origin,
    pub key_manager: KeyManager,
    pub creation_date: f64,
    #[serde(default)]
    pub deletion_date: Option<f64>,
    #[serde(default)]
    pub pending_window_days: Option<u32>,
    pub backing: Vec<BackingKey>,
    pub current_backing: u32,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// SubjectPublicKeyInfo DER (base64) of an asymmetric key's public half. Public keys
    /// may live outside the HSMs; the private half never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Automatic rotation schedule (EnableKeyRotation); `None` when disabled.
    #[serde(default)]
    pub rotation_schedule: Option<RotationSchedule>,
}

impl KeyDoc {
    pub fn backing(&self, version: u32) -> Option<&BackingKey> {
        self.backing.iter().find(|b| b.version == version)
    }
}

pub(crate) fn b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
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

/// `KeyMetadata` exactly as AWS returns it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    pub creation_date: f64,
    pub enabled: bool,
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_state: KeyState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_deletion_window_in_days: Option<u32>,
    pub origin: Origin,
    pub key_manager: KeyManager,
    pub customer_master_key_spec: KeySpec,
    pub key_spec: KeySpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<EncryptionAlgorithm>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_algorithms: Vec<super::types::SigningAlgorithm>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mac_algorithms: Vec<super::types::MacAlgorithm>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_agreement_algorithms: Vec<super::types::KeyAgreementAlgorithm>,
    pub multi_region: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataOutput {
    pub key_metadata: KeyMetadata,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    pub key_id: String,
    pub key_arn: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeysOutput {
    pub keys: Vec<KeyListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptOutput {
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    pub key_id: String,
    pub encryption_algorithm: EncryptionAlgorithm,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptOutput {
    pub key_id: String,
    #[serde(serialize_with = "b64z")]
    pub plaintext: Zeroizing<Vec<u8>>,
    pub encryption_algorithm: EncryptionAlgorithm,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptOutput {
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    pub source_key_id: String,
    pub key_id: String,
    pub source_encryption_algorithm: EncryptionAlgorithm,
    pub destination_encryption_algorithm: EncryptionAlgorithm,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyOutput {
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    #[serde(serialize_with = "b64z_opt", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    pub key_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RandomOutput {
    #[serde(serialize_with = "b64")]
    pub plaintext: Vec<u8>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    pub alias_name: String,
    pub alias_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_key_id: Option<String>,
    pub creation_date: f64,
    pub last_updated_date: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesOutput {
    pub aliases: Vec<AliasListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

/// For operations that answer with an empty JSON object.
#[derive(Debug, Serialize)]
pub struct Empty {}
