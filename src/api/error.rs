//! THE table of AWS error types and HTTP statuses, and the error response
//! (`{"__type": …, "message": …}` with `x-amzn-RequestId`). Internal causes are logged here
//! and never sent.

use crate::auth::AuthError;
use crate::kms::types::ValidationError;
use crate::kms::KmsError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    /// The AWS error type sent as `__type`, e.g. `NotFoundException`.
    pub aws_type: &'static str,
    /// The client-facing `message`; never an internal cause.
    pub message: String,
}

/// The HTTP status of every AWS error type this service sends.
pub fn status_of(aws_type: &str) -> StatusCode {
    match aws_type {
        "KMSInternalException" | "DependencyTimeoutException" | "KeyUnavailableException" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        "DryRunOperationException" => StatusCode::PRECONDITION_FAILED,
        "RequestEntityTooLargeException" => StatusCode::PAYLOAD_TOO_LARGE,
        // Named here so that the table lists every type the service sends: imports, and
        // the rate limit (CloudTrail's LookupEvents; 400 as AWS, which the SDKs retry).
        "ExpiredImportTokenException"
        | "InvalidImportTokenException"
        | "IncorrectKeyMaterialException"
        | "UnsupportedOperationException"
        | "ThrottlingException" => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl ApiError {
    /// An error of AWS type `aws_type` with the client-facing `message`.
    pub fn new(aws_type: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            aws_type,
            message: message.into(),
        }
    }
    /// A `SerializationException`: the body is not JSON or a member has the wrong JSON type.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new("SerializationException", message)
    }
    /// A `ValidationException`: a member is missing or out of its AWS constraints.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
    /// An `UnknownOperationException` (empty message, as AWS sends): `X-Amz-Target` names
    /// no KMS operation.
    pub fn unknown_operation() -> Self {
        Self::new("UnknownOperationException", "")
    }
    /// An `UnknownOperationException` for a request whose `Content-Type` is not the AWS JSON
    /// 1.1 protocol's: AWS finds no protocol, hence no operation, for such a request, and
    /// says so before it authenticates it.
    pub fn wrong_content_type() -> Self {
        Self::new(
            "UnknownOperationException",
            "The request's Content-Type must be application/x-amz-json-1.1",
        )
    }

    /// Render with the request id.
    pub fn into_response_with(self, request_id: &str) -> Response {
        let body = serde_json::json!({ "__type": self.aws_type, "message": self.message });
        let mut r = (status_of(self.aws_type), body.to_string()).into_response();
        super::set_headers(&mut r, request_id);
        r
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        if matches!(
            e,
            KmsError::Internal(_) | KmsError::Unavailable(_) | KmsError::TooFewHsms { .. }
        ) {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(e.aws_type(), e.client_message())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(e.aws_type(), e.message())
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::validation(e.to_string())
    }
}

/// The media type of the AWS JSON 1.1 protocol, of every request and every reply.
pub(crate) const JSON_1_1: &str = "application/x-amz-json-1.1";

pub(crate) fn content_type() -> HeaderValue {
    HeaderValue::from_static(JSON_1_1)
}
