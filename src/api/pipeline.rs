//! THE request path of every KMS call, top to bottom:
//!
//! 1. **authenticate** — read the body, check the protocol's `Content-Type`, find the
//!    operation in `X-Amz-Target`, verify SigV4;
//! 2. **parse** — the JSON members into the operation's typed request (`api::parse`);
//! 3. **resolve** — the keys the request names (`Kms::resolve`);
//! 4. **authorize** — may this principal perform this action on these keys (`Kms::authorize`);
//! 5. **execute** — the domain method (`Kms::execute`);
//! 6. **record** — the call's CloudTrail record(s), whatever its outcome, made durable in
//!    the audit trail before anything is answered (`kms::audit`);
//! 7. **respond** — JSON 1.1 body or the AWS error, with `x-amzn-RequestId`.
//!
//! Before step 1 the audit trail must be healthy: while it cannot take records, calls are
//! refused with `KMSInternalException` and nothing is done (fail-closed); a call whose
//! record then fails to become durable is answered `KMSInternalException` too (unless
//! `audit_fail_open`).
//!
//! A successful cryptographic call whose record is durable is then noted as the last use
//! of its key(s) (`GetKeyLastUsage`).
//!
//! Every step runs inside one `request` span carrying the request id and the operation;
//! the span follows the call into the HSM workers and the blocking store calls, so every
//! log line of a call names both.

use super::error::{content_type, ApiError, JSON_1_1};
use super::input::Input;
use super::{parse, set_headers, AppState};
use crate::auth::{Principal, RequestParts};
use crate::kms::audit::{self, Call, CallFacts, Resource, Source};
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
    let request_id = crate::kms::types::random_uuid().to_string();
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
    let facts = call_facts(app, &req, &request_id);
    let raw_target = match target {
        Some(_) => None,
        None => req
            .headers()
            .get("x-amz-target")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    let outcome = async {
        let _expected = app.audit.expect_record();
        let mut outcome = match app.audit.admit() {
            Ok(()) => run(app, req, target).await,
            Err(e) => Outcome {
                principal: None,
                keys: None,
                request_parameters: serde_json::Value::Null,
                response_elements: serde_json::Value::Null,
                hsms: Vec::new(),
                result: Err(e.into()),
            },
        };
        let events = record(
            app,
            target,
            raw_target.as_deref(),
            &outcome,
            started,
            &facts,
        );
        let ids: Vec<(String, String)> = events
            .iter()
            .map(|e| (e.recipient_account_id.clone(), e.event_id.clone()))
            .collect();
        let committing = Instant::now();
        match app.audit.commit(events).await {
            Err(e) => outcome.result = Err(e.into()),
            // The key's last use (`GetKeyLastUsage`), once its record is durable.
            Ok(()) => {
                if let (Some(op), Some(keys), Ok(_)) = (target, &outcome.keys, &outcome.result) {
                    app.kms
                        .note_key_use(keys, op, facts.time, &ids, &facts.request_id);
                }
            }
        }
        app.metrics.record_audit_write(committing.elapsed());
        outcome
    }
    .instrument(span)
    .await;
    app.metrics.record_call(
        "kms",
        target.map_or("unknown", Operation::name),
        outcome
            .result
            .as_ref()
            .map_or_else(|e| e.aws_type, |_| "OK"),
        started.elapsed(),
    );
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
    /// CloudTrail's `requestParameters` (allow-listed members of the body).
    request_parameters: serde_json::Value,
    /// CloudTrail's `responseElements`.
    response_elements: serde_json::Value,
    /// The HSMs that answered the call's key operations.
    hsms: Vec<String>,
    result: Result<Response, ApiError>,
}

