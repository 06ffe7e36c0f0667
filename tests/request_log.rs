//! A failed call leaves a log line that names its request id (the `x-amzn-RequestId` the
//! client got) and its operation, and never the plaintext it carried. Its own test binary,
//! because it installs a process-wide subscriber.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `MakeWriter` that appends every formatted line to a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_logs_its_request_id_and_operation() {
    let buffer = Buffer::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("warn,hsm_kms=info")
            .with_ansi(false)
            .with_writer(buffer.clone())
            .finish(),
    )
    .expect("first subscriber of this test binary");
    let s = service().await;
    let c = &s.client;
    let secret = b64(b"do-not-log-this-plaintext");
    let r = c
        .call(
            "Encrypt",
            json!({"KeyId": "alias/no-such-alias", "Plaintext": secret}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_type(), "NotFoundException");
    let request_id = r.request_id.clone().expect("x-amzn-RequestId");
    s.running.stop().await;

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&request_id))
        .unwrap_or_else(|| panic!("no log line names request {request_id}:\n{log}"));
    assert!(line.contains("operation=Encrypt"), "{line}");
    assert!(line.contains("NotFoundException"), "{line}");
    assert!(
        !log.contains(&secret),
        "the plaintext reached the log:\n{log}"
    );
    assert!(!log.contains("do-not-log-this-plaintext"));
}
