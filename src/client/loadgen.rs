//! `hsm-kms bench`: the load generator `scripts/bench.sh` measures the service with.
//!
//! It keeps `c` HTTP/1.1 keep-alive connections, one task each, sending one KMS call after
//! another on its connection, every request signed afresh with SigV4 ([`crate::auth::Signer`]:
//! a new `X-Amz-Date` and signature each time, as a real SDK client does; the signing key is
//! derived once per day). A run is a warm-up (its answers are not measured) followed by the
//! measured window; requests that start inside the window are measured, including the last
//! ones that end after it.
//!
//! * **req/s** counts answers with status 200 only, divided by the time from the start of
//!   the window until the last measured answer;
//! * **p50 / p99** are the nearest-rank percentiles of those answers' latencies (from
//!   before signing to the last byte of the answer);
//! * **errors**: every other outcome — any status but 200 (by status and AWS `__type`), a
//!   connection that fails (then reopened), a timeout — counted per kind with the first
//!   message seen, in the window and in the warm-up alike. They are never folded into the
//!   figures above, and `hsm-kms bench` exits with status 1 when there was any.
//!
//! [`prepare`] makes what a workload needs once (a key of the right spec when none is
//! given, the ciphertext `Decrypt` replays) and the request body every call sends;
//! [`run`] measures one concurrency; [`cleanup`] schedules the deletion of a key
//! [`prepare`] created.

use super::{Client, ClientError, Connection};
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The KMS operations the load generator can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `Encrypt` of `size` bytes.
    Encrypt,
    /// `Decrypt` of the ciphertext of `size` bytes (made once by `Encrypt`).
    Decrypt,
    /// `GenerateDataKey` with `KeySpec` `AES_256`.
    GenerateDataKey,
    /// `Sign` with the workload's signing algorithm and message type.
    Sign,
    /// `GenerateMac` of `size` bytes with the workload's MAC algorithm.
    GenerateMac,
}

impl Operation {
    /// Every operation, in the order `--help` lists them.
    pub const ALL: [Operation; 5] = [
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::GenerateDataKey,
        Operation::Sign,
        Operation::GenerateMac,
    ];

    /// The KMS operation name (`X-Amz-Target: TrentService.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Encrypt => "Encrypt",
            Operation::Decrypt => "Decrypt",
            Operation::GenerateDataKey => "GenerateDataKey",
            Operation::Sign => "Sign",
            Operation::GenerateMac => "GenerateMac",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Operation::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Operation::ALL.iter().map(|o| o.name()).collect();
                format!("unknown operation {s:?} (one of {})", names.join(", "))
            })
    }
}

/// What every request of a run does.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The operation.
    pub operation: Operation,
    /// The key (id, ARN or alias); `None`: [`prepare`] creates one of the right spec.
    pub key_id: Option<String>,
    /// Plaintext bytes (`Encrypt`, `Decrypt`), message bytes (`Sign` with `RAW`,
    /// `GenerateMac`).
    pub size: usize,
    /// `EncryptionContext` of `Encrypt`, `Decrypt` and `GenerateDataKey`.
    pub context: Vec<(String, String)>,
    /// `SigningAlgorithm` of `Sign`, e.g. `ECDSA_SHA_256`, `RSASSA_PSS_SHA_256`.
    pub signing_algorithm: String,
    /// `MessageType` of `Sign`: `RAW` (a `size`-byte message) or `DIGEST` (a digest of the
    /// algorithm's hash length).
    pub message_type: String,
    /// `MacAlgorithm` of `GenerateMac`, e.g. `HMAC_SHA_256`.
    pub mac_algorithm: String,
    /// `KeySpec` of the key [`prepare`] creates (default: the one the algorithm implies).
    pub key_spec: Option<String>,
}

