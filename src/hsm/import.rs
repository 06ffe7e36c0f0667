//! Imported key material (Origin `EXTERNAL`): unwrapped **inside the token** under the
//! private half of an import wrapping key pair, into a token object with exactly the
//! attributes of the service's own keys (`templates`), then checked to fit its kind and
//! exported for replication like a generated key (`command::export`).
//!
//! * `RSAES_OAEP_SHA_*`: one `C_UnwrapKey` with `CKM_RSA_PKCS_OAEP`.
//! * `RSA_AES_KEY_WRAP_SHA_*`: `C_UnwrapKey` with `CKM_RSA_PKCS_OAEP` of the ephemeral AES
//!   key (the first modulus-length bytes) as a session object, then `C_UnwrapKey` with
//!   `CKM_AES_KEY_WRAP_PAD` (RFC 5649) of the material under it; the ephemeral key is
//!   destroyed whatever happens.
//!
//! A token that cannot do a variant natively (SoftHSM 2.6.1 refuses OAEP with SHA-256) is
//! answered [`HsmError::Unsupported`]: the material is never decoded on the host.

use super::aes;
use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::integrity;
use super::job::WorkerCtx;
use super::keypair;
use super::kinds::{KeyKind, PairSpec, PublicKey};
use super::mechanisms;
use super::templates;
use crate::kms::vault::{ImportWrapping, WrappedMaterial};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};

/// Unwrap `w` inside this token into token object(s) `id` of `kind` (the private and public
/// halves for a key pair), and check that the material fits `kind`. On any failure nothing
/// is left behind under `id`.
pub(super) fn unwrap_material(
    ctx: &mut WorkerCtx<'_>,
    w: &WrappedMaterial,
    id: &[u8],
    label: &str,
    kind: KeyKind,
) -> Result<(), HsmError> {
    let hsm = ctx.hsm().to_string();
    if let Some(m) = ctx.caps().import_missing(w.wrapping) {
        return Err(HsmError::Unsupported { hsm, mechanism: m });
    }
    let template = match kind {
        KeyKind::Aes => templates::unwrapped_aes_key(id, label, true, false),
        KeyKind::Hmac(_) => templates::hmac_key(id, label),
        KeyKind::Pair(spec, usage) => templates::private_key(spec, id, label, usage),
    };
    let h = unwrap(ctx, w, &template)?;
    let object = match kind {
        KeyKind::Pair(..) => ObjectKind::Private,
        _ => ObjectKind::Secret,
    };
    ctx.remember(object, id, h);
    let fitted = fit(ctx, h, id, label, kind);
    if fitted.is_err() {
        let _ = ctx.destroy_all(id);
    }
    fitted
}

/// The `C_UnwrapKey` step(s): the material as a new object with `template`.
fn unwrap(
    ctx: &mut WorkerCtx<'_>,
    w: &WrappedMaterial,
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let key = w.key.as_bytes();
    let oaep = mechanisms::oaep(w.wrapping.hash());
    match w.wrapping {
        ImportWrapping::Oaep(_) => {
            if w.material.len() != w.modulus_len {
                return Err(HsmError::InvalidCiphertext);
            }
            ctx.with_key(Operation::ImportUnwrap, ObjectKind::Private, key, |s, k| {
                s.unwrap_key(&oaep, k, &w.material, template)
            })
        }
        ImportWrapping::RsaAes(_) => {
            let (wrapped_aes, wrapped_material) = match w.material.split_at_checked(w.modulus_len) {
                Some((a, m)) if !m.is_empty() => (a, m),
                _ => return Err(HsmError::InvalidCiphertext),
            };
            let ephemeral = templates::import_ephemeral_key();
            let eph = ctx.with_key(Operation::ImportUnwrap, ObjectKind::Private, key, |s, k| {
                s.unwrap_key(&oaep, k, wrapped_aes, &ephemeral)
            })?;
            let r = ctx
                .session()
                .unwrap_key(&Mechanism::AesKeyWrapPad, eph, wrapped_material, template)
                .map_err(|e| ctx.err(Operation::ImportUnwrap, e));
            let _ = ctx.session().destroy_object(eph);
            r
        }
    }
}

