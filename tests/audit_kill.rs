//! The audit trail survives `kill -9` of the real binary with no acknowledged call missing
//! (issue 14): `hsm-kms serve` under a bounded concurrent load (16 tasks of Encrypt,
//! GenerateDataKey, CreateKey and a few IAM calls) is SIGKILLed (its PID only) mid-load,
//! right after an acknowledgement while the other calls are in flight;
//! every request the client saw answered 200 has a record with its `x-amzn-RequestId` in
//! the trail; `hsm-kms audit verify` accepts the trail as the kill left it (an incomplete
//! last line, if any, is noted and ignored: it was never acknowledged) and after the
//! restart that cuts such a line off; and the restarted server serves and appends to the
//! same hash chain.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hsm_kms::auth::Credential;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent clients.
const TASKS: usize = 16;
/// The load runs at most this long (it stops earlier when the server is gone).
const LOAD_FOR: Duration = Duration::from_secs(2);
/// The SIGKILL lands this long after the load started.
const KILL_AFTER: Duration = Duration::from_millis(1200);

/// One call as the client saw it: the HTTP status and `x-amzn-RequestId`, or `Err` when
/// no complete answer came (connection refused or cut by the kill).
type Seen = Result<(u16, Option<String>), reqwest::Error>;

/// A signed KMS JSON call (`TrentService.<op>`) that never panics on a transport error.
async fn kms(http: &reqwest::Client, url: &str, cred: &Credential, op: &str, body: Value) -> Seen {
    let body = body.to_string().into_bytes();
    let mut h = http::HeaderMap::new();
    h.insert("host", url.trim_start_matches("http://").parse().unwrap());
    h.insert(
        "content-type",
        "application/x-amz-json-1.1".parse().unwrap(),
    );
    h.insert(
        "x-amz-target",
        format!("TrentService.{op}").parse().unwrap(),
    );
    send(http, url, cred, "kms", h, body).await
}

/// A signed IAM Query call.
async fn iam(
    http: &reqwest::Client,
    url: &str,
    cred: &Credential,
    action: &str,
    params: &[(&str, &str)],
) -> Seen {
    let mut body = format!("Action={action}&Version=2010-05-08");
    for (k, v) in params {
        body.push_str(&format!("&{k}={v}"));
    }
    let mut h = http::HeaderMap::new();
    h.insert("host", url.trim_start_matches("http://").parse().unwrap());
    h.insert(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8"
            .parse()
            .unwrap(),
    );
    send(http, url, cred, "iam", h, body.into_bytes()).await
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    cred: &Credential,
    service: &str,
    mut h: http::HeaderMap,
    body: Vec<u8>,
) -> Seen {
    sign_service(
        service,
        "POST",
        "/",
        &mut h,
        &body,
        &cred.access_key_id,
        &cred.secret_access_key,
        None,
        time::OffsetDateTime::now_utc(),
    );
    let mut req = http.post(format!("{url}/")).body(body);
    for (k, v) in h.iter() {
        if k != "host" {
            req = req.header(k.as_str(), v.to_str().unwrap());
        }
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-amzn-requestid")
        .map(|v| v.to_str().unwrap().to_string());
    // The answer counts as seen only once its whole body has arrived.
    r.bytes().await?;
    Ok((status, id))
}

/// The trail's complete lines (`seq`, `prev`, `event`) in order, and whether the last
/// file ends in an incomplete line.
fn read_trail(dir: &Path) -> (Vec<Value>, bool) {
    let mut lines = Vec::new();
    let mut torn = false;
    let files = hsm_kms::audit::trail_files(dir).unwrap();
    for (i, (_, p)) in files.iter().enumerate() {
        let data = std::fs::read(p).unwrap();
        // The records end at the zeroed space the writer keeps ready after them.
        let text = hsm_kms::audit::written(&data).0;
        let mut parts: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        // After the last newline: "" for a complete file, else a torn line.
        let tail = parts.pop().unwrap_or_default();
        if !tail.is_empty() {
            assert_eq!(
                i + 1,
                files.len(),
                "{}: torn line in a middle file",
                p.display()
            );
            torn = true;
        }
        for l in parts {
            lines.push(serde_json::from_slice(l).expect("a complete trail line parses"));
        }
    }
    (lines, torn)
}

/// The request ids in these trail lines.
fn request_ids(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| l["event"]["requestID"].as_str().map(str::to_string))
        .collect()
}