impl Workload {
    /// A workload of `operation` with the defaults: 32 bytes, no context, `ECDSA_SHA_256`
    /// on `RAW` messages, `HMAC_SHA_256`, a key created for the run.
    pub fn new(operation: Operation) -> Workload {
        Workload {
            operation,
            key_id: None,
            size: 32,
            context: Vec::new(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            message_type: "RAW".into(),
            mac_algorithm: "HMAC_SHA_256".into(),
            key_spec: None,
        }
    }

    /// The `KeySpec` and `KeyUsage` of a key for this workload.
    fn key_for(&self) -> Result<(String, &'static str), ClientError> {
        let implied = match self.operation {
            Operation::Encrypt | Operation::Decrypt | Operation::GenerateDataKey => {
                return Ok((
                    self.key_spec
                        .clone()
                        .unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
                    "ENCRYPT_DECRYPT",
                ))
            }
            Operation::Sign => match self.signing_algorithm.as_str() {
                "ECDSA_SHA_256" => Some("ECC_NIST_P256"),
                "ECDSA_SHA_384" => Some("ECC_NIST_P384"),
                "ECDSA_SHA_512" => Some("ECC_NIST_P521"),
                "ED25519_SHA_512" | "ED25519_PH_SHA_512" => Some("ECC_NIST_EDWARDS25519"),
                a if a.starts_with("RSASSA_") => Some("RSA_2048"),
                _ => None,
            },
            Operation::GenerateMac => match self.mac_algorithm.as_str() {
                "HMAC_SHA_224" => Some("HMAC_224"),
                "HMAC_SHA_256" => Some("HMAC_256"),
                "HMAC_SHA_384" => Some("HMAC_384"),
                "HMAC_SHA_512" => Some("HMAC_512"),
                _ => None,
            },
        };
        let usage = match self.operation {
            Operation::Sign => "SIGN_VERIFY",
            _ => "GENERATE_VERIFY_MAC",
        };
        match (&self.key_spec, implied) {
            (Some(s), _) => Ok((s.clone(), usage)),
            (None, Some(s)) => Ok((s.to_string(), usage)),
            (None, None) => Err(ClientError::Config(format!(
                "no key spec known for {}: pass --key-spec or --key-id",
                self.label()
            ))),
        }
    }

    /// A short name of the workload for tables, e.g. `Encrypt 32 B`,
    /// `Sign ECDSA_SHA_256 DIGEST`.
    pub fn label(&self) -> String {
        match self.operation {
            Operation::Encrypt | Operation::Decrypt => {
                format!("{} {} B", self.operation.name(), self.size)
            }
            Operation::GenerateDataKey => "GenerateDataKey AES_256".into(),
            Operation::Sign if self.message_type == "DIGEST" => {
                format!("Sign {} DIGEST", self.signing_algorithm)
            }
            Operation::Sign => format!("Sign {} RAW {} B", self.signing_algorithm, self.size),
            Operation::GenerateMac => format!("GenerateMac {} {} B", self.mac_algorithm, self.size),
        }
    }

    /// The message `Sign` sends: a digest of the algorithm's hash length for `DIGEST`.
    fn sign_message(&self) -> Vec<u8> {
        let len = match self.message_type.as_str() {
            "DIGEST" if self.signing_algorithm.ends_with("256") => 32,
            "DIGEST" if self.signing_algorithm.ends_with("384") => 48,
            "DIGEST" if self.signing_algorithm.ends_with("512") => 64,
            _ => self.size,
        };
        vec![0x66; len]
    }
}

/// A workload made ready: its key and the body every request sends.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The workload's name for tables.
    pub label: String,
    /// The operation.
    pub operation: Operation,
    /// The key every request names.
    pub key_id: String,
    /// Whether [`prepare`] created the key (then [`cleanup`] schedules its deletion).
    pub created: bool,
    target: HeaderValue,
    body: Bytes,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn context_json(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// A string member of a 200 answer.
fn member(op: &str, body: &[u8], path: &[&str]) -> Result<String, ClientError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ClientError::Protocol {
        operation: op.to_string(),
        message: e.to_string(),
    })?;
    path.iter()
        .try_fold(&v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol {
            operation: op.to_string(),
            message: format!("no {}", path.join(".")),
        })
}

/// Makes `workload` ready on `client`: creates its key when none is named (a
/// `CreateKey` with the spec the operation or algorithm implies), makes the ciphertext
/// `Decrypt` replays, and builds the request body. Setup calls must succeed.
pub async fn prepare(client: &Arc<Client>, workload: &Workload) -> Result<Prepared, ClientError> {
    let mut conn = client.connect().await?;
    let (key_id, created) = match &workload.key_id {
        Some(k) => (k.clone(), false),
        None => {
            let (spec, usage) = workload.key_for()?;
            let body = conn
                .call(
                    "CreateKey",
                    &json!({
                        "KeySpec": spec,
                        "KeyUsage": usage,
                        "Description": format!("hsm-kms bench: {}", workload.label()),
                    }),
                )
                .await?;
            (member("CreateKey", &body, &["KeyMetadata", "KeyId"])?, true)
        }
    };
    let mut req = Map::new();
    req.insert("KeyId".into(), Value::String(key_id.clone()));
    let plaintext = || Value::String(b64(&vec![0x5A; workload.size]));
    match workload.operation {
        Operation::Encrypt => {
            req.insert("Plaintext".into(), plaintext());
        }
        Operation::Decrypt => {
            let mut enc = req.clone();
            enc.insert("Plaintext".into(), plaintext());
            if !workload.context.is_empty() {
                enc.insert("EncryptionContext".into(), context_json(&workload.context));
            }
            let body = conn.call("Encrypt", &Value::Object(enc)).await?;
            let blob = member("Encrypt", &body, &["CiphertextBlob"])?;
            req.insert("CiphertextBlob".into(), Value::String(blob));
        }
        Operation::GenerateDataKey => {
            req.insert("KeySpec".into(), Value::String("AES_256".into()));
        }
        Operation::Sign => {
            req.insert(
                "Message".into(),
                Value::String(b64(&workload.sign_message())),
            );
            req.insert(
                "MessageType".into(),
                Value::String(workload.message_type.clone()),
            );
            req.insert(
                "SigningAlgorithm".into(),
                Value::String(workload.signing_algorithm.clone()),
            );
        }
        Operation::GenerateMac => {
            req.insert("Message".into(), plaintext());
            req.insert(
                "MacAlgorithm".into(),
                Value::String(workload.mac_algorithm.clone()),
            );
        }
    }
    if !workload.context.is_empty()
        && matches!(
            workload.operation,
            Operation::Encrypt | Operation::Decrypt | Operation::GenerateDataKey
        )
    {
        req.insert("EncryptionContext".into(), context_json(&workload.context));
    }
    let body = serde_json::to_vec(&Value::Object(req)).map_err(|e| ClientError::Protocol {
        operation: workload.operation.name().into(),
        message: e.to_string(),
    })?;
    Ok(Prepared {
        label: workload.label(),
        operation: workload.operation,
        key_id,
        created,
        target: Client::target(workload.operation.name())?,
        body: Bytes::from(body),
    })
}

