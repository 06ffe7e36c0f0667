//! Handlers of the key-lifecycle family (EnableKey, DisableKey, UpdateKeyDescription,
//! ScheduleKeyDeletion, CancelKeyDeletion, TagResource, UntagResource, ListResourceTags),
//! and the first-use hook that creates AWS managed keys (`alias/aws/<service>`).

use super::{json, marker};
use crate::api::error::ApiError;
use crate::api::input::Input;
use crate::auth::Principal;
use crate::kms::types::Tag;
use crate::kms::Kms;
use axum::response::Response;
use serde_json::Value;

/// The operations this family answers.
pub const OPS: &[&str] = &[
    "EnableKey",
    "DisableKey",
    "UpdateKeyDescription",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "TagResource",
    "UntagResource",
    "ListResourceTags",
];

/// Operations that create an AWS managed key when they name `alias/aws/<service>`
/// before it exists, and the member that names the key.
const AWS_MANAGED_FIRST_USE: &[(&str, &str)] = &[
    ("Encrypt", "KeyId"),
    ("GenerateDataKey", "KeyId"),
    ("GenerateDataKeyWithoutPlaintext", "KeyId"),
    ("DescribeKey", "KeyId"),
    ("ReEncrypt", "DestinationKeyId"),
];

/// Runs before other families' handlers: creates the AWS managed key on first use.
pub async fn prepare(kms: &Kms, p: &Principal, op: &str, i: &Input<'_>) -> Result<(), ApiError> {
    if let Some((_, member)) = AWS_MANAGED_FIRST_USE.iter().find(|(o, _)| *o == op) {
        if let Some(Value::String(k)) = i.raw(member) {
            kms.ensure_aws_managed_key(p, k).await?;
        }
    }
    Ok(())
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

pub async fn handle(
    kms: &Kms,
    p: &Principal,
    op: &str,
    i: &Input<'_>,
) -> Result<Response, ApiError> {
    Ok(match op {
        "EnableKey" => json(&kms.enable_key(p, i.req_string("KeyId")?).await?),
        "DisableKey" => json(&kms.disable_key(p, i.req_string("KeyId")?).await?),
        "UpdateKeyDescription" => {
            let d = i
                .string_len("Description", 0, 8192)?
                .ok_or_else(|| Input::missing("Description"))?;
            json(
                &kms.update_key_description(p, i.req_string("KeyId")?, d.to_string())
                    .await?,
            )
        }
        "ScheduleKeyDeletion" => {
            let k = i.req_string("KeyId")?;
            let days = i.int("PendingWindowInDays", 7, 30)?.map(|d| d as u32);
            json(&kms.schedule_key_deletion(p, k, days).await?)
        }
        "CancelKeyDeletion" => json(&kms.cancel_key_deletion(p, i.req_string("KeyId")?).await?),
        "TagResource" => {
            let k = i.req_string("KeyId")?;
            json(&kms.tag_resource(p, k, tag_list(i)?).await?)
        }
        "UntagResource" => {
            let k = i.req_string("KeyId")?;
            json(&kms.untag_resource(p, k, tag_keys(i)?).await?)
        }
        "ListResourceTags" => {
            let k = i.req_string("KeyId")?;
            let limit = i.int("Limit", 1, 50)?.unwrap_or(50) as usize;
            let m = marker(i)?;
            json(&kms.list_resource_tags(p, k, limit, m.as_deref())?)
        }
        _ => return Err(ApiError::unknown_operation()),
    })
}
