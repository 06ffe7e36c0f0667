//! Operations endpoints besides `GET /health`: `GET /metrics` (Prometheus text format) and
//! `GET /ready` (readiness), and the request metrics the request paths record.
//!
//! `/metrics` is SigV4-signed like the health detail unless `metrics_public = true` (open
//! scraping on a trusted network). Labels carry only operation names, services, AWS error
//! codes, HSM names and states: never key ids, ARNs, aliases or principals (cardinality
//! and privacy).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hsm_kms_requests_total` | counter | `service`, `operation`, `code` (`OK` or the AWS error code) |
//! | `hsm_kms_request_duration_seconds` | histogram | `service`, `operation` |
//! | `hsm_kms_audit_write_duration_seconds` | histogram | — |
//! | `hsm_kms_audit_queue_depth` | gauge | — |
//! | `hsm_kms_audit_commits_total` | counter | — |
//! | `hsm_kms_audit_committed_records_total` | counter | — |
//! | `hsm_kms_audit_healthy` | gauge | — |
//! | `hsm_kms_hsm_call_duration_seconds` | histogram | `hsm` |
//! | `hsm_kms_hsm_state` | gauge (1 for the current state) | `hsm`, `state` |
//! | `hsm_kms_hsm_busy_sessions` | gauge | `hsm` |
//! | `hsm_kms_hsm_queue_depth` | gauge | `hsm` |
//! | `hsm_kms_hsm_errors_total` | counter | `hsm` |
//! | `hsm_kms_hsm_failovers_total` | counter | `hsm` |
//! | `hsm_kms_hsm_reinitializations_total` | counter | `hsm` |
//! | `hsm_kms_keys` | gauge | `state` (`KeyState`) |
//!
//! `/ready` answers 200 `{"status":"ready"}` while at least one HSM serves (healthy or
//! suspect), the metadata store takes a durable write (checked at most once a second) and,
//! when fail-closed, the audit trail takes records; otherwise 503
//! `{"status":"not_ready","reason":…}` with `no_hsm`, `metadata_unwritable` or
//! `audit_unavailable`. Unauthenticated; no names, no counts.

use super::error::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buckets (seconds) of the request and audit latency histograms: 250 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a metadata write check of `/ready` is reused.
const READY_CHECK_TTL: Duration = Duration::from_secs(1);

/// The service's metrics: a registry of its own (several services may run in one process,
/// as in tests), the request series, and `/metrics` access.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    audit_write: Histogram,
    public: bool,
    /// The last metadata write check: when, and whether it succeeded.
    metadata_check: Mutex<Option<(Instant, bool)>>,
}

/// Why the metrics could not be set up (a duplicate or invalid metric: a bug).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// New metrics; `/metrics` is open to anyone when `public`, else SigV4-signed.
    pub fn new(public: bool) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "hsm_kms_requests_total",
                "API requests by service, operation and outcome (OK or the AWS error code).",
            ),
            &["service", "operation", "code"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "hsm_kms_request_duration_seconds",
                "API request latency by service and operation, audit record included.",
            )
            .buckets(BUCKETS.to_vec()),
            &["service", "operation"],
        )?;
        let audit_write = Histogram::with_opts(
            HistogramOpts::new(
                "hsm_kms_audit_write_duration_seconds",
                "Time for a call's audit records to become durable (group commit wait included).",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(audit_write.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            durations,
            audit_write,
            public,
            metadata_check: Mutex::new(None),
        })
    }

    /// Add a histogram kept elsewhere (the HSMs' call latencies).
    pub fn register_histogram(&self, h: Histogram) -> Result<(), MetricsError> {
        Ok(self.registry.register(Box::new(h))?)
    }

    /// One answered request: `service` (`kms`, `iam`, `sts`), a known operation name (or
    /// `unknown`), `code` (`OK` or the AWS error code), and how long it took.
    pub(crate) fn record_call(
        &self,
        service: &'static str,
        operation: &'static str,
        code: &'static str,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[service, operation, code])
            .inc();
        self.durations
            .with_label_values(&[service, operation])
            .observe(elapsed.as_secs_f64());
    }

    /// One commit of audit records took `elapsed`.
    pub(crate) fn record_audit_write(&self, elapsed: Duration) {
        self.audit_write.observe(elapsed.as_secs_f64());
    }
}

/// A family of `kind` with one sample per `(labels, value)`.
fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    for (labels, value) in samples {
        let mut m = Metric::default();
        m.set_label(
            labels
                .into_iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v);
                    l
                })
                .collect(),
        );
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        f.mut_metric().push(m);
    }
    f
}

