//! Key pairs (RSA, EC, Ed25519): generation, signing (ECDSA on a host-computed digest, RSA
//! PKCS#1 v1.5 over a DigestInfo, RSA-PSS with salt = digest length, Ed25519), verification
//! with the token's public object, RSA-OAEP decryption (the token's OAEP where it accepts
//! the hash, else `CKM_RSA_X_509` in the token and OAEP decoding on the host), ECDH
//! (`CKM_ECDH1_DERIVE`, `CKD_NULL`), data key pairs generated as session objects, and how a
//! pair is copied to another HSM (private half wrapped under the cluster wrapping key, public
//! half created as a public object, each copy proven).

use super::error::{self, HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::integrity;
use super::job::WorkerCtx;
use super::kinds::{DataKeyPair, KeyKind, PairSpec, PairUse, PublicKey, Secret, SignScheme};
use super::mechanisms;
use super::templates;
use crate::pkix::{self, Curve, Hash};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use zeroize::Zeroizing;

pub(super) fn read_public(
    ctx: &mut WorkerCtx<'_>,
    spec: PairSpec,
    h: ObjectHandle,
) -> Result<PublicKey, HsmError> {
    let types: &[AttributeType] = match spec {
        PairSpec::Rsa(_) => &[AttributeType::Modulus, AttributeType::PublicExponent],
        PairSpec::Ec(_) | PairSpec::Ed25519 => &[AttributeType::EcPoint],
    };
    let attrs = ctx
        .session()
        .get_attributes(h, types)
        .map_err(|e| ctx.err(Operation::ReadPublicKey, e))?;
    let (mut n, mut e, mut pt) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            Attribute::EcPoint(v) => pt = Some(v),
            _ => {}
        }
    }
    let bad = || HsmError::Internal(format!("{}: public key attributes missing", ctx.hsm()));
    match spec {
        PairSpec::Rsa(_) => Ok(PublicKey::Rsa {
            n: n.ok_or_else(bad)?,
            e: e.ok_or_else(bad)?,
        }),
        PairSpec::Ec(curve) => Ok(PublicKey::Ec {
            curve,
            point: pt
                .and_then(|p| pkix::ec_point_raw(curve, &p))
                .ok_or_else(bad)?,
        }),
        PairSpec::Ed25519 => Ok(PublicKey::Ed25519 {
            point: pt
                .and_then(|p| pkix::ed25519_point_raw(&p))
                .ok_or_else(bad)?,
        }),
    }
}

/// Generate a key pair: token objects, or session objects for data key pairs.
fn keygen(
    ctx: &mut WorkerCtx<'_>,
    spec: PairSpec,
    mut pub_t: Vec<Attribute>,
    priv_t: &[Attribute],
) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
    let hsm = ctx.hsm().to_string();
    let mech = match spec {
        PairSpec::Rsa(_) => {
            ctx.caps().require(
                &hsm,
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
            )?;
            Mechanism::RsaPkcsKeyPairGen
        }
        PairSpec::Ec(_) => {
            ctx.caps()
                .require(&hsm, MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN")?;
            Mechanism::EccKeyPairGen
        }
        PairSpec::Ed25519 => {
            ctx.caps().require(
                &hsm,
                MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                "CKM_EC_EDWARDS_KEY_PAIR_GEN",
            )?;
            ctx.caps()
                .require(&hsm, MechanismType::EDDSA, "CKM_EDDSA")?;
            Mechanism::EccEdwardsKeyPairGen
        }
    };
    pub_t.extend(templates::key_pair_params(spec));
    ctx.session()
        .generate_key_pair(&mech, &pub_t, priv_t)
        .map_err(|e| ctx.err(Operation::GenerateKeyPair, e))
}

