//! The KMS domain layer: value types parsed at the API edge, the encryption context and the
//! ciphertext blob format, the stored key documents, and `Kms` with one method per operation.
pub mod audit;
pub mod ciphertext;
pub mod context;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod iam;
pub(crate) mod internal_keys;
pub mod lookup;
pub mod marker;
pub mod model;
pub mod operation;
pub mod policy;
pub mod requests;
pub mod service;
pub mod types;
pub mod vault;

pub use error::KmsError;
pub use requests::{DataKeySize, Request};
pub use service::{
    CallEnv, Kms, Output, ReconcileReport, ReconcileRow, Reply, Resolved, ON_DEMAND_ROTATION_LIMIT,
    ORPHAN_GRACE,
};
pub use service::{
    DataKeyPairOutput, DeriveSharedSecretOutput, GenerateMacOutput, GetPublicKeyOutput, SignOutput,
    VerifyMacOutput, VerifyOutput,
};
