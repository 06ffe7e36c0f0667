//! The domain's errors: one variant per AWS KMS exception the domain can raise, each with a
//! client-safe message. Internal causes (`Internal`, `Unavailable`) are logged by the API
//! layer and never sent to clients. The HTTP status lives in the API's table, not here.

use super::marker::InvalidMarker;
use super::types::{KeyRefError, ValidationError};
use super::vault::VaultError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Disabled(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    InvalidKeyUsage(String),
    #[error("{0}")]
    InvalidCiphertext(String),
    #[error("{0}")]
    IncorrectKey(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    InvalidAliasName(String),
    #[error("{0}")]
    InvalidMarker(String),
    #[error("{0}")]
    InvalidArn(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    InvalidMac(String),
    #[error("{0}")]
    Conflict(String),
    #[error("The request would have succeeded, but the DryRun option is set.")]
    DryRun,
    /// The HSMs could not serve the request in time; the client may retry.
    #[error("internal: {0}")]
    Unavailable(String),
    /// A bug or storage failure; the cause is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl KmsError {
    /// The AWS exception name (`__type`).
    pub fn aws_type(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::InvalidAliasName(_) => "InvalidAliasNameException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::InvalidArn(_) => "InvalidArnException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::Tag(_) => "TagException",
            KmsError::Unsupported(_) => "UnsupportedOperationException",
            KmsError::NotAuthorized(_) => "NotAuthorizedException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::InvalidSignature(_) => "KMSInvalidSignatureException",
            KmsError::InvalidMac(_) => "KMSInvalidMacException",
            KmsError::Conflict(_) => "ConflictException",
            KmsError::DryRun => "DryRunOperationException",
            KmsError::Unavailable(_) => "DependencyTimeoutException",
            KmsError::Internal(_) => "KMSInternalException",
        }
    }

    /// The message a client may see.
    pub fn client_message(&self) -> String {
        match self {
            KmsError::Internal(_) => "An internal error occurred.".into(),
            KmsError::Unavailable(_) => {
                "The HSMs did not answer in time; retry the request.".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<ValidationError> for KmsError {
    fn from(e: ValidationError) -> Self {
        KmsError::Validation(e.to_string())
    }
}

impl From<KeyRefError> for KmsError {
    fn from(e: KeyRefError) -> Self {
        match e {
            KeyRefError::Validation(v) => KmsError::Validation(v.to_string()),
            KeyRefError::NotFound(m) => KmsError::NotFound(m),
        }
    }
}

impl From<StoreError> for KmsError {
    fn from(e: StoreError) -> Self {
        KmsError::Internal(format!("metadata store: {e}"))
    }
}

impl From<InvalidMarker> for KmsError {
    fn from(e: InvalidMarker) -> Self {
        KmsError::InvalidMarker(e.to_string())
    }
}

impl From<VaultError> for KmsError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidCiphertext => KmsError::InvalidCiphertext(String::new()),
            VaultError::InvalidInput(m) => KmsError::Validation(m),
            VaultError::Unsupported { mechanism, .. } => KmsError::Unsupported(format!(
                "The HSMs of this key store do not offer {mechanism}."
            )),
            VaultError::Unavailable(m) => KmsError::Unavailable(m),
            other @ VaultError::Failed { .. } => KmsError::Internal(other.to_string()),
        }
    }
}
