//! AWS Signature Version 4, header form (`Authorization: AWS4-HMAC-SHA256 ...`): verification of
//! incoming requests ([`verify`]) and the AWS-shaped errors ([`AuthError`]) a failed check yields.
//! The canonicalization and key derivation below are also what this crate's own client signs
//! with ([`super::sign`]), so signer and verifier cannot drift apart; the tests here sign with
//! AWS's own `aws-sigv4` crate and with captured botocore output, and `sign`'s tests hold the
//! signer against `aws-sigv4` too, so both are measured against independent signers.
//!
//! Canonicalization follows botocore's `SigV4Auth` (non-S3), which is what the aws CLI and boto3
//! send and what AWS accepts:
//! * method upper-cased;
//! * path: RFC 3986 dot segments removed and empty segments collapsed (`normalize_url_path`),
//!   then percent-encoded with only `A-Za-z0-9-_.~/` left bare. The wire path is already encoded
//!   once, so a `%` becomes `%25`: the "encode twice" rule for every service but S3;
//! * query: `&`-separated pairs split at the first `=`, sorted by (name, value), re-joined
//!   (botocore's form for a URL it did not build itself). [`verify`] additionally accepts the
//!   spec form (each name and value decoded and re-encoded with only unreserved characters
//!   bare), which equals the first for every query botocore or another SDK encodes canonically;
//! * headers: the `SignedHeaders` list, names lower-cased, each value trimmed with runs of
//!   whitespace collapsed to one space, repeated headers joined with `,` in arrival order;
//! * payload: hex SHA-256 of the body. A client sends `x-amz-content-sha256` only when it wants
//!   that value used; [`verify`] requires it to equal the body's real hash, so an unsigned or
//!   streaming payload is never accepted.
//!
//! Percent-encoding uses the `percent-encoding` crate with the AWS sets below; dates
//! (`X-Amz-Date`, the credential-scope day, the `Date` fallback) are `time` format descriptions.
//!
//! Checks run in this order, each failing with the error AWS returns for it: Authorization header
//! present; well formed; credential scope shape; request date present and parseable; `host`
//! signed; scope region/service/terminator/date; clock skew of ±5 minutes; access key known; no
//! session token (long-term keys only); payload hash; signature (constant-time comparison).
//! Nothing here logs or returns a secret or a derived key; derived keys are zeroized on drop.

use super::{CredentialLookup, Principal};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, DATE};
use http::{HeaderMap, HeaderName};
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use subtle::ConstantTimeEq;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};
use zeroize::Zeroizing;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Last element of every credential scope.
pub const SCOPE_TERMINATOR: &str = "aws4_request";
/// How far the request time may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

pub(super) const X_AMZ_DATE: &str = "x-amz-date";
pub(super) const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";

const MSG_SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the \
     signature you provided. Check your AWS Secret Access Key and signing method. Consult the \
     service documentation for details.";

type HmacSha256 = Hmac<Sha256>;

/// The parts of an HTTP request that SigV4 covers, as received.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    /// HTTP method, e.g. `"POST"`.
    pub method: &'a str,
    /// Raw (still percent-encoded) URI path, e.g. `"/"`.
    pub path: &'a str,
    /// Raw query string without the `?`; `""` when there is none.
    pub query: &'a str,
    /// All request headers. Under HTTP/2 the caller must insert `host` from `:authority`.
    pub headers: &'a HeaderMap,
    /// The complete request body.
    pub body: &'a [u8],
}

/// Why a request failed authentication. `Display` is the client-safe message AWS would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (query-string presigning is not supported).
    #[error("Request is missing Authentication Token")]
    MissingAuthenticationToken,
    /// The `Authorization` header or date header is malformed or incomplete.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The access key is unknown, or a session token came with a long-term key.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The credential scope names another region, service, terminator, or day.
    #[error("{0}")]
    CredentialScope(String),
    /// The request time is more than five minutes before the server's clock.
    #[error("Signature expired: {request_time} is now earlier than {earliest} ({now} - 5 min.)")]
    SignatureExpired {
        /// The request's signing time, `YYYYMMDDTHHMMSSZ`.
        request_time: String,
        /// The oldest signing time accepted (`now` − 5 min), `YYYYMMDDTHHMMSSZ`.
        earliest: String,
        /// The server's time, `YYYYMMDDTHHMMSSZ`.
        now: String,
    },
    /// The request time is more than five minutes after the server's clock.
    #[error(
        "Signature not yet current: {request_time} is still later than {latest} ({now} + 5 min.)"
    )]
    SignatureNotYetCurrent {
        /// The request's signing time, `YYYYMMDDTHHMMSSZ`.
        request_time: String,
        /// The newest signing time accepted (`now` + 5 min), `YYYYMMDDTHHMMSSZ`.
        latest: String,
        /// The server's time, `YYYYMMDDTHHMMSSZ`.
        now: String,
    },
    /// `x-amz-content-sha256` is not the SHA-256 of the body received.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The signature does not match the one computed from the request and secret.
    #[error("{}", MSG_SIGNATURE_MISMATCH)]
    SignatureMismatch,
    /// The temporary credential (role session) has expired.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The AWS error type, sent as `__type` (real KMS prefixes these framework errors with
    /// `com.amazon.coral.service#`; botocore strips everything up to `#`).
    pub fn aws_type(&self) -> &'static str {
        match self {
            AuthError::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            AuthError::IncompleteSignature(_) => "IncompleteSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::CredentialScope(_)
            | AuthError::SignatureExpired { .. }
            | AuthError::SignatureNotYetCurrent { .. }
            | AuthError::PayloadHashMismatch
            | AuthError::SignatureMismatch => "InvalidSignatureException",
            AuthError::ExpiredToken => "ExpiredTokenException",
        }
    }

    /// HTTP status: the JSON 1.1 protocol sends every authentication failure as 400.
    pub fn http_status(&self) -> u16 {
        400
    }

    /// The message for the response body; never contains secret material.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// Headers that must be among the `SignedHeaders` whenever the request carries them. The
/// session token need not be (SigV4 lets a client add it after signing): it must equal the
/// one token of its access key anyway, so it cannot be swapped for another.
const MUST_SIGN_WHEN_PRESENT: &[&str] = &["x-amz-target", "x-amz-date"];

