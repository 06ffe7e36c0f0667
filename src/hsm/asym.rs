//! Asymmetric and HMAC keys in the HSMs: key-pair generation with replication (the private
//! half is wrapped under the cluster wrapping key with AES-KEY-WRAP-PAD and unwrapped in
//! every other HSM; the public half is copied as a public object), signing (ECDSA on a
//! host-computed digest, RSA PKCS#1 v1.5 over a DigestInfo, RSA-PSS with salt = digest
//! length), verification with the token's public object, HMAC, RSA-OAEP decryption (the
//! token's OAEP where it accepts the hash, else `CKM_RSA_X_509` in the token and OAEP
//! decoding on the host), ECDH (`CKM_ECDH1_DERIVE`, `CKD_NULL`) and data key pairs
//! generated as session objects. What each token offers is found at connect ([`Caps`]).

use super::cluster::{HsmCluster, CWK_ID};
use super::error::HsmError;
use super::node::{WorkerCtx, PRIVATE, PUBLIC, SECRET};
use super::ops;
use crate::pkix::{self, Curve, Hash};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What one token offers, found at connect: its mechanism list, plus probes for quirks the
/// list cannot show (SoftHSM 2.6.1 lists CKM_RSA_PKCS_OAEP but refuses it with SHA-256).
#[derive(Debug, Clone, Default)]
pub struct Caps {
    mechanisms: Vec<MechanismType>,
    /// `CKM_RSA_PKCS_OAEP` with SHA-256/MGF1-SHA-256 works (probed with a session key).
    pub oaep_sha256: bool,
    /// Ed25519 keys can be generated, signed with, and wrapped with AES-KEY-WRAP-PAD (so
    /// replicated); SoftHSM 2.6.1 refuses the wrap (`CKR_KEY_NOT_WRAPPABLE`).
    pub ed25519_keys: bool,
}

impl Caps {
    pub(crate) fn probe(ctx: &Pkcs11, slot: Slot, s: &Session) -> Caps {
        let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
        let mut caps = Caps {
            mechanisms,
            oaep_sha256: false,
            ed25519_keys: false,
        };
        if caps.has(MechanismType::RSA_PKCS_OAEP) {
            caps.oaep_sha256 = probe_oaep_sha256(s).unwrap_or(false);
        }
        if caps.has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) && caps.has(MechanismType::EDDSA) {
            caps.ed25519_keys = probe_ed25519_wrap(s).unwrap_or(false);
        }
        tracing::debug!(
            mechanisms = caps.mechanisms.len(),
            oaep_sha256 = caps.oaep_sha256,
            "token capabilities"
        );
        caps
    }

    pub fn has(&self, m: MechanismType) -> bool {
        self.mechanisms.contains(&m)
    }

    fn require(&self, hsm: &str, m: MechanismType, name: &str) -> Result<(), HsmError> {
        if self.has(m) {
            Ok(())
        } else {
            Err(HsmError::Unsupported {
                hsm: hsm.to_string(),
                mechanism: name.to_string(),
            })
        }
    }
}

/// A throw-away RSA-1024 session pair: does OAEP with SHA-256 round-trip?
fn probe_oaep_sha256(s: &Session) -> Result<bool, CkError> {
    let (pubh, privh) = s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::ModulusBits(1024.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Decrypt(true),
        ],
    )?;
    let m = oaep_mech(Hash::Sha256);
    let ok = s
        .encrypt(&m, pubh, b"probe")
        .and_then(|ct| s.decrypt(&m, privh, &ct))
        .map(|pt| pt == b"probe")
        .unwrap_or(false);
    let _ = s.destroy_object(pubh);
    let _ = s.destroy_object(privh);
    Ok(ok)
}

/// Can a sensitive, extractable Ed25519 private key be wrapped (session objects)?
fn probe_ed25519_wrap(s: &Session) -> Result<bool, CkError> {
    let kek = s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Wrap(true),
        ],
    )?;
    let pair = s.generate_key_pair(
        &Mechanism::EccEdwardsKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(pkix::ED25519_OID.to_vec()),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Sign(true),
        ],
    );
    let ok = match pair {
        Ok((pubh, privh)) => {
            let ok = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, privh).is_ok();
            let _ = s.destroy_object(pubh);
            let _ = s.destroy_object(privh);
            ok
        }
        Err(_) => false,
    };
    let _ = s.destroy_object(kek);
    Ok(ok)
}

