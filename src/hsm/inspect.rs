//! The operator's look at one configured HSM, from a process of its own (`hsm-kms hsm
//! list`, `hsm probe`, and the object scans of `keys show`), while the service may be
//! running: each call loads the HSM's module in this process (its own `C_Initialize`),
//! finds the token by label, logs in with the user PIN and finalizes the module before it
//! returns. Nothing here touches the service's objects: the probe's key is a session
//! object destroyed before logout, and the scans only read `CKA_CLASS` and `CKA_ID`.
//!
//! Every failure is reported as data ([`Failure`]: the step, the PKCS#11 function, the
//! `CKR_…` name and code), never as a panic, so one broken HSM is one line of the report.

use super::error::{self, HsmError, Operation};
use super::handles::CWK_ID;
use super::instance::{find_slot, load_module, NodeConfig};
use super::mechanisms::{self, IV_LEN};
use super::templates;
use crate::progress::Progress;
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::AuthPin;
use serde::Serialize;
use std::time::Instant;

/// Why a step failed, as an operator needs it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// The step that failed (`open`, `login`, `random`, …).
    pub step: String,
    /// The whole message (names the HSM, the function, the return value and the operation).
    pub message: String,
    /// The PKCS#11 function that failed (`C_Login`), when a PKCS#11 call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The `CKR_…` name of the return value, when a PKCS#11 call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ckr: Option<String>,
    /// The return value (`CK_RV`), when a PKCS#11 call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rv: Option<u64>,
}

impl Failure {
    /// A failure that is not the token's (e.g. the HSM's PIN file cannot be read).
    pub fn other(step: &str, message: String) -> Failure {
        Failure {
            step: step.to_string(),
            message,
            function: None,
            ckr: None,
            rv: None,
        }
    }

    fn of(step: &str, e: &HsmError) -> Failure {
        let (function, ckr) = match e {
            HsmError::Pkcs11 { function, name, .. }
            | HsmError::LoginRefused { function, name, .. } => {
                (Some(function.clone()), Some(name.clone()))
            }
            _ => (None, None),
        };
        Failure {
            step: step.to_string(),
            message: e.to_string(),
            function,
            ckr,
            rv: e.rv(),
        }
    }
}

/// What a token says of itself (`C_GetTokenInfo`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// The slot the token is in now (slots renumber: the config names the label).
    pub slot: u64,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial: String,
    /// `firmwareVersion`, `major.minor`.
    pub firmware: String,
    /// `hardwareVersion`, `major.minor`.
    pub hardware: String,
    /// Sessions open on the token (as the module counts them; many count this process's
    /// only), if the token tells.
    pub sessions: Option<u64>,
    /// The most sessions the token allows (`None`: no limit, or not told).
    pub max_sessions: Option<u64>,
    /// The token says it has no session limit ("effectively infinite").
    pub unlimited_sessions: bool,
    /// `max_sessions - sessions`, when both are known.
    pub free_sessions: Option<u64>,
    /// The token says its user PIN is locked.
    pub user_pin_locked: bool,
}

/// Whether a token holds the cluster wrapping key (found with the user PIN).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Enrollment {
    /// It holds the trusted cluster wrapping key of the ceremony.
    Enrolled,
    /// It holds none: `hsm-kms hsm enroll NAME` brings it in.
    NotEnrolled,
    /// It holds an untrusted one made by an earlier version: re-create the token.
    Legacy,
}

/// One line of `hsm-kms hsm list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Listing {
    /// The HSM's name in the config.
    pub name: String,
    /// Its PKCS#11 module.
    pub module: String,
    /// The label its token is found by.
    pub token_label: String,
    /// Whether the module loaded, the token was found and the user PIN accepted.
    pub reachable: bool,
    /// What the token says of itself (`None` if it could not be asked).
    pub token: Option<TokenInfo>,
    /// Whether it holds the cluster wrapping key (`None` if it could not be logged into).
    pub enrollment: Option<Enrollment>,
    /// Why it is not reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// One timed step of a probe.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    /// What was done.
    pub step: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// The answer of `hsm-kms hsm probe` for one HSM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    /// The HSM's name in the config.
    pub name: String,
    /// Every step ran and succeeded.
    pub ok: bool,
    /// The steps, in order, up to the first failure.
    pub steps: Vec<Step>,
    /// Wall time of the whole probe (module loading included), in milliseconds.
    pub total_ms: f64,
    /// Whether the token holds the cluster wrapping key (`None` if the probe did not get
    /// that far).
    pub enrollment: Option<Enrollment>,
    /// The first failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// The objects one token holds, by `CKA_ID` (a scan for `keys show`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Scan {
    /// The HSM's name in the config.
    pub name: String,
    /// The `CKA_ID` of every object found (an id appears once per object: a key pair's
    /// two halves give it twice).
    pub ids: Vec<Vec<u8>>,
    /// Objects that could not be read (skipped).
    pub unreadable: usize,
}

