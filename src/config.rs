//! Configuration: one TOML file (`deny_unknown_fields`) with documented defaults, the
//! environment overrides users rely on (`KMS_LISTEN`, `KMS_STATE_DIR`), and PINs read from
//! a file or an environment variable (never logged). Relative paths are relative to the
//! folder of the config file.

use crate::hsm::{ClusterOptions, NodeConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Default listen address (`KMS_LISTEN` overrides).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4599";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is not valid TOML, has unknown fields, breaks a rule, or names a
    /// PIN that cannot be read.
    #[error("{path}: {message}")]
    Invalid {
        /// Where the problem is: the config's origin, or `hsm '<name>'` for a PIN.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The service configuration, as written in the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to serve on. Default `127.0.0.1:4599`; `KMS_LISTEN` overrides.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Folder for the metadata database and `credentials.env`. Default: the config file's
    /// folder; `KMS_STATE_DIR` overrides.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// AWS region the service answers as. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Account id of the first credential. Default `111122223333`.
    #[serde(default = "default_account")]
    pub account_id: String,
    /// Worker threads (sessions) per HSM. Default 2.
    #[serde(default = "default_workers")]
    pub workers_per_hsm: usize,
    /// Deadline of one HSM call, in milliseconds. Default 2000.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Deadline of key generation and replication, in milliseconds. Default 60000.
    #[serde(default = "default_keygen_timeout")]
    pub keygen_timeout_ms: u64,
    /// Key generation threads (sessions) per HSM, apart from the crypto workers. Default 2.
    #[serde(default = "default_keygen_workers")]
    pub keygen_workers_per_hsm: usize,
    /// Key generations that may wait per HSM before new ones are refused. Default 4.
    #[serde(default = "default_keygen_queue")]
    pub keygen_queue_depth: usize,
    /// Paranoid mode: a second HSM confirms every Encrypt, GenerateDataKey, GenerateMac and
    /// Sign answer before it is sent. Default false.
    #[serde(default)]
    pub paranoid_checks: bool,
    /// Accept `RSA_AES_KEY_WRAP_*` imports on tokens that cannot confine the ephemeral AES
    /// key (no nested unwrap templates, e.g. SoftHSM 2.6.1): a holder of the user PIN who
    /// captured the wrapped material could unwrap it readable while its wrapping key lives.
    /// Default false: those imports are refused there (`RSAES_OAEP_*` are not affected).
    #[serde(default)]
    pub allow_unconfined_rsa_aes_import: bool,
    /// Health probe period per HSM, in milliseconds. Default 1000.
    #[serde(default = "default_probe")]
    pub probe_interval_ms: u64,
    /// Where each HSM's PKCS#11 module runs: `"process"` (default), in a supervised host
    /// process of its own (`hsm-kms hsm-host`), restarted when it crashes or hangs; or
    /// `"in-process"`, inside the service.
    #[serde(default)]
    pub hsm_isolation: Isolation,
    /// The program started as each HSM's host process. Default: the running `hsm-kms`.
    #[serde(default)]
    pub hsm_host_program: Option<PathBuf>,
    /// Largest accepted request body, in bytes. Default 65536.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Period of background work (HSM re-sync, due deletions, rotations), in ms. Default 10000.
    #[serde(default = "default_maintenance")]
    pub maintenance_interval_ms: u64,
    /// On-demand rotations allowed per key (RotateKeyOnDemand). Default 25, as AWS.
    #[serde(default = "default_on_demand_rotations")]
    pub on_demand_rotation_limit: u32,
    /// Folder of the audit trail (JSON-lines files, hash-chained). Default:
    /// `<state dir>/audit`.
    #[serde(default)]
    pub audit_dir: Option<PathBuf>,
    /// Answer calls even when their audit record cannot be made durable (with an `error!`
    /// log line). Default false: such calls are refused with `KMSInternalException`.
    #[serde(default)]
    pub audit_fail_open: bool,
    /// Size at which a new audit trail file is started, in bytes. Default 64 MiB.
    #[serde(default = "default_audit_file_bytes")]
    pub audit_max_file_bytes: u64,
    /// Keep the audit trail (default true). `false` records nothing (a loud warning at
    /// start): for benchmarks and throw-away labs only (`scripts/bench.sh --audit`).
    #[serde(default = "default_audit_enabled")]
    pub audit_enabled: bool,
    /// A signed digest line after this many audit records. Default 1000.
    #[serde(default = "default_audit_digest_records")]
    pub audit_digest_every_records: u64,
    /// A signed digest line at least this often (seconds) while records come. Default 60.
    #[serde(default = "default_audit_digest_secs")]
    pub audit_digest_every_secs: u64,
    /// CloudTrail `LookupEvents` calls allowed a second per account (a burst of as many,
    /// then that rate); more are refused with `ThrottlingException`. Default 2, as AWS.
    #[serde(default = "default_lookup_events_per_second")]
    pub lookup_events_per_second: u32,
    /// Serve `GET /metrics` to anyone (a Prometheus scraper on a trusted network). Default
    /// false: only to SigV4-signed requests, like the `/health` detail.
    #[serde(default)]
    pub metrics_public: bool,
    /// The HSMs (at least two).
    #[serde(default)]
    pub hsm: Vec<HsmEntry>,
}

/// Where each HSM's PKCS#11 module runs (`hsm_isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A supervised host process per HSM.
    #[default]
    Process,
    /// Inside the service process.
    InProcess,
}

