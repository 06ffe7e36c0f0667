//! The operator subcommands of the binary: `hsm list|probe`, `keys list|show`, `credentials
//! list|revoke` and the JSON form of `reconcile`. Each reads the config the service uses,
//! opens the HSMs (`hsm::inspect`) and the metadata store (`ops`) as a second process while
//! the service runs, and prints a table for people or, with `--json`, one JSON document on
//! stdout for scripts (no progress output then). Progress bars: [`progress::Bars`].

pub(crate) mod progress;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hsm_kms::config::Loaded;
use hsm_kms::hsm::inspect;
use hsm_kms::hsm::NodeConfig;
use hsm_kms::ops::{self, credentials, keys};
use hsm_kms::progress::Progress;
use hsm_kms::store::SqliteStore;
use progress::Bars;
use std::path::PathBuf;

/// Where a command finds the config, and how it answers.
#[derive(clap::Args)]
pub(crate) struct Common {
    /// Config file (default: <state dir>/config.toml, the state dir from $KMS_STATE_DIR,
    /// default `var`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of a table (and no progress output).
    #[arg(long)]
    json: bool,
}

/// `hsm-kms hsm list`.
#[derive(clap::Args)]
pub(crate) struct HsmListArgs {
    #[command(flatten)]
    common: Common,
}

