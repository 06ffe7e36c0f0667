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
    Pair(PairSpec, PairUse),
    /// An HMAC key of this many bytes.
    Hmac(usize),
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