/// One `[[hsm]]` table.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmEntry {
    /// Name used in logs and health output.
    pub name: String,
    /// PKCS#11 module path (its own copy per HSM for SoftHSM2).
    pub module: PathBuf,
    /// Token label (not a slot number).
    pub token_label: String,
    /// File holding the user PIN.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Environment for the module's `C_Initialize`, e.g. `SOFTHSM2_CONF`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for HsmEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmEntry")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin_file", &self.pin_file)
            .field("pin_env", &self.pin_env)
            .finish_non_exhaustive()
    }
}

fn default_lookup_events_per_second() -> u32 {
    crate::kms::lookup::DEFAULT_PER_SECOND
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_account() -> String {
    "111122223333".into()
}
fn default_workers() -> usize {
    2
}
fn default_call_timeout() -> u64 {
    2000
}
fn default_keygen_workers() -> usize {
    2
}

fn default_keygen_queue() -> usize {
    4
}

fn default_keygen_timeout() -> u64 {
    60_000
}
fn default_probe() -> u64 {
    1000
}
fn default_maintenance() -> u64 {
    10_000
}
fn default_on_demand_rotations() -> u32 {
    crate::kms::ON_DEMAND_ROTATION_LIMIT
}
fn default_audit_enabled() -> bool {
    true
}

fn default_audit_digest_records() -> u64 {
    crate::audit::DEFAULT_DIGEST_RECORDS
}

fn default_audit_digest_secs() -> u64 {
    crate::audit::DEFAULT_DIGEST_EVERY.as_secs()
}

fn default_audit_file_bytes() -> u64 {
    crate::audit::DEFAULT_MAX_FILE_BYTES
}
fn default_body() -> usize {
    64 * 1024
}

/// A loaded configuration with paths resolved and environment overrides applied.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration as written, with `KMS_LISTEN` applied to `listen`.
    pub config: Config,
    /// The state folder (tokens, metadata database, `credentials.env`): `KMS_STATE_DIR`,
    /// else `state_dir` from the file, else the config file's folder.
    pub state_dir: PathBuf,
    base: PathBuf,
}