/// One module initialization of an HSM in this process: finalized on drop, after the
/// sessions (which borrow nothing, but must be closed first) are gone.
struct Opened {
    hsm: String,
    ctx: Pkcs11,
    slot: Slot,
}

impl Opened {
    fn open(cfg: &NodeConfig) -> Result<Opened, HsmError> {
        let hsm = cfg.name.clone();
        if !cfg.module.exists() {
            return Err(HsmError::Setup {
                hsm,
                message: format!("PKCS#11 module {} does not exist", cfg.module.display()),
            });
        }
        let ctx = load_module(&cfg.module, &cfg.env)
            .map_err(|e| HsmError::from_ck(&hsm, Operation::LoadModule, e))?;
        let slot = match find_slot(&ctx, &cfg.token_label) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let _ = ctx.finalize();
                return Err(HsmError::Setup {
                    hsm,
                    message: format!("no token labelled '{}' found", cfg.token_label),
                });
            }
            Err(e) => {
                let _ = ctx.finalize();
                return Err(HsmError::from_ck(&hsm, Operation::FindToken, e));
            }
        };
        Ok(Opened { hsm, ctx, slot })
    }

    fn err(&self, op: Operation) -> impl Fn(CkError) -> HsmError + '_ {
        move |e| HsmError::from_ck(&self.hsm, op, e)
    }

    fn info(&self) -> Result<TokenInfo, HsmError> {
        let t = self
            .ctx
            .get_token_info(self.slot)
            .map_err(self.err(Operation::FindToken))?;
        let (max, unlimited) = match t.max_session_count() {
            Limit::Max(n) => (Some(n), false),
            Limit::Infinite => (None, true),
            Limit::Unavailable => (None, false),
        };
        let sessions = t.session_count();
        Ok(TokenInfo {
            slot: self.slot.id(),
            manufacturer: t.manufacturer_id().trim().to_string(),
            model: t.model().trim().to_string(),
            serial: t.serial_number().trim().to_string(),
            firmware: t.firmware_version().to_string(),
            hardware: t.hardware_version().to_string(),
            sessions,
            max_sessions: max,
            unlimited_sessions: unlimited,
            free_sessions: max.zip(sessions).map(|(m, s)| m.saturating_sub(s)),
            user_pin_locked: t.user_pin_locked(),
        })
    }

    /// A read-write session logged in as the user.
    fn login(&self, pin: &str) -> Result<Session, HsmError> {
        let s = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(self.err(Operation::OpenSession))?;
        error::ok_if_already_logged_in(s.login(UserType::User, Some(&AuthPin::new(pin.into()))))
            .map_err(self.err(Operation::Login))?;
        Ok(s)
    }

    fn enrollment(&self, s: &Session) -> Result<Enrollment, HsmError> {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Id(CWK_ID.to_vec()),
            ])
            .map_err(self.err(Operation::FindObject))?;
        let Some(h) = found.first() else {
            return Ok(Enrollment::NotEnrolled);
        };
        Ok(match s.get_attributes(*h, &[AttributeType::Trusted]) {
            Ok(a) if a.contains(&Attribute::Trusted(true)) => Enrollment::Enrolled,
            _ => Enrollment::Legacy,
        })
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let _ = self.ctx.clone().finalize();
    }
}

/// `hsm list`'s line for the HSM of `cfg`: token information, and with a login whether it
/// is enrolled.
pub fn list(cfg: &NodeConfig) -> Listing {
    let mut line = Listing {
        name: cfg.name.clone(),
        module: cfg.module.display().to_string(),
        token_label: cfg.token_label.clone(),
        reachable: false,
        token: None,
        enrollment: None,
        error: None,
    };
    let opened = match Opened::open(cfg) {
        Ok(o) => o,
        Err(e) => {
            line.error = Some(Failure::of("open", &e));
            return line;
        }
    };
    match opened.info() {
        Ok(t) => line.token = Some(t),
        Err(e) => {
            line.error = Some(Failure::of("token info", &e));
            return line;
        }
    }
    let s = match opened.login(&cfg.pin) {
        Ok(s) => s,
        Err(e) => {
            line.error = Some(Failure::of("login", &e));
            return line;
        }
    };
    match opened.enrollment(&s) {
        Ok(en) => {
            line.enrollment = Some(en);
            line.reachable = true;
        }
        Err(e) => line.error = Some(Failure::of("find cluster wrapping key", &e)),
    }
    let _ = s.logout();
    line
}

