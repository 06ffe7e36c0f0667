//! Local SoftHSM2 tokens for the quick start and tests: one folder per HSM with its own
//! copy of `libsofthsm2.so` (so each HSM gets its own module instance and globals), its own
//! `softhsm2.conf` and token directory, and a random user PIN in a 0600 file. The SO PIN is
//! the caller's ([`SoPin`]): it initializes the token and runs the enrollment ceremony
//! ([`enroll_local`]), and is never written to the HSM's folder.

use super::ceremony::{self, Enrolled, SoPin};
use super::error::{HsmError, Operation};
use super::instance::{find_slot, load_module, NodeConfig};
use super::templates;
use cryptoki::error::Error as CkError;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use rand::RngCore;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The template of each local HSM's `softhsm2.conf` (`@NAME@`, `@TOKEN_DIR@`).
const SOFTHSM2_CONF: &str = include_str!("../../softhsm/softhsm2.conf.in");

/// Where Debian installs SoftHSM2 (`SOFTHSM2_MODULE` overrides).
pub const SYSTEM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Paths of one provisioned local HSM.
#[derive(Debug, Clone)]
pub struct LocalHsm {
    /// Name of the HSM (its folder under the base directory).
    pub name: String,
    /// The HSM's folder (canonical path).
    pub dir: PathBuf,
    /// This HSM's own copy of `libsofthsm2.so`, loaded as its PKCS#11 module.
    pub module: PathBuf,
    /// Its `softhsm2.conf` (passed as `SOFTHSM2_CONF` at `C_Initialize`).
    pub conf: PathBuf,
    /// The SoftHSM2 token directory named in `conf`.
    pub token_dir: PathBuf,
    /// The token label (`hsm-kms-<name>`) by which the slot is found.
    pub label: String,
    /// The 0600 file holding the user PIN.
    pub pin_file: PathBuf,
}

impl LocalHsm {
    /// The cluster configuration of this HSM (reads the PIN file).
    pub fn node_config(&self) -> Result<NodeConfig, HsmError> {
        let pin = std::fs::read_to_string(&self.pin_file).map_err(|e| HsmError::Setup {
            hsm: self.name.clone(),
            message: format!("cannot read PIN file {}: {e}", self.pin_file.display()),
        })?;
        Ok(NodeConfig {
            name: self.name.clone(),
            module: self.module.clone(),
            token_label: self.label.clone(),
            pin: Zeroizing::new(pin.trim().to_string()),
            env: vec![("SOFTHSM2_CONF".to_string(), self.conf.display().to_string())],
        })
    }
}

fn io(hsm: &str, what: &str, e: std::io::Error) -> HsmError {
    HsmError::Setup {
        hsm: hsm.to_string(),
        message: format!("{what}: {e}"),
    }
}

fn secret_file(path: &Path, hsm: &str) -> Result<Zeroizing<String>, HsmError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(Zeroizing::new(s.trim().to_string()));
    }
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let pin = Zeroizing::new(hex::encode(b));
    crate::fsutil::write_private(path, pin.as_bytes()).map_err(|e| io(hsm, "write PIN file", e))?;
    Ok(pin)
}

/// Create (idempotently) a SoftHSM2 token named `name` under `base/name/`, initialized with
/// SO PIN `so` (an existing token keeps its own).
pub fn provision(base: &Path, name: &str, so: &SoPin) -> Result<LocalHsm, HsmError> {
    let dir = base.join(name);
    let token_dir = dir.join("tokens");
    std::fs::create_dir_all(&token_dir).map_err(|e| io(name, "create token folder", e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| io(name, "resolve folder", e))?;
    let token_dir = dir.join("tokens");
    let conf = dir.join("softhsm2.conf");
    if !conf.exists() {
        let text = SOFTHSM2_CONF
            .replace("@NAME@", name)
            .replace("@TOKEN_DIR@", &token_dir.display().to_string());
        std::fs::write(&conf, text).map_err(|e| io(name, "write softhsm2.conf", e))?;
    }
    let module = dir.join("libsofthsm2.so");
    if !module.exists() {
        let system = std::env::var("SOFTHSM2_MODULE").unwrap_or_else(|_| SYSTEM_MODULE.to_string());
        std::fs::copy(&system, &module).map_err(|e| {
            io(
                name,
                &format!("copy {system} (is the softhsm2 package installed?)"),
                e,
            )
        })?;
    }
    if dir.join("so.pin").exists() {
        return Err(HsmError::Setup {
            hsm: name.to_string(),
            message: format!(
                "{} holds an SO PIN beside the token: this folder was made by an earlier \
                 version, whose keys are exportable with the user PIN; remove it and set up again",
                dir.display()
            ),
        });
    }
    let pin_file = dir.join("user.pin");
    let user_pin = secret_file(&pin_file, name)?;
    let label = format!("hsm-kms-{name}");
    init_token(name, &module, &conf, &label, so, &user_pin)?;
    Ok(LocalHsm {
        name: name.to_string(),
        dir,
        module,
        conf,
        token_dir,
        label,
        pin_file,
    })
}

fn init_token(
    name: &str,
    module: &Path,
    conf: &Path,
    label: &str,
    so: &SoPin,
    user_pin: &str,
) -> Result<(), HsmError> {
    let ck = |op: Operation| move |e: CkError| HsmError::from_ck(name, op, e);
    let ctx = load_module(
        module,
        &[("SOFTHSM2_CONF".into(), conf.display().to_string())],
    )
    .map_err(ck(Operation::LoadModule))?;
    let r = (|| {
        if find_slot(&ctx, label)
            .map_err(ck(Operation::FindToken))?
            .is_some()
        {
            return Ok(());
        }
        let free = ctx
            .get_all_slots()
            .map_err(ck(Operation::FindToken))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|t| !t.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| HsmError::Setup {
                hsm: name.to_string(),
                message: "no free SoftHSM2 slot".into(),
            })?;
        let so = so.auth();
        let init = ck(Operation::InitToken);
        ctx.init_token(free, &so, label).map_err(init)?;
        // SoftHSM2 renumbers the slot after C_InitToken: look it up again by label.
        let slot = find_slot(&ctx, label)
            .map_err(ck(Operation::FindToken))?
            .ok_or_else(|| HsmError::Setup {
                hsm: name.to_string(),
                message: "token vanished after C_InitToken".into(),
            })?;
        let s = ctx
            .open_rw_session(slot)
            .map_err(ck(Operation::OpenSession))?;
        s.login(UserType::So, Some(&so)).map_err(init)?;
        s.init_pin(&AuthPin::new(user_pin.into())).map_err(init)?;
        s.logout().map_err(init)?;
        Ok(())
    })();
    let _ = ctx.finalize();
    r
}