/// Verifies a SigV4-signed request and returns who signed it.
///
/// `now` is the server's clock; `region` and `service` (`"kms"`) are what the credential scope
/// must name.
pub fn verify(
    req: &RequestParts<'_>,
    creds: &dyn CredentialLookup,
    now: OffsetDateTime,
    region: &str,
    service: &str,
) -> Result<Principal, AuthError> {
    let raw_auth = authorization_header(req.headers)?;
    let auth = parse_authorization(&raw_auth)?;

    // Everything the header must carry, reported together as AWS does.
    let date_header = request_date_header(req.headers);
    let mut missing = Vec::new();
    if auth.credential.is_none() {
        missing.push("Authorization header requires 'Credential' parameter.");
    }
    if auth.signature.is_none() {
        missing.push("Authorization header requires 'Signature' parameter.");
    }
    if auth.signed_headers.is_none() {
        missing.push("Authorization header requires 'SignedHeaders' parameter.");
    }
    if date_header.is_none() {
        missing.push(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        );
    }
    let (Some(credential), Some(signature), Some(signed_headers), Some(date_header)) = (
        auth.credential,
        auth.signature,
        auth.signed_headers,
        date_header,
    ) else {
        return Err(AuthError::IncompleteSignature(format!(
            "{} (Hashed with SHA-256 and encoded with Base64) Authorization={}",
            missing.join(" "),
            sha256_base64(raw_auth.as_bytes())
        )));
    };

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, scope_date, scope_region, scope_service, scope_terminator] = scope[..]
    else {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{credential}'"
        )));
    };

    let request_time = date_header.parse()?;
    let amz_date = format_amz_date(request_time);
    let request_day = format_scope_date(request_time);

    if !signed_headers
        .split(';')
        .any(|h| h.eq_ignore_ascii_case("host") || h == ":authority")
    {
        return Err(AuthError::IncompleteSignature(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    // Headers that decide what a request does or when it was made must be covered by the
    // signature when present; otherwise a captured request could be replayed with another
    // operation (`X-Amz-Target`), time or session.
    for name in MUST_SIGN_WHEN_PRESENT {
        if req.headers.contains_key(*name)
            && !signed_headers
                .split(';')
                .any(|h| h.eq_ignore_ascii_case(name))
        {
            return Err(AuthError::IncompleteSignature(format!(
                "'{name}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }

    let mut scope_errors = String::new();
    if scope_region != region {
        scope_errors.push_str(&format!(
            "Credential should be scoped to a valid region, not '{scope_region}'. "
        ));
    }
    if scope_service != service {
        scope_errors.push_str(&format!(
            "Credential should be scoped to correct service: '{service}'. "
        ));
    }
    if scope_terminator != SCOPE_TERMINATOR {
        scope_errors.push_str(&format!(
            "Credential should be scoped with a valid terminator: '{SCOPE_TERMINATOR}', \
             not '{scope_terminator}'. "
        ));
    }
    if scope_date != request_day {
        scope_errors.push_str(&format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '{scope_date}' != '{request_day}', from '{amz_date}'."
        ));
    }
    if !scope_errors.is_empty() {
        return Err(AuthError::CredentialScope(scope_errors));
    }

    check_skew(request_time, now)?;

    let credential = creds
        .lookup(access_key_id)
        .filter(|c| c.active)
        .ok_or(AuthError::UnrecognizedClient)?;
    // A long-term key takes no session token (AWS rejects one); a temporary key needs its
    // own, compared in constant time by hash. Anything else is an unknown key.
    let tokens = req.headers.get_all(X_AMZ_SECURITY_TOKEN);
    let mut tokens = tokens.iter();
    let token = tokens.next();
    if tokens.next().is_some() {
        return Err(AuthError::UnrecognizedClient);
    }
    match (&credential.session, token) {
        (None, None) => {}
        (Some(s), Some(t)) if bool::from(Sha256::digest(t.as_bytes()).ct_eq(&s.token_sha256)) => {}
        _ => return Err(AuthError::UnrecognizedClient),
    }

    let payload_hash = hex::encode(Sha256::digest(req.body));
    if let Some(claimed) = req.headers.get(X_AMZ_CONTENT_SHA256) {
        if claimed.as_bytes() != payload_hash.as_bytes() {
            return Err(AuthError::PayloadHashMismatch);
        }
    }

    let method = req.method.to_ascii_uppercase();
    let uri = canonical_uri(req.path);
    let names: Vec<String> = signed_headers
        .split(';')
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let headers = canonical_headers(req.headers, names.iter().map(String::as_str));
    let credential_scope =
        format!("{scope_date}/{scope_region}/{scope_service}/{scope_terminator}");
    let key = signing_key(
        &credential.secret_access_key,
        scope_date,
        scope_region,
        scope_service,
    );

    let compute = |query: &str| {
        let creq = canonical_request(
            &method,
            &uri,
            query,
            &headers,
            signed_headers,
            &payload_hash,
        );
        let sts = string_to_sign(&amz_date, &credential_scope, &creq);
        (creq, hex::encode(hmac_sha256(&key[..], sts.as_bytes())))
    };
    let query_spec = canonical_query_spec(req.query);
    let (creq, expected) = compute(&query_spec);
    let mut ok = expected.as_bytes().ct_eq(signature.as_bytes());
    let query_raw = canonical_query_botocore(req.query);
    if query_raw != query_spec {
        let (_, expected_raw) = compute(&query_raw);
        ok |= expected_raw.as_bytes().ct_eq(signature.as_bytes());
    }
    if !bool::from(ok) {
        tracing::debug!(
            access_key_id,
            canonical_request = %String::from_utf8_lossy(&creq),
            "sigv4 signature mismatch"
        );
        return Err(AuthError::SignatureMismatch);
    }
    if credential
        .session
        .as_ref()
        .is_some_and(|s| now >= s.expires_at)
    {
        return Err(AuthError::ExpiredToken);
    }
    Ok(credential.principal())
}

// ---------------------------------------------------------------------------------------------
// Authorization header parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct ParsedAuthorization<'a> {
    credential: Option<&'a str>,
    signed_headers: Option<&'a str>,
    signature: Option<&'a str>,
}

fn authorization_header(headers: &HeaderMap) -> Result<String, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::MissingAuthenticationToken);
    };
    if values.next().is_some() {
        return Err(AuthError::IncompleteSignature(
            "Found multiple Authorization headers.".into(),
        ));
    }
    let value = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
    if value.is_empty() {
        return Err(AuthError::MissingAuthenticationToken);
    }
    Ok(value)
}

fn parse_authorization(raw: &str) -> Result<ParsedAuthorization<'_>, AuthError> {
    let (algorithm, rest) = raw
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((raw, ""));
    if algorithm != ALGORITHM {
        return Err(AuthError::IncompleteSignature(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'"
        )));
    }
    let mut parsed = ParsedAuthorization::default();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(AuthError::IncompleteSignature(format!(
                "Invalid key=value pair (missing equal-sign) in Authorization header (hashed \
                 with SHA-256 and encoded with Base64): '{}'.",
                sha256_base64(raw.as_bytes())
            )));
        };
        let value = Some(value.trim()).filter(|v| !v.is_empty());
        let slot = match key.trim() {
            "Credential" => &mut parsed.credential,
            "SignedHeaders" => &mut parsed.signed_headers,
            "Signature" => &mut parsed.signature,
            _ => continue,
        };
        if slot.is_none() {
            *slot = value;
        }
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

/// Where the request time comes from: `X-Amz-Date` wins over `Date`.
enum DateHeader<'a> {
    AmzDate(&'a [u8]),
    HttpDate(&'a [u8]),
}

impl DateHeader<'_> {
    fn parse(&self) -> Result<OffsetDateTime, AuthError> {
        match self {
            DateHeader::AmzDate(v) => parse_amz_date(v).ok_or_else(|| {
                AuthError::IncompleteSignature(format!(
                    "Date must be in ISO-8601 'basic format'. Got '{}'. See \
                     http://en.wikipedia.org/wiki/ISO_8601",
                    String::from_utf8_lossy(v)
                ))
            }),
            DateHeader::HttpDate(v) => parse_http_date(v).ok_or_else(|| {
                AuthError::IncompleteSignature(format!(
                    "Date must be in RFC 1123 format. Got '{}'.",
                    String::from_utf8_lossy(v)
                ))
            }),
        }
    }
}

fn request_date_header(headers: &HeaderMap) -> Option<DateHeader<'_>> {
    if let Some(v) = headers.get(X_AMZ_DATE) {
        return Some(DateHeader::AmzDate(v.as_bytes()));
    }
    headers
        .get(DATE)
        .map(|v| DateHeader::HttpDate(v.as_bytes()))
}

fn check_skew(request_time: OffsetDateTime, now: OffsetDateTime) -> Result<(), AuthError> {
    let now = now.to_offset(UtcOffset::UTC);
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let earliest = now - MAX_CLOCK_SKEW;
    let latest = now + MAX_CLOCK_SKEW;
    if request_time < earliest {
        return Err(AuthError::SignatureExpired {
            request_time: format_amz_date(request_time),
            earliest: format_amz_date(earliest),
            now: format_amz_date(now),
        });
    }
    if request_time > latest {
        return Err(AuthError::SignatureNotYetCurrent {
            request_time: format_amz_date(request_time),
            latest: format_amz_date(latest),
            now: format_amz_date(now),
        });
    }
    Ok(())
}

