//! Shared test fixtures: fresh SoftHSM2 tokens in a temporary folder per test.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hsm_kms::hsm::ceremony::SoPin;
use hsm_kms::hsm::softhsm::{self, LocalHsm};
use hsm_kms::hsm::{ClusterOptions, HsmCluster};
use std::time::Duration;

/// Two (or more) fresh tokens; the folder is removed when this is dropped. The SO PIN is
/// held in memory (as an operator would hold it), never in the tokens' folders.
pub(crate) struct Tokens {
    pub dir: tempfile::TempDir,
    pub hsms: Vec<LocalHsm>,
    pub so: SoPin,
}

/// Fresh tokens, all enrolled by the SO ceremony (as `setup-local` does).
pub(crate) fn tokens(names: &[&str]) -> Tokens {
    let t = unenrolled_tokens(names);
    softhsm::enroll_local(&t.hsms, &t.so).expect("enroll tokens");
    t
}

/// Fresh tokens that no ceremony has enrolled yet.
pub(crate) fn unenrolled_tokens(names: &[&str]) -> Tokens {
    let dir = tempfile::tempdir().expect("temp dir");
    let so = SoPin::random();
    let hsms = names
        .iter()
        .map(|n| softhsm::provision(&dir.path().join("hsm"), n, &so).expect("provision token"))
        .collect();
    Tokens { dir, hsms, so }
}

/// Short deadlines and probe period; each HSM in a host process of its own, as the
/// service runs by default (`hsm_isolation = "process"`).
pub(crate) fn fast_options() -> ClusterOptions {
    ClusterOptions {
        call_timeout: Duration::from_millis(1500),
        probe_interval: Duration::from_millis(200),
        host_program: Some(host_program()),
        ..ClusterOptions::default()
    }
}

/// The `hsm-kms` binary this test run built: each HSM's host process.
pub(crate) fn host_program() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_hsm-kms"))
}

/// [`fast_options`] with every HSM inside the service process (`hsm_isolation = "in-process"`).
pub(crate) fn in_process_options() -> ClusterOptions {
    ClusterOptions {
        host_program: None,
        ..fast_options()
    }
}

pub(crate) fn connect(t: &Tokens, opts: ClusterOptions) -> HsmCluster {
    HsmCluster::connect(
        t.hsms.iter().map(|h| h.node_config().unwrap()).collect(),
        opts,
    )
    .expect("cluster connects")
}

/// Poll `f` until it is true or `secs` pass.
pub(crate) async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

use hsm_kms::app::{self, Running, ServiceConfig};
use hsm_kms::auth::Credential;
use serde_json::{json, Value};

/// A service over fresh tokens, on 127.0.0.1 port 0.
pub(crate) struct Service {
    pub tokens: Tokens,
    pub running: Running,
    pub client: Client,
}

pub(crate) async fn service() -> Service {
    service_with(std::sync::Arc::new(hsm_kms::clock::SystemClock)).await
}

/// A service whose domain runs on `clock` (e.g. a `ManualClock`). SigV4 checks use the
/// same clock, so requests are signed with `clock.now()`.
pub(crate) async fn service_with(clock: std::sync::Arc<dyn hsm_kms::clock::Clock>) -> Service {
    let tokens = tokens(&["a", "b"]);
    let (running, client) = start_on(&tokens, clock).await;
    Service {
        tokens,
        running,
        client,
    }
}

/// Start the service over `tokens` and the metadata store in their folder (a first start,
/// or a restart after `Running::stop`), and a client signing with `clock`.
pub(crate) async fn start_on(
    tokens: &Tokens,
    clock: std::sync::Arc<dyn hsm_kms::clock::Clock>,
) -> (Running, Client) {
    start_tuned(tokens, clock, fast_options(), Duration::from_secs(3600)).await
}

/// [`start_on`] with these cluster options.
pub(crate) async fn start_on_with(
    tokens: &Tokens,
    clock: std::sync::Arc<dyn hsm_kms::clock::Clock>,
    cluster: ClusterOptions,
) -> (Running, Client) {
    start_tuned(tokens, clock, cluster, Duration::from_secs(3600)).await
}