async fn run(app: &AppState, req: Request, target: Option<Operation>) -> Outcome {
    let mut out = Outcome {
        principal: None,
        keys: None,
        request_parameters: serde_json::Value::Null,
        response_elements: serde_json::Value::Null,
        hsms: Vec::new(),
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
    out.request_parameters = audit::kms_request_parameters(&json);
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
    // 5. execute (noting which HSMs answered, for the record)
    let (reply, hsms) =
        crate::kms::vault::served_by(app.kms.execute(principal, request, keys)).await;
    out.hsms = hsms;
    let reply = reply?;
    // 7. respond (6. record runs in `handle`, for every outcome)
    let bytes = reply.to_json().map_err(|e| {
        tracing::error!(error = %e, "response serialization failed");
        ApiError::new("KMSInternalException", "An internal error occurred.")
    })?;
    out.response_elements = audit::kms_response_elements(op.name(), &bytes);
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

/// A JSON 1.1 request's parts and body: POST only (else `UnknownOperationException`), the
/// body at most `max_body_bytes` (else `RequestEntityTooLargeException`).
pub(super) async fn post_body(
    app: &AppState,
    req: Request,
) -> Result<(axum::http::request::Parts, bytes::Bytes), ApiError> {
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
    Ok((parts, body))
}

async fn authenticate(
    app: &AppState,
    req: Request,
    target: Option<Operation>,
) -> Result<(Operation, Principal, bytes::Bytes), ApiError> {
    let (parts, body) = post_body(app, req).await?;
    // Before the signature, as AWS does: without its protocol a request has no operation.
    protocol_content_type(&parts.headers)?;
    let op = target.ok_or_else(ApiError::unknown_operation)?;
    let principal = verify_signature(app, &parts, &body)?;
    Ok((op, principal, body))
}

/// The request's one `Content-Type` must be the JSON 1.1 protocol's media type (compared
/// case-insensitively, any parameters such as `; charset=utf-8` allowed); anything else,
/// or none, or two, is [`ApiError::wrong_content_type`].
pub(super) fn protocol_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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

pub(super) fn json_body(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
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

/// The HTTP facts of a call: request id, TCP peer, `User-Agent`, time, and the access key
/// id its `Authorization` header names (recorded for a call whose signature fails).
pub(super) fn call_facts(app: &AppState, req: &Request, request_id: &str) -> CallFacts {
    let headers = req.headers();
    CallFacts {
        request_id: request_id.to_string(),
        source_ip: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        user_agent: headers
            .get(axum::http::header::USER_AGENT)
            .map(|v| audit::user_agent(&String::from_utf8_lossy(v.as_bytes()))),
        time: app.clock.now(),
        claimed_access_key_id: claimed_access_key_id(headers),
    }
}

/// The access key id of `Authorization: AWS4-HMAC-SHA256 Credential=AKID/…` (or of the
/// `X-Amz-Credential` query form's header twin), when it looks like one.
fn claimed_access_key_id(headers: &HeaderMap) -> Option<String> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let id = cred.split('/').next()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// The caller's unique id (`AIDA…`, `AROA…:session`, the account id for root).
pub(super) fn principal_id(app: &AppState, p: &Principal) -> Option<String> {
    app.kms
        .iam()
        .caller(p)
        .ok()
        .and_then(|c| c.userid().map(str::to_string))
}

/// Step 6, record: the call's CloudTrail record(s), which `handle` makes durable
/// (fail-closed: when they cannot be, the call is answered `KMSInternalException`). A
/// tracing line (target `hsm_kms::audit`) names failed calls, never with parameters.
fn record(
    app: &AppState,
    target: Option<Operation>,
    raw_target: Option<&str>,
    out: &Outcome,
    started: Instant,
    facts: &CallFacts,
) -> Vec<audit::Event> {
    let unknown;
    let event_name = match target {
        Some(op) => op.name(),
        None => {
            unknown = audit::event_name(
                raw_target
                    .map(|t| t.strip_prefix("TrentService.").unwrap_or(t))
                    .unwrap_or_default(),
            );
            unknown.as_str()
        }
    };
    let mut resources: Vec<Resource> = out
        .keys
        .as_ref()
        .map(|k| {
            app.kms
                .resource_arns(k)
                .into_iter()
                .map(Resource::key)
                .collect()
        })
        .unwrap_or_default();
    // A key the call made (CreateKey) is its resource too, as CloudTrail shows it.
    if let Some(arn) = out
        .response_elements
        .pointer("/keyMetadata/arn")
        .and_then(serde_json::Value::as_str)
    {
        if resources.iter().all(|r| r.arn != arn) {
            resources.push(Resource::key(arn.to_string()));
        }
    }
    if let Err(e) = &out.result {
        tracing::info!(
            target: "hsm_kms::audit",
            operation = %event_name,
            principal = %out.principal.as_ref().map_or("-", |p| p.arn.as_str()),
            error = %e.aws_type,
            elapsed_us = started.elapsed().as_micros() as u64,
            "call failed"
        );
    }
    let error = out
        .result
        .as_ref()
        .err()
        .map(|e| (e.aws_type, e.message.as_str()));
    let call = Call {
        source: Source::Kms,
        event_name,
        principal: out.principal.as_ref(),
        principal_id: out.principal.as_ref().and_then(|p| principal_id(app, p)),
        read_only: target.is_none_or(Operation::read_only),
        request_parameters: out.request_parameters.clone(),
        response_elements: out.response_elements.clone(),
        resources,
        error,
        hsms: out.hsms.clone(),
    };
    app.audit.events(call, facts)
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
