//! THE request path of every KMS call, top to bottom:
//!
//! 1. **authenticate** — read the body, check the protocol's `Content-Type`, find the
//!    operation in `X-Amz-Target`, verify SigV4;
//! 2. **parse** — the JSON members into the operation's typed request (`api::parse`);
//! 3. **resolve** — the keys the request names (`Kms::resolve`);
//! 4. **authorize** — may this principal perform this action on these keys (`Kms::authorize`);
//! 5. **execute** — the domain method (`Kms::execute`);
//! 6. **record** — one structured event per call, whatever its outcome;
//! 7. **respond** — JSON 1.1 body or the AWS error, with `x-amzn-RequestId`.
//!
//! Every step runs inside one `request` span carrying the request id and the operation;
//! the span follows the call into the HSM workers and the blocking store calls, so every
//! log line of a call names both.

use super::error::{content_type, ApiError, JSON_1_1};
use super::input::Input;
use super::{parse, set_headers, AppState};
use crate::auth::{Principal, RequestParts};
use crate::kms::operation::Operation;
use crate::kms::Resolved;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use tracing::Instrument;

/// Serve one `POST /` KMS request.
pub(crate) async fn handle(app: &AppState, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    // The operation is known from a header before anything is read, so the span is made
    // once with both fields (no later re-formatting of its fields).
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(Operation::from_target)
        .filter(|op| op.is_built());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        operation = %target.map_or("unknown", Operation::name)
    );
    let started = Instant::now();
    let outcome = async {
        let outcome = run(app, req, target).await;
        record(app, target, &outcome, started);
        outcome
    }
    .instrument(span)
    .await;
    match outcome.result {
        Ok(mut r) => {
            set_headers(&mut r, &request_id);
            r
        }
        Err(e) => e.into_response_with(&request_id),
    }
}

/// What one call did, for the record step.
struct Outcome {
    principal: Option<Principal>,
    keys: Option<Resolved>,
    result: Result<Response, ApiError>,
}

async fn run(app: &AppState, req: Request, target: Option<Operation>) -> Outcome {
    let mut out = Outcome {
        principal: None,
        keys: None,
        result: Err(ApiError::unknown_operation()),
    };
    out.result = steps(app, req, target, &mut out).await;
    out
}

async fn steps(
    app: &AppState,
    req: Request,
    target: Option<Operation>,
    out: &mut Outcome,
) -> Result<Response, ApiError> {
    let env = call_env(&req);
    // 1. authenticate
    let (op, principal, body) = authenticate(app, req, target).await?;
    let principal = &*out.principal.insert(principal);
    // 2. parse
    let json = json_body(&body)?;
    let input = Input::new(&json);
    let request = parse::parse(op, &input)?;
    // Grant tokens are shapes (parse) and then tokens this service issued (the domain).
    app.kms
        .check_grant_tokens(&parse::grant_tokens(op, &input)?)?;
    // 3. resolve
    let keys = out
        .keys
        .insert(app.kms.resolve(principal, op, &request).await?);
    // 4. authorize
    app.kms.authorize(principal, op, &request, keys, &env)?;
    // 5. execute
    let reply = app.kms.execute(principal, request, keys).await?;
    // 7. respond (6. record runs in `handle`, for every outcome)
    let bytes = reply.to_json().map_err(|e| {
        tracing::error!(error = %e, "response serialization failed");
        ApiError::new("KMSInternalException", "An internal error occurred.")
    })?;
    let mut r = bytes.into_response();
    r.headers_mut().insert("content-type", content_type());
    Ok(r)
}

/// What policies may test about the connection (`aws:SourceIp`, `aws:SecureTransport`).
pub(super) fn call_env(req: &Request) -> crate::kms::CallEnv {
    crate::kms::CallEnv {
        source_ip: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        secure_transport: false,
        via_service: None,
    }
}

async fn authenticate(
    app: &AppState,
    req: Request,
    target: Option<Operation>,
) -> Result<(Operation, Principal, bytes::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(ApiError::unknown_operation());
    }
    let body = axum::body::to_bytes(Body::new(body), app.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                "RequestEntityTooLargeException",
                format!("Request body is larger than {} bytes", app.max_body_bytes),
            )
        })?;
    // Before the signature, as AWS does: without its protocol a request has no operation.
    protocol_content_type(&parts.headers)?;
    let op = target.ok_or_else(ApiError::unknown_operation)?;
    let principal = verify_signature(app, &parts, &body)?;
    Ok((op, principal, body))
}

