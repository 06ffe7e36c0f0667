//! The `hsm-kms` binary (work in progress).
fn main() {}
