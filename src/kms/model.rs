//! What the domain stores per key (`KeyDoc`, kept as the store's opaque JSON document) and
//! what it answers (output records named and shaped as in the AWS KMS API, serialized by
//! the API layer). Blobs serialize as base64; timestamps, `OffsetDateTime`s inside, as
//! epoch seconds (see [`epoch_seconds`]).

use super::marker::Marker;
use super::types::{
    AccountId, EncryptionAlgorithm, ExpirationModel, ImportState, KeyId, KeyManager, KeySpec,
    KeyState, KeyUsage, Origin, Tag, WrappingAlgorithm,
};
use super::vault::ObjectId;
use base64::Engine;
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Timestamps as AWS writes them and as key documents have always stored them: epoch
/// seconds as a JSON number with millisecond precision (`1700000000.123`). For
/// `#[serde(with = "epoch_seconds")]` on `OffsetDateTime` fields, and
/// `#[serde(with = "epoch_seconds::option")]` on `Option<OffsetDateTime>` ones.
///
/// Writing truncates to the millisecond; reading rounds to the nearest millisecond and
/// refuses non-numbers and dates outside years -9999..=9999. A millisecond-precise time
/// reads back exactly as written, so documents and answers keep their numbers unchanged.
pub mod epoch_seconds {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    /// `t` with its sub-millisecond part dropped (rounded towards the past).
    pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
        t.replace_millisecond(t.millisecond()).unwrap_or(t)
    }

    /// Epoch seconds, millisecond precision.
    pub fn to_f64(t: OffsetDateTime) -> f64 {
        t.unix_timestamp_nanos().div_euclid(1_000_000) as f64 / 1000.0
    }

    /// The time `secs` epoch seconds after 1970, to the nearest millisecond; `None` if
    /// `secs` is not finite or not within the representable dates.
    pub fn from_f64(secs: f64) -> Option<OffsetDateTime> {
        if !secs.is_finite() {
            return None;
        }
        let ms = (secs * 1000.0).round() as i128; // saturates; the range check follows
        OffsetDateTime::from_unix_timestamp_nanos(ms.checked_mul(1_000_000)?).ok()
    }

    /// Writes `t` as epoch seconds (a JSON number, millisecond precision).
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(to_f64(*t))
    }

    /// Reads epoch seconds, rounded to the millisecond; refuses out-of-range dates.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let secs = f64::deserialize(d)?;
        from_f64(secs).ok_or_else(|| D::Error::custom(format!("timestamp out of range: {secs}")))
    }

    /// The same for `Option<OffsetDateTime>`: `None` is `null` (pair it with
    /// `#[serde(default)]` so that a missing field reads as `None`).
    pub mod option {
        use serde::de::Error as _;
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        /// Writes `Some(t)` as epoch seconds and `None` as `null`.
        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// Reads epoch seconds as `Some`, `null` as `None`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            match Option::<f64>::deserialize(d)? {
                None => Ok(None),
                Some(secs) => super::from_f64(secs)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("timestamp out of range: {secs}"))),
            }
        }
    }
}

/// One backing key: the HSM object that holds one generation of a KMS key's material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackingKey {
    /// Generation number, 1 for the key's first material; ciphertext headers name it.
    pub version: u32,
    /// `CKA_ID` of the object in every HSM.
    pub object_id: ObjectId,
    /// When this generation was generated in the HSMs.
    #[serde(with = "epoch_seconds")]
    pub created: OffsetDateTime,
    /// How this generation became current: `None` for the key's first material, else the
    /// rotation that made it (its `created` is the rotation date).
    #[serde(default)]
    pub rotation: Option<RotationType>,
    /// The check value of this material's copies (hex; see `KeyVault::check_value`),
    /// recorded when the material is made (for material made before that, or whose value
    /// could not be read then, by the background pass once every copy agrees); each copy
    /// is verified against it after every (re)connect. `None` until recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_value: Option<String>,
    /// For imported material (Origin `EXTERNAL`): whether the HSMs hold it now and how it
    /// expires; `None` for material the HSMs generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportedMaterial>,
}

/// What the metadata knows of one generation of imported key material. The material itself
/// exists only in the HSMs (unwrapped there); its check value (`BackingKey::check_value`)
/// is what tells a re-import of the same material from different material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportedMaterial {
    /// `IMPORTED` while the HSMs hold it; `PENDING_IMPORT` before the first import and
    /// after deletion or expiry.
    pub state: ImportState,
    /// `ExpirationModel` of the last import (`None` before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    /// `ValidTo` of the last import, when the material expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub valid_to: Option<OffsetDateTime>,
    /// `KeyMaterialDescription` of the last import that gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `PENDING_IMPORT` after a deletion or expiry: false until every HSM confirmed the
    /// material destroyed (the maintenance pass retries until then).
    #[serde(default)]
    pub destroyed: bool,
}

