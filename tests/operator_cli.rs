//! The operator subcommands (issue 16, item 3), run as the real binary against a real
//! `hsm-kms serve` on fresh tokens made by `setup-local`, each as a second process while the
//! service runs: `hsm list|probe`, `keys list|show`, `credentials list|revoke`,
//! `reconcile --json`. Their JSON is asserted; a copy deleted from one token shows as
//! missing; a revoked access key is refused over HTTP within a second, and the key's
//! creation and revocation by the CLI are IAM service events in the audit trail (IAM calls
//! doing the same are recorded once, as calls); a token whose folder
//! is gone is reported down with its CKR code (exit status 1, no panic).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::softhsm::LocalHsm;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `hsm-kms ARGS --config STATE/config.toml`: (exit success, stdout, stderr).
fn cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(args)
        .arg("--config")
        .arg(state.join("config.toml"))
        .env("KMS_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stderr.contains("panicked"),
        "hsm-kms {args:?} panicked: {stderr}"
    );
    (out.status.success(), stdout, stderr)
}

/// [`cli`] with `--json`, which must succeed: the parsed document.
fn cli_json(state: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, out, err) = cli(state, &args);
    assert!(ok, "hsm-kms {args:?} failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// The local HSM `name` that `setup-local` made under `state`.
fn local_hsm(state: &Path, name: &str) -> LocalHsm {
    let dir = state.join("hsm").join(name);
    LocalHsm {
        name: name.into(),
        module: dir.join("libsofthsm2.so"),
        conf: dir.join("softhsm2.conf"),
        token_dir: dir.join("tokens"),
        label: format!("hsm-kms-{name}"),
        pin_file: dir.join("user.pin"),
        dir,
    }
}

/// Destroy every object with `CKA_ID` = `id` in the token of `hsm` (as an insider with the
/// user PIN would, from this process).
fn destroy_copy(hsm: &LocalHsm, id: &str) -> usize {
    use cryptoki::object::Attribute;
    let t = UserToken::open(hsm);
    let found = t
        .session()
        .find_objects(&[Attribute::Id(id.as_bytes().to_vec())])
        .unwrap();
    for h in &found {
        t.session().destroy_object(*h).unwrap();
    }
    found.len()
}

fn copies(detail: &Value) -> Value {
    detail["backing"][0]["hsms"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_read_and_repair_a_running_deployment() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var");
    real_binary::setup(&state);
    let (child, url) = real_binary::start(&state);
    let mut server = real_binary::Guard(child);
    let root = real_binary::credential(&state);
    let secret = root.secret_access_key.as_str().to_string();
    let client = Client::new(url.clone(), root.clone());
    let k1 = client.create_key(json!({"Description": "first"})).await;
    let k2 = client.create_key(json!({})).await;
    let ec = client
        .create_key(json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}))
        .await;
    client.ok("DisableKey", json!({"KeyId": k2})).await;

    // --help of every subcommand names --json and --config.
    for sub in [
        &["hsm", "list"][..],
        &["hsm", "probe"],
        &["keys", "list"],
        &["keys", "show"],
        &["credentials", "list"],
        &["credentials", "revoke"],
        &["reconcile"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub:?} --help");
        assert!(
            text.contains("--json") && text.contains("--config"),
            "{sub:?}: {text}"
        );
    }

    // hsm list: both HSMs reachable and enrolled, with their token information.
    let list = cli_json(&state, &["hsm", "list"]);
    let hsms = list["hsms"].as_array().unwrap();
    assert_eq!(hsms.len(), 2, "{list}");
    for (h, name) in hsms.iter().zip(["hsm-a", "hsm-b"]) {
        assert_eq!(h["name"], name);
        assert_eq!(h["reachable"], true, "{h}");
        assert_eq!(h["enrollment"], "enrolled", "{h}");
        assert_eq!(h["token_label"], format!("hsm-kms-{name}"));
        assert_eq!(h["token"]["model"], "SoftHSM v2", "{h}");
        assert!(!h["token"]["serial"].as_str().unwrap().is_empty(), "{h}");
        assert!(
            h["token"]["firmware"].as_str().unwrap().contains('.'),
            "{h}"
        );
        assert!(h.get("error").is_none(), "{h}");
    }
    let (ok, table, _) = cli(&state, &["hsm", "list"]);
    assert!(
        ok && table.starts_with("HSM ") && table.contains("hsm-b"),
        "{table}"
    );

    // hsm probe: every step of a real round trip, timed, on both HSMs.
    let probe = cli_json(&state, &["hsm", "probe"]);
    assert_eq!(probe["ok"], true, "{probe}");
    for h in probe["hsms"].as_array().unwrap() {
        assert_eq!(h["ok"], true, "{h}");
        let steps: Vec<&str> = h["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        for needed in [
            "login",
            "random",
            "gcm encrypt+decrypt",
            "find cluster wrapping key",
        ] {
            assert!(steps.contains(&needed), "{h}");
        }
        assert!(h["total_ms"].as_f64().unwrap() > 0.0, "{h}");
        assert_eq!(h["enrollment"], "enrolled");
    }
    let one = cli_json(&state, &["hsm", "probe", "hsm-b"]);
    assert_eq!(one["hsms"].as_array().unwrap().len(), 1, "{one}");
    let (ok, _, err) = cli(&state, &["hsm", "probe", "hsm-z"]);
    assert!(!ok && err.contains("no HSM named 'hsm-z'"), "{err}");

    // keys list: every key of the metadata, with state and spec; filters.
    let keys = cli_json(&state, &["keys", "list"]);
    let by_id = |v: &Value, id: &str| -> Value {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_id(&keys, &k1)["state"], "Enabled", "{keys}");
    assert_eq!(by_id(&keys, &k1)["spec"], "SYMMETRIC_DEFAULT");
    assert_eq!(by_id(&keys, &k1)["account_id"], "111122223333");
    assert_eq!(by_id(&keys, &k1)["origin"], "AWS_KMS");
    assert_eq!(by_id(&keys, &k2)["state"], "Disabled", "{keys}");
    assert_eq!(by_id(&keys, &ec)["spec"], "ECC_NIST_P256");
    assert_eq!(by_id(&keys, &ec)["usage"], "SIGN_VERIFY");
    let disabled = cli_json(&state, &["keys", "list", "--state", "Disabled"]);
    let ids: Vec<&str> = disabled["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [k2.as_str()]);
    let other = cli_json(&state, &["keys", "list", "--account", "999999999999"]);
    assert_eq!(other["keys"], json!([]));
    let (ok, _, err) = cli(&state, &["keys", "list", "--state", "Bogus"]);
    assert!(!ok && err.contains("PendingDeletion"), "{err}");

    // While the service writes (keys created by 4 callers at once), the commands read and
    // write the same SQLite store (WAL, busy timeout): none fails, none blocks the service.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let c = client.with_credentials(root.clone(), None);
            tokio::spawn(async move {
                for _ in 0..5 {
                    assert_eq!(c.call("CreateKey", json!({})).await.status, 200);
                }
            })
        })
        .collect();
    let st = state.clone();
    let readers = tokio::task::spawn_blocking(move || {
        for _ in 0..4 {
            cli_json(&st, &["keys", "list"]);
            cli_json(&st, &["credentials", "list"]);
        }
    });
    for w in writers {
        w.await.unwrap();
    }
    readers.await.unwrap();
    let keys = cli_json(&state, &["keys", "list"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3 + 20, "{keys}");

    // keys show: the backing key is present in both tokens.
    let arn = by_id(&keys, &ec)["arn"].as_str().unwrap().to_string();
    let shown = cli_json(&state, &["keys", "show", &arn]);
    assert_eq!(shown["key"]["key_id"], ec.as_str(), "{shown}");
    assert_eq!(
        copies(&shown),
        json!({"hsm-a": "present", "hsm-b": "present"}),
        "{shown}"
    );
    assert_eq!(shown["backing"][0]["current"], true);
    let (ok, _, err) = cli(
        &state,
        &["keys", "show", "00000000-0000-0000-0000-000000000000"],
    );
    assert!(!ok && err.contains("no key"), "{err}");
    // … and by alias: its name (of the config's account, or of --account) or its ARN.
    let r = client
        .with_credentials(root.clone(), None)
        .call(
            "CreateAlias",
            json!({"AliasName": "alias/ops-signing", "TargetKeyId": ec}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for by in [
        "alias/ops-signing",
        "arn:aws:kms:us-east-1:111122223333:alias/ops-signing",
    ] {
        let shown = cli_json(&state, &["keys", "show", by]);
        assert_eq!(shown["key"]["key_id"], ec.as_str(), "{by}: {shown}");
    }
    let shown = cli_json(
        &state,
        &[
            "keys",
            "show",
            "alias/ops-signing",
            "--account",
            "111122223333",
        ],
    );
    assert_eq!(shown["key"]["key_id"], ec.as_str(), "{shown}");
    for (by, error) in [
        (
            vec!["alias/ops-signing", "--account", "999999999999"],
            "no alias alias/ops-signing in account 999999999999",
        ),
        (
            vec!["alias/none"],
            "no alias alias/none in account 111122223333",
        ),
        (vec!["ops-signing"], "neither a key id"),
        (
            vec!["arn:aws:kms:us-east-1:111122223333:thing/x"],
            "arn:aws:kms",
        ),
    ] {
        let mut args = vec!["keys", "show"];
        args.extend(by.iter().copied());
        let (ok, _, err) = cli(&state, &args);
        assert!(!ok && err.contains(error), "{by:?}: {err}");
    }

    // One copy destroyed in hsm-b: `keys show` reports it missing, `reconcile` too, and
    // `reconcile --fix` copies it back from hsm-a.
    let object = format!("kms/{k1}/1");
    assert_eq!(destroy_copy(&local_hsm(&state, "hsm-b"), &object), 1);
    let shown = cli_json(&state, &["keys", "show", &k1]);
    assert_eq!(
        copies(&shown),
        json!({"hsm-a": "present", "hsm-b": "missing"}),
        "{shown}"
    );
    assert_eq!(shown["backing"][0]["held_by"], json!(["hsm-a"]));
    let (ok, text, _) = cli(&state, &["keys", "show", &k1]);
    assert!(
        ok && text.contains("missing") && text.contains(&object),
        "{text}"
    );
    let report = cli_json(&state, &["reconcile"]);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(rows[1]["hsm"], "hsm-b");
    assert_eq!(rows[1]["missing"], json!([object]), "{report}");
    assert_eq!(rows[0]["missing"], json!([]), "{report}");
    let fixed = cli_json(&state, &["reconcile", "--fix"]);
    assert_eq!(fixed["copied"], 1, "{fixed}");
    // The command's copy reaches the running service's audit trail through the store: a
    // SynchronizeHsms service event naming the command, within a second or two.
    let audit = state.join("audit");
    let mut synced = Vec::new();
    let moved = eventually(5, || {
        synced = trail(&audit)
            .1
            .into_iter()
            .filter(|e| e["eventName"] == "SynchronizeHsms")
            .collect();
        !synced.is_empty()
    })
    .await;
    assert!(
        moved,
        "reconcile --fix's copy is not in the service's trail"
    );
    assert_eq!(synced.len(), 1, "{synced:?}");
    let e = &synced[0];
    assert_eq!(e["eventType"], "AwsServiceEvent", "{e}");
    assert_eq!(e["userIdentity"]["invokedBy"], "hsm-kms reconcile", "{e}");
    assert_eq!(e["sourceIPAddress"], "hsm-kms reconcile", "{e}");
    assert_eq!(e["serviceEventDetails"], json!({"copiesMade": 1}), "{e}");
    let hsms = e["additionalEventData"]["hsms"].as_array().unwrap();
    assert!(
        hsms.contains(&json!("hsm-b")),
        "the HSM it copied into: {e}"
    );
    assert_eq!(hsm_kms::audit::verify(&audit, None).unwrap().finding, None);
    let shown = cli_json(&state, &["keys", "show", &k1]);
    assert_eq!(
        copies(&shown),
        json!({"hsm-a": "present", "hsm-b": "present"}),
        "{shown}"
    );

    // credentials list: the root credential, never its secret (in JSON nor in the table).
    let creds = cli_json(&state, &["credentials", "list"]);
    let c = &creds["credentials"][0];
    assert_eq!(c["access_key_id"], root.access_key_id.as_str(), "{creds}");
    assert_eq!(c["account_id"], "111122223333");
    assert_eq!(c["principal_arn"], "arn:aws:iam::111122223333:root");
    assert_eq!(c["status"], "Active");
    let (ok, table, _) = cli(&state, &["credentials", "list"]);
    assert!(ok && table.contains(&root.access_key_id), "{table}");
    for text in [creds.to_string(), table] {
        assert!(!text.contains(&secret), "a listing shows the secret");
    }

    // credentials revoke: a new account's key works, is revoked while the service runs,
    // and is then refused over HTTP as an unknown key; the other credential still works.
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["account", "create", "444455556666", "--config"])
        .arg(state.join("config.toml"))
        .env("KMS_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    let exports = String::from_utf8_lossy(&out.stdout).into_owned();
    let export = |name: &str| {
        exports
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap()
            .to_string()
    };
    let akid = export("AWS_ACCESS_KEY_ID");
    let other = Client::new(
        url.clone(),
        hsm_kms::auth::Credential::new(
            akid.clone(),
            export("AWS_SECRET_ACCESS_KEY"),
            "444455556666",
            "arn",
        ),
    );
    let accepted = Instant::now();
    while other.call("ListKeys", json!({})).await.status != 200 {
        assert!(
            accepted.elapsed() < Duration::from_secs(3),
            "never accepted"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The account's root finds its key's creation by the CLI with `LookupEvents`, by the
    // key's id as the resource name.
    let mut seen = Value::Null;
    let by_key = json!({"LookupAttributes": [
        {"AttributeKey": "ResourceName", "AttributeValue": akid}]});
    for _ in 0..10 {
        seen = other.cloudtrail("LookupEvents", by_key.clone()).await.body;
        if seen["Events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        // LookupEvents allows 2 calls a second per account, as AWS does.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let event = &seen["Events"][0];
    assert_eq!(event["EventName"], "CreateAccessKey", "{seen}");
    assert_eq!(event["EventSource"], "iam.amazonaws.com", "{seen}");
    assert_eq!(
        event["Resources"],
        json!([{"ResourceType": "AWS::IAM::AccessKey", "ResourceName": akid}]),
        "{seen}"
    );
    let listed = cli_json(
        &state,
        &["credentials", "list", "--account", "444455556666"],
    );
    assert_eq!(
        listed["credentials"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["credentials"][0]["access_key_id"], akid.as_str());
    let revoked = cli_json(&state, &["credentials", "revoke", &akid]);
    assert_eq!(revoked["was_active"], true, "{revoked}");
    assert_eq!(revoked["status"], "Inactive");
    let at = Instant::now();
    let refused = loop {
        let r = other.call("ListKeys", json!({})).await;
        if r.status != 200 {
            break r;
        }
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "the running service still accepts a revoked key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!(
        "revoked key refused {} ms after revoke",
        at.elapsed().as_millis()
    );
    assert_eq!(
        (refused.status, refused.error_type()),
        (400, "UnrecognizedClientException"),
        "{}",
        refused.body
    );
    assert_eq!(client.call("ListKeys", json!({})).await.status, 200);
    let listed = cli_json(
        &state,
        &["credentials", "list", "--account", "444455556666"],
    );
    assert_eq!(listed["credentials"][0]["status"], "Inactive", "{listed}");
    let (ok, _, err) = cli(&state, &["credentials", "revoke", "AKIAUNKNOWN"]);
    assert!(!ok && err.contains("no access key AKIAUNKNOWN"), "{err}");

    // Both changes were made by the CLI, not by a call: the service found them in the
    // store and recorded each as an IAM service event in the key's account, named as the
    // IAM call that would have made it, the key as its resource, never its secret.
    let outside = |name: &str| -> Vec<Value> {
        trail(&audit)
            .1
            .into_iter()
            .filter(|e| {
                e["eventName"] == name
                    && e["eventType"] == "AwsServiceEvent"
                    && e["resources"][0]["ARN"] == akid.as_str()
            })
            .collect()
    };
    assert!(
        eventually(5, || !outside("UpdateAccessKey").is_empty()).await,
        "the CLI's revoke is not in the audit trail"
    );
    for (name, status) in [
        ("CreateAccessKey", "Active"),
        ("UpdateAccessKey", "Inactive"),
    ] {
        let found = outside(name);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        let e = &found[0];
        assert_eq!(e["eventSource"], "iam.amazonaws.com", "{e}");
        assert_eq!(e["recipientAccountId"], "444455556666", "{e}");
        assert_eq!(e["resources"][0]["type"], "AWS::IAM::AccessKey", "{e}");
        assert_eq!(e["resources"][0]["accountId"], "444455556666", "{e}");
        assert_eq!(
            e["serviceEventDetails"],
            json!({
                "accessKeyId": akid,
                "principalArn": "arn:aws:iam::444455556666:root",
                "status": status,
                "changedIn": "metadata store",
            }),
            "{e}"
        );
    }
    let secret_b = export("AWS_SECRET_ACCESS_KEY");
    assert!(
        !trail(&audit).0.contains(&secret_b),
        "a secret in the trail"
    );
    // The same changes made by IAM calls are their calls' records alone: the reload
    // (every 0.5 s) never records them a second time as changes from outside.
    let made = client.query_ok("iam", "CreateAccessKey", &[]).await;
    let api_key = made.value("AccessKeyId");
    client
        .query_ok(
            "iam",
            "UpdateAccessKey",
            &[("AccessKeyId", &api_key), ("Status", "Inactive")],
        )
        .await;
    client
        .query_ok("iam", "DeleteAccessKey", &[("AccessKeyId", &api_key)])
        .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let of_api_key: Vec<(String, String)> = trail(&audit)
        .1
        .into_iter()
        .filter(|e| e.to_string().contains(&api_key))
        .map(|e| {
            (
                e["eventName"].as_str().unwrap().to_string(),
                e["eventType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        of_api_key,
        [
            ("CreateAccessKey", "AwsApiCall"),
            ("UpdateAccessKey", "AwsApiCall"),
            ("DeleteAccessKey", "AwsApiCall"),
        ]
        .map(|(n, t)| (n.to_string(), t.to_string())),
        "records naming the key made by IAM calls"
    );

    // hsm-b's token folder gone: the probe reports hsm-b down with the module's CKR code
    // and exits 1; hsm-a still answers; `hsm list` says hsm-b is not reachable.
    let tokens = state.join("hsm/hsm-b/tokens");
    let moved = state.join("hsm/hsm-b/tokens.away");
    std::fs::rename(&tokens, &moved).unwrap();
    let (ok, out, err) = cli(&state, &["hsm", "probe", "--json"]);
    assert!(!ok, "a probe with a broken HSM succeeded: {out}{err}");
    let probe: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(probe["ok"], false);
    assert_eq!(probe["hsms"][0]["ok"], true, "{probe}");
    let b = &probe["hsms"][1];
    assert_eq!(b["ok"], false, "{probe}");
    assert_eq!(b["error"]["step"], "open", "{b}");
    assert_eq!(b["error"]["function"], "C_Initialize", "{b}");
    assert_eq!(b["error"]["ckr"], "CKR_GENERAL_ERROR", "{b}");
    assert_eq!(b["error"]["rv"], 5, "{b}");
    let (ok, text, _) = cli(&state, &["hsm", "probe"]);
    assert!(!ok && text.contains("CKR_GENERAL_ERROR"), "{text}");
    let list = cli_json(&state, &["hsm", "list"]);
    assert_eq!(list["hsms"][0]["reachable"], true, "{list}");
    assert_eq!(list["hsms"][1]["reachable"], false, "{list}");
    assert_eq!(
        list["hsms"][1]["error"]["ckr"], "CKR_GENERAL_ERROR",
        "{list}"
    );
    // keys show names the HSM it could not scan.
    let shown = cli_json(&state, &["keys", "show", &k1]);
    assert_eq!(
        copies(&shown),
        json!({"hsm-a": "present", "hsm-b": "unreachable"}),
        "{shown}"
    );
    // A PIN file that cannot be read is that HSM's failure, not the command's.
    std::fs::rename(&moved, &tokens).unwrap();
    let pin = state.join("hsm/hsm-a/user.pin");
    let pin_away = state.join("hsm/hsm-a/user.pin.away");
    std::fs::rename(&pin, &pin_away).unwrap();
    let (ok, out, _) = cli(&state, &["hsm", "probe", "--json"]);
    std::fs::rename(&pin_away, &pin).unwrap();
    let probe: Value = serde_json::from_str(&out).unwrap();
    assert!(!ok);
    assert_eq!(probe["hsms"][0]["error"]["step"], "config", "{probe}");
    assert_eq!(probe["hsms"][1]["ok"], true, "{probe}");

    real_binary::stop(&mut server.0);
    println!(
        "operator CLI test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
