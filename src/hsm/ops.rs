//! PKCS#11 operations run on a worker's session: key templates and the mechanisms the
//! KMS needs (AES-GCM with AAD, random, wrap/unwrap for replication, RSA-OAEP transport).
//! Every function takes a [`WorkerCtx`] so errors are classified and recorded in one place.

use super::error::HsmError;
use super::node::{WorkerCtx, PRIVATE, SECRET};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use zeroize::Zeroizing;

/// GCM IV length (bytes) and tag length (bits).
pub const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// Template of an AES-256 token key. `replicable` keys are extractable so that they can be
/// wrapped under the cluster wrapping key (never in plaintext: CKA_SENSITIVE is always set).
pub(crate) fn aes_template(id: &[u8], label: &str, replicable: bool) -> Vec<Attribute> {
    let mut t = vec![Attribute::ValueLen(32.into())];
    t.extend(unwrapped_aes_template(id, label, replicable, false));
    t
}

/// Template for an AES key that arrives by `C_UnwrapKey` (no CKA_VALUE_LEN allowed).
pub(crate) fn unwrapped_aes_template(
    id: &[u8],
    label: &str,
    replicable: bool,
    wrapping: bool,
) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(replicable),
        Attribute::Encrypt(!wrapping),
        Attribute::Decrypt(!wrapping),
        Attribute::Wrap(wrapping),
        Attribute::Unwrap(wrapping),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn gcm<'a>(
    iv: &'a mut [u8; IV_LEN],
    aad: &'a [u8],
) -> Result<Mechanism<'a>, cryptoki::error::Error> {
    Ok(Mechanism::AesGcm(GcmParams::new(iv, aad, TAG_BITS.into())?))
}

/// Random bytes from the HSM.
pub(crate) fn random(ctx: &mut WorkerCtx<'_>, n: usize) -> Result<Vec<u8>, HsmError> {
    ctx.session()
        .generate_random_vec(n as u32)
        .map_err(|e| ctx.err(e))
}

/// AES-256-GCM encrypt with a fresh IV drawn from the HSM; returns (IV, ciphertext ‖ tag).
pub(crate) fn gcm_encrypt(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
    let mut iv = [0u8; IV_LEN];
    ctx.session()
        .generate_random_slice(&mut iv)
        .map_err(|e| ctx.err(e))?;
    let ct = ctx.with_key(SECRET, key, |s, h| {
        let mut iv2 = iv;
        s.encrypt(&gcm(&mut iv2, aad)?, h, plaintext)
    })?;
    Ok((iv, ct))
}

/// AES-256-GCM decrypt; a failed tag or malformed input is `InvalidCiphertext`.
pub(crate) fn gcm_decrypt(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    use cryptoki::error::{Error as CkError, RvError};
    let r = ctx.with_key(SECRET, key, |s, h| {
        let mut iv2 = *iv;
        match s.decrypt(&gcm(&mut iv2, aad)?, h, ciphertext) {
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
                f,
            )) => Err(CkError::Pkcs11(RvError::EncryptedDataInvalid, f)),
            // SoftHSM 2.6.1 reports a GCM tag mismatch as CKR_GENERAL_ERROR from C_Decrypt
            // (after C_DecryptInit succeeded). A broken token fails C_DecryptInit first, so
            // this is the ciphertext, not the device: it must not mark the HSM down.
            Err(CkError::Pkcs11(
                RvError::GeneralError | RvError::FunctionFailed,
                f @ cryptoki::context::Function::Decrypt,
            )) => Err(CkError::Pkcs11(RvError::EncryptedDataInvalid, f)),
            other => other,
        }
    });
    match r {
        Ok(pt) => Ok(Zeroizing::new(pt)),
        Err(HsmError::Pkcs11 { rv: 0x40, .. }) => Err(HsmError::InvalidCiphertext),
        Err(e) => Err(e),
    }
}

/// Generate a replicable AES-256 token key.
pub(crate) fn generate_aes(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
) -> Result<ObjectHandle, HsmError> {
    let h = ctx
        .session()
        .generate_key(&Mechanism::AesKeyGen, &aes_template(id, label, true))
        .map_err(|e| ctx.err(e))?;
    ctx.remember(SECRET, id, h);
    Ok(h)
}