/// Schedules the deletion (7 days, the shortest window) of a key [`prepare`] created.
pub async fn cleanup(client: &Arc<Client>, prepared: &Prepared) -> Result<(), ClientError> {
    if !prepared.created {
        return Ok(());
    }
    client
        .connect()
        .await?
        .call(
            "ScheduleKeyDeletion",
            &json!({"KeyId": prepared.key_id, "PendingWindowInDays": 7}),
        )
        .await
        .map(|_| ())
}

/// One measured run: `connections` connections, a warm-up, then the window.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Concurrent connections (each with one request in flight at a time).
    pub connections: usize,
    /// The warm-up before the window (its answers are not measured; its errors are
    /// counted).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Errors of one kind: how many, and the first message seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorKind {
    /// In the measured window.
    pub count: u64,
    /// In the warm-up.
    pub warmup: u64,
    /// The first message seen (AWS's message, or the transport's).
    pub message: String,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The workload's name.
    pub label: String,
    /// The KMS operation.
    pub operation: String,
    /// The key used.
    pub key_id: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Answers with status 200 in the window.
    pub requests: u64,
    /// From the start of the window to the last measured answer.
    pub seconds: f64,
    /// `requests / seconds`.
    pub rps: f64,
    /// Median latency of the 200 answers, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency of the 200 answers, milliseconds.
    pub p99_ms: f64,
    /// Slowest 200 answer, milliseconds.
    pub max_ms: f64,
    /// Every other outcome in the window.
    pub errors: u64,
    /// Every other outcome in the warm-up.
    pub warmup_errors: u64,
    /// Errors by kind: `HTTP <status> <__type>`, `transport`, `timeout`.
    pub error_kinds: BTreeMap<String, ErrorKind>,
}

impl Outcome {
    /// One `RESULT key=value …` line for scripts (the label last, it may hold spaces).
    pub fn result_line(&self) -> String {
        format!(
            "RESULT op={} c={} requests={} seconds={:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3} \
             max_ms={:.3} errors={} warmup_errors={} label={}",
            self.operation,
            self.connections,
            self.requests,
            self.seconds,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.errors,
            self.warmup_errors,
            self.label
        )
    }
}

/// A markdown table of `outcomes`, then one line per error kind.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| operation | connections | requests | req/s | p50 ms | p99 ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} |\n",
            o.label, o.connections, o.requests, o.rps, o.p50_ms, o.p99_ms, o.errors
        ));
    }
    for o in outcomes {
        for (kind, e) in &o.error_kinds {
            s.push_str(&format!(
                "errors of {} at c={}: {kind}: {} in the window, {} in the warm-up; first: {}\n",
                o.label, o.connections, e.count, e.warmup, e.message
            ));
        }
    }
    s
}

/// What one connection's task saw.
#[derive(Default)]
struct TaskStats {
    latencies_ns: Vec<u64>,
    errors: BTreeMap<String, ErrorKind>,
    last_done: Option<Instant>,
}

impl TaskStats {
    fn error(&mut self, kind: String, message: impl FnOnce() -> String, measured: bool) {
        let e = self.errors.entry(kind).or_default();
        if e.count == 0 && e.warmup == 0 {
            e.message = message();
        }
        if measured {
            e.count += 1;
        } else {
            e.warmup += 1;
        }
    }
}