/// Generate a KMS key pair (token objects) with `CKA_ID = id`.
pub(super) fn generate(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    spec: PairSpec,
    usage: PairUse,
) -> Result<(), HsmError> {
    let (pubh, privh) = keygen(
        ctx,
        spec,
        templates::generated_public_key(id, label, usage),
        &templates::private_key(spec, id, label, usage, ctx.caps().nested_unwrap_templates),
    )?;
    ctx.remember(ObjectKind::Public, id, pubh);
    ctx.remember(ObjectKind::Private, id, privh);
    Ok(())
}

/// Sign `digest` with the private key `id`; ECDSA signatures are returned as DER.
pub(super) fn sign(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    scheme: SignScheme,
    digest: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let (mech, input) = mechanisms::sign(scheme, digest);
    let sig = ctx.with_key(Operation::Sign, ObjectKind::Private, id, |s, h| {
        s.sign(&mech, h, &input)
    })?;
    Ok(match scheme {
        SignScheme::Ecdsa(_) => pkix::ecdsa_raw_to_der(&sig),
        _ => sig,
    })
}

/// Verify with the token's public object `id`; a malformed or wrong signature is `false`.
pub(super) fn verify(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    scheme: SignScheme,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, HsmError> {
    let sig = match scheme {
        SignScheme::Ecdsa(curve) => match pkix::ecdsa_der_to_raw(signature, curve.field_len()) {
            Some(raw) => raw,
            None => return Ok(false),
        },
        _ => signature.to_vec(),
    };
    let (mech, input) = mechanisms::sign(scheme, digest);
    ctx.with_key(Operation::Verify, ObjectKind::Public, id, |s, h| {
        error::verdict(s.verify(&mech, h, &input, &sig))
    })
}

/// RSA-OAEP decryption with private key `id` of `k`-byte modulus: the token's OAEP where it
/// accepts `h`, else the raw RSA step in the token and OAEP decoding on the host.
pub(super) fn oaep_decrypt(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    h: Hash,
    k: usize,
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    if ct.len() != k {
        return Err(HsmError::InvalidCiphertext);
    }
    let native = match h {
        Hash::Sha1 => ctx.caps().has(MechanismType::RSA_PKCS_OAEP),
        Hash::Sha256 => ctx.caps().oaep_sha256,
        _ => false,
    };
    let mech = if native {
        mechanisms::oaep(h)
    } else {
        let hsm = ctx.hsm().to_string();
        ctx.caps()
            .require(&hsm, MechanismType::RSA_X_509, "CKM_RSA_X_509")?;
        Mechanism::RsaX509
    };
    let out = ctx
        .with_key(Operation::RsaDecrypt, ObjectKind::Private, id, |s, key| {
            s.decrypt(&mech, key, ct)
        })
        .map(Zeroizing::new)?;
    if native {
        Ok(out)
    } else {
        pkix::oaep_decode(h, &out, k).ok_or(HsmError::InvalidCiphertext)
    }
}

/// ECDH (`CKM_ECDH1_DERIVE`, `CKD_NULL`) of private key `id` with a peer's raw point: the
/// shared secret (the x-coordinate) via a short-lived, extractable session object. A peer
/// point the token refuses is `InvalidInput`.
pub(super) fn ecdh(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    curve: Curve,
    peer_point: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let hsm = ctx.hsm().to_string();
    ctx.caps()
        .require(&hsm, MechanismType::ECDH1_DERIVE, "CKM_ECDH1_DERIVE")?;
    let template = templates::ecdh_secret(curve.field_len());
    let h = ctx.with_key(Operation::Ecdh, ObjectKind::Private, id, |s, key| {
        s.derive_key(&mechanisms::ecdh(peer_point), key, &template)
    })?;
    let v = ctx
        .session()
        .get_attributes(h, &[AttributeType::Value])
        .map_err(|e| ctx.err(Operation::Ecdh, e));
    let _ = ctx.session().destroy_object(h);
    match v?.pop() {
        Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
        _ => Err(HsmError::Internal(format!(
            "{hsm}: derived secret has no value"
        ))),
    }
}

/// A data key pair generated inside the HSM as session objects, exported and destroyed.
pub(super) fn data_key_pair(
    ctx: &mut WorkerCtx<'_>,
    spec: PairSpec,
) -> Result<DataKeyPair, HsmError> {
    let (pub_t, priv_t) = templates::data_key_pair();
    let (pubh, privh) = keygen(ctx, spec, pub_t, &priv_t)?;
    let r = (|| {
        let public = read_public(ctx, spec, pubh)?;
        let spki = public.spki()?;
        let types: &[AttributeType] = match spec {
            PairSpec::Rsa(_) => &[
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
            ],
            PairSpec::Ec(_) | PairSpec::Ed25519 => &[AttributeType::Value],
        };
        let attrs = ctx
            .session()
            .get_attributes(privh, types)
            .map_err(|e| ctx.err(Operation::ExportDataKeyPair, e))?;
        let mut vals: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for a in attrs {
            match a {
                Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Value(v) => vals.push(Zeroizing::new(v)),
                _ => {}
            }
        }
        let pkcs8 = match (&public, vals.as_slice()) {
            (PublicKey::Rsa { n, e }, [d, p, q]) => {
                use rsa::pkcs8::EncodePrivateKey;
                use rsa::BigUint;
                let k = rsa::RsaPrivateKey::from_components(
                    BigUint::from_bytes_be(n),
                    BigUint::from_bytes_be(e),
                    BigUint::from_bytes_be(d),
                    vec![BigUint::from_bytes_be(p), BigUint::from_bytes_be(q)],
                )
                .map_err(|e| HsmError::Internal(format!("RSA data key pair: {e}")))?;
                Zeroizing::new(
                    k.to_pkcs8_der()
                        .map_err(|e| HsmError::Internal(format!("PKCS#8: {e}")))?
                        .as_bytes()
                        .to_vec(),
                )
            }
            (PublicKey::Ed25519 { .. }, [d]) => Zeroizing::new(pkix::ed25519_pkcs8(d)),
            (PublicKey::Ec { curve, point }, [d]) => {
                Zeroizing::new(pkix::ec_pkcs8(*curve, d, point))
            }
            _ => {
                return Err(HsmError::Internal(format!(
                    "{}: data key pair attributes missing",
                    ctx.hsm()
                )))
            }
        };
        Ok((pkcs8, spki))
    })();
    let _ = ctx.session().destroy_object(privh);
    let _ = ctx.session().destroy_object(pubh);
    r
}

/// Self-test of a key pair in one HSM: the private half must match the public object.
/// Returns what another HSM's copy must reproduce (the ECDH secret with the key's own
/// point; nothing for signatures and decryption, which are checked against the public key).
fn prove(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    spec: PairSpec,
    usage: PairUse,
    public: &PublicKey,
) -> Result<Option<Zeroizing<Vec<u8>>>, HsmError> {
    let fail = |ctx: &WorkerCtx<'_>| {
        HsmError::Internal(format!(
            "{}: key pair {} failed its proof",
            ctx.hsm(),
            hex::encode(id)
        ))
    };
    match (usage, spec, public) {
        (PairUse::Sign, _, _) => {
            let digest = ctx.random(32)?;
            let scheme = match spec {
                PairSpec::Ec(c) => SignScheme::Ecdsa(c),
                PairSpec::Rsa(_) => SignScheme::RsaPss(Hash::Sha256),
                PairSpec::Ed25519 => SignScheme::Ed25519,
            };
            let sig = sign(ctx, id, scheme, &digest)?;
            if !verify(ctx, id, scheme, &digest, &sig)? {
                return Err(fail(ctx));
            }
            Ok(None)
        }
        (PairUse::Decrypt, PairSpec::Rsa(bits), PublicKey::Rsa { n, e }) => {
            let pt = ctx.random(32)?;
            let k = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(n),
                rsa::BigUint::from_bytes_be(e),
            )
            .map_err(|e| HsmError::Internal(e.to_string()))?;
            let ct = k
                .encrypt(&mut rand::thread_rng(), rsa::Oaep::new::<sha1::Sha1>(), &pt)
                .map_err(|e| HsmError::Internal(e.to_string()))?;
            let back = oaep_decrypt(ctx, id, Hash::Sha1, bits as usize / 8, &ct)?;
            if back.as_slice() != pt.as_slice() {
                return Err(fail(ctx));
            }
            Ok(None)
        }
        (PairUse::Derive, PairSpec::Ec(c), PublicKey::Ec { point, .. }) => {
            Ok(Some(ecdh(ctx, id, c, point)?))
        }
        (PairUse::Unwrap, PairSpec::Rsa(_), PublicKey::Rsa { n, e }) => {
            if prove_unwrap(ctx, id, n, e)? {
                Ok(None)
            } else {
                Err(fail(ctx))
            }
        }
        _ => Err(HsmError::Internal("unsupported key pair usage".into())),
    }
}

