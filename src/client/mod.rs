//! The client side of hsm-kms: what a user of the service runs on their own machine. It
//! talks to any endpoint of the KMS JSON 1.1 API over plain HTTP/1.1 with keep-alive and signs
//! every request itself with [`crate::auth::Signer`] (the verifier's own canonicalization).
//!
//! * [`Client`]: the endpoint, the region and the credential, read the way the aws CLI reads
//!   them ([`ClientOptions::resolve`]); [`Client::connect`] opens one keep-alive connection.
//! * [`Connection`]: one HTTP/1.1 connection (hyper's client connection over a tokio TCP
//!   stream) on which calls go one after another; [`Connection::call`] turns a non-200 answer
//!   into [`ClientError::Kms`] with AWS's `__type` and message.
//! * [`loadgen`]: `hsm-kms bench`, the load generator `scripts/bench.sh` measures the service
//!   with.
//! * [`envelope`]: `hsm-kms envelope encrypt|decrypt`, envelope encryption of large files
//!   under a data key from `GenerateDataKey`.
//!
//! Nothing here depends on the service's internals: it is the wire protocol only, so it
//! works against any KMS-compatible endpoint reachable over `http://`.

pub mod envelope;
pub mod loadgen;

use crate::auth::Signer;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The largest answer body read (a KMS answer is a few KiB at most).
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// `Content-Type` of every KMS JSON 1.1 request.
const JSON_11: &str = "application/x-amz-json-1.1";

/// Everything that can go wrong on the client side: one enum for the layer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A missing or unusable setting (endpoint, credential, argument).
    #[error("{0}")]
    Config(String),
    /// The connection failed (refused, reset, closed early, not HTTP).
    #[error("{endpoint}: {message}")]
    Transport {
        /// The endpoint URL.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// No answer within the timeout.
    #[error("{operation}: no answer within {secs} s")]
    Timeout {
        /// The KMS operation called.
        operation: String,
        /// The timeout, seconds.
        secs: u64,
    },
    /// The service answered with an error (any status but 200).
    #[error("{operation}: {code}: {message} (HTTP {status})")]
    Kms {
        /// The KMS operation called.
        operation: String,
        /// HTTP status.
        status: u16,
        /// AWS's `__type` (the part after any `#`), e.g. `NotFoundException`.
        code: String,
        /// The message of the answer.
        message: String,
    },
    /// A 200 answer that is not what the operation returns.
    #[error("{operation}: unexpected answer: {message}")]
    Protocol {
        /// The KMS operation called.
        operation: String,
        /// What was wrong with it.
        message: String,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An envelope file that cannot be parsed (see [`envelope::format`]).
    #[error("not a valid envelope file: {0}")]
    Format(String),
    /// An envelope chunk whose tag does not verify: the file was altered, truncated,
    /// extended, reordered, or belongs to another header.
    #[error(
        "chunk {chunk} failed authentication: the file was altered, truncated, extended or \
         reordered; nothing was written to the output"
    )]
    Authentication {
        /// The chunk's index (from 0).
        chunk: u64,
    },
    /// The encryption context asked for is not the one the file was encrypted with.
    #[error("{0}")]
    ContextMismatch(String),
    /// Stopped by the user (Ctrl-C); nothing was written to the output.
    #[error("interrupted; nothing was written to the output")]
    Interrupted,
}

