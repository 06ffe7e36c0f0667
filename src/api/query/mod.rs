//! The AWS Query protocol at the same endpoint as KMS: a form-encoded body
//! (`Action=…&Version=…`), SigV4 with the service the action belongs to, and XML answers and
//! errors exactly as IAM and STS write them.
//!
//! | file | actions |
//! |---|---|
//! | `mod.rs` | routing, parameters, the XML envelope, the error table |
//! | `iam.rs` | IAM (`2010-05-08`, SigV4 service `iam`): users, access keys, roles, inline policies |
//! | `sts.rs` | STS (`2011-06-15`, SigV4 service `sts`): `GetCallerIdentity`, `AssumeRole` |
//!
//! The request path is the KMS one, shortened: authenticate (read the body, find the
//! action, verify SigV4 for its service) → execute (the domain validates, authorizes and
//! acts) → record (the CloudTrail record, durable before the answer) → respond.

mod iam;
mod sts;

use super::AppState;
use crate::auth::{AuthError, Principal};
use crate::kms::audit::{Call, CallFacts, Source};
use crate::kms::KmsError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use tracing::Instrument;

/// The media type of a Query protocol request body.
const FORM: &str = "application/x-www-form-urlencoded";
/// The STS API version every STS action belongs to.
const STS_VERSION: &str = "2011-06-15";
/// The XML namespace of STS answers.
const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// The IAM API version every IAM action belongs to.
const IAM_VERSION: &str = "2010-05-08";
/// The XML namespace of IAM answers.
const IAM_XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";

/// Whether a request speaks the Query protocol: a form-encoded body and no `X-Amz-Target`
/// (which JSON 1.1 requests, i.e. KMS, carry).
pub(crate) fn is_query(headers: &HeaderMap) -> bool {
    if headers.contains_key("x-amz-target") {
        return false;
    }
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM))
}

/// An error as a Query protocol client sees it.
#[derive(Debug)]
struct QueryError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl QueryError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        QueryError {
            status,
            code,
            message: message.into(),
        }
    }

    /// How IAM and STS answer an authentication failure.
    fn auth(e: &AuthError) -> Self {
        let (status, code) = match e {
            AuthError::MissingAuthenticationToken => {
                (StatusCode::FORBIDDEN, "MissingAuthenticationToken")
            }
            AuthError::IncompleteSignature(_) => (StatusCode::BAD_REQUEST, "IncompleteSignature"),
            AuthError::UnrecognizedClient => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
            AuthError::ExpiredToken => (StatusCode::FORBIDDEN, "ExpiredToken"),
            AuthError::CredentialScope(_)
            | AuthError::SignatureExpired { .. }
            | AuthError::SignatureNotYetCurrent { .. }
            | AuthError::PayloadHashMismatch
            | AuthError::SignatureMismatch => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
        };
        QueryError::new(status, code, e.message())
    }

    fn invalid_action(action: &str, version: &str) -> Self {
        QueryError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {action} for version {version}"),
        )
    }

    /// A `ValidationError` (a parameter out of its constraints).
    fn validation(message: impl Into<String>) -> Self {
        QueryError::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    /// The `ErrorResponse` document, in the namespace of the action's service.
    fn into_response(self, xmlns: &str, request_id: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"{xmlns}\">\n  <Error>\n    <Type>Sender</Type>\n    \
             <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n\
             </ErrorResponse>\n",
            self.code,
            xml_escape(&self.message),
            xml_escape(request_id)
        );
        xml_response(self.status, body, request_id)
    }
}

/// THE table of domain errors as IAM and STS codes and HTTP statuses; internal causes are
/// logged here and never sent.
impl From<KmsError> for QueryError {
    fn from(e: KmsError) -> Self {
        let m = e.client_message();
        let (status, code) = match &e {
            KmsError::NotFound(_) => (StatusCode::NOT_FOUND, "NoSuchEntity"),
            KmsError::AlreadyExists(_) => (StatusCode::CONFLICT, "EntityAlreadyExists"),
            KmsError::Conflict(_) => (StatusCode::CONFLICT, "DeleteConflict"),
            KmsError::LimitExceeded(_) => (StatusCode::CONFLICT, "LimitExceeded"),
            KmsError::Validation(_) => (StatusCode::BAD_REQUEST, "ValidationError"),
            KmsError::MalformedPolicyDocument(_) => {
                (StatusCode::BAD_REQUEST, "MalformedPolicyDocument")
            }
            KmsError::AccessDenied(_) => (StatusCode::FORBIDDEN, "AccessDenied"),
            KmsError::InvalidMarker(_) => (StatusCode::BAD_REQUEST, "InvalidInput"),
            KmsError::Throttled(_) => (StatusCode::BAD_REQUEST, "Throttling"),
            KmsError::Internal(_) | KmsError::Unavailable(_) | KmsError::TooFewHsms { .. } => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "ServiceFailure")
            }
            _ => (StatusCode::BAD_REQUEST, "InvalidInput"),
        };
        QueryError::new(status, code, m)
    }
}