/// Check that the unwrapped object `h` fits `kind`; for a key pair, create its public half
/// (read or derived from the private object inside the token).
fn fit(
    ctx: &mut WorkerCtx<'_>,
    h: ObjectHandle,
    id: &[u8],
    label: &str,
    kind: KeyKind,
) -> Result<(), HsmError> {
    let wrong = |what: String| HsmError::WrongKeyMaterial(what);
    match kind {
        KeyKind::Aes | KeyKind::Hmac(_) => {
            let want = match kind {
                KeyKind::Hmac(len) => len,
                _ => 32,
            };
            let fits = match value_len(ctx, h)? {
                Some(got) => got == want,
                // SoftHSM 2.6.1 leaves CKA_VALUE_LEN at 0 for unwrapped keys: the length
                // of the key wrapped under the cluster wrapping key (RFC 5649: the key
                // padded to 8 bytes, plus 8) bounds it instead, inside the token.
                None => {
                    let wrapped = aes::wrap_secret(ctx, CWK_ID, id)?;
                    wrapped.len().saturating_sub(8) == want.div_ceil(8) * 8
                }
            };
            // An AES key must also work as one (a length the cipher refuses fails here).
            let usable = fits
                && (kind != KeyKind::Aes
                    || integrity::compute(ctx.session(), h, KeyKind::Aes).is_ok());
            if !usable {
                return Err(wrong(format!(
                    "The key material does not have the length this key needs ({want} bytes)."
                )));
            }
            Ok(())
        }
        KeyKind::Pair(spec, usage) => {
            let public = match spec {
                PairSpec::Rsa(bits) => {
                    let public = keypair::read_public(ctx, spec, h)?;
                    let PublicKey::Rsa { n, .. } = &public else {
                        return Err(HsmError::Internal("RSA public key expected".into()));
                    };
                    let got = modulus_bits(n);
                    if got != bits as usize {
                        return Err(wrong(format!(
                            "The key material is an RSA-{got} private key; this key needs RSA-{bits}."
                        )));
                    }
                    public
                }
                PairSpec::Ec(curve) => {
                    let params = ctx
                        .session()
                        .get_attributes(h, &[AttributeType::EcParams])
                        .map_err(|e| ctx.err(Operation::ReadPublicKey, e))?;
                    let ok = params
                        .iter()
                        .any(|a| matches!(a, Attribute::EcParams(p) if p.as_slice() == curve.params_der()));
                    if !ok {
                        return Err(wrong(
                            "The key material is not a private key on this key's curve.".into(),
                        ));
                    }
                    return Err(HsmError::Unsupported {
                        hsm: ctx.hsm().to_string(),
                        mechanism: format!(
                            "a way to read the public point of an imported {curve:?} private key"
                        ),
                    });
                }
                PairSpec::Ed25519 => {
                    return Err(HsmError::Unsupported {
                        hsm: ctx.hsm().to_string(),
                        mechanism: "C_UnwrapKey of CKK_EC_EDWARDS private keys".into(),
                    })
                }
            };
            let p = ctx
                .session()
                .create_object(&templates::public_key_object(&public, id, label, usage))
                .map_err(|e| ctx.err(Operation::CreatePublicKey, e))?;
            ctx.remember(ObjectKind::Public, id, p);
            Ok(())
        }
    }
}

/// `CKA_VALUE_LEN` of a secret key, when the token reports one.
fn value_len(ctx: &mut WorkerCtx<'_>, h: ObjectHandle) -> Result<Option<usize>, HsmError> {
    let attrs = ctx
        .session()
        .get_attributes(h, &[AttributeType::ValueLen])
        .map_err(|e| ctx.err(Operation::ImportUnwrap, e))?;
    Ok(attrs.iter().find_map(|a| match a {
        Attribute::ValueLen(n) if u64::from(*n) > 0 => Some(u64::from(*n) as usize),
        _ => None,
    }))
}

/// The bit length of a big-endian modulus.
fn modulus_bits(n: &[u8]) -> usize {
    let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
    match n.first() {
        Some(b) => (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_from_the_top_bit() {
        assert_eq!(modulus_bits(&[0x80, 0, 0]), 24);
        assert_eq!(modulus_bits(&[0, 0x7f, 0]), 15);
        assert_eq!(modulus_bits(&[0; 3]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
    }
}