impl ClientError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An `http://host:port[/path]` endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    authority: HeaderValue,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Parses `url`; only `http://` (this client speaks no TLS: put the service behind a
    /// TLS-terminating proxy and run the client next to it, or use the aws CLI).
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |why: &str| ClientError::Config(format!("endpoint URL {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported by this client (plain http://host:port only)",
                ))
            }
            _ => return Err(bad("must start with http://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = match uri.path() {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        Ok(Endpoint {
            url: url.to_string(),
            authority: HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?,
            host,
            port: authority.port_u16().unwrap_or(80),
            path,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Where a [`Client`]'s settings come from. Each `None` is looked up, in order, in the
/// `credentials_file` (lines `export NAME=value`, as `hsm-kms serve` writes
/// `var/credentials.env`) and in the environment:
///
/// * endpoint: `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, `KMS_ENDPOINT`;
/// * region: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`;
/// * credential: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary
///   credentials, `AWS_SESSION_TOKEN`.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The endpoint URL (`--endpoint-url`).
    pub endpoint_url: Option<String>,
    /// The region signatures are scoped to (`--region`).
    pub region: Option<String>,
    /// A file of `export NAME=value` lines read before the environment.
    pub credentials_file: Option<PathBuf>,
    /// How long one call may take (default 30 s).
    pub timeout: Option<Duration>,
}

impl ClientOptions {
    /// The client these options name, reading the process environment.
    pub fn resolve(&self) -> Result<Client, ClientError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`ClientOptions::resolve`] with `env` in place of the process environment.
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Client, ClientError> {
        let file = match &self.credentials_file {
            Some(p) => parse_env_file(&std::fs::read_to_string(p).map_err(ClientError::io(p))?),
            None => Vec::new(),
        };
        let var = |name: &str| {
            file.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| env(name))
                .filter(|v| !v.is_empty())
        };
        let endpoint = self
            .endpoint_url
            .clone()
            .or_else(|| var("AWS_ENDPOINT_URL_KMS"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| var("KMS_ENDPOINT"))
            .ok_or_else(|| {
                ClientError::Config(
                    "no endpoint: pass --endpoint-url or set KMS_ENDPOINT (`source \
                     var/credentials.env`)"
                        .into(),
                )
            })?;
        let region = self
            .region
            .clone()
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let (Some(akid), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(ClientError::Config(
                "no credential: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (`source \
                 var/credentials.env`) or pass --credentials-file"
                    .into(),
            ));
        };
        let signer = Signer::new(akid, secret, var("AWS_SESSION_TOKEN"), region, "kms");
        Ok(Client::new(
            Endpoint::parse(&endpoint)?,
            signer,
            self.timeout.unwrap_or(Duration::from_secs(30)),
        ))
    }
}

/// `NAME=value` pairs of a shell file of `export NAME=value` lines (quotes around the value
/// removed; comments, blank and other lines ignored).
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// An endpoint, a region and a credential: what every call needs.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    signer: Signer,
    timeout: Duration,
}

/// An answer as received.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// AWS's error type (`__type` after any `#`) and message of an error answer; the status
    /// when the body is not an AWS error.
    pub fn error(&self) -> (String, String) {
        #[derive(serde::Deserialize)]
        struct AwsError {
            #[serde(rename = "__type")]
            kind: Option<String>,
            #[serde(alias = "Message")]
            message: Option<String>,
        }
        match serde_json::from_slice::<AwsError>(&self.body) {
            Ok(AwsError {
                kind: Some(k),
                message,
            }) => (
                k.rsplit('#').next().unwrap_or(&k).to_string(),
                message.unwrap_or_default(),
            ),
            _ => (
                format!("HTTP{}", self.status),
                String::from_utf8_lossy(self.body.get(..200).unwrap_or(&self.body)).into_owned(),
            ),
        }
    }
}

impl Client {
    /// A client of `endpoint` signing with `signer`; each call may take `timeout`.
    pub fn new(endpoint: Endpoint, signer: Signer, timeout: Duration) -> Client {
        Client {
            endpoint,
            signer,
            timeout,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens one keep-alive HTTP/1.1 connection.
    pub async fn connect(self: &Arc<Self>) -> Result<Connection, ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
            endpoint: self.endpoint.url.clone(),
            message: e.to_string(),
        };
        let ep = &self.endpoint;
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| transport(&"connect timed out"))?
        .map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| transport(&e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            client: self.clone(),
            sender,
            driver,
        })
    }

    /// `X-Amz-Target` of KMS operation `op` (e.g. `Encrypt`).
    pub fn target(op: &str) -> Result<HeaderValue, ClientError> {
        HeaderValue::from_str(&format!("TrentService.{op}"))
            .map_err(|_| ClientError::Config(format!("not an operation name: {op:?}")))
    }
}