/// Proof of an import wrapping key pair: a throw-away secret, OAEP-wrapped (SHA-1) on the
/// host under the public half, is unwrapped inside the token under the private half and
/// used there for one HMAC, which must equal the host's HMAC with the same secret.
fn prove_unwrap(ctx: &mut WorkerCtx<'_>, id: &[u8], n: &[u8], e: &[u8]) -> Result<bool, HsmError> {
    use hmac::Mac;
    const MSG: &[u8] = b"hsm-kms import wrapping key proof";
    let secret = Zeroizing::new(ctx.random(32)?);
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from_bytes_be(e),
    )
    .map_err(|e| HsmError::Internal(e.to_string()))?;
    let wrapped = public
        .encrypt(
            &mut rand::thread_rng(),
            rsa::Oaep::new::<sha1::Sha1>(),
            &secret,
        )
        .map_err(|e| HsmError::Internal(e.to_string()))?;
    let template = templates::import_proof_secret();
    let h = ctx.with_key(Operation::UnwrapKey, ObjectKind::Private, id, |s, w| {
        s.unwrap_key(&mechanisms::oaep(Hash::Sha1), w, &wrapped, &template)
    })?;
    let mac = ctx
        .session()
        .sign(&mechanisms::hmac(Hash::Sha256), h, MSG)
        .map_err(|e| ctx.err(Operation::Hmac, e));
    let _ = ctx.session().destroy_object(h);
    let mut expected = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret)
        .map_err(|e| HsmError::Internal(e.to_string()))?;
    expected.update(MSG);
    Ok(mac? == expected.finalize().into_bytes().as_slice())
}

