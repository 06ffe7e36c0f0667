//! The HSM layer: a cluster of ≥ 2 PKCS#11 tokens that each hold a copy of every key.
//! The only module that names cryptoki. Every PKCS#11 call runs on an HSM thread that owns
//! its session (a crypto or key generation worker, or the probe thread; never a tokio
//! worker), with a deadline, and no module is finalized while a call is inside it; object
//! handles come from a cache warmed at start (no `C_FindObjects` or `C_Login` on the request
//! path).
//!
//! Host-side encodings (SPKI, PKCS#8, ECDSA signatures, OAEP decoding) are not HSM code:
//! they live in `crate::pkix`.
//!
//! Modules, lowest first (each uses only modules above it in this list):
//!
//! | module | concern |
//! |---|---|
//! | `error` | [`HsmError`], [`classify`]: the only reader of PKCS#11 return values |
//! | `handles` | typed object classes, well-known `CKA_ID`s, the epoch-keyed handle cache |
//! | `kinds` | key kinds, pair specs, signature schemes, public keys (plain data) |
//! | `mechanisms` | pure builders of PKCS#11 mechanisms |
//! | `iv` | deterministic GCM IVs (SP 800-38D §8.2.1): durable fixed field ‖ counter |
//! | `templates` | pure builders of attribute templates |
//! | `needs` | what each kind of key needs of a token, and what the service does without it (the one capability table) |
//! | `capabilities` | [`Caps`]: what a token offers, probed at connect |
//! | `instance` | [`NodeConfig`]; one initialization of an HSM's module (login, warm-up) |
//! | `node` | one HSM's shared state: [`NodeState`], current instance, call gate, counters |
//! | `job` | what a job sees on a worker: session, handles, error recording |
//! | `aes`, `hmac`, `keypair` | operations per key family, and how each is copied |
//! | `import` | imported key material: unwrapped inside the token under an import wrapping key, checked to fit |
//! | `custody` | which custody protections a token enforces (probed with the user PIN) |
//! | `command` | the jobs as data (`Command`, replies, controls) and the one mapping onto the families; the health probe |
//! | `host` | an HSM served by a host process: the frames, the service's link, supervision |
//! | `worker` | the crypto, key generation and probe lanes: threads, bounded queues, deadlines, quarantine, span propagation; or the host link |
//! | `hosted` | the host process (`hsm-kms hsm-host`): one HSM served over stdin/stdout |
//! | `health` | monitor thread: probes, background re-initialization (a new host process for a hosted HSM) |
//! | `enrollment` | at connect: which HSMs are enrolled, the same-CWK proof, custody probe |
//! | `integrity` | check values of key copies; verify on first use per instance, quarantine |
//! | `replication` | generate → wrap → unwrap elsewhere → prove → destroy on failure; re-sync |
//! | `cluster` | [`HsmCluster`]: start-up, selection, failover, the public API |
//! | `vault` | `HsmCluster` as the domain's `KeyVault` port (`crate::kms::vault`) |
//! | `ceremony` | the SO enrollment ceremony: CWK generation and transport to a new token |
//! | `inspect` | the operator's look at one HSM from its own process: token info, a timed probe, object scans |
//! | `softhsm`, `bench` | local SoftHSM2 tokens; the layer-vs-raw benchmark |
//! | `check` | `hsm-kms hsm check`: every operation the service needs, run on a token, with what the service will do (from `needs`) |

mod aes;
mod capabilities;
mod command;
mod custody;
mod enrollment;
mod handles;
mod health;
mod hmac;
mod host;
mod hosted;
mod import;
mod instance;
mod integrity;
mod iv;
mod job;
mod keypair;
mod kinds;
mod mechanisms;
mod needs;
mod node;
mod replication;
mod templates;
mod worker;

pub mod bench;
pub mod ceremony;
pub mod check;
pub mod cluster;
pub mod error;
pub mod inspect;
mod vault;

pub mod softhsm;

pub use capabilities::Caps;
pub use cluster::{ClusterOptions, HsmCluster};
pub use error::{classify, HsmError};
pub use handles::CWK_ID;
pub use hosted::serve as serve_host;
pub use instance::{prepare_environment, NodeConfig};
pub use integrity::CHECK_LEN;
pub use kinds::{DataKeyPair, KeyKind, PairSpec, PairUse, Protections, SignScheme};
pub use mechanisms::IV_LEN;
pub use node::{HsmHealth, NodeState};
