//! store layer (work in progress).