/// [`start_on`] with these cluster options and background maintenance (HSM re-sync…) period.
pub(crate) async fn start_tuned(
    tokens: &Tokens,
    clock: std::sync::Arc<dyn hsm_kms::clock::Clock>,
    cluster: ClusterOptions,
    maintenance_interval: Duration,
) -> (Running, Client) {
    // Tests look events up faster than CloudTrail's two calls a second (AWS's default,
    // which tests/lookup_events.rs checks on a service of its own).
    let audit = app::AuditOptions {
        lookup_events_per_second: 1000,
        ..app::AuditOptions::in_dir(tokens.dir.path().join("audit"))
    };
    start_audit(tokens, clock, cluster, maintenance_interval, audit).await
}

/// [`start_tuned`] with these audit trail settings.
pub(crate) async fn start_audit(
    tokens: &Tokens,
    clock: std::sync::Arc<dyn hsm_kms::clock::Clock>,
    cluster: ClusterOptions,
    maintenance_interval: Duration,
    audit: app::AuditOptions,
) -> (Running, Client) {
    let running = app::start(ServiceConfig {
        nodes: tokens
            .hsms
            .iter()
            .map(|h| h.node_config().unwrap())
            .collect(),
        cluster,
        database: tokens.dir.path().join("metadata.sqlite"),
        listen: "127.0.0.1:0".into(),
        region: "us-east-1".into(),
        account_id: "111122223333".into(),
        max_body_bytes: 64 * 1024,
        clock: clock.clone(),
        maintenance_interval,
        audit,
        metrics_public: false,
    })
    .await
    .expect("service starts");
    // The configured account's root (after a restart the store also holds IAM users' and
    // other accounts' keys, in access key id order); a start whose every credential was
    // refused still gets a client (that fails to sign in).
    let root = "arn:aws:iam::111122223333:root";
    let cred = running
        .credentials
        .iter()
        .find(|c| c.principal_arn == root)
        .or(running.credentials.first())
        .cloned()
        .unwrap_or_else(|| Credential::new("AKIANOCREDENTIAL0000", "none", "111122223333", "none"));
    let mut client = Client::new(format!("http://{}", running.addr), cred);
    client.clock = Some(clock);
    (running, client)
}

/// A SigV4-signing KMS JSON client.
#[derive(Clone)]
pub(crate) struct Client {
    pub url: String,
    pub cred: Credential,
    /// Signing time source (default: the system clock).
    pub clock: Option<std::sync::Arc<dyn hsm_kms::clock::Clock>>,
    /// The session token of temporary credentials (sent, and signed, with every request).
    pub session_token: Option<String>,
    http: reqwest::Client,
}

