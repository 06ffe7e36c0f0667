//! kms layer (work in progress).