/// The request's parameters.
struct Params(BTreeMap<String, String>);

impl Params {
    /// An optional parameter.
    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter (`field` is its name in IAM's messages: `userName`).
    fn req(&self, name: &str, field: &str) -> Result<&str, QueryError> {
        self.opt(name).ok_or_else(|| {
            QueryError::validation(format!(
                "1 validation error detected: Value null at '{field}' failed to satisfy \
                 constraint: Member must not be null"
            ))
        })
    }

    /// An optional integer parameter.
    fn int(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.opt(name)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    QueryError::validation(format!("Value '{v}' for parameter {name} is invalid."))
                })
            })
            .transpose()
    }

    /// Whether any parameter starts with `prefix` (a list such as `PolicyArns.member.1`).
    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.0.keys().any(|k| k.starts_with(prefix))
    }
}

/// A successful answer: `<{Action}Response><{Action}Result>…</…><ResponseMetadata>`; no
/// `Result` element for actions that answer nothing.
fn answer(action: &str, xmlns: &str, result: Option<String>, request_id: &str) -> Response {
    let result = result.map_or(String::new(), |r| {
        format!("  <{action}Result>\n{r}  </{action}Result>\n")
    });
    let body = format!(
        "<{action}Response xmlns=\"{xmlns}\">\n{result}  <ResponseMetadata>\n    \
         <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n",
        xml_escape(request_id)
    );
    xml_response(StatusCode::OK, body, request_id)
}

/// `<name>value</name>` with the value escaped.
fn el(name: &str, value: &str) -> String {
    format!("<{name}>{}</{name}>", xml_escape(value))
}

/// An IAM/STS timestamp: ISO 8601, whole seconds, `Z` (as CloudTrail's `eventTime`).
fn iso8601(t: time::OffsetDateTime) -> String {
    crate::kms::audit::timestamp(t)
}

/// Serve one Query protocol request. As for KMS calls (`pipeline`), the audit trail must
/// be healthy before anything is done, and the call's record durable before it is
/// answered; a failure of either is `ServiceFailure` (500).
pub(crate) async fn handle(app: &AppState, req: Request) -> Response {
    let request_id = crate::kms::types::random_uuid().to_string();
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        protocol = "query",
        operation = tracing::field::Empty
    );
    async {
        let facts = super::pipeline::call_facts(app, &req, &request_id);
        let mut call = Attempt {
            action: String::new(),
            known_action: None,
            source: Source::Sts,
            xmlns: STS_XMLNS,
            principal: None,
            request_parameters: serde_json::Value::Null,
            response_elements: serde_json::Value::Null,
        };
        let _expected = app.audit.expect_record();
        let mut result = match app.audit.admit() {
            Ok(()) => run(app, req, &request_id, &mut call).await,
            Err(e) => Err(QueryError::from(e)),
        };
        let events = record(app, &call, &result, &facts);
        let committing = std::time::Instant::now();
        if let Err(e) = app.audit.commit(events).await {
            result = Err(QueryError::from(e));
        }
        app.metrics.record_audit_write(committing.elapsed());
        let service = match call.source {
            Source::Kms => "kms",
            Source::Iam => "iam",
            Source::Sts => "sts",
            Source::CloudTrail => "cloudtrail",
        };
        app.metrics.record_call(
            service,
            call.known_action.unwrap_or("unknown"),
            result.as_ref().map_or_else(|e| e.code, |_| "OK"),
            started.elapsed(),
        );
        match result {
            Ok(r) => r,
            Err(error) => error.into_response(call.xmlns, &request_id),
        }
    }
    .instrument(span)
    .await
}

/// What a call was, as far as it got: what is recorded.
struct Attempt {
    action: String,
    /// The action, once it is one this service implements (a metric label).
    known_action: Option<&'static str>,
    source: Source,
    xmlns: &'static str,
    principal: Option<Principal>,
    request_parameters: serde_json::Value,
    /// `responseElements`, set by the actions CloudTrail shows them for (never a secret
    /// or a session token).
    response_elements: serde_json::Value,
}

