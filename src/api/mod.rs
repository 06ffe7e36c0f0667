//! api layer (work in progress).
