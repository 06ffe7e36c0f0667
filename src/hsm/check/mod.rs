//! `hsm-kms hsm check`: run, for real, on one or more PKCS#11 tokens, every operation the
//! service needs for every kind of key, and say per row what the token answered (the exact
//! return value, or OK), how long it took, and what the service will do with that token:
//! `native`, `fallback: <how>` or `refused: <key specs>`. That last column is not a list of
//! its own: each row tests one `Need`, the rows' outcomes make an `Offered` set, and
//! the column is what `needs::support` (the table the cluster itself uses at connect)
//! answers with and without that need.
//!
//! Objects: session objects (`CKA_TOKEN` false, label `hsm-kms-check-session`) wherever
//! possible, made with the service's own templates (`templates`, only `CKA_TOKEN` and the
//! label changed). Two rows need token objects (the SO's trusted wrapping key, and the key
//! whose handle must survive a logout); their labels start with `hsm-kms-check-`, and a
//! guard destroys them when the run ends, fails, panics or is cancelled (Ctrl-C/SIGTERM
//! stop the run between rows: [`cancel_on_signal`]); a run killed outright leaves them to
//! the next run, which removes them first.
//!
//! The rows live in `rows`, the verdict, matrix and JSON in `report`.

mod report;
mod rows;

use super::ceremony::SoPin;
use super::error::{HsmError, Operation};
use super::needs::{Need, Offered};
use cryptoki::error::Error as CkError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use zeroize::Zeroizing;

pub use report::{HsmReport, Report, Row};

/// One token to check.
pub struct Target {
    /// A name for the report (the HSM's name in the config, or the module's file name).
    pub name: String,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The slot by number (slots may renumber: prefer the label).
    pub slot: Option<u64>,
    /// The token by label (default: the only initialized token).
    pub token_label: Option<String>,
    /// The user PIN.
    pub pin: Option<Zeroizing<String>>,
    /// The SO PIN: the rows that need a key only the SO can make (a trusted wrapping key)
    /// run only with it.
    pub so_pin: Option<SoPin>,
    /// Environment set before the module's `C_Initialize` (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, String)>,
}

/// Bounds of the rows that measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads of the concurrent sessions row, each with its own session.
    pub threads: usize,
    /// AES-GCM round trips per thread in that row.
    pub ops_per_thread: usize,
    /// Session objects present while `C_FindObjects` is timed.
    pub find_objects: usize,
    /// Sessions opened at most by the session limit row.
    pub session_limit: usize,
    /// Sessions the service opens on one token (crypto and key generation workers, the
    /// probe and the anchor session).
    pub sessions_needed: usize,
}

impl Default for Options {
    fn default() -> Self {
        let c = super::ClusterOptions::default();
        Options {
            threads: 8,
            ops_per_thread: 50,
            find_objects: 200,
            session_limit: 256,
            sessions_needed: c.workers_per_hsm + c.keygen_workers_per_hsm + 2,
        }
    }
}

/// Set by Ctrl-C or SIGTERM once [`cancel_on_signal`] ran: the run stops before its next
/// row, its objects are destroyed and the report says it was cancelled.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Stop a running check (between rows) on Ctrl-C or SIGTERM instead of dying with token
/// objects left behind: a thread waits for either signal and sets the flag.
pub fn cancel_on_signal() -> Result<(), HsmError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HsmError::Internal(format!("signal runtime: {e}")))?;
    use tokio::signal::unix::{signal, SignalKind};
    // Both handlers are installed before this returns (a stream registers at creation).
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(|e| HsmError::Internal(format!("signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("hsm-check-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("hsm-kms: interrupted; destroying the check's objects");
            CANCELLED.store(true, Ordering::SeqCst);
        })
        .map_err(|e| HsmError::Internal(format!("spawn signal thread: {e}")))?;
    Ok(())
}

fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Check every target in turn (each module is finalized before the next is loaded) and
/// compare them. `progress` is told each row's id as it starts.
pub fn run(targets: &[Target], opts: &Options, progress: &mut dyn FnMut(&str, &str)) -> Report {
    let hsms = targets
        .iter()
        .map(|t| rows::check(t, opts, &mut |id| progress(&t.name, id)))
        .collect();
    Report::new(hsms)
}

/// How the service would read the return value of a failed call: its `CKR_` name, the
/// value and the function, as [`super::error::classify`] keeps them.
fn return_value(hsm: &str, e: CkError) -> (String, Option<u64>, Option<String>) {
    match HsmError::from_ck(hsm, Operation::Check, e) {
        HsmError::Pkcs11 {
            name, rv, function, ..
        } => (name, Some(rv), Some(function)),
        other => (other.to_string(), None, None),
    }
}

/// What a row found, before the service column is derived.
#[derive(Debug, Clone)]
enum Outcome {
    /// The call(s) succeeded.
    Ok,
    /// A call failed with this return value.
    Ck {
        name: String,
        rv: Option<u64>,
        function: Option<String>,
    },
    /// Something other than a return value went wrong (wrong data back, a missing file).
    Failed(String),
    /// Not run, and why.
    Skipped(String),
}

/// How a row without a [`Need`] turns into the service column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Tests a need: the column comes from `needs::support`.
    Need(Need),
    /// The token must refuse (a custody protection): refused is `native`, done is the
    /// named consequence.
    MustRefuse {
        /// What the service does when the token does not refuse.
        otherwise: &'static str,
        /// Whether a token that does not refuse can be a cluster member at all.
        critical: bool,
    },
    /// Success is `native`, failure the named consequence.
    Behaviour {
        /// What the service does when the token fails the row.
        otherwise: &'static str,
        /// Whether a token that fails the row can be a cluster member at all.
        critical: bool,
    },
    /// Connecting (module, token, login): a failure ends the check of this token with exit
    /// status 2.
    Connect,
    /// A measurement or a note.
    Info,
}

/// One row as run.
#[derive(Debug, Clone)]
struct Ran {
    id: String,
    check: String,
    kind: Kind,
    outcome: Outcome,
    /// Whether the token did what the service needs (`None`: skipped or informational).
    met: Option<bool>,
    ms: f64,
    note: String,
}

impl Ran {
    fn new(id: &str, check: &str, kind: Kind) -> Ran {
        Ran {
            id: id.to_string(),
            check: check.to_string(),
            kind,
            outcome: Outcome::Ok,
            met: None,
            ms: 0.0,
            note: String::new(),
        }
    }
}

/// The needs the rows showed the token meets: all, but those a row found unmet (a need no
/// row could test, e.g. without a trusted wrapping key, counts as met and is reported as
/// not checked).
fn offered_by(rows: &[Ran]) -> Offered {
    rows.iter()
        .fold(Offered::all(), |o, r| match (r.kind, r.met) {
            (Kind::Need(n), Some(false)) => o.with(n, false),
            _ => o,
        })
}

/// Time `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1000.0)
}