impl ImportedMaterial {
    /// Material that has never been imported (nothing in any HSM).
    pub fn never_imported() -> ImportedMaterial {
        ImportedMaterial {
            state: ImportState::PendingImport,
            expiration_model: None,
            valid_to: None,
            description: None,
            destroyed: true,
        }
    }
}

/// One set of import parameters (`GetParametersForImport`): the RSA wrapping key pair made
/// in the HSMs for one key, and until when it and its import token may be used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportParameters {
    /// `CKA_ID` of the wrapping key pair in every HSM.
    pub object_id: ObjectId,
    /// Modulus length of the wrapping key pair.
    pub bits: u32,
    /// The `WrappingAlgorithm` the caller said it will use.
    pub algorithm: WrappingAlgorithm,
    /// `ParametersValidTo`: 24 hours after the request.
    #[serde(with = "epoch_seconds")]
    pub valid_to: OffsetDateTime,
}

/// How a rotation was started (`RotationType`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RotationType {
    /// `AUTOMATIC`: made by the rotation schedule when `NextRotationDate` came.
    Automatic,
    /// `ON_DEMAND`: made by a `RotateKeyOnDemand` request.
    OnDemand,
}

/// An enabled automatic rotation: the period and the next due date.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RotationSchedule {
    /// `RotationPeriodInDays`: days between automatic rotations.
    pub period_days: u32,
    /// `NextRotationDate`: when the next automatic rotation is due.
    #[serde(with = "epoch_seconds")]
    pub next_rotation_date: OffsetDateTime,
}

/// The stored metadata of one KMS key. Never holds key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyDoc {
    /// The key's id (a UUID), also the store's primary key.
    pub key_id: KeyId,
    /// The AWS account that owns the key.
    pub account_id: AccountId,
    /// The key's `Description`, possibly empty.
    pub description: String,
    /// The key's `KeySpec`, fixed at creation.
    pub key_spec: KeySpec,
    /// The key's `KeyUsage`, fixed at creation.
    pub key_usage: KeyUsage,
    /// The key's `KeyState`.
    pub key_state: KeyState,
    /// Where the key material came from (`Origin`).
    pub origin: Origin,
    /// Who manages the key: `CUSTOMER`, or `AWS` for `alias/aws/<service>` keys.
    pub key_manager: KeyManager,
    /// When the key was created.
    #[serde(with = "epoch_seconds")]
    pub creation_date: OffsetDateTime,
    /// When a key pending deletion will be destroyed; `None` unless deletion is scheduled.
    #[serde(default, with = "epoch_seconds::option")]
    pub deletion_date: Option<OffsetDateTime>,
    /// The waiting period of a scheduled deletion, in days; `None` unless one is scheduled.
    #[serde(default)]
    pub pending_window_days: Option<u32>,
    /// Every generation of key material, oldest first; none is ever dropped.
    pub backing: Vec<BackingKey>,
    /// `version` of the generation that new ciphertexts and signatures use.
    pub current_backing: u32,
    /// The key's tags, at most one per tag key.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// SubjectPublicKeyInfo DER (base64) of an asymmetric key's public half. Public keys
    /// may live outside the HSMs; the private half never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Automatic rotation schedule (EnableKeyRotation); `None` when disabled.
    #[serde(default)]
    pub rotation_schedule: Option<RotationSchedule>,
    /// The key policy's text, as given (`CreateKey`, `PutKeyPolicy`) or as AWS writes the
    /// default; `None` in documents written before key policies existed, which have the
    /// default policy of their kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Import parameters issued and not yet expired (Origin `EXTERNAL`): their wrapping key
    /// pairs are in the HSMs until the maintenance pass destroys them after `valid_to`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_parameters: Vec<ImportParameters>,
}