/// `hsm-kms audit verify --config <state>/config.toml`: exit code and standard output.
fn verify(state: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["audit", "verify", "--config"])
        .arg(state.join("config.toml"))
        .env_remove("KMS_STATE_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What the load tasks share.
struct Load {
    url: String,
    cred: Credential,
    /// The key of the Encrypt and GenerateDataKey calls.
    key: String,
    /// The load ends then at the latest.
    deadline: Instant,
    /// The first acknowledgement seen from then on is followed by the SIGKILL.
    kill_at: Instant,
    /// The server, until a task kills it.
    server: Arc<Mutex<Option<std::process::Child>>>,
    /// (operation, request id) of every call answered 200.
    acked: Mutex<Vec<(String, String)>>,
}

/// One load task: calls in a fixed mix until the deadline or the server is gone;
/// every call answered 200 is pushed to `acked` as (operation, request id).
async fn load(task: usize, l: Arc<Load>) -> (usize, usize) {
    let Load {
        url,
        cred,
        key,
        deadline,
        kill_at,
        server,
        acked,
    } = &*l;
    let (url, cred, key, deadline, kill_at) =
        (url.as_str(), cred, key.as_str(), *deadline, *kill_at);
    let http = reqwest::Client::new();
    let (mut sent, mut failed) = (0, 0);
    let mut n = 0usize;
    while Instant::now() < deadline {
        n += 1;
        let user = format!("u{task}x{n}");
        let (op, seen) = match n % 10 {
            0 => (
                "CreateKey",
                kms(&http, url, cred, "CreateKey", json!({})).await,
            ),
            5 if task.is_multiple_of(2) => (
                "CreateUser",
                iam(&http, url, cred, "CreateUser", &[("UserName", &user)]).await,
            ),
            5 => ("ListUsers", iam(&http, url, cred, "ListUsers", &[]).await),
            k if k.is_multiple_of(2) => (
                "Encrypt",
                kms(
                    &http,
                    url,
                    cred,
                    "Encrypt",
                    json!({"KeyId": key, "Plaintext": b64(b"audit-kill")}),
                )
                .await,
            ),
            _ => (
                "GenerateDataKey",
                kms(
                    &http,
                    url,
                    cred,
                    "GenerateDataKey",
                    json!({"KeyId": key, "KeySpec": "AES_256"}),
                )
                .await,
            ),
        };
        sent += 1;
        match seen {
            Ok((200, Some(id))) => {
                acked.lock().unwrap().push((op.to_string(), id));
                // The first task answered after `kill_at` SIGKILLs the server (its PID only)
                // right after that acknowledgement, while the other tasks' calls are in
                // flight: the moment an answer that ran ahead of its record would show.
                if Instant::now() >= kill_at {
                    if let Some(mut child) = server.lock().unwrap().take() {
                        child.kill().unwrap();
                        child.wait().unwrap();
                    }
                }
            }
            Ok((200, None)) => panic!("{op} answered 200 without x-amzn-RequestId"),
            Ok((status, _)) => panic!("{op} answered {status} under load before the kill"),
            // The server is gone (killed): this task is done.
            Err(_) => {
                failed += 1;
                break;
            }
        }
    }
    (sent, failed)
}

/// SIGKILLs the server (by its PID) if the test ends while it still runs.
struct Killer(Arc<Mutex<Option<std::process::Child>>>);

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.lock().map(|mut c| c.take()).unwrap_or(None) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_call_is_missing_from_the_trail_after_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    real_binary::setup(state);
    // Where the binary itself puts the trail (the config's `audit_dir`, else <state>/audit).
    let audit_dir = hsm_kms::config::Loaded::from_file(&state.join("config.toml"))
        .unwrap()
        .audit()
        .dir;
    let (child, url) = real_binary::start(state);
    let pid = child.id();
    // Shared with the load tasks, one of which kills it; killed here if the test fails first.
    let server = Arc::new(Mutex::new(Some(child)));
    let _guard = Killer(server.clone());
    let cred = real_binary::credential(state);
    let c = Client::new(url.clone(), cred.clone());
    let key = c.create_key(json!({})).await;

    // The load, and the SIGKILL in the middle of it.
    let begun = Instant::now();
    let shared = Arc::new(Load {
        url: url.clone(),
        cred: cred.clone(),
        key: key.clone(),
        deadline: begun + LOAD_FOR,
        kill_at: begun + KILL_AFTER,
        server: server.clone(),
        acked: Mutex::new(Vec::new()),
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(load(t, shared.clone())))
        .collect();
    let mut sent = 0;
    let mut cut = 0;
    for t in tasks {
        let (s, f) = t.await.unwrap();
        sent += s;
        cut += f;
    }
    assert!(
        server.lock().unwrap().is_none(),
        "the load ended before the kill"
    );
    let acked = std::mem::take(&mut *shared.acked.lock().unwrap());
    assert!(
        acked.len() >= 100,
        "the load must be under way at the kill: {} answered",
        acked.len()
    );
    assert!(
        cut > 0,
        "no call saw the kill: the load had ended before it ({sent} sent)"
    );

    // Every acknowledged request id is in the trail, exactly as the kill left it.
    let (lines, torn_at_kill) = read_trail(&audit_dir);
    let ids = request_ids(&lines);
    let missing: Vec<_> = acked.iter().filter(|(_, id)| !ids.contains(id)).collect();
    let found = acked.len() - missing.len();
    let acked_ids: HashSet<&String> = acked.iter().map(|(_, id)| id).collect();
    // Records of other requests: the setup CreateKey, calls the kill cut in flight.
    let unacknowledged = ids.iter().filter(|id| !acked_ids.contains(id)).count();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged calls are missing from the trail, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let mut by_op = std::collections::BTreeMap::<&str, usize>::new();
    for (op, _) in &acked {
        *by_op.entry(op.as_str()).or_default() += 1;
    }
    for op in [
        "Encrypt",
        "GenerateDataKey",
        "CreateKey",
        "CreateUser",
        "ListUsers",
    ] {
        assert!(by_op.contains_key(op), "no {op} acknowledged: {by_op:?}");
    }
    let records_at_kill = lines.len();
    let last_seq = lines.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(last_seq + 1, records_at_kill as u64, "seq counts from 0");

    // `audit verify` on the unrepaired trail. A kill rarely lands inside the writer's
    // one `write`; when it did not, the last file is given what such a kill leaves (the
    // head of the next line, no newline) so both cases are exercised: verify notes the
    // incomplete line, ignores it (never acknowledged) and exits 0.
    let (_, last_file) = hsm_kms::audit::trail_files(&audit_dir)
        .unwrap()
        .pop()
        .unwrap();
    if !torn_at_kill {
        // Where the next record would have gone: over the zeroed space after the records.
        let end = hsm_kms::audit::written(&std::fs::read(&last_file).unwrap())
            .0
            .len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&last_file)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            format!("{{\"seq\":{},\"prev\":\"0a1b", last_seq + 1).as_bytes(),
            end as u64,
        )
        .unwrap();
    }
    let (code, out) = verify(state);
    assert_eq!(code, 0, "verify on the trail the kill left: {out}");
    assert!(out.contains("incomplete line"), "{out}");
    assert!(
        out.contains(&format!("intact: {records_at_kill} records")),
        "{out}"
    );
    let verify_unrepaired = code;

    // Restart: the torn line is cut off, the server serves and continues the chain.
    let (c2, url) = real_binary::start(state);
    let mut child = real_binary::Guard(c2);
    assert_ne!(child.0.id(), pid);
    let c = Client::new(url, real_binary::credential(state));
    let mut after = Vec::new();
    for body in [
        ("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"after")})),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "KeySpec": "AES_128"}),
        ),
        ("CreateKey", json!({})),
    ] {
        let r = c.call(body.0, body.1).await;
        assert_eq!(r.status, 200, "{} after the restart: {}", body.0, r.body);
        after.push(r.request_id.unwrap());
    }
    real_binary::stop(&mut child.0);

    let (lines, torn) = read_trail(&audit_dir);
    assert!(!torn, "the restart did not cut the torn line");
    assert_eq!(
        hsm_kms::audit::trail_files(&audit_dir).unwrap().len(),
        1,
        "one file at this size"
    );
    let ids = request_ids(&lines);
    for id in &after {
        assert!(ids.contains(id), "post-restart call {id} not in the trail");
    }
    for (_, id) in &acked {
        assert!(ids.contains(id), "{id} lost by the restart");
    }
    // The same chain: record `records_at_kill` follows the last pre-kill line.
    let first_new = &lines[records_at_kill];
    assert_eq!(first_new["seq"], records_at_kill as u64);
    let pre_kill_last = hsm_kms::audit::records_text(&last_file).unwrap();
    let pre_kill_last = pre_kill_last.lines().nth(records_at_kill - 1).unwrap();
    assert_eq!(
        first_new["prev"].as_str().unwrap(),
        hsm_kms::audit::line_hash(pre_kill_last.as_bytes())
    );
    let (code, out) = verify(state);
    assert_eq!(code, 0, "verify after the restart: {out}");
    assert!(!out.contains("incomplete line"), "{out}");
    assert!(
        out.contains(&format!("intact: {} records", lines.len())),
        "{out}"
    );

    println!(
        "AUDIT-KILL | {} acknowledged | {} found | {} sent, {} cut by the kill | {} records at kill \
         ({} of unacknowledged requests) | torn line at kill: {} | verify unrepaired: exit {} (incomplete \
         line noted) | after restart: {} appended from seq {}, verify exit {} on {} records | {:?} \
         | {:.1} s",
        acked.len(),
        found,
        sent,
        cut,
        records_at_kill,
        unacknowledged,
        if torn_at_kill { "real" } else { "none (simulated)" },
        verify_unrepaired,
        lines.len() - records_at_kill,
        records_at_kill,
        code,
        lines.len(),
        by_op,
        started.elapsed().as_secs_f64()
    );
}
