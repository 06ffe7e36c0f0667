//! `GET /metrics`, `GET /ready`, liveness `GET /health` and JSON logs, over HTTP against a
//! service on real SoftHSM2 tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{
    b64, create_keys_until_refused, fast_options, fill, real_binary, service, tokens, Client,
    SmallDisk, Tokens,
};
use hsm_kms::app::{self, ServiceConfig};
use serde_json::{json, Value};
use std::time::Duration;

/// The value of the sample `name{labels…}` (every given label must match), if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (head, value) = rest.rsplit_once(' ')?;
        if !(head.is_empty() || head.starts_with('{')) {
            return None; // another metric whose name starts with `name`
        }
        labels
            .iter()
            .all(|(k, v)| head.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().unwrap())
    })
}

async fn scrape(c: &Client) -> String {
    let (status, text) = c.get_text("/metrics", true).await;
    assert_eq!(status, 200, "{text}");
    text
}

const ENC: &[(&str, &str)] = &[("service", "kms"), ("operation", "Encrypt"), ("code", "OK")];

/// Calls move their series: an Encrypt its counter and its histogram's count; a
/// validation error and an unknown key their error-code series. HSM gauges exist for both
/// HSMs, key counts by state; no key id or ARN is a label. Unsigned scrapes are refused
/// (the default, `metrics_public = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_calls_are_made() {
    let s = service().await;
    let c = &s.client;
    let key = c.create_key(json!({})).await;

    let before = scrape(c).await;
    let enc = |t: &str| sample(t, "hsm_kms_requests_total", ENC).unwrap_or(0.0);
    let enc_count = |t: &str| {
        sample(
            t,
            "hsm_kms_request_duration_seconds_count",
            &[("service", "kms"), ("operation", "Encrypt")],
        )
        .unwrap_or(0.0)
    };
    let validation = &[
        ("operation", "GenerateRandom"),
        ("code", "ValidationException"),
    ];
    let not_found = &[("operation", "Encrypt"), ("code", "NotFoundException")];
    let count = |t: &str, l: &[(&str, &str)]| sample(t, "hsm_kms_requests_total", l).unwrap_or(0.0);

    for _ in 0..3 {
        let r = c
            .call("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = c.call("GenerateRandom", json!({"NumberOfBytes": 0})).await;
    assert_eq!(r.error_type(), "ValidationException", "{}", r.body);
    let r = c
        .call(
            "Encrypt",
            json!({"KeyId": "11111111-2222-3333-4444-555555555555", "Plaintext": b64(b"x")}),
        )
        .await;
    assert_eq!(r.error_type(), "NotFoundException", "{}", r.body);

    let after = scrape(c).await;
    assert_eq!(enc(&after) - enc(&before), 3.0, "{after}");
    // The latency histogram counts every Encrypt, the failed one too.
    assert_eq!(enc_count(&after) - enc_count(&before), 4.0, "{after}");
    assert_eq!(
        count(&after, validation) - count(&before, validation),
        1.0,
        "{after}"
    );
    assert_eq!(
        count(&after, not_found) - count(&before, not_found),
        1.0,
        "{after}"
    );
    for hsm in ["a", "b"] {
        assert_eq!(
            sample(
                &after,
                "hsm_kms_hsm_state",
                &[("hsm", hsm), ("state", "Healthy")]
            ),
            Some(1.0),
            "{after}"
        );
        assert_eq!(
            sample(
                &after,
                "hsm_kms_hsm_state",
                &[("hsm", hsm), ("state", "Down")]
            ),
            Some(0.0)
        );
        for m in [
            "hsm_kms_hsm_busy_sessions",
            "hsm_kms_hsm_queue_depth",
            "hsm_kms_hsm_errors_total",
            "hsm_kms_hsm_failovers_total",
        ] {
            assert!(sample(&after, m, &[("hsm", hsm)]).is_some(), "{m} {hsm}");
        }
    }
    // Every Encrypt ran on one of the HSMs (host processes: the call is timed here).
    let hsm_calls: f64 = ["a", "b"]
        .iter()
        .map(|h| {
            sample(
                &after,
                "hsm_kms_hsm_call_duration_seconds_count",
                &[("hsm", h)],
            )
            .unwrap()
        })
        .sum();
    assert!(hsm_calls >= 3.0, "{after}");
    assert_eq!(
        sample(&after, "hsm_kms_keys", &[("state", "Enabled")]),
        Some(1.0)
    );
    assert!(sample(&after, "hsm_kms_audit_write_duration_seconds_count", &[]).unwrap() >= 5.0);
    assert_eq!(sample(&after, "hsm_kms_audit_healthy", &[]), Some(1.0));
    assert!(sample(&after, "hsm_kms_audit_queue_depth", &[]).is_some());
    // Every call's record went through a group commit (a record may share one).
    let commits = sample(&after, "hsm_kms_audit_commits_total", &[]).unwrap();
    let committed = sample(&after, "hsm_kms_audit_committed_records_total", &[]).unwrap();
    assert!(
        commits >= 1.0 && committed >= 5.0 && committed >= commits,
        "{after}"
    );
    // Names and codes only: no key id, ARN or principal.
    assert!(!after.contains(&key), "a key id in /metrics");
    assert!(!after.contains("arn:aws"), "an ARN in /metrics");
    assert!(!after.contains("5555"), "a requested key id in /metrics");

    let (status, body) = c.get_text("/metrics", false).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MissingAuthenticationToken"), "{body}");
    assert!(!body.contains("hsm_kms_"), "{body}");
    s.running.stop().await;
}

async fn start_public(t: &Tokens) -> (app::Running, Client) {
    start_public_with(t, app::AuditOptions::in_dir(t.dir.path().join("audit"))).await
}

async fn start_public_with(t: &Tokens, audit: app::AuditOptions) -> (app::Running, Client) {
    start_public_on(t, audit, t.dir.path().join("metadata.sqlite")).await
}

/// [`start_public_with`] with the metadata database at `database`.
async fn start_public_on(
    t: &Tokens,
    audit: app::AuditOptions,
    database: std::path::PathBuf,
) -> (app::Running, Client) {
    let running = app::start(ServiceConfig {
        nodes: t.hsms.iter().map(|h| h.node_config().unwrap()).collect(),
        cluster: fast_options(),
        database,
        listen: "127.0.0.1:0".into(),
        region: "us-east-1".into(),
        account_id: "111122223333".into(),
        max_body_bytes: 64 * 1024,
        clock: std::sync::Arc::new(hsm_kms::clock::SystemClock),
        maintenance_interval: Duration::from_secs(3600),
        audit,
        metrics_public: true,
    })
    .await
    .expect("service starts");
    let client = Client::new(
        format!("http://{}", running.addr),
        running.credentials[0].clone(),
    );
    (running, client)
}

/// Poll `GET /ready` until it answers `status` (or give up after 30 s).
async fn ready_becomes(c: &Client, status: u16) -> (u16, String) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get_text("/ready", false).await;
        if r.0 == status || std::time::Instant::now() > end {
            return r;
        }
        // Traffic also notices a lost HSM, not only the probes.
        let _ = c.call("GenerateRandom", json!({"NumberOfBytes": 8})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/ready` is 200 while an HSM serves, 503 `no_hsm` when both are gone, 200 again once
/// they are back; `/health` says `ok` throughout, with no names or counts. With
/// `metrics_public` an unsigned scrape is served and shows the HSMs down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_hsms_and_health_is_liveness_only() {
    let t = tokens(&["a", "b"]);
    let (running, c) = start_public(&t).await;
    let live = json!({"status": "ok"});
    let (status, body) = c.get_text("/ready", false).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, body) = c.get_text("/health", false).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, live.clone())
    );
    let (status, text) = c.get_text("/metrics", false).await;
    assert_eq!(status, 200, "{text}");

    let dirs: Vec<_> = t.hsms.iter().map(|h| h.token_dir.clone()).collect();
    let away = |d: &std::path::PathBuf| d.with_extension("away");
    for d in &dirs {
        std::fs::rename(d, away(d)).unwrap();
    }
    let (status, body) = ready_becomes(&c, 503).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (503, json!({"status": "not_ready", "reason": "no_hsm"}))
    );
    let (status, body) = c.get_text("/health", false).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, live.clone())
    );
    let (_, text) = c.get_text("/metrics", false).await;
    for hsm in ["a", "b"] {
        assert_eq!(
            sample(
                &text,
                "hsm_kms_hsm_state",
                &[("hsm", hsm), ("state", "Healthy")]
            ),
            Some(0.0),
            "{text}"
        );
    }

    for d in &dirs {
        std::fs::rename(away(d), d).unwrap();
    }
    let (status, body) = ready_becomes(&c, 200).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    running.stop().await;
}

/// `KMS_LOG_FORMAT=json`: every line the server logs is a JSON object; the line of a
/// failed call carries its request id and operation (from the request span), and no line
/// carries the secret access key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_operation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var");
    real_binary::setup(&state);
    let (child, url, logged) =
        real_binary::start_with_env(&state, &[("KMS_LOG_FORMAT", "json")], true);
    let mut server = real_binary::Guard(child);
    let cred = real_binary::credential(&state);
    let secret = cred.secret_access_key.to_string();
    let c = Client::new(url, cred);
    let r = c.call("GenerateRandom", json!({"NumberOfBytes": 0})).await;
    assert_eq!(r.error_type(), "ValidationException", "{}", r.body);
    let request_id = r.request_id.unwrap();

    let mut found = None;
    for _ in 0..100 {
        found = logged
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&request_id))
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = found.expect("a log line names the request id");
    let v: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["span"]["request_id"], request_id.as_str(), "{line}");
    assert_eq!(v["span"]["operation"], "GenerateRandom", "{line}");
    assert_eq!(v["fields"]["error"], "ValidationException", "{line}");
    assert!(
        v["timestamp"].is_string() && v["level"].is_string(),
        "{line}"
    );
    // The shutdown line too.
    real_binary::stop(&mut server.0);
    let shut = |l: &Vec<String>| l.iter().any(|l| l.contains("shutting down"));
    for _ in 0..100 {
        if shut(&logged.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = logged.lock().unwrap().clone();
    assert!(shut(&lines), "{lines:?}");
    for l in &lines {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(!l.contains(&secret), "the secret in a log line: {l}");
    }
}

/// Fail-closed, a trail that cannot be written makes the service not ready
/// (`audit_unavailable`) and shows in `/metrics`; once the folder can be made it is ready
/// again. Fail-open, the same trail does not make it unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_needs_the_audit_trail_when_fail_closed() {
    let t = tokens(&["a", "b"]);
    // A regular file where the folder should be: not even root can write through it.
    let blocked = t.dir.path().join("audit-blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();

    let (running, c) = start_public_with(&t, app::AuditOptions::in_dir(blocked.clone())).await;
    let (status, body) = c.get_text("/ready", false).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            503,
            json!({"status": "not_ready", "reason": "audit_unavailable"})
        )
    );
    let r = c.call("ListKeys", json!({})).await;
    assert_eq!(r.error_type(), "KMSInternalException", "{}", r.body);
    let (_, text) = c.get_text("/metrics", false).await;
    assert_eq!(
        sample(&text, "hsm_kms_audit_healthy", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "hsm_kms_requests_total",
            &[("operation", "ListKeys"), ("code", "KMSInternalException")]
        ),
        Some(1.0),
        "{text}"
    );
    // The folder can be made now: the trail's probe finds it, the service is ready.
    std::fs::remove_file(&blocked).unwrap();
    let (status, body) = ready_becomes(&c, 200).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    running.stop().await;

    std::fs::remove_dir_all(&blocked).unwrap();
    std::fs::write(&blocked, b"not a folder").unwrap();
    let (running, c) = start_public_with(
        &t,
        app::AuditOptions {
            fail_open: true,
            ..app::AuditOptions::in_dir(blocked)
        },
    )
    .await;
    let (status, body) = c.get_text("/ready", false).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    running.stop().await;
}

/// The metadata store's disk fills up: calls that must write are refused (never answered
/// without their metadata), `/ready` says `metadata_unwritable`, and once there is room
/// again the service is ready and writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_metadata_unwritable_while_the_store_refuses_writes() {
    let t = tokens(&["a", "b"]);
    let Some(disk) = SmallDisk::mount(&t.dir.path().join("small"), "4m") else {
        eprintln!(
            "SKIPPED ready_says_metadata_unwritable_while_the_store_refuses_writes: cannot \
             mount a tmpfs here (needs root with CAP_SYS_ADMIN, as CI runs)"
        );
        return;
    };
    let (running, c) = start_public_on(
        &t,
        app::AuditOptions::in_dir(t.dir.path().join("audit")),
        disk.0.join("metadata.sqlite"),
    )
    .await;
    c.ok("CreateKey", json!({})).await;
    let filler = fill(&disk.0);
    // Key metadata with 8 KB descriptions: the database needs new pages soon.
    let answered = create_keys_until_refused(&c).await;
    let (status, body) = ready_becomes(&c, 503).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            503,
            json!({"status": "not_ready", "reason": "metadata_unwritable"})
        )
    );
    std::fs::remove_file(filler).unwrap();
    let (status, body) = ready_becomes(&c, 200).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    c.ok("CreateKey", json!({"Description": "d".repeat(8000)}))
        .await;
    // Every answered CreateKey is there; the refused one is not.
    let keys = c.ok("ListKeys", json!({"Limit": 1000})).await;
    assert_eq!(keys["Keys"].as_array().unwrap().len(), answered + 2);
    println!("METADATA-FULL | {answered} CreateKey answered after the disk filled, then refused; ready again once it had room");
    running.stop().await;
    drop(disk);
}