impl KeyDoc {
    /// The generation numbered `version`, if the key has one.
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
    /// `KeyMetadata.AWSAccountId`: the account that owns the key.
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    /// `KeyMetadata.KeyId`: the key's unique id (a UUID).
    pub key_id: String,
    /// `KeyMetadata.Arn`: the key's ARN.
    pub arn: String,
    /// `KeyMetadata.CreationDate`: when the key was created.
    #[serde(with = "epoch_seconds")]
    pub creation_date: OffsetDateTime,
    /// `KeyMetadata.Enabled`: whether the key state is `Enabled`.
    pub enabled: bool,
    /// `KeyMetadata.Description`: the key's description, possibly empty.
    pub description: String,
    /// `KeyMetadata.KeyUsage`: the cryptographic operations the key can be used for.
    pub key_usage: KeyUsage,
    /// `KeyMetadata.KeyState`: the key's current state.
    pub key_state: KeyState,
    /// `KeyMetadata.DeletionDate`: when the key material will be destroyed; only for a key
    /// pending deletion.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub deletion_date: Option<OffsetDateTime>,
    /// `KeyMetadata.PendingDeletionWindowInDays`: the waiting period of a scheduled
    /// deletion; only for a key pending deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_deletion_window_in_days: Option<u32>,
    /// `KeyMetadata.Origin`: the source of the key material.
    pub origin: Origin,
    /// `KeyMetadata.KeyManager`: whether the key is a customer managed or AWS managed key.
    pub key_manager: KeyManager,
    /// `KeyMetadata.CustomerMasterKeySpec`: the deprecated alias of `KeySpec`, same value.
    pub customer_master_key_spec: KeySpec,
    /// `KeyMetadata.KeySpec`: the type of key material.
    pub key_spec: KeySpec,
    /// `KeyMetadata.EncryptionAlgorithms`: the algorithms the key can encrypt with;
    /// omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<EncryptionAlgorithm>,
    /// `KeyMetadata.SigningAlgorithms`: the algorithms the key can sign with; omitted when
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_algorithms: Vec<super::types::SigningAlgorithm>,
    /// `KeyMetadata.MacAlgorithms`: the MAC algorithms the key supports; omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mac_algorithms: Vec<super::types::MacAlgorithm>,
    /// `KeyMetadata.KeyAgreementAlgorithms`: the key agreement algorithms the key supports;
    /// omitted when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_agreement_algorithms: Vec<super::types::KeyAgreementAlgorithm>,
    /// `KeyMetadata.MultiRegion`: whether the key is a multi-Region key (never, here).
    pub multi_region: bool,
    /// `KeyMetadata.CurrentKeyMaterialId`: the id of the key material in use; only for
    /// symmetric encryption keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
    /// `KeyMetadata.ExpirationModel`: whether imported material expires; only for keys of
    /// origin `EXTERNAL` that have had material imported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    /// `KeyMetadata.ValidTo`: the earliest expiry of the key's imported material.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "epoch_seconds::option"
    )]
    pub valid_to: Option<OffsetDateTime>,
}

/// `CreateKey` and `DescribeKey` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataOutput {
    /// `KeyMetadata`: the key's metadata.
    pub key_metadata: KeyMetadata,
}

/// One entry of `ListKeys`' `Keys` (`KeyListEntry`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    /// `KeyListEntry.KeyId`: the key's unique id.
    pub key_id: String,
    /// `KeyListEntry.KeyArn`: the key's ARN.
    pub key_arn: String,
}

/// `ListKeys` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeysOutput {
    /// `Keys`: this page of keys.
    pub keys: Vec<KeyListEntry>,
    /// `NextMarker`: the `Marker` that fetches the next page; only when `Truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<Marker>,
    /// `Truncated`: whether more keys follow this page.
    pub truncated: bool,
}

/// `Encrypt` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptOutput {
    /// `CiphertextBlob`: the encrypted plaintext (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// `KeyId`: the ARN of the key that encrypted the plaintext.
    pub key_id: String,
    /// `EncryptionAlgorithm`: the algorithm used.
    pub encryption_algorithm: EncryptionAlgorithm,
}

/// `Decrypt` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptOutput {
    /// `KeyId`: the ARN of the key that decrypted the ciphertext.
    pub key_id: String,
    /// `Plaintext`: the decrypted data (base64 in JSON).
    #[serde(serialize_with = "b64z")]
    pub plaintext: Zeroizing<Vec<u8>>,
    /// `EncryptionAlgorithm`: the algorithm used.
    pub encryption_algorithm: EncryptionAlgorithm,
}

/// `ReEncrypt` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptOutput {
    /// `CiphertextBlob`: the data re-encrypted under the destination key (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// `SourceKeyId`: the ARN of the key that decrypted the source ciphertext.
    pub source_key_id: String,
    /// `KeyId`: the ARN of the key that re-encrypted the data.
    pub key_id: String,
    /// `SourceEncryptionAlgorithm`: the algorithm that decrypted the source ciphertext.
    pub source_encryption_algorithm: EncryptionAlgorithm,
    /// `DestinationEncryptionAlgorithm`: the algorithm that re-encrypted the data.
    pub destination_encryption_algorithm: EncryptionAlgorithm,
}