/// Runs `prepared` for `phase`: opens the connections, warms up, measures.
pub async fn run(
    client: &Arc<Client>,
    prepared: &Prepared,
    phase: Phase,
) -> Result<Outcome, ClientError> {
    if phase.connections == 0 {
        return Err(ClientError::Config("at least one connection".into()));
    }
    // Every connection is open (or has failed, and is retried by its task) before the
    // clock starts.
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..phase.connections {
        let c = client.clone();
        opening.spawn(async move { c.connect().await });
    }
    let mut conns = Vec::with_capacity(phase.connections);
    while let Some(r) = opening.join_next().await {
        conns.push(r.ok().and_then(Result::ok));
    }
    let measure_from = Instant::now() + phase.warmup;
    let end = measure_from + phase.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let (c, p) = (client.clone(), prepared.clone());
        tasks.spawn(async move { drive(c, p, conn, measure_from, end).await });
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, ErrorKind> = BTreeMap::new();
    let mut last_done = measure_from;
    while let Some(r) = tasks.join_next().await {
        let t = r.map_err(|e| ClientError::Config(format!("a load task failed: {e}")))?;
        latencies.extend(t.latencies_ns);
        for (k, e) in t.errors {
            let all = errors.entry(k).or_default();
            if all.message.is_empty() {
                all.message = e.message;
            }
            all.count += e.count;
            all.warmup += e.warmup;
        }
        if let Some(d) = t.last_done {
            last_done = last_done.max(d);
        }
    }
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let seconds = if requests == 0 {
        phase.duration.as_secs_f64()
    } else {
        last_done
            .saturating_duration_since(measure_from)
            .as_secs_f64()
    }
    .max(1e-6);
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(Outcome {
        label: prepared.label.clone(),
        operation: prepared.operation.name().to_string(),
        key_id: prepared.key_id.clone(),
        connections: phase.connections,
        requests,
        seconds,
        rps: requests as f64 / seconds,
        p50_ms: ms(percentile(&latencies, 50)),
        p99_ms: ms(percentile(&latencies, 99)),
        max_ms: ms(latencies.last().copied().unwrap_or(0)),
        errors: errors.values().map(|e| e.count).sum(),
        warmup_errors: errors.values().map(|e| e.warmup).sum(),
        error_kinds: errors,
    })
}

/// The nearest-rank `pct`th percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let rank = (n * pct).div_ceil(100).clamp(1, n);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// One connection's loop: send until `end`, reopening the connection after a transport
/// error or a timeout.
async fn drive(
    client: Arc<Client>,
    p: Prepared,
    mut conn: Option<Connection>,
    measure_from: Instant,
    end: Instant,
) -> TaskStats {
    let mut stats = TaskStats::default();
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let measured = start >= measure_from;
        let c = match &mut conn {
            Some(c) => c,
            None => match client.connect().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    stats.error("transport".into(), || e.to_string(), measured);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match c.send(&p.target, p.body.clone()).await {
            Ok(r) if r.status == 200 => {
                if measured {
                    let done = Instant::now();
                    stats
                        .latencies_ns
                        .push(u64::try_from((done - start).as_nanos()).unwrap_or(u64::MAX));
                    stats.last_done = Some(done);
                }
            }
            Ok(r) => {
                let (code, message) = r.error();
                stats.error(format!("HTTP {} {code}", r.status), || message, measured);
            }
            Err(e) => {
                let kind = match e {
                    ClientError::Timeout { .. } => "timeout",
                    _ => "transport",
                };
                stats.error(kind.into(), || e.to_string(), measured);
                conn = None;
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2], 50), 1);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn operations_parse_and_label() {
        assert_eq!("encrypt".parse::<Operation>(), Ok(Operation::Encrypt));
        assert_eq!(
            "GenerateDataKey".parse::<Operation>(),
            Ok(Operation::GenerateDataKey)
        );
        assert!("Verify".parse::<Operation>().is_err());
        let mut w = Workload::new(Operation::Sign);
        w.message_type = "DIGEST".into();
        w.signing_algorithm = "RSASSA_PSS_SHA_256".into();
        assert_eq!(w.label(), "Sign RSASSA_PSS_SHA_256 DIGEST");
        assert_eq!(w.sign_message().len(), 32);
        assert_eq!(w.key_for().unwrap(), ("RSA_2048".into(), "SIGN_VERIFY"));
        w.signing_algorithm = "ECDSA_SHA_384".into();
        assert_eq!(w.sign_message().len(), 48);
        assert_eq!(w.key_for().unwrap().0, "ECC_NIST_P384");
        w.signing_algorithm = "SOMETHING".into();
        assert!(w.key_for().is_err());
        let w = Workload::new(Operation::GenerateMac);
        assert_eq!(
            w.key_for().unwrap(),
            ("HMAC_256".into(), "GENERATE_VERIFY_MAC")
        );
        assert_eq!(Workload::new(Operation::Encrypt).label(), "Encrypt 32 B");
    }
}