/// The families read at scrape time: HSMs, keys, audit trail.
fn snapshot(app: &AppState) -> Vec<MetricFamily> {
    let hsms = app.kms.vault().health();
    let per_hsm = |pick: &dyn Fn(&crate::kms::vault::HsmGauges) -> f64| {
        hsms.iter()
            .map(|h| (vec![("hsm", h.name.clone())], pick(&h.gauges)))
            .collect::<Vec<_>>()
    };
    let states = hsms.iter().flat_map(|h| {
        crate::kms::vault::HSM_STATES.iter().map(move |s| {
            (
                vec![("hsm", h.name.clone()), ("state", (*s).to_string())],
                f64::from(u8::from(h.gauges.state == *s)),
            )
        })
    });
    let commits = app.audit.group_commits();
    let keys = app
        .kms
        .key_counts_by_state()
        .into_iter()
        .map(|(s, n)| (vec![("state", s.as_str().to_string())], n as f64));
    vec![
        family(
            "hsm_kms_hsm_state",
            "HSM state: 1 for the current state of each HSM, 0 for the others.",
            MetricType::GAUGE,
            states,
        ),
        family(
            "hsm_kms_hsm_busy_sessions",
            "HSM worker sessions running a call now.",
            MetricType::GAUGE,
            per_hsm(&|g| g.busy_sessions as f64),
        ),
        family(
            "hsm_kms_hsm_queue_depth",
            "HSM calls waiting for a worker session now.",
            MetricType::GAUGE,
            per_hsm(&|g| g.queued as f64),
        ),
        family(
            "hsm_kms_hsm_errors_total",
            "Errors recorded against each HSM (failed calls, probes, re-initializations).",
            MetricType::COUNTER,
            per_hsm(&|g| g.errors as f64),
        ),
        family(
            "hsm_kms_hsm_failovers_total",
            "Calls that failed on each HSM and were retried on another.",
            MetricType::COUNTER,
            per_hsm(&|g| g.failovers as f64),
        ),
        family(
            "hsm_kms_hsm_reinitializations_total",
            "Background re-initializations of each HSM.",
            MetricType::COUNTER,
            per_hsm(&|g| g.reinitializations as f64),
        ),
        family(
            "hsm_kms_keys",
            "KMS keys by KeyState (all accounts).",
            MetricType::GAUGE,
            keys,
        ),
        family(
            "hsm_kms_audit_queue_depth",
            "Audit record batches waiting for the trail writer.",
            MetricType::GAUGE,
            [(vec![], app.audit.queue_depth() as f64)],
        ),
        family(
            "hsm_kms_audit_commits_total",
            "Group commits of the audit trail (one write and one sync each).",
            MetricType::COUNTER,
            [(vec![], commits.commits as f64)],
        ),
        family(
            "hsm_kms_audit_committed_records_total",
            "Audit records made durable by those group commits.",
            MetricType::COUNTER,
            [(vec![], commits.records as f64)],
        ),
        family(
            "hsm_kms_audit_healthy",
            "1 while the audit trail takes records, else 0.",
            MetricType::GAUGE,
            [(vec![], f64::from(u8::from(app.audit.healthy())))],
        ),
    ]
}

/// Serve `GET /metrics`.
pub(super) async fn metrics(State(app): State<Arc<AppState>>, req: Request) -> Response {
    if !app.metrics.public {
        let request_id = crate::kms::types::random_uuid().to_string();
        if let Err(r) = authenticate(&app, req, &request_id).await {
            return r;
        }
    }
    let mut families = app.metrics.registry.gather();
    families.extend(snapshot(&app));
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    if let Err(e) = encoder.encode(&families, &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut r = out.into_response();
    if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// SigV4 verification of a `GET` (service `kms`), as for the health detail: the AWS
/// authentication error as the response when it fails (a missing signature included).
pub(super) async fn authenticate(
    app: &AppState,
    req: Request,
    request_id: &str,
) -> Result<crate::auth::Principal, Response> {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(Body::new(body), app.max_body_bytes).await else {
        return Err(ApiError::new(
            "RequestEntityTooLargeException",
            format!("Request body is larger than {} bytes", app.max_body_bytes),
        )
        .into_response_with(request_id));
    };
    super::pipeline::verify_signature(app, &parts, &body)
        .map_err(|e| ApiError::from(e).into_response_with(request_id))
}

/// Why the service is not ready, if it is not.
async fn not_ready(app: &AppState) -> Option<&'static str> {
    let serving = app
        .kms
        .vault()
        .health()
        .iter()
        .any(|h| matches!(h.gauges.state, "Healthy" | "Suspect"));
    if !serving {
        return Some("no_hsm");
    }
    if !app.audit.fail_open() && !app.audit.healthy() {
        return Some("audit_unavailable");
    }
    let cached = *app.metrics.metadata_check.lock();
    let writable = match cached {
        Some((at, ok)) if at.elapsed() < READY_CHECK_TTL => ok,
        _ => {
            let ok = match app.kms.metadata_writable().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: the metadata store refused a write");
                    false
                }
            };
            *app.metrics.metadata_check.lock() = Some((Instant::now(), ok));
            ok
        }
    };
    (!writable).then_some("metadata_unwritable")
}

/// Serve `GET /ready`.
pub(super) async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let (code, body) = match not_ready(&app).await {
        None => (StatusCode::OK, serde_json::json!({"status": "ready"})),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not_ready", "reason": reason}),
        ),
    };
    super::health::json(code, &body)
}