/// The kind of key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSpec {
    Rsa(u32),
    Ec(Curve),
    /// Ed25519 (`CKK_EC_EDWARDS`), where the token offers CKM_EC_EDWARDS_KEY_PAIR_GEN.
    Ed25519,
}

/// What the private half may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairUse {
    Sign,
    Decrypt,
    Derive,
}

/// A signature scheme over a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignScheme {
    /// ECDSA; signatures are DER `ECDSA-Sig-Value`.
    Ecdsa(Curve),
    RsaPkcs1(Hash),
    RsaPss(Hash),
    /// Pure Ed25519 over the message itself.
    Ed25519,
    /// Ed25519ph over a SHA-512 digest.
    Ed25519ph,
}

fn hash_mech(h: Hash) -> (MechanismType, PkcsMgfType) {
    match h {
        Hash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        Hash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

fn oaep_mech(h: Hash) -> Mechanism<'static> {
    let (hash, mgf) = hash_mech(h);
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

fn hmac_mech(h: Hash) -> Mechanism<'static> {
    match h {
        Hash::Sha1 => Mechanism::Sha1Hmac,
        Hash::Sha224 => Mechanism::Sha224Hmac,
        Hash::Sha256 => Mechanism::Sha256Hmac,
        Hash::Sha384 => Mechanism::Sha384Hmac,
        Hash::Sha512 => Mechanism::Sha512Hmac,
    }
}

/// The mechanism and the token input for signing `digest` with `scheme`.
fn sign_input(scheme: SignScheme, digest: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
    match scheme {
        SignScheme::Ecdsa(_) => (Mechanism::Ecdsa, digest.to_vec()),
        SignScheme::Ed25519 => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519)),
            digest.to_vec(),
        ),
        SignScheme::Ed25519ph => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ph(&[]))),
            digest.to_vec(),
        ),
        SignScheme::RsaPkcs1(h) => (
            Mechanism::RsaPkcs,
            [h.digest_info_prefix(), digest].concat(),
        ),
        SignScheme::RsaPss(h) => {
            let (hash_alg, mgf) = hash_mech(h);
            (
                Mechanism::RsaPkcsPss(PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (h.len() as u64).into(),
                }),
                digest.to_vec(),
            )
        }
    }
}

/// A public key as read from the token.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519 { point: Vec<u8> },
}

impl PublicKey {
    fn spki(&self) -> Result<Vec<u8>, HsmError> {
        match self {
            PublicKey::Ec { curve, point } => Ok(pkix::ec_spki(*curve, point)),
            PublicKey::Ed25519 { point } => Ok(pkix::ed25519_spki(point)),
            PublicKey::Rsa { n, e } => {
                use rsa::pkcs8::EncodePublicKey;
                let k = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                )
                .map_err(|e| HsmError::Internal(format!("RSA public key: {e}")))?;
                Ok(k.to_public_key_der()
                    .map_err(|e| HsmError::Internal(format!("RSA public key DER: {e}")))?
                    .as_bytes()
                    .to_vec())
            }
        }
    }

    /// Template of this public key as a token object with `CKA_ID = id`.
    fn object_template(&self, id: &[u8], label: &str, usage: PairUse) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(usage == PairUse::Sign),
            Attribute::Encrypt(usage == PairUse::Decrypt),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        match self {
            PublicKey::Rsa { n, e } => t.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
            ]),
            PublicKey::Ec { curve, point } => t.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(curve.params_der().to_vec()),
                Attribute::EcPoint(pkix::tlv(0x04, point)),
            ]),
            PublicKey::Ed25519 { point } => t.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(pkix::ED25519_OID.to_vec()),
                Attribute::EcPoint(pkix::tlv(0x04, point)),
            ]),
        }
        t
    }
}

fn key_type(spec: PairSpec) -> KeyType {
    match spec {
        PairSpec::Rsa(_) => KeyType::RSA,
        PairSpec::Ec(_) => KeyType::EC,
        PairSpec::Ed25519 => KeyType::EC_EDWARDS,
    }
}

