//! Plain data describing keys (no PKCS#11 calls): what a KMS key object is ([`KeyKind`],
//! [`PairSpec`], [`PairUse`]), the signature schemes ([`SignScheme`]), and a public key as
//! read from a token ([`PublicKey`]) with its SubjectPublicKeyInfo encoding.

use super::error::HsmError;
use crate::pkix::{self, Curve, Hash};
use zeroize::Zeroizing;

/// What a KMS key object holds, so that it can be created and copied to an HSM that lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An AES-256 encryption key (symmetric KMS keys and their backing versions).
    Aes,
    /// A key pair (private and public objects with one `CKA_ID`) of this spec and usage.
    Pair(PairSpec, PairUse),
    /// An HMAC key of this many bytes.
    Hmac(usize),
}

/// The kind of key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSpec {
    /// RSA (`CKK_RSA`) with a modulus of this many bits.
    Rsa(u32),
    /// EC (`CKK_EC`) on this curve.
    Ec(Curve),
    /// Ed25519 (`CKK_EC_EDWARDS`), where the token offers CKM_EC_EDWARDS_KEY_PAIR_GEN.
    Ed25519,
}

/// What the private half may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairUse {
    /// `CKA_SIGN` (the public half has `CKA_VERIFY`).
    Sign,
    /// `CKA_DECRYPT` (the public half has `CKA_ENCRYPT`).
    Decrypt,
    /// `CKA_DERIVE`: ECDH key agreement.
    Derive,
}

/// A signature scheme over a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignScheme {
    /// ECDSA; signatures are DER `ECDSA-Sig-Value`.
    Ecdsa(Curve),
    /// RSA PKCS#1 v1.5 (`CKM_RSA_PKCS`) over the DigestInfo of a digest made with this hash.
    RsaPkcs1(Hash),
    /// RSA-PSS (`CKM_RSA_PKCS_PSS`) with this hash, MGF1 of it and salt = digest length.
    RsaPss(Hash),
    /// Pure Ed25519 over the message itself.
    Ed25519,
    /// Ed25519ph over a SHA-512 digest.
    Ed25519ph,
}

/// A data key pair generated in an HSM: (PKCS#8 private key, SPKI public key).
pub type DataKeyPair = (Zeroizing<Vec<u8>>, Vec<u8>);

/// A public key as read from the token.
#[derive(Debug, Clone)]
pub(super) enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519 { point: Vec<u8> },
}

impl PublicKey {
    /// SubjectPublicKeyInfo DER.
    pub(super) fn spki(&self) -> Result<Vec<u8>, HsmError> {
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
}
