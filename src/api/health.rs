//! `GET /health`: liveness for anyone, the detail for an authenticated operator.
//!
//! Without an `Authorization` header the answer is `{"status":"ok"}` (200) while the
//! process serves: no names, no counts (readiness is `GET /ready`, see `api::metrics`).
//!
//! A request with an `Authorization` header is verified as SigV4 for this region and the
//! `kms` service, exactly as a KMS call (same credentials, same strictness). A verified caller
//! gets the HSMs' coarse state and its HTTP status:
//!
//! | healthy HSMs | `status` | HTTP |
//! |---|---|---|
//! | two or more | `ok` | 200 |
//! | one (keys are served, none created) | `degraded` | 200 |
//! | none | `down` | 503 |
//!
//! plus `keys` (how many keys are loaded) and `hsms` (per HSM: name, state, calls in
//! flight, counters, last error); a caller whose signature fails gets the AWS
//! authentication error. Neither form carries a PIN or a configured path.

use super::AppState;
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

pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serve `GET /health`.
pub(super) async fn health(State(app): State<Arc<AppState>>, req: Request) -> Response {
    if !req.headers().contains_key(AUTHORIZATION) {
        return json(StatusCode::OK, &serde_json::json!({ "status": "ok" }));
    }
    let request_id = crate::kms::types::random_uuid().to_string();
    match super::metrics::authenticate(&app, req, &request_id).await {
        Err(r) => r,
        Ok(principal) => {
            let hsms = app.kms.vault().health();
            let (status, code) = state(hsms.iter().filter(|h| h.healthy).count());
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
