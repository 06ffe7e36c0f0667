//! Enrollment of the cluster wrapping key (CWK) at connect: the first HSM that holds it (or
//! HSM 0, which then generates it) sends it to every HSM lacking it by RSA-OAEP transport
//! into a key pair generated inside the receiving token (its private half never leaves
//! it); then every HSM proves it holds the same key by unwrapping and using a throw-away
//! key wrapped on HSM 0.

use super::aes::{self, PROOF_AAD};
use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::job::WorkerCtx;
use super::mechanisms;
use super::templates;
use super::worker::Pool;
use crate::pkix::Hash;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use std::sync::Arc;
use std::time::Duration;

/// Key transport uses OAEP with SHA-1: SoftHSM 2.6.1 refuses OAEP with SHA-256
/// (`CKR_ARGUMENTS_BAD`, hsm-facts.md §2.1). Flip when every token of a cluster accepts it.
const TRANSPORT_OAEP_SHA256: bool = false;

/// `CKA_ID` of the throw-away key of the enrollment proof.
const PROOF_ID: &[u8] = b"hsm-kms/cwk-proof";

/// RSA-OAEP parameters for key transport (see [`TRANSPORT_OAEP_SHA256`]).
fn transport_mechanism() -> Mechanism<'static> {
    mechanisms::oaep(if TRANSPORT_OAEP_SHA256 {
        Hash::Sha256
    } else {
        Hash::Sha1
    })
}

/// Make sure every HSM of `hsms` holds the same cluster wrapping key (blocking; each step
/// has deadline `t`).
pub(super) fn enroll(hsms: &[Pool], t: Duration) -> Result<(), HsmError> {
    let Some(first) = hsms.first() else {
        return Err(no_hsms());
    };
    let holds_cwk = |p: &Pool| p.node().has_object(ObjectKind::Secret, CWK_ID);
    let (source_index, source) = match hsms.iter().enumerate().find(|(_, p)| holds_cwk(p)) {
        Some(found) => found,
        None => {
            first.call_blocking(t, |ctx| {
                let h = ctx
                    .session()
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &templates::cluster_wrapping_key(true),
                    )
                    .map_err(|e| ctx.err(Operation::GenerateKey, e))?;
                ctx.remember(ObjectKind::Secret, CWK_ID, h);
                Ok(())
            })?;
            tracing::info!(hsm = %first.node().name(), "generated the cluster wrapping key");
            (0, first)
        }
    };
    for (i, pool) in hsms.iter().enumerate() {
        if i == source_index || holds_cwk(pool) {
            continue;
        }
        let tid = format!("hsm-kms/transport/{}", uuid::Uuid::new_v4()).into_bytes();
        let tid2 = tid.clone();
        let (n, e) = pool.call_blocking(t, move |ctx| transport_keypair(ctx, &tid2))?;
        let wrapped =
            source.call_blocking(t, move |ctx| wrap_for_transport(ctx, CWK_ID, &n, &e))?;
        pool.call_blocking(t, move |ctx| unwrap_from_transport(ctx, &tid, &wrapped))?;
        tracing::info!(from = %source.node().name(), to = %pool.node().name(), "cluster wrapping key enrolled");
    }
    prove(hsms, t)
}

/// Enrollment of an empty list of HSMs (the cluster refuses to start with fewer than two).
fn no_hsms() -> HsmError {
    HsmError::Internal("cluster wrapping key enrollment: no HSMs".into())
}

/// Proof: a throw-away key wrapped on HSM 0 unwraps and decrypts on every other HSM.
fn prove(hsms: &[Pool], t: Duration) -> Result<(), HsmError> {
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

/// Step 1 (receiving HSM): generate an RSA-2048 transport pair whose private half never
/// leaves the token; return the public modulus and exponent.
fn transport_keypair(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HsmError> {
    let (pub_t, priv_t) = templates::transport_pair(id);
    let (pubh, privh) = ctx
        .session()
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t)
        .map_err(|e| ctx.err(Operation::KeyTransport, e))?;
    ctx.remember(ObjectKind::Public, id, pubh);
    ctx.remember(ObjectKind::Private, id, privh);
    let attrs = ctx
        .session()
        .get_attributes(
            pubh,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .map_err(|e| ctx.err(Operation::KeyTransport, e))?;
    let mut n = Vec::new();
    let mut e = Vec::new();
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    Ok((n, e))
}

/// Step 2 (sending HSM): wrap a secret key under the receiver's RSA public key.
fn wrap_for_transport(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    modulus: &[u8],
    exponent: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let k = ctx.handle(ObjectKind::Secret, key)?;
    let pubh = ctx
        .session()
        .create_object(&templates::transport_public(modulus, exponent))
        .map_err(|e| ctx.err(Operation::KeyTransport, e))?;
    let r = ctx.session().wrap_key(&transport_mechanism(), pubh, k);
    let _ = ctx.session().destroy_object(pubh);
    r.map_err(|e| ctx.err(Operation::KeyTransport, e))
}

/// Step 3 (receiving HSM): unwrap the cluster wrapping key with the transport private key,
/// then destroy the transport pair.
fn unwrap_from_transport(
    ctx: &mut WorkerCtx<'_>,
    transport_id: &[u8],
    wrapped: &[u8],
) -> Result<ObjectHandle, HsmError> {
    let template = templates::cluster_wrapping_key(false);
    let r = ctx.with_key(
        Operation::KeyTransport,
        ObjectKind::Private,
        transport_id,
        |s, p| s.unwrap_key(&transport_mechanism(), p, wrapped, &template),
    );
    let _ = ctx.destroy(ObjectKind::Private, transport_id);
    let _ = ctx.destroy(ObjectKind::Public, transport_id);
    let h = r?;
    ctx.remember(ObjectKind::Secret, CWK_ID, h);
    Ok(h)
}
