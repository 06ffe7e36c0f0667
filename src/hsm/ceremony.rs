//! The enrollment ceremony (`hsm-kms hsm enroll`, `setup-local`): the only way a token joins
//! the cluster. It runs with the tokens' Security Officer (SO) PINs, given for this one
//! command and never stored, because only the SO can make a key `CKA_TRUSTED`:
//!
//! * the **first** token: its SO generates the cluster wrapping key (CWK): trusted, public,
//!   sensitive, wrap-with-trusted, neither copyable nor modifiable, with an unwrap template
//!   that forces every key it unwraps to be sensitive and wrap-with-trusted;
//! * **every other** token: its SO generates an RSA-2048 transport pair (session objects, the
//!   private half never leaves it); the operator confirms the public key's fingerprint; the
//!   SO of a token that holds the CWK imports that public key as trusted and wraps the CWK
//!   under it (RSA-OAEP); the receiving SO unwraps it as the same trusted token object.
//!
//! Serving then needs only the user PIN, which cannot export any key: every KMS key is
//! wrap-with-trusted, and the only trusted key a user can reach is the CWK, whose unwrap
//! template keeps what it unwraps sensitive. This module loads the modules itself (an
//! administrative command, not the request path); the service proves at connect that the
//! enrolled tokens hold the same CWK.

use super::error::{HsmError, Operation};
use super::handles::CWK_ID;
use super::instance::{find_slot, load_module, NodeConfig};
use super::kinds::PublicKey;
use super::templates;
use crate::pkix::Hash;
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rand::RngCore;
use sha2::Digest;
use std::path::Path;
use zeroize::Zeroizing;

/// The SO PIN of a token, held for one ceremony; never written to the state folder.
pub struct SoPin(Zeroizing<String>);

impl SoPin {
    /// A PIN given by the operator.
    pub fn new(pin: String) -> SoPin {
        SoPin(Zeroizing::new(pin.trim().to_string()))
    }

    /// A fresh random PIN (for new lab tokens).
    pub fn random() -> SoPin {
        let mut b = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut b);
        SoPin(Zeroizing::new(hex::encode(b)))
    }

    /// The PIN in `path` (first line, trimmed).
    pub fn read_file(path: &Path) -> std::io::Result<SoPin> {
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        Ok(SoPin::new(
            text.lines().next().unwrap_or_default().to_string(),
        ))
    }

    /// The PIN, for `C_InitToken` / `C_Login`.
    pub(super) fn auth(&self) -> AuthPin {
        AuthPin::new(self.0.as_str().into())
    }

    /// The PIN's text (to show it once on a terminal, or write it where the operator said).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SoPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoPin(<redacted>)")
    }
}

/// What the ceremony did to the target token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// It already held the trusted cluster wrapping key; nothing changed.
    Already,
    /// It is the first token: its SO generated the cluster wrapping key.
    Generated,
    /// It received the cluster wrapping key from the named HSM.
    Received {
        /// The HSM that sent it.
        from: String,
    },
}

/// Whether the token of `cfg` holds a cluster wrapping key, and whether it is the trusted
/// kind this ceremony makes (checked with the user PIN, which sees every object).
pub fn cwk_state(cfg: &NodeConfig) -> Result<CwkState, HsmError> {
    let token = Token::open(cfg)?;
    let s = token.session()?;
    s.login(UserType::User, Some(&AuthPin::new(cfg.pin.as_str().into())))
        .map_err(|e| token.err(Operation::Login, e))?;
    let found = find_cwk(&token, &s)?;
    let state = match found {
        None => CwkState::Absent,
        Some(h) => match s.get_attributes(h, &[AttributeType::Trusted]) {
            Ok(a) if a.contains(&Attribute::Trusted(true)) => CwkState::Trusted,
            _ => CwkState::Legacy,
        },
    };
    let _ = s.logout();
    Ok(state)
}

/// What a token holds of the cluster wrapping key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CwkState {
    /// No cluster wrapping key: the token is not enrolled.
    Absent,
    /// The trusted key of the ceremony.
    Trusted,
    /// A key made by an earlier version without the SO (not trusted): keys wrapped under it
    /// are exportable with the user PIN. Such tokens must be re-created.
    Legacy,
}

