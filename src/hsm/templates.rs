//! Pure functions that build PKCS#11 attribute templates (no calls to a token): every key
//! object the layer creates, generates or unwraps gets its attributes here, so the policy
//! can be read in one place:
//!
//! * every KMS key (AES, HMAC, private keys) and the credential-sealing key is sensitive and
//!   `CKA_WRAP_WITH_TRUSTED`: it is extractable only so that it can be wrapped under the
//!   cluster wrapping key, and the token refuses to wrap it under any key the SO did not mark
//!   `CKA_TRUSTED` (a key made with the user PIN cannot export it);
//! * each key has only the usages it needs (an HMAC key signs and verifies, nothing else);
//! * the cluster wrapping key (CWK) is made by the SO in the enrollment ceremony: trusted,
//!   public (the SO sees only public objects), wrap-with-trusted itself, neither copyable nor
//!   modifiable, and with a `CKA_UNWRAP_TEMPLATE` that forces whatever it unwraps to be
//!   sensitive and wrap-with-trusted ([`UnwrapTemplate`]).

use super::handles::{CANARY_ID, CWK_ID};
use super::kinds::{PairSpec, PairUse, PublicKey};
use crate::pkix::{self, Curve};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use std::os::raw::c_ulong;

const CWK_LABEL: &str = "hsm-kms cluster wrapping key";

/// An AES-256 token key for `C_GenerateKey`. `replicable` keys are extractable so that they
/// can be wrapped under the cluster wrapping key (never in plaintext: CKA_SENSITIVE is
/// always set, and CKA_WRAP_WITH_TRUSTED limits wrapping to trusted keys).
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
        Attribute::WrapWithTrusted(true),
        Attribute::Encrypt(!wrapping),
        Attribute::Decrypt(!wrapping),
        Attribute::Wrap(wrapping),
        Attribute::Unwrap(wrapping),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The per-HSM canary key of health probes (not replicable).
pub(super) fn canary() -> Vec<Attribute> {
    aes_key(CANARY_ID, "hsm-kms canary", false)
}

/// `CKA_UNWRAP_TEMPLATE` (`CKF_ARRAY_ATTRIBUTE | 0x212`); cryptoki 0.12 has no variant for
/// attribute arrays, so it travels as a raw attribute (see [`UnwrapTemplate`]).
const CKA_UNWRAP_TEMPLATE: c_ulong = 0x4000_0212;

/// The attributes the CWK's `CKA_UNWRAP_TEMPLATE` forces on every key it unwraps.
const FORCED_ON_UNWRAP: [(AttributeType, bool); 2] = [
    (AttributeType::Sensitive, true),
    (AttributeType::WrapWithTrusted, true),
];

/// A `CKA_UNWRAP_TEMPLATE` value: an array of `CK_ATTRIBUTE` (type, pointer, length) whose
/// pointers address boolean buffers owned here. PKCS#11 reads the array during the call that
/// receives it (SoftHSM2 copies the values into the object), so a template is valid only
/// while this value lives: [`CwkTemplate`] keeps both together. Built without `unsafe`:
/// the pointers are only turned into integers, never dereferenced on this side.
pub(super) struct UnwrapTemplate {
    /// One byte per boolean; never changed after construction, so the heap buffer (and
    /// the pointers into it) stay put when this value moves.
    values: Vec<[u8; 1]>,
    /// The template nested in this one, whose bytes an entry of `bytes` points to (boxed
    /// and never changed, so they stay put too).
    inner: Option<Box<UnwrapTemplate>>,
    bytes: Vec<u8>,
}

impl UnwrapTemplate {
    /// Sensitive and wrap-with-trusted.
    fn forced() -> UnwrapTemplate {
        UnwrapTemplate::build(None)
    }

    /// Sensitive and wrap-with-trusted, and (nested) a `CKA_UNWRAP_TEMPLATE` forcing the
    /// same on whatever an unwrapped key unwraps in turn: the confinement of the two-step
    /// RSA_AES import, where the ephemeral AES key unwraps the material. Only for tokens
    /// that enforce nested templates (`Caps::nested_unwrap_templates`; SoftHSM 2.6.1
    /// refuses them with `CKR_ATTRIBUTE_VALUE_INVALID`).
    fn forced_nested() -> UnwrapTemplate {
        UnwrapTemplate::build(Some(Box::new(UnwrapTemplate::forced())))
    }

