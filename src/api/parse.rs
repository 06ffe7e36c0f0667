//! The edge: one parser per operation from the request's JSON members into the domain's
//! typed [`Request`], with AWS's validation messages. Adding an operation is one arm here,
//! one type in `kms::requests`, one method in the domain.

use super::error::ApiError;
use super::input::Input;
use crate::kms::context::{EncryptionContext, GrantConstraints};
use crate::kms::operation::Operation;
use crate::kms::requests::{self as rq, DataKeySize, Page, Request};
use crate::kms::types::{
    is_grant_principal, AliasName, DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm,
    ExpirationModel, GrantOperation, ImportType, KeyAgreementAlgorithm, KeyRef, KeySpec, KeyUsage,
    MacAlgorithm, MessageType, Origin, Plaintext, SigningAlgorithm, Tag, WrappingAlgorithm,
    WrappingKeySpec,
};

/// Largest ciphertext, signature or MAC blob AWS accepts (`CiphertextType`).
const MAX_BLOB: usize = 6144;

fn unsupported(message: &str) -> ApiError {
    ApiError::new("UnsupportedOperationException", message.to_string())
}

/// Parse the members of `op` into its typed request.
pub(crate) fn parse(op: Operation, i: &Input<'_>) -> Result<Request, ApiError> {
    grant_tokens(op, i)?;
    use Operation as O;
    Ok(match op {
        O::CreateKey => Request::CreateKey(create_key(i)?),
        O::DescribeKey
        | O::GetPublicKey
        | O::EnableKey
        | O::DisableKey
        | O::CancelKeyDeletion
        | O::DisableKeyRotation
        | O::GetKeyRotationStatus
        | O::GetKeyLastUsage
        | O::RotateKeyOnDemand => Request::Key(op, key(i, "KeyId")?),
        O::ListKeys => Request::ListKeys(page(i)?),
        O::Encrypt => {
            let key = key(i, "KeyId")?;
            let pt = i
                .blob("Plaintext", 1, 4096)?
                .ok_or_else(|| Input::missing("Plaintext"))?;
            Request::Encrypt(rq::Encrypt {
                key,
                plaintext: Plaintext::new(pt)?,
                context: context(i, "EncryptionContext")?,
                algorithm: i.parse("EncryptionAlgorithm", EncryptionAlgorithm::parse)?,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::Decrypt => {
            no_recipient(i)?;
            let ciphertext = i
                .blob("CiphertextBlob", 1, MAX_BLOB)?
                .ok_or_else(|| Input::missing("CiphertextBlob"))?;
            Request::Decrypt(rq::Decrypt {
                ciphertext,
                key: opt_key(i, "KeyId")?,
                context: context(i, "EncryptionContext")?,
                algorithm: i.parse("EncryptionAlgorithm", EncryptionAlgorithm::parse)?,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::ReEncrypt => {
            let ciphertext = i
                .blob("CiphertextBlob", 1, MAX_BLOB)?
                .ok_or_else(|| Input::missing("CiphertextBlob"))?;
            Request::ReEncrypt(rq::ReEncrypt {
                ciphertext,
                source_key: opt_key(i, "SourceKeyId")?,
                source_context: context(i, "SourceEncryptionContext")?,
                source_algorithm: i
                    .parse("SourceEncryptionAlgorithm", EncryptionAlgorithm::parse)?,
                destination_key: key(i, "DestinationKeyId")?,
                destination_context: context(i, "DestinationEncryptionContext")?,
                destination_algorithm: i
                    .parse("DestinationEncryptionAlgorithm", EncryptionAlgorithm::parse)?,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::GenerateDataKey | O::GenerateDataKeyWithoutPlaintext => {
            let key = key(i, "KeyId")?;
            let spec = i.parse("KeySpec", DataKeySpec::parse)?;
            let bytes = i.int("NumberOfBytes", 1, 1024)?;
            let size = match (spec, bytes) {
                (Some(s), None) => DataKeySize::Spec(s),
                (None, Some(n)) => DataKeySize::Bytes(n as usize),
                _ => {
                    return Err(ApiError::validation(
                        "Please specify either number of bytes or key spec.",
                    ))
                }
            };
            no_recipient(i)?;
            Request::GenerateDataKey(rq::GenerateDataKey {
                key,
                size,
                context: context(i, "EncryptionContext")?,
                with_plaintext: op == O::GenerateDataKey,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::GenerateRandom => {
            if i.string("CustomKeyStoreId")?.is_some() {
                return Err(ApiError::new(
                    "CustomKeyStoreNotFoundException",
                    "Custom key stores are not supported yet.",
                ));
            }
            let n = i
                .int("NumberOfBytes", 1, 1024)?
                .ok_or_else(|| Input::missing("NumberOfBytes"))?;
            Request::GenerateRandom(n as usize)
        }
        O::CreateAlias => Request::CreateAlias(set_alias(i)?),
        O::UpdateAlias => Request::UpdateAlias(set_alias(i)?),
        O::DeleteAlias => Request::DeleteAlias(alias(i)?),
        O::ListAliases => Request::ListAliases(rq::ListAliases {
            key: opt_key(i, "KeyId")?,
            page: page(i)?,
        }),
        O::UpdateKeyDescription => {
            let key = key(i, "KeyId")?;
            let d = i
                .string_len("Description", 0, 8192)?
                .ok_or_else(|| Input::missing("Description"))?;
            Request::UpdateKeyDescription(rq::UpdateKeyDescription {
                key,
                description: d.to_string(),
            })
        }
        O::ScheduleKeyDeletion => {
            let key = key(i, "KeyId")?;
            let days = i.int("PendingWindowInDays", 7, 30)?.map(|d| d as u32);
            Request::ScheduleKeyDeletion(rq::ScheduleKeyDeletion {
                key,
                window_days: days,
            })
        }
        O::TagResource => {
            let key = key(i, "KeyId")?;
            Request::TagResource(rq::TagResource {
                key,
                tags: tag_list(i)?,
            })
        }
        O::UntagResource => {
            let key = key(i, "KeyId")?;
            Request::UntagResource(rq::UntagResource {
                key,
                tag_keys: tag_keys(i)?,
            })
        }
        O::ListResourceTags => {
            let key = key(i, "KeyId")?;
            let limit = i.int("Limit", 1, 50)?.unwrap_or(50) as usize;
            Request::ListResourceTags(rq::KeyPage {
                key,
                page: Page {
                    limit,
                    marker: marker(i)?,
                },
                include_all_material: false,
            })
        }
        O::Sign | O::Verify => {
            let key = key(i, "KeyId")?;
            let message = message(i)?;
            let message_type = i.parse("MessageType", MessageType::parse)?;
            let algorithm = required(
                i.parse("SigningAlgorithm", SigningAlgorithm::parse)?,
                "SigningAlgorithm",
            )?;
            let dry_run = i.bool("DryRun")?;
            let signature = match op {
                O::Verify => Some(required(i.blob("Signature", 1, MAX_BLOB)?, "Signature")?),
                _ => None,
            };
            Request::Sign(rq::Sign {
                key,
                message,
                message_type,
                algorithm,
                signature,
                dry_run,
            })
        }
        O::GenerateMac | O::VerifyMac => {
            let message = message(i)?;
            let key = key(i, "KeyId")?;
            let algorithm = required(
                i.parse("MacAlgorithm", MacAlgorithm::parse)?,
                "MacAlgorithm",
            )?;
            let dry_run = i.bool("DryRun")?;
            let mac = match op {
                O::VerifyMac => Some(required(i.blob("Mac", 1, MAX_BLOB)?, "Mac")?),
                _ => None,
            };
            Request::Mac(rq::Mac {
                key,
                message,
                algorithm,
                mac,
                dry_run,
            })
        }
        O::DeriveSharedSecret => {
            let key = key(i, "KeyId")?;
            let algorithm = required(
                i.parse("KeyAgreementAlgorithm", KeyAgreementAlgorithm::parse)?,
                "KeyAgreementAlgorithm",
            )?;
            let public_key = required(i.blob("PublicKey", 1, 8192)?, "PublicKey")?;
            no_recipient(i)?;
            Request::DeriveSharedSecret(rq::DeriveSharedSecret {
                key,
                algorithm,
                public_key,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::GenerateDataKeyPair | O::GenerateDataKeyPairWithoutPlaintext => {
            let key = key(i, "KeyId")?;
            let spec = required(
                i.parse("KeyPairSpec", DataKeyPairSpec::parse)?,
                "KeyPairSpec",
            )?;
            no_recipient(i)?;
            Request::GenerateDataKeyPair(rq::GenerateDataKeyPair {
                key,
                spec,
                context: context(i, "EncryptionContext")?,
                with_plaintext: op == O::GenerateDataKeyPair,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::EnableKeyRotation => {
            let key = key(i, "KeyId")?;
            let period = i.int("RotationPeriodInDays", 90, 2560)?.map(|d| d as u32);
            Request::EnableKeyRotation(rq::EnableKeyRotation {
                key,
                period_days: period,
            })
        }
        O::ListKeyRotations => {
            let key = key(i, "KeyId")?;
            let all = match i.string("IncludeKeyMaterial")? {
                None | Some("ROTATIONS_ONLY") => false,
                Some("ALL_KEY_MATERIAL") => true,
                Some(other) => {
                    return Err(ApiError::validation(format!(
                        "1 validation error detected: Value '{other}' at 'includeKeyMaterial' failed to satisfy constraint: Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]"
                    )))
                }
            };
            Request::ListKeyRotations(rq::KeyPage {
                key,
                page: page(i)?,
                include_all_material: all,
            })
        }
        O::GetKeyPolicy => Request::GetKeyPolicy(rq::GetKeyPolicy {
            key: key(i, "KeyId")?,
            name: policy_name(i)?,
        }),
        O::PutKeyPolicy => {
            let key = key(i, "KeyId")?;
            let name = policy_name(i)?;
            let policy = i
                .string_len("Policy", 1, 131072)?
                .ok_or_else(|| Input::missing("Policy"))?
                .to_string();
            Request::PutKeyPolicy(rq::PutKeyPolicy {
                key,
                name,
                policy,
                bypass_policy_lockout_safety_check: i.bool("BypassPolicyLockoutSafetyCheck")?,
            })
        }
        O::ListKeyPolicies => {
            let key = key(i, "KeyId")?;
            let limit = i.int("Limit", 1, 1000)?.unwrap_or(100) as usize;
            Request::ListKeyPolicies(rq::KeyPage {
                key,
                page: Page {
                    limit,
                    marker: marker(i)?,
                },
                include_all_material: false,
            })
        }
        O::CreateGrant => Request::CreateGrant(create_grant(i)?),
        O::ListGrants => {
            let key = key(i, "KeyId")?;
            Request::ListGrants(rq::ListGrants {
                key,
                grant_id: i.string_len("GrantId", 1, 128)?.map(str::to_string),
                grantee: opt_principal(i, "GranteePrincipal")?,
                page: grant_page(i)?,
            })
        }
        O::ListRetirableGrants => Request::ListRetirableGrants(rq::ListRetirableGrants {
            retiring: required(opt_principal(i, "RetiringPrincipal")?, "RetiringPrincipal")?,
            page: grant_page(i)?,
        }),
        O::RetireGrant => {
            let token = i.string_len("GrantToken", 1, 8192)?;
            let key = opt_key(i, "KeyId")?;
            let grant_id = i.string_len("GrantId", 1, 128)?;
            let grant = match (token, key, grant_id) {
                (Some(t), _, _) => rq::GrantRef::Token(t.to_string()),
                (None, Some(key), Some(id)) => rq::GrantRef::Id {
                    key,
                    grant_id: id.to_string(),
                },
                _ => {
                    return Err(ApiError::validation(
                        "Grant token OR (grant ID, key ID) must be specified",
                    ))
                }
            };
            Request::RetireGrant(rq::RetireGrant {
                grant,
                dry_run: i.bool("DryRun")?,
            })
        }
        O::RevokeGrant => {
            let key = key(i, "KeyId")?;
            let grant_id = required(i.string_len("GrantId", 1, 128)?, "GrantId")?;
            Request::RevokeGrant(rq::RevokeGrant {
                key,
                grant_id: grant_id.to_string(),
                dry_run: i.bool("DryRun")?,
            })
        }
        O::GetParametersForImport => {
            let key = key(i, "KeyId")?;
            let algorithm = required(
                i.parse("WrappingAlgorithm", WrappingAlgorithm::parse)?,
                "WrappingAlgorithm",
            )?;
            let spec = required(
                i.parse("WrappingKeySpec", WrappingKeySpec::parse)?,
                "WrappingKeySpec",
            )?;
            Request::GetParametersForImport(rq::GetParametersForImport {
                key,
                algorithm,
                spec,
            })
        }
        O::ImportKeyMaterial => {
            let key = key(i, "KeyId")?;
            let token = required(i.blob("ImportToken", 1, MAX_BLOB)?, "ImportToken")?;
            let wrapped = required(
                i.blob("EncryptedKeyMaterial", 1, MAX_BLOB)?,
                "EncryptedKeyMaterial",
            )?;
            let description = i.string_len("KeyMaterialDescription", 0, 256)?;
            if let Some(d) = description {
                if !d.is_empty()
                    && !d.chars().all(|c| {
                        c.is_ascii_alphanumeric() || c.is_whitespace() || ":/_.-".contains(c)
                    })
                {
                    return Err(ApiError::validation(format!(
                        "1 validation error detected: Value '{d}' at 'keyMaterialDescription' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_\\s.-]+$"
                    )));
                }
            }
            Request::ImportKeyMaterial(rq::ImportKeyMaterial {
                key,
                token,
                wrapped,
                valid_to: i.timestamp("ValidTo")?,
                expiration_model: i.parse("ExpirationModel", ExpirationModel::parse)?,
                import_type: i.parse("ImportType", ImportType::parse)?,
                description: description.map(str::to_string),
                material_id: material_id(i)?,
            })
        }
        O::DeleteImportedKeyMaterial => {
            let key = key(i, "KeyId")?;
            Request::DeleteImportedKeyMaterial(rq::DeleteImportedKeyMaterial {
                key,
                material_id: material_id(i)?,
            })
        }
        other => {
            debug_assert!(!other.is_built());
            return Err(ApiError::unknown_operation());
        }
    })
}

/// `KeyMaterialId` (optional; exactly 64 lowercase hex characters).
fn material_id(i: &Input<'_>) -> Result<Option<String>, ApiError> {
    let Some(id) = i.string_len("KeyMaterialId", 64, 64)? else {
        return Ok(None);
    };
    if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{id}' at 'keyMaterialId' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-f0-9]+$"
        )));
    }
    Ok(Some(id.to_string()))
}

fn create_key(i: &Input<'_>) -> Result<rq::CreateKey, ApiError> {
    if i.string("CustomKeyStoreId")?.is_some() || i.string("XksKeyId")?.is_some() {
        return Err(unsupported("Custom key stores are not supported yet."));
    }
    let key_spec = match i.parse("KeySpec", KeySpec::parse)? {
        Some(s) => Some(s),
        None => i.parse("CustomerMasterKeySpec", KeySpec::parse)?,
    };
    Ok(rq::CreateKey {
        policy: i.string_len("Policy", 1, 131072)?.map(str::to_string),
        bypass_policy_lockout_safety_check: i.bool("BypassPolicyLockoutSafetyCheck")?,
        description: i.string_len("Description", 0, 8192)?.map(str::to_string),
        key_usage: i.parse("KeyUsage", KeyUsage::parse)?,
        key_spec,
        origin: i.parse("Origin", Origin::parse)?,
        tags: tags(i)?,
        multi_region: i.bool("MultiRegion")?,
    })
}

/// `PolicyName` (optional; `[\w]+`, 1–128 characters).
fn policy_name(i: &Input<'_>) -> Result<Option<String>, ApiError> {
    let name = i.string_len("PolicyName", 1, 128)?;
    if let Some(n) = name {
        if !n.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{n}' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w]+"
            )));
        }
    }
    Ok(name.map(str::to_string))
}

/// A required key reference member.
fn key(i: &Input<'_>, member: &str) -> Result<KeyRef, ApiError> {
    KeyRef::from_member(i.req_string(member)?).map_err(ApiError::from)
}

/// An optional key reference member.
fn opt_key(i: &Input<'_>, member: &str) -> Result<Option<KeyRef>, ApiError> {
    i.string(member)?
        .map(|s| KeyRef::from_member(s).map_err(ApiError::from))
        .transpose()
}

fn alias(i: &Input<'_>) -> Result<AliasName, ApiError> {
    alias_name(i.req_string("AliasName")?)
}

/// An `AliasName` value, its format errors reported at `aliasName`.
fn alias_name(name: &str) -> Result<AliasName, ApiError> {
    AliasName::parse(name).map_err(|e| ApiError::validation(e.at("aliasName").to_string()))
}

fn set_alias(i: &Input<'_>) -> Result<rq::SetAlias, ApiError> {
    // Both members' presence and the target's length are checked before the alias format.
    let name = i.req_string("AliasName")?;
    let target = key(i, "TargetKeyId")?;
    Ok(rq::SetAlias {
        alias: alias_name(name)?,
        target,
    })
}

fn context(i: &Input<'_>, member: &str) -> Result<EncryptionContext, ApiError> {
    if let Some(v) = i.raw(member) {
        if !v.is_object() {
            return Err(ApiError::serialization(format!(
                "Unexpected value type for member '{member}': expected a map"
            )));
        }
    }
    EncryptionContext::from_json(i.raw(member)).map_err(ApiError::from)
}

/// The `GrantTokens` of an operation that takes them (none for the others): at most 10,
/// each a string of 1 to 8192 characters. Whether each is a token this service issued is
/// the domain's check ([`crate::kms::Kms::check_grant_tokens`]). Never echoes a token.
pub(crate) fn grant_tokens(op: Operation, i: &Input<'_>) -> Result<Vec<String>, ApiError> {
    if !op.takes_grant_tokens() {
        return Ok(Vec::new());
    }
    let list = i.list("GrantTokens")?;
    if list.len() > 10 {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(n, t)| {
            let t = t.as_str().ok_or_else(|| {
                ApiError::serialization(
                    "Unexpected value type for member 'GrantTokens': expected a list of strings",
                )
            })?;
            let len = t.chars().count();
            if !(1..=8192).contains(&len) {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value at 'grantTokens.{}.member' failed to satisfy constraint: Member must have length {}",
                    n + 1,
                    if len < 1 { "greater than or equal to 1" } else { "less than or equal to 8192" }
                )));
            }
            Ok(t.to_string())
        })
        .collect()
}

/// `Limit` (1–100, default 50) and `Marker` of the grant listings.
fn grant_page(i: &Input<'_>) -> Result<Page, ApiError> {
    Ok(Page {
        limit: i.int("Limit", 1, 100)?.unwrap_or(50) as usize,
        marker: marker(i)?,
    })
}

/// An optional principal member (`GranteePrincipal`, `RetiringPrincipal`): 1–256 characters
/// of `[\w+=,.@:/-]` (the model's `PrincipalIdType`) naming a principal a grant may name.
fn opt_principal(i: &Input<'_>, member: &str) -> Result<Option<String>, ApiError> {
    let Some(p) = i.string_len(member, 1, 256)? else {
        return Ok(None);
    };
    let at = lower_first(member);
    if !p
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || "+=,.@:/-".contains(c))
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{p}' at '{at}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[\\w+=,.@:/-]+$"
        )));
    }
    if !is_grant_principal(p) {
        return Err(ApiError::validation(format!("Invalid {member}: '{p}'")));
    }
    Ok(Some(p.to_string()))
}

fn lower_first(m: &str) -> String {
    let mut c = m.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// CreateGrant's members.
fn create_grant(i: &Input<'_>) -> Result<rq::CreateGrant, ApiError> {
    let key = key(i, "KeyId")?;
    let grantee = required(opt_principal(i, "GranteePrincipal")?, "GranteePrincipal")?;
    if i.raw("Operations").is_none() {
        return Err(Input::missing("Operations"));
    }
    let mut operations = Vec::new();
    for (n, o) in i.list("Operations")?.iter().enumerate() {
        let o = o.as_str().ok_or_else(|| {
            ApiError::serialization(
                "Unexpected value type for member 'Operations': expected a list of strings",
            )
        })?;
        let o = GrantOperation::parse(o).map_err(|e| {
            ApiError::validation(e.at(format!("operations.{}.member", n + 1)).to_string())
        })?;
        if !operations.contains(&o) {
            operations.push(o);
        }
    }
    if operations.is_empty() {
        return Err(ApiError::validation(
            "1 validation error detected: Value '[]' at 'operations' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    let retiring = opt_principal(i, "RetiringPrincipal")?;
    let constraints = match i.raw("Constraints") {
        None => None,
        Some(v) => {
            let obj = v.as_object().ok_or_else(|| {
                ApiError::serialization(
                    "Unexpected value type for member 'Constraints': expected a structure",
                )
            })?;
            let ci = Input::new(obj);
            let subset = ci
                .raw("EncryptionContextSubset")
                .map(|_| context(&ci, "EncryptionContextSubset"))
                .transpose()?;
            let equals = ci
                .raw("EncryptionContextEquals")
                .map(|_| context(&ci, "EncryptionContextEquals"))
                .transpose()?;
            GrantConstraints::new(subset, equals)?
        }
    };
    let name = i.string_len("Name", 1, 256)?;
    if let Some(n) = name {
        if !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b))
        {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{n}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
            )));
        }
    }
    Ok(rq::CreateGrant {
        key,
        grantee,
        retiring,
        operations,
        constraints,
        name: name.map(str::to_string),
        dry_run: i.bool("DryRun")?,
    })
}

fn page(i: &Input<'_>) -> Result<Page, ApiError> {
    Ok(Page {
        limit: i.int("Limit", 1, 1000)?.unwrap_or(100) as usize,
        marker: marker(i)?,
    })
}

fn marker(i: &Input<'_>) -> Result<Option<String>, ApiError> {
    Ok(i.string_len("Marker", 1, 1024)?.map(str::to_string))
}

fn message(i: &Input<'_>) -> Result<Plaintext, ApiError> {
    let m = i
        .blob("Message", 1, 4096)?
        .ok_or_else(|| Input::missing("Message"))?;
    Ok(Plaintext::new(m)?)
}

fn required<T>(v: Option<T>, member: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| Input::missing(member))
}

