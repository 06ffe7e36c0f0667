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
use super::kinds::{KeyKind, PairSpec, PublicKey, SignScheme};
use super::mechanisms;
use super::templates;
use crate::kms::vault::{ImportWrapping, WrappedMaterial};
use crate::pkix::Curve;
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
        KeyKind::Pair(spec, usage) => templates::private_key(spec, id, label, usage, false),
    };
    // An EC key also arrives as a session copy that may sign and derive: the token gives
    // the public point only through it (PKCS#11 private EC objects carry no point).
    let copy_template = templates::import_ec_copy();
    let ec = matches!(kind, KeyKind::Pair(PairSpec::Ec(_), _));
    let wanted: Vec<&[Attribute]> = if ec {
        vec![&template, &copy_template]
    } else {
        vec![&template]
    };
    let handles = unwrap(ctx, w, &wanted)?;
    let (h, copy) = match handles.as_slice() {
        [h] => (*h, None),
        [h, c] => (*h, Some(*c)),
        _ => return Err(HsmError::Internal("unexpected unwrap result".into())),
    };
    let object = match kind {
        KeyKind::Pair(..) => ObjectKind::Private,
        _ => ObjectKind::Secret,
    };
    ctx.remember(object, id, h);
    let fitted = fit(ctx, h, copy, id, label, kind);
    if let Some(c) = copy {
        let _ = ctx.session().destroy_object(c);
    }
    if fitted.is_err() {
        let _ = ctx.destroy_all(id);
    }
    fitted
}

/// The `C_UnwrapKey` step(s): the material as one new object per template (in order); on
/// a failure none is left.
fn unwrap(
    ctx: &mut WorkerCtx<'_>,
    w: &WrappedMaterial,
    templates: &[&[Attribute]],
) -> Result<Vec<ObjectHandle>, HsmError> {
    let key = w.key.as_bytes();
    let oaep = mechanisms::oaep(w.wrapping.hash());
    let mut made = Vec::new();
    let r = match w.wrapping {
        ImportWrapping::Oaep(_) => {
            if w.material.len() != w.modulus_len {
                return Err(HsmError::InvalidCiphertext);
            }
            templates.iter().try_for_each(|t| {
                let h =
                    ctx.with_key(Operation::ImportUnwrap, ObjectKind::Private, key, |s, k| {
                        s.unwrap_key(&oaep, k, &w.material, t)
                    })?;
                made.push(h);
                Ok(())
            })
        }
        ImportWrapping::RsaAes(_) => {
            let (wrapped_aes, wrapped_material) = match w.material.split_at_checked(w.modulus_len) {
                Some((a, m)) if !m.is_empty() => (a, m),
                _ => return Err(HsmError::InvalidCiphertext),
            };
            let ephemeral = templates::import_ephemeral_key(ctx.caps().nested_unwrap_templates);
            let eph = ctx.with_key(Operation::ImportUnwrap, ObjectKind::Private, key, |s, k| {
                s.unwrap_key(&oaep, k, wrapped_aes, &ephemeral)
            })?;
            let r = templates.iter().try_for_each(|t| {
                let h = ctx
                    .session()
                    .unwrap_key(&Mechanism::AesKeyWrapPad, eph, wrapped_material, t)
                    .map_err(|e| ctx.err(Operation::ImportUnwrap, e))?;
                made.push(h);
                Ok(())
            });
            let _ = ctx.session().destroy_object(eph);
            r
        }
    };
    match r {
        Ok(()) => Ok(made),
        Err(e) => {
            for h in made {
                let _ = ctx.session().destroy_object(h);
            }
            Err(e)
        }
    }
}

/// The public point of an imported EC private key, found inside the token with its
/// session copy `copy`: ECDH with the base point gives X (the shared secret of `d·G`); of
/// the two points with that X, the one that verifies a signature the copy makes is it.
fn ec_public_point(
    ctx: &mut WorkerCtx<'_>,
    copy: ObjectHandle,
    curve: Curve,
) -> Result<Vec<u8>, HsmError> {
    let g = curve.generator();
    let secret = ctx
        .session()
        .derive_key(
            &mechanisms::ecdh(&g),
            copy,
            &templates::ecdh_secret(curve.field_len()),
        )
        .map_err(|e| ctx.err(Operation::ImportUnwrap, e))?;
    let x = ctx
        .session()
        .get_attributes(secret, &[AttributeType::Value])
        .map_err(|e| ctx.err(Operation::ImportUnwrap, e));
    let _ = ctx.session().destroy_object(secret);
    let x = x?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| HsmError::Internal(format!("{}: ECDH gave no value", ctx.hsm())))?;
    let candidates = curve.points_with_x(&x).ok_or_else(|| {
        HsmError::WrongKeyMaterial("The key material is not a valid EC private key.".into())
    })?;
    let digest = ctx.random(32)?;
    let (mech, input) = mechanisms::sign(SignScheme::Ecdsa(curve), &digest);
    let sig = ctx
        .session()
        .sign(&mech, copy, &input)
        .map_err(|e| ctx.err(Operation::Sign, e))?;
    for point in candidates {
        let p = ctx
            .session()
            .create_object(&templates::ec_candidate(curve, &point))
            .map_err(|e| ctx.err(Operation::CreatePublicKey, e))?;
        let ok = super::error::verdict(ctx.session().verify(&mech, p, &input, &sig));
        let _ = ctx.session().destroy_object(p);
        if ok.map_err(|e| ctx.err(Operation::Verify, e))? {
            return Ok(point);
        }
    }
    Err(HsmError::Internal(format!(
        "{}: no public point of the imported EC key verified its signature",
        ctx.hsm()
    )))
}

/// Check that the unwrapped object `h` fits `kind`; for a key pair, create its public half
/// (read or derived from the private object inside the token).
fn fit(
    ctx: &mut WorkerCtx<'_>,
    h: ObjectHandle,
    copy: Option<ObjectHandle>,
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
                    let copy = copy.ok_or_else(|| {
                        HsmError::Internal("EC import without a session copy".into())
                    })?;
                    let point = ec_public_point(ctx, copy, curve)?;
                    PublicKey::Ec { curve, point }
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
