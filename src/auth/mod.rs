//! auth layer (work in progress).
