//! Enrollment as the service sees it at connect: which HSMs hold the cluster wrapping key
//! (CWK) that the SO ceremony ([`super::ceremony`]) put there. The service never enrolls a
//! token itself: one lacking the CWK is reported (`not_enrolled`) and never used. The
//! enrolled HSMs then prove they hold the same key (a throw-away key wrapped on one
//! unwraps and decrypts on every other), and each is probed for the custody protections it
//! enforces ([`super::custody`]).

use super::aes::{self, PROOF_AAD};
use super::custody;
use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::mechanisms;
use super::node::NodeState;
use super::templates;
use super::worker::Pool;
use cryptoki::mechanism::Mechanism;
use std::sync::Arc;
use std::time::Duration;

/// `CKA_ID` of the throw-away key of the enrollment proof.
const PROOF_ID: &[u8] = b"hsm-kms/cwk-proof";

/// Mark the HSMs lacking the cluster wrapping key as not enrolled, prove the others hold the
/// same key and probe their custody protections (blocking; each step has deadline `t`).
/// At least two HSMs must be enrolled.
pub(super) fn check(hsms: &[Pool], t: Duration) -> Result<(), HsmError> {
    let (enrolled, strangers): (Vec<&Pool>, Vec<&Pool>) = hsms
        .iter()
        .partition(|p| p.node().has_object(ObjectKind::Secret, CWK_ID));
    for p in &strangers {
        p.node().set_state(NodeState::NotEnrolled);
        tracing::warn!(
            hsm = %p.node().name(),
            "this token does not hold the cluster wrapping key, so it is not used; \
             enroll it with `hsm-kms hsm enroll {}`",
            p.node().name()
        );
    }
    if enrolled.len() < 2 {
        return Err(HsmError::Setup {
            hsm: "cluster".into(),
            message: format!(
                "{} of {} HSMs are enrolled (hold the cluster wrapping key); at least two are \
                 needed: run `hsm-kms hsm enroll NAME` for each (`hsm-kms setup-local` enrolls \
                 local lab tokens)",
                enrolled.len(),
                hsms.len()
            ),
        });
    }
    prove(&enrolled, t)?;
    for p in &enrolled {
        let found = p.call_blocking(t, custody::probe)?;
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
    Ok(())
}

/// Enrollment of an empty list of HSMs (the cluster refuses to start with fewer than two).
fn no_hsms() -> HsmError {
    HsmError::Internal("cluster wrapping key enrollment: no HSMs".into())
}

/// Proof: a throw-away key wrapped on HSM 0 unwraps and decrypts on every other HSM.
fn prove(hsms: &[&Pool], t: Duration) -> Result<(), HsmError> {
    let Some((first, others)) = hsms.split_first() else {
        return Err(no_hsms());
    };
    let proof = first.call_blocking(t, |ctx| {
        let h = ctx
            .session()
            .generate_key(
                &Mechanism::AesKeyGen,
                &templates::session_aes(PROOF_ID, true),
            )
            .map_err(|e| ctx.err(Operation::GenerateKey, e))?;
        ctx.remember(ObjectKind::Secret, PROOF_ID, h);
        let r = (|| {
            let wrapped = aes::wrap_secret(ctx, CWK_ID, PROOF_ID)?;
            let pt = ctx.random(32)?;
            let (iv, ct) = aes::gcm_encrypt(ctx, PROOF_ID, PROOF_AAD, &pt)?;
            Ok((wrapped, iv, pt, ct))
        })();
        let _ = ctx.destroy(ObjectKind::Secret, PROOF_ID);
        r
    })?;
    let proof = Arc::new(proof);
    for pool in others {
        let p = proof.clone();
        let hsm = pool.node().name().to_string();
        pool.call_blocking(t, move |ctx| {
            let (wrapped, iv, pt, ct) = &*p;
            let h = ctx.with_key(Operation::UnwrapKey, ObjectKind::Secret, CWK_ID, |s, w| {
                s.unwrap_key(
                    &mechanisms::key_wrap(),
                    w,
                    wrapped,
                    &templates::session_aes(PROOF_ID, false),
                )
            });
            let different = |hsm: String| HsmError::Setup {
                hsm,
                message: "holds a different cluster wrapping key than the other HSMs".into(),
            };
            let h = h.map_err(|_| different(hsm.clone()))?;
            ctx.remember(ObjectKind::Secret, PROOF_ID, h);
            let back = aes::gcm_decrypt(ctx, PROOF_ID, iv, PROOF_AAD, ct);
            let _ = ctx.destroy(ObjectKind::Secret, PROOF_ID);
            match back {
                Ok(b) if b.as_slice() == pt.as_slice() => Ok(()),
                _ => Err(different(hsm)),
            }
        })?;
    }
    Ok(())
}
