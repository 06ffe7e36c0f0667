//! Pure functions that build the PKCS#11 [`Mechanism`]s the layer uses (no calls to a
//! token): AES-GCM with AAD, the key-wrapping mechanism, RSA-OAEP, HMAC, and the mechanism
//! plus token input of each signature scheme.

use super::kinds::SignScheme;
use crate::pkix::Hash;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};

/// GCM IV length (bytes): the port's.
pub use crate::kms::vault::IV_LEN;
/// GCM tag length (bits).
const TAG_BITS: u64 = 128;

/// AES-GCM with a 12-byte IV, `aad` and a 128-bit tag.
pub(super) fn gcm<'a>(
    iv: &'a mut [u8; IV_LEN],
    aad: &'a [u8],
) -> Result<Mechanism<'a>, cryptoki::error::Error> {
    Ok(Mechanism::AesGcm(GcmParams::new(iv, aad, TAG_BITS.into())?))
}

/// The mechanism that wraps keys under the cluster wrapping key (AES-KEY-WRAP-PAD, RFC 5649).
pub(super) fn key_wrap() -> Mechanism<'static> {
    Mechanism::AesKeyWrapPad
}

/// Hash mechanism and MGF1 of the same hash.
fn hash_and_mgf(h: Hash) -> (MechanismType, PkcsMgfType) {
    match h {
        Hash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        Hash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

/// RSA-OAEP with `h` and MGF1-`h`, empty label.
pub(super) fn oaep(h: Hash) -> Mechanism<'static> {
    let (hash, mgf) = hash_and_mgf(h);
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

/// HMAC with `h`.
pub(super) fn hmac(h: Hash) -> Mechanism<'static> {
    match h {
        Hash::Sha1 => Mechanism::Sha1Hmac,
        Hash::Sha224 => Mechanism::Sha224Hmac,
        Hash::Sha256 => Mechanism::Sha256Hmac,
        Hash::Sha384 => Mechanism::Sha384Hmac,
        Hash::Sha512 => Mechanism::Sha512Hmac,
    }
}

/// ECDH (`CKM_ECDH1_DERIVE`, `CKD_NULL`) with a peer's raw point.
pub(super) fn ecdh(peer_point: &[u8]) -> Mechanism<'_> {
    Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_point))
}

/// The mechanism and the token input for signing (or verifying) `digest` with `scheme`.
pub(super) fn sign(scheme: SignScheme, digest: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
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
            let (hash_alg, mgf) = hash_and_mgf(h);
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