/// A key pair in transit: the private half wrapped under the cluster wrapping key, the
/// public half, and the proof the copy must reproduce.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct PairTransfer {
    wrapped: Secret,
    public: PublicKey,
    expected: Option<Secret>,
}

impl PairTransfer {
    /// The public half, as read from the generating HSM.
    pub(super) fn public(&self) -> &PublicKey {
        &self.public
    }
}

/// Source side of a copy: wrap the private half under the cluster wrapping key, read the
/// public half, and compute the proof the copy must reproduce.
pub(super) fn export(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    spec: PairSpec,
    usage: PairUse,
) -> Result<PairTransfer, HsmError> {
    let pubh = ctx.handle(ObjectKind::Public, id)?;
    let privh = ctx.handle(ObjectKind::Private, id)?;
    let public = read_public(ctx, spec, pubh)?;
    let expected = prove(ctx, id, spec, usage, &public)?;
    let wrapped = ctx
        .with_key(Operation::WrapKey, ObjectKind::Secret, CWK_ID, |s, w| {
            s.wrap_key(&mechanisms::key_wrap(), w, privh)
        })
        .map(Zeroizing::new)?;
    Ok(PairTransfer {
        wrapped: wrapped.into(),
        public,
        expected: expected.map(Secret::from),
    })
}