    fn build(inner: Option<Box<UnwrapTemplate>>) -> UnwrapTemplate {
        let values: Vec<[u8; 1]> = FORCED_ON_UNWRAP
            .iter()
            .map(|(_, v)| [u8::from(*v)])
            .collect();
        let word = std::mem::size_of::<c_ulong>();
        let mut bytes = Vec::with_capacity((values.len() + 1) * 3 * word);
        // CK_ATTRIBUTE { CK_ATTRIBUTE_TYPE type; CK_VOID_PTR pValue; CK_ULONG ulValueLen }
        let mut entry = |ty: c_ulong, ptr: usize, len: usize| {
            bytes.extend(ty.to_ne_bytes());
            bytes.extend(ptr.to_ne_bytes());
            bytes.extend((len as c_ulong).to_ne_bytes());
        };
        for ((t, _), v) in FORCED_ON_UNWRAP.iter().zip(&values) {
            entry((*t).into(), v.as_ptr() as usize, 1);
        }
        if let Some(i) = &inner {
            entry(
                CKA_UNWRAP_TEMPLATE,
                i.bytes.as_ptr() as usize,
                i.bytes.len(),
            );
        }
        UnwrapTemplate {
            values,
            inner,
            bytes,
        }
    }

    fn attribute(&self) -> Attribute {
        debug_assert_eq!(self.values.len(), FORCED_ON_UNWRAP.len());
        debug_assert!(self.inner.as_ref().is_none_or(|i| i.inner.is_none()));
        Attribute::VendorDefined((
            AttributeType::VendorDefined(CKA_UNWRAP_TEMPLATE),
            self.bytes.clone(),
        ))
    }
}

// `CK_ATTRIBUTE` is laid out as three machine words only where pointers and `CK_ULONG`
// have the same size (LP64 Linux, the only platform this service is built for).
const _: () = assert!(std::mem::size_of::<usize>() == std::mem::size_of::<c_ulong>());

/// The template of the cluster wrapping key, with the buffers its unwrap template points
/// into: keep it alive until the call that uses [`CwkTemplate::attributes`] returns.
pub(super) struct CwkTemplate {
    attributes: Vec<Attribute>,
    _unwrap: UnwrapTemplate,
}

impl CwkTemplate {
    /// The attributes, for `C_GenerateKey` or `C_UnwrapKey`.
    pub(super) fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }
}

/// The cluster wrapping key as the SO makes it in the ceremony: generated (with its
/// length) or unwrapped from a transport key (without). A trusted, public, sensitive token
/// key that only wraps and unwraps; extractable only under a trusted key (the receiving
/// token's transport key); neither copyable nor modifiable, so that no one can make an
/// untemplated or untrusted twin of it.
pub(super) fn cluster_wrapping_key(generated: bool) -> CwkTemplate {
    let unwrap = UnwrapTemplate::forced();
    let mut t = Vec::new();
    if generated {
        t.push(Attribute::ValueLen(32.into()));
    }
    t.extend([
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Trusted(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Derive(false),
        Attribute::Id(CWK_ID.to_vec()),
        Attribute::Label(CWK_LABEL.as_bytes().to_vec()),
        unwrap.attribute(),
    ]);
    t.extend([Attribute::Copyable(false), Attribute::Modifiable(false)]);
    CwkTemplate {
        attributes: t,
        _unwrap: unwrap,
    }
}

/// `hsm check`: a wrapping key made by the SO exactly as the cluster wrapping key is (a
/// trusted token key with its unwrap template), but with its own `CKA_ID` and label, so that
/// the check never touches, shadows or is mistaken for a real cluster wrapping key.
pub(super) fn check_wrapping_key(id: &[u8], label: &str) -> CwkTemplate {
    let mut t = cluster_wrapping_key(true);
    for a in &mut t.attributes {
        match a {
            Attribute::Id(v) => *v = id.to_vec(),
            Attribute::Label(v) => *v = label.as_bytes().to_vec(),
            _ => {}
        }
    }
    t
}

/// `hsm check`: the service's template `t` for a session object (`CKA_TOKEN` false) of
/// this label, everything else unchanged.
pub(super) fn as_session_object(mut t: Vec<Attribute>, label: &str) -> Vec<Attribute> {
    for a in &mut t {
        match a {
            Attribute::Token(v) => *v = false,
            Attribute::Label(v) => *v = label.as_bytes().to_vec(),
            _ => {}
        }
    }
    t
}

/// A throw-away session AES key (for proofs), wrap-with-trusted like a KMS key (and so
/// acceptable to the CWK's unwrap template); `generated` adds the key length.
pub(super) fn session_aes(id: &[u8], generated: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Id(id.to_vec()),
    ];
    if generated {
        t.push(Attribute::ValueLen(32.into()));
    }
    t
}

