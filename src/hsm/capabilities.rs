//! What one token offers ([`Caps`]), found once at connect: its mechanism list, plus probes
//! with throw-away session objects for quirks the list cannot show (SoftHSM 2.6.1 lists
//! CKM_RSA_PKCS_OAEP but refuses it with SHA-256, and refuses to wrap Ed25519 keys).

use super::error::HsmError;
use super::kinds::PairSpec;
use super::mechanisms;
use super::needs::{self, Family, Need, Offered, Support};
use super::templates;
use crate::kms::vault::ImportWrapping;
use crate::pkix::{Curve, Hash};
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

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
    /// A `CKA_UNWRAP_TEMPLATE` nested in an unwrap template is accepted and enforced, so
    /// the ephemeral AES key of an RSA_AES import can only unwrap sensitive keys (probed
    /// with session keys: the attack is tried). SoftHSM 2.6.1 refuses such a template
    /// (`CKR_ATTRIBUTE_VALUE_INVALID`).
    pub nested_unwrap_templates: bool,
    /// What the service needs that the token offers (see `needs`): from the mechanism list
    /// (RSA modulus sizes from the mechanism's info), plus the probes above and one
    /// throw-away session key pair per curve.
    pub(super) offered: Offered,
}

impl Caps {
    /// Read the mechanism list of `slot` and run the probes in the logged-in session `s`.
    pub(super) fn probe(ctx: &Pkcs11, slot: Slot, s: &Session) -> Caps {
        let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
        let mut caps = Caps {
            mechanisms,
            oaep_sha256: false,
            ed25519_keys: false,
            nested_unwrap_templates: false,
            offered: Offered::default(),
        };
        if caps.has(MechanismType::RSA_PKCS_OAEP) {
            caps.oaep_sha256 = probe_oaep_sha256(s).unwrap_or(false);
        }
        if caps.has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) && caps.has(MechanismType::EDDSA) {
            caps.ed25519_keys = probe_ed25519_wrap(s).unwrap_or(false);
        }
        if caps.has(MechanismType::AES_KEY_WRAP_PAD) {
            caps.nested_unwrap_templates = probe_nested_unwrap_template(s).unwrap_or(false);
        }
        caps.offered = caps.offered_by(ctx, slot, s);
        tracing::debug!(
            mechanisms = caps.mechanisms.len(),
            oaep_sha256 = caps.oaep_sha256,
            nested_unwrap_templates = caps.nested_unwrap_templates,
            "token capabilities"
        );
        caps
    }

    /// The needs (see `needs`) this token meets, from its mechanism list and the probes.
    fn offered_by(&self, ctx: &Pkcs11, slot: Slot, s: &Session) -> Offered {
        use MechanismType as M;
        let kwp = self.has(M::AES_KEY_WRAP_PAD);
        let rsa_gen = self.has(M::RSA_PKCS_KEY_PAIR_GEN);
        let rsa_sizes = ctx
            .get_mechanism_info(slot, M::RSA_PKCS_KEY_PAIR_GEN)
            .ok()
            .map(|i| (i.min_key_size(), i.max_key_size()));
        let ec_gen = self.has(M::ECC_KEY_PAIR_GEN);
        let mut o = Offered::default()
            // It answered the connect's login and random-drawing IV checks; sessions are
            // counted by `hsm check`, not at every connect.
            .with(Need::Random, true)
            .with(Need::Sessions, true)
            .with(Need::AesKeyGen, self.has(M::AES_KEY_GEN))
            .with(Need::AesGcm, self.has(M::AES_GCM))
            .with(Need::SecretKeyGen, self.has(M::GENERIC_SECRET_KEY_GEN))
            .with(Need::RsaPkcs, self.has(M::RSA_PKCS))
            .with(Need::RsaPss, self.has(M::RSA_PKCS_PSS))
            .with(Need::OaepSha1, self.has(M::RSA_PKCS_OAEP))
            .with(Need::OaepSha256, self.oaep_sha256)
            .with(Need::RsaX509, self.has(M::RSA_X_509))
            .with(Need::Ecdsa, self.has(M::ECDSA))
            .with(Need::Ecdh, self.has(M::ECDH1_DERIVE))
            .with(Need::EdKeyGen, self.has(M::ECC_EDWARDS_KEY_PAIR_GEN))
            .with(Need::Eddsa, self.has(M::EDDSA))
            .with(Need::Wrap(Family::Ed25519), self.ed25519_keys);
        for f in [Family::Aes, Family::Hmac, Family::Rsa, Family::Ec] {
            o = o.with(Need::Wrap(f), kwp);
        }
        for (h, m) in [
            (Hash::Sha224, M::SHA224_HMAC),
            (Hash::Sha256, M::SHA256_HMAC),
            (Hash::Sha384, M::SHA384_HMAC),
            (Hash::Sha512, M::SHA512_HMAC),
        ] {
            o = o.with(Need::Hmac(h), self.has(m));
        }
        for bits in needs::RSA_BITS {
            let fits = rsa_sizes.is_none_or(|(min, max)| {
                (min as u64) <= u64::from(bits) && u64::from(bits) <= max as u64
            });
            o = o.with(Need::RsaKeyGen(bits), rsa_gen && fits);
        }
        for c in [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1] {
            o = o.with(Need::EcKeyGen(c), ec_gen && probe_curve(s, c));
        }
        o
    }

    /// Whether the token's mechanism list (`C_GetMechanismList`) includes `m`.
    pub fn has(&self, m: MechanismType) -> bool {
        self.mechanisms.contains(&m)
    }

    /// `Unsupported` unless the token of `hsm` offers `m` (named `name` in the error).
    pub(super) fn require(&self, hsm: &str, m: MechanismType, name: &str) -> Result<(), HsmError> {
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

impl Caps {
    /// The mechanism this token lacks to unwrap imported material wrapped with `wrapping`
    /// inside itself, if any (the confinement of RSA_AES imports is the cluster's policy,
    /// checked before a wrapping key is made: see [`import_missing`]).
    pub(super) fn import_missing(&self, wrapping: ImportWrapping) -> Option<String> {
        import_missing(
            &ImportCaps {
                oaep: self.has(MechanismType::RSA_PKCS_OAEP),
                oaep_sha256: self.oaep_sha256,
                aes_key_wrap_pad: self.has(MechanismType::AES_KEY_WRAP_PAD),
                nested_unwrap_templates: self.nested_unwrap_templates,
            },
            true,
            wrapping,
        )
    }
}

/// What a token offers for imports (from [`Caps`], or the facts a host process reports).
#[derive(Debug, Clone, Copy)]
pub(super) struct ImportCaps {
    pub(super) oaep: bool,
    pub(super) oaep_sha256: bool,
    pub(super) aes_key_wrap_pad: bool,
    pub(super) nested_unwrap_templates: bool,
}

/// Why the RSA_AES variants are refused on a token without nested unwrap templates.
pub(super) const UNCONFINED: &str = "an unwrap template nested in the wrapping key's (CKA_UNWRAP_TEMPLATE), so that the ephemeral AES key can only unwrap sensitive keys";

/// What a token lacks to unwrap material wrapped with `wrapping` inside itself, from what
/// it offers: `CKM_RSA_PKCS_OAEP` (with SHA-256 where asked: SoftHSM 2.6.1 lists the
/// mechanism but refuses that hash) and, for the RSA_AES variants, `CKM_AES_KEY_WRAP_PAD`
/// and the confinement of the ephemeral AES key (nested unwrap templates), unless
/// `allow_unconfined`: without it, a holder of the user PIN who captured the wrapped
/// material could unwrap the ephemeral key, then the material under it as a readable key.
pub(super) fn import_missing(
    c: &ImportCaps,
    allow_unconfined: bool,
    wrapping: ImportWrapping,
) -> Option<String> {
    let ImportCaps {
        oaep,
        oaep_sha256,
        aes_key_wrap_pad,
        nested_unwrap_templates,
    } = *c;
    let o = Offered::default()
        .with(Need::OaepSha1, oaep)
        .with(Need::OaepSha256, oaep_sha256)
        .with(Need::Wrap(Family::Aes), aes_key_wrap_pad);
    match needs::import_support(o, wrapping) {
        Support::Missing(n) => return Some(n.mechanism()),
        Support::Native | Support::Fallback(_) => {}
    }
    if matches!(wrapping, ImportWrapping::RsaAes(_))
        && !nested_unwrap_templates
        && !allow_unconfined
    {
        return Some(UNCONFINED.into());
    }
    None
}

/// Can the token generate a throw-away session key pair on curve `c`? (The mechanism list
/// cannot say which curves `CKM_EC_KEY_PAIR_GEN` takes.)
fn probe_curve(s: &Session, c: Curve) -> bool {
    let (mut pub_t, priv_t) = templates::data_key_pair();
    pub_t.extend(templates::key_pair_params(PairSpec::Ec(c)));
    match s.generate_key_pair(&Mechanism::EccKeyPairGen, &pub_t, &priv_t) {
        Ok((p, k)) => {
            let _ = s.destroy_object(p);
            let _ = s.destroy_object(k);
            true
        }
        Err(_) => false,
    }
}

/// Does the token accept and enforce an unwrap template nested in another (session keys
/// only)? The legitimate path must work (the ephemeral key unwrapped with the template the
/// import itself uses, then a key unwrapped sensitive under it) and the attack must not
/// (the ephemeral key unwrapped without the nested template, then a key unwrapped
/// readable under it).
pub(super) fn probe_nested_unwrap_template(s: &Session) -> Result<bool, CkError> {
    // SoftHSM 2.6.1 stops here: CKR_ATTRIBUTE_VALUE_INVALID.
    let kek = s.generate_key(&Mechanism::AesKeyGen, &templates::probe_nested_kek())?;
    let mut made = vec![kek];
    let r = (|| -> Result<bool, CkError> {
        let wrap = mechanisms::key_wrap();
        let eph = s.generate_key(&Mechanism::AesKeyGen, &templates::probe_readable_key(true))?;
        made.push(eph);
        let secret =
            s.generate_key(&Mechanism::AesKeyGen, &templates::probe_readable_key(false))?;
        made.push(secret);
        let eph_blob = s.wrap_key(&wrap, kek, eph)?;
        let secret_blob = s.wrap_key(&wrap, eph, secret)?;
        let legit = s.unwrap_key(
            &wrap,
            kek,
            &eph_blob,
            &templates::import_ephemeral_key(true),
        )?;
        made.push(legit);
        made.push(s.unwrap_key(
            &wrap,
            legit,
            &secret_blob,
            &templates::probe_unwrapped_secret(false),
        )?);
        let Ok(unconfined) = s.unwrap_key(
            &wrap,
            kek,
            &eph_blob,
            &templates::import_ephemeral_key(false),
        ) else {
            return Ok(true);
        };
        made.push(unconfined);
        match s.unwrap_key(
            &wrap,
            unconfined,
            &secret_blob,
            &templates::probe_unwrapped_secret(true),
        ) {
            Ok(h) => {
                made.push(h);
                Ok(false)
            }
            Err(_) => Ok(true),
        }
    })();
    for h in made {
        let _ = s.destroy_object(h);
    }
    r
}

/// A throw-away RSA-1024 session pair: does OAEP with SHA-256 round-trip?
fn probe_oaep_sha256(s: &Session) -> Result<bool, CkError> {
    let (pub_t, priv_t) = templates::probe_rsa_pair();
    let (pubh, privh) = s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t)?;
    let m = mechanisms::oaep(Hash::Sha256);
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
    let kek = s.generate_key(&Mechanism::AesKeyGen, &templates::probe_wrapping_key())?;
    let (pub_t, priv_t) = templates::probe_ed25519_pair();
    let pair = s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &pub_t, &priv_t);
    let ok = match pair {
        Ok((pubh, privh)) => {
            let ok = s.wrap_key(&mechanisms::key_wrap(), kek, privh).is_ok();
            let _ = s.destroy_object(pubh);
            let _ = s.destroy_object(privh);
            ok
        }
        Err(_) => false,
    };
    let _ = s.destroy_object(kek);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(oaep: bool, oaep_sha256: bool, pad: bool, nested: bool) -> ImportCaps {
        ImportCaps {
            oaep,
            oaep_sha256,
            aes_key_wrap_pad: pad,
            nested_unwrap_templates: nested,
        }
    }

    /// The SHA-256 variants take the token's own `CKM_RSA_PKCS_OAEP` wherever the token
    /// does that hash; where it does not, the import is refused (never decoded on the host).
    #[test]
    fn imports_need_the_tokens_own_mechanisms() {
        use ImportWrapping::{Oaep, RsaAes};
        let all = caps(true, true, true, true);
        assert_eq!(import_missing(&all, false, Oaep(Hash::Sha256)), None);
        assert_eq!(import_missing(&all, false, RsaAes(Hash::Sha256)), None);
        for w in [Oaep(Hash::Sha256), RsaAes(Hash::Sha256)] {
            let m = import_missing(&caps(true, false, true, true), false, w).unwrap();
            assert_eq!(m, "CKM_RSA_PKCS_OAEP with SHA-256 and MGF1-SHA-256");
        }
        assert_eq!(
            import_missing(&caps(true, false, true, true), false, RsaAes(Hash::Sha1)),
            None
        );
        assert_eq!(
            import_missing(&caps(true, false, false, true), false, RsaAes(Hash::Sha1)).as_deref(),
            Some("CKM_AES_KEY_WRAP_PAD")
        );
        assert_eq!(
            import_missing(&caps(false, true, true, true), false, Oaep(Hash::Sha1)).as_deref(),
            Some("CKM_RSA_PKCS_OAEP")
        );
    }

    /// Without nested unwrap templates (SoftHSM 2.6.1) the RSA_AES variants are refused
    /// unless the operator accepts the unconfined ephemeral key; RSAES needs no ephemeral key.
    #[test]
    fn rsa_aes_imports_need_a_confined_ephemeral_key_or_the_operators_consent() {
        use ImportWrapping::{Oaep, RsaAes};
        let softhsm = caps(true, false, true, false);
        assert_eq!(
            import_missing(&softhsm, false, RsaAes(Hash::Sha1)).as_deref(),
            Some(UNCONFINED)
        );
        assert_eq!(import_missing(&softhsm, true, RsaAes(Hash::Sha1)), None);
        assert_eq!(import_missing(&softhsm, false, Oaep(Hash::Sha1)), None);
    }
}
