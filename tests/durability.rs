//! The real binary, killed with SIGKILL right after acknowledging writes, loses nothing:
//! keys, aliases and credentials survive, and old ciphertexts still decrypt.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::real_binary::{credential, start};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_acknowledgement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    common::real_binary::setup(dir.path());
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
    common::real_binary::stop(&mut child);
}
