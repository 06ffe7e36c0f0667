//! The HTTP front: AWS KMS JSON 1.1 over `POST /` (`X-Amz-Target: TrentService.<Op>`),
//! SigV4 on every request, JSON members parsed into domain types at the edge, errors from
//! one table. Also `GET /health` with the state of every HSM.

pub mod error;
mod handlers;
mod input;

use crate::auth::{CredentialLookup, RequestParts};
use crate::clock::Clock;
use crate::kms::Kms;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use error::ApiError;
use std::sync::Arc;

/// Everything a request needs.
pub struct AppState {
    pub kms: Arc<Kms>,
    pub credentials: Arc<dyn CredentialLookup>,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
}

/// The service's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/", any(kms_request))
        .fallback(any(kms_request))
        .with_state(state)
}

pub(crate) fn set_headers(r: &mut Response, request_id: &str) {
    let h = r.headers_mut();
    h.insert("content-type", error::content_type());
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    let hsms = app.kms.vault().health();
    let healthy = hsms.iter().filter(|h| h.healthy).count();
    let hsms: Vec<serde_json::Value> = hsms.into_iter().map(|h| h.detail).collect();
    let body = serde_json::json!({
        "status": if healthy >= 2 { "ok" } else if healthy == 1 { "degraded" } else { "down" },
        "keys": app.kms.key_count(),
        "hsms": hsms,
    });
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

async fn kms_request(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    match serve(&app, req).await {
        Ok(mut r) => {
            set_headers(&mut r, &request_id);
            r
        }
        Err(e) => e.into_response_with(&request_id),
    }
}

async fn serve(app: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(ApiError::unknown_operation());
    }
    let body: bytes::Bytes = axum::body::to_bytes(Body::new(body), app.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                "RequestEntityTooLargeException",
                format!("Request body is larger than {} bytes", app.max_body_bytes),
            )
        })?;
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .ok_or_else(ApiError::unknown_operation)?
        .to_string();
    let principal = crate::auth::verify(
        &RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: &body,
        },
        app.credentials.as_ref(),
        app.clock.now(),
        app.kms.region().as_str(),
        "kms",
    )?;
    let json: serde_json::Value = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::serialization("Request body is not valid JSON"))?
    };
    let obj = json
        .as_object()
        .ok_or_else(|| ApiError::serialization("Request body must be a JSON object"))?;
    let out = handlers::dispatch(&app.kms, &principal, &op, input::Input::new(obj)).await?;
    let mut r = out.into_response();
    r.headers_mut()
        .insert("content-type", error::content_type());
    Ok(r)
}
