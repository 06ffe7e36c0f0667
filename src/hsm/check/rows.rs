//! The rows of `hsm check` on one token, in the order they run: connect (module, token,
//! login), leftovers of an earlier run, the SO's trusted wrapping key, then every key
//! generation, operation, copy, attribute policy and session behaviour the service relies
//! on. Keys are made with the service's own templates (`templates`) as session objects;
//! the two token objects carry labels starting with [`PREFIX`] and are destroyed by the
//! [`Leftovers`] guard whatever happens.

use super::report::{HsmReport, TokenFacts};
use super::{cancelled, return_value, timed, Kind, Options, Outcome, Ran, Target};
use crate::hsm::error::{self, classify, HsmError, Operation};
use crate::hsm::handles::CWK_ID;
use crate::hsm::instance::{find_slot, load_module};
use crate::hsm::kinds::{PairSpec, PairUse, SignScheme};
use crate::hsm::mechanisms;
use crate::hsm::needs::{curve_name, Family, Need, RSA_BITS};
use crate::hsm::templates;
use crate::pkix::{self, Curve, Hash};
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;

/// The label prefix of every object the check makes.
pub(super) const PREFIX: &str = "hsm-kms-check-";
/// Label of the check's session objects.
const SESSION_LABEL: &str = "hsm-kms-check-session";
/// Label and id of the SO's trusted wrapping key (a token object).
const KEK_LABEL: &str = "hsm-kms-check-kek";
const KEK_ID: &[u8] = b"hsm-kms-check/kek";
/// Label and id of the token key whose handle must survive a logout.
const RELOGIN_LABEL: &str = "hsm-kms-check-relogin";
const RELOGIN_ID: &[u8] = b"hsm-kms-check/relogin";
/// Every token object label the check uses (what the guard destroys).
const TOKEN_LABELS: [&str; 2] = [KEK_LABEL, RELOGIN_LABEL];

const AAD: &[u8] = b"hsm-kms check: additional authenticated data";
const IV: [u8; 12] = *b"hsm-kms-chk!";

/// Why a row failed: a return value, or something else.
enum Fail {
    Ck(CkError),
    Wrong(String),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Fail {
        Fail::Ck(e)
    }
}

/// One token's run: the rows so far.
struct Run<'a> {
    hsm: String,
    rows: Vec<Ran>,
    progress: &'a mut dyn FnMut(&str),
}

impl Run<'_> {
    /// Run row `id` with `f`, which sets the row's outcome; skipped once cancelled.
    fn custom(&mut self, id: &str, check: &str, kind: Kind, f: impl FnOnce(&mut Ran, &str)) {
        (self.progress)(id);
        let mut r = Ran::new(id, check, kind);
        if cancelled() {
            r.outcome = Outcome::Skipped("cancelled (Ctrl-C or SIGTERM)".into());
        } else {
            let hsm = self.hsm.clone();
            let ((), ms) = timed(|| f(&mut r, &hsm));
            r.ms = ms;
        }
        self.rows.push(r);
    }

    /// Run row `id`: met when `f` succeeds (for a [`Kind::MustRefuse`] row: when it fails
    /// with a return value). Returns `f`'s value.
    fn row<T>(
        &mut self,
        id: &str,
        check: &str,
        kind: Kind,
        f: impl FnOnce() -> Result<T, Fail>,
    ) -> Option<T> {
        let mut out = None;
        let refuse = matches!(kind, Kind::MustRefuse { .. });
        self.custom(id, check, kind, |r, hsm| match f() {
            Ok(v) => {
                r.met = Some(!refuse);
                out = Some(v);
            }
            Err(Fail::Ck(e)) => {
                set_ck(r, hsm, e);
                r.met = Some(refuse);
            }
            Err(Fail::Wrong(m)) => {
                r.outcome = Outcome::Failed(m);
                r.met = Some(false);
            }
        });
        out
    }

    fn skip(&mut self, id: &str, check: &str, kind: Kind, why: &str) {
        (self.progress)(id);
        let mut r = Ran::new(id, check, kind);
        r.outcome = Outcome::Skipped(why.to_string());
        self.rows.push(r);
    }

    fn info(&mut self, id: &str, check: &str, note: String) {
        let mut r = Ran::new(id, check, Kind::Info);
        r.note = note;
        self.rows.push(r);
    }

    /// Add to the last row's note.
    fn note(&mut self, text: String) {
        if let Some(r) = self.rows.last_mut() {
            if !r.note.is_empty() {
                r.note.push_str("; ");
            }
            r.note.push_str(&text);
        }
    }

    fn fail_connect(&mut self, id: &str, check: &str, message: String) {
        let mut r = Ran::new(id, check, Kind::Connect);
        r.outcome = Outcome::Failed(message);
        r.met = Some(false);
        self.rows.push(r);
    }
}

fn set_ck(r: &mut Ran, hsm: &str, e: CkError) {
    let (name, rv, function) = return_value(hsm, e);
    r.outcome = Outcome::Ck { name, rv, function };
}

/// Destroys every token object the check makes (labels [`TOKEN_LABELS`]) when dropped:
/// at the end of the run, on an early return, a panic, or after a cancellation.
struct Leftovers {
    ctx: Pkcs11,
    slot: Slot,
}