/// Provision local tokens `names` under `base` and enroll them all (the first generates the
/// cluster wrapping key, each other receives it from the first), non-interactively: the
/// transport key fingerprints are logged, not confirmed. Idempotent.
pub fn provision_cluster(
    base: &Path,
    names: &[&str],
    so: &SoPin,
) -> Result<Vec<LocalHsm>, HsmError> {
    provision_cluster_with(base, names, so, &mut crate::progress::Silent)
}

/// [`provision_cluster`], telling `progress` of each token created and each enrolled.
pub fn provision_cluster_with(
    base: &Path,
    names: &[&str],
    so: &SoPin,
    progress: &mut dyn crate::progress::Progress,
) -> Result<Vec<LocalHsm>, HsmError> {
    progress.stage("creating tokens", names.len() as u64);
    let mut hsms = Vec::with_capacity(names.len());
    for n in names {
        hsms.push(provision(base, n, so)?);
        progress.advance(1);
    }
    progress.finish();
    enroll_local_with(&hsms, so, progress)?;
    Ok(hsms)
}

/// Enroll every local token of `hsms` (all initialized with SO PIN `so`) into one cluster:
/// the first enrolled one (or the first of the list, which then generates the cluster
/// wrapping key) sends it to the others.
pub fn enroll_local(hsms: &[LocalHsm], so: &SoPin) -> Result<(), HsmError> {
    enroll_local_with(hsms, so, &mut crate::progress::Silent)
}

/// [`enroll_local`], telling `progress` of each token enrolled.
fn enroll_local_with(
    hsms: &[LocalHsm],
    so: &SoPin,
    progress: &mut dyn crate::progress::Progress,
) -> Result<(), HsmError> {
    let cfgs = hsms
        .iter()
        .map(LocalHsm::node_config)
        .collect::<Result<Vec<_>, _>>()?;
    progress.stage("enrolling tokens", cfgs.len() as u64);
    let mut source = None;
    for c in &cfgs {
        if ceremony::cwk_state(c)? == ceremony::CwkState::Trusted {
            source = Some(c);
            break;
        }
    }
    for c in &cfgs {
        let from = source.map(|s| (s, so));
        let done = ceremony::enroll(c, so, from, &mut |fingerprint| {
            tracing::info!(hsm = %c.name, %fingerprint, "transport key (lab enrollment, not confirmed)");
            true
        })?;
        if done == Enrolled::Generated {
            source = Some(c);
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(())
}

/// Load and initialize `hsm`'s module in this process (its environment set under the
/// process-wide load lock, as every module load here), for tools and tests that inspect a
/// token directly. The caller finalizes it.
pub fn open_module(hsm: &LocalHsm) -> Result<cryptoki::context::Pkcs11, HsmError> {
    let node = hsm.node_config()?;
    load_module(&hsm.module, &node.env)
        .map_err(|e| HsmError::from_ck(&hsm.name, Operation::LoadModule, e))
}

/// Fill a local token with `n` extra AES token keys (benchmarks and tests of the handle
/// cache with a full token). Run it before the cluster opens the token.
pub fn add_filler_keys(hsm: &LocalHsm, n: usize) -> Result<(), HsmError> {
    let node = hsm.node_config()?;
    let ck = |op: Operation| move |e: CkError| HsmError::from_ck(&hsm.name, op, e);
    let ctx = load_module(&hsm.module, &node.env).map_err(ck(Operation::LoadModule))?;
    let r = (|| {
        let slot = find_slot(&ctx, &hsm.label)
            .map_err(ck(Operation::FindToken))?
            .ok_or_else(|| HsmError::Setup {
                hsm: hsm.name.clone(),
                message: "token not found".into(),
            })?;
        let s = ctx
            .open_rw_session(slot)
            .map_err(ck(Operation::OpenSession))?;
        s.login(
            UserType::User,
            Some(&AuthPin::new(node.pin.as_str().into())),
        )
        .map_err(ck(Operation::Login))?;
        for i in 0..n {
            let id = format!("hsm-kms/filler/{i}").into_bytes();
            s.generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &templates::aes_key(&id, "filler", false),
            )
            .map_err(ck(Operation::GenerateKey))?;
        }
        Ok(())
    })();
    let _ = ctx.finalize();
    r
}