/// `hsm-kms hsm probe`.
#[derive(clap::Args)]
pub(crate) struct HsmProbeArgs {
    /// Probe only this HSM (default: every configured HSM).
    name: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `hsm-kms keys …`.
#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// The KMS keys in the metadata store (every account): key id, account, state, spec,
    /// usage, origin, creation date. Reads only the metadata, not the HSMs.
    List {
        /// Only the keys of this account.
        #[arg(long)]
        account: Option<String>,
        /// Only the keys in this KeyState (Enabled, Disabled, PendingDeletion,
        /// PendingImport, …).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// One key's metadata and its backing key versions, with, per HSM, whether the copy is
    /// present in the token, missing or quarantined (every HSM's objects are scanned).
    Show {
        /// The key id, key ARN, alias ARN, or alias name (`alias/…`, of `--account`).
        key: String,
        /// The account whose alias a bare alias name is (default: the config's
        /// `account_id`).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// `hsm-kms credentials …`.
#[derive(Subcommand)]
pub(crate) enum CredentialsCmd {
    /// The API credentials (access keys) of every account: access key id, account,
    /// principal ARN, status, creation date. Never the secret.
    List {
        /// Only the credentials of this account.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke an access key: it becomes Inactive (as IAM UpdateAccessKey makes it) and a
    /// running service refuses it within a second (UnrecognizedClientException).
    Revoke {
        /// The access key id (AKIA… or ASIA…).
        access_key_id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Each configured HSM by name: its node configuration, or why it cannot be made (its PIN
/// cannot be read); the modules' environment prepared (before any thread starts).
fn each_node(loaded: &Loaded) -> Vec<(String, Result<NodeConfig, String>)> {
    let all = loaded.each_node();
    let good: Vec<NodeConfig> = all
        .iter()
        .filter_map(|(_, n)| n.as_ref().ok().cloned())
        .collect();
    hsm_kms::hsm::prepare_environment(&good);
    all.into_iter()
        .map(|(name, n)| (name, n.map_err(|e| e.to_string())))
        .collect()
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `hsm-kms hsm list`.
pub(crate) fn hsm_list(a: HsmListArgs) -> Result<()> {
    let loaded = crate::load_config(a.common.config)?;
    let nodes = each_node(&loaded);
    let mut bars = Bars::new(a.common.json);
    bars.stage("reading HSMs", nodes.len() as u64);
    let lines: Vec<inspect::Listing> = nodes
        .iter()
        .map(|(name, n)| {
            let l = match n {
                Ok(n) => inspect::list(n),
                Err(e) => {
                    let entry = loaded.config.hsm.iter().find(|h| &h.name == name);
                    inspect::Listing {
                        name: name.clone(),
                        module: entry.map_or(String::new(), |h| h.module.display().to_string()),
                        token_label: entry.map_or(String::new(), |h| h.token_label.clone()),
                        reachable: false,
                        token: None,
                        enrollment: None,
                        error: Some(inspect::Failure::other("config", e.clone())),
                    }
                }
            };
            bars.advance(1);
            l
        })
        .collect();
    bars.finish();
    if a.common.json {
        return print_json(&serde_json::json!({ "hsms": lines }));
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let t = l.token.as_ref();
            let text = |f: fn(&inspect::TokenInfo) -> String| t.map_or("-".to_string(), f);
            vec![
                l.name.clone(),
                if l.reachable { "yes" } else { "NO" }.to_string(),
                match l.enrollment {
                    Some(inspect::Enrollment::Enrolled) => "yes",
                    Some(inspect::Enrollment::NotEnrolled) => "no",
                    Some(inspect::Enrollment::Legacy) => "legacy",
                    None => "?",
                }
                .to_string(),
                l.token_label.clone(),
                text(|t| t.slot.to_string()),
                text(|t| format!("{} {}", t.manufacturer, t.model)),
                text(|t| t.serial.clone()),
                text(|t| t.firmware.clone()),
                text(
                    |t| match (t.free_sessions, t.max_sessions, t.unlimited_sessions) {
                        (Some(f), Some(m), _) => format!("{f}/{m}"),
                        (_, _, true) => "unlimited".to_string(),
                        (None, Some(m), false) => format!("?/{m}"),
                        (_, None, false) => "unknown".to_string(),
                    },
                ),
                l.module.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        ops::table(
            &[
                "HSM",
                "REACHABLE",
                "ENROLLED",
                "TOKEN LABEL",
                "SLOT",
                "MODEL",
                "SERIAL",
                "FIRMWARE",
                "FREE/MAX SESSIONS",
                "MODULE",
            ],
            &rows,
        )
    );
    for l in &lines {
        if let Some(e) = &l.error {
            println!("{}: {}: {}", l.name, e.step, e.message);
        }
    }
    Ok(())
}

/// `hsm-kms hsm probe`: true when every probed HSM answered.
pub(crate) fn hsm_probe(a: HsmProbeArgs) -> Result<bool> {
    let loaded = crate::load_config(a.common.config)?;
    let mut nodes = each_node(&loaded);
    if let Some(name) = &a.name {
        nodes.retain(|(n, _)| n == name);
        if nodes.is_empty() {
            bail!("no HSM named '{name}' in the config");
        }
    }
    let mut bars = Bars::new(a.common.json);
    bars.stage("probing HSMs", nodes.len() as u64);
    let reports: Vec<inspect::ProbeReport> = nodes
        .iter()
        .map(|(name, n)| {
            let r = match n {
                Ok(n) => inspect::probe(n),
                Err(e) => inspect::ProbeReport {
                    name: name.clone(),
                    ok: false,
                    steps: Vec::new(),
                    total_ms: 0.0,
                    enrollment: None,
                    error: Some(inspect::Failure::other("config", e.clone())),
                },
            };
            bars.advance(1);
            r
        })
        .collect();
    bars.finish();
    let ok = reports.iter().all(|r| r.ok);
    if a.common.json {
        print_json(&serde_json::json!({ "ok": ok, "hsms": reports }))?;
        return Ok(ok);
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.ok { "ok" } else { "FAILED" }.to_string(),
                format!("{:.1}", r.total_ms),
                r.steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {:.2}{}",
                            s.step,
                            s.ms,
                            if s.ok { "" } else { " FAILED" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        ops::table(&["HSM", "RESULT", "TOTAL MS", "STEPS (MS)"], &rows)
    );
    for r in &reports {
        if let Some(e) = &r.error {
            let code = match (&e.ckr, e.rv) {
                (Some(name), Some(rv)) => format!(" {name} (0x{rv:X})"),
                _ => String::new(),
            };
            println!("{}: failed at {}:{code} {}", r.name, e.step, e.message);
        }
    }
    Ok(ok)
}

/// The metadata store the service uses, opened as a second connection; refused if the
/// service never created it.
fn store(loaded: &Loaded) -> Result<SqliteStore> {
    let path = loaded.state_dir.join("metadata.sqlite");
    if !path.exists() {
        bail!(
            "{} does not exist: the service has not run with this config yet",
            path.display()
        );
    }
    SqliteStore::open(&path).with_context(|| format!("open {}", path.display()))
}

/// `hsm-kms keys …`.
pub(crate) fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::List {
            account,
            state,
            common,
        } => {
            let loaded = crate::load_config(common.config)?;
            let region = keys::region(&loaded.config.region)?;
            let lines = keys::list(
                &store(&loaded)?,
                &region,
                account.as_deref(),
                state.as_deref(),
            )?;
            if common.json {
                return print_json(&serde_json::json!({ "keys": lines }));
            }
            print!("{}", keys::list_table(&lines));
            Ok(())
        }
        KeysCmd::Show {
            key,
            account,
            common,
        } => {
            let loaded = crate::load_config(common.config)?;
            let region = keys::region(&loaded.config.region)?;
            let account = account.unwrap_or_else(|| loaded.config.account_id.clone());
            let doc = keys::find(&store(&loaded)?, &key, &account)?;
            let mut bars = Bars::new(common.json);
            let scans: Vec<keys::HsmObjects> = each_node(&loaded)
                .into_iter()
                .map(|(name, n)| keys::HsmObjects {
                    name,
                    ids: n.and_then(|n| {
                        inspect::scan(&n, &mut bars)
                            .map(|s| {
                                s.ids
                                    .into_iter()
                                    .map(|id| String::from_utf8_lossy(&id).into_owned())
                                    .collect()
                            })
                            .map_err(|f| format!("{}: {}", f.step, f.message))
                    }),
                })
                .collect();
            drop(bars);
            let detail = keys::detail(&doc, &region, &scans);
            if common.json {
                return print_json(&detail);
            }
            print!("{}", keys::detail_text(&detail));
            Ok(())
        }
    }
}

/// `hsm-kms credentials …`.
pub(crate) fn credentials(cmd: CredentialsCmd) -> Result<()> {
    match cmd {
        CredentialsCmd::List { account, common } => {
            let loaded = crate::load_config(common.config)?;
            let now = time::OffsetDateTime::now_utc();
            let lines = credentials::list(&store(&loaded)?, account.as_deref(), now)?;
            if common.json {
                return print_json(&serde_json::json!({ "credentials": lines }));
            }
            print!("{}", credentials::list_table(&lines));
            Ok(())
        }
        CredentialsCmd::Revoke {
            access_key_id,
            common,
        } => {
            let loaded = crate::load_config(common.config)?;
            let r = credentials::revoke(&store(&loaded)?, &access_key_id)?;
            if common.json {
                return print_json(&r);
            }
            if r.was_active {
                println!(
                    "{} ({}) revoked: Inactive; the running service refuses it within a second",
                    r.access_key_id, r.principal_arn
                );
            } else {
                println!("{} was Inactive already", r.access_key_id);
            }
            Ok(())
        }
    }
}
