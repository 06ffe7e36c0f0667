//! HSM jobs run inside the caller's tracing span: a log line emitted on an HSM worker
//! thread carries the span (and so the fields) that was current when the job was
//! submitted. Its own test binary, because it installs a process-wide subscriber.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
use hsm_kms::hsm::HsmError;
use std::sync::{Arc, Mutex};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use zeroize::Zeroizing;

/// One event: the thread it was emitted on, and the name and field names of every span
/// of its scope.
type Seen = (String, Vec<(String, Vec<String>)>);

struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S> Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|s| {
                        let fields = s.fields().iter().map(|f| f.name().to_string()).collect();
                        (s.name().to_string(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.0.lock().unwrap().push((thread, spans));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_of_hsm_jobs_carry_the_callers_span() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Capture(seen.clone())),
    )
    .expect("first subscriber of this test binary");
    let t = tokens(&["a", "b"]);
    // In process: a hosted HSM's log lines are written by its own process (on the
    // service's stderr, with the HSM's name), outside the caller's span.
    let c = connect(&t, in_process_options());
    let id = b"span-key".to_vec();
    c.create_aes_key(&id, "span").await.unwrap();
    let (iv, ct) = c
        .encrypt(&id, b"aad".to_vec(), Zeroizing::new(b"x".to_vec()))
        .await
        .unwrap();
    // A wrong AAD: the worker logs how it read the return value, inside the job.
    let span = tracing::info_span!("request", request_id = "req-7", operation = "Decrypt");
    let e = c
        .decrypt(&id, iv, b"other".to_vec(), ct)
        .instrument(span)
        .await
        .unwrap_err();
    assert!(matches!(e, HsmError::InvalidCiphertext), "{e}");
    let seen = seen.lock().unwrap();
    let on_worker: Vec<_> = seen
        .iter()
        .filter(|(thread, _)| thread.starts_with("hsm-") && thread.contains("-w"))
        .collect();
    assert!(
        on_worker
            .iter()
            .any(|(_, spans)| spans.iter().any(|(name, fields)| {
                name == "request"
                    && fields.contains(&"request_id".to_string())
                    && fields.contains(&"operation".to_string())
            })),
        "no worker-thread event inside the caller's span: {on_worker:?}"
    );
}