/// A new account `id` on the running service, and a client signing as its root user (the
/// service honours the new credential at its next refresh, within a second).
#[allow(dead_code)]
pub(crate) async fn new_account(s: &Service, id: &str) -> Client {
    let cred = s.running.kms.create_account(id).await.unwrap();
    let c = s.client.with_credentials(cred, None);
    for _ in 0..40 {
        if c.call("ListKeys", json!({})).await.status == 200 {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("account {id} not served");
}

/// A new IAM user `name` of `root`'s account with these inline identity policies, and a
/// client signing as its new access key.
#[allow(dead_code)]
pub(crate) async fn new_user(root: &Client, name: &str, policies: &[&str]) -> Client {
    root.query_ok("iam", "CreateUser", &[("UserName", name)])
        .await;
    for (i, p) in policies.iter().enumerate() {
        let policy_name = format!("p{i}");
        root.query_ok(
            "iam",
            "PutUserPolicy",
            &[
                ("UserName", name),
                ("PolicyName", &policy_name),
                ("PolicyDocument", p),
            ],
        )
        .await;
    }
    let k = root
        .query_ok("iam", "CreateAccessKey", &[("UserName", name)])
        .await;
    let account = root.cred.account_id.clone();
    root.with_credentials(
        Credential::new(
            k.value("AccessKeyId"),
            k.value("SecretAccessKey"),
            account.clone(),
            format!("arn:aws:iam::{account}:user/{name}"),
        ),
        None,
    )
}

/// A Query protocol (IAM, STS) reply: status and raw XML.
pub(crate) struct QueryReply {
    pub status: u16,
    pub body: String,
}

impl QueryReply {
    /// The text of the first `<tag>` element, if any.
    pub(crate) fn get(&self, tag: &str) -> Option<String> {
        xml_values(&self.body, tag).into_iter().next()
    }

    /// The text of the first `<tag>`, required.
    pub(crate) fn value(&self, tag: &str) -> String {
        self.get(tag)
            .unwrap_or_else(|| panic!("no <{tag}> in {}", self.body))
    }

    /// The error `<Code>`, or "" for a success.
    pub(crate) fn code(&self) -> String {
        self.get("Code").unwrap_or_default()
    }
}

/// The texts of every `<tag>…</tag>` of `xml`, XML entities decoded.
pub(crate) fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
}

impl Reply {
    pub(crate) fn error_type(&self) -> &str {
        self.body["__type"].as_str().unwrap_or("")
    }
}

impl Client {
    pub(crate) fn new(url: String, cred: Credential) -> Client {
        Client {
            url,
            cred,
            clock: None,
            session_token: None,
            http: reqwest::Client::new(),
        }
    }

    /// A client of the same service with other credentials (and session token).
    pub(crate) fn with_credentials(
        &self,
        cred: Credential,
        session_token: Option<String>,
    ) -> Client {
        Client {
            url: self.url.clone(),
            cred,
            clock: self.clock.clone(),
            session_token,
            http: self.http.clone(),
        }
    }

    /// A Query protocol call for SigV4 service `service` (`iam`, `sts`): `Action`,
    /// `Version` (IAM's or STS's by service) and `params`, form-encoded as botocore does,
    /// signed with this client's credentials (and session token).
    pub(crate) async fn query(
        &self,
        service: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> QueryReply {
        let version = if service == "iam" {
            "2010-05-08"
        } else {
            "2011-06-15"
        };
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut body = format!("Action={action}&Version={version}");
        for (k, v) in params {
            body.push_str(&format!("&{}={}", enc(k), enc(v)));
        }
        let host = self.url.trim_start_matches("http://").to_string();
        let mut h = http::HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        let now = self
            .clock
            .as_ref()
            .map(|c| c.now())
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        sign_service(
            service,
            "POST",
            "/",
            &mut h,
            body.as_bytes(),
            &self.cred.access_key_id,
            &self.cred.secret_access_key,
            self.session_token.as_deref(),
            now,
        );
        let mut req = self.http.post(format!("{}/", self.url)).body(body);
        for (k, v) in h.iter() {
            if k != "host" {
                req = req.header(k.as_str(), v.to_str().unwrap());
            }
        }
        let r = req.send().await.expect("http");
        let status = r.status().as_u16();
        QueryReply {
            status,
            body: r.text().await.unwrap(),
        }
    }

    /// [`Client::query`] that must succeed.
    pub(crate) async fn query_ok(
        &self,
        service: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> QueryReply {
        let r = self.query(service, action, params).await;
        assert_eq!(r.status, 200, "{action} failed: {}", r.body);
        r
    }

    /// The headers of a KMS JSON request: host, content type, and `X-Amz-Target` if given.
    fn headers(&self, target: Option<&str>) -> http::HeaderMap {
        let host = self.url.trim_start_matches("http://").to_string();
        let mut h = http::HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        h.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        if let Some(t) = target {
            h.insert("x-amz-target", format!("TrentService.{t}").parse().unwrap());
        }
        h
    }

    /// POST `body` with `h` (the host header is reqwest's own) and read the reply.
    async fn post(&self, h: &http::HeaderMap, body: Vec<u8>) -> Reply {
        let req = self.http.post(format!("{}/", self.url)).body(body);
        self.exchange(req, h).await
    }

    /// Send `req` with the headers `h` (but `host`, which is reqwest's own) and read the
    /// reply.
    async fn exchange(&self, mut req: reqwest::RequestBuilder, h: &http::HeaderMap) -> Reply {
        for (k, v) in h.iter() {
            if k != "host" {
                req = req.header(k.as_str(), v.to_str().unwrap());
            }
        }
        let r = req.send().await.expect("http");
        let status = r.status().as_u16();
        let request_id = r
            .headers()
            .get("x-amzn-requestid")
            .map(|v| v.to_str().unwrap().to_string());
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = r.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            request_id,
            content_type,
        }
    }

    /// Sign (unless `sign` is false) and send raw bytes.
    pub(crate) async fn send_raw(
        &self,
        target: Option<&str>,
        body: Vec<u8>,
        time: time::OffsetDateTime,
        secret: &str,
        sign: bool,
    ) -> Reply {
        let mut h = self.headers(target);
        if sign {
            sign_service(
                "kms",
                "POST",
                "/",
                &mut h,
                &body,
                &self.cred.access_key_id,
                secret,
                self.session_token.as_deref(),
                time,
            );
        }
        self.post(&h, body).await
    }

    /// POST `body` for `target` with this `Content-Type` (`None`: no such header), signed
    /// (the content type included) unless `sign` is false.
    pub(crate) async fn send_with_content_type(
        &self,
        target: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        sign: bool,
    ) -> Reply {
        let mut h = self.headers(Some(target));
        h.remove("content-type");
        if let Some(ct) = content_type {
            h.insert("content-type", ct.parse().unwrap());
        }
        if sign {
            sign_kms(
                &mut h,
                &body,
                &self.cred.access_key_id,
                &self.cred.secret_access_key,
                time::OffsetDateTime::now_utc(),
            );
        }
        self.post(&h, body).await
    }

    /// `GET /health`, SigV4-signed with `secret` (for this client's access key) when given.
    pub(crate) async fn health(&self, secret: Option<&str>) -> Reply {
        let host = self.url.trim_start_matches("http://").to_string();
        let mut h = http::HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        if let Some(secret) = secret {
            sign_http(
                "GET",
                "/health",
                &mut h,
                b"",
                &self.cred.access_key_id,
                secret,
                time::OffsetDateTime::now_utc(),
            );
        }
        let req = self.http.get(format!("{}/health", self.url));
        self.exchange(req, &h).await
    }

    /// `GET path` as text, SigV4-signed with this client's credential when `signed`:
    /// (status, body).
    pub(crate) async fn get_text(&self, path: &str, signed: bool) -> (u16, String) {
        let host = self.url.trim_start_matches("http://").to_string();
        let mut h = http::HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        if signed {
            sign_http(
                "GET",
                path,
                &mut h,
                b"",
                &self.cred.access_key_id,
                &self.cred.secret_access_key,
                time::OffsetDateTime::now_utc(),
            );
        }
        let mut req = self.http.get(format!("{}{path}", self.url));
        for (k, v) in h.iter() {
            if k != "host" {
                req = req.header(k.as_str(), v.to_str().unwrap());
            }
        }
        let r = req.send().await.expect("http");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    /// CreateKey with these parameters; the new key's id.
    pub(crate) async fn create_key(&self, params: Value) -> String {
        self.ok("CreateKey", params).await["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) async fn call(&self, op: &str, body: Value) -> Reply {
        self.send_raw(
            Some(op),
            body.to_string().into_bytes(),
            self.clock
                .as_ref()
                .map(|c| c.now())
                .unwrap_or_else(time::OffsetDateTime::now_utc),
            &self.cred.secret_access_key.clone(),
            true,
        )
        .await
    }

    /// The re-target attack: sign a request as `signed_as` (or with no `X-Amz-Target` at
    /// all), then send it with `X-Amz-Target: TrentService.<sent_as>`.
    pub(crate) async fn send_retargeted(
        &self,
        signed_as: Option<&str>,
        sent_as: &str,
        body: Value,
    ) -> Reply {
        let body = body.to_string().into_bytes();
        let mut h = self.headers(signed_as);
        sign_kms(
            &mut h,
            &body,
            &self.cred.access_key_id,
            &self.cred.secret_access_key,
            time::OffsetDateTime::now_utc(),
        );
        h.insert(
            "x-amz-target",
            format!("TrentService.{sent_as}").parse().unwrap(),
        );
        self.post(&h, body).await
    }

    /// A CloudTrail JSON 1.1 call (`X-Amz-Target:
    /// com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.<op>`), signed for the SigV4
    /// service `cloudtrail` with this client's credentials (and session token).
    #[allow(dead_code)]
    pub(crate) async fn cloudtrail(&self, op: &str, body: Value) -> Reply {
        let body = body.to_string().into_bytes();
        let mut h = self.headers(None);
        h.insert(
            "x-amz-target",
            format!("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.{op}")
                .parse()
                .unwrap(),
        );
        sign_service(
            "cloudtrail",
            "POST",
            "/",
            &mut h,
            &body,
            &self.cred.access_key_id,
            &self.cred.secret_access_key,
            self.session_token.as_deref(),
            time::OffsetDateTime::now_utc(),
        );
        self.post(&h, body).await
    }

    /// Call and require HTTP 200.
    pub(crate) async fn ok(&self, op: &str, body: Value) -> Value {
        let r = self.call(op, body).await;
        assert_eq!(r.status, 200, "{op} failed: {}", r.body);
        r.body
    }
}

/// Signs `POST /` for KMS in us-east-1 with AWS's own SigV4 signer (`aws-sigv4`, what the AWS
/// SDK for Rust uses), as botocore would: every header in `headers` (host, content-type,
/// x-amz-target) plus the `x-amz-date` it adds is signed; `authorization` is added.
fn sign_kms(
    headers: &mut http::HeaderMap,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    time: time::OffsetDateTime,
) {
    sign_http("POST", "/", headers, body, access_key_id, secret, time);
}

/// Signs `method path_and_query` for KMS in us-east-1 like [`sign_kms`].
fn sign_http(
    method: &str,
    path_and_query: &str,
    headers: &mut http::HeaderMap,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    time: time::OffsetDateTime,
) {
    sign_service(
        "kms",
        method,
        path_and_query,
        headers,
        body,
        access_key_id,
        secret,
        None,
        time,
    );
}

/// Signs `method path_and_query` for the SigV4 service `service` in us-east-1 with AWS's
/// own signer; a session token is added as `x-amz-security-token` (and signed), as the
/// SDKs do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sign_service(
    service: &str,
    method: &str,
    path_and_query: &str,
    headers: &mut http::HeaderMap,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    session_token: Option<&str>,
    time: time::OffsetDateTime,
) {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        secret,
        session_token.map(str::to_string),
        None,
        "hsm-kms-tests",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(time.into())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let host = headers["host"].to_str().unwrap().to_owned();
    let request = SignableRequest::new(
        method,
        format!("http://{host}{path_and_query}"),
        headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
        SignableBody::Bytes(body),
    )
    .expect("signable request");
    let (instructions, _signature) = sign(request, &params).expect("sign").into_parts();
    for h in instructions.into_parts().0 {
        headers.insert(h.name(), h.value().parse().unwrap());
    }
}

pub(crate) fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub(crate) fn unb64(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

pub(crate) mod real_binary {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};

    pub(crate) fn setup(state: &Path) {
        let st = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
            .args(["setup-local", "--state-dir"])
            .arg(state)
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub(crate) fn start(state: &Path) -> (Child, String) {
        let (child, url, _) = start_with_env(state, &[], false);
        (child, url)
    }

    /// [`start`] with these extra environment variables; with `keep_stderr`, the lines the
    /// server logs are collected (else discarded).
    pub(crate) fn start_with_env(
        state: &Path,
        env: &[(&str, &str)],
        keep_stderr: bool,
    ) -> (Child, String, Arc<Mutex<Vec<String>>>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
        cmd.args(["serve", "--config"])
            .arg(state.join("config.toml"))
            .env("KMS_LISTEN", "127.0.0.1:0")
            .env("KMS_STATE_DIR", state)
            .stdout(Stdio::piped())
            .stderr(if keep_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let logged = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let logged = logged.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    logged.lock().unwrap().push(l);
                }
            });
        }
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let addr = loop {
            let l = lines.next().expect("server printed nothing").unwrap();
            // Standard output is a pipe here, not a terminal: no secret may reach it.
            assert!(
                !l.contains("AWS_SECRET_ACCESS_KEY"),
                "the first start printed the secret to a pipe: {l}"
            );
            if let Some(a) = l.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        (child, format!("http://{addr}"), logged)
    }

    pub(crate) fn credential(state: &Path) -> hsm_kms::auth::Credential {
        let text = std::fs::read_to_string(state.join("credentials.env")).unwrap();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap()
                .to_string()
        };
        hsm_kms::auth::Credential::new(
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
            "111122223333",
            "arn",
        )
    }

    pub(crate) fn stop(child: &mut Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// Kills the server if the test ends (or panics) while it runs.
    pub(crate) struct Guard(pub Child);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

/// A token opened the way an insider with the user PIN would: a module instance of this
/// process's own (the service must be stopped: its instance is finalized), a read-write
/// session logged in as the user. Finalized on drop.
pub(crate) struct UserToken {
    pub ctx: cryptoki::context::Pkcs11,
    session: Option<cryptoki::session::Session>,
}

impl UserToken {
    pub(crate) fn open(hsm: &LocalHsm) -> UserToken {
        // Under the library's load lock: other tests of this binary load modules (with
        // their own SOFTHSM2_CONF) at the same time.
        let ctx = softhsm::open_module(hsm).expect("the token's module loads");
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == hsm.label)
            .unwrap();
        let s = ctx.open_rw_session(slot).unwrap();
        let pin = std::fs::read_to_string(&hsm.pin_file).unwrap();
        s.login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::new(pin.trim().into())),
        )
        .unwrap();
        UserToken {
            ctx,
            session: Some(s),
        }
    }

    pub(crate) fn session(&self) -> &cryptoki::session::Session {
        self.session.as_ref().unwrap()
    }
}

