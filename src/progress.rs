//! Progress of long jobs (token population, enrollment copies, reconciliation, scans of
//! many keys), reported through [`Progress`]: the jobs in `hsm`, `kms` and `ops` call it,
//! and only the command line implements it with bars (`src/cli`, indicatif). Jobs run
//! without one get [`Silent`].

/// What a long job says about itself as it goes.
pub trait Progress: Send {
    /// A new stage named `what`, of `total` steps (0: unknown); ends the previous stage.
    fn stage(&mut self, what: &str, total: u64);
    /// `n` more steps of the current stage done.
    fn advance(&mut self, n: u64);
    /// The current stage is over.
    fn finish(&mut self) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn stage(&mut self, _what: &str, _total: u64) {}
    fn advance(&mut self, _n: u64) {}
}
