//! The AWS Query protocol at the same endpoint as KMS: a form-encoded body
//! (`Action=…&Version=…`), SigV4 with the service the action belongs to, and XML answers and
//! errors exactly as STS writes them. So far STS `GetCallerIdentity` (which account and
//! principal a credential is); IAM and STS `AssumeRole` come with the identity store.
//!
//! The request path is the KMS one, shortened: authenticate (read the body, find the
//! action, verify SigV4 for its service) → execute → record → respond.

use super::AppState;
use crate::auth::{AuthError, Principal};
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

    /// How STS answers an authentication failure.
    fn auth(e: &AuthError) -> Self {
        let (status, code) = match e {
            AuthError::MissingAuthenticationToken => {
                (StatusCode::FORBIDDEN, "MissingAuthenticationToken")
            }
            AuthError::IncompleteSignature(_) => (StatusCode::BAD_REQUEST, "IncompleteSignature"),
            AuthError::UnrecognizedClient => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
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

    /// The `ErrorResponse` document.
    fn into_response(self, request_id: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"{STS_XMLNS}\">\n  <Error>\n    <Type>Sender</Type>\n    \
             <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n\
             </ErrorResponse>\n",
            self.code,
            xml_escape(&self.message),
            xml_escape(request_id)
        );
        xml_response(self.status, body, request_id)
    }
}

/// Serve one Query protocol request.
pub(crate) async fn handle(app: &AppState, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("request", request_id = %request_id, protocol = "query");
    async {
        match run(app, req, &request_id).await {
            Ok(r) => r,
            Err((action, principal, e)) => {
                tracing::info!(
                    target: "hsm_kms::audit",
                    operation = %action,
                    principal = %principal.as_ref().map_or("-", |p| p.arn.as_str()),
                    error = %e.code,
                    "call failed"
                );
                e.into_response(&request_id)
            }
        }
    }
    .instrument(span)
    .await
}

type Failure = (String, Option<Principal>, QueryError);

async fn run(app: &AppState, req: Request, request_id: &str) -> Result<Response, Failure> {
    let fail = |action: &str, e: QueryError| (action.to_string(), None, e);
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        let e = QueryError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Query protocol requests are POST",
        );
        return Err(fail("-", e));
    }
    let body = axum::body::to_bytes(Body::new(body), app.max_body_bytes)
        .await
        .map_err(|_| {
            let e = QueryError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("Request body is larger than {} bytes", app.max_body_bytes),
            );
            fail("-", e)
        })?;
    let params = parse_form(&body);
    let action = params.get("Action").cloned().unwrap_or_default();
    if action.is_empty() {
        let e = QueryError::new(StatusCode::BAD_REQUEST, "MissingAction", "Missing Action");
        return Err(fail("-", e));
    }
    let version = params.get("Version").map_or("", String::as_str);
    // The service an action belongs to, hence the SigV4 scope it must be signed for.
    let service = match (action.as_str(), version) {
        ("GetCallerIdentity", STS_VERSION) => "sts",
        _ => return Err(fail(&action, QueryError::invalid_action(&action, version))),
    };
    let principal = super::pipeline::verify_signature_for(app, &parts, &body, service)
        .map_err(|e| fail(&action, QueryError::auth(&e)))?;
    tracing::debug!(target: "hsm_kms::audit", operation = %action, principal = %principal.arn, "call succeeded");
    Ok(get_caller_identity(&principal, request_id))
}

/// STS `GetCallerIdentity`: the account, ARN and user id of the caller.
fn get_caller_identity(p: &Principal, request_id: &str) -> Response {
    let body = format!(
        "<GetCallerIdentityResponse xmlns=\"{STS_XMLNS}\">\n  <GetCallerIdentityResult>\n    \
         <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  \
         </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  \
         </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
        xml_escape(&p.arn),
        xml_escape(&user_id(p)),
        xml_escape(&p.account_id),
        xml_escape(request_id)
    );
    xml_response(StatusCode::OK, body, request_id)
}

/// The unique id of a principal as STS shows it: the account id for an account's root;
/// for any other principal a stable `AIDA…` id derived from its ARN (until the identity
/// store assigns ids).
fn user_id(p: &Principal) -> String {
    if p.arn == format!("arn:aws:iam::{}:root", p.account_id) {
        return p.account_id.clone();
    }
    use sha2::Digest;
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let d = sha2::Sha256::digest(p.arn.as_bytes());
    let tail: String = d
        .iter()
        .take(17)
        .map(|b| char::from(B32.get(usize::from(b % 32)).copied().unwrap_or(b'A')))
        .collect();
    format!("AIDA{tail}")
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

/// `s` with the five XML special characters escaped.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
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
    fn xml_values_are_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn user_ids() {
        let root = Principal {
            access_key_id: "AKIA".into(),
            account_id: "111122223333".into(),
            arn: "arn:aws:iam::111122223333:root".into(),
        };
        assert_eq!(user_id(&root), "111122223333");
        let user = Principal {
            arn: "arn:aws:iam::111122223333:user/alice".into(),
            ..root
        };
        let id = user_id(&user);
        assert!(id.starts_with("AIDA") && id.len() == 21, "{id}");
        assert_eq!(id, user_id(&user), "stable");
    }

    proptest! {
        /// Any body parses (never a panic).
        #[test]
        fn any_form_body_parses(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_form(&body);
        }
    }
}