impl Drop for UserToken {
    fn drop(&mut self) {
        self.session.take();
        let _ = self.ctx.clone().finalize();
    }
}

/// The audit trail in `dir`: its text and its CloudTrail records (the `event` of each
/// record line; digest lines give `null`), in order.
pub(crate) fn trail(dir: &std::path::Path) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut events = Vec::new();
    for (_, p) in hsm_kms::audit::trail_files(dir).unwrap() {
        let t = hsm_kms::audit::records_text(&p).unwrap();
        for l in t.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            events.push(v["event"].clone());
        }
        text.push_str(&t);
    }
    (text, events)
}

/// A tmpfs of `size` mounted on `at`, unmounted when dropped.
pub(crate) struct SmallDisk(pub std::path::PathBuf);

impl SmallDisk {
    /// `None` where mounting is not allowed (not root, no CAP_SYS_ADMIN).
    pub(crate) fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    /// Unmount, retrying while a stopped service's last handles close; detach it lazily
    /// if they never do, so that no mount outlives the test.
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        for _ in 0..30 {
            if umount(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        umount(true);
    }
}

/// Fill the file system of `dir` with one file until a write fails.
pub(crate) fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[1u8]).is_ok() {}
    path
}

/// Call CreateKey with large descriptions (8 KB, recorded and stored) until an answer is
/// not 200 (a disk that fills up), which must be a refusal (500 `KMSInternalException`):
/// how many were answered before it.
pub(crate) async fn create_keys_until_refused(c: &Client) -> usize {
    let description = "d".repeat(8000);
    let mut answered = 0;
    loop {
        let r = c
            .call("CreateKey", json!({"Description": description}))
            .await;
        if r.status != 200 {
            assert_eq!(
                (r.status, r.error_type()),
                (500, "KMSInternalException"),
                "{}",
                r.body
            );
            return answered;
        }
        answered += 1;
        assert!(answered < 500, "CreateKey never refused on a full disk");
    }
}