impl Loaded {
    /// Read and validate `path`, then apply `KMS_LISTEN` and `KMS_STATE_DIR`.
    pub fn from_file(path: &Path) -> Result<Loaded, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str(&text, &p, base)
    }

    /// Parse TOML text (`origin` names it in errors); relative paths resolve against `base`.
    pub fn from_str(text: &str, origin: &str, base: PathBuf) -> Result<Loaded, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Ok(l) = std::env::var("KMS_LISTEN") {
            config.listen = l;
        }
        let state_dir = match std::env::var_os("KMS_STATE_DIR") {
            Some(d) => PathBuf::from(d),
            None => match &config.state_dir {
                Some(d) => base.join(d),
                None => base.clone(),
            },
        };
        if config.account_id.len() != 12 || !config.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("account_id must be 12 digits".into()));
        }
        if config.workers_per_hsm == 0
            || config.call_timeout_ms == 0
            || config.keygen_workers_per_hsm == 0
        {
            return Err(invalid(
                "workers_per_hsm, keygen_workers_per_hsm and call_timeout_ms must be positive"
                    .into(),
            ));
        }
        for h in &config.hsm {
            if h.pin_file.is_some() == h.pin_env.is_some() {
                return Err(invalid(format!(
                    "hsm '{}': set exactly one of pin_file or pin_env",
                    h.name
                )));
            }
        }
        Ok(Loaded {
            config,
            state_dir,
            base,
        })
    }

    /// The HSM node configurations, with PINs read from their files or variables.
    pub fn nodes(&self) -> Result<Vec<NodeConfig>, ConfigError> {
        self.config.hsm.iter().map(|h| self.node(h)).collect()
    }

    /// Each configured HSM's name and its node configuration, or why it cannot be made (a
    /// PIN that cannot be read): the operator commands report one HSM's failure and go on
    /// with the others.
    pub fn each_node(&self) -> Vec<(String, Result<NodeConfig, ConfigError>)> {
        self.config
            .hsm
            .iter()
            .map(|h| (h.name.clone(), self.node(h)))
            .collect()
    }

    /// The node configuration of `h`, its PIN read from its file or variable.
    fn node(&self, h: &HsmEntry) -> Result<NodeConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: format!("hsm '{}'", h.name),
            message,
        };
        let pin = match (&h.pin_file, &h.pin_env) {
            (Some(f), _) => {
                let f = self.base.join(f);
                std::fs::read_to_string(&f)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| invalid(format!("cannot read PIN file {}: {e}", f.display())))?
            }
            (None, Some(v)) => {
                std::env::var(v).map_err(|_| invalid(format!("PIN variable {v} is not set")))?
            }
            (None, None) => return Err(invalid("no PIN source".into())),
        };
        Ok(NodeConfig {
            name: h.name.clone(),
            module: self.base.join(&h.module),
            token_label: h.token_label.clone(),
            pin: Zeroizing::new(pin),
            env: h.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// Cluster tunables. With process isolation, the host program is the configured one,
    /// else the running executable.
    pub fn cluster_options(&self) -> Result<ClusterOptions, ConfigError> {
        let c = &self.config;
        let host_program = match c.hsm_isolation {
            Isolation::InProcess => None,
            Isolation::Process => Some(match &c.hsm_host_program {
                Some(p) => self.base.join(p),
                None => std::env::current_exe().map_err(|e| ConfigError::Invalid {
                    path: "hsm_host_program".into(),
                    message: format!("cannot find the running executable: {e}"),
                })?,
            }),
        };
        Ok(ClusterOptions {
            workers_per_hsm: c.workers_per_hsm,
            call_timeout: Duration::from_millis(c.call_timeout_ms),
            keygen_timeout: Duration::from_millis(c.keygen_timeout_ms),
            keygen_workers_per_hsm: c.keygen_workers_per_hsm,
            keygen_queue_depth: c.keygen_queue_depth,
            paranoid: c.paranoid_checks,
            allow_unconfined_rsa_aes_import: c.allow_unconfined_rsa_aes_import,
            probe_interval: Duration::from_millis(c.probe_interval_ms),
            host_program,
            ..ClusterOptions::default()
        })
    }

    /// The audit trail's settings: `audit_dir` (resolved against the config's folder),
    /// else `<state dir>/audit`.
    pub fn audit(&self) -> crate::app::AuditOptions {
        let c = &self.config;
        crate::app::AuditOptions {
            dir: match &c.audit_dir {
                Some(d) => self.base.join(d),
                None => self.state_dir.join("audit"),
            },
            fail_open: c.audit_fail_open,
            max_file_bytes: c.audit_max_file_bytes,
            enabled: c.audit_enabled,
            digest_every_records: c.audit_digest_every_records.max(1),
            digest_every: std::time::Duration::from_secs(c.audit_digest_every_secs.max(1)),
            lookup_events_per_second: c.lookup_events_per_second,
        }
    }

    /// Whether each HSM runs in a host process of its own.
    pub fn hosted(&self) -> bool {
        self.config.hsm_isolation == Isolation::Process
    }
}

/// The commented head of the config `hsm-kms setup-local` writes (every setting, default).
const LOCAL_CONFIG_HEAD: &str = include_str!("../softhsm/config.toml.in");
/// One `[[hsm]]` entry of it (`@NAME@`, `@MODULE@`, `@LABEL@`, `@PIN_FILE@`, `@CONF@`).
const LOCAL_HSM_ENTRY: &str = include_str!("../softhsm/hsm.toml.in");

/// The commented config written by `hsm-kms setup-local` for local SoftHSM2 tokens (from
/// the templates in `softhsm/`).
pub fn local_config_text(hsms: &[crate::hsm::softhsm::LocalHsm], state_dir: &Path) -> String {
    let mut s = String::from(LOCAL_CONFIG_HEAD);
    let rel = |p: &Path| {
        p.strip_prefix(state_dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    for h in hsms {
        s.push_str(
            &LOCAL_HSM_ENTRY
                .replace("@NAME@", &h.name)
                .replace("@MODULE@", &rel(&h.module))
                .replace("@LABEL@", &h.label)
                .replace("@PIN_FILE@", &rel(&h.pin_file))
                .replace("@CONF@", &h.conf.display().to_string()),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configurations_and_the_local_template_are_valid() {
        for (name, text) in [
            (
                "p11-kit-remote.toml",
                include_str!("../softhsm/examples/p11-kit-remote.toml"),
            ),
            (
                "network-hsms.toml",
                include_str!("../softhsm/examples/network-hsms.toml"),
            ),
        ] {
            let l = Loaded::from_str(text, name, "/etc/hsm-kms".into())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(l.config.hsm.len() >= 2, "{name}: a cluster needs two HSMs");
        }
        // The commented head names every setting with its default: uncommented, it parses.
        let head: String = LOCAL_CONFIG_HEAD
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{}\n", l.split("  ").next().unwrap_or(l).trim_end()))
            .collect();
        assert!(head.lines().count() >= 20, "{head}");
        Loaded::from_str(&head, "head", "/tmp".into()).unwrap_or_else(|e| panic!("{e}\n{head}"));
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let e = Loaded::from_str("listen = \"x\"\nbogus = 1\n", "t.toml", ".".into()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let l = Loaded::from_str("", "t.toml", "/tmp".into()).unwrap();
        assert_eq!(l.config.region, "us-east-1");
        assert_eq!(l.config.account_id, "111122223333");
        assert_eq!(l.config.workers_per_hsm, 2);
    }

    #[test]
    fn pin_source_must_be_exactly_one_and_debug_hides_nothing_secret() {
        let t = "[[hsm]]\nname = \"a\"\nmodule = \"m.so\"\ntoken_label = \"t\"\n";
        assert!(Loaded::from_str(t, "t", ".".into()).is_err());
        let t2 = format!("{t}pin_env = \"MY_TEST_PIN_VAR_X\"\n");
        let l = Loaded::from_str(&t2, "t", "/base".into()).unwrap();
        std::env::set_var("MY_TEST_PIN_VAR_X", "s3cr3t-pin");
        let nodes = l.nodes().unwrap();
        assert_eq!(nodes[0].module, PathBuf::from("/base/m.so"));
        assert!(!format!("{:?}", nodes[0]).contains("s3cr3t-pin"));
        assert_eq!(nodes[0].pin.as_str(), "s3cr3t-pin");
    }
}