fn no_recipient(i: &Input<'_>) -> Result<(), ApiError> {
    if i.raw("Recipient").is_some() {
        return Err(unsupported(
            "Recipient (Nitro Enclaves attestation) is not supported.",
        ));
    }
    Ok(())
}

/// CreateKey's optional `Tags`.
fn tags(i: &Input<'_>) -> Result<Vec<Tag>, ApiError> {
    i.list("Tags")?
        .iter()
        .map(|t| {
            let obj = t
                .as_object()
                .ok_or_else(|| ApiError::serialization("Each tag must be an object"))?;
            let i = Input::new(obj);
            let k = i.req_string("TagKey")?;
            let v = i.req_string("TagValue")?;
            Tag::new(k, v).map_err(|e| ApiError::new("TagException", e.to_string()))
        })
        .collect()
}

fn too_long(value: &str, at: &str, max: usize) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value '{value}' at '{at}' failed to satisfy constraint: Member must have length less than or equal to {max}"
    ))
}

fn too_short(at: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value '' at '{at}' failed to satisfy constraint: Member must have length greater than or equal to 1"
    ))
}

/// `Tags` of TagResource: required; each tag an object with `TagKey` (1–128) and
/// `TagValue` (0–256); length violations are `ValidationException` as the API model says.
fn tag_list(i: &Input<'_>) -> Result<Vec<Tag>, ApiError> {
    if i.raw("Tags").is_none() {
        return Err(Input::missing("Tags"));
    }
    i.list("Tags")?
        .iter()
        .enumerate()
        .map(|(n, t)| {
            let obj = t.as_object().ok_or_else(|| {
                ApiError::serialization("Unexpected value type for member 'Tags': expected a list of Tag structures")
            })?;
            let ti = Input::new(obj);
            let at = |m: &str| format!("tags.{}.member.{m}", n + 1);
            let k = ti.string("TagKey")?.ok_or_else(|| {
                ApiError::validation(format!("1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null", at("tagKey")))
            })?;
            let v = ti.string("TagValue")?.ok_or_else(|| {
                ApiError::validation(format!("1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null", at("tagValue")))
            })?;
            if k.is_empty() {
                return Err(too_short(&at("tagKey")));
            }
            if k.chars().count() > 128 {
                return Err(too_long(k, &at("tagKey"), 128));
            }
            if v.chars().count() > 256 {
                return Err(too_long(v, &at("tagValue"), 256));
            }
            Tag::new(k, v).map_err(ApiError::from)
        })
        .collect()
}

/// `TagKeys` of UntagResource: required list of strings, each 1–128 characters.
fn tag_keys(i: &Input<'_>) -> Result<Vec<String>, ApiError> {
    if i.raw("TagKeys").is_none() {
        return Err(Input::missing("TagKeys"));
    }
    i.list("TagKeys")?
        .iter()
        .enumerate()
        .map(|(n, k)| {
            let at = format!("tagKeys.{}.member", n + 1);
            let k = k.as_str().ok_or_else(|| {
                ApiError::serialization(
                    "Unexpected value type for member 'TagKeys': expected a list of strings",
                )
            })?;
            if k.is_empty() {
                return Err(too_short(&at));
            }
            if k.chars().count() > 128 {
                return Err(too_long(k, &at, 128));
            }
            Ok(k.to_string())
        })
        .collect()
}