/// `GenerateDataKey` and `GenerateDataKeyWithoutPlaintext` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyOutput {
    /// `CiphertextBlob`: the data key encrypted under the KMS key (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// `Plaintext`: the data key in the clear (base64 in JSON); `None` for
    /// `GenerateDataKeyWithoutPlaintext`.
    #[serde(serialize_with = "b64z_opt", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// `KeyId`: the ARN of the KMS key that encrypted the data key.
    pub key_id: String,
}

/// `GenerateRandom` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RandomOutput {
    /// `Plaintext`: the random bytes (base64 in JSON).
    #[serde(serialize_with = "b64")]
    pub plaintext: Vec<u8>,
}

/// One entry of `ListAliases`' `Aliases` (`AliasListEntry`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    /// `AliasListEntry.AliasName`: the alias name (`alias/...`).
    pub alias_name: String,
    /// `AliasListEntry.AliasArn`: the alias ARN.
    pub alias_arn: String,
    /// `AliasListEntry.TargetKeyId`: the id of the key the alias refers to (always set
    /// here; AWS omits it for predefined aliases that have no key yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_key_id: Option<String>,
    /// `AliasListEntry.CreationDate`: when the alias was created.
    #[serde(with = "epoch_seconds")]
    pub creation_date: OffsetDateTime,
    /// `AliasListEntry.LastUpdatedDate`: when the alias was last pointed at a key.
    #[serde(with = "epoch_seconds")]
    pub last_updated_date: OffsetDateTime,
}

/// `ListAliases` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesOutput {
    /// `Aliases`: this page of aliases.
    pub aliases: Vec<AliasListEntry>,
    /// `NextMarker`: the `Marker` that fetches the next page; only when `Truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<Marker>,
    /// `Truncated`: whether more aliases follow this page.
    pub truncated: bool,
}

/// For operations that answer with an empty JSON object.
#[derive(Debug, Serialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::epoch_seconds::{from_f64, to_f64, truncate};
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Dates {
        #[serde(with = "epoch_seconds")]
        at: OffsetDateTime,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "epoch_seconds::option"
        )]
        maybe: Option<OffsetDateTime>,
    }

    fn ms(ms: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap()
    }

    #[test]
    fn numbers_are_the_f64_epoch_seconds_of_before() {
        let d = Dates {
            at: ms(1_700_000_000_123),
            maybe: Some(ms(1_700_000_000_000)),
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#"{"at":1700000000.123,"maybe":1700000000.0}"#);
        assert_eq!(serde_json::from_str::<Dates>(&text).unwrap(), d);
        let none = Dates {
            at: ms(0),
            maybe: None,
        };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"at":0.0}"#);
        assert_eq!(serde_json::from_str::<Dates>(r#"{"at":0}"#).unwrap(), none);
        assert_eq!(
            serde_json::from_str::<Dates>(r#"{"at":0,"maybe":null}"#).unwrap(),
            none
        );
        assert!(serde_json::from_str::<Dates>(r#"{"at":0,"maybe":1e300}"#).is_err());
    }

    #[test]
    fn truncate_drops_sub_milliseconds() {
        let t = ms(1_700_000_000_123) + time::Duration::nanoseconds(999_999);
        assert_eq!(truncate(t), ms(1_700_000_000_123));
        assert_eq!(to_f64(t), 1_700_000_000.123);
    }

    proptest::proptest! {
        /// Every millisecond-precise date reads back exactly as written, and is written
        /// as the number the f64 code computed (`ms as f64 / 1000.0`).
        #[test]
        fn millisecond_dates_round_trip_exactly(
            millis in -377_705_116_800_000i128..=253_402_300_799_999i128,
        ) {
            let t = ms(millis);
            let secs = to_f64(t);
            proptest::prop_assert_eq!(secs, millis as f64 / 1000.0);
            proptest::prop_assert_eq!(from_f64(secs), Some(t));
            let json = serde_json::to_string(&Dates { at: t, maybe: Some(t) }).unwrap();
            let back: Dates = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back, Dates { at: t, maybe: Some(t) });
        }

        /// No number makes reading panic.
        #[test]
        fn any_number_reads_or_fails_cleanly(secs in proptest::num::f64::ANY) {
            let _ = from_f64(secs);
        }
    }
}