/// Receiving side: unwrap the private half, create the public object, prove the copy.
pub(super) fn install(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    spec: PairSpec,
    usage: PairUse,
    tr: &PairTransfer,
) -> Result<(), HsmError> {
    let nested = ctx.caps().nested_unwrap_templates;
    let h = ctx.with_key(Operation::UnwrapKey, ObjectKind::Secret, CWK_ID, |s, w| {
        s.unwrap_key(
            &mechanisms::key_wrap(),
            w,
            &tr.wrapped,
            &templates::private_key(spec, id, label, usage, nested),
        )
    })?;
    ctx.remember(ObjectKind::Private, id, h);
    let p = ctx
        .session()
        .create_object(&templates::public_key_object(&tr.public, id, label, usage))
        .map_err(|e| ctx.err(Operation::CreatePublicKey, e))?;
    ctx.remember(ObjectKind::Public, id, p);
    let got = prove(ctx, id, spec, usage, &tr.public)?;
    if got.as_ref().map(|v| v.as_slice()) != tr.expected.as_ref().map(|v| v.as_slice()) {
        return Err(HsmError::Internal(format!(
            "{}: replicated key pair failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}

/// The check value of this HSM's copy of key pair `id`: the first bytes of SHA-256 over its
/// public half (SPKI) and what its private half reproduces (ECDH keys: the secret with the
/// key's own point), once the private half has been shown to match the public one (a sign
/// and verify, or an OAEP round trip, inside the token). A pair whose halves do not match
/// fails with [`HsmError::Internal`].
pub(super) fn check_value(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    spec: PairSpec,
    usage: PairUse,
) -> Result<[u8; integrity::CHECK_LEN], HsmError> {
    use sha2::Digest;
    let pubh = ctx.find_handle(ObjectKind::Public, id)?;
    let public = read_public(ctx, spec, pubh)?;
    let reproduced = prove(ctx, id, spec, usage, &public)?;
    let mut h = sha2::Sha256::new();
    h.update(public.spki()?);
    if let Some(r) = &reproduced {
        h.update(r.as_slice());
    }
    let digest = h.finalize();
    let mut v = [0u8; integrity::CHECK_LEN];
    v.iter_mut().zip(digest.iter()).for_each(|(a, b)| *a = *b);
    Ok(v)
}

/// Verify this HSM's copy of key pair `id` against its recorded check value, once per module
/// instance (before its first use there). A copy that disagrees, or whose halves do not
/// match, is quarantined (both objects' `CKA_ID` renamed, kept as evidence), logged as a
/// drift finding, and answered as missing on this HSM (so the call fails over and re-sync
/// replaces it). A failure of the token itself is passed on and the copy verified later.
pub(super) fn verify_once(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<(), HsmError> {
    if ctx.instance().handles.is_verified(id) {
        return Ok(());
    }
    let Some((KeyKind::Pair(spec, usage), expected)) = ctx.expected_kind_and_check(id) else {
        return Ok(());
    };
    match check_value(ctx, id, spec, usage) {
        Ok(v) if v == expected => {
            ctx.instance().handles.set_verified(id);
            return Ok(());
        }
        Ok(_) | Err(HsmError::Internal(_)) => {}
        Err(e) => return Err(e),
    }
    let mut renamed = 0;
    for kind in [ObjectKind::Private, ObjectKind::Public] {
        if let Ok(h) = ctx.find_handle(kind, id) {
            let new_id = Attribute::Id(integrity::quarantined_id(id));
            renamed += usize::from(ctx.session().update_attributes(h, &[new_id]).is_ok());
            ctx.forget(kind, id);
        }
    }
    tracing::error!(
        target: "hsm_kms::audit",
        hsm = %ctx.hsm(),
        object = %hex::encode(id),
        renamed,
        "drift finding: this HSM's copy of a key pair disagrees with the check value recorded \
         when the key was made; the copy is quarantined (never used again) and will be \
         replaced from a copy that agrees"
    );
    Err(HsmError::KeyMissing {
        hsm: ctx.hsm().to_string(),
        object: hex::encode(id),
    })
}
