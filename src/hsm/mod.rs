//! hsm layer (work in progress).
