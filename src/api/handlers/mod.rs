//! Thin handlers: request members → domain inputs → `Kms` → JSON output. One arm per
//! supported operation, grouped by family: the core symmetric surface here, other families
//! in submodules (each `handle` answers `None` for operations it does not own); anything
//! no family owns is `UnknownOperationException`.

use super::error::ApiError;
use super::input::Input;
use crate::auth::Principal;
use crate::kms::context::EncryptionContext;
use crate::kms::types::{
    DataKeySpec, EncryptionAlgorithm, KeySpec, KeyUsage, Origin, Plaintext, Tag,
};
use crate::kms::{CreateKeyInput, DataKeySize, Kms};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

mod asymmetric;
mod lifecycle;
mod rotation;

pub(crate) fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => b.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            ApiError::new("KMSInternalException", "An internal error occurred.")
                .into_response_with("")
        }
    }
}

/// Largest ciphertext blob AWS accepts.
const MAX_CIPHERTEXT_BLOB: usize = 6144;

pub(crate) fn context(input: &Input<'_>, member: &str) -> Result<EncryptionContext, ApiError> {
    if let Some(v) = input.raw(member) {
        if !v.is_object() {
            return Err(ApiError::serialization(format!(
                "Unexpected value type for member '{member}': expected a map"
            )));
        }
    }
    EncryptionContext::from_json(input.raw(member)).map_err(ApiError::from)
}

pub(crate) fn grant_tokens(input: &Input<'_>) -> Result<(), ApiError> {
    let list = input.list("GrantTokens")?;
    if list.len() > 10 {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10",
        ));
    }
    Ok(())
}

pub(crate) fn limit(input: &Input<'_>) -> Result<usize, ApiError> {
    Ok(input.int("Limit", 1, 1000)?.unwrap_or(100) as usize)
}

pub(crate) fn marker(input: &Input<'_>) -> Result<Option<String>, ApiError> {
    Ok(input.string_len("Marker", 1, 1024)?.map(str::to_string))
}

