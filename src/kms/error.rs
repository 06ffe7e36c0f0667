//! The domain's errors: one variant per AWS KMS exception the domain can raise, each with a
//! client-safe message. Internal causes (`Internal`, `Unavailable`) are logged by the API
//! layer and never sent to clients. The HTTP status lives in the API's table, not here.

use super::marker::InvalidMarker;
use super::types::{KeyRefError, ValidationError};
use super::vault::VaultError;
use crate::store::StoreError;

/// Why a KMS operation failed; [`KmsError::aws_type`] names the AWS exception.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("{0}")]
    /// `NotFoundException`: the key, alias or other resource does not exist.
    NotFound(String),
    #[error("{0}")]
    /// `DisabledException`: the key is disabled.
    Disabled(String),
    #[error("{0}")]
    /// `KMSInvalidStateException`: the key's state does not allow the operation.
    InvalidState(String),
    #[error("{0}")]
    /// `InvalidKeyUsageException`: the key's usage or spec does not allow the operation or
    /// algorithm.
    InvalidKeyUsage(String),
    #[error("{0}")]
    /// `InvalidCiphertextException`: the ciphertext, or its encryption context, is not
    /// valid.
    InvalidCiphertext(String),
    #[error("{0}")]
    /// `IncorrectKeyException`: the ciphertext was not encrypted under the key named.
    IncorrectKey(String),
    #[error("{0}")]
    /// `AlreadyExistsException`: the resource (an alias) already exists.
    AlreadyExists(String),
    #[error("{0}")]
    /// `ValidationException`: a parameter fails its constraints.
    Validation(String),
    #[error("{0}")]
    /// `InvalidAliasNameException`: the alias name is not valid.
    InvalidAliasName(String),
    #[error("{0}")]
    /// `InvalidMarkerException`: the pagination `Marker` is not one this service issued.
    InvalidMarker(String),
    #[error("{0}")]
    /// `InvalidArnException`: an ARN is not valid.
    InvalidArn(String),
    #[error("{0}")]
    /// `LimitExceededException`: the request would exceed a quota.
    LimitExceeded(String),
    #[error("{0}")]
    /// `MalformedPolicyDocumentException`: a key policy is not valid, or would lock its
    /// author out.
    MalformedPolicyDocument(String),
    #[error("{0}")]
    /// `TagException`: a tag is not valid, reserved, or over the limit.
    Tag(String),
    #[error("{0}")]
    /// `UnsupportedOperationException`: the operation is not supported here.
    Unsupported(String),
    #[error("{0}")]
    /// `NotAuthorizedException`: the caller may not do this (a reserved `alias/aws/`
    /// alias).
    NotAuthorized(String),
    #[error("{0}")]
    /// `AccessDeniedException`: the caller's permissions do not allow the operation.
    AccessDenied(String),
    #[error("{0}")]
    /// `KMSInvalidSignatureException`: the signature does not verify.
    InvalidSignature(String),
    #[error("{0}")]
    /// `KMSInvalidMacException`: the MAC does not verify.
    InvalidMac(String),
    #[error("{0}")]
    /// `ConflictException`: the request conflicts with the resource's current state.
    Conflict(String),
    #[error("{0}")]
    /// `InvalidGrantTokenException`: a grant token is not one this service issued.
    InvalidGrantToken(String),
    #[error("{0}")]
    /// `InvalidGrantIdException`: a `GrantId` is not a well-formed grant id.
    InvalidGrantId(String),
    #[error("{0}")]
    /// `ExpiredImportTokenException`: the import token (and its wrapping key) has expired.
    ExpiredImportToken(String),
    #[error("{0}")]
    /// `InvalidImportTokenException`: the import token is not one this service issued for
    /// this key.
    InvalidImportToken(String),
    #[error("{0}")]
    /// `IncorrectKeyMaterialException`: the imported material does not fit the key, or is
    /// not the material previously imported.
    IncorrectKeyMaterial(String),
    #[error("{0}")]
    /// `ThrottlingException`: the caller's account made more requests of this kind than
    /// its rate allows; the client may retry after a pause (the SDKs do).
    Throttled(String),
    #[error("The request would have succeeded, but the DryRun option is set.")]
    /// `DryRunOperationException`: the request would have succeeded but set `DryRun`.
    DryRun,
    /// The HSMs could not serve the request in time; the client may retry.
    #[error("internal: {0}")]
    Unavailable(String),
    /// Fewer HSMs than the operation needs hold a healthy copy (`DependencyTimeoutException`:
    /// the client may retry once an HSM returns). The message says so.
    #[error("Fewer than {needed} HSMs hold a healthy copy of the key material ({healthy} available); retry the request when an HSM returns.")]
    TooFewHsms {
        /// Usable HSMs.
        healthy: usize,
        /// HSMs needed.
        needed: usize,
    },
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
            KmsError::MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            KmsError::Tag(_) => "TagException",
            KmsError::Unsupported(_) => "UnsupportedOperationException",
            KmsError::NotAuthorized(_) => "NotAuthorizedException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::InvalidSignature(_) => "KMSInvalidSignatureException",
            KmsError::InvalidMac(_) => "KMSInvalidMacException",
            KmsError::Conflict(_) => "ConflictException",
            KmsError::InvalidGrantToken(_) => "InvalidGrantTokenException",
            KmsError::InvalidGrantId(_) => "InvalidGrantIdException",
            KmsError::ExpiredImportToken(_) => "ExpiredImportTokenException",
            KmsError::InvalidImportToken(_) => "InvalidImportTokenException",
            KmsError::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            KmsError::Throttled(_) => "ThrottlingException",
            KmsError::DryRun => "DryRunOperationException",
            KmsError::Unavailable(_) | KmsError::TooFewHsms { .. } => "DependencyTimeoutException",
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
            VaultError::WrongKeyMaterial(m) => KmsError::IncorrectKeyMaterial(m),
            VaultError::Unsupported { mechanism, .. } => KmsError::Unsupported(format!(
                "The HSMs of this key store do not offer {mechanism}."
            )),
            VaultError::Unavailable(m) => KmsError::Unavailable(m),
            VaultError::TooFewCopies { healthy, needed } => {
                KmsError::TooFewHsms { healthy, needed }
            }
            // A device fault that another HSM or a later call may not meet (the HSM failed
            // while the request was in flight, and failover did not save it): the client
            // may retry, so it is `DependencyTimeoutException`, never a 500 internal error.
            VaultError::Failed {
                message,
                retryable: true,
            } => KmsError::Unavailable(message),
            other @ VaultError::Failed { .. } => KmsError::Internal(other.to_string()),
        }
    }
}
