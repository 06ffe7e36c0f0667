//! What the service needs of a token for each kind of key, and what it does when a need is
//! not met: the ONE capability table, read by the cluster at connect (which key specs it
//! can serve, where it generates and copies keys: `cluster`, `replication`), by the health
//! detail, and by `hsm-kms hsm check` (`check`), which derives every row's "what the service
//! will do" from [`support`] and [`import_support`] rather than from a list of its own.
//!
//! A token's abilities are an [`Offered`] set of [`Need`]s: at connect they come from its
//! mechanism list plus probes (`capabilities`); in `hsm check` from operations really run.
//! [`support`] answers, for a [`KeyKind`], [`Support::Native`], [`Support::Fallback`] (the
//! service works around a missing need, named) or [`Support::Missing`] (the first need it
//! lacks). A cluster serves a kind only where at least two HSMs (`min_copies`) are not
//! known to lack it.

use super::kinds::{KeyKind, PairSpec, PairUse};
use crate::kms::vault::ImportWrapping;
use crate::pkix::{Curve, Hash};

/// The key families whose private or secret keys are copied (wrapped) between HSMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Family {
    /// AES keys (KMS symmetric keys, the service's own keys).
    Aes,
    /// HMAC keys (`CKK_GENERIC_SECRET`).
    Hmac,
    /// RSA private keys.
    Rsa,
    /// EC private keys.
    Ec,
    /// Ed25519 private keys (`CKK_EC_EDWARDS`).
    Ed25519,
}