/// The request's one `Content-Type` must be the JSON 1.1 protocol's media type (compared
/// case-insensitively, any parameters such as `; charset=utf-8` allowed); anything else,
/// or none, or two, is [`ApiError::wrong_content_type`].
fn protocol_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let media_type = match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok().and_then(|v| v.split(';').next()),
        _ => None,
    };
    match media_type {
        Some(m) if m.trim().eq_ignore_ascii_case(JSON_1_1) => Ok(()),
        _ => Err(ApiError::wrong_content_type()),
    }
}

fn json_body(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::serialization(
            "Request body must be a JSON object",
        )),
        Err(_) => Err(ApiError::serialization("Request body is not valid JSON")),
    }
}

/// Step 6, record: one structured event per call (target `hsm_kms::audit`), never with
/// plaintext, ciphertext, key material or secrets. The audit trail fills this in.
fn record(app: &AppState, target: Option<Operation>, out: &Outcome, started: Instant) {
    let operation = target.map_or("unknown", Operation::name);
    let principal = out.principal.as_ref().map_or("-", |p| p.arn.as_str());
    let elapsed_us = started.elapsed().as_micros() as u64;
    // Key ARNs are formatted only for an event that is recorded.
    let resources = || {
        out.keys
            .as_ref()
            .map(|k| app.kms.resource_arns(k))
            .unwrap_or_default()
    };
    match &out.result {
        Ok(_) if !tracing::enabled!(target: "hsm_kms::audit", tracing::Level::DEBUG) => {}
        Ok(_) => tracing::debug!(
            target: "hsm_kms::audit",
            %operation,
            %principal,
            resources = ?resources(),
            elapsed_us,
            "call succeeded"
        ),
        Err(e) => tracing::info!(
            target: "hsm_kms::audit",
            %operation,
            %principal,
            resources = ?resources(),
            error = %e.aws_type,
            elapsed_us,
            "call failed"
        ),
    }
}

/// SigV4 verification of a request (service `kms`, this service's region, clock and
/// credentials): the one way every endpoint authenticates.
pub(super) fn verify_signature(
    app: &AppState,
    parts: &axum::http::request::Parts,
    body: &[u8],
) -> Result<crate::auth::Principal, crate::auth::AuthError> {
    verify_signature_for(app, parts, body, "kms")
}

/// [`verify_signature`] for the SigV4 service `service` (`sts`, `iam` for the Query
/// protocol).
pub(super) fn verify_signature_for(
    app: &AppState,
    parts: &axum::http::request::Parts,
    body: &[u8],
    service: &str,
) -> Result<crate::auth::Principal, crate::auth::AuthError> {
    crate::auth::verify(
        &RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body,
        },
        app.credentials.as_ref(),
        app.clock.now(),
        app.kms.region().as_str(),
        service,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(values: &[&str]) -> bool {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_TYPE, v.parse().unwrap());
        }
        protocol_content_type(&h).is_ok()
    }

    #[test]
    fn only_the_json_1_1_media_type_is_accepted() {
        for ok in [
            "application/x-amz-json-1.1",
            "Application/X-Amz-JSON-1.1",
            "application/x-amz-json-1.1; charset=utf-8",
            "application/x-amz-json-1.1;charset=UTF-8",
            " application/x-amz-json-1.1 ",
        ] {
            assert!(check(&[ok]), "{ok:?} refused");
        }
        for bad in [
            &[][..],
            &[""],
            &["application/json"],
            &["application/x-amz-json-1.0"],
            &["application/x-amz-json-1.10"],
            &["application/x-amz-json-1.1x"],
            &["text/plain"],
            &["application/x-www-form-urlencoded"],
            &["application/x-amz-cbor-1.1"],
            &["x-amz-json-1.1"],
            &["application/json; x=application/x-amz-json-1.1"],
            &["application/x-amz-json-1.1", "application/json"],
        ] {
            assert!(!check(bad), "{bad:?} accepted");
        }
        let e = protocol_content_type(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.aws_type, "UnknownOperationException");
        assert!(e.message.contains(JSON_1_1), "{}", e.message);
    }
}
