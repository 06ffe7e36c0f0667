//! The real binary, killed with SIGKILL right after acknowledging writes, loses nothing:
//! keys, aliases and credentials survive, and old ciphertexts still decrypt.

mod common;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn start(state: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["serve", "--config"])
        .arg(state.join("config.toml"))
        .env("KMS_LISTEN", "127.0.0.1:0")
        .env("KMS_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let l = lines.next().expect("server printed nothing").unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

fn credential(state: &std::path::Path) -> hsm_kms::auth::Credential {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_acknowledgement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["setup-local", "--state-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let (mut child, url) = start(dir.path());
    let c = Client::new(url, credential(dir.path()));
    let mut made = Vec::new();
    for i in 0..5 {
        let id = c.ok("CreateKey", json!({})).await["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_string();
        c.ok(
            "CreateAlias",
            json!({"AliasName": format!("alias/d{i}"), "TargetKeyId": id}),
        )
        .await;
        let blob = c
            .ok(
                "Encrypt",
                json!({"KeyId": id, "Plaintext": b64(b"durable")}),
            )
            .await["CiphertextBlob"]
            .clone();
        made.push((id, blob));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (mut child, url) = start(dir.path());
    let c = Client::new(url, credential(dir.path()));
    for (i, (id, blob)) in made.iter().enumerate() {
        let d = c
            .ok("DescribeKey", json!({"KeyId": format!("alias/d{i}")}))
            .await;
        assert_eq!(d["KeyMetadata"]["KeyId"], id.as_str());
        let p = c.ok("Decrypt", json!({"CiphertextBlob": blob})).await;
        assert_eq!(unb64(&p["Plaintext"]), b"durable");
    }
    unsafe_free_kill(&mut child);
}

fn unsafe_free_kill(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