impl Leftovers {
    /// Destroy the check's token objects now; how many there were.
    fn sweep(&self) -> usize {
        let Ok(s) = self.ctx.open_rw_session(self.slot) else {
            return 0;
        };
        let mut n = 0;
        for label in TOKEN_LABELS {
            let found = s
                .find_objects(&[
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .unwrap_or_default();
            for h in found {
                if s.destroy_object(h).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let n = self.sweep();
        if n > 0 {
            tracing::debug!(objects = n, "hsm check: token objects destroyed");
        }
    }
}

/// Check one token.
pub(super) fn check(t: &Target, o: &Options, progress: &mut dyn FnMut(&str)) -> HsmReport {
    let mut run = Run {
        hsm: t.name.clone(),
        rows: Vec::new(),
        progress,
    };
    let mut token = None;
    if !t.module.exists() {
        run.fail_connect(
            "module",
            "load the PKCS#11 module",
            format!("{} does not exist", t.module.display()),
        );
    } else if let Some(ctx) = run.row(
        "module",
        "load the PKCS#11 module (C_Initialize)",
        Kind::Connect,
        || {
            load_module(&t.module, &t.env).map_err(|e| match e {
                CkError::LibraryLoading(e) => {
                    Fail::Wrong(format!("cannot load {}: {e}", t.module.display()))
                }
                e => Fail::Ck(e),
            })
        },
    ) {
        on_module(&ctx, t, o, &mut run, &mut token);
        let _ = ctx.finalize();
    }
    HsmReport::new(t, token, run.rows)
}

/// The slot of the token `t` names.
fn find_token(ctx: &Pkcs11, t: &Target) -> Result<Slot, Fail> {
    let labels = |slots: &[Slot]| {
        slots
            .iter()
            .filter_map(|s| ctx.get_token_info(*s).ok())
            .map(|i| format!("'{}'", i.label().trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let initialized = ctx.get_slots_with_initialized_token()?;
    match (t.slot, &t.token_label) {
        (Some(n), _) => {
            let slots = ctx.get_slots_with_token()?;
            slots.iter().copied().find(|s| s.id() == n).ok_or_else(|| {
                Fail::Wrong(format!(
                    "no slot {n} with a token (slots with a token: {})",
                    slots
                        .iter()
                        .map(|s| s.id().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        }
        (None, Some(l)) => find_slot(ctx, l)?.ok_or_else(|| {
            Fail::Wrong(format!(
                "no initialized token labelled '{l}' (tokens: {})",
                labels(&initialized)
            ))
        }),
        (None, None) => match initialized.as_slice() {
            [one] => Ok(*one),
            many => Err(Fail::Wrong(format!(
                "{} initialized tokens: name one with --slot or --token-label (tokens: {})",
                many.len(),
                labels(many)
            ))),
        },
    }
}

fn on_module(
    ctx: &Pkcs11,
    t: &Target,
    o: &Options,
    run: &mut Run<'_>,
    token: &mut Option<TokenFacts>,
) {
    let Some(slot) = run.row("token", "find the token", Kind::Connect, || {
        find_token(ctx, t)
    }) else {
        return;
    };
    if let Ok(info) = ctx.get_token_info(slot) {
        let facts = TokenFacts {
            slot: slot.id(),
            label: info.label().trim().to_string(),
            manufacturer: info.manufacturer_id().trim().to_string(),
            model: info.model().trim().to_string(),
            serial: info.serial_number().trim().to_string(),
            firmware: info.firmware_version().to_string(),
        };
        run.note(format!(
            "'{}' in slot {}: {} {} (firmware {})",
            facts.label, facts.slot, facts.manufacturer, facts.model, facts.firmware
        ));
        *token = Some(facts);
    }
    let Some(s) = run.row(
        "session",
        "C_OpenSession (read-write)",
        Kind::Connect,
        || Ok(ctx.open_rw_session(slot)?),
    ) else {
        return;
    };
    let Some(pin) = t.pin.as_ref() else {
        run.fail_connect(
            "login",
            "C_Login (user)",
            "no user PIN: pass --pin-file".into(),
        );
        return;
    };
    let user = || AuthPin::new(pin.as_str().into());
    if run
        .row("login", "C_Login (user)", Kind::Connect, || {
            Ok(error::ok_if_already_logged_in(
                s.login(UserType::User, Some(&user())),
            )?)
        })
        .is_none()
    {
        return;
    }
    // From here on, whatever happens, the check's token objects are destroyed.
    let guard = Leftovers {
        ctx: ctx.clone(),
        slot,
    };
    let removed = guard.sweep();
    run.info(
        "leftovers",
        "objects of an earlier, interrupted check",
        format!("{removed} token objects labelled {PREFIX}* removed"),
    );
    let mechanisms = ctx.get_mechanism_list(slot).map(|m| m.len()).unwrap_or(0);
    run.info(
        "mechanisms",
        "C_GetMechanismList",
        format!("{mechanisms} mechanisms listed"),
    );
    let kek = trusted_kek(run, t, &s, &user);
    let keys = generate(run, &s);
    operations(run, &s, &keys);
    custody(run, &s, &keys, kek);
    sessions(run, ctx, slot, &s, &keys, o, &user);
    drop(guard);
}

/// The trusted wrapping key the copy rows wrap under: made by the SO (with
/// `--so-pin-file`), else the token's cluster wrapping key if it is enrolled.
fn trusted_kek(
    run: &mut Run<'_>,
    t: &Target,
    s: &Session,
    user: &dyn Fn() -> AuthPin,
) -> Option<(ObjectHandle, bool)> {
    let check = "SO: C_Login (SO), C_GenerateKey of a trusted wrapping key (the cluster \
                 wrapping key's template; token object)";
    let kind = Kind::Behaviour {
        otherwise: "the SO cannot make the cluster wrapping key: this token cannot be enrolled",
        critical: true,
    };
    if let Some(so) = &t.so_pin {
        return run.row("so.trusted_wrapping_key", check, kind, || {
            s.logout()?;
            let made = (|| {
                s.login(UserType::So, Some(&so.auth()))?;
                let tmpl = templates::check_wrapping_key(KEK_ID, KEK_LABEL);
                let k = s.generate_key(&Mechanism::AesKeyGen, tmpl.attributes());
                let _ = s.logout();
                k
            })();
            s.login(UserType::User, Some(&user()))?;
            Ok((made?, true))
        });
    }
    let cwk = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(CWK_ID.to_vec()),
        ])
        .ok()
        .and_then(|v| v.first().copied());
    match cwk {
        Some(h) => {
            run.info(
                "so.trusted_wrapping_key",
                "trusted wrapping key",
                "the token's cluster wrapping key (an enrolled token); with --so-pin-file \
                 the check makes one of its own"
                    .into(),
            );
            Some((h, false))
        }
        None => {
            run.skip(
                "so.trusted_wrapping_key",
                check,
                kind,
                "needs --so-pin-file",
            );
            None
        }
    }
}

/// The keys the rows use (session objects made with the service's templates).
#[derive(Default)]
struct Keys {
    aes: Option<ObjectHandle>,
    hmac: HashMap<usize, ObjectHandle>,
    /// (public, private) by (spec, usage).
    pairs: Vec<((PairSpec, PairUse), (ObjectHandle, ObjectHandle))>,
}

impl Keys {
    fn pair(&self, spec: PairSpec, usage: PairUse) -> Option<(ObjectHandle, ObjectHandle)> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == (spec, usage))
            .map(|(_, p)| *p)
    }
}

fn session(t: Vec<Attribute>) -> Vec<Attribute> {
    templates::as_session_object(t, SESSION_LABEL)
}

fn pair_name(spec: PairSpec) -> String {
    match spec {
        PairSpec::Rsa(bits) => format!("RSA-{bits}"),
        PairSpec::Ec(c) => format!("EC {}", curve_name(c)),
        PairSpec::Ed25519 => "Ed25519".into(),
    }
}

fn gen_pair(
    s: &Session,
    spec: PairSpec,
    usage: PairUse,
) -> Result<(ObjectHandle, ObjectHandle), CkError> {
    let id = format!("hsm-kms-check/{spec:?}/{usage:?}").into_bytes();
    let mut pub_t = session(templates::generated_public_key(&id, SESSION_LABEL, usage));
    pub_t.extend(templates::key_pair_params(spec));
    let priv_t = session(templates::private_key(
        spec,
        &id,
        SESSION_LABEL,
        usage,
        false,
    ));
    let mech = match spec {
        PairSpec::Rsa(_) => Mechanism::RsaPkcsKeyPairGen,
        PairSpec::Ec(_) => Mechanism::EccKeyPairGen,
        PairSpec::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
    };
    s.generate_key_pair(&mech, &pub_t, &priv_t)
}

const CURVES: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];
const HMACS: [(usize, Hash); 4] = [
    (28, Hash::Sha224),
    (32, Hash::Sha256),
    (48, Hash::Sha384),
    (64, Hash::Sha512),
];

fn generate(run: &mut Run<'_>, s: &Session) -> Keys {
    let mut k = Keys::default();
    run.row(
        "random",
        "C_GenerateRandom (32 bytes)",
        Kind::Need(Need::Random),
        || {
            let v = s.generate_random_vec(32)?;
            if v.iter().all(|b| *b == 0) {
                return Err(Fail::Wrong("32 zero bytes".into()));
            }
            Ok(())
        },
    );
    k.aes = run.row(
        "generate.aes256",
        "generate AES-256 (CKM_AES_KEY_GEN)",
        Kind::Need(Need::AesKeyGen),
        || {
            let t = session(templates::aes_key(
                b"hsm-kms-check/aes",
                SESSION_LABEL,
                true,
            ));
            Ok(s.generate_key(&Mechanism::AesKeyGen, &t)?)
        },
    );
    let mut pairs: Vec<(PairSpec, PairUse)> = RSA_BITS
        .iter()
        .map(|b| (PairSpec::Rsa(*b), PairUse::Sign))
        .collect();
    pairs.push((PairSpec::Rsa(2048), PairUse::Decrypt));
    for c in CURVES {
        pairs.push((PairSpec::Ec(c), PairUse::Sign));
        if c != Curve::Secp256k1 {
            pairs.push((PairSpec::Ec(c), PairUse::Derive));
        }
    }
    pairs.push((PairSpec::Ed25519, PairUse::Sign));
    for (spec, usage) in pairs {
        let (id, need, mech) = match spec {
            PairSpec::Rsa(b) => (
                format!("generate.rsa{b}"),
                Need::RsaKeyGen(b),
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
            ),
            PairSpec::Ec(c) => (
                format!("generate.ec.{}", curve_name(c).to_lowercase()),
                Need::EcKeyGen(c),
                "CKM_EC_KEY_PAIR_GEN",
            ),
            PairSpec::Ed25519 => (
                "generate.ed25519".into(),
                Need::EdKeyGen,
                "CKM_EC_EDWARDS_KEY_PAIR_GEN",
            ),
        };
        let (id, what) = match usage {
            PairUse::Decrypt => (format!("{id}.decrypt"), "decrypt"),
            PairUse::Derive => (format!("{id}.derive"), "derive"),
            _ => (id, "sign"),
        };
        let check = format!("generate {} ({what}; {mech})", pair_name(spec));
        if let Some(p) = run.row(&id, &check, Kind::Need(need), || {
            Ok(gen_pair(s, spec, usage)?)
        }) {
            k.pairs.push(((spec, usage), p));
        }
    }
    for (len, h) in HMACS {
        let id = format!("generate.hmac{}", len * 8);
        let check = format!("generate a {len}-byte HMAC key (CKM_GENERIC_SECRET_KEY_GEN)");
        if let Some(key) = run.row(&id, &check, Kind::Need(Need::SecretKeyGen), || {
            let label = format!("hsm-kms-check/hmac/{}", h.name());
            let t = session(templates::generated_hmac_key(
                label.as_bytes(),
                SESSION_LABEL,
                len,
            ));
            Ok(s.generate_key(&Mechanism::GenericSecretKeyGen, &t)?)
        }) {
            k.hmac.insert(len, key);
        }
    }
    k
}

/// Sign `digest` with private key `key` and verify with public key `public` (`scheme`).
fn sign_verify(
    s: &Session,
    scheme: SignScheme,
    key: ObjectHandle,
    public: ObjectHandle,
    digest: &[u8],
) -> Result<(), Fail> {
    let (mech, input) = mechanisms::sign(scheme, digest);
    let sig = s.sign(&mech, key, &input)?;
    s.verify(&mech, public, &input, &sig)?;
    Ok(())
}

fn gcm_roundtrip(s: &Session, enc: ObjectHandle, dec: ObjectHandle) -> Result<Vec<u8>, Fail> {
    let pt = b"hsm-kms check plaintext";
    let mut iv = IV;
    let ct = s.encrypt(&mechanisms::gcm(&mut iv, AAD)?, enc, pt)?;
    let mut iv = IV;
    let back = s.decrypt(&mechanisms::gcm(&mut iv, AAD)?, dec, &ct)?;
    if back != pt {
        return Err(Fail::Wrong("decrypted text differs".into()));
    }
    Ok(ct)
}

fn operations(run: &mut Run<'_>, s: &Session, k: &Keys) {
    let no_key = "its key could not be generated";
    // AES-GCM.
    let gcm = "AES-256-GCM encrypt/decrypt with AAD (CKM_AES_GCM)";
    let ct = match k.aes {
        Some(aes) => run.row("gcm", gcm, Kind::Need(Need::AesGcm), || {
            gcm_roundtrip(s, aes, aes)
        }),
        None => {
            run.skip("gcm", gcm, Kind::Need(Need::AesGcm), no_key);
            None
        }
    };
    let tag = "AES-GCM with a changed tag is refused, and read as a bad ciphertext";
    match (k.aes, ct) {
        (Some(aes), Some(ct)) => run.custom("gcm.tag_failure", tag, Kind::Need(Need::AesGcm), |r, hsm| {
            let mut bad = ct;
            if let Some(b) = bad.last_mut() {
                *b ^= 1;
            }
            let mut iv = IV;
            let got = mechanisms::gcm(&mut iv, AAD).and_then(|m| s.decrypt(&m, aes, &bad));
            match got {
                Ok(_) => {
                    r.outcome = Outcome::Failed("a ciphertext with a changed tag decrypted".into());
                    r.met = Some(false);
                }
                Err(e) => {
                    // What the service's one classification makes of this return value.
                    let read = match &e {
                        CkError::Pkcs11(rv, f) => classify(hsm, *f, *rv, Operation::AesGcmDecrypt),
                        _ => HsmError::Internal(e.to_string()),
                    };
                    set_ck(r, hsm, e);
                    let bad_ciphertext = matches!(read, HsmError::InvalidCiphertext);
                    r.met = Some(bad_ciphertext);
                    r.note = if bad_ciphertext {
                        "read as a bad ciphertext (InvalidCiphertextException); the HSM stays healthy".into()
                    } else {
                        format!("read as {read}: every bad ciphertext would make the HSM suspect")
                    };
                }
            }
        }),
        _ => run.skip("gcm.tag_failure", tag, Kind::Need(Need::AesGcm), "no ciphertext"),
    }
    // RSA.
    let rsa_sign = k.pair(PairSpec::Rsa(2048), PairUse::Sign);
    let digest = Hash::Sha256.digest(b"hsm-kms check message");
    for (id, check, need, scheme) in [
        (
            "rsa.pkcs1",
            "RSA-2048 PKCS#1 v1.5 sign/verify, SHA-256 (CKM_RSA_PKCS)",
            Need::RsaPkcs,
            SignScheme::RsaPkcs1(Hash::Sha256),
        ),
        (
            "rsa.pss",
            "RSA-2048 PSS sign/verify, SHA-256 (CKM_RSA_PKCS_PSS)",
            Need::RsaPss,
            SignScheme::RsaPss(Hash::Sha256),
        ),
    ] {
        match rsa_sign {
            Some((public, private)) => {
                run.row(id, check, Kind::Need(need), || {
                    sign_verify(s, scheme, private, public, &digest)
                });
            }
            None => run.skip(id, check, Kind::Need(need), no_key),
        }
    }
    let rsa_dec = k.pair(PairSpec::Rsa(2048), PairUse::Decrypt);
    for (id, check, need, h) in [
        (
            "rsa.oaep_sha1",
            "RSA-2048 OAEP SHA-1 encrypt/decrypt (CKM_RSA_PKCS_OAEP)",
            Need::OaepSha1,
            Hash::Sha1,
        ),
        (
            "rsa.oaep_sha256",
            "RSA-2048 OAEP SHA-256/MGF1-SHA-256 encrypt/decrypt (CKM_RSA_PKCS_OAEP)",
            Need::OaepSha256,
            Hash::Sha256,
        ),
    ] {
        match rsa_dec {
            Some((public, private)) => {
                run.row(id, check, Kind::Need(need), || {
                    let m = mechanisms::oaep(h);
                    let ct = s.encrypt(&m, public, b"hsm-kms check")?;
                    let back = s.decrypt(&m, private, &ct)?;
                    if back != b"hsm-kms check" {
                        return Err(Fail::Wrong("decrypted text differs".into()));
                    }
                    Ok(())
                });
            }
            None => run.skip(id, check, Kind::Need(need), no_key),
        }
    }
    let x509 = "RSA-2048 raw encrypt/decrypt (CKM_RSA_X_509)";
    match rsa_dec {
        Some((public, private)) => {
            run.row("rsa.x509", x509, Kind::Need(Need::RsaX509), || {
                let mut block = vec![0u8; 256];
                for (i, b) in block.iter_mut().enumerate().skip(1) {
                    *b = i as u8;
                }
                let ct = s.encrypt(&Mechanism::RsaX509, public, &block)?;
                let back = s.decrypt(&Mechanism::RsaX509, private, &ct)?;
                let strip = |v: &[u8]| {
                    v.iter()
                        .skip_while(|b| **b == 0)
                        .copied()
                        .collect::<Vec<_>>()
                };
                if strip(&back) != strip(&block) {
                    return Err(Fail::Wrong("decrypted block differs".into()));
                }
                Ok(())
            });
        }
        None => run.skip("rsa.x509", x509, Kind::Need(Need::RsaX509), no_key),
    }
    // EC.
    for c in CURVES {
        let name = curve_name(c).to_lowercase();
        let hash = match c {
            Curve::P384 => Hash::Sha384,
            Curve::P521 => Hash::Sha512,
            _ => Hash::Sha256,
        };
        let id = format!("ecdsa.{name}");
        let check = format!("ECDSA sign/verify on {} (CKM_ECDSA)", curve_name(c));
        match k.pair(PairSpec::Ec(c), PairUse::Sign) {
            Some((public, private)) => {
                run.row(&id, &check, Kind::Need(Need::Ecdsa), || {
                    sign_verify(s, SignScheme::Ecdsa(c), private, public, &hash.digest(b"m"))
                });
            }
            None => run.skip(&id, &check, Kind::Need(Need::Ecdsa), no_key),
        }
        if c == Curve::Secp256k1 {
            continue;
        }
        let id = format!("ecdh.{name}");
        let check = format!("ECDH derive on {} (CKM_ECDH1_DERIVE)", curve_name(c));
        match k.pair(PairSpec::Ec(c), PairUse::Derive) {
            Some((public, private)) => {
                run.row(&id, &check, Kind::Need(Need::Ecdh), || {
                    let point = s.get_attributes(public, &[AttributeType::EcPoint])?;
                    let raw = point
                        .iter()
                        .find_map(|a| match a {
                            Attribute::EcPoint(v) => pkix::ec_point_raw(c, v),
                            _ => None,
                        })
                        .ok_or_else(|| Fail::Wrong("no readable CKA_EC_POINT".into()))?;
                    let secret = s.derive_key(
                        &mechanisms::ecdh(&raw),
                        private,
                        &templates::ecdh_secret(c.field_len()),
                    )?;
                    let _ = s.destroy_object(secret);
                    Ok(())
                });
            }
            None => run.skip(&id, &check, Kind::Need(Need::Ecdh), no_key),
        }
    }
    let eddsa = "Ed25519 sign/verify (CKM_EDDSA)";
    match k.pair(PairSpec::Ed25519, PairUse::Sign) {
        Some((public, private)) => {
            run.row("eddsa", eddsa, Kind::Need(Need::Eddsa), || {
                sign_verify(s, SignScheme::Ed25519, private, public, b"hsm-kms check")
            });
        }
        None => run.skip("eddsa", eddsa, Kind::Need(Need::Eddsa), no_key),
    }
    for (len, h) in HMACS {
        let id = format!("hmac.{}", h.name().to_lowercase().replace('-', ""));
        let check = format!("HMAC {} sign/verify", h.name());
        match k.hmac.get(&len) {
            Some(key) => {
                run.row(&id, &check, Kind::Need(Need::Hmac(h)), || {
                    let m = mechanisms::hmac(h);
                    let mac = s.sign(&m, *key, b"hsm-kms check")?;
                    s.verify(&m, *key, b"hsm-kms check", &mac)?;
                    Ok(())
                });
            }
            None => run.skip(&id, &check, Kind::Need(Need::Hmac(h)), no_key),
        }
    }
}

const CUSTODY_WARNING: &str = "serves, with a warning at start: a holder of the user PIN could \
                               export keys (custody protection not enforced)";

fn custody(run: &mut Run<'_>, s: &Session, k: &Keys, kek: Option<(ObjectHandle, bool)>) {
    // Attribute policy of the keys the service makes.
    let sensitive = |run: &mut Run<'_>, id: &str, what: &str, key: Option<ObjectHandle>| {
        let check =
            format!("{what}: CKA_VALUE unreadable, CKA_SENSITIVE and CKA_WRAP_WITH_TRUSTED set");
        let kind = Kind::Behaviour {
            otherwise: "key material would be readable with the user PIN",
            critical: true,
        };
        let Some(key) = key else {
            run.skip(id, &check, kind, "its key could not be generated");
            return;
        };
        run.row(id, &check, kind, || {
            let value = [AttributeType::Value, AttributeType::PrivateExponent];
            let info = s.get_attribute_info(key, &value)?;
            if !info.iter().all(|i| {
                matches!(
                    i,
                    AttributeInfo::Sensitive
                        | AttributeInfo::TypeInvalid
                        | AttributeInfo::Unavailable
                )
            }) {
                return Err(Fail::Wrong("the key's value is readable".into()));
            }
            let attrs = s.get_attributes(
                key,
                &[AttributeType::Sensitive, AttributeType::WrapWithTrusted],
            )?;
            if !attrs.contains(&Attribute::Sensitive(true))
                || !attrs.contains(&Attribute::WrapWithTrusted(true))
            {
                return Err(Fail::Wrong(format!("attributes as read: {attrs:?}")));
            }
            Ok(())
        });
    };
    sensitive(run, "policy.aes", "AES key", k.aes);
    let rsa = k.pair(PairSpec::Rsa(2048), PairUse::Sign).map(|p| p.1);
    sensitive(run, "policy.rsa", "RSA private key", rsa);
    // Wrap-with-trusted: a user-made key must not wrap a KMS-like key.
    run.custom(
        "custody.wrap_with_trusted",
        "a CKA_WRAP_WITH_TRUSTED key wrapped under a key the user made is refused",
        Kind::MustRefuse {
            otherwise: CUSTODY_WARNING,
            critical: false,
        },
        |r, hsm| {
            let keys = s
                .generate_key(&Mechanism::AesKeyGen, &templates::probe_protected_key())
                .and_then(|p| {
                    s.generate_key(&Mechanism::AesKeyGen, &templates::probe_wrapping_key())
                        .map(|w| (p, w))
                });
            match keys {
                Err(e) => {
                    set_ck(r, hsm, e);
                    r.note = "could not make the two keys".into();
                }
                Ok((protected, own)) => {
                    match s.wrap_key(&mechanisms::key_wrap(), own, protected) {
                        Ok(_) => {
                            r.met = Some(false);
                        }
                        Err(e) => {
                            set_ck(r, hsm, e);
                            r.met = Some(true);
                        }
                    }
                    let _ = s.destroy_object(own);
                    let _ = s.destroy_object(protected);
                }
            }
        },
    );
    // Copies under the trusted wrapping key, one row per family.
    let skip_why = "needs --so-pin-file (a trusted wrapping key only the SO can make)";
    let rsa_pair = k.pair(PairSpec::Rsa(2048), PairUse::Sign);
    let ec_pair = k.pair(PairSpec::Ec(Curve::P256), PairUse::Sign);
    let ed_pair = k.pair(PairSpec::Ed25519, PairUse::Sign);
    let hmac = k.hmac.get(&32).copied();
    type Proof<'s> = Box<dyn Fn(ObjectHandle) -> Result<(), Fail> + 's>;
    let sign_proof = |scheme: SignScheme, public: ObjectHandle, digest: Vec<u8>| -> Proof<'_> {
        Box::new(move |copy| sign_verify(s, scheme, copy, public, &digest))
    };
    let d256 = Hash::Sha256.digest(b"m");
    /// A family, what is copied, the key, its unwrap template and the proof of the copy.
    type Copy<'s> = (
        Family,
        &'static str,
        Option<ObjectHandle>,
        Vec<Attribute>,
        Option<Proof<'s>>,
    );
    let copies: Vec<Copy<'_>> = vec![
        (
            Family::Aes,
            "AES-256 key",
            k.aes,
            session(templates::unwrapped_aes_key(
                b"hsm-kms-check/aes-copy",
                SESSION_LABEL,
                true,
                false,
            )),
            k.aes.map(|aes| -> Proof<'_> {
                Box::new(move |copy| gcm_roundtrip(s, copy, aes).map(|_| ()))
            }),
        ),
        (
            Family::Hmac,
            "HMAC key",
            hmac,
            session(templates::hmac_key(
                b"hsm-kms-check/hmac-copy",
                SESSION_LABEL,
            )),
            hmac.map(|key| -> Proof<'_> {
                Box::new(move |copy| {
                    let m = mechanisms::hmac(Hash::Sha256);
                    let mac = s.sign(&m, copy, b"m")?;
                    s.verify(&m, key, b"m", &mac)?;
                    Ok(())
                })
            }),
        ),
        (
            Family::Rsa,
            "RSA-2048 private key",
            rsa_pair.map(|p| p.1),
            session(templates::private_key(
                PairSpec::Rsa(2048),
                b"hsm-kms-check/rsa-copy",
                SESSION_LABEL,
                PairUse::Sign,
                false,
            )),
            rsa_pair.map(|p| sign_proof(SignScheme::RsaPkcs1(Hash::Sha256), p.0, d256.clone())),
        ),
        (
            Family::Ec,
            "EC P-256 private key",
            ec_pair.map(|p| p.1),
            session(templates::private_key(
                PairSpec::Ec(Curve::P256),
                b"hsm-kms-check/ec-copy",
                SESSION_LABEL,
                PairUse::Sign,
                false,
            )),
            ec_pair.map(|p| sign_proof(SignScheme::Ecdsa(Curve::P256), p.0, d256.clone())),
        ),
        (
            Family::Ed25519,
            "Ed25519 private key",
            ed_pair.map(|p| p.1),
            session(templates::private_key(
                PairSpec::Ed25519,
                b"hsm-kms-check/ed-copy",
                SESSION_LABEL,
                PairUse::Sign,
                false,
            )),
            ed_pair.map(|p| sign_proof(SignScheme::Ed25519, p.0, b"m".to_vec())),
        ),
    ];
    for (family, what, key, template, proof) in copies {
        let id = format!("wrap.{}", format!("{family:?}").to_lowercase());
        let check = format!(
            "copy of a(n) {what}: C_WrapKey/C_UnwrapKey under the trusted wrapping key (CKM_AES_KEY_WRAP_PAD), used"
        );
        let kind = Kind::Need(Need::Wrap(family));
        match (kek, key, proof) {
            (None, ..) => run.skip(&id, &check, kind, skip_why),
            (_, None, _) | (_, _, None) => {
                run.skip(&id, &check, kind, "its key could not be generated")
            }
            (Some((w, _)), Some(key), Some(proof)) => {
                run.row(&id, &check, kind, || {
                    let blob = s.wrap_key(&mechanisms::key_wrap(), w, key)?;
                    let copy = s.unwrap_key(&mechanisms::key_wrap(), w, &blob, &template)?;
                    let proved = proof(copy);
                    let _ = s.destroy_object(copy);
                    proved
                });
            }
        }
    }
    // The unwrap template of the trusted wrapping key.
    let check = "an unwrap under the trusted wrapping key that asks for a readable key is \
                 refused (CKA_UNWRAP_TEMPLATE)";
    let kind = Kind::MustRefuse {
        otherwise: CUSTODY_WARNING,
        critical: false,
    };
    match (kek, k.aes) {
        (Some((w, _)), Some(aes)) => {
            run.custom("custody.unwrap_template", check, kind, |r, hsm| {
                match s.wrap_key(&mechanisms::key_wrap(), w, aes) {
                    Err(e) => {
                        set_ck(r, hsm, e);
                        r.note = "the key to unwrap could not be wrapped".into();
                    }
                    Ok(blob) => match s.unwrap_key(
                        &mechanisms::key_wrap(),
                        w,
                        &blob,
                        &templates::weak_unwrap(),
                    ) {
                        Ok(h) => {
                            let _ = s.destroy_object(h);
                            r.met = Some(false);
                        }
                        Err(e) => {
                            set_ck(r, hsm, e);
                            r.met = Some(true);
                        }
                    },
                }
            })
        }
        (None, _) => run.skip("custody.unwrap_template", check, kind, skip_why),
        (_, None) => run.skip("custody.unwrap_template", check, kind, "no AES key"),
    }
    // The probe the service runs at connect: does the token confine what a key it
    // unwrapped unwraps in turn (the ephemeral AES key of an RSA_AES import)?
    let refused = "RSA_AES_KEY_WRAP_* imports are refused unless allow_unconfined_rsa_aes_import";
    run.custom(
        "custody.nested_unwrap_template",
        "an unwrap template nested in an unwrap template (CKA_UNWRAP_TEMPLATE) is enforced",
        Kind::Info,
        |r, hsm| match crate::hsm::capabilities::probe_nested_unwrap_template(s) {
            Ok(true) => r.note = "enforced: RSA_AES_KEY_WRAP_* imports are confined".into(),
            Ok(false) => r.note = format!("not enforced: {refused}"),
            Err(e) => {
                set_ck(r, hsm, e);
                r.note = format!("refused by the token: {refused}");
            }
        },
    );
}

fn sessions(
    run: &mut Run<'_>,
    ctx: &Pkcs11,
    slot: Slot,
    s: &Session,
    k: &Keys,
    o: &Options,
    user: &dyn Fn() -> AuthPin,
) {
    // A token key's handle, from another session and after a logout and login.
    let check = "a token key's handle used from another session";
    let kind = Kind::Behaviour {
        otherwise: "none: the service's worker sessions share the handles found at start",
        critical: true,
    };
    let token_key = run.row("handles.other_session", check, kind, || {
        let t = templates::aes_key(RELOGIN_ID, RELOGIN_LABEL, false);
        let key = s.generate_key(&Mechanism::AesKeyGen, &t)?;
        let other = ctx.open_rw_session(slot)?;
        gcm_roundtrip(&other, key, key)?;
        Ok(key)
    });
    // Concurrent sessions.
    let check = format!(
        "{} threads, a session each, {} AES-GCM round trips each",
        o.threads, o.ops_per_thread
    );
    let kind = Kind::Behaviour {
        otherwise: "none: the service runs a session per worker thread, concurrently",
        critical: true,
    };
    match k.aes {
        Some(aes) => run.custom("sessions.concurrent", &check, kind, |r, hsm| {
            let started = std::time::Instant::now();
            let results: Vec<Result<(), Fail>> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..o.threads)
                    .map(|_| {
                        sc.spawn(move || {
                            let mine = ctx.open_rw_session(slot)?;
                            for _ in 0..o.ops_per_thread {
                                gcm_roundtrip(&mine, aes, aes)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(Fail::Wrong("thread panicked".into())))
                    })
                    .collect()
            });
            let secs = started.elapsed().as_secs_f64();
            match results.into_iter().find_map(Result::err) {
                None => {
                    r.met = Some(true);
                    let ops = (o.threads * o.ops_per_thread) as f64;
                    r.note = format!("{:.0} round trips/s", ops / secs.max(1e-9));
                }
                Some(Fail::Ck(e)) => {
                    set_ck(r, hsm, e);
                    r.met = Some(false);
                }
                Some(Fail::Wrong(m)) => {
                    r.outcome = Outcome::Failed(m);
                    r.met = Some(false);
                }
            }
        }),
        None => run.skip("sessions.concurrent", &check, kind, "no AES key"),
    }
    // C_FindObjects cost.
    let check = format!(
        "C_FindObjects by class and CKA_ID among {} session objects",
        o.find_objects
    );
    run.custom("find.cost", &check, Kind::Info, |r, hsm| {
        let mut made = Vec::new();
        let outcome = (|| -> Result<String, CkError> {
            for i in 0..o.find_objects {
                let id = format!("hsm-kms-check/find/{i}").into_bytes();
                made.push(s.generate_key(&Mechanism::AesKeyGen, &templates::session_aes(&id, true))?);
            }
            let finds = 50usize;
            let started = std::time::Instant::now();
            for i in 0..finds {
                let id = format!("hsm-kms-check/find/{}", (i * 7) % o.find_objects.max(1)).into_bytes();
                s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(id)])?;
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / finds as f64;
            Ok(format!(
                "{us:.0} µs per find (the service finds only when an instance opens and on a cache miss)"
            ))
        })();
        for h in made {
            let _ = s.destroy_object(h);
        }
        match outcome {
            Ok(note) => r.note = note,
            Err(e) => set_ck(r, hsm, e),
        }
    });
    // Session limit.
    let check = format!("open up to {} sessions at once", o.session_limit);
    run.custom(
        "sessions.limit",
        &check,
        Kind::Need(Need::Sessions),
        |r, hsm| {
            let mut open = Vec::new();
            let mut stop = None;
            while open.len() < o.session_limit {
                match ctx.open_rw_session(slot) {
                    Ok(x) => open.push(x),
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                }
            }
            // With the check's own session.
            let n = open.len() + 1;
            drop(open);
            r.met = Some(n >= o.sessions_needed);
            r.note = match stop {
                None => format!(
                    "{n} open at once, then stopped (this check's bound); the service opens {}",
                    o.sessions_needed
                ),
                Some(e) => {
                    set_ck(r, hsm, e);
                    format!(
                        "stopped at {n} open sessions; the service opens {}",
                        o.sessions_needed
                    )
                }
            };
        },
    );
    // Last: a logout ends the session objects of this login.
    let check = "the same handle after C_Logout and C_Login";
    let kind = Kind::Behaviour {
        otherwise: "the service finds every handle again after each login (a new \
                    instance's cache)",
        critical: false,
    };
    match token_key {
        Some(key) => {
            run.row("handles.relogin", check, kind, || {
                s.logout()?;
                s.login(UserType::User, Some(&user()))?;
                gcm_roundtrip(s, key, key)?;
                Ok(())
            });
            let _ = s.destroy_object(key);
        }
        None => run.skip("handles.relogin", check, kind, "no token key"),
    }
}