/// The steps of a probe, timed one by one.
struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, HsmError>,
    ) -> Result<T, Failure> {
        let t = Instant::now();
        let r = f();
        self.steps.push(Step {
            step: name.to_string(),
            ms: t.elapsed().as_secs_f64() * 1e3,
            ok: r.is_ok(),
        });
        r.map_err(|e| Failure::of(name, &e))
    }
}

/// What a probe's key encrypts.
const PROBE_MESSAGE: &[u8] = b"hsm-kms operator probe";
/// The `CKA_ID` of the probe's session key.
const PROBE_KEY_ID: &[u8] = b"hsm-kms/operator-probe";

/// `hsm probe`: load the module, find the token, read its information, log in, draw 32
/// random bytes, generate an AES-256 session key, encrypt and decrypt with it (AES-GCM,
/// the IV from the token), destroy it, and look for the cluster wrapping key; each step
/// timed, the first failure reported with its `CKR_…` code.
pub fn probe(cfg: &NodeConfig) -> ProbeReport {
    let started = Instant::now();
    let mut steps = Steps { steps: Vec::new() };
    let mut enrollment = None;
    let result = (|| -> Result<(), Failure> {
        let opened = steps.run("open", || Opened::open(cfg))?;
        steps.run("token info", || opened.info())?;
        let s = steps.run("login", || opened.login(&cfg.pin))?;
        let random = steps.run("random", || {
            s.generate_random_vec(32)
                .map_err(opened.err(Operation::Random))
        })?;
        let key = steps.run("generate session key", || {
            s.generate_key(
                &Mechanism::AesKeyGen,
                &templates::session_aes(PROBE_KEY_ID, true),
            )
            .map_err(opened.err(Operation::GenerateKey))
        })?;
        let round_trip = steps.run("gcm encrypt+decrypt", || {
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(random.get(..IV_LEN).unwrap_or(&[0; IV_LEN]));
            let mut iv2 = iv;
            let ct = s
                .encrypt(
                    &mechanisms::gcm(&mut iv2, b"probe").map_err(opened.err(Operation::Probe))?,
                    key,
                    PROBE_MESSAGE,
                )
                .map_err(opened.err(Operation::AesGcmEncrypt))?;
            let mut iv3 = iv;
            let pt = s
                .decrypt(
                    &mechanisms::gcm(&mut iv3, b"probe").map_err(opened.err(Operation::Probe))?,
                    key,
                    &ct,
                )
                .map_err(opened.err(Operation::AesGcmDecrypt))?;
            if pt != PROBE_MESSAGE {
                return Err(HsmError::Internal(format!(
                    "{}: the GCM round trip returned other data",
                    cfg.name
                )));
            }
            Ok(())
        });
        let destroyed = s
            .destroy_object(key)
            .map_err(opened.err(Operation::DestroyObject));
        round_trip?;
        steps.run("destroy session key", || destroyed)?;
        enrollment = Some(steps.run("find cluster wrapping key", || opened.enrollment(&s))?);
        let _ = s.logout();
        Ok(())
    })();
    ProbeReport {
        name: cfg.name.clone(),
        ok: result.is_ok(),
        steps: steps.steps,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        enrollment,
        error: result.err(),
    }
}

/// Every object id in the token of `cfg` (one find over the token, then `CKA_ID` of each
/// object, `progress` advanced per object).
pub fn scan(cfg: &NodeConfig, progress: &mut dyn Progress) -> Result<Scan, Failure> {
    let opened = Opened::open(cfg).map_err(|e| Failure::of("open", &e))?;
    let s = opened
        .login(&cfg.pin)
        .map_err(|e| Failure::of("login", &e))?;
    let handles = s
        .find_objects(&[])
        .map_err(|e| Failure::of("find objects", &opened.err(Operation::FindObject)(e)))?;
    progress.stage(&format!("scanning {}", cfg.name), handles.len() as u64);
    let mut ids = Vec::with_capacity(handles.len());
    let mut unreadable = 0;
    for h in handles {
        match s.get_attributes(h, &[AttributeType::Id]) {
            Ok(attrs) => ids.extend(attrs.into_iter().filter_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            })),
            Err(e) if error::is_unreadable_object(&e) => unreadable += 1,
            Err(e) => {
                progress.finish();
                return Err(Failure::of(
                    "read object ids",
                    &opened.err(Operation::FindObject)(e),
                ));
            }
        }
        progress.advance(1);
    }
    progress.finish();
    let _ = s.logout();
    Ok(Scan {
        name: cfg.name.clone(),
        ids,
        unreadable,
    })
}
