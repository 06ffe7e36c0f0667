//! Handlers of the asymmetric and HMAC family: Sign, Verify, GetPublicKey, GenerateMac,
//! VerifyMac, DeriveSharedSecret, GenerateDataKeyPair(WithoutPlaintext). (RSA Encrypt and
//! Decrypt go through the core handlers.)

use super::{context, grant_tokens, json};
use crate::api::error::ApiError;
use crate::api::input::Input;
use crate::auth::Principal;
use crate::kms::types::{
    DataKeyPairSpec, KeyAgreementAlgorithm, MacAlgorithm, MessageType, Plaintext, SigningAlgorithm,
};
use crate::kms::Kms;
use axum::response::Response;

/// The operations this family answers.
pub const OPS: &[&str] = &[
    "Sign",
    "Verify",
    "GetPublicKey",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

/// Largest signature / MAC blob the API accepts (`CiphertextType`).
const MAX_BLOB: usize = 6144;

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
        return Err(ApiError::new(
            "UnsupportedOperationException",
            "Recipient (Nitro Enclaves attestation) is not supported.",
        ));
    }
    Ok(())
}

pub async fn handle(
    kms: &Kms,
    p: &Principal,
    op: &str,
    i: &Input<'_>,
) -> Result<Response, ApiError> {
    let key = || i.req_string("KeyId");
    Ok(match op {
        "Sign" | "Verify" => {
            grant_tokens(i)?;
            let k = key()?;
            let msg = message(i)?;
            let mt = i.parse("MessageType", MessageType::parse)?;
            let alg = required(
                i.parse("SigningAlgorithm", SigningAlgorithm::parse)?,
                "SigningAlgorithm",
            )?;
            let dry = i.bool("DryRun")?;
            if op == "Sign" {
                json(&kms.sign(p, k, msg, mt, alg, dry).await?)
            } else {
                let sig = required(i.blob("Signature", 1, MAX_BLOB)?, "Signature")?;
                json(&kms.verify(p, k, msg, mt, sig, alg, dry).await?)
            }
        }
        "GetPublicKey" => {
            grant_tokens(i)?;
            json(&kms.get_public_key(p, key()?)?)
        }
        "GenerateMac" | "VerifyMac" => {
            grant_tokens(i)?;
            let msg = message(i)?;
            let k = key()?;
            let alg = required(
                i.parse("MacAlgorithm", MacAlgorithm::parse)?,
                "MacAlgorithm",
            )?;
            let dry = i.bool("DryRun")?;
            if op == "GenerateMac" {
                json(&kms.generate_mac(p, k, msg, alg, dry).await?)
            } else {
                let mac = required(i.blob("Mac", 1, MAX_BLOB)?, "Mac")?;
                json(&kms.verify_mac(p, k, msg, mac, alg, dry).await?)
            }
        }
        "DeriveSharedSecret" => {
            grant_tokens(i)?;
            let k = key()?;
            let alg = required(
                i.parse("KeyAgreementAlgorithm", KeyAgreementAlgorithm::parse)?,
                "KeyAgreementAlgorithm",
            )?;
            let public = required(i.blob("PublicKey", 1, 8192)?, "PublicKey")?;
            no_recipient(i)?;
            json(
                &kms.derive_shared_secret(p, k, alg, &public, i.bool("DryRun")?)
                    .await?,
            )
        }
        "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
            grant_tokens(i)?;
            let k = key()?;
            let spec = required(
                i.parse("KeyPairSpec", DataKeyPairSpec::parse)?,
                "KeyPairSpec",
            )?;
            no_recipient(i)?;
            json(
                &kms.generate_data_key_pair(
                    p,
                    k,
                    spec,
                    context(i, "EncryptionContext")?,
                    op == "GenerateDataKeyPair",
                    i.bool("DryRun")?,
                )
                .await?,
            )
        }
        _ => return Err(ApiError::unknown_operation()),
    })
}