/// An HMAC key (`CKK_GENERIC_SECRET`, replicable under trusted keys only); it signs and
/// verifies and nothing else. For `C_UnwrapKey`.
pub(super) fn hmac_key(id: &[u8], label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
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
/// under the cluster wrapping key, which CKA_WRAP_WITH_TRUSTED enforces).
/// `nested_unwrap` (the token enforces nested unwrap templates) matters only for an import
/// wrapping key (`PairUse::Unwrap`): see [`import_wrapping_unwrap_template`].
pub(super) fn private_key(
    spec: PairSpec,
    id: &[u8],
    label: &str,
    usage: PairUse,
    nested_unwrap: bool,
) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type(spec)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Sign(usage == PairUse::Sign),
        Attribute::Decrypt(usage == PairUse::Decrypt),
        Attribute::Derive(usage == PairUse::Derive),
        Attribute::Unwrap(usage == PairUse::Unwrap),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if usage == PairUse::Unwrap {
        t.push(import_wrapping_unwrap_template(nested_unwrap));
    }
    t
}

/// The `CKA_UNWRAP_TEMPLATE` of an import wrapping key's private half: it can only make
/// sensitive, wrap-with-trusted keys, so a holder of the user PIN cannot unwrap a
/// customer's material into a readable object. With `nested` (tokens that enforce it),
/// what it unwraps must carry the same template in turn, which confines the ephemeral AES
/// key of an RSA_AES import; without, that key could unwrap the material readable, so
/// RSA_AES imports are refused there unless the operator accepts it
/// (`allow_unconfined_rsa_aes_import`).
pub(super) fn import_wrapping_unwrap_template(nested: bool) -> Attribute {
    if nested {
        forced_nested_unwrap_template().attribute()
    } else {
        forced_unwrap_template().attribute()
    }
}

/// The unwrap template forced on what an import wrapping key unwraps, built once and kept
/// for the life of the process, so that the pointers inside its attribute stay valid for
/// every call that passes it.
fn forced_unwrap_template() -> &'static UnwrapTemplate {
    static FORCED: std::sync::OnceLock<UnwrapTemplate> = std::sync::OnceLock::new();
    FORCED.get_or_init(UnwrapTemplate::forced)
}

/// [`forced_unwrap_template`] with the same template nested in it, kept likewise.
fn forced_nested_unwrap_template() -> &'static UnwrapTemplate {
    static FORCED: std::sync::OnceLock<UnwrapTemplate> = std::sync::OnceLock::new();
    FORCED.get_or_init(UnwrapTemplate::forced_nested)
}

/// The ephemeral AES key of an `RSA_AES_KEY_WRAP` import, unwrapped with RSA-OAEP as a
/// session object: sensitive, never extractable, it only unwraps the material; with
/// `nested` it carries the unwrap template its wrapping key demands of it.
pub(super) fn import_ephemeral_key(nested: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(true),
        Attribute::Derive(false),
    ];
    if nested {
        t.push(forced_unwrap_template().attribute());
    }
    t
}

/// Capability probe: a session AES key that wraps and unwraps, whose unwrap template
/// nests another (see [`UnwrapTemplate::forced_nested`]).
pub(super) fn probe_nested_kek() -> Vec<Attribute> {
    let mut t = probe_wrapping_key();
    t.extend([
        Attribute::Unwrap(true),
        forced_nested_unwrap_template().attribute(),
    ]);
    t
}

