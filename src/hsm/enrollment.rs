//! Enrollment as the service sees it at connect: which HSMs hold the cluster wrapping key
//! (CWK) that the SO ceremony ([`super::ceremony`]) put there. The service never enrolls a
//! token itself: one lacking the CWK is reported (`not_enrolled`) and never used. The
//! enrolled HSMs then prove they hold the same key (a throw-away key wrapped on one
//! unwraps and decrypts on every other), and each is probed for the custody protections it
//! enforces ([`super::custody`]).
//!
//! An HSM that could not be opened at start (down, or failed) is neither enrolled nor not
//! enrolled: the start goes on with the others (at least one enrolled HSM is needed to
//! start, two to create keys), and when it answers again [`admit`] decides, on its monitor
//! thread: lacking the CWK it is not enrolled; holding it, it must prove it is the same
//! key as a proven HSM's (and is probed for custody) before it is used.

use super::aes::AesTransfer;
use super::command::Command;
use super::error::HsmError;
use super::handles::{ObjectKind, CWK_ID};
use super::health::{self, Admission};
use super::node::NodeState;
use super::worker::Pool;
use std::time::Duration;

/// `CKA_ID` of the throw-away key of the enrollment proof.
const PROOF_ID: &[u8] = b"hsm-kms/cwk-proof";

/// Among the HSMs opened at start, mark those lacking the cluster wrapping key as not
/// enrolled, prove the others hold the same key and probe their custody protections
/// (blocking; each step has deadline `t`); they are then [proven](super::node::Node::proven).
/// HSMs that could not be opened (down or failed) are left to [`admit`]. At least one
/// enrolled HSM must have opened: it serves the keys it holds (creating a key needs
/// `min_copies` of them).
pub(super) fn check(hsms: &[Pool], t: Duration) -> Result<(), HsmError> {
    let (opened, unopened): (Vec<&Pool>, Vec<&Pool>) = hsms
        .iter()
        .partition(|p| p.node().state() == NodeState::Healthy);
    let mut enrolled = Vec::new();
    let mut strangers = Vec::new();
    for p in opened {
        if has_cwk(p, t)? {
            enrolled.push(p);
        } else {
            strangers.push(p);
        }
    }
    for p in &strangers {
        p.node().set_state(NodeState::NotEnrolled);
        tracing::warn!(
            hsm = %p.node().name(),
            "this token does not hold the cluster wrapping key, so it is not used; \
             enroll it with `hsm-kms hsm enroll {}`",
            p.node().name()
        );
    }
    if enrolled.is_empty() {
        let reasons: Vec<String> = unopened
            .iter()
            .map(|p| match p.report().last_error {
                Some(e) => e,
                None => format!("{}: cannot be opened", p.node().name()),
            })
            .collect();
        return Err(HsmError::Setup {
            hsm: "cluster".into(),
            message: format!(
                "0 of {} HSMs are enrolled (hold the cluster wrapping key) and could be opened; \
                 at least one is needed to start, two to create keys: run `hsm-kms hsm enroll \
                 NAME` for each (`hsm-kms setup-local` enrolls local lab tokens){}",
                hsms.len(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!("; could not be opened: {}", reasons.join("; "))
                }
            ),
        });
    }
    prove(&enrolled, PROOF_ID, t)?;
    for p in &enrolled {
        let found = p.call_blocking(t, Command::CustodyProbe)?;
        report_protections(p, found);
        p.node().set_proven();
    }
    if enrolled.len() < 2 {
        tracing::warn!(
            enrolled = enrolled.len(),
            configured = hsms.len(),
            "starting with a single usable HSM: it serves the keys it holds; creating keys \
             needs two until another HSM is back"
        );
    }
    Ok(())
}

