//! `GET /health`: the coarse state for anyone, the detail for an authenticated operator.
//!
//! Without an `Authorization` header the answer is only `{"status": …}`:
//!
//! | healthy HSMs | `status` | HTTP |
//! |---|---|---|
//! | two or more | `ok` | 200 |
//! | one (keys are served, none created) | `degraded` | 200 |
//! | none | `down` | 503 |
//!
//! A request with an `Authorization` header is verified as SigV4 for this region and the
//! `kms` service, exactly as a KMS call (same credentials, same strictness). A verified caller
//! gets the same status and HTTP code plus `keys` (how many keys are loaded) and `hsms` (per
//! HSM: name, state, calls in flight, counters, last error); a caller whose signature fails
//! gets the AWS authentication error. Neither form carries a PIN or a configured path.

use super::error::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The coarse state and its HTTP status for `healthy` usable HSMs.
fn state(healthy: usize) -> (&'static str, StatusCode) {
    match healthy {
        0 => ("down", StatusCode::SERVICE_UNAVAILABLE),
        1 => ("degraded", StatusCode::OK),
        _ => ("ok", StatusCode::OK),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serve `GET /health`.
pub(super) async fn health(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let hsms = app.kms.vault().health();
    let (status, code) = state(hsms.iter().filter(|h| h.healthy).count());
    let (parts, body) = req.into_parts();
    if !parts.headers.contains_key(AUTHORIZATION) {
        return json(code, &serde_json::json!({ "status": status }));
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let Ok(body) = axum::body::to_bytes(Body::new(body), app.max_body_bytes).await else {
        return ApiError::new(
            "RequestEntityTooLargeException",
            format!("Request body is larger than {} bytes", app.max_body_bytes),
        )
        .into_response_with(&request_id);
    };
    let verified = super::pipeline::verify_signature(&app, &parts, &body);
    match verified {
        Err(e) => ApiError::from(e).into_response_with(&request_id),
        Ok(principal) => {
            tracing::debug!(principal = %principal.arn, "health detail");
            let hsms: Vec<serde_json::Value> = hsms.into_iter().map(|h| h.detail).collect();
            let mut r = json(
                code,
                &serde_json::json!({
                    "status": status,
                    "keys": app.kms.key_count(),
                    "hsms": hsms,
                }),
            );
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut().insert("x-amzn-requestid", v);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_state_and_its_status() {
        assert_eq!(state(0), ("down", StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(state(1), ("degraded", StatusCode::OK));
        assert_eq!(state(2), ("ok", StatusCode::OK));
        assert_eq!(state(3), ("ok", StatusCode::OK));
    }
}
