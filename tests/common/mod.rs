//! Shared test fixtures: fresh SoftHSM2 tokens in a temporary folder per test.
#![allow(dead_code)]

use hsm_kms::hsm::softhsm::{self, LocalHsm};
use hsm_kms::hsm::{ClusterOptions, HsmCluster};
use std::time::Duration;

/// Two (or more) fresh tokens; the folder is removed when this is dropped.
pub struct Tokens {
    pub dir: tempfile::TempDir,
    pub hsms: Vec<LocalHsm>,
}

pub fn tokens(names: &[&str]) -> Tokens {
    let dir = tempfile::tempdir().expect("temp dir");
    let hsms = names
        .iter()
        .map(|n| softhsm::provision(&dir.path().join("hsm"), n).expect("provision token"))
        .collect();
    Tokens { dir, hsms }
}

pub fn fast_options() -> ClusterOptions {
    ClusterOptions {
        call_timeout: Duration::from_millis(1500),
        probe_interval: Duration::from_millis(200),
        ..ClusterOptions::default()
    }
}

pub fn connect(t: &Tokens, opts: ClusterOptions) -> HsmCluster {
    HsmCluster::connect(
        t.hsms.iter().map(|h| h.node_config().unwrap()).collect(),
        opts,
    )
    .expect("cluster connects")
}

/// Poll `f` until it is true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