/// Log and record the custody protections `found` on the HSM of `p`.
fn report_protections(p: &Pool, found: super::kinds::Protections) {
    let missing = found.missing();
    if missing.is_empty() {
        tracing::info!(hsm = %p.node().name(), "custody protections enforced by the token");
    } else {
        tracing::warn!(
            hsm = %p.node().name(),
            missing = %missing.join(", "),
            "this token does not enforce every custody protection: key material may be \
             exportable with its user PIN"
        );
    }
    p.node().set_protections(found);
}

/// The admission check of an HSM that answers again (see [`health::Admit`]), comparing it
/// with `peers` (the other HSMs of the cluster); each step has deadline `t`.
pub(super) fn admitter(peers: Vec<Pool>, t: Duration) -> health::Admit {
    Box::new(move |pool| admit(pool, &peers, t))
}

/// Decide whether the HSM of `pool`, whose new module instance answers probes, may be used:
///
/// * proven before (in this process): if its token still shows the cluster wrapping key
///   (a token restored only in part may not, yet: it is tried again);
/// * never proven (it could not be opened at start): without the cluster wrapping key it is
///   not enrolled; with it, a throw-away key wrapped on a proven usable HSM must unwrap and
///   decrypt there (else it holds a different key: refused), and its custody protections
///   are probed. With no proven usable HSM to compare with, it waits.
pub(super) fn admit(pool: &Pool, peers: &[Pool], t: Duration) -> Admission {
    let node = pool.node();
    let has_cwk = match has_cwk(pool, t) {
        Ok(b) => b,
        Err(e) => return Admission::Later(e),
    };
    if node.proven() {
        return if has_cwk {
            Admission::Admitted
        } else {
            Admission::Later(HsmError::Setup {
                hsm: node.name().to_string(),
                message: "the token answers but does not show the cluster wrapping key".into(),
            })
        };
    }
    if !has_cwk {
        return Admission::NotEnrolled;
    }
    let Some(peer) = peers
        .iter()
        .find(|p| p.node().proven() && p.node().usable())
    else {
        return Admission::Later(HsmError::Setup {
            hsm: node.name().to_string(),
            message: "no proven HSM is usable to prove the cluster wrapping key against".into(),
        });
    };
    // A proof key of its own: admissions of two HSMs may use the same peer at once.
    let proof_id = [PROOF_ID, b"/", node.name().as_bytes()].concat();
    match prove(&[peer, pool], &proof_id, t) {
        Ok(()) => {}
        Err(e @ HsmError::Setup { .. }) => return Admission::Refused(e),
        Err(e) => return Admission::Later(e),
    }
    match pool.call_blocking(t, Command::CustodyProbe) {
        Ok(found) => report_protections(pool, found),
        Err(e) => return Admission::Later(e),
    }
    node.set_proven();
    tracing::info!(hsm = %node.name(), "HSM proven: it holds the cluster wrapping key");
    Admission::Admitted
}

/// Enrollment of an empty list of HSMs (the cluster refuses to start with fewer than two).
fn no_hsms() -> HsmError {
    HsmError::Internal("cluster wrapping key enrollment: no HSMs".into())
}

/// Whether the token of `p` holds the cluster wrapping key (its handle cache knows it).
fn has_cwk(p: &Pool, t: Duration) -> Result<bool, HsmError> {
    p.call_blocking(
        t,
        Command::Holds {
            kind: ObjectKind::Secret,
            id: CWK_ID.to_vec(),
        },
    )
}

/// Proof: a throw-away session key (`CKA_ID` `proof_id`) wrapped on HSM 0 unwraps and
/// decrypts on every other HSM.
fn prove(hsms: &[&Pool], proof_id: &[u8], t: Duration) -> Result<(), HsmError> {
    let Some((first, others)) = hsms.split_first() else {
        return Err(no_hsms());
    };
    let proof: AesTransfer = first.call_blocking(
        t,
        Command::ProofMake {
            id: proof_id.to_vec(),
        },
    )?;
    for pool in others {
        let () = pool.call_blocking(
            t,
            Command::ProofCheck {
                id: proof_id.to_vec(),
                proof: proof.clone(),
            },
        )?;
    }
    Ok(())
}