/// Bring the token of `target` into the cluster. With `source` = `None` the target's SO
/// generates the cluster wrapping key (the first token of a cluster); otherwise the key
/// travels from `source` (a token that holds it) by RSA-OAEP under a transport key
/// generated inside the target, after `confirm` approved the transport key's fingerprint.
pub fn enroll(
    target: &NodeConfig,
    target_so: &SoPin,
    source: Option<(&NodeConfig, &SoPin)>,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<Enrolled, HsmError> {
    match cwk_state(target)? {
        CwkState::Trusted => return Ok(Enrolled::Already),
        CwkState::Legacy => return Err(legacy(&target.name)),
        CwkState::Absent => {}
    }
    let tt = Token::open(target)?;
    let ts = tt.so_session(target_so)?;
    let Some((src_cfg, src_so)) = source else {
        let template = templates::cluster_wrapping_key(true);
        ts.generate_key(&Mechanism::AesKeyGen, template.attributes())
            .map_err(|e| tt.err(Operation::GenerateKey, e))?;
        tracing::info!(hsm = %target.name, "the SO generated the cluster wrapping key");
        return Ok(Enrolled::Generated);
    };
    // Step 1 (target SO): the transport pair, as session objects of this SO session.
    let (pub_t, priv_t) = templates::transport_pair();
    let (pubh, privh) = ts
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t)
        .map_err(|e| tt.err(Operation::KeyTransport, e))?;
    let (n, e) = rsa_public(&tt, &ts, pubh)?;
    // Step 2 (operator): the fingerprint of the key the CWK will be wrapped under.
    let fingerprint = transport_fingerprint(&n, &e)?;
    if !confirm(&fingerprint) {
        return Err(HsmError::Setup {
            hsm: target.name.clone(),
            message: "enrollment not confirmed by the operator".into(),
        });
    }
    // Step 3 (source SO): import the transport key as trusted and wrap the CWK under it.
    let wrapped = {
        let st = Token::open(src_cfg)?;
        let ss = st.so_session(src_so)?;
        let Some(cwk) = find_cwk(&st, &ss)? else {
            return Err(HsmError::Setup {
                hsm: src_cfg.name.clone(),
                message: "holds no trusted cluster wrapping key (its SO cannot see one)".into(),
            });
        };
        let tp = ss
            .create_object(&templates::trusted_transport_public(&n, &e))
            .map_err(|e| st.err(Operation::KeyTransport, e))?;
        let w = ss.wrap_key(&transport_mechanism(), tp, cwk);
        let _ = ss.destroy_object(tp);
        w.map_err(|e| st.err(Operation::KeyTransport, e))?
    };
    // Step 4 (target SO): unwrap it as the trusted token object; the transport pair goes
    // with this session.
    let template = templates::cluster_wrapping_key(false);
    ts.unwrap_key(
        &transport_mechanism(),
        privh,
        &wrapped,
        template.attributes(),
    )
    .map_err(|e| tt.err(Operation::KeyTransport, e))?;
    let _ = ts.destroy_object(privh);
    let _ = ts.destroy_object(pubh);
    tracing::info!(from = %src_cfg.name, to = %target.name, "cluster wrapping key enrolled");
    Ok(Enrolled::Received {
        from: src_cfg.name.clone(),
    })
}

/// The fingerprint the operator compares: SHA-256 of the transport key's
/// SubjectPublicKeyInfo, as colon-separated hex.
fn transport_fingerprint(n: &[u8], e: &[u8]) -> Result<String, HsmError> {
    let spki = PublicKey::Rsa {
        n: n.to_vec(),
        e: e.to_vec(),
    }
    .spki()?;
    let d = sha2::Sha256::digest(&spki);
    Ok(format!(
        "SHA256:{}",
        d.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    ))
}

/// Key transport uses OAEP with SHA-1: SoftHSM 2.6.1 refuses OAEP with SHA-256
/// (`CKR_ARGUMENTS_BAD`, hsm-facts.md §2.1).
fn transport_mechanism() -> Mechanism<'static> {
    super::mechanisms::oaep(Hash::Sha1)
}

fn legacy(hsm: &str) -> HsmError {
    HsmError::Setup {
        hsm: hsm.to_string(),
        message: "holds a cluster wrapping key made by an earlier version without the SO (not \
                  trusted, so keys could be exported with the user PIN); re-create this token"
            .into(),
    }
}

/// The cluster wrapping key object visible to session `s`, if any.
fn find_cwk(token: &Token, s: &Session) -> Result<Option<ObjectHandle>, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(CWK_ID.to_vec()),
        ])
        .map_err(|e| token.err(Operation::FindToken, e))?;
    Ok(found.first().copied())
}

/// Modulus and public exponent of an RSA public key object.
fn rsa_public(token: &Token, s: &Session, h: ObjectHandle) -> Result<(Vec<u8>, Vec<u8>), HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .map_err(|e| token.err(Operation::KeyTransport, e))?;
    let (mut n, mut e) = (Vec::new(), Vec::new());
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    Ok((n, e))
}

/// One token opened for the ceremony (its own module initialization, finalized on drop
/// after its sessions are closed).
struct Token {
    name: String,
    ctx: Pkcs11,
    slot: Slot,
}

impl Token {
    fn open(cfg: &NodeConfig) -> Result<Token, HsmError> {
        let name = cfg.name.clone();
        let ctx = load_module(&cfg.module, &cfg.env)
            .map_err(|e| HsmError::from_ck(&name, Operation::LoadModule, e))?;
        let slot = match find_slot(&ctx, &cfg.token_label) {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                let _ = ctx.finalize();
                return Err(HsmError::Setup {
                    hsm: name,
                    message: format!("no token labelled '{}'", cfg.token_label),
                });
            }
            Err(e) => {
                let _ = ctx.finalize();
                return Err(HsmError::from_ck(&name, Operation::FindToken, e));
            }
        };
        Ok(Token { name, ctx, slot })
    }

    fn err(&self, op: Operation, e: CkError) -> HsmError {
        HsmError::from_ck(&self.name, op, e)
    }

    fn session(&self) -> Result<Session, HsmError> {
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| self.err(Operation::OpenSession, e))
    }

    /// A read-write session logged in as the SO (the SO PIN is tried once).
    fn so_session(&self, so: &SoPin) -> Result<Session, HsmError> {
        let s = self.session()?;
        s.login(UserType::So, Some(&so.auth()))
            .map_err(|e| self.err(Operation::SoLogin, e))?;
        Ok(s)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = self.ctx.clone().finalize();
    }
}