/// Capability probe: a readable session AES key (what a customer holds), to be wrapped.
pub(super) fn probe_readable_key(wrap: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Wrap(wrap),
    ]
}

/// Capability probe: an AES session key unwrapped `readable` (the attack) or not.
pub(super) fn probe_unwrapped_secret(readable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(!readable),
        Attribute::Extractable(readable),
        Attribute::WrapWithTrusted(!readable),
    ]
}

/// A throw-away session copy of an imported EC private key (sensitive, never extractable)
/// that may sign and derive: what the token needs to give the key's public point (ECDH
/// with the base point for X, a signature to pick Y) before the copy is destroyed.
pub(super) fn import_ec_copy() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Sign(true),
        Attribute::Derive(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ]
}

/// A candidate public point of an imported EC key as a session object, to verify with.
pub(super) fn ec_candidate(curve: Curve, point: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(curve.params_der().to_vec()),
        Attribute::EcPoint(pkix::tlv(0x04, point)),
    ]
}

/// A throw-away session secret that proves an import wrapping key pair (unwrapped under
/// its private half, then used for one HMAC inside the token).
pub(super) fn import_proof_secret() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Sign(true),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
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

/// The RSA-2048 transport pair of the enrollment ceremony, made by the receiving token's SO
/// as session objects (public, since the SO sees only public objects): (public, private).
/// The private half unwraps, is sensitive, and never leaves the token.
pub(super) fn transport_pair() -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
        ],
        vec![
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Unwrap(true),
        ],
    )
}

/// The receiver's transport public key as a trusted session object on the sending token
/// (only its SO may create it): the one key the CWK may be wrapped under.
pub(super) fn trusted_transport_public(modulus: &[u8], exponent: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Trusted(true),
        Attribute::Modulus(modulus.to_vec()),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
    ]
}

/// Custody probe: a session key that asks, at unwrap, to be readable (not sensitive):
/// the CWK's unwrap template must make the token refuse it.
pub(super) fn weak_unwrap() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
    ]
}

/// Custody probe: a session AES key protected like a KMS key (wrap-with-trusted).
pub(super) fn probe_protected_key() -> Vec<Attribute> {
    session_aes(b"hsm-kms/custody-probe", true)
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

/// Capability and custody probes: a user-made session AES wrapping key (never trusted).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `CK_ATTRIBUTE` entries of a template's bytes: (type, pointer, length).
    fn entries(bytes: &[u8]) -> Vec<(c_ulong, usize, c_ulong)> {
        let w = std::mem::size_of::<c_ulong>();
        bytes
            .chunks_exact(3 * w)
            .map(|e| {
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(e.get(i * w..(i + 1) * w).unwrap_or(&[0; 8]));
                    u64::from_ne_bytes(b)
                };
                (word(0) as c_ulong, word(1) as usize, word(2) as c_ulong)
            })
            .collect()
    }

    /// The nested template is the forced one plus an entry that points at a forced template
    /// of its own, with that template's length.
    #[test]
    fn the_nested_unwrap_template_points_at_the_forced_one() {
        let sensitive: c_ulong = AttributeType::Sensitive.into();
        let wwt: c_ulong = AttributeType::WrapWithTrusted.into();
        let flat = UnwrapTemplate::forced();
        let e = entries(&flat.bytes);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].0, e[0].2, e[1].0, e[1].2), (sensitive, 1, wwt, 1));
        let nested = UnwrapTemplate::forced_nested();
        let e = entries(&nested.bytes);
        assert_eq!(e.len(), 3);
        let inner = nested.inner.as_ref().unwrap();
        assert_eq!(
            e[2],
            (
                CKA_UNWRAP_TEMPLATE,
                inner.bytes.as_ptr() as usize,
                inner.bytes.len() as c_ulong
            )
        );
        assert_eq!(entries(&inner.bytes).len(), 2);
        // The import wrapping key carries one or the other; the ephemeral key the inner one.
        let Attribute::VendorDefined((_, v)) = import_wrapping_unwrap_template(true) else {
            panic!("a raw attribute")
        };
        assert_eq!(entries(&v).len(), 3);
        assert!(import_ephemeral_key(true).len() == import_ephemeral_key(false).len() + 1);
    }
}
