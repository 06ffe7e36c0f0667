//! AWS Signature Version 4 signing of outgoing requests, for this crate's own clients
//! (`hsm-kms bench`, `hsm-kms envelope`). It builds the canonical request with the very
//! functions [`super::sigv4::verify`] checks with (path, query, header block, string to sign,
//! signing key), so what this signer produces is by construction what the verifier
//! recomputes; the tests also hold it byte for byte against AWS's own `aws-sigv4` crate.
//!
//! What is signed: every header of the request but the ones AWS's SDKs leave out
//! (`authorization`, `user-agent`, `x-amzn-trace-id`, `transfer-encoding`), plus the
//! `x-amz-date` and, for temporary credentials, the `x-amz-security-token` this signer adds;
//! the path and query in the specification's canonical form; the hex SHA-256 of the body.
//! The signing key (four chained HMACs) is derived once per day and kept, zeroized on drop.

use super::sigv4::{
    canonical_headers, canonical_query_spec, canonical_request, canonical_uri, format_amz_date,
    format_scope_date, hmac_sha256, signing_key, string_to_sign, ALGORITHM, SCOPE_TERMINATOR,
    X_AMZ_DATE, X_AMZ_SECURITY_TOKEN,
};
use http::header::{InvalidHeaderValue, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Headers never signed (AWS's SDKs leave them out: proxies and transports change them).
const UNSIGNED: &[&str] = &[
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Signs requests with one credential for one region and service. `Debug` shows neither the
/// secret nor the session token.
pub struct Signer {
    access_key_id: String,
    secret: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    region: String,
    service: String,
    /// The signing key of the last scope date used, and that date.
    key: Mutex<Option<(String, Zeroizing<[u8; 32]>)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("service", &self.service)
            .finish()
    }
}

impl Signer {
    /// A signer for `access_key_id`/`secret` (and the session token of temporary
    /// credentials) that scopes its signatures to `region` and `service` (e.g. `"kms"`).
    pub fn new(
        access_key_id: impl Into<String>,
        secret: impl Into<String>,
        session_token: Option<String>,
        region: impl Into<String>,
        service: impl Into<String>,
    ) -> Signer {
        Signer {
            access_key_id: access_key_id.into(),
            secret: Zeroizing::new(secret.into()),
            session_token: session_token.map(Zeroizing::new),
            region: region.into(),
            service: service.into(),
            key: Mutex::new(None),
        }
    }

    /// The access key id signatures name.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The region signatures are scoped to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs `method path?query` with `headers` (which must hold `host`, as sent) and `body`
    /// at `now`: sets `x-amz-date`, `x-amz-security-token` for temporary credentials, and
    /// `authorization`, replacing any earlier ones. `path` and `query` are as sent on the
    /// wire (percent-encoded once; `query` without `?`). Fails only when the access key id
    /// or session token cannot be a header value.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &mut HeaderMap,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), InvalidHeaderValue> {
        let amz_date = format_amz_date(now);
        let day = format_scope_date(now);
        headers.insert(X_AMZ_DATE, HeaderValue::from_str(&amz_date)?);
        match &self.session_token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t)?;
                v.set_sensitive(true);
                headers.insert(X_AMZ_SECURITY_TOKEN, v);
            }
            None => {
                headers.remove(X_AMZ_SECURITY_TOKEN);
            }
        }
        headers.remove(AUTHORIZATION);

        let mut names: Vec<&str> = headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !UNSIGNED.contains(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        let signed_headers = names.join(";");
        let header_block = canonical_headers(headers, names.iter().copied());
        let payload_hash = hex::encode(Sha256::digest(body));
        let creq = canonical_request(
            &method.to_ascii_uppercase(),
            &canonical_uri(path),
            &canonical_query_spec(query),
            &header_block,
            &signed_headers,
            &payload_hash,
        );
        let scope = format!("{day}/{}/{}/{SCOPE_TERMINATOR}", self.region, self.service);
        let sts = string_to_sign(&amz_date, &scope, &creq);
        let signature = {
            let mut cached = self.key.lock();
            let key = match cached.take() {
                Some((d, k)) if d == day => k,
                _ => signing_key(&self.secret, &day, &self.region, &self.service),
            };
            let signature = hex::encode(hmac_sha256(&key[..], sts.as_bytes()));
            *cached = Some((day, key));
            signature
        };
        let authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            self.access_key_id
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&authorization)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sigv4::{verify, AuthError, RequestParts};
    use crate::auth::{Credential, StaticCredentials};
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;
    use proptest::prelude::*;

    const AKID: &str = "AKIAHSMKMSSIGNER0001";
    const SECRET: &str = "hsmkms/Signer+Secret/For/Tests0123456789ab";

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The `authorization` (and added headers) AWS's `aws-sigv4` produces for the same
    /// request.
    #[allow(clippy::too_many_arguments)]
    fn aws_sign(
        method: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
        token: Option<&str>,
        region: &str,
        service: &str,
        now: OffsetDateTime,
    ) -> HeaderMap {
        let host = headers["host"].to_str().unwrap();
        let uri = match query {
            "" => format!("http://{host}{path}"),
            q => format!("http://{host}{path}?{q}"),
        };
        let identity: Identity =
            Credentials::new(AKID, SECRET, token.map(str::to_owned), None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(now.into())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let request = SignableRequest::new(
            method,
            uri,
            headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let mut out = HeaderMap::new();
        for h in instructions.into_parts().0 {
            out.insert(h.name(), HeaderValue::from_str(h.value()).unwrap());
        }
        out
    }

    fn creds() -> StaticCredentials {
        [Credential::new(
            AKID,
            SECRET,
            "111122223333",
            "arn:aws:iam::111122223333:root",
        )]
        .into_iter()
        .collect()
    }

    fn kms_request() -> HeaderMap {
        headers(&[
            ("host", "127.0.0.1:4599"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.Encrypt"),
        ])
    }

    #[test]
    fn kms_call_matches_aws_sigv4_and_verifies() {
        let body = br#"{"KeyId":"alias/x","Plaintext":"aGVsbG8="}"#;
        let now = at(1_795_694_400);
        let mut h = kms_request();
        let want = aws_sign("POST", "/", "", &h, body, None, "us-east-1", "kms", now);
        Signer::new(AKID, SECRET, None, "us-east-1", "kms")
            .sign("POST", "/", "", &mut h, body, now)
            .unwrap();
        assert_eq!(h["authorization"], want["authorization"]);
        assert_eq!(h["x-amz-date"], want["x-amz-date"]);
        assert!(h.get("x-amz-security-token").is_none());
        let p = verify(
            &RequestParts {
                method: "POST",
                path: "/",
                query: "",
                headers: &h,
                body,
            },
            &creds(),
            now,
            "us-east-1",
            "kms",
        )
        .unwrap();
        assert_eq!(p.access_key_id, AKID);
        // The verifier notices a changed body, and another secret signs differently.
        let tampered = verify(
            &RequestParts {
                method: "POST",
                path: "/",
                query: "",
                headers: &h,
                body: b"{}",
            },
            &creds(),
            now,
            "us-east-1",
            "kms",
        );
        assert_eq!(tampered.unwrap_err(), AuthError::SignatureMismatch);
        let mut other = kms_request();
        Signer::new(AKID, "another secret", None, "us-east-1", "kms")
            .sign("POST", "/", "", &mut other, body, now)
            .unwrap();
        assert_ne!(other["authorization"], h["authorization"]);
    }

    #[test]
    fn session_token_is_sent_signed_and_redacted() {
        let now = at(1_795_694_400);
        let mut h = kms_request();
        let want = aws_sign(
            "POST",
            "/",
            "",
            &h,
            b"{}",
            Some("FQoGZXIvYXdzEXAMPLE//token="),
            "eu-west-1",
            "kms",
            now,
        );
        let s = Signer::new(
            AKID,
            SECRET,
            Some("FQoGZXIvYXdzEXAMPLE//token=".into()),
            "eu-west-1",
            "kms",
        );
        s.sign("POST", "/", "", &mut h, b"{}", now).unwrap();
        assert_eq!(h["authorization"], want["authorization"]);
        assert_eq!(h["x-amz-security-token"], want["x-amz-security-token"]);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("EXAMPLE"),
            "{shown}"
        );
    }

    #[test]
    fn the_cached_signing_key_follows_the_day() {
        let s = Signer::new(AKID, SECRET, None, "us-east-1", "kms");
        for now in [at(1_795_694_400), at(1_795_694_400 + 86_400), at(0)] {
            let mut h = kms_request();
            s.sign("POST", "/", "", &mut h, b"{}", now).unwrap();
            let want = aws_sign("POST", "/", "", &h, b"{}", None, "us-east-1", "kms", now);
            assert_eq!(h["authorization"], want["authorization"], "{now}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// For any body, path, query, header value, region, time and session token within
        /// what `aws-sigv4` and this crate canonicalize alike (see `sigv4`'s round-trip
        /// property), the signature is `aws-sigv4`'s, and `verify` accepts it (without a
        /// token: a session credential needs the service's session store).
        #[test]
        fn signer_equals_aws_sigv4(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            path in "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,5}/?",
            query in "([A-Za-z0-9=&._~/-]|%[0-7][0-9A-Fa-f]){0,12}",
            extra in "[ -~]{0,30}",
            region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
            secs in 0i64..4_000_000_000,
            token in proptest::option::of("[A-Za-z0-9+/=]{1,40}"),
        ) {
            prop_assume!(!path.ends_with("/.") && !path.ends_with("/.."));
            let now = at(secs);
            let mut h = kms_request();
            h.insert("x-extra", HeaderValue::from_str(&extra).unwrap());
            h.insert("user-agent", HeaderValue::from_static("hsm-kms-test"));
            let want = aws_sign(
                "POST", &path, &query, &h, &body, token.as_deref(), &region, "kms", now,
            );
            Signer::new(AKID, SECRET, token.clone(), region.clone(), "kms")
                .sign("POST", &path, &query, &mut h, &body, now)
                .unwrap();
            prop_assert_eq!(&h["authorization"], &want["authorization"]);
            if token.is_none() {
                let p = verify(
                    &RequestParts { method: "POST", path: &path, query: &query, headers: &h, body: &body },
                    &creds(),
                    now,
                    &region,
                    "kms",
                );
                prop_assert_eq!(p.map(|p| p.access_key_id), Ok(AKID.to_string()));
            }
        }
    }
}