/// `X-Amz-Date`: ISO 8601 basic format in UTC, `YYYYMMDDTHHMMSSZ`.
const AMZ_DATE: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// An RFC 1123 / RFC 2822 `Date` in UTC after its weekday: `26 Nov 2026 12:00:00 GMT` (or `UTC`,
/// `+0000`, `-0000`).
const HTTP_DATE_AFTER_WEEKDAY: &[BorrowedFormatItem<'static>] = format_description!(
    "[day padding:none] [month repr:short] [year] \
     [hour padding:none]:[minute padding:none]:[second padding:none] \
     [first [GMT] [UTC] [+0000] [-0000]]"
);

/// `YYYYMMDDTHHMMSSZ`, UTC: what `AMZ_DATE` formats, written from the components so that
/// no formatting error can arise (the tests check both agree).
pub(super) fn format_amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{}T{:02}{:02}{:02}Z",
        format_scope_date(t),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `YYYYMMDD` a credential scope must name for a request made at `t`: what
/// `[year][month][day]` formats (`time`'s `[year]` puts `-` before a negative year and pads
/// the rest to 4 digits; the tests check both agree).
pub(super) fn format_scope_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let year = t.year();
    let sign = if year < 0 { "-" } else { "" };
    format!(
        "{sign}{:04}{:02}{:02}",
        year.unsigned_abs(),
        u8::from(t.month()),
        t.day()
    )
}

/// Strict `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(v: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(v).ok()?;
    // `time` takes an optional sign before `[year]`; the basic format has none.
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    PrimitiveDateTime::parse(s, AMZ_DATE)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// RFC 1123 / RFC 2822 date in UTC: `Thu, 26 Nov 2026 12:00:00 GMT` (or `+0000`, `-0000`,
/// `UTC`). Runs of whitespace count as one space; the weekday is any word ending in `,` and is
/// not checked against the date.
fn parse_http_date(v: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(v).ok()?;
    let mut words = s.split_ascii_whitespace();
    if !words.next()?.ends_with(',') {
        return None;
    }
    let rest = words.collect::<Vec<_>>().join(" ");
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    PrimitiveDateTime::parse(&rest, HTTP_DATE_AFTER_WEEKDAY)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

// ---------------------------------------------------------------------------------------------
// Canonical request
// ---------------------------------------------------------------------------------------------

/// What SigV4 percent-encodes in a query name or value: every byte but the RFC 3986 unreserved
/// characters `A-Za-z0-9-_.~`, as `%XX` with upper-case hex (Python's `quote(s, safe='')`).
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same for a URI path, whose `/` separators stay (botocore's `quote(path, safe='/~')`).
const PATH: &AsciiSet = &QUERY_COMPONENT.remove(b'/');

/// botocore's `_normalize_url_path`: `quote(normalize_url_path(path), safe='/~')`.
pub(super) fn canonical_uri(path: &str) -> String {
    let normalized = if path.is_empty() {
        "/".to_owned()
    } else {
        remove_dot_segments(path)
    };
    percent_encode(normalized.as_bytes(), PATH).to_string()
}

/// botocore's `remove_dot_segments`: RFC 3986 §5.2.4 plus collapsing of empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let first = if path.starts_with('/') { "/" } else { "" };
    let last = if path.ends_with('/') && !out.is_empty() {
        "/"
    } else {
        ""
    };
    format!("{first}{}{last}", out.join("/"))
}

/// botocore's `_canonical_query_string_url`: pairs split at the first `=`, sorted, re-joined,
/// without re-encoding.
fn canonical_query_botocore(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    join_pairs(pairs.iter().map(|(k, v)| (*k, *v)))
}

/// The SigV4 specification's form: each name and value percent-decoded (a `%` without two hex
/// digits after it stays literal, `+` stays `+`), then re-encoded with only unreserved
/// characters bare, sorted by (name, value).
pub(super) fn canonical_query_spec(query: &str) -> String {
    let reencode = |s: &str| {
        let decoded: Cow<'_, [u8]> = percent_decode_str(s).into();
        percent_encode(&decoded, QUERY_COMPONENT).to_string()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (reencode(k), reencode(v))
        })
        .collect();
    pairs.sort_unstable();
    join_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn join_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `name:value` lines for the given (lower-case) names joined with `\n`, plus a final `\n`,
/// exactly as botocore builds the header block. A signed header absent from the request
/// contributes `name:`.
pub(super) fn canonical_headers<'n>(
    headers: &HeaderMap,
    names: impl Iterator<Item = &'n str>,
) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for name in names {
        let mut line = Vec::with_capacity(name.len() + 32);
        line.extend_from_slice(name.as_bytes());
        line.push(b':');
        if let Ok(header) = HeaderName::from_bytes(name.as_bytes()) {
            for (i, value) in headers.get_all(&header).iter().enumerate() {
                if i > 0 {
                    line.push(b',');
                }
                trim_all(value.as_bytes(), &mut line);
            }
        }
        lines.push(line);
    }
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    out
}

/// Python's `' '.join(value.split())` for the bytes a header value may hold.
fn trim_all(value: &[u8], out: &mut Vec<u8>) {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    let mut first = true;
    for word in value.split(is_ws).filter(|w| !w.is_empty()) {
        if !first {
            out.push(b' ');
        }
        out.extend_from_slice(word);
        first = false;
    }
}

pub(super) fn canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &[u8],
    signed_headers: &str,
    payload_hash: &str,
) -> Vec<u8> {
    let mut c = Vec::with_capacity(
        method.len() + uri.len() + query.len() + headers.len() + signed_headers.len() + 70,
    );
    for part in [method.as_bytes(), uri.as_bytes(), query.as_bytes(), headers] {
        c.extend_from_slice(part);
        c.push(b'\n');
    }
    c.extend_from_slice(signed_headers.as_bytes());
    c.push(b'\n');
    c.extend_from_slice(payload_hash.as_bytes());
    c
}

pub(super) fn string_to_sign(
    amz_date: &str,
    credential_scope: &str,
    canonical_request: &[u8],
) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
        hex::encode(Sha256::digest(canonical_request))
    )
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA256 (RFC 2104) of `msg` under a key of any length. The key is first brought to
/// SHA-256's 64-byte block as HMAC defines (hashed if longer, then zero-padded), exactly what
/// `Hmac::new_from_slice` does; `Hmac::new` then takes it with no length to reject.
pub(super) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = Zeroizing::new([0u8; 64]);
    let hashed: Zeroizing<[u8; 32]>;
    let key = if key.len() > block.len() {
        hashed = Zeroizing::new(Sha256::digest(key).into());
        &hashed[..]
    } else {
        key
    };
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new((&*block).into());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
pub(super) fn signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> Zeroizing<[u8; 32]> {
    let mut k_secret = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = Zeroizing::new(hmac_sha256(&k_secret, date.as_bytes()));
    let k_region = Zeroizing::new(hmac_sha256(&k_date[..], region.as_bytes()));
    let k_service = Zeroizing::new(hmac_sha256(&k_region[..], service.as_bytes()));
    Zeroizing::new(hmac_sha256(&k_service[..], SCOPE_TERMINATOR.as_bytes()))
}

