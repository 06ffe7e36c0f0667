//! One typed request per operation, as the API edge parses it: key references are
//! [`KeyRef`]s, plaintexts [`Plaintext`], contexts [`EncryptionContext`], enums the wire
//! enums — never raw strings. Validation of shapes (types, lengths, enum values) happened
//! at the edge; the domain applies the rules that need state (does the key exist, is it
//! enabled, may its usage do this).

use super::context::{EncryptionContext, GrantConstraints};
use super::operation::Operation;
use super::types::{
    AliasName, DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, ExpirationModel, GrantOperation,
    ImportType, KeyAgreementAlgorithm, KeyRef, KeySpec, KeyUsage, MacAlgorithm, MessageType,
    Origin, Plaintext, SigningAlgorithm, Tag, WrappingAlgorithm, WrappingKeySpec,
};

/// What GenerateDataKey asks for: exactly one of a spec or a byte count.
#[derive(Debug, Clone, Copy)]
pub enum DataKeySize {
    /// `KeySpec` (AES_128 / AES_256).
    Spec(DataKeySpec),
    /// `NumberOfBytes` (1–1024).
    Bytes(usize),
}

/// A page request: `Limit` and the opaque `Marker` of the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Largest number of items to return.
    pub limit: usize,
    /// Where the previous page ended.
    pub marker: Option<String>,
}

/// CreateKey.
#[derive(Debug, Default)]
pub struct CreateKey {
    /// `Description` (0–8192 characters).
    pub description: Option<String>,
    /// `KeyUsage`.
    pub key_usage: Option<KeyUsage>,
    /// `KeySpec` (or the deprecated `CustomerMasterKeySpec`).
    pub key_spec: Option<KeySpec>,
    /// `Origin`.
    pub origin: Option<Origin>,
    /// `Tags`.
    pub tags: Vec<Tag>,
    /// `MultiRegion`.
    pub multi_region: bool,
    /// `Policy`: the key policy's text (the default policy when absent).
    pub policy: Option<String>,
    /// `BypassPolicyLockoutSafetyCheck`.
    pub bypass_policy_lockout_safety_check: bool,
}

/// GetKeyPolicy.
#[derive(Debug)]
pub struct GetKeyPolicy {
    /// `KeyId`.
    pub key: KeyRef,
    /// `PolicyName` (only `default` exists).
    pub name: Option<String>,
}

/// PutKeyPolicy.
#[derive(Debug)]
pub struct PutKeyPolicy {
    /// `KeyId`.
    pub key: KeyRef,
    /// `PolicyName` (only `default` exists).
    pub name: Option<String>,
    /// `Policy`: the new key policy's text.
    pub policy: String,
    /// `BypassPolicyLockoutSafetyCheck`.
    pub bypass_policy_lockout_safety_check: bool,
}

/// Encrypt.
#[derive(Debug)]
pub struct Encrypt {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Plaintext` (1–4096 bytes).
    pub plaintext: Plaintext,
    /// `EncryptionContext`.
    pub context: EncryptionContext,
    /// `EncryptionAlgorithm`.
    pub algorithm: Option<EncryptionAlgorithm>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// Decrypt.
#[derive(Debug)]
pub struct Decrypt {
    /// `CiphertextBlob`.
    pub ciphertext: Vec<u8>,
    /// `KeyId` (required for asymmetric keys; must match the blob otherwise).
    pub key: Option<KeyRef>,
    /// `EncryptionContext`.
    pub context: EncryptionContext,
    /// `EncryptionAlgorithm`.
    pub algorithm: Option<EncryptionAlgorithm>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// ReEncrypt.
#[derive(Debug)]
pub struct ReEncrypt {
    /// `CiphertextBlob`.
    pub ciphertext: Vec<u8>,
    /// `SourceKeyId`.
    pub source_key: Option<KeyRef>,
    /// `SourceEncryptionContext`.
    pub source_context: EncryptionContext,
    /// `SourceEncryptionAlgorithm`.
    pub source_algorithm: Option<EncryptionAlgorithm>,
    /// `DestinationKeyId`.
    pub destination_key: KeyRef,
    /// `DestinationEncryptionContext`.
    pub destination_context: EncryptionContext,
    /// `DestinationEncryptionAlgorithm`.
    pub destination_algorithm: Option<EncryptionAlgorithm>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateDataKey and GenerateDataKeyWithoutPlaintext.
#[derive(Debug)]
pub struct GenerateDataKey {
    /// `KeyId`.
    pub key: KeyRef,
    /// `KeySpec` or `NumberOfBytes`.
    pub size: DataKeySize,
    /// `EncryptionContext`.
    pub context: EncryptionContext,
    /// False for GenerateDataKeyWithoutPlaintext.
    pub with_plaintext: bool,
    /// `DryRun`.
    pub dry_run: bool,
}

/// CreateAlias and UpdateAlias.
#[derive(Debug)]
pub struct SetAlias {
    /// `AliasName`.
    pub alias: AliasName,
    /// `TargetKeyId`.
    pub target: KeyRef,
}

/// ListAliases.
#[derive(Debug)]
pub struct ListAliases {
    /// `KeyId`: only aliases of this key.
    pub key: Option<KeyRef>,
    /// `Limit` / `Marker`.
    pub page: Page,
}

/// UpdateKeyDescription.
#[derive(Debug)]
pub struct UpdateKeyDescription {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Description`.
    pub description: String,
}

