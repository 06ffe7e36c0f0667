//! The HTTP front: AWS KMS JSON 1.1 over `POST /` (`X-Amz-Target: TrentService.<Op>`),
//! SigV4 on every request, JSON members parsed into domain types at the edge, errors from
//! one table; CloudTrail `LookupEvents` (JSON 1.1, `X-Amz-Target:
//! com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents`, SigV4 service
//! `cloudtrail`: `cloudtrail`) and IAM/STS (Query protocol: `query`) at the same endpoint.
//! Also `GET /health`: liveness for anyone, the state of every HSM for a
//! SigV4-authenticated caller (`health`); `GET /ready` and `GET /metrics` (`metrics`).

mod cloudtrail;
pub mod error;
mod health;
mod input;
pub mod metrics;
mod parse;
mod pipeline;
mod query;

use crate::auth::LiveCredentials;
use crate::clock::Clock;
use crate::kms::Kms;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;

/// Everything a request needs.
pub struct AppState {
    /// The KMS domain that resolves, authorizes and executes each operation.
    pub kms: Arc<Kms>,
    /// Where SigV4 verification looks up the secret of a request's access key id; IAM and
    /// STS actions change it at once (new keys and sessions, status, deletion).
    pub credentials: Arc<LiveCredentials>,
    /// The time SigV4 checks `X-Amz-Date` against (request skew window).
    pub clock: Arc<dyn Clock>,
    /// Largest request body read; larger bodies get `RequestEntityTooLargeException`.
    pub max_body_bytes: usize,
    /// The audit trail every call is recorded in (fail-closed unless configured open).
    pub audit: Arc<crate::kms::audit::Auditor>,
    /// Request, HSM, audit and key metrics (`GET /metrics`).
    pub metrics: Arc<metrics::Metrics>,
}

/// The service's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(metrics::ready))
        .route("/metrics", get(metrics::metrics))
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

async fn kms_request(State(app): State<Arc<AppState>>, req: Request) -> Response {
    if query::is_query(req.headers()) {
        return query::handle(&app, req).await;
    }
    if cloudtrail::is_cloudtrail(req.headers()) {
        return cloudtrail::handle(&app, req).await;
    }
    pipeline::handle(&app, req).await
}
