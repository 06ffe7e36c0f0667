//! The HSM layer: a cluster of ≥ 2 PKCS#11 tokens that each hold a copy of every key.
//! The only module that names cryptoki. Every PKCS#11 call runs on an HSM worker thread
//! that owns its session (never on a tokio worker), with a deadline; object handles come
//! from a cache warmed at start (no `C_FindObjects` or `C_Login` on the request path).

mod asym;
pub mod bench;
pub mod cluster;
pub mod error;
mod node;
mod ops;
mod vault;

pub mod softhsm;

pub use asym::{Caps, KeyKind, PairSpec, PairUse, SignScheme};
pub use cluster::{ClusterOptions, HsmCluster, CWK_ID};
pub use error::{classify, FailureClass, HsmError};
pub use ops::IV_LEN;

use std::path::PathBuf;
use zeroize::Zeroizing;

/// How to reach one HSM.
#[derive(Clone)]
pub struct NodeConfig {
    /// Name used in logs, health and errors.
    pub name: String,
    /// PKCS#11 module path; each HSM needs its own module instance (a copy of the file
    /// for SoftHSM2, or one p11-kit client per server).
    pub module: PathBuf,
    /// Token label (never a slot number: slots renumber).
    pub token_label: String,
    /// User PIN.
    pub pin: Zeroizing<String>,
    /// Environment set just before this module's `C_Initialize` (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("env", &self.env)
            .finish()
    }
}

/// Health of one HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum NodeState {
    /// Answering probes and requests.
    Healthy = 0,
    /// A call failed or overran; a probe is under way. Still used if nothing better exists.
    Suspect = 1,
    /// Not used; re-initialized in the background until it answers again.
    Down = 2,
    /// Not retried (e.g. the token refused the PIN): needs an operator.
    Failed = 3,
}

impl NodeState {
    fn from_u8(v: u8) -> NodeState {
        match v {
            0 => NodeState::Healthy,
            1 => NodeState::Suspect,
            2 => NodeState::Down,
            _ => NodeState::Failed,
        }
    }
}

/// A health report line for one HSM.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HsmHealth {
    pub name: String,
    pub state: NodeState,
    pub in_flight: usize,
    pub login_epoch: Option<u64>,
    pub cached_handles: usize,
    /// `C_FindObjects` calls made after start-up (handle-cache misses).
    pub request_finds: u64,
    pub reinitializations: u64,
    pub last_error: Option<String>,
}