fn sha256_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credential, StaticCredentials};
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;
    use http::HeaderValue;
    use proptest::prelude::*;

    // AWS's published SigV4 test-suite credentials.
    const SUITE_AKID: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_TIME: &str = "20150830T123600Z";
    const SUITE_SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

    // Credentials and output of a real botocore 1.43.11 `kms.encrypt` call, captured at
    // `before-send` with `botocore.auth.get_current_datetime` pinned to 2026-11-26T12:00:00Z
    // and endpoint_url http://localhost:8080 (see the report for the script).
    const BOTO_AKID: &str = "AKIAHSMKMSTEST000001";
    const BOTO_SECRET: &str = "hsmkms/Secret+Key/For/Tests0123456789abcd";
    const BOTO_TIME: &str = "20261126T120000Z";
    const BOTO_BODY: &[u8] = br#"{"KeyId": "alias/test", "Plaintext": "aGVsbG8gd29ybGQ="}"#;
    const BOTO_USER_AGENT: &str = "Botocore/1.43.11 ua/2.1 os/linux#6.18.44-fc-v657 \
        md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython m/D,e,b,N,Z cfg/retry-mode#legacy";
    const BOTO_AUTHZ: &str = "AWS4-HMAC-SHA256 \
        Credential=AKIAHSMKMSTEST000001/20261126/us-east-1/kms/aws4_request, \
        SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
        Signature=7f2fb1723b4236b5176bbb4d209ec932103c47c5eb0a88443f7dd89914b2f09c";
    const BOTO_TOKEN: &str = "FQoGZXIvYXdzEXAMPLEsessiontoken//////////wEaDEXAMPLE=";
    const BOTO_TOKEN_AUTHZ: &str = "AWS4-HMAC-SHA256 \
        Credential=AKIAHSMKMSTEST000001/20261126/us-east-1/kms/aws4_request, \
        SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
        Signature=657625a364ec18036abd5d8f98afbb41dc58e4cc5074ce5a0dab15149a13bf76";

    fn at(s: &str) -> OffsetDateTime {
        parse_amz_date(s.as_bytes()).unwrap()
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn store() -> StaticCredentials {
        [
            Credential::new(
                SUITE_AKID,
                SUITE_SECRET,
                "111122223333",
                "arn:aws:iam::111122223333:user/suite",
            ),
            Credential::new(
                BOTO_AKID,
                BOTO_SECRET,
                "444455556666",
                "arn:aws:iam::444455556666:user/boto",
            ),
        ]
        .into_iter()
        .collect()
    }

    /// A client signing with AWS's own `aws-sigv4` crate (the SDK for Rust's signer), so these
    /// tests hold [`verify`] against an implementation that shares no code with this module.
    #[derive(Clone, Copy)]
    struct AwsSigner {
        access_key_id: &'static str,
        secret: &'static str,
        region: &'static str,
        service: &'static str,
        time: &'static str,
        session_token: Option<&'static str>,
        /// Headers left unsigned on top of aws-sigv4's own list (`user-agent`, ...).
        unsigned: &'static [&'static str],
    }

    const SUITE_SIGNER: AwsSigner = AwsSigner {
        access_key_id: SUITE_AKID,
        secret: SUITE_SECRET,
        region: "us-east-1",
        service: "service",
        time: SUITE_TIME,
        session_token: None,
        unsigned: &[],
    };

    const BOTO_SIGNER: AwsSigner = AwsSigner {
        access_key_id: BOTO_AKID,
        secret: BOTO_SECRET,
        region: "us-east-1",
        service: "kms",
        time: BOTO_TIME,
        session_token: None,
        unsigned: &[],
    };

    impl AwsSigner {
        /// Signs `method path?query` with `headers` and `body` in place: replaces any
        /// `authorization` and `x-amz-date`, adds `x-amz-security-token` with a session token,
        /// and signs every header present but the unsigned ones. `host` comes from `headers`
        /// (else `localhost:8080`); an `x-amz-content-sha256` header is signed and is the payload
        /// hash.
        fn sign(
            &self,
            method: &str,
            path: &str,
            query: &str,
            headers: &mut HeaderMap,
            body: &[u8],
        ) {
            headers.remove(AUTHORIZATION);
            headers.remove(X_AMZ_DATE);
            let host = headers
                .get("host")
                .map_or("localhost:8080", |h| h.to_str().unwrap());
            let uri = match query {
                "" => format!("http://{host}{path}"),
                q => format!("http://{host}{path}?{q}"),
            };
            let body = match headers.get(X_AMZ_CONTENT_SHA256) {
                Some(claimed) => SignableBody::Precomputed(claimed.to_str().unwrap().to_owned()),
                None => SignableBody::Bytes(body),
            };
            let identity: Identity = Credentials::new(
                self.access_key_id,
                self.secret,
                self.session_token.map(str::to_owned),
                None,
                "hsm-kms-tests",
            )
            .into();
            let mut settings = SigningSettings::default();
            settings
                .excluded_headers
                .get_or_insert_with(Vec::new)
                .extend(self.unsigned.iter().map(|h| Cow::Borrowed(*h)));
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(self.region)
                .name(self.service)
                .time(at(self.time).into())
                .settings(settings)
                .build()
                .unwrap()
                .into();
            let request = SignableRequest::new(
                method,
                uri,
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
                body,
            )
            .unwrap();
            let (instructions, _signature) = sign(request, &params).unwrap().into_parts();
            let (added, _query) = instructions.into_parts();
            for h in added {
                headers.insert(h.name(), HeaderValue::from_str(h.value()).unwrap());
            }
        }
    }

    fn parts<'a>(
        method: &'a str,
        path: &'a str,
        query: &'a str,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> RequestParts<'a> {
        RequestParts {
            method,
            path,
            query,
            headers,
            body,
        }
    }

    /// The headers botocore's KMS request carried on the wire (Host and the unsigned extras
    /// included), exactly as captured.
    fn boto_wire_headers() -> HeaderMap {
        hm(&[
            ("host", "localhost:8080"),
            ("accept-encoding", "identity"),
            ("x-amz-target", "TrentService.Encrypt"),
            ("content-type", "application/x-amz-json-1.1"),
            ("user-agent", BOTO_USER_AGENT),
            ("x-amz-date", BOTO_TIME),
            ("authorization", BOTO_AUTHZ),
            (
                "amz-sdk-invocation-id",
                "4f3783d1-3510-4516-8287-0befc88e3318",
            ),
            ("amz-sdk-request", "attempt=1"),
            ("content-length", "56"),
        ])
    }

    fn verify_boto(headers: &HeaderMap, body: &[u8], now: &str) -> Result<Principal, AuthError> {
        verify(
            &parts("POST", "/", "", headers, body),
            &store(),
            at(now),
            "us-east-1",
            "kms",
        )
    }

    fn boto_signed(mutate: impl FnOnce(&mut HeaderMap)) -> HeaderMap {
        let mut h = boto_wire_headers();
        mutate(&mut h);
        h
    }

    fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
        h.insert(name, HeaderValue::from_str(value).unwrap());
    }

    // -----------------------------------------------------------------------------------------
    // (1) AWS's published test-suite vectors
    // -----------------------------------------------------------------------------------------

    struct Vector {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        query: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static [u8],
        signed_headers: &'static str,
        signature: &'static str,
    }

    const VECTORS: &[Vector] = &[
        Vector {
            name: "get-vanilla",
            method: "GET",
            path: "/",
            query: "",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        },
        Vector {
            name: "get-unreserved",
            method: "GET",
            path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            query: "",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        },
        Vector {
            name: "get-slashes",
            method: "GET",
            path: "//example//",
            query: "",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        },
        Vector {
            name: "get-vanilla-query-order-key-case",
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        },
        Vector {
            name: "get-vanilla-query-order-value",
            method: "GET",
            path: "/",
            query: "Param1=value2&Param1=value1",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
        },
        Vector {
            name: "get-vanilla-utf8-query",
            method: "GET",
            path: "/",
            query: "%E1%88%B4=bar",
            headers: &[],
            body: b"",
            signed_headers: "host;x-amz-date",
            signature: "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        },
        Vector {
            name: "get-header-value-trim",
            method: "GET",
            path: "/",
            query: "",
            headers: &[("my-header1", " value1"), ("my-header2", "\"a   b   c\"")],
            body: b"",
            signed_headers: "host;my-header1;my-header2;x-amz-date",
            signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        },
        Vector {
            name: "get-header-value-order",
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("my-header1", "value4"),
                ("my-header1", "value1"),
                ("my-header1", "value3"),
                ("my-header1", "value2"),
            ],
            body: b"",
            signed_headers: "host;my-header1;x-amz-date",
            signature: "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        },
        Vector {
            name: "get-header-key-duplicate",
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("my-header1", "value2"),
                ("my-header1", "value2"),
                ("my-header1", "value1"),
            ],
            body: b"",
            signed_headers: "host;my-header1;x-amz-date",
            signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        },
        Vector {
            name: "post-x-www-form-urlencoded",
            method: "POST",
            path: "/",
            query: "",
            headers: &[("content-type", "application/x-www-form-urlencoded")],
            body: b"Param1=value1",
            signed_headers: "content-type;host;x-amz-date",
            signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        },
    ];

    #[test]
    fn aws_suite_vectors_sign_and_verify() {
        for v in VECTORS {
            let mut h = hm(&[("host", "example.amazonaws.com")]);
            for (k, val) in v.headers {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(val));
            }
            SUITE_SIGNER.sign(v.method, v.path, v.query, &mut h, v.body);
            let expected = format!(
                "AWS4-HMAC-SHA256 Credential={SUITE_SCOPE}, SignedHeaders={}, Signature={}",
                v.signed_headers, v.signature
            );
            assert_eq!(h[AUTHORIZATION], expected.as_str(), "vector {}", v.name);
            assert_eq!(h[X_AMZ_DATE], SUITE_TIME);

            let principal = verify(
                &parts(v.method, v.path, v.query, &h, v.body),
                &store(),
                at(SUITE_TIME),
                "us-east-1",
                "service",
            )
            .unwrap_or_else(|e| panic!("vector {}: {e}", v.name));
            assert_eq!(principal.arn, "arn:aws:iam::111122223333:user/suite");
        }
    }

    #[test]
    fn get_vanilla_canonical_request_and_string_to_sign() {
        let h = hm(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", SUITE_TIME),
        ]);
        let creq = canonical_request(
            "GET",
            &canonical_uri("/"),
            &canonical_query_botocore(""),
            &canonical_headers(&h, ["host", "x-amz-date"].into_iter()),
            "host;x-amz-date",
            &hex::encode(Sha256::digest(b"")),
        );
        assert_eq!(
            String::from_utf8(creq.clone()).unwrap(),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(SUITE_TIME, "20150830/us-east-1/service/aws4_request", &creq),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
    }

    // -----------------------------------------------------------------------------------------
    // (2) Requests signed by real botocore
    // -----------------------------------------------------------------------------------------

    #[test]
    fn botocore_kms_encrypt_verifies() {
        let p = verify_boto(&boto_wire_headers(), BOTO_BODY, BOTO_TIME).unwrap();
        assert_eq!(
            p,
            Principal {
                access_key_id: BOTO_AKID.into(),
                account_id: "444455556666".into(),
                arn: "arn:aws:iam::444455556666:user/boto".into(),
                session: None,
            }
        );
    }

    #[test]
    fn aws_sigv4_reproduces_botocore_kms_encrypt() {
        // The headers present when botocore signed: user-agent is there but never signed.
        let mut h = hm(&[
            ("x-amz-target", "TrentService.Encrypt"),
            ("content-type", "application/x-amz-json-1.1"),
            ("user-agent", BOTO_USER_AGENT),
            ("host", "localhost:8080"),
        ]);
        BOTO_SIGNER.sign("POST", "/", "", &mut h, BOTO_BODY);
        assert_eq!(h[AUTHORIZATION], BOTO_AUTHZ);
        assert_eq!(h[X_AMZ_DATE], BOTO_TIME);
        assert!(!h.contains_key(X_AMZ_SECURITY_TOKEN));
        verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap();
    }

    #[test]
    fn aws_sigv4_reproduces_botocore_with_session_token() {
        let mut h = hm(&[
            ("x-amz-target", "TrentService.Encrypt"),
            ("content-type", "application/x-amz-json-1.1"),
            ("user-agent", BOTO_USER_AGENT),
            ("host", "localhost:8080"),
        ]);
        let signer = AwsSigner {
            session_token: Some(BOTO_TOKEN),
            ..BOTO_SIGNER
        };
        signer.sign("POST", "/", "", &mut h, BOTO_BODY);
        assert_eq!(h[AUTHORIZATION], BOTO_TOKEN_AUTHZ);
        assert_eq!(h[X_AMZ_SECURITY_TOKEN], BOTO_TOKEN);
        // Our credentials are long-term keys, so AWS-like verification refuses the token even
        // though the signature itself is right.
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::UnrecognizedClient)
        );
    }

    /// The same request verified against a store where the access key is a role
    /// session's temporary key with `token`, expiring at `expires`.
    fn verify_session(
        h: &HeaderMap,
        token: &str,
        expires: &str,
        now: &str,
    ) -> Result<Principal, AuthError> {
        let session = crate::auth::Session {
            role_arn: "arn:aws:iam::444455556666:role/app/r".into(),
            role_id: "AROAEXAMPLEEXAMPLE12".into(),
            session_name: "s".into(),
        };
        let mut c = Credential::new(
            BOTO_AKID,
            BOTO_SECRET,
            "444455556666",
            "arn:aws:sts::444455556666:assumed-role/r/s",
        );
        c.session = Some(crate::auth::SessionCredential {
            token_sha256: Sha256::digest(token.as_bytes()).into(),
            expires_at: at(expires),
            session: session.clone(),
        });
        let store: StaticCredentials = [c].into_iter().collect();
        verify(
            &parts("POST", "/", "", h, BOTO_BODY),
            &store,
            at(now),
            "us-east-1",
            "kms",
        )
    }

    #[test]
    fn a_session_key_needs_its_own_token_signed_or_not_and_expires() {
        let base = hm(&[
            ("x-amz-target", "TrentService.Encrypt"),
            ("content-type", "application/x-amz-json-1.1"),
            ("host", "localhost:8080"),
        ]);
        let signer = AwsSigner {
            session_token: Some(BOTO_TOKEN),
            ..BOTO_SIGNER
        };
        let mut signed = base.clone();
        signer.sign("POST", "/", "", &mut signed, BOTO_BODY);
        let later = "20261126T130000Z";
        let p = verify_session(&signed, BOTO_TOKEN, later, BOTO_TIME).unwrap();
        assert_eq!(p.arn, "arn:aws:sts::444455556666:assumed-role/r/s");
        assert_eq!(p.session.unwrap().role_id, "AROAEXAMPLEEXAMPLE12");
        // Another token, or none: an unknown key.
        assert_eq!(
            verify_session(&signed, "another-token", later, BOTO_TIME),
            Err(AuthError::UnrecognizedClient)
        );
        let mut none = signed.clone();
        none.remove(X_AMZ_SECURITY_TOKEN);
        assert_eq!(
            verify_session(&none, BOTO_TOKEN, later, BOTO_TIME),
            Err(AuthError::UnrecognizedClient)
        );
        // Signed without the token, the token added afterwards: accepted.
        let mut unsigned = base.clone();
        BOTO_SIGNER.sign("POST", "/", "", &mut unsigned, BOTO_BODY);
        unsigned.insert(X_AMZ_SECURITY_TOKEN, HeaderValue::from_static(BOTO_TOKEN));
        verify_session(&unsigned, BOTO_TOKEN, later, BOTO_TIME).unwrap();
        let mut no_token = unsigned.clone();
        no_token.remove(X_AMZ_SECURITY_TOKEN);
        assert_eq!(
            verify_session(&no_token, BOTO_TOKEN, later, BOTO_TIME),
            Err(AuthError::UnrecognizedClient)
        );
        // At the expiry, refused as expired (with its AWS type).
        let e = verify_session(&signed, BOTO_TOKEN, BOTO_TIME, BOTO_TIME).unwrap_err();
        assert_eq!(e, AuthError::ExpiredToken);
        assert_eq!(e.aws_type(), "ExpiredTokenException");
        assert_eq!(
            e.message(),
            "The security token included in the request is expired"
        );
    }

    #[test]
    fn an_inactive_key_is_an_unknown_key() {
        let mut c = Credential::new(BOTO_AKID, BOTO_SECRET, "444455556666", "arn");
        c.active = false;
        let store: StaticCredentials = [c].into_iter().collect();
        assert_eq!(
            verify(
                &parts("POST", "/", "", &boto_wire_headers(), BOTO_BODY),
                &store,
                at(BOTO_TIME),
                "us-east-1",
                "kms",
            ),
            Err(AuthError::UnrecognizedClient)
        );
    }

    #[test]
    fn aws_sigv4_reproduces_botocore_path_query_and_header_canonicalization() {
        // botocore SigV4Auth over
        // http://localhost:8080/a/./b/../c//d%20e/~x?b=2&a=%2F&a=1&c
        let mut h = hm(&[
            ("host", "localhost:8080"),
            ("x-custom", "  x   y  "),
            ("content-type", "application/x-amz-json-1.1"),
            ("user-agent", "ua"),
        ]);
        let path = "/a/./b/../c//d%20e/~x";
        let query = "b=2&a=%2F&a=1&c";
        BOTO_SIGNER.sign("POST", path, query, &mut h, b"{}");
        assert_eq!(
            h[AUTHORIZATION],
            "AWS4-HMAC-SHA256 \
             Credential=AKIAHSMKMSTEST000001/20261126/us-east-1/kms/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-custom, \
             Signature=32b1c17f4aea18d3488da53b9e99e7babfe8b8e627355ef8297fb2d87054b699"
        );
        verify(
            &parts("POST", path, query, &h, b"{}"),
            &store(),
            at(BOTO_TIME),
            "us-east-1",
            "kms",
        )
        .unwrap();
    }

    #[test]
    fn botocore_date_header_mode_verifies() {
        // botocore rewrites an existing Date header instead of adding X-Amz-Date; this is its
        // output for POST http://localhost:8080/ with body `{}` and `Date: whatever`.
        let h = hm(&[
            ("host", "localhost:8080"),
            ("date", "Thu, 26 Nov 2026 12:00:00 -0000"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 \
                 Credential=AKIAHSMKMSTEST000001/20261126/us-east-1/kms/aws4_request, \
                 SignedHeaders=date;host, \
                 Signature=1ff4a918ddeadb3a2f06c94401796351f36f87ac3937dbacb75efb95ee45ffeb",
            ),
        ]);
        verify_boto(&h, b"{}", BOTO_TIME).unwrap();
        // An X-Amz-Date added after signing (it would win over Date) is refused: it must be
        // signed when present.
        let mut both = h.clone();
        both.insert(X_AMZ_DATE, HeaderValue::from_static("20261126T120001Z"));
        assert_eq!(
            verify_boto(&both, b"{}", BOTO_TIME),
            Err(AuthError::IncompleteSignature(
                "'x-amz-date' must be a 'SignedHeader' in the AWS Authorization.".into()
            ))
        );
        // So is an X-Amz-Target (a re-targeted request). A session token need not be
        // (see the session tests).
        let mut more = h.clone();
        more.insert(
            http::HeaderName::from_static("x-amz-target"),
            HeaderValue::from_static("TrentService.DisableKey"),
        );
        assert_eq!(
            verify_boto(&more, b"{}", BOTO_TIME),
            Err(AuthError::IncompleteSignature(
                "'x-amz-target' must be a 'SignedHeader' in the AWS Authorization.".into()
            ))
        );
    }

    #[test]
    fn http_date_forms() {
        for ok in [
            "Thu, 26 Nov 2026 12:00:00 GMT",
            "Thu, 26 Nov 2026 12:00:00 UTC",
            "Thu, 26 Nov 2026 12:00:00 +0000",
            "Thu, 26 Nov 2026 12:00:00 -0000",
            "Thursday,  26 Nov 2026\t12:00:00   GMT",
            "Fri, 26 Nov 2026 12:0:0 GMT",
        ] {
            assert_eq!(
                parse_http_date(ok.as_bytes()),
                Some(at(BOTO_TIME)),
                "{ok:?}"
            );
        }
        assert_eq!(
            parse_http_date(b"Tue, 1 Dec 2026 09:05:03 GMT"),
            Some(at("20261201T090503Z"))
        );
        for bad in [
            "Thu 26 Nov 2026 12:00:00 GMT",
            "Thu, 26 Nov 2026 12:00:00 +0100",
            "Thu, 26 nov 2026 12:00:00 GMT",
            "Thu, 31 Nov 2026 12:00:00 GMT",
            "Thu, 26 Nov 2026 12:00:60 GMT",
            "Thu, 26 Nov 2026 12:00:00",
            "Thu, 26 Nov 2026 12:00:00 GMT x",
            "2026-11-26T12:00:00Z",
        ] {
            assert_eq!(parse_http_date(bad.as_bytes()), None, "{bad:?}");
        }
        let h = hm(&[
            ("host", "localhost:8080"),
            ("date", "2026-11-26T12:00:00Z"),
            ("authorization", BOTO_AUTHZ),
        ]);
        assert_err(
            verify_boto(&h, b"{}", BOTO_TIME),
            "IncompleteSignatureException",
            "Date must be in RFC 1123 format. Got '2026-11-26T12:00:00Z'.",
        );
    }

    // -----------------------------------------------------------------------------------------
    // (3) Every error, with its AWS type, status and message
    // -----------------------------------------------------------------------------------------

    #[track_caller]
    fn assert_err(r: Result<Principal, AuthError>, aws_type: &str, message: &str) {
        let e = r.expect_err("expected an authentication failure");
        assert_eq!(e.aws_type(), aws_type, "{e:?}");
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.message(), message);
        assert_eq!(e.to_string(), message);
    }

    /// The hashed-Authorization suffix AWS appends to "requires" messages.
    fn hashed(authz: &str) -> String {
        sha256_base64(authz.as_bytes())
    }

    #[test]
    fn missing_authorization_header() {
        let h = boto_signed(|h| {
            h.remove(AUTHORIZATION);
        });
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "MissingAuthenticationTokenException",
            "Request is missing Authentication Token",
        );
        let h = boto_signed(|h| set(h, "authorization", "   "));
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::MissingAuthenticationToken)
        );
    }

    #[test]
    fn presigned_query_string_is_missing_authentication() {
        let h = boto_signed(|h| {
            h.remove(AUTHORIZATION);
        });
        let r = verify(
            &parts(
                "POST",
                "/",
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAHSMKMSTEST000001%2F\
                 20261126%2Fus-east-1%2Fkms%2Faws4_request&X-Amz-Signature=00",
                &h,
                BOTO_BODY,
            ),
            &store(),
            at(BOTO_TIME),
            "us-east-1",
            "kms",
        );
        assert_eq!(r, Err(AuthError::MissingAuthenticationToken));
    }

    #[test]
    fn unsupported_algorithm() {
        let authz = BOTO_AUTHZ.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            "Unsupported AWS 'algorithm': 'AWS4-ECDSA-P256-SHA256'",
        );
        let h = boto_signed(|h| set(h, "authorization", "Bearer abc"));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            "Unsupported AWS 'algorithm': 'Bearer'",
        );
    }

    #[test]
    fn missing_components_are_reported_together() {
        let authz = "AWS4-HMAC-SHA256 \
            Credential=AKIAHSMKMSTEST000001/20261126/us-east-1/kms/aws4_request";
        let h = boto_signed(|h| {
            set(h, "authorization", authz);
            h.remove(X_AMZ_DATE);
        });
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            &format!(
                "Authorization header requires 'Signature' parameter. Authorization header \
                 requires 'SignedHeaders' parameter. Authorization header requires existence \
                 of either a 'X-Amz-Date' or a 'Date' header. (Hashed with SHA-256 and \
                 encoded with Base64) Authorization={}",
                hashed(authz)
            ),
        );

        let authz = "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=";
        let h = boto_signed(|h| set(h, "authorization", authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            &format!(
                "Authorization header requires 'Credential' parameter. Authorization header \
                 requires 'Signature' parameter. (Hashed with SHA-256 and encoded with \
                 Base64) Authorization={}",
                hashed(authz)
            ),
        );
    }

    #[test]
    fn missing_date_header_alone() {
        let h = boto_signed(|h| {
            h.remove(X_AMZ_DATE);
        });
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            &format!(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
                 header. (Hashed with SHA-256 and encoded with Base64) Authorization={}",
                hashed(BOTO_AUTHZ)
            ),
        );
    }

    #[test]
    fn component_without_equal_sign() {
        let authz = "AWS4-HMAC-SHA256 Credential, SignedHeaders=host, Signature=00";
        let h = boto_signed(|h| set(h, "authorization", authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            &format!(
                "Invalid key=value pair (missing equal-sign) in Authorization header (hashed \
                 with SHA-256 and encoded with Base64): '{}'.",
                hashed(authz)
            ),
        );
    }

    #[test]
    fn credential_with_wrong_number_of_elements() {
        let authz = BOTO_AUTHZ.replace("/kms/aws4_request", "/kms");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got 'AKIAHSMKMSTEST000001/20261126/us-east-1/kms'",
        );
    }

    #[test]
    fn malformed_x_amz_date() {
        let h = boto_signed(|h| set(h, "x-amz-date", "2026-11-26T12:00:00Z"));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            "Date must be in ISO-8601 'basic format'. Got '2026-11-26T12:00:00Z'. See \
             http://en.wikipedia.org/wiki/ISO_8601",
        );
        for bad in [
            "20261126T120000",
            "20261326T120000Z",
            "20261126T126000Z",
            "2026112aT120000Z",
        ] {
            assert!(parse_amz_date(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn host_must_be_signed() {
        // Correctly signed, but without host in the signed set.
        let mut h = hm(&[("content-type", "application/x-amz-json-1.1")]);
        let signer = AwsSigner {
            unsigned: &["host"],
            ..BOTO_SIGNER
        };
        signer.sign("POST", "/", "", &mut h, BOTO_BODY);
        assert!(h[AUTHORIZATION]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=content-type;x-amz-date,"));
        h.insert("host", HeaderValue::from_static("localhost:8080"));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "IncompleteSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        );
    }

    #[test]
    fn wrong_region() {
        let authz = BOTO_AUTHZ.replace("/us-east-1/", "/eu-west-1/");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "InvalidSignatureException",
            "Credential should be scoped to a valid region, not 'eu-west-1'. ",
        );
    }

    #[test]
    fn wrong_service() {
        let authz = BOTO_AUTHZ.replace("/kms/", "/sts/");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'kms'. ",
        );
    }

    #[test]
    fn scope_errors_are_reported_together() {
        let authz = BOTO_AUTHZ.replace(
            "20261126/us-east-1/kms/aws4_request",
            "20261125/eu-west-1/sts/aws5_request",
        );
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "InvalidSignatureException",
            "Credential should be scoped to a valid region, not 'eu-west-1'. Credential should \
             be scoped to correct service: 'kms'. Credential should be scoped with a valid \
             terminator: 'aws4_request', not 'aws5_request'. Date in Credential scope does not \
             match YYYYMMDD from ISO-8601 version of date from HTTP: '20261125' != '20261126', \
             from '20261126T120000Z'.",
        );
    }

    #[test]
    fn scope_date_must_match_request_date() {
        let authz = BOTO_AUTHZ.replace("/20261126/", "/20261127/");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '20261127' != '20261126', from '20261126T120000Z'.",
        );
    }

    #[test]
    fn clock_skew_window() {
        let h = boto_wire_headers();
        // Exactly five minutes either way is still accepted.
        verify_boto(&h, BOTO_BODY, "20261126T120500Z").unwrap();
        verify_boto(&h, BOTO_BODY, "20261126T115500Z").unwrap();
        // Sub-second parts of the server clock do not count.
        let now = at("20261126T120500Z") + Duration::milliseconds(999);
        verify(
            &parts("POST", "/", "", &h, BOTO_BODY),
            &store(),
            now,
            "us-east-1",
            "kms",
        )
        .unwrap();

        assert_err(
            verify_boto(&h, BOTO_BODY, "20261126T121000Z"),
            "InvalidSignatureException",
            "Signature expired: 20261126T120000Z is now earlier than 20261126T120500Z \
             (20261126T121000Z - 5 min.)",
        );
        assert_err(
            verify_boto(&h, BOTO_BODY, "20261126T120501Z"),
            "InvalidSignatureException",
            "Signature expired: 20261126T120000Z is now earlier than 20261126T120001Z \
             (20261126T120501Z - 5 min.)",
        );
        assert_err(
            verify_boto(&h, BOTO_BODY, "20261126T115459Z"),
            "InvalidSignatureException",
            "Signature not yet current: 20261126T120000Z is still later than 20261126T115959Z \
             (20261126T115459Z + 5 min.)",
        );
        // A non-UTC server clock is compared (and reported) in UTC.
        let now = at("20261126T121000Z").to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert!(matches!(
            verify(
                &parts("POST", "/", "", &h, BOTO_BODY),
                &store(),
                now,
                "us-east-1",
                "kms"
            ),
            Err(AuthError::SignatureExpired { ref now, .. }) if now == "20261126T121000Z"
        ));
    }

    #[test]
    fn unknown_access_key() {
        let authz = BOTO_AUTHZ.replace(BOTO_AKID, "AKIAUNKNOWN000000000");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }

    #[test]
    fn signature_mismatch_message() {
        let authz = BOTO_AUTHZ.replace("Signature=7f2f", "Signature=7f2e");
        let h = boto_signed(|h| set(h, "authorization", &authz));
        assert_err(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        );
    }

    #[test]
    fn payload_hash_header_must_match_body() {
        // A correct x-amz-content-sha256 is fine (and is what the signer used).
        let mut h = hm(&[
            ("host", "localhost:8080"),
            (
                "x-amz-content-sha256",
                &hex::encode(Sha256::digest(BOTO_BODY)),
            ),
        ]);
        BOTO_SIGNER.sign("POST", "/", "", &mut h, BOTO_BODY);
        verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap();
        // A client may not declare the payload unsigned, or claim another body's hash.
        for claimed in ["UNSIGNED-PAYLOAD", &hex::encode(Sha256::digest(b"other"))] {
            let mut h = hm(&[
                ("host", "localhost:8080"),
                ("x-amz-content-sha256", claimed),
            ]);
            BOTO_SIGNER.sign("POST", "/", "", &mut h, BOTO_BODY);
            assert_err(
                verify_boto(&h, BOTO_BODY, BOTO_TIME),
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            );
        }
    }

    #[test]
    fn multiple_authorization_headers_are_rejected() {
        let h = boto_signed(|h| {
            h.append(AUTHORIZATION, HeaderValue::from_static(BOTO_AUTHZ));
        });
        let e = verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap_err();
        assert_eq!(e.aws_type(), "IncompleteSignatureException");
    }

    // -----------------------------------------------------------------------------------------
    // (4) Tampering
    // -----------------------------------------------------------------------------------------

    #[test]
    fn tampered_body_fails() {
        let body = br#"{"KeyId": "alias/test", "Plaintext": "aGVsbG8gd29ybGR="}"#;
        assert_eq!(
            verify_boto(&boto_wire_headers(), body, BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            verify_boto(&boto_wire_headers(), b"", BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn tampered_signed_header_fails_but_unsigned_header_does_not() {
        let h = boto_signed(|h| set(h, "x-amz-target", "TrentService.Decrypt"));
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
        let h = boto_signed(|h| set(h, "host", "evil.example:8080"));
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
        // A signed header that is dropped.
        let h = boto_signed(|h| {
            h.remove("content-type");
        });
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
        // The date is covered even though it only enters the string to sign.
        let h = boto_signed(|h| set(h, "x-amz-date", "20261126T120001Z"));
        assert_eq!(
            verify_boto(&h, BOTO_BODY, BOTO_TIME),
            Err(AuthError::SignatureMismatch)
        );
        // Unsigned headers may change freely.
        let h = boto_signed(|h| {
            set(h, "user-agent", "something else");
            set(h, "amz-sdk-request", "attempt=2");
        });
        verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap();
    }

    #[test]
    fn whitespace_in_signed_header_values_is_canonicalized() {
        let h = boto_signed(|h| set(h, "x-amz-target", "  TrentService.Encrypt\t "));
        verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap();
    }

    #[test]
    fn tampered_method_path_query_fail() {
        let h = boto_wire_headers();
        for (method, path, query) in [("PUT", "/", ""), ("POST", "/x", ""), ("POST", "/", "a=1")] {
            assert_eq!(
                verify(
                    &parts(method, path, query, &h, BOTO_BODY),
                    &store(),
                    at(BOTO_TIME),
                    "us-east-1",
                    "kms"
                ),
                Err(AuthError::SignatureMismatch),
                "{method} {path}?{query}"
            );
        }
    }

    #[test]
    fn wrong_secret_fails() {
        let wrong = [Credential::new(
            BOTO_AKID,
            "hsmkms/Secret+Key/For/Tests0123456789abce",
            "444455556666",
            "arn:aws:iam::444455556666:user/boto",
        )]
        .into_iter()
        .collect::<StaticCredentials>();
        assert_eq!(
            verify(
                &parts("POST", "/", "", &boto_wire_headers(), BOTO_BODY),
                &wrong,
                at(BOTO_TIME),
                "us-east-1",
                "kms"
            ),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn errors_never_show_the_secret() {
        let h = boto_signed(|h| set(h, "x-amz-target", "TrentService.Decrypt"));
        let e = verify_boto(&h, BOTO_BODY, BOTO_TIME).unwrap_err();
        assert!(!format!("{e:?} {e}").contains(BOTO_SECRET));
    }

    // -----------------------------------------------------------------------------------------
    // Canonicalization helpers, checked against botocore's own output
    // -----------------------------------------------------------------------------------------

    #[test]
    fn canonical_uri_matches_botocore() {
        for (path, expected) in [
            ("", "/"),
            ("/", "/"),
            ("//example//", "/example/"),
            ("/a/./b/../c", "/a/c"),
            ("/example space/", "/example%20space/"),
            ("/a%2Fb", "/a%252Fb"),
            ("/\u{1234}", "/%E1%88%B4"),
            ("/..", "/"),
            ("a/b/", "a/b/"),
            ("/a/b/..", "/a"),
            (
                "/~user/x+y=z;k,@:!$&'()*",
                "/~user/x%2By%3Dz%3Bk%2C%40%3A%21%24%26%27%28%29%2A",
            ),
        ] {
            assert_eq!(canonical_uri(path), expected, "{path:?}");
        }
    }

    #[test]
    fn canonical_query_forms() {
        for (query, botocore) in [
            ("", ""),
            ("b=2&a=%2F&a=1&c", "a=%2F&a=1&b=2&c="),
            ("a=1&&b", "=&a=1&b="),
            ("x=a.b&x=a%2Fb", "x=a%2Fb&x=a.b"),
            ("q=a+b", "q=a+b"),
        ] {
            assert_eq!(canonical_query_botocore(query), botocore, "{query:?}");
        }
        for (query, spec) in [
            ("", ""),
            ("Param2=value2&Param1=value1", "Param1=value1&Param2=value2"),
            ("q=a+b", "q=a%2Bb"),
            ("q=a%20b&p=%7e", "p=~&q=a%20b"),
            ("b&a=1", "a=1&b="),
            ("a=1=2", "a=1%3D2"),
            ("a=%zz&b=%4", "a=%25zz&b=%254"),
            ("%e1%88%b4=bar", "%E1%88%B4=bar"),
        ] {
            assert_eq!(canonical_query_spec(query), spec, "{query:?}");
        }
    }

    #[test]
    fn verify_accepts_spec_form_query_signatures() {
        // aws-sigv4 canonicalizes the query per the spec (lower-case escapes re-encoded
        // upper-case, `~` decoded), unlike botocore; such signatures must verify too.
        let query = "p=%7e&q=a%2fb";
        let mut h = hm(&[("host", "localhost:8080")]);
        BOTO_SIGNER.sign("POST", "/", query, &mut h, b"{}");
        assert_ne!(canonical_query_spec(query), canonical_query_botocore(query));
        verify(
            &parts("POST", "/", query, &h, b"{}"),
            &store(),
            at(BOTO_TIME),
            "us-east-1",
            "kms",
        )
        .unwrap();
    }

    // -----------------------------------------------------------------------------------------
    // (5) Property: aws-sigv4 signs -> verify accepts; any body change breaks it
    // -----------------------------------------------------------------------------------------

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Paths and queries are limited to what aws-sigv4 and botocore canonicalize alike:
        /// characters an `http::Uri` accepts, no trailing `.`/`..` segment (aws-sigv4 then keeps
        /// a trailing `/`, botocore does not), no `+` in the query (aws-sigv4 reads it as a
        /// space) and no escapes of non-ASCII bytes that are not UTF-8 (aws-sigv4 replaces them).
        #[test]
        fn sign_verify_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            path in "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,5}/?",
            query in "([A-Za-z0-9=&._~/-]|%[0-7][0-9A-Fa-f]|%[Ee]1%88%[Bb]4){0,12}",
            extra in "[ -~]{0,30}",
            flip_at in any::<prop::sample::Index>(),
            flip_bit in 0u8..8,
        ) {
            prop_assume!(!path.ends_with("/.") && !path.ends_with("/.."));
            let mut h = hm(&[
                ("host", "kms.example.internal:8443"),
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "TrentService.Encrypt"),
            ]);
            h.insert("x-extra", HeaderValue::from_str(&extra).unwrap());
            BOTO_SIGNER.sign("POST", &path, &query, &mut h, &body);
            let ok = verify(
                &parts("POST", &path, &query, &h, &body),
                &store(),
                at(BOTO_TIME),
                "us-east-1",
                "kms",
            );
            prop_assert_eq!(ok.map(|p| p.access_key_id), Ok(BOTO_AKID.to_string()));

            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip_at.index(body.len())] ^= 1 << flip_bit;
                let bad = verify(
                    &parts("POST", &path, &query, &h, &tampered),
                    &store(),
                    at(BOTO_TIME),
                    "us-east-1",
                    "kms",
                );
                prop_assert_eq!(bad, Err(AuthError::SignatureMismatch));
            }
        }
    }

    /// `format_amz_date` and `format_scope_date` write what `time` formats for the same
    /// descriptions, for any instant `time` can represent and any offset it comes in.
    #[test]
    fn date_formatters_match_time_format_descriptions() {
        const SCOPE_DATE: &[BorrowedFormatItem<'static>] =
            format_description!("[year][month][day]");
        // A day inside both ends, so that moving to UTC stays in range.
        let first = time::Date::MIN.midnight().assume_utc().unix_timestamp() + 86_400;
        let last = time::Date::MAX.midnight().assume_utc().unix_timestamp() - 86_400;
        let check = |secs: i64, offset_secs: i32| {
            let offset = UtcOffset::from_whole_seconds(offset_secs).unwrap();
            let t = OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .to_offset(offset);
            let utc = t.to_offset(UtcOffset::UTC);
            assert_eq!(format_amz_date(t), utc.format(AMZ_DATE).unwrap(), "{t}");
            assert_eq!(format_scope_date(t), utc.format(SCOPE_DATE).unwrap(), "{t}");
        };
        for secs in [
            first,
            -62_167_219_200 - 1,
            -62_167_219_200,
            0,
            1_795_694_400,
            last,
        ] {
            for offset in [0, -86_399, 86_399, 5 * 3600 + 30 * 60] {
                check(secs, offset);
            }
        }
        proptest!(|(secs in first..=last, offset in -86_399i32..=86_399)| {
            check(secs, offset);
        });
    }

    /// The block-key HMAC equals `Hmac::new_from_slice` for keys shorter than, equal to
    /// and longer than SHA-256's 64-byte block.
    #[test]
    fn hmac_sha256_matches_new_from_slice() {
        let msg = b"AWS4-HMAC-SHA256\n20150830T123600Z";
        for len in 0..=200usize {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut mac = HmacSha256::new_from_slice(&key).unwrap();
            mac.update(msg);
            let want: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(hmac_sha256(&key, msg), want, "key length {len}");
        }
    }
}