/// The call's CloudTrail record(s); a tracing line names failed calls.
fn record(
    app: &AppState,
    call: &Attempt,
    result: &Result<Response, QueryError>,
    facts: &CallFacts,
) -> Vec<crate::kms::audit::Event> {
    let error = result.as_ref().err();
    if let Some(e) = error {
        tracing::info!(
            target: "hsm_kms::audit",
            operation = %call.action,
            principal = %call.principal.as_ref().map_or("-", |p| p.arn.as_str()),
            error = %e.code,
            "call failed"
        );
    }
    let name = crate::kms::audit::event_name(&call.action);
    let read_only = call.action.starts_with("Get") || call.action.starts_with("List");
    app.audit.events(
        Call {
            source: call.source,
            event_name: &name,
            principal: call.principal.as_ref(),
            principal_id: call
                .principal
                .as_ref()
                .and_then(|p| super::pipeline::principal_id(app, p)),
            read_only,
            request_parameters: call.request_parameters.clone(),
            response_elements: if error.is_none() {
                call.response_elements.clone()
            } else {
                serde_json::Value::Null
            },
            resources: Vec::new(),
            error: error.map(|e| (e.code, e.message.as_str())),
            hsms: Vec::new(),
        },
        facts,
    )
}

async fn run(
    app: &AppState,
    req: Request,
    request_id: &str,
    call: &mut Attempt,
) -> Result<Response, QueryError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(QueryError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Query protocol requests are POST",
        ));
    }
    let body = axum::body::to_bytes(Body::new(body), app.max_body_bytes)
        .await
        .map_err(|_| {
            QueryError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("Request body is larger than {} bytes", app.max_body_bytes),
            )
        })?;
    let params = Params(parse_form(&body));
    call.request_parameters = crate::kms::audit::query_request_parameters(
        params.0.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let action = params.opt("Action").unwrap_or_default().to_string();
    call.action.clone_from(&action);
    if action.is_empty() {
        return Err(QueryError::new(
            StatusCode::BAD_REQUEST,
            "MissingAction",
            "Missing Action",
        ));
    }
    let version = params.opt("Version").unwrap_or_default().to_string();
    // The service an action belongs to, hence the SigV4 scope it must be signed for.
    let (service, xmlns) = match version.as_str() {
        STS_VERSION if sts::ACTIONS.contains(&action.as_str()) => ("sts", STS_XMLNS),
        IAM_VERSION if iam::ACTIONS.contains(&action.as_str()) => ("iam", IAM_XMLNS),
        _ => {
            if version == IAM_VERSION {
                call.xmlns = IAM_XMLNS;
                call.source = Source::Iam;
            }
            return Err(QueryError::invalid_action(&action, &version));
        }
    };
    call.xmlns = xmlns;
    call.known_action = sts::ACTIONS
        .iter()
        .chain(iam::ACTIONS)
        .find(|a| **a == action)
        .copied();
    if let Some(a) = call.known_action {
        tracing::Span::current().record("operation", a);
    }
    if service == "iam" {
        call.source = Source::Iam;
    }
    let principal = super::pipeline::verify_signature_for(app, &parts, &body, service)
        .map_err(|e| QueryError::auth(&e))?;
    let principal = &*call.principal.insert(principal);
    let ctx = crate::kms::iam::Ctx {
        principal,
        vault: app.kms.vault().as_ref(),
        now: app.clock.now(),
    };
    let response = &mut call.response_elements;
    let result = match service {
        "sts" => sts::execute(app, &ctx, &action, &params, response).await,
        _ => iam::execute(app, &ctx, &action, &params, response).await,
    }?;
    Ok(answer(&action, xmlns, result, request_id))
}

fn xml_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

/// The parameters of a form-encoded body (`+` is a space, `%XX` a byte); the first of a
/// repeated name wins. Bytes that are not UTF-8 after decoding are replaced.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, |b| *b == b'=');
        let name = decode(it.next().unwrap_or_default());
        let value = decode(it.next().unwrap_or_default());
        out.entry(name).or_insert(value);
    }
    out
}

fn decode(raw: &[u8]) -> String {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// `s` as XML element text: `&`, `<` and `>` escaped (quotes stay as they are, as AWS
/// writes them; every value is element text, never an attribute).
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A policy document as IAM answers it: URL-encoded (RFC 3986, unreserved characters bare).
fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms_decode_as_aws_sdks_encode_them() {
        let p = parse_form(b"Action=GetCallerIdentity&Version=2011-06-15&A=x+y%2Bz&A=second&=&B");
        assert_eq!(p["Action"], "GetCallerIdentity");
        assert_eq!(p["Version"], "2011-06-15");
        assert_eq!(p["A"], "x y+z");
        assert_eq!(p["B"], "");
    }

    #[test]
    fn xml_values_are_escaped_and_policies_url_encoded() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;\"c'");
        assert_eq!(
            url_encode(r#"{"A": "b/c*"}"#),
            "%7B%22A%22%3A%20%22b%2Fc%2A%22%7D"
        );
        assert_eq!(
            iso8601(time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()),
            "2023-11-14T22:13:20Z"
        );
    }

    proptest! {
        /// Any body parses (never a panic).
        #[test]
        fn any_form_body_parses(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_form(&body);
        }
    }
}
