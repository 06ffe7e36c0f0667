//! AES keys: AES-256-GCM encryption and decryption with AAD (IV drawn from the HSM), AES key
//! generation, wrapping and unwrapping of secret keys under an AES key (AES-KEY-WRAP-PAD),
//! and how an AES key is copied to another HSM (wrapped under the cluster wrapping key, then
//! proven by a GCM round trip).

use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::job::WorkerCtx;
use super::kinds::Secret;
use super::mechanisms::{self, IV_LEN};
use super::templates;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use zeroize::Zeroizing;

/// AAD of the GCM round trips that prove a copied AES key.
pub(super) const PROOF_AAD: &[u8] = b"hsm-kms replication proof";

/// AES-256-GCM encrypt with a fresh IV drawn from the HSM; returns (IV, ciphertext ‖ tag).
pub(super) fn gcm_encrypt(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
    let iv = ctx.next_iv()?;
    let ct = gcm_encrypt_with(ctx, key, iv, aad, plaintext)?;
    Ok((iv, ct))
}

/// AES-256-GCM encrypt with the given IV (drawn by the cluster); returns ciphertext ‖ tag.
pub(super) fn gcm_encrypt_with(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    iv: [u8; IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, HsmError> {
    ctx.with_key(Operation::AesGcmEncrypt, ObjectKind::Secret, key, |s, h| {
        let mut iv2 = iv;
        s.encrypt(&mechanisms::gcm(&mut iv2, aad)?, h, plaintext)
    })
}

/// AES-256-GCM decrypt; a failed tag or malformed input is `InvalidCiphertext`.
pub(super) fn gcm_decrypt(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    ctx.with_key(Operation::AesGcmDecrypt, ObjectKind::Secret, key, |s, h| {
        let mut iv2 = *iv;
        s.decrypt(&mechanisms::gcm(&mut iv2, aad)?, h, ciphertext)
    })
    .map(Zeroizing::new)
}

/// Generate a replicable AES-256 token key.
pub(super) fn generate(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
) -> Result<ObjectHandle, HsmError> {
    let h = ctx
        .session()
        .generate_key(&Mechanism::AesKeyGen, &templates::aes_key(id, label, true))
        .map_err(|e| ctx.err(Operation::GenerateKey, e))?;
    ctx.remember(ObjectKind::Secret, id, h);
    Ok(h)
}

/// Wrap a secret key under a wrapping key (both named by CKA_ID) with AES-KEY-WRAP-PAD.
pub(super) fn wrap_secret(
    ctx: &mut WorkerCtx<'_>,
    wrapping: &[u8],
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let k = ctx.handle(ObjectKind::Secret, key)?;
    ctx.with_key(Operation::WrapKey, ObjectKind::Secret, wrapping, |s, w| {
        s.wrap_key(&mechanisms::key_wrap(), w, k)
    })
    .map(Zeroizing::new)
}

/// Unwrap a secret key under a wrapping key; the new object gets `template`.
pub(super) fn unwrap_secret(
    ctx: &mut WorkerCtx<'_>,
    wrapping: &[u8],
    wrapped: &[u8],
    id: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let h = ctx.with_key(
        Operation::UnwrapKey,
        ObjectKind::Secret,
        wrapping,
        |s, w| s.unwrap_key(&mechanisms::key_wrap(), w, wrapped, template),
    )?;
    ctx.remember(ObjectKind::Secret, id, h);
    Ok(h)
}

/// An AES key in transit: wrapped under the cluster wrapping key, plus a GCM proof
/// (IV, plaintext, ciphertext) that the copy must decrypt.
pub(super) type AesTransfer = (Secret, [u8; IV_LEN], Vec<u8>, Vec<u8>);

/// Source side of a copy: wrap the key and encrypt a random proof with it.
pub(super) fn export(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<AesTransfer, HsmError> {
    let wrapped = wrap_secret(ctx, CWK_ID, id)?;
    let pt = ctx.random(32)?;
    let (iv, ct) = gcm_encrypt(ctx, id, PROOF_AAD, &pt)?;
    Ok((wrapped.into(), iv, pt, ct))
}

/// Receiving side: unwrap the key and decrypt the proof with the copy.
pub(super) fn install(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    (wrapped, iv, pt, ct): &AesTransfer,
) -> Result<(), HsmError> {
    unwrap_secret(
        ctx,
        CWK_ID,
        wrapped,
        id,
        &templates::unwrapped_aes_key(id, label, true, false),
    )?;
    let back = gcm_decrypt(ctx, id, iv, PROOF_AAD, ct)?;
    if back.as_slice() != pt.as_slice() {
        return Err(HsmError::Internal(format!(
            "{}: replicated key failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}
