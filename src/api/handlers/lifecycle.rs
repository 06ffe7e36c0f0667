//! Handlers of the key-lifecycle family (EnableKey, DisableKey, UpdateKeyDescription, …).

use super::json;
use crate::api::error::ApiError;
use crate::api::input::Input;
use crate::auth::Principal;
use crate::kms::Kms;
use axum::response::Response;

/// The operations this family answers.
pub const OPS: &[&str] = &["EnableKey", "DisableKey", "UpdateKeyDescription"];

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
        _ => return Err(ApiError::unknown_operation()),
    })
}