/// Wrap a secret key under a wrapping key (both named by CKA_ID) with AES-KEY-WRAP-PAD.
pub(crate) fn wrap_secret(
    ctx: &mut WorkerCtx<'_>,
    wrapping: &[u8],
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let k = ctx.handle(SECRET, key)?;
    ctx.with_key(SECRET, wrapping, |s, w| {
        s.wrap_key(&Mechanism::AesKeyWrapPad, w, k)
    })
    .map(Zeroizing::new)
}

/// Unwrap a secret key under a wrapping key; the new object gets `template`.
pub(crate) fn unwrap_secret(
    ctx: &mut WorkerCtx<'_>,
    wrapping: &[u8],
    wrapped: &[u8],
    id: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let h = ctx.with_key(SECRET, wrapping, |s, w| {
        s.unwrap_key(&Mechanism::AesKeyWrapPad, w, wrapped, template)
    })?;
    ctx.remember(SECRET, id, h);
    Ok(h)
}

/// Destroy every object with this CKA_ID and class; true if one existed.
pub(crate) fn destroy(ctx: &mut WorkerCtx<'_>, class: u8, id: &[u8]) -> Result<bool, HsmError> {
    match ctx.handle(class, id) {
        Ok(h) => {
            ctx.session().destroy_object(h).map_err(|e| ctx.err(e))?;
            ctx.forget(class, id);
            Ok(true)
        }
        Err(HsmError::KeyMissing { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Key transport uses OAEP with SHA-1: SoftHSM 2.6.1 refuses OAEP with SHA-256
/// (`CKR_ARGUMENTS_BAD`, hsm-facts.md §2.1). Flip when every token of a cluster accepts it.
const TRANSPORT_OAEP_SHA256: bool = false;

/// RSA-OAEP parameters for key transport. SHA-1 because SoftHSM 2.6.1 refuses OAEP with
/// SHA-256 (hsm-facts.md §2.1); SHA-256 is used where the token offers it.
fn oaep(sha256: bool) -> Mechanism<'static> {
    if sha256 {
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            PkcsOaepSource::empty(),
        ))
    } else {
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::empty(),
        ))
    }
}

/// Enrollment step 1 (receiving HSM): generate an RSA-2048 transport pair whose private half
/// never leaves the token; return the public modulus and exponent.
pub(crate) fn transport_keypair(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), HsmError> {
    let (pubh, privh) = ctx
        .session()
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Encrypt(true),
                Attribute::Wrap(true),
                Attribute::Id(id.to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Decrypt(false),
                Attribute::Unwrap(true),
                Attribute::Id(id.to_vec()),
            ],
        )
        .map_err(|e| ctx.err(e))?;
    ctx.remember(super::node::PUBLIC, id, pubh);
    ctx.remember(PRIVATE, id, privh);
    let attrs = ctx
        .session()
        .get_attributes(
            pubh,
            &[
                cryptoki::object::AttributeType::Modulus,
                cryptoki::object::AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| ctx.err(e))?;
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

/// Enrollment step 2 (sending HSM): wrap a secret key under the receiver's RSA public key.
pub(crate) fn wrap_for_transport(
    ctx: &mut WorkerCtx<'_>,
    key: &[u8],
    modulus: &[u8],
    exponent: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let k = ctx.handle(SECRET, key)?;
    let pubh = ctx
        .session()
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(false),
            Attribute::Modulus(modulus.to_vec()),
            Attribute::PublicExponent(exponent.to_vec()),
            Attribute::Wrap(true),
            Attribute::Encrypt(true),
        ])
        .map_err(|e| ctx.err(e))?;
    let r = ctx
        .session()
        .wrap_key(&oaep(TRANSPORT_OAEP_SHA256), pubh, k);
    let _ = ctx.session().destroy_object(pubh);
    r.map_err(|e| ctx.err(e))
}

/// Enrollment step 3 (receiving HSM): unwrap with the transport private key, then destroy
/// the transport pair.
pub(crate) fn unwrap_from_transport(
    ctx: &mut WorkerCtx<'_>,
    transport_id: &[u8],
    wrapped: &[u8],
    id: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let r = ctx.with_key(PRIVATE, transport_id, |s, p| {
        s.unwrap_key(&oaep(TRANSPORT_OAEP_SHA256), p, wrapped, template)
    });
    let _ = destroy(ctx, PRIVATE, transport_id);
    let _ = destroy(ctx, super::node::PUBLIC, transport_id);
    let h = r?;
    ctx.remember(SECRET, id, h);
    Ok(h)
}