/// Template of a KMS private key (token object, sensitive, extractable only so that it can
/// be wrapped under the cluster wrapping key).
fn private_template(spec: PairSpec, id: &[u8], label: &str, usage: PairUse) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type(spec)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(usage == PairUse::Sign),
        Attribute::Decrypt(usage == PairUse::Decrypt),
        Attribute::Derive(usage == PairUse::Derive),
        Attribute::Unwrap(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn read_public(
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
        .map_err(|e| ctx.err(e))?;
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
        PairSpec::Rsa(bits) => {
            ctx.caps().require(
                &hsm,
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
            )?;
            pub_t.extend([
                Attribute::ModulusBits((bits as u64).into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ]);
            Mechanism::RsaPkcsKeyPairGen
        }
        PairSpec::Ec(curve) => {
            ctx.caps()
                .require(&hsm, MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN")?;
            pub_t.push(Attribute::EcParams(curve.params_der().to_vec()));
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
            pub_t.push(Attribute::EcParams(pkix::ED25519_OID.to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
    };
    ctx.session()
        .generate_key_pair(&mech, &pub_t, priv_t)
        .map_err(|e| ctx.err(e))
}

/// Destroy the private, public and secret objects with this `CKA_ID`.
pub(crate) fn destroy_all(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<bool, HsmError> {
    let mut any = false;
    for class in [PRIVATE, PUBLIC, SECRET] {
        any |= ops::destroy(ctx, class, id)?;
    }
    Ok(any)
}

/// Sign `digest` with the private key `id`; ECDSA signatures are returned as DER.
fn sign(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    scheme: SignScheme,
    digest: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let (mech, input) = sign_input(scheme, digest);
    let sig = ctx.with_key(PRIVATE, id, |s, h| s.sign(&mech, h, &input))?;
    Ok(match scheme {
        SignScheme::Ecdsa(_) => pkix::ecdsa_raw_to_der(&sig),
        _ => sig,
    })
}

/// Verify with the token's public object `id`; a malformed or wrong signature is `false`.
fn verify(
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
    let (mech, input) = sign_input(scheme, digest);
    let r = ctx.with_key(PUBLIC, id, |s, h| match s.verify(&mech, h, &input, &sig) {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(
            RvError::SignatureInvalid | RvError::SignatureLenRange | RvError::DataLenRange,
            _,
        )) => Ok(false),
        Err(e) => Err(e),
    })?;
    Ok(r)
}

/// HMAC of `msg` with the secret key `id`.
fn hmac(ctx: &mut WorkerCtx<'_>, id: &[u8], h: Hash, msg: &[u8]) -> Result<Vec<u8>, HsmError> {
    let m = hmac_mech(h);
    ctx.with_key(SECRET, id, |s, k| s.sign(&m, k, msg))
}

/// RSA-OAEP decryption with private key `id` of `k`-byte modulus: the token's OAEP where it
/// accepts `h`, else the raw RSA step in the token and OAEP decoding on the host.
fn oaep_decrypt(
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
        oaep_mech(h)
    } else {
        let hsm = ctx.hsm().to_string();
        ctx.caps()
            .require(&hsm, MechanismType::RSA_X_509, "CKM_RSA_X_509")?;
        Mechanism::RsaX509
    };
    let r = ctx.with_key(PRIVATE, id, |s, key| match s.decrypt(&mech, key, ct) {
        // A ciphertext that does not decode (or is ≥ n) is the caller's fault, never the
        // device's: SoftHSM reports some of these as CKR_GENERAL_ERROR from C_Decrypt.
        Err(CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
            | RvError::FunctionFailed,
            f @ cryptoki::context::Function::Decrypt,
        )) => Err(CkError::Pkcs11(RvError::EncryptedDataInvalid, f)),
        other => other,
    });
    let out = match r {
        Ok(v) => Zeroizing::new(v),
        Err(HsmError::Pkcs11 { rv: 0x40, .. }) => return Err(HsmError::InvalidCiphertext),
        Err(e) => return Err(e),
    };
    if native {
        Ok(out)
    } else {
        pkix::oaep_decode(h, &out, k).ok_or(HsmError::InvalidCiphertext)
    }
}

/// ECDH (`CKM_ECDH1_DERIVE`, `CKD_NULL`) of private key `id` with a peer's raw point: the
/// shared secret (the x-coordinate) via a short-lived, extractable session object.
fn ecdh(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    curve: Curve,
    peer_point: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let hsm = ctx.hsm().to_string();
    ctx.caps()
        .require(&hsm, MechanismType::ECDH1_DERIVE, "CKM_ECDH1_DERIVE")?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen((curve.field_len() as u64).into()),
    ];
    let r = ctx.with_key(PRIVATE, id, |s, key| {
        let mech = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_point));
        match s.derive_key(&mech, key, &template) {
            Err(CkError::Pkcs11(
                RvError::ArgumentsBad
                | RvError::MechanismParamInvalid
                | RvError::DomainParamsInvalid
                | RvError::GeneralError
                | RvError::FunctionFailed,
                f @ cryptoki::context::Function::DeriveKey,
            )) => Err(CkError::Pkcs11(RvError::MechanismParamInvalid, f)),
            other => other,
        }
    });
    let h = match r {
        Ok(h) => h,
        Err(HsmError::Pkcs11 { rv: 0x71, .. }) => {
            return Err(HsmError::InvalidInput(
                "The public key is not a valid point on the key's curve.".into(),
            ))
        }
        Err(e) => return Err(e),
    };
    let v = ctx
        .session()
        .get_attributes(h, &[AttributeType::Value])
        .map_err(|e| ctx.err(e));
    let _ = ctx.session().destroy_object(h);
    match v?.pop() {
        Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
        _ => Err(HsmError::Internal(format!(
            "{hsm}: derived secret has no value"
        ))),
    }
}

