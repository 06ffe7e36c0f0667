//! Handlers of the key-rotation family (EnableKeyRotation, DisableKeyRotation,
//! GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations).

use super::{json, limit, marker};
use crate::api::error::ApiError;
use crate::api::input::Input;
use crate::auth::Principal;
use crate::kms::Kms;
use axum::response::Response;

/// The operations this family answers.
pub const OPS: &[&str] = &[
    "EnableKeyRotation",
    "DisableKeyRotation",
    "GetKeyRotationStatus",
    "RotateKeyOnDemand",
    "ListKeyRotations",
];

pub async fn handle(
    kms: &Kms,
    p: &Principal,
    op: &str,
    i: &Input<'_>,
) -> Result<Response, ApiError> {
    let key = || {
        i.string_len("KeyId", 1, 2048)?
            .ok_or_else(|| Input::missing("KeyId"))
    };
    Ok(match op {
        "EnableKeyRotation" => {
            let k = key()?;
            let period = i.int("RotationPeriodInDays", 90, 2560)?.map(|d| d as u32);
            json(&kms.enable_key_rotation(p, k, period).await?)
        }
        "DisableKeyRotation" => json(&kms.disable_key_rotation(p, key()?).await?),
        "GetKeyRotationStatus" => json(&kms.get_key_rotation_status(p, key()?)?),
        "RotateKeyOnDemand" => json(&kms.rotate_key_on_demand(p, key()?).await?),
        "ListKeyRotations" => {
            let k = key()?;
            let all = match i.string("IncludeKeyMaterial")? {
                None | Some("ROTATIONS_ONLY") => false,
                Some("ALL_KEY_MATERIAL") => true,
                Some(other) => {
                    return Err(ApiError::validation(format!(
                        "1 validation error detected: Value '{other}' at 'includeKeyMaterial' failed to satisfy constraint: Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]"
                    )))
                }
            };
            let (n, m) = (limit(i)?, marker(i)?);
            json(&kms.list_key_rotations(p, k, all, n, m.as_deref())?)
        }
        _ => return Err(ApiError::unknown_operation()),
    })
}