/// Four messages (base64) and their `Encrypt` blobs under `key`.
pub(crate) async fn encrypted_messages(c: &Client, key: &str) -> Vec<(String, Value)> {
    let mut blobs = Vec::new();
    for i in 0..4 {
        let msg = b64(format!("message {i}").as_bytes());
        let r = c
            .ok("Encrypt", json!({"KeyId": key, "Plaintext": msg}))
            .await;
        blobs.push((msg, r["CiphertextBlob"].clone()));
    }
    blobs
}

/// Once the first HSM serves (a new host process after a previous hang), make it hang
/// (test hook `inject_stall`, jobs and probes, 4 s).
#[cfg(feature = "test-hooks")]
pub(crate) async fn hang_first_hsm(cl: &HsmCluster) {
    assert!(
        eventually(20, || cl.health()[0].state
            == hsm_kms::hsm::NodeState::Healthy)
        .await,
        "{:?}",
        cl.health()
    );
    let first = cl.health()[0].name.clone();
    cl.inject_stall(&first, Duration::from_secs(4)).unwrap();
}

/// [`fast_options`] for tests that hang an HSM while keys are made: a hung call or key
/// generation is cut off soon (300 ms, 1.5 s).
pub(crate) fn hang_options() -> ClusterOptions {
    let mut opts = fast_options();
    opts.call_timeout = Duration::from_millis(300);
    opts.keygen_timeout = Duration::from_millis(1500);
    opts
}

/// CreateKey with `params` while the first HSM hangs ([`hang_first_hsm`]). Asserts HTTP
/// 200; returns the key id.
#[cfg(feature = "test-hooks")]
pub(crate) async fn create_key_while_first_hsm_hangs(
    cl: &HsmCluster,
    c: &Client,
    params: Value,
) -> String {
    hang_first_hsm(cl).await;
    let r = c.call("CreateKey", params.clone()).await;
    assert_eq!(r.status, 200, "{params}: {}", r.body);
    r.body["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}
