//! hsm-kms: an AWS KMS JSON 1.1 compatible key management service whose keys live only
//! inside PKCS#11 tokens (at least two, each holding a copy of every key).
//!
//! ```text
//! aws CLI / SDK ──HTTP, SigV4──► api (axum: X-Amz-Target dispatch, JSON, errors)
//!                                  └─► kms (domain: key states, ciphertext format, aliases)
//!                                        ├─► store (SQLite metadata only)
//!                                        ├─► hsm (cluster of ≥2 PKCS#11 tokens)
//!                                        └─► audit (the CloudTrail record of every call)
//! ```
//! Layers run one way: `api → kms → {hsm, store}`. Only `hsm` names cryptoki. `client` is
//! the other side of the wire (`hsm-kms bench`, `hsm-kms envelope`): it uses only `auth`'s
//! signer and the HTTP API, never the service's internals.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod fsutil;
pub mod hsm;
pub mod kms;
pub mod ops;
pub mod pkix;
pub mod progress;
pub mod store;