pub(crate) fn tags(input: &Input<'_>) -> Result<Vec<Tag>, ApiError> {
    input
        .list("Tags")?
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

pub async fn dispatch(
    kms: &Kms,
    p: &Principal,
    op: &str,
    i: Input<'_>,
) -> Result<Response, ApiError> {
    // Families in submodules claim their operations first.
    if lifecycle::OPS.contains(&op) {
        return lifecycle::handle(kms, p, op, &i).await;
    }
    lifecycle::prepare(kms, p, op, &i).await?;
    if asymmetric::OPS.contains(&op) {
        return asymmetric::handle(kms, p, op, &i).await;
    }
    if rotation::OPS.contains(&op) {
        return rotation::handle(kms, p, op, &i).await;
    }
    core(kms, p, op, i).await
}

async fn core(kms: &Kms, p: &Principal, op: &str, i: Input<'_>) -> Result<Response, ApiError> {
    let key = |m: &str| i.req_string(m);
    let alg = |m: &str| i.parse(m, EncryptionAlgorithm::parse);
    Ok(match op {
        "CreateKey" => {
            if i.string("CustomKeyStoreId")?.is_some() || i.string("XksKeyId")?.is_some() {
                return Err(ApiError::new(
                    "UnsupportedOperationException",
                    "Custom key stores are not supported yet.",
                ));
            }
            let key_spec = match i.parse("KeySpec", KeySpec::parse)? {
                Some(s) => Some(s),
                None => i.parse("CustomerMasterKeySpec", KeySpec::parse)?,
            };
            i.string_len("Policy", 1, 131072)?;
            i.bool("BypassPolicyLockoutSafetyCheck")?;
            json(
                &kms.create_key(
                    p,
                    CreateKeyInput {
                        description: i.string_len("Description", 0, 8192)?.map(str::to_string),
                        key_usage: i.parse("KeyUsage", KeyUsage::parse)?,
                        key_spec,
                        origin: i.parse("Origin", Origin::parse)?,
                        tags: tags(&i)?,
                        multi_region: i.bool("MultiRegion")?,
                    },
                )
                .await?,
            )
        }
        "DescribeKey" => {
            grant_tokens(&i)?;
            json(&kms.describe_key(p, key("KeyId")?)?)
        }
        "ListKeys" => json(&kms.list_keys(p, limit(&i)?, marker(&i)?).await?),
        "Encrypt" => {
            grant_tokens(&i)?;
            let k = key("KeyId")?;
            let pt = i
                .blob("Plaintext", 1, 4096)?
                .ok_or_else(|| Input::missing("Plaintext"))?;
            let pt = Plaintext::new(pt)?;
            json(
                &kms.encrypt(
                    p,
                    k,
                    pt,
                    context(&i, "EncryptionContext")?,
                    alg("EncryptionAlgorithm")?,
                    i.bool("DryRun")?,
                )
                .await?,
            )
        }
        "Decrypt" => {
            grant_tokens(&i)?;
            if i.raw("Recipient").is_some() {
                return Err(ApiError::new(
                    "UnsupportedOperationException",
                    "Recipient (Nitro Enclaves attestation) is not supported.",
                ));
            }
            let blob = i
                .blob("CiphertextBlob", 1, MAX_CIPHERTEXT_BLOB)?
                .ok_or_else(|| Input::missing("CiphertextBlob"))?;
            json(
                &kms.decrypt(
                    p,
                    &blob,
                    i.string("KeyId")?,
                    context(&i, "EncryptionContext")?,
                    alg("EncryptionAlgorithm")?,
                    i.bool("DryRun")?,
                )
                .await?,
            )
        }
        "ReEncrypt" => {
            grant_tokens(&i)?;
            let blob = i
                .blob("CiphertextBlob", 1, MAX_CIPHERTEXT_BLOB)?
                .ok_or_else(|| Input::missing("CiphertextBlob"))?;
            json(
                &kms.re_encrypt(
                    p,
                    &blob,
                    i.string("SourceKeyId")?,
                    context(&i, "SourceEncryptionContext")?,
                    alg("SourceEncryptionAlgorithm")?,
                    key("DestinationKeyId")?,
                    context(&i, "DestinationEncryptionContext")?,
                    alg("DestinationEncryptionAlgorithm")?,
                    i.bool("DryRun")?,
                )
                .await?,
            )
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            grant_tokens(&i)?;
            let k = key("KeyId")?;
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
            if i.raw("Recipient").is_some() {
                return Err(ApiError::new(
                    "UnsupportedOperationException",
                    "Recipient (Nitro Enclaves attestation) is not supported.",
                ));
            }
            json(
                &kms.generate_data_key(
                    p,
                    k,
                    size,
                    context(&i, "EncryptionContext")?,
                    op == "GenerateDataKey",
                    i.bool("DryRun")?,
                )
                .await?,
            )
        }
        "GenerateRandom" => {
            if i.string("CustomKeyStoreId")?.is_some() {
                return Err(ApiError::new(
                    "CustomKeyStoreNotFoundException",
                    "Custom key stores are not supported yet.",
                ));
            }
            let n = i
                .int("NumberOfBytes", 1, 1024)?
                .ok_or_else(|| Input::missing("NumberOfBytes"))?;
            json(&kms.generate_random(n as usize).await?)
        }
        "CreateAlias" => json(
            &kms.create_alias(p, i.req_string("AliasName")?, key("TargetKeyId")?)
                .await?,
        ),
        "UpdateAlias" => json(
            &kms.update_alias(p, i.req_string("AliasName")?, key("TargetKeyId")?)
                .await?,
        ),
        "DeleteAlias" => json(&kms.delete_alias(p, i.req_string("AliasName")?).await?),
        "ListAliases" => json(
            &kms.list_aliases(p, i.string("KeyId")?, limit(&i)?, marker(&i)?)
                .await?,
        ),
        _ => return Err(ApiError::unknown_operation()),
    })
}
