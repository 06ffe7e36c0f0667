//! HMAC keys (`CKK_GENERIC_SECRET`): generation, HMAC of a message, and how an HMAC key is
//! copied to another HSM (wrapped under the cluster wrapping key, then proven by
//! reproducing a MAC).

use super::aes;
use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::job::WorkerCtx;
use super::kinds::Secret;
use super::mechanisms;
use super::templates;
use crate::pkix::Hash;
use cryptoki::mechanism::{Mechanism, MechanismType};

/// Generate an HMAC token key of `len` bytes.
pub(super) fn generate(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    len: usize,
) -> Result<(), HsmError> {
    let hsm = ctx.hsm().to_string();
    ctx.caps().require(
        &hsm,
        MechanismType::GENERIC_SECRET_KEY_GEN,
        "CKM_GENERIC_SECRET_KEY_GEN",
    )?;
    let k = ctx
        .session()
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &templates::generated_hmac_key(id, label, len),
        )
        .map_err(|e| ctx.err(Operation::GenerateKey, e))?;
    ctx.remember(ObjectKind::Secret, id, k);
    Ok(())
}

/// HMAC of `msg` with the secret key `id`.
pub(super) fn hmac(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    h: Hash,
    msg: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let m = mechanisms::hmac(h);
    ctx.with_key(Operation::Hmac, ObjectKind::Secret, id, |s, k| {
        s.sign(&m, k, msg)
    })
}

/// The HMAC mechanism that proves an HMAC key of `len` bytes.
fn hmac_for_len(len: usize) -> Hash {
    match len {
        0..=28 => Hash::Sha224,
        29..=32 => Hash::Sha256,
        33..=48 => Hash::Sha384,
        _ => Hash::Sha512,
    }
}

/// Wrapped HMAC key, a random message and its MAC (the copy must reproduce it).
pub(super) type HmacTransfer = (Secret, Vec<u8>, Vec<u8>);

/// Source side of a copy: wrap the key and MAC a random message with it.
pub(super) fn export(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    len: usize,
) -> Result<HmacTransfer, HsmError> {
    let wrapped = aes::wrap_secret(ctx, CWK_ID, id)?;
    let msg = ctx.random(32)?;
    let mac = hmac(ctx, id, hmac_for_len(len), &msg)?;
    Ok((wrapped.into(), msg, mac))
}

/// Receiving side: unwrap the key and reproduce the MAC with the copy.
pub(super) fn install(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    len: usize,
    (wrapped, msg, mac): &HmacTransfer,
) -> Result<(), HsmError> {
    aes::unwrap_secret(ctx, CWK_ID, wrapped, id, &templates::hmac_key(id, label))?;
    if &hmac(ctx, id, hmac_for_len(len), msg)? != mac {
        return Err(HsmError::Internal(format!(
            "{}: replicated HMAC key failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}