/// ScheduleKeyDeletion.
#[derive(Debug)]
pub struct ScheduleKeyDeletion {
    /// `KeyId`.
    pub key: KeyRef,
    /// `PendingWindowInDays` (7–30, default 30).
    pub window_days: Option<u32>,
}

/// TagResource.
#[derive(Debug)]
pub struct TagResource {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Tags`.
    pub tags: Vec<Tag>,
}

/// UntagResource.
#[derive(Debug)]
pub struct UntagResource {
    /// `KeyId`.
    pub key: KeyRef,
    /// `TagKeys`.
    pub tag_keys: Vec<String>,
}

/// ListResourceTags and ListKeyRotations.
#[derive(Debug)]
pub struct KeyPage {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Limit` / `Marker`.
    pub page: Page,
    /// ListKeyRotations' `IncludeKeyMaterial` = `ALL_KEY_MATERIAL`.
    pub include_all_material: bool,
}

/// Sign and Verify.
#[derive(Debug)]
pub struct Sign {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Message`.
    pub message: Plaintext,
    /// `MessageType`.
    pub message_type: Option<MessageType>,
    /// `SigningAlgorithm`.
    pub algorithm: SigningAlgorithm,
    /// Verify's `Signature` (`None` for Sign).
    pub signature: Option<Vec<u8>>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateMac and VerifyMac.
#[derive(Debug)]
pub struct Mac {
    /// `KeyId`.
    pub key: KeyRef,
    /// `Message`.
    pub message: Plaintext,
    /// `MacAlgorithm`.
    pub algorithm: MacAlgorithm,
    /// VerifyMac's `Mac` (`None` for GenerateMac).
    pub mac: Option<Vec<u8>>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// DeriveSharedSecret.
#[derive(Debug)]
pub struct DeriveSharedSecret {
    /// `KeyId`.
    pub key: KeyRef,
    /// `KeyAgreementAlgorithm`.
    pub algorithm: KeyAgreementAlgorithm,
    /// `PublicKey` (SPKI DER).
    pub public_key: Vec<u8>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.
#[derive(Debug)]
pub struct GenerateDataKeyPair {
    /// `KeyId`.
    pub key: KeyRef,
    /// `KeyPairSpec`.
    pub spec: DataKeyPairSpec,
    /// `EncryptionContext`.
    pub context: EncryptionContext,
    /// False for GenerateDataKeyPairWithoutPlaintext.
    pub with_plaintext: bool,
    /// `DryRun`.
    pub dry_run: bool,
}

/// EnableKeyRotation.
#[derive(Debug)]
pub struct EnableKeyRotation {
    /// `KeyId`.
    pub key: KeyRef,
    /// `RotationPeriodInDays`.
    pub period_days: Option<u32>,
}

/// CreateGrant.
#[derive(Debug)]
pub struct CreateGrant {
    /// `KeyId` (key id or key ARN).
    pub key: KeyRef,
    /// `GranteePrincipal`.
    pub grantee: String,
    /// `RetiringPrincipal`.
    pub retiring: Option<String>,
    /// `Operations`, without repeats, in the order first given.
    pub operations: Vec<GrantOperation>,
    /// `Constraints` (`None` when absent or empty).
    pub constraints: Option<GrantConstraints>,
    /// `Name`.
    pub name: Option<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// ListGrants.
#[derive(Debug)]
pub struct ListGrants {
    /// `KeyId`.
    pub key: KeyRef,
    /// `GrantId`: only this grant.
    pub grant_id: Option<String>,
    /// `GranteePrincipal`: only grants to this principal.
    pub grantee: Option<String>,
    /// `Limit` (1–100, default 50) / `Marker`.
    pub page: Page,
}

/// ListRetirableGrants.
#[derive(Debug)]
pub struct ListRetirableGrants {
    /// `RetiringPrincipal`.
    pub retiring: String,
    /// `Limit` (1–100, default 50) / `Marker`.
    pub page: Page,
}

/// Which grant RetireGrant names.
pub enum GrantRef {
    /// `GrantToken`. Never printed.
    Token(String),
    /// `KeyId` and `GrantId`.
    Id {
        /// `KeyId` (key id or key ARN).
        key: KeyRef,
        /// `GrantId`.
        grant_id: String,
    },
}

impl std::fmt::Debug for GrantRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantRef::Token(_) => f.write_str("Token(<redacted>)"),
            GrantRef::Id { key, grant_id } => f
                .debug_struct("Id")
                .field("key", key)
                .field("grant_id", grant_id)
                .finish(),
        }
    }
}

/// RetireGrant.
#[derive(Debug)]
pub struct RetireGrant {
    /// The grant.
    pub grant: GrantRef,
    /// `DryRun`.
    pub dry_run: bool,
}

/// RevokeGrant.
#[derive(Debug)]
pub struct RevokeGrant {
    /// `KeyId`.
    pub key: KeyRef,
    /// `GrantId`.
    pub grant_id: String,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GetParametersForImport.
#[derive(Debug)]
pub struct GetParametersForImport {
    /// `KeyId` (key id or key ARN).
    pub key: KeyRef,
    /// `WrappingAlgorithm`.
    pub algorithm: WrappingAlgorithm,
    /// `WrappingKeySpec`.
    pub spec: WrappingKeySpec,
}

/// ImportKeyMaterial. `Debug` never prints the token or the wrapped material.
pub struct ImportKeyMaterial {
    /// `KeyId` (key id or key ARN).
    pub key: KeyRef,
    /// `ImportToken`.
    pub token: Vec<u8>,
    /// `EncryptedKeyMaterial`.
    pub wrapped: Vec<u8>,
    /// `ValidTo`.
    pub valid_to: Option<time::OffsetDateTime>,
    /// `ExpirationModel`.
    pub expiration_model: Option<ExpirationModel>,
    /// `ImportType`.
    pub import_type: Option<ImportType>,
    /// `KeyMaterialDescription`.
    pub description: Option<String>,
    /// `KeyMaterialId` (64 lowercase hex characters).
    pub material_id: Option<String>,
}

impl std::fmt::Debug for ImportKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportKeyMaterial")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .field("wrapped", &"<redacted>")
            .field("valid_to", &self.valid_to)
            .field("expiration_model", &self.expiration_model)
            .field("import_type", &self.import_type)
            .field("description", &self.description)
            .field("material_id", &self.material_id)
            .finish()
    }
}

/// DeleteImportedKeyMaterial.
#[derive(Debug)]
pub struct DeleteImportedKeyMaterial {
    /// `KeyId` (key id or key ARN).
    pub key: KeyRef,
    /// `KeyMaterialId`: this material (else the current one).
    pub material_id: Option<String>,
}

/// A parsed request of any built operation.
#[derive(Debug)]
pub enum Request {
    /// CreateKey.
    CreateKey(CreateKey),
    /// DescribeKey, GetPublicKey, EnableKey, DisableKey, CancelKeyDeletion,
    /// DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand: a key and nothing else.
    Key(Operation, KeyRef),
    /// ListKeys.
    ListKeys(Page),
    /// Encrypt.
    Encrypt(Encrypt),
    /// Decrypt.
    Decrypt(Decrypt),
    /// ReEncrypt.
    ReEncrypt(ReEncrypt),
    /// GenerateDataKey(WithoutPlaintext).
    GenerateDataKey(GenerateDataKey),
    /// GenerateRandom (`NumberOfBytes`).
    GenerateRandom(usize),
    /// CreateAlias.
    CreateAlias(SetAlias),
    /// UpdateAlias.
    UpdateAlias(SetAlias),
    /// DeleteAlias.
    DeleteAlias(AliasName),
    /// ListAliases.
    ListAliases(ListAliases),
    /// UpdateKeyDescription.
    UpdateKeyDescription(UpdateKeyDescription),
    /// ScheduleKeyDeletion.
    ScheduleKeyDeletion(ScheduleKeyDeletion),
    /// TagResource.
    TagResource(TagResource),
    /// UntagResource.
    UntagResource(UntagResource),
    /// ListResourceTags.
    ListResourceTags(KeyPage),
    /// Sign / Verify.
    Sign(Sign),
    /// GenerateMac / VerifyMac.
    Mac(Mac),
    /// DeriveSharedSecret.
    DeriveSharedSecret(DeriveSharedSecret),
    /// GenerateDataKeyPair(WithoutPlaintext).
    GenerateDataKeyPair(GenerateDataKeyPair),
    /// EnableKeyRotation.
    EnableKeyRotation(EnableKeyRotation),
    /// ListKeyRotations.
    ListKeyRotations(KeyPage),
    /// GetKeyPolicy.
    GetKeyPolicy(GetKeyPolicy),
    /// PutKeyPolicy.
    PutKeyPolicy(PutKeyPolicy),
    /// ListKeyPolicies.
    ListKeyPolicies(KeyPage),
    /// CreateGrant.
    CreateGrant(CreateGrant),
    /// ListGrants.
    ListGrants(ListGrants),
    /// ListRetirableGrants.
    ListRetirableGrants(ListRetirableGrants),
    /// RetireGrant.
    RetireGrant(RetireGrant),
    /// RevokeGrant.
    RevokeGrant(RevokeGrant),
    /// GetParametersForImport.
    GetParametersForImport(GetParametersForImport),
    /// ImportKeyMaterial.
    ImportKeyMaterial(ImportKeyMaterial),
    /// DeleteImportedKeyMaterial.
    DeleteImportedKeyMaterial(DeleteImportedKeyMaterial),
}
