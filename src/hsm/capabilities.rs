//! What one token offers ([`Caps`]), found once at connect: its mechanism list, plus probes
//! with throw-away session objects for quirks the list cannot show (SoftHSM 2.6.1 lists
//! CKM_RSA_PKCS_OAEP but refuses it with SHA-256, and refuses to wrap Ed25519 keys).

use super::error::HsmError;
use super::mechanisms;
use super::templates;
use crate::kms::vault::ImportWrapping;
use crate::pkix::Hash;
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
}

impl Caps {
    /// Read the mechanism list of `slot` and run the probes in the logged-in session `s`.
    pub(super) fn probe(ctx: &Pkcs11, slot: Slot, s: &Session) -> Caps {
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
    /// inside itself, if any.
    pub(super) fn import_missing(&self, wrapping: ImportWrapping) -> Option<String> {
        import_missing(
            self.has(MechanismType::RSA_PKCS_OAEP),
            self.oaep_sha256,
            self.has(MechanismType::AES_KEY_WRAP_PAD),
            wrapping,
        )
    }
}

/// The mechanism a token lacks to unwrap material wrapped with `wrapping` inside itself,
/// from what it offers: `CKM_RSA_PKCS_OAEP` (with SHA-256 where asked: SoftHSM 2.6.1 lists
/// the mechanism but refuses that hash) and, for the RSA_AES variants, `CKM_AES_KEY_WRAP_PAD`.
pub(super) fn import_missing(
    oaep: bool,
    oaep_sha256: bool,
    aes_key_wrap_pad: bool,
    wrapping: ImportWrapping,
) -> Option<String> {
    if !oaep {
        return Some("CKM_RSA_PKCS_OAEP".into());
    }
    match wrapping.hash() {
        Hash::Sha1 => {}
        Hash::Sha256 if oaep_sha256 => {}
        h => {
            return Some(format!(
                "CKM_RSA_PKCS_OAEP with {} and MGF1-{}",
                h.name(),
                h.name()
            ))
        }
    }
    if matches!(wrapping, ImportWrapping::RsaAes(_)) && !aes_key_wrap_pad {
        return Some("CKM_AES_KEY_WRAP_PAD".into());
    }
    None
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

    /// The SHA-256 variants take the token's own `CKM_RSA_PKCS_OAEP` wherever the token
    /// does that hash; where it does not, the import is refused (never decoded on the host).
    #[test]
    fn imports_need_the_tokens_own_mechanisms() {
        use ImportWrapping::{Oaep, RsaAes};
        assert_eq!(import_missing(true, true, true, Oaep(Hash::Sha256)), None);
        assert_eq!(import_missing(true, true, true, RsaAes(Hash::Sha256)), None);
        for w in [Oaep(Hash::Sha256), RsaAes(Hash::Sha256)] {
            let m = import_missing(true, false, true, w).unwrap();
            assert_eq!(m, "CKM_RSA_PKCS_OAEP with SHA-256 and MGF1-SHA-256");
        }
        assert_eq!(import_missing(true, false, true, RsaAes(Hash::Sha1)), None);
        assert_eq!(
            import_missing(true, false, false, RsaAes(Hash::Sha1)).as_deref(),
            Some("CKM_AES_KEY_WRAP_PAD")
        );
        assert_eq!(
            import_missing(false, true, true, Oaep(Hash::Sha1)).as_deref(),
            Some("CKM_RSA_PKCS_OAEP")
        );
    }
}
