//! How to reach one HSM ([`NodeConfig`]) and one initialization of its PKCS#11 module
//! ([`Instance`]): load the module (its own copy, never shared), find the token by label,
//! log in an anchor session kept for the life of the instance, probe the token's
//! capabilities, warm the handle cache and make sure the canary key exists; any failure
//! after `C_Initialize` finalizes the module again, so the next attempt starts afresh. Also
//! the process-wide module loading ([`load_module`], [`find_slot`]) that `softhsm` and
//! `bench` share.

use super::capabilities::Caps;
use super::error::{self, HsmError, Operation};
use super::handles::{HandleCache, ObjectKind, CANARY_ID};
use super::templates;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::Mutex;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// How to reach one HSM.
#[derive(Clone)]
pub struct NodeConfig {
    /// Name used in logs, health and errors.
    pub name: String,
    /// PKCS#11 module path; each HSM needs its own module instance (a copy of the file
    /// for SoftHSM2, or one p11-kit client per server).
    pub module: PathBuf,
    /// Token label (never a slot number: slots renumber).
    pub token_label: String,
    /// User PIN.
    pub pin: Zeroizing<String>,
    /// Environment set just before this module's `C_Initialize` (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("env", &self.env)
            .finish()
    }
}

/// Serializes module loading and `C_Initialize`, because the per-HSM environment
/// (e.g. `SOFTHSM2_CONF`) is process-wide and read during `C_Initialize`.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// One initialization of the module for this HSM. Handles are valid only within it.
pub(super) struct Instance {
    pub(super) ctx: Pkcs11,
    pub(super) slot: Slot,
    /// Handles of this instance's login (keyed by its epoch).
    pub(super) handles: HandleCache,
    /// What this token offers (mechanism list and probes), found at connect.
    pub(super) caps: Caps,
    anchor: Mutex<Option<Session>>,
}

impl Instance {
    /// Load (or re-initialize) the module, find the token by label, log in the anchor
    /// session and warm the handle cache with one find over the token.
    pub(super) fn open(cfg: &NodeConfig, epoch: u64) -> Result<Instance, HsmError> {
        let hsm = cfg.name.as_str();
        let setup = |message: String| HsmError::Setup {
            hsm: hsm.to_string(),
            message,
        };
        if !cfg.module.exists() {
            return Err(setup(format!(
                "PKCS#11 module {} does not exist",
                cfg.module.display()
            )));
        }
        let ck = |op: Operation| move |e: CkError| HsmError::from_ck(hsm, op, e);
        let ctx = load_module(&cfg.module, &cfg.env).map_err(ck(Operation::LoadModule))?;
        // From here on every failure finalizes the module: a context dropped without
        // C_Finalize leaves it initialized, and every later C_Initialize would then answer
        // CKR_CRYPTOKI_ALREADY_INITIALIZED and keep the old, stale state (hsm-facts.md §10).
        let opened = (|| {
            let slot = find_slot(&ctx, &cfg.token_label)
                .map_err(ck(Operation::FindToken))?
                .ok_or_else(|| setup(format!("no token labelled '{}' found", cfg.token_label)))?;
            let anchor = ctx
                .open_rw_session(slot)
                .map_err(ck(Operation::OpenSession))?;
            let pin = AuthPin::new(cfg.pin.as_str().into());
            error::ok_if_already_logged_in(anchor.login(UserType::User, Some(&pin)))
                .map_err(ck(Operation::Login))?;
            let handles =
                HandleCache::warm(epoch, &anchor).map_err(ck(Operation::WarmHandleCache))?;
            let caps = Caps::probe(&ctx, slot, &anchor);
            ensure_canary(hsm, &anchor, &handles)?;
            Ok((slot, anchor, handles, caps))
        })();
        match opened {
            Ok((slot, anchor, handles, caps)) => Ok(Instance {
                ctx,
                slot,
                handles,
                caps,
                anchor: Mutex::new(Some(anchor)),
            }),
            Err(e) => {
                // The anchor, if any, was closed when the closure returned.
                let _ = ctx.finalize();
                Err(e)
            }
        }
    }

    /// The login epoch of this instance.
    pub(super) fn epoch(&self) -> u64 {
        self.handles.epoch()
    }

    /// Forget (never close) the anchor and `C_Finalize` this instance. The anchor is
    /// forgotten because session handle numbers restart after `C_Initialize` and closing a
    /// stale one could close a new one.
    pub(super) fn finalize(&self) {
        if let Some(s) = self.anchor.lock().take() {
            std::mem::forget(s);
        }
        let _ = self.ctx.clone().finalize();
    }
}

/// Make sure the token holds the canary key of health probes, generating it through the
/// logged-in anchor session `s` of an opening instance whose cache is `handles`.
fn ensure_canary(hsm: &str, s: &Session, handles: &HandleCache) -> Result<(), HsmError> {
    if handles.contains(ObjectKind::Secret, CANARY_ID) {
        return Ok(());
    }
    let h = s
        .generate_key(&Mechanism::AesKeyGen, &templates::canary())
        .map_err(|e| HsmError::from_ck(hsm, Operation::CreateCanary, e))?;
    handles.insert(ObjectKind::Secret, CANARY_ID, h);
    Ok(())
}

/// Create every environment variable the HSM modules read (e.g. `SOFTHSM2_CONF`), with its
/// first value, while the process has no other thread: call it first thing in `main`.
///
/// A module reads its environment in `C_Initialize`, and per-HSM values of one variable
/// must differ, so `load_module` still sets the value just before each initialization
/// (under a lock). But after this call that only *replaces the value of an existing
/// variable*, which glibc does by storing a new string pointer without freeing anything a
/// concurrent `getenv` in another thread could be reading; only adding a variable grows
/// (and may move) the environment array. Host processes (one per HSM, own environment)
/// remove even that (issue 12).
pub fn prepare_environment(nodes: &[NodeConfig]) {
    for (k, v) in nodes.iter().flat_map(|n| n.env.iter()) {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

/// Load a module and `C_Initialize` it with `env` set, under the process-wide load lock
/// (SoftHSM2 reads `SOFTHSM2_CONF` in `C_Initialize`; see [`prepare_environment`]).
pub(super) fn load_module(
    module: &std::path::Path,
    env: &[(String, String)],
) -> Result<Pkcs11, CkError> {
    let _g = LOAD_LOCK.lock();
    for (k, v) in env {
        if std::env::var_os(k).is_none() {
            tracing::debug!(
                variable = %k,
                "a module's environment variable is created now (hsm::prepare_environment \
                 did not create it before threads started)"
            );
        }
        std::env::set_var(k, v);
    }
    let ctx = Pkcs11::new(module)?;
    error::ok_if_already_initialized(
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)),
    )?;
    Ok(ctx)
}

/// The slot holding the initialized token with this label.
pub(super) fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>, CkError> {
    for slot in ctx.get_slots_with_initialized_token()? {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim() == label {
                return Ok(Some(slot));
            }
        }
    }
    Ok(None)
}
