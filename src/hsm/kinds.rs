//! Plain data describing keys (no PKCS#11 calls): the port's key kinds and signature
//! schemes as this layer reads them, and a public key as read from a token ([`PublicKey`])
//! with its SubjectPublicKeyInfo encoding.

use super::error::HsmError;
use super::handles::ObjectKind;
use crate::pkix::{self, Curve};
use zeroize::Zeroizing;

// The kinds of keys and the signature schemes are the domain port's own vocabulary (one
// definition, no translation in the adapter): a `KeyKind::Pair(PairSpec::Rsa(bits), PairUse::Sign)`
// is a `CKK_RSA` pair whose private half has `CKA_SIGN` and public half `CKA_VERIFY`;
// `SignScheme::RsaPkcs1` is `CKM_RSA_PKCS` over a DigestInfo, `RsaPss` is `CKM_RSA_PKCS_PSS`
// with MGF1 of the same hash and salt = digest length, `Ecdsa` is `CKM_ECDSA` on a digest
// (signatures re-encoded as DER), `Ed25519`/`Ed25519ph` are `CKM_EDDSA`.
pub use crate::kms::vault::{DataKeyPair, KeyKind, PairSpec, PairUse, SignScheme};

/// The object whose presence on a token means it holds a key of `kind`: the private half
/// of a key pair, else the secret key.
pub(super) fn holding_object(kind: KeyKind) -> ObjectKind {
    match kind {
        KeyKind::Pair(..) => ObjectKind::Private,
        KeyKind::Aes | KeyKind::Hmac(_) => ObjectKind::Secret,
    }
}

/// A public key as read from the token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// The custody protections one token enforced when probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Protections {
    /// Wrapping a wrap-with-trusted key under a user-made key was refused.
    pub wrap_with_trusted: bool,
    /// The cluster wrapping key is `CKA_TRUSTED`.
    pub trusted_wrapping_key: bool,
    /// The cluster wrapping key is neither copyable nor modifiable.
    pub wrapping_key_locked: bool,
    /// Unwrapping under the cluster wrapping key into a readable key was refused.
    pub unwrap_template: bool,
}

impl Protections {
    /// Whether every protection holds.
    pub fn all(&self) -> bool {
        self.wrap_with_trusted
            && self.trusted_wrapping_key
            && self.wrapping_key_locked
            && self.unwrap_template
    }

    /// The names of the protections that do not hold (for the start-up warning).
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.wrap_with_trusted, "CKA_WRAP_WITH_TRUSTED enforcement"),
            (self.trusted_wrapping_key, "a trusted cluster wrapping key"),
            (
                self.wrapping_key_locked,
                "a non-copyable, non-modifiable wrapping key",
            ),
            (self.unwrap_template, "CKA_UNWRAP_TEMPLATE enforcement"),
        ]
        .into_iter()
        .filter(|(held, _)| !held)
        .map(|(_, name)| name)
        .collect()
    }
}

/// Secret bytes that cross between HSM threads or processes (a plaintext, a data key, a
/// proof message): zeroized on drop, serialized as plain bytes in a host frame
/// (`super::host`), which is itself zeroized after use.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Secret(pub(super) Zeroizing<Vec<u8>>);

impl Secret {
    pub(super) fn new(v: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(v))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for Secret {
    type Target = Zeroizing<Vec<u8>>;
    fn deref(&self) -> &Zeroizing<Vec<u8>> {
        &self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for Secret {
    fn from(v: Zeroizing<Vec<u8>>) -> Secret {
        Secret(v)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Secret, E> {
                Ok(Secret::new(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Secret, A::Error> {
                let mut v =
                    Zeroizing::new(Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096)));
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Secret(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