/// One thing the service needs a token to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// `C_GenerateRandom` (IVs, data keys, GenerateRandom).
    Random,
    /// Enough concurrent sessions for the workers, key generation lane, probe and anchor.
    Sessions,
    /// `CKM_AES_KEY_GEN` (AES-256).
    AesKeyGen,
    /// `CKM_AES_GCM` with AAD, and its tag check.
    AesGcm,
    /// `C_WrapKey`/`C_UnwrapKey` of this family's keys with `CKM_AES_KEY_WRAP_PAD` under a
    /// trusted wrapping key (replication between HSMs).
    Wrap(Family),
    /// `CKM_GENERIC_SECRET_KEY_GEN` (HMAC keys).
    SecretKeyGen,
    /// `CKM_SHA*_HMAC`.
    Hmac(Hash),
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN` of this modulus size.
    RsaKeyGen(u32),
    /// `CKM_RSA_PKCS` signing (PKCS#1 v1.5 over a DigestInfo).
    RsaPkcs,
    /// `CKM_RSA_PKCS_PSS`.
    RsaPss,
    /// `CKM_RSA_PKCS_OAEP` with SHA-1 and MGF1-SHA-1.
    OaepSha1,
    /// `CKM_RSA_PKCS_OAEP` with SHA-256 and MGF1-SHA-256.
    OaepSha256,
    /// `CKM_RSA_X_509` (raw RSA: the OAEP fallback, decoded on the host).
    RsaX509,
    /// `CKM_EC_KEY_PAIR_GEN` on this curve.
    EcKeyGen(Curve),
    /// `CKM_ECDSA`.
    Ecdsa,
    /// `CKM_ECDH1_DERIVE`.
    Ecdh,
    /// `CKM_EC_EDWARDS_KEY_PAIR_GEN` (Ed25519).
    EdKeyGen,
    /// `CKM_EDDSA`.
    Eddsa,
}

const HASHES: [Hash; 4] = [Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512];
const CURVES: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];
/// RSA modulus sizes of KMS key specs.
pub(super) const RSA_BITS: [u32; 3] = [2048, 3072, 4096];

impl Need {
    /// Every need, in a fixed order (its bit in [`Offered`]).
    pub(super) const ALL: [Need; 28] = [
        Need::Random,
        Need::Sessions,
        Need::AesKeyGen,
        Need::AesGcm,
        Need::Wrap(Family::Aes),
        Need::Wrap(Family::Hmac),
        Need::Wrap(Family::Rsa),
        Need::Wrap(Family::Ec),
        Need::Wrap(Family::Ed25519),
        Need::SecretKeyGen,
        Need::Hmac(HASHES[0]),
        Need::Hmac(HASHES[1]),
        Need::Hmac(HASHES[2]),
        Need::Hmac(HASHES[3]),
        Need::RsaKeyGen(RSA_BITS[0]),
        Need::RsaKeyGen(RSA_BITS[1]),
        Need::RsaKeyGen(RSA_BITS[2]),
        Need::RsaPkcs,
        Need::RsaPss,
        Need::OaepSha1,
        Need::OaepSha256,
        Need::RsaX509,
        Need::EcKeyGen(CURVES[0]),
        Need::EcKeyGen(CURVES[1]),
        Need::EcKeyGen(CURVES[2]),
        Need::EcKeyGen(CURVES[3]),
        Need::Ecdsa,
        Need::Ecdh,
    ];

    fn bit(self) -> u64 {
        // Ed25519's two mechanisms share bits with nothing: they follow ALL.
        match self {
            Need::EdKeyGen => 1 << Need::ALL.len(),
            Need::Eddsa => 1 << (Need::ALL.len() + 1),
            n => Need::ALL
                .iter()
                .position(|m| *m == n)
                .map_or(0, |i| 1u64 << i),
        }
    }

    /// Every need including Ed25519's.
    pub(super) fn every() -> impl Iterator<Item = Need> {
        Need::ALL.into_iter().chain([Need::EdKeyGen, Need::Eddsa])
    }

    /// The mechanism (or behaviour) this need stands for, as messages name it.
    pub(super) fn mechanism(self) -> String {
        let wrap = |what: &str| format!("C_WrapKey of {what} with CKM_AES_KEY_WRAP_PAD");
        match self {
            Need::Random => "C_GenerateRandom".into(),
            Need::Sessions => "enough concurrent sessions (C_OpenSession)".into(),
            Need::AesKeyGen => "CKM_AES_KEY_GEN".into(),
            Need::AesGcm => "CKM_AES_GCM".into(),
            Need::Wrap(Family::Aes) => "CKM_AES_KEY_WRAP_PAD".into(),
            Need::Wrap(Family::Hmac) => wrap("CKK_GENERIC_SECRET keys"),
            Need::Wrap(Family::Rsa) => wrap("CKK_RSA private keys"),
            Need::Wrap(Family::Ec) => wrap("CKK_EC private keys"),
            Need::Wrap(Family::Ed25519) => wrap("CKK_EC_EDWARDS private keys"),
            Need::SecretKeyGen => "CKM_GENERIC_SECRET_KEY_GEN".into(),
            Need::Hmac(h) => format!("CKM_{}_HMAC", h.name().replace('-', "")),
            Need::RsaKeyGen(bits) => format!("CKM_RSA_PKCS_KEY_PAIR_GEN ({bits} bits)"),
            Need::RsaPkcs => "CKM_RSA_PKCS".into(),
            Need::RsaPss => "CKM_RSA_PKCS_PSS".into(),
            Need::OaepSha1 => "CKM_RSA_PKCS_OAEP".into(),
            Need::OaepSha256 => "CKM_RSA_PKCS_OAEP with SHA-256 and MGF1-SHA-256".into(),
            Need::RsaX509 => "CKM_RSA_X_509".into(),
            Need::EcKeyGen(c) => format!("CKM_EC_KEY_PAIR_GEN ({})", curve_name(c)),
            Need::Ecdsa => "CKM_ECDSA".into(),
            Need::Ecdh => "CKM_ECDH1_DERIVE".into(),
            Need::EdKeyGen => "CKM_EC_EDWARDS_KEY_PAIR_GEN".into(),
            Need::Eddsa => "CKM_EDDSA".into(),
        }
    }
}

/// The curve's name as PKCS#11 users know it.
pub(super) fn curve_name(c: Curve) -> &'static str {
    match c {
        Curve::P256 => "P-256",
        Curve::P384 => "P-384",
        Curve::P521 => "P-521",
        Curve::Secp256k1 => "secp256k1",
    }
}

/// A set of needs a token meets (crosses the host-process boundary as a number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(super) struct Offered(u64);

impl Offered {
    /// Every need met.
    pub(super) fn all() -> Offered {
        Need::every().fold(Offered::default(), |o, n| o.with(n, true))
    }

    /// This set with `n` met (`true`) or not.
    #[must_use]
    pub(super) fn with(self, n: Need, met: bool) -> Offered {
        if met {
            Offered(self.0 | n.bit())
        } else {
            Offered(self.0 & !n.bit())
        }
    }

    /// Whether `n` is met.
    pub(super) fn has(self, n: Need) -> bool {
        self.0 & n.bit() != 0
    }
}

/// What the service does for a kind of key (or an import wrapping) on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// Everything it needs, natively.
    Native,
    /// It works around a missing need, in the way named.
    Fallback(&'static str),
    /// It cannot: this need is not met.
    Missing(Need),
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Support::Native => f.write_str("native"),
            Support::Fallback(how) => write!(f, "fallback: {how}"),
            Support::Missing(n) => write!(f, "missing: {}", n.mechanism()),
        }
    }
}

/// The RSA-OAEP fallback of RSA Decrypt.
pub(super) const OAEP_FALLBACK: &str = "CKM_RSA_X_509 in the token, OAEP decoded on the host";

/// What every kind needs: the cluster itself (canary and service keys, IVs, replication).
const CORE: [Need; 5] = [
    Need::Random,
    Need::Sessions,
    Need::AesKeyGen,
    Need::AesGcm,
    Need::Wrap(Family::Aes),
];

fn hmac_hash(len: usize) -> Option<Hash> {
    match len {
        28 => Some(Hash::Sha224),
        32 => Some(Hash::Sha256),
        48 => Some(Hash::Sha384),
        64 => Some(Hash::Sha512),
        _ => None,
    }
}

/// What the service does for keys of `kind` on a token that meets `o`.
pub(super) fn support(o: Offered, kind: KeyKind) -> Support {
    let mut needs: Vec<Need> = CORE.to_vec();
    match kind {
        KeyKind::Aes => {}
        KeyKind::Hmac(len) => {
            needs.push(Need::SecretKeyGen);
            needs.push(Need::Hmac(hmac_hash(len).unwrap_or(Hash::Sha512)));
            needs.push(Need::Wrap(Family::Hmac));
        }
        KeyKind::Pair(PairSpec::Rsa(bits), usage) => {
            needs.extend([Need::RsaKeyGen(bits), Need::Wrap(Family::Rsa)]);
            match usage {
                PairUse::Sign => needs.extend([Need::RsaPss, Need::RsaPkcs]),
                // An import wrapping key unwraps with the token's own OAEP (see
                // `import_support` for the hash).
                PairUse::Unwrap => needs.push(Need::OaepSha1),
                PairUse::Decrypt | PairUse::Derive => {}
            }
        }
        KeyKind::Pair(PairSpec::Ec(c), usage) => {
            needs.extend([Need::EcKeyGen(c), Need::Wrap(Family::Ec)]);
            needs.push(if usage == PairUse::Derive {
                Need::Ecdh
            } else {
                Need::Ecdsa
            });
        }
        KeyKind::Pair(PairSpec::Ed25519, _) => {
            needs.extend([Need::EdKeyGen, Need::Eddsa, Need::Wrap(Family::Ed25519)]);
        }
    }
    if let Some(n) = needs.into_iter().find(|n| !o.has(*n)) {
        return Support::Missing(n);
    }
    if let KeyKind::Pair(PairSpec::Rsa(_), PairUse::Decrypt) = kind {
        // RSAES_OAEP_SHA_1 and RSAES_OAEP_SHA_256: the token's OAEP, else raw RSA.
        let lacking = [Need::OaepSha1, Need::OaepSha256]
            .into_iter()
            .find(|n| !o.has(*n));
        match lacking {
            None => {}
            Some(_) if o.has(Need::RsaX509) => return Support::Fallback(OAEP_FALLBACK),
            Some(n) => return Support::Missing(n),
        }
    }
    Support::Native
}

/// Whether imported material wrapped with `wrapping` can be unwrapped inside a token that
/// meets `o` (never decoded on the host: no fallback).
pub(super) fn import_support(o: Offered, wrapping: ImportWrapping) -> Support {
    let mut needs = vec![Need::OaepSha1];
    if wrapping.hash() != Hash::Sha1 {
        // SHA-256, the only other hash of the import wrapping algorithms.
        needs.push(Need::OaepSha256);
    }
    if matches!(wrapping, ImportWrapping::RsaAes(_)) {
        needs.push(Need::Wrap(Family::Aes));
    }
    match needs.into_iter().find(|n| !o.has(*n)) {
        Some(n) => Support::Missing(n),
        None => Support::Native,
    }
}

/// Every kind of key the service makes, with its AWS KMS name (`KeySpec` and, where a spec
/// has several, `KeyUsage`), in the order reports list them.
pub(super) fn kinds() -> Vec<(String, KeyKind)> {
    let mut v = vec![("SYMMETRIC_DEFAULT".to_string(), KeyKind::Aes)];
    for bits in RSA_BITS {
        for (usage, name) in [
            (PairUse::Sign, "SIGN_VERIFY"),
            (PairUse::Decrypt, "ENCRYPT_DECRYPT"),
        ] {
            v.push((
                format!("RSA_{bits}/{name}"),
                KeyKind::Pair(PairSpec::Rsa(bits), usage),
            ));
        }
    }
    for c in CURVES {
        let spec = match c {
            Curve::P256 => "ECC_NIST_P256",
            Curve::P384 => "ECC_NIST_P384",
            Curve::P521 => "ECC_NIST_P521",
            Curve::Secp256k1 => "ECC_SECG_P256K1",
        };
        v.push((
            format!("{spec}/SIGN_VERIFY"),
            KeyKind::Pair(PairSpec::Ec(c), PairUse::Sign),
        ));
        if c != Curve::Secp256k1 {
            v.push((
                format!("{spec}/KEY_AGREEMENT"),
                KeyKind::Pair(PairSpec::Ec(c), PairUse::Derive),
            ));
        }
    }
    v.push((
        "ECC_NIST_EDWARDS25519/SIGN_VERIFY".into(),
        KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign),
    ));
    for (len, name) in [(28, 224), (32, 256), (48, 384), (64, 512)] {
        v.push((format!("HMAC_{name}"), KeyKind::Hmac(len)));
    }
    v
}

/// The import wrapping algorithms, with their AWS KMS names.
pub(super) fn import_wrappings() -> Vec<(&'static str, ImportWrapping)> {
    vec![
        ("RSAES_OAEP_SHA_1", ImportWrapping::Oaep(Hash::Sha1)),
        ("RSAES_OAEP_SHA_256", ImportWrapping::Oaep(Hash::Sha256)),
        ("RSA_AES_KEY_WRAP_SHA_1", ImportWrapping::RsaAes(Hash::Sha1)),
        (
            "RSA_AES_KEY_WRAP_SHA_256",
            ImportWrapping::RsaAes(Hash::Sha256),
        ),
    ]
}

/// Kinds a cluster member may lack without failing `hsm check`: the service then refuses
/// the spec (as it does on SoftHSM 2.6.1, which cannot wrap Ed25519 private keys).
pub(super) fn optional(kind: KeyKind) -> bool {
    matches!(kind, KeyKind::Pair(PairSpec::Ed25519, _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_need_has_its_own_bit() {
        let mut seen = 0u64;
        for n in Need::every() {
            assert_ne!(n.bit(), 0, "{n:?}");
            assert_eq!(seen & n.bit(), 0, "{n:?}");
            seen |= n.bit();
        }
        let o = Offered::all();
        assert!(Need::every().all(|n| o.has(n)));
        assert!(!o.with(Need::Ecdsa, false).has(Need::Ecdsa));
    }

    #[test]
    fn softhsm_2_6_1_as_the_service_sees_it() {
        // SoftHSM 2.6.1: OAEP refuses SHA-256, Ed25519 private keys are not wrappable.
        let o = Offered::all()
            .with(Need::OaepSha256, false)
            .with(Need::Wrap(Family::Ed25519), false);
        let rsa_dec = KeyKind::Pair(PairSpec::Rsa(2048), PairUse::Decrypt);
        assert_eq!(support(o, rsa_dec), Support::Fallback(OAEP_FALLBACK));
        assert_eq!(
            support(o.with(Need::RsaX509, false), rsa_dec),
            Support::Missing(Need::OaepSha256)
        );
        let ed = KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign);
        assert_eq!(
            support(o, ed),
            Support::Missing(Need::Wrap(Family::Ed25519))
        );
        assert!(Support::Missing(Need::Wrap(Family::Ed25519))
            .to_string()
            .contains("CKK_EC_EDWARDS"));
        assert_eq!(support(o, KeyKind::Aes), Support::Native);
        assert_eq!(
            import_support(o, ImportWrapping::Oaep(Hash::Sha256)),
            Support::Missing(Need::OaepSha256)
        );
        assert_eq!(
            import_support(o, ImportWrapping::RsaAes(Hash::Sha1)),
            Support::Native
        );
    }

    #[test]
    fn a_missing_mechanism_refuses_exactly_the_kinds_that_need_it() {
        let o = Offered::all().with(Need::EcKeyGen(Curve::Secp256k1), false);
        for (name, kind) in kinds() {
            let s = support(o, kind);
            if name.starts_with("ECC_SECG_P256K1") {
                assert_eq!(s, Support::Missing(Need::EcKeyGen(Curve::Secp256k1)));
            } else {
                assert_eq!(s, Support::Native, "{name}");
            }
        }
        // A core need refuses every kind.
        let o = Offered::all().with(Need::AesGcm, false);
        assert!(kinds()
            .into_iter()
            .all(|(_, k)| support(o, k) == Support::Missing(Need::AesGcm)));
    }
}
