//! Several accounts in one deployment (issue 13, part 1): `hsm-kms account create` run while
//! the real `hsm-kms serve` runs prints the new account root's credential as `export`
//! lines; the running service accepts it within a second; each account sees and uses only
//! its own keys (a bare key id never reaches another account's key); STS
//! GetCallerIdentity names the new account's root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// `hsm-kms account create ACCOUNT --config …`: (success, stdout, stderr).
fn account_create(state: &std::path::Path, account: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["account", "create", account, "--config"])
        .arg(state.join("config.toml"))
        .env("KMS_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn export(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .to_string()
}

/// Guard that stops the server this test started.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        real_binary::stop(&mut self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_created_while_the_service_runs_is_served_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var");
    real_binary::setup(&state);
    let (child, url) = real_binary::start(&state);
    let _server = Server(child);
    let a = Client::new(url.clone(), real_binary::credential(&state));
    let a_key = a.create_key(json!({})).await;

    let (ok, out, err) = account_create(&state, "444455556666");
    assert!(ok, "{out}{err}");
    assert!(err.contains("arn:aws:iam::444455556666:root"), "{err}");
    assert!(
        !err.contains("AWS_SECRET_ACCESS_KEY"),
        "the secret goes to stdout only"
    );
    let created = Instant::now();
    let b = Client::new(
        url.clone(),
        hsm_kms::auth::Credential::new(
            export(&out, "AWS_ACCESS_KEY_ID"),
            export(&out, "AWS_SECRET_ACCESS_KEY"),
            "444455556666",
            "arn",
        ),
    );
    let b_key = loop {
        let r = b.call("CreateKey", json!({})).await;
        if r.status == 200 {
            break r.body["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        }
        assert_eq!(r.error_type(), "UnrecognizedClientException", "{}", r.body);
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "the running service did not accept the new credential within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!(
        "new account served {} ms after it was created",
        created.elapsed().as_millis()
    );
    let d = b.ok("DescribeKey", json!({"KeyId": b_key})).await;
    assert_eq!(d["KeyMetadata"]["AWSAccountId"], "444455556666");
    assert!(d["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .contains(":444455556666:key/"));
    // Each account lists and uses only its own keys.
    let ids = |v: serde_json::Value| -> Vec<String> {
        v["Keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["KeyId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(b.ok("ListKeys", json!({})).await), vec![b_key.clone()]);
    assert!(!ids(a.ok("ListKeys", json!({})).await).contains(&b_key));
    let r = b
        .call("Encrypt", json!({"KeyId": a_key, "Plaintext": b64(b"x")}))
        .await;
    assert_eq!((r.status, r.error_type()), (400, "NotFoundException"));
    let ct = b
        .ok(
            "Encrypt",
            json!({"KeyId": b_key, "Plaintext": b64(b"for b")}),
        )
        .await["CiphertextBlob"]
        .clone();
    let r = a.call("Decrypt", json!({"CiphertextBlob": ct})).await;
    assert_ne!(r.status, 200, "account a decrypted account b's ciphertext");
    assert_eq!(
        unb64(&b.ok("Decrypt", json!({"CiphertextBlob": ct})).await["Plaintext"]),
        b"for b"
    );

    // STS (Query protocol) names the new account's root, as the aws CLI reads it.
    let id = Command::new("aws")
        .args(["sts", "get-caller-identity", "--endpoint-url", &url])
        .args(["--query", "[Account,Arn,UserId]", "--output", "text"])
        .env("AWS_ACCESS_KEY_ID", export(&out, "AWS_ACCESS_KEY_ID"))
        .env(
            "AWS_SECRET_ACCESS_KEY",
            export(&out, "AWS_SECRET_ACCESS_KEY"),
        )
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("the aws CLI (scripts/test.sh installs it)");
    let id = String::from_utf8_lossy(&id.stdout);
    assert_eq!(
        id.split_whitespace().collect::<Vec<_>>(),
        [
            "444455556666",
            "arn:aws:iam::444455556666:root",
            "444455556666"
        ],
        "{id}"
    );

    // An account is created once; an account id is 12 digits.
    let (ok, _, err) = account_create(&state, "444455556666");
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = account_create(&state, "4444");
    assert!(!ok && err.contains("12 digits"), "{err}");
}
