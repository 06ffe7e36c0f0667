//! Pure functions that build PKCS#11 attribute templates (no calls to a token): every key
//! object the layer creates, generates or unwraps gets its attributes here, so the policy
//! (token or session object, sensitive, extractable only for wrapping, usage flags) can be
//! read in one place.

use super::handles::{CANARY_ID, CWK_ID};
use super::kinds::{PairSpec, PairUse, PublicKey};
use crate::pkix;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

const CWK_LABEL: &str = "hsm-kms cluster wrapping key";

/// An AES-256 token key for `C_GenerateKey`. `replicable` keys are extractable so that they
/// can be wrapped under the cluster wrapping key (never in plaintext: CKA_SENSITIVE is
/// always set).
pub(super) fn aes_key(id: &[u8], label: &str, replicable: bool) -> Vec<Attribute> {
    let mut t = vec![Attribute::ValueLen(32.into())];
    t.extend(unwrapped_aes_key(id, label, replicable, false));
    t
}

/// An AES key that arrives by `C_UnwrapKey` (no CKA_VALUE_LEN allowed). A `wrapping` key
/// wraps and unwraps; any other encrypts and decrypts.
pub(super) fn unwrapped_aes_key(
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

/// The per-HSM canary key of health probes (not replicable).
pub(super) fn canary() -> Vec<Attribute> {
    aes_key(CANARY_ID, "hsm-kms canary", false)
}

/// The cluster wrapping key: generated (with its length) or unwrapped (without).
pub(super) fn cluster_wrapping_key(generated: bool) -> Vec<Attribute> {
    let mut t = Vec::new();
    if generated {
        t.push(Attribute::ValueLen(32.into()));
    }
    t.extend(unwrapped_aes_key(CWK_ID, CWK_LABEL, true, true));
    t
}

/// A throw-away session AES key (for proofs); `generated` adds the key length.
pub(super) fn session_aes(id: &[u8], generated: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Id(id.to_vec()),
    ];
    if generated {
        t.push(Attribute::ValueLen(32.into()));
    }
    t
}

/// An HMAC key (`CKK_GENERIC_SECRET`, sign/verify, replicable); for `C_UnwrapKey`.
pub(super) fn hmac_key(id: &[u8], label: &str) -> Vec<Attribute> {
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

/// An HMAC key of `len` bytes for `C_GenerateKey`.
pub(super) fn generated_hmac_key(id: &[u8], label: &str, len: usize) -> Vec<Attribute> {
    let mut t = hmac_key(id, label);
    t.push(Attribute::ValueLen((len as u64).into()));
    t
}

fn key_type(spec: PairSpec) -> KeyType {
    match spec {
        PairSpec::Rsa(_) => KeyType::RSA,
        PairSpec::Ec(_) => KeyType::EC,
        PairSpec::Ed25519 => KeyType::EC_EDWARDS,
    }
}

/// A KMS private key (token object, sensitive, extractable only so that it can be wrapped
/// under the cluster wrapping key).
pub(super) fn private_key(
    spec: PairSpec,
    id: &[u8],
    label: &str,
    usage: PairUse,
) -> Vec<Attribute> {
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

/// The public half of a KMS key pair at generation (a public token object).
pub(super) fn generated_public_key(id: &[u8], label: &str, usage: PairUse) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(usage == PairUse::Sign),
        Attribute::Encrypt(usage == PairUse::Decrypt),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The key-size or curve attributes `C_GenerateKeyPair` needs in the public template.
pub(super) fn key_pair_params(spec: PairSpec) -> Vec<Attribute> {
    match spec {
        PairSpec::Rsa(bits) => vec![
            Attribute::ModulusBits((bits as u64).into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
        ],
        PairSpec::Ec(curve) => vec![Attribute::EcParams(curve.params_der().to_vec())],
        PairSpec::Ed25519 => vec![Attribute::EcParams(pkix::ED25519_OID.to_vec())],
    }
}

/// A copied public key as a token object with `CKA_ID = id` (`C_CreateObject`).
pub(super) fn public_key_object(
    public: &PublicKey,
    id: &[u8],
    label: &str,
    usage: PairUse,
) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(usage == PairUse::Sign),
        Attribute::Encrypt(usage == PairUse::Decrypt),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    match public {
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

/// A data key pair (session objects): (public, private). The private half is the caller's
/// key, returned to it: extractable and not sensitive by design.
pub(super) fn data_key_pair() -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![Attribute::Token(false), Attribute::Verify(true)],
        vec![
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Sign(true),
        ],
    )
}

/// The ECDH shared secret: a short-lived, extractable session object of `len` bytes.
pub(super) fn ecdh_secret(len: usize) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen((len as u64).into()),
    ]
}

/// The RSA-2048 transport pair of enrollment: (public, private). The private half unwraps
/// and never leaves the token.
pub(super) fn transport_pair(id: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::Id(id.to_vec()),
        ],
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(true),
            Attribute::Id(id.to_vec()),
        ],
    )
}

/// The receiver's transport public key as a session object on the sending HSM.
pub(super) fn transport_public(modulus: &[u8], exponent: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Modulus(modulus.to_vec()),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Wrap(true),
        Attribute::Encrypt(true),
    ]
}

/// Capability probe: a throw-away RSA-1024 session pair (public, private).
pub(super) fn probe_rsa_pair() -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(false),
            Attribute::ModulusBits(1024.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
        ],
        vec![
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Decrypt(true),
        ],
    )
}

/// Capability probe: a session AES wrapping key.
pub(super) fn probe_wrapping_key() -> Vec<Attribute> {
    vec![
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
        Attribute::Wrap(true),
    ]
}

/// Capability probe: a sensitive, extractable Ed25519 session pair (public, private).
pub(super) fn probe_ed25519_pair() -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(false),
            Attribute::EcParams(pkix::ED25519_OID.to_vec()),
        ],
        vec![
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Sign(true),
        ],
    )
}
