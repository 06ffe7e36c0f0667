//! The `hsm-kms` binary: `setup-local` (two local SoftHSM2 tokens and a config), `serve`
//! (the KMS API), `bench-hsm` (HSM layer vs raw PKCS#11). `anyhow` lives only here.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hsm_kms::app::{self, ServiceConfig};
use hsm_kms::clock::SystemClock;
use hsm_kms::config::{self, Loaded};
use hsm_kms::hsm::softhsm;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "hsm-kms",
    version,
    about = "AWS-KMS-compatible service whose keys live only in HSMs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create two local SoftHSM2 tokens and a config under the state folder (idempotent).
    SetupLocal {
        #[arg(long, env = "KMS_STATE_DIR", default_value = "var")]
        state_dir: PathBuf,
    },
    /// Serve the KMS API in the foreground.
    Serve {
        /// Config file (default: <state dir>/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address (overrides the config and KMS_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Benchmark: raw PKCS#11 AES-GCM against the same operation through the HSM layer,
    /// on fresh local SoftHSM2 tokens, in one run.
    BenchHsm {
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 0)]
        filler_keys: usize,
        /// Folder for the temporary tokens.
        #[arg(long, default_value = "/tmp")]
        dir: PathBuf,
    },
}

fn main() {
    // A static per-target filter (`KMS_LOG`, e.g. `warn,hsm_kms=debug`): unlike `EnvFilter`
    // it keeps no per-span state, so the request span costs no lock on every poll.
    let configured = std::env::var("KMS_LOG").ok();
    let parsed = configured
        .as_deref()
        .map(str::parse::<tracing_subscriber::filter::Targets>);
    if let Some(Err(e)) = &parsed {
        eprintln!(
            "hsm-kms: KMS_LOG is not a list of target=level directives ({e}); using the default"
        );
    }
    let filter = parsed.and_then(Result::ok).unwrap_or_else(|| {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::WARN)
            .with_target("hsm_kms", tracing::Level::INFO)
            .with_target("cryptoki", tracing::level_filters::LevelFilter::OFF)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("hsm-kms: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::SetupLocal { state_dir } => setup_local(&state_dir),
        Cmd::BenchHsm {
            size,
            threads,
            secs,
            reps,
            filler_keys,
            dir,
        } => {
            std::fs::create_dir_all(&dir)?;
            let report =
                hsm_kms::hsm::bench::run_gcm_bench(&dir, size, threads, secs, reps, filler_keys)?;
            println!("{report}");
            Ok(())
        }
        Cmd::Serve { config, listen } => {
            let path = config.unwrap_or_else(|| {
                std::env::var_os("KMS_STATE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("var"))
                    .join("config.toml")
            });
            if !path.exists() {
                bail!(
                    "{} does not exist; run `hsm-kms setup-local` or ./scripts/start.sh first",
                    path.display()
                );
            }
            let loaded = Loaded::from_file(&path)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(loaded, listen))
        }
    }
}

fn setup_local(state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    let hsms = ["hsm-a", "hsm-b"]
        .iter()
        .map(|n| softhsm::provision(&state_dir.join("hsm"), n))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = state_dir.join("config.toml");
    if !cfg.exists() {
        std::fs::write(&cfg, config::local_config_text(&hsms, &state_dir))?;
        println!("wrote {}", cfg.display());
    }
    for h in &hsms {
        println!(
            "HSM {}: token '{}' in {}",
            h.name,
            h.label,
            h.token_dir.display()
        );
    }
    Ok(())
}

async fn serve(loaded: Loaded, listen: Option<String>) -> Result<()> {
    let c = &loaded.config;
    let running = app::start(ServiceConfig {
        nodes: loaded.nodes()?,
        cluster: loaded.cluster_options(),
        database: loaded.state_dir.join("metadata.sqlite"),
        listen: listen.unwrap_or_else(|| c.listen.clone()),
        region: c.region.clone(),
        account_id: c.account_id.clone(),
        max_body_bytes: c.max_body_bytes,
        clock: Arc::new(SystemClock),
        maintenance_interval: std::time::Duration::from_millis(c.maintenance_interval_ms),
    })
    .await?;
    running
        .kms
        .set_on_demand_rotation_limit(c.on_demand_rotation_limit);
    let endpoint = format!("http://{}", running.addr);
    let env_file = loaded.state_dir.join("credentials.env");
    if let Some(cred) = &running.new_credential {
        let text = format!(
            "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_DEFAULT_REGION={r}\nexport AWS_REGION={r}\nexport KMS_ENDPOINT={endpoint}\n",
            cred.access_key_id,
            cred.secret_access_key.as_str(),
            r = c.region
        );
        write_private(&env_file, &text)?;
        // The secret goes to a person's terminal only; logs and pipes get the file's path.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "first start: created a credential; `source {}` or:",
                env_file.display()
            );
            print!("{text}");
        } else {
            println!(
                "first start: created a credential in {} (mode 0600); `source` it",
                env_file.display()
            );
        }
    } else if env_file.exists() {
        // Keep the endpoint line current (the port may differ between runs).
        let text = std::fs::read_to_string(&env_file)?;
        let updated: String = text
            .lines()
            .map(|l| {
                if l.starts_with("export KMS_ENDPOINT=") {
                    format!("export KMS_ENDPOINT={endpoint}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        write_private(&env_file, &updated)?;
    }
    println!("listening on {}", running.addr);
    std::io::stdout().flush()?;
    let mut running = running;
    let shutdown = shutdown_signal()?;
    tokio::select! {
        _ = shutdown => {}
        _ = running.wait() => {}
    }
    eprintln!("hsm-kms: shutting down");
    running.begin_shutdown();
    running.stop().await;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    hsm_kms::fsutil::write_private(path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// Installs the SIGTERM handler; the future resolves on Ctrl-C or SIGTERM.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    })
}