/// One keep-alive HTTP/1.1 connection; calls on it go one after another.
#[derive(Debug)]
pub struct Connection {
    client: Arc<Client>,
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Sends `body` as the KMS call `target` (see [`Client::target`]), signed now, and reads
    /// the answer whatever its status. Errors are the transport's and the timeout's only;
    /// after one, open a new connection.
    pub async fn send(&mut self, target: &HeaderValue, body: Bytes) -> Result<Reply, ClientError> {
        let c = &self.client;
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
            endpoint: c.endpoint.url.clone(),
            message: e.to_string(),
        };
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(HOST, c.endpoint.authority.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_11));
        headers.insert("x-amz-target", target.clone());
        c.signer
            .sign(
                "POST",
                &c.endpoint.path,
                "",
                &mut headers,
                &body,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|_| {
                ClientError::Config(
                    "the access key id or session token cannot be sent in a header".into(),
                )
            })?;
        let mut req = Request::post(c.endpoint.path.as_str())
            .body(Full::new(body))
            .map_err(|e| transport(&e))?;
        *req.headers_mut() = headers;
        let exchange = async {
            self.sender.ready().await.map_err(|e| transport(&e))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| transport(&e))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| transport(&*e))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        match tokio::time::timeout(c.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                operation: String::from_utf8_lossy(target.as_bytes())
                    .trim_start_matches("TrentService.")
                    .to_string(),
                secs: c.timeout.as_secs(),
            }),
        }
    }

    /// Calls KMS operation `op` with the JSON `request`; the body of a 200 answer, else
    /// [`ClientError::Kms`].
    pub async fn call(
        &mut self,
        op: &str,
        request: &serde_json::Value,
    ) -> Result<Bytes, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol {
            operation: op.to_string(),
            message: e.to_string(),
        })?;
        let r = self.send(&Client::target(op)?, Bytes::from(body)).await?;
        if r.status == 200 {
            return Ok(r.body);
        }
        let (code, message) = r.error();
        Err(ClientError::Kms {
            operation: op.to_string(),
            status: r.status,
            code,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4599").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4599, "/")
        );
        assert_eq!(e.authority, "127.0.0.1:4599");
        let e = Endpoint::parse("http://[::1]:80/kms/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 80, "/kms/")
        );
        let e = Endpoint::parse("http://kms.internal").unwrap();
        assert_eq!(
            (e.port, e.authority.to_str().unwrap()),
            (80, "kms.internal")
        );
        for bad in [
            "https://kms.us-east-1.amazonaws.com",
            "127.0.0.1:4599",
            "http://u:p@h:1/",
            "http://h:1/?a=b",
            "",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(ClientError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_come_from_flags_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials.env");
        std::fs::write(
            &f,
            "export AWS_ACCESS_KEY_ID=AKIAFILE\nexport AWS_SECRET_ACCESS_KEY='s3cr=t'\n\
             # comment\nexport KMS_ENDPOINT=http://127.0.0.1:1\n",
        )
        .unwrap();
        let env = |n: &str| match n {
            "AWS_ACCESS_KEY_ID" => Some("AKIAENV".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_string()),
            "AWS_DEFAULT_REGION" => Some("eu-west-3".to_string()),
            "KMS_ENDPOINT" => Some("http://127.0.0.1:2".to_string()),
            _ => None,
        };
        let c = ClientOptions::default().resolve_with(env).unwrap();
        assert_eq!(c.signer.access_key_id(), "AKIAENV");
        assert_eq!(c.signer.region(), "eu-west-3");
        assert_eq!(c.endpoint.port, 2);
        let c = ClientOptions {
            credentials_file: Some(f.clone()),
            ..ClientOptions::default()
        }
        .resolve_with(env)
        .unwrap();
        assert_eq!(c.signer.access_key_id(), "AKIAFILE");
        assert_eq!(c.endpoint.port, 1);
        let c = ClientOptions {
            credentials_file: Some(f),
            endpoint_url: Some("http://127.0.0.1:3".into()),
            region: Some("ap-south-1".into()),
            ..ClientOptions::default()
        }
        .resolve_with(env)
        .unwrap();
        assert_eq!((c.endpoint.port, c.signer.region()), (3, "ap-south-1"));
        assert_eq!(
            parse_env_file("export A='x=1'\nB=\"y\"\nnot a line\n"),
            vec![("A".into(), "x=1".into()), ("B".into(), "y".into())]
        );
        let none = ClientOptions::default().resolve_with(|_| None).unwrap_err();
        assert!(none.to_string().contains("no endpoint"), "{none}");
        let none = ClientOptions {
            endpoint_url: Some("http://h:1".into()),
            ..ClientOptions::default()
        }
        .resolve_with(|_| None)
        .unwrap_err();
        assert!(none.to_string().contains("no credential"), "{none}");
    }

    #[test]
    fn error_replies() {
        let r = Reply {
            status: 400,
            body: Bytes::from_static(
                br#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"no"}"#,
            ),
        };
        assert_eq!(r.error(), ("InvalidSignatureException".into(), "no".into()));
        let r = Reply {
            status: 502,
            body: Bytes::from_static(b"bad gateway"),
        };
        assert_eq!(r.error(), ("HTTP502".into(), "bad gateway".into()));
    }
}
