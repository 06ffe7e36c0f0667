//! The KMS domain layer: value types parsed at the API edge, the encryption context and the
//! ciphertext blob format. (Key lifecycle and operations build on these.)
pub mod ciphertext;
pub mod context;
pub mod types;