/// Self-test of a key pair in one HSM: the private half must match the public object.
/// Returns what another HSM's copy must reproduce (the ECDH secret with the key's own
/// point; nothing for signatures and decryption, which are checked against the public key).
fn prove_pair(
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
            let digest = ops::random(ctx, 32)?;
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
            let pt = ops::random(ctx, 32)?;
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
        _ => Err(HsmError::Internal("unsupported key pair usage".into())),
    }
}

/// Proof material sent from the generating HSM to every other one.
pub(super) struct PairTransfer {
    wrapped: Zeroizing<Vec<u8>>,
    public: PublicKey,
    expected: Option<Zeroizing<Vec<u8>>>,
}

/// What one HSM sends to another to copy a key.
pub(super) enum Transfer {
    Aes(AesTransfer),
    Pair(PairTransfer),
    Hmac(HmacTransfer),
}

/// An AES key in transit: wrapped under the cluster wrapping key, plus a GCM proof
/// (IV, plaintext, ciphertext) that the copy must decrypt.
type AesTransfer = (Zeroizing<Vec<u8>>, [u8; ops::IV_LEN], Vec<u8>, Vec<u8>);

use super::cluster::PROOF_AAD;

fn export_aes(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<AesTransfer, HsmError> {
    let wrapped = ops::wrap_secret(ctx, CWK_ID, id)?;
    let pt = ops::random(ctx, 32)?;
    let (iv, ct) = ops::gcm_encrypt(ctx, id, PROOF_AAD, &pt)?;
    Ok((wrapped, iv, pt, ct))
}

fn install_aes(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    (wrapped, iv, pt, ct): &AesTransfer,
) -> Result<(), HsmError> {
    ops::unwrap_secret(
        ctx,
        CWK_ID,
        wrapped,
        id,
        &ops::unwrapped_aes_template(id, label, true, false),
    )?;
    let back = ops::gcm_decrypt(ctx, id, iv, PROOF_AAD, ct)?;
    if back.as_slice() != pt.as_slice() {
        return Err(HsmError::Internal(format!(
            "{}: replicated key failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}

fn export(ctx: &mut WorkerCtx<'_>, id: &[u8], kind: KeyKind) -> Result<Transfer, HsmError> {
    match kind {
        KeyKind::Aes => export_aes(ctx, id).map(Transfer::Aes),
        KeyKind::Pair(spec, usage) => export_pair(ctx, id, spec, usage).map(Transfer::Pair),
        KeyKind::Hmac(len) => export_hmac(ctx, id, len).map(Transfer::Hmac),
    }
}

/// A data key pair generated in an HSM: (PKCS#8 private key, SPKI public key).
pub type DataKeyPair = (Zeroizing<Vec<u8>>, Vec<u8>);

fn data_key_pair(ctx: &mut WorkerCtx<'_>, spec: PairSpec) -> Result<DataKeyPair, HsmError> {
    let pub_t = vec![Attribute::Token(false), Attribute::Verify(true)];
    let priv_t = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        // The data key pair is the caller's key, returned to it: extractable by design.
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ];
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
            .map_err(|e| ctx.err(e))?;
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

/// The HMAC mechanism that proves an HMAC key of `len` bytes.
fn hmac_for_len(len: usize) -> Hash {
    match len {
        0..=28 => Hash::Sha224,
        29..=32 => Hash::Sha256,
        33..=48 => Hash::Sha384,
        _ => Hash::Sha512,
    }
}

/// What a non-AES KMS key object holds, so that it can be copied to an HSM that lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An AES-256 encryption key (symmetric KMS keys and their backing versions).
    Aes,
    Pair(PairSpec, PairUse),
    /// An HMAC key of this many bytes.
    Hmac(usize),
}

/// Source side of a key-pair copy: wrap the private half under the cluster wrapping key,
/// read the public half, and compute the proof the copy must reproduce.
fn export_pair(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    spec: PairSpec,
    usage: PairUse,
) -> Result<PairTransfer, HsmError> {
    let pubh = ctx.handle(PUBLIC, id)?;
    let privh = ctx.handle(PRIVATE, id)?;
    let public = read_public(ctx, spec, pubh)?;
    let expected = prove_pair(ctx, id, spec, usage, &public)?;
    let wrapped = ctx
        .with_key(SECRET, CWK_ID, |s, w| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, w, privh)
        })
        .map(Zeroizing::new)?;
    Ok(PairTransfer {
        wrapped,
        public,
        expected,
    })
}

/// Receiving side: unwrap the private half, create the public object, prove the copy.
fn install_pair(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    spec: PairSpec,
    usage: PairUse,
    tr: &PairTransfer,
) -> Result<(), HsmError> {
    let h = ctx.with_key(SECRET, CWK_ID, |s, w| {
        s.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            w,
            &tr.wrapped,
            &private_template(spec, id, label, usage),
        )
    })?;
    ctx.remember(PRIVATE, id, h);
    let p = ctx
        .session()
        .create_object(&tr.public.object_template(id, label, usage))
        .map_err(|e| ctx.err(e))?;
    ctx.remember(PUBLIC, id, p);
    let got = prove_pair(ctx, id, spec, usage, &tr.public)?;
    if got.as_ref().map(|v| v.as_slice()) != tr.expected.as_ref().map(|v| v.as_slice()) {
        return Err(HsmError::Internal(format!(
            "{}: replicated key pair failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}

fn hmac_template(id: &[u8], label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Wrapped HMAC key, a random message and its MAC (the copy must reproduce it).
type HmacTransfer = (Zeroizing<Vec<u8>>, Vec<u8>, Vec<u8>);

fn export_hmac(ctx: &mut WorkerCtx<'_>, id: &[u8], len: usize) -> Result<HmacTransfer, HsmError> {
    let wrapped = ops::wrap_secret(ctx, CWK_ID, id)?;
    let msg = ops::random(ctx, 32)?;
    let mac = hmac(ctx, id, hmac_for_len(len), &msg)?;
    Ok((wrapped, msg, mac))
}

fn install_hmac(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    len: usize,
    (wrapped, msg, mac): &HmacTransfer,
) -> Result<(), HsmError> {
    ops::unwrap_secret(ctx, CWK_ID, wrapped, id, &hmac_template(id, label))?;
    if &hmac(ctx, id, hmac_for_len(len), msg)? != mac {
        return Err(HsmError::Internal(format!(
            "{}: replicated HMAC key failed its proof",
            ctx.hsm()
        )));
    }
    Ok(())
}

impl HsmCluster {
    /// Create a key pair with `CKA_ID = id` in one HSM and copy it into every other usable
    /// HSM (private half wrapped under the cluster wrapping key, public half as a public
    /// object), proving each copy. Returns the SubjectPublicKeyInfo DER. On any failure
    /// every copy made is destroyed.
    pub async fn create_key_pair(
        &self,
        id: &[u8],
        label: &str,
        spec: PairSpec,
        usage: PairUse,
    ) -> Result<Vec<u8>, HsmError> {
        let (i2, l2) = (id.to_vec(), label.to_string());
        let transfer = self
            .create_replicated(id, label, KeyKind::Pair(spec, usage), move |ctx| {
                let pub_t = vec![
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Verify(usage == PairUse::Sign),
                    Attribute::Encrypt(usage == PairUse::Decrypt),
                    Attribute::Id(i2.clone()),
                    Attribute::Label(l2.as_bytes().to_vec()),
                ];
                let (pubh, privh) =
                    keygen(ctx, spec, pub_t, &private_template(spec, &i2, &l2, usage))?;
                ctx.remember(PUBLIC, &i2, pubh);
                ctx.remember(PRIVATE, &i2, privh);
                Ok(())
            })
            .await?;
        match &*transfer {
            Transfer::Pair(tr) => tr.public.spki(),
            _ => Err(HsmError::Internal("key pair expected".into())),
        }
    }

    /// Create an HMAC key of `len` bytes (`CKK_GENERIC_SECRET`, sign/verify) in one HSM and
    /// copy it into every other usable HSM, proving each copy with an HMAC.
    pub async fn create_hmac_key(
        &self,
        id: &[u8],
        label: &str,
        len: usize,
    ) -> Result<(), HsmError> {
        let (i2, l2) = (id.to_vec(), label.to_string());
        self.create_replicated(id, label, KeyKind::Hmac(len), move |ctx| {
            let hsm = ctx.hsm().to_string();
            ctx.caps().require(
                &hsm,
                MechanismType::GENERIC_SECRET_KEY_GEN,
                "CKM_GENERIC_SECRET_KEY_GEN",
            )?;
            let mut tm = hmac_template(&i2, &l2);
            tm.push(Attribute::ValueLen((len as u64).into()));
            let k = ctx
                .session()
                .generate_key(&Mechanism::GenericSecretKeyGen, &tm)
                .map_err(|e| ctx.err(e))?;
            ctx.remember(SECRET, &i2, k);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Generate with `generate` on the first usable HSM, then copy to every other usable
    /// HSM; at least `min_copies` must hold it, and any failure destroys every copy.
    pub(super) async fn create_replicated(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        generate: impl FnOnce(&mut WorkerCtx<'_>) -> Result<(), HsmError> + Send + 'static,
    ) -> Result<Arc<Transfer>, HsmError> {
        let targets = self.usable_nodes();
        let needed = self.opts.min_copies.max(2);
        if targets.len() < needed {
            return Err(HsmError::NotEnoughHsms {
                healthy: targets.len(),
                needed,
            });
        }
        let t = self.opts.keygen_timeout;
        let (id, label) = (id.to_vec(), label.to_string());
        let primary = targets[0];
        let i2 = id.clone();
        let made = self.nodes[primary]
            .call(t, move |ctx| {
                generate(ctx)?;
                export(ctx, &i2, kind)
            })
            .await;
        let transfer = match made {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.destroy_all_on(&[primary], &id).await;
                return Err(e);
            }
        };
        let mut holders = vec![primary];
        for &i in &targets[1..] {
            holders.push(i);
            if let Err(e) = self
                .install_on(i, &id, &label, kind, transfer.clone())
                .await
            {
                tracing::error!(hsm = %self.nodes[i].name(), error = %e, "replication failed; destroying every copy");
                self.destroy_all_on(&holders, &id).await;
                return Err(e);
            }
        }
        Ok(transfer)
    }

    async fn install_on(
        &self,
        node: usize,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        transfer: Arc<Transfer>,
    ) -> Result<(), HsmError> {
        let (id, label) = (id.to_vec(), label.to_string());
        self.nodes[node]
            .call(self.opts.keygen_timeout, move |ctx| {
                match (kind, &*transfer) {
                    (KeyKind::Aes, Transfer::Aes(tr)) => install_aes(ctx, &id, &label, tr),
                    (KeyKind::Pair(spec, usage), Transfer::Pair(tr)) => {
                        install_pair(ctx, &id, &label, spec, usage, tr)
                    }
                    (KeyKind::Hmac(len), Transfer::Hmac(tr)) => {
                        install_hmac(ctx, &id, &label, len, tr)
                    }
                    _ => Err(HsmError::Internal("key kind mismatch".into())),
                }
            })
            .await
    }

    /// Copy asymmetric and HMAC keys that some usable HSM lacks (it was down or new when
    /// they were created) from an HSM that holds them. Returns how many copies were made.
    pub async fn replicate_missing_kinds(
        &self,
        keys: &[(Vec<u8>, String, KeyKind)],
    ) -> Result<usize, HsmError> {
        let mut copies = 0;
        for (id, label, kind) in keys {
            let class = match kind {
                KeyKind::Pair(..) => PRIVATE,
                KeyKind::Aes | KeyKind::Hmac(_) => SECRET,
            };
            let usable = self.usable_nodes();
            let Some(&src) = usable
                .iter()
                .find(|i| self.nodes[**i].has_object(class, id))
            else {
                continue;
            };
            for &dst in &usable {
                if self.nodes[dst].has_object(class, id) {
                    continue;
                }
                let (i2, k2) = (id.clone(), *kind);
                let transfer = self.nodes[src]
                    .call(self.opts.keygen_timeout, move |ctx| export(ctx, &i2, k2))
                    .await?;
                self.install_on(dst, id, label, *kind, Arc::new(transfer))
                    .await?;
                tracing::info!(hsm = %self.nodes[dst].name(), object = %hex::encode(id), "re-synced a missing key");
                copies += 1;
            }
        }
        Ok(copies)
    }

    /// Sign on one named HSM (no failover): for tests and operator checks.
    pub async fn sign_on(
        &self,
        hsm: &str,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name() == hsm)
            .ok_or_else(|| HsmError::Internal(format!("no HSM named {hsm}")))?;
        let id = id.to_vec();
        node.call(self.opts.call_timeout, move |ctx| {
            sign(ctx, &id, scheme, &digest)
        })
        .await
    }

    async fn destroy_all_on(&self, nodes: &[usize], id: &[u8]) {
        for &i in nodes {
            let id = id.to_vec();
            let _ = self.nodes[i]
                .call(self.opts.keygen_timeout, move |ctx| destroy_all(ctx, &id))
                .await;
        }
    }

    /// Destroy every object (secret, private, public) with this `CKA_ID` on every HSM.
    /// Fails unless every HSM answered.
    pub async fn destroy_key_objects(&self, id: &[u8]) -> Result<(), HsmError> {
        let mut first_err = None;
        for node in &self.nodes {
            let id = id.to_vec();
            if let Err(e) = node
                .call(self.opts.keygen_timeout, move |ctx| destroy_all(ctx, &id))
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sign a digest with private key `id` (ECDSA signatures as DER).
    pub async fn sign(
        &self,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            sign(ctx, &id, scheme, &digest)
        })
        .await
    }

    /// Verify a signature over a digest with the public key `id` held by the HSMs.
    pub async fn verify(
        &self,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            verify(ctx, &id, scheme, &digest, &signature)
        })
        .await
    }

    /// HMAC of `msg` under HMAC key `id`.
    pub async fn hmac(&self, id: &[u8], h: Hash, msg: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| hmac(ctx, &id, h, &msg))
            .await
    }

    /// RSA-OAEP decryption with private key `id` whose modulus is `k` bytes.
    pub async fn rsa_oaep_decrypt(
        &self,
        id: &[u8],
        h: Hash,
        k: usize,
        ct: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            oaep_decrypt(ctx, &id, h, k, &ct)
        })
        .await
    }

    /// ECDH with private key `id` and a peer's raw uncompressed point.
    pub async fn ecdh(
        &self,
        id: &[u8],
        curve: Curve,
        peer_point: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            ecdh(ctx, &id, curve, &peer_point)
        })
        .await
    }

    /// A data key pair generated inside an HSM (session objects, destroyed at once):
    /// (PKCS#8 DER private key, SPKI DER public key).
    pub async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, HsmError> {
        self.run(self.opts.keygen_timeout, move |ctx| {
            data_key_pair(ctx, spec)
        })
        .await
    }

    /// True if the HSM's handle cache knows a private key with this `CKA_ID`.
    pub fn hsm_holds_private(&self, hsm: &str, id: &[u8]) -> bool {
        self.nodes
            .iter()
            .any(|n| n.name() == hsm && n.has_object(PRIVATE, id))
    }

    /// Whether every HSM can hold (generate, use and replicate) Ed25519 keys.
    pub fn can_hold_ed25519_keys(&self) -> bool {
        self.nodes.iter().all(|n| n.ed25519_keys())
    }

    /// The capabilities found at connect on each HSM.
    pub fn capabilities(&self) -> Vec<(String, bool)> {
        self.nodes
            .iter()
            .map(|n| (n.name().to_string(), n.oaep_sha256()))
            .collect()
    }
}
