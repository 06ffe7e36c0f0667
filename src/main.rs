//! The `hsm-kms` binary: `setup-local` (two local SoftHSM2 tokens, enrolled, and a config),
//! `serve` (the KMS API), `hsm enroll` (the SO ceremony that brings a token into the
//! cluster), `audit verify` (the audit trail's hash chain), `bench-hsm` (HSM layer vs raw
//! PKCS#11), and the client side: `bench` (the HTTP load generator) and `envelope
//! encrypt|decrypt` (files under a data key), and the operator commands of `cli` (`hsm
//! list|probe`, `keys list|show`, `credentials list|revoke`). `anyhow` lives only here.

mod cli;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hsm_kms::app::{self, ServiceConfig};
use hsm_kms::clock::SystemClock;
use hsm_kms::config::{self, Loaded};
use hsm_kms::hsm::ceremony::{self, Enrolled, SoPin};
use hsm_kms::hsm::softhsm;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The allocator: glibc's malloc and free were a fifth of the request path's CPU under
/// load (many threads, many small allocations); mimalloc's thread-local heaps are not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
enum HsmCmd {
    /// Run, for real, every operation the service needs for every key spec on a PKCS#11
    /// token (session objects wherever possible; the few token objects are always
    /// destroyed) and print a matrix: per check the token's return value or OK, the time,
    /// and what the service will do (native, fallback, refused key specs). Exit status: 0
    /// the token can serve as a cluster member, 1 it cannot (the reasons are printed), 2 it
    /// could not be checked (module, slot, token or PIN), 130 interrupted.
    Check(Box<CheckArgs>),
    /// Bring the configured HSM NAME into the cluster with its SO's approval: the cluster
    /// wrapping key travels to it under a transport key generated inside it (its
    /// fingerprint is shown for confirmation), then every key is copied to it. The first
    /// HSM enrolled generates the cluster wrapping key. Restart the service afterwards.
    Enroll {
        /// The HSM's name in the config.
        name: String,
        /// Config file (default: <state dir>/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// File with NAME's SO PIN (read for this command only); default: asked on the terminal.
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
        /// File with the SO PIN of the HSM that sends the cluster wrapping key (default: the
        /// same as --so-pin-file, else asked on the terminal).
        #[arg(long)]
        source_so_pin_file: Option<PathBuf>,
        /// Do not ask for confirmation of the transport key fingerprint (labs and tests).
        #[arg(long)]
        yes: bool,
    },
    /// The configured HSMs: module, token label and slot, token information (model, serial,
    /// firmware, free/max sessions), whether each is enrolled and reachable (each module is
    /// loaded and logged into by this process; the service may be running).
    List(cli::HsmListArgs),
    /// Log in to each configured HSM (or NAME) and run a small real round trip: random
    /// bytes, an AES-GCM encrypt/decrypt with a session key, the cluster wrapping key's
    /// presence. Reports each step's latency and the exact CKR code of a failure; exit
    /// status 1 when any HSM failed.
    Probe(cli::HsmProbeArgs),
}

/// `hsm-kms hsm check`: which token(s), and how.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["module", "config"])))]
struct CheckArgs {
    /// The PKCS#11 module of the token to check.
    #[arg(long, conflicts_with = "config")]
    module: Option<PathBuf>,
    /// The token's slot number (slots may renumber: prefer --token-label).
    #[arg(long, conflicts_with = "token_label")]
    slot: Option<u64>,
    /// The token's label [default: the only initialized token].
    #[arg(long)]
    token_label: Option<String>,
    /// File with the user PIN.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// File with the SO PIN: runs the rows that need a trusted wrapping key, which only the
    /// SO can make (without it they are skipped, unless the token is enrolled).
    #[arg(long)]
    so_pin_file: Option<PathBuf>,
    /// KEY=VALUE set before the module's C_Initialize (e.g. SOFTHSM2_CONF=...); repeatable.
    #[arg(long)]
    env: Vec<String>,
    /// Check every HSM of this config (the service's) instead of --module.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also check the token of this module and print both side by side, differences marked.
    #[arg(long, conflicts_with = "config")]
    against: Option<PathBuf>,
    /// The --against token's slot [default: --slot].
    #[arg(long)]
    against_slot: Option<u64>,
    /// The --against token's label [default: --token-label].
    #[arg(long)]
    against_token_label: Option<String>,
    /// The --against token's user PIN file [default: --pin-file].
    #[arg(long)]
    against_pin_file: Option<PathBuf>,
    /// The --against token's SO PIN file [default: --so-pin-file].
    #[arg(long)]
    against_so_pin_file: Option<PathBuf>,
    /// KEY=VALUE for the --against module's C_Initialize; repeatable [default: --env].
    #[arg(long)]
    against_env: Vec<String>,
    /// Print the report as JSON (fields in README.md, "Checking a PKCS#11 token").
    #[arg(long)]
    json: bool,
    /// Threads (one session each) of the concurrent sessions row.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Session objects present while C_FindObjects is timed.
    #[arg(long, default_value_t = 200)]
    find_objects: usize,
    /// The most sessions the session limit row opens.
    #[arg(long, default_value_t = 256)]
    session_limit: usize,
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account and print its root user's credential as `export` lines. Works
    /// while the service runs: it accepts the credential within a second.
    Create {
        /// The 12-digit account id.
        account_id: String,
        /// Config file (default: <state dir>/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the audit trail's hash chain across all its files and its signed digests;
    /// name the first record missing, altered or out of order (by file and line), or the
    /// first digest that does not match or was not made by the HSMs. Records after the last
    /// digest are reported as not yet covered. Exit status 0 when intact, 1 otherwise.
    Verify {
        /// Config file (default: <state dir>/config.toml); its `audit_dir` is checked, and
        /// its HSMs check the digests' signatures.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The trail folder to check (instead of the config's). Without `--config`, the
        /// HSMs are not opened: the chain and the digests' ranges are checked, not their
        /// signatures.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Start at the first record of this date or time (`2024-05-01`,
        /// `2024-05-01T12:00:00Z`); earlier files may have been archived away.
        #[arg(long)]
        from: Option<String>,
    },
}

/// Where a client command sends its requests and what it signs them with.
#[derive(clap::Args)]
struct ClientArgs {
    /// The service's URL, http:// only [default: $AWS_ENDPOINT_URL_KMS, $AWS_ENDPOINT_URL,
    /// then $KMS_ENDPOINT].
    #[arg(long)]
    endpoint_url: Option<String>,
    /// The region requests are signed for [default: $AWS_REGION, $AWS_DEFAULT_REGION, then
    /// us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// A file of `export NAME=value` lines read before the environment, e.g.
    /// var/credentials.env (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    /// AWS_REGION, KMS_ENDPOINT...). Without it: the environment, as the aws CLI reads it.
    #[arg(long)]
    credentials_file: Option<PathBuf>,
}

impl ClientArgs {
    fn client(&self, timeout: std::time::Duration) -> Result<hsm_kms::client::Client> {
        Ok(hsm_kms::client::ClientOptions {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            credentials_file: self.credentials_file.clone(),
            timeout: Some(timeout),
        }
        .resolve()?)
    }
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The operation: Encrypt, Decrypt, GenerateDataKey, Sign or GenerateMac.
    #[arg(long)]
    op: hsm_kms::client::loadgen::Operation,
    /// The key to use; default: a key of the spec the operation needs is created for the run
    /// (and scheduled for deletion after it).
    #[arg(long)]
    key_id: Option<String>,
    /// Plaintext bytes (Encrypt, Decrypt), message bytes (Sign RAW, GenerateMac).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Concurrent keep-alive connections; a comma-separated list (1,8,64) runs each in turn.
    #[arg(long, short = 'c', value_delimiter = ',', default_value = "8")]
    concurrency: Vec<usize>,
    /// Seconds measured per concurrency.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up before each measurement (answers not measured, errors counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Encryption context pair KEY=VALUE (Encrypt, Decrypt, GenerateDataKey); repeatable.
    #[arg(long)]
    context: Vec<String>,
    /// Sign's SigningAlgorithm.
    #[arg(long, default_value = "ECDSA_SHA_256")]
    signing_algorithm: String,
    /// Sign's MessageType: RAW (a --size byte message) or DIGEST.
    #[arg(long, default_value = "RAW")]
    message_type: String,
    /// GenerateMac's MacAlgorithm.
    #[arg(long, default_value = "HMAC_SHA_256")]
    mac_algorithm: String,
    /// KeySpec of the key created when --key-id is not given (default: the one the
    /// algorithm implies, e.g. ECC_NIST_P256 for ECDSA_SHA_256, RSA_2048 for RSASSA_*).
    #[arg(long)]
    key_spec: Option<String>,
    /// Seconds one request may take before it counts as an error (timeout).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Threads of the load generator [default: the CPUs, at most the largest concurrency].
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON document instead of RESULT lines and a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum EnvelopeCmd {
    /// Encrypt FILE under a new data key from KMS GenerateDataKey (AES_256): streamed in
    /// chunks of AES-256-GCM, the data key's KMS ciphertext and the context in the
    /// authenticated header. The output appears only once complete.
    Encrypt {
        #[command(flatten)]
        client: ClientArgs,
        /// The KMS key (id, ARN, alias/NAME or alias ARN).
        #[arg(long)]
        key_id: String,
        /// The file to encrypt.
        #[arg(long = "in")]
        input: PathBuf,
        /// The envelope file to write.
        #[arg(long = "out")]
        output: PathBuf,
        /// Encryption context pair KEY=VALUE; repeatable. Stored in the file and bound to
        /// the data key by KMS.
        #[arg(long)]
        context: Vec<String>,
        /// Plaintext bytes per chunk (1024..=1048576).
        #[arg(long, default_value_t = hsm_kms::client::envelope::format::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Decrypt an envelope file: KMS Decrypt of its data key (with the file's encryption
    /// context), then every chunk authenticated before it is written. On any failure no
    /// output file is left; the plaintext file is created with mode 0600.
    Decrypt {
        #[command(flatten)]
        client: ClientArgs,
        /// The envelope file.
        #[arg(long = "in")]
        input: PathBuf,
        /// The plaintext file to write.
        #[arg(long = "out")]
        output: PathBuf,
        /// KEY=VALUE the file's encryption context must hold (refused before any KMS call
        /// otherwise); repeatable.
        #[arg(long)]
        context: Vec<String>,
        /// The KMS key the data key must be under (Decrypt's KeyId); default: any.
        #[arg(long)]
        key_id: Option<String>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Create two local SoftHSM2 tokens, enroll them (the SO ceremony, non-interactive) and
    /// write a config under the state folder (idempotent). The SO PIN never stays in the
    /// state folder.
    SetupLocal {
        #[arg(long, env = "KMS_STATE_DIR", default_value = "var")]
        state_dir: PathBuf,
        /// File holding the SO PIN for new tokens (created 0600 with a random PIN if it does
        /// not exist). Without it a random SO PIN is used once and shown only on a terminal.
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
    },
    /// Compare the metadata with every HSM's objects and print a report: missing copies,
    /// orphaned key material (left by interrupted operations), quarantined copies, unknown
    /// objects. With --fix, copy missing material and destroy orphaned objects that stay
    /// unreferenced for --grace-secs (never a referenced one; unknown objects are never
    /// touched).
    Reconcile {
        /// Config file (default: <state dir>/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        fix: bool,
        /// How long an orphaned object must stay unreferenced before --fix destroys it.
        #[arg(long, default_value_t = 120)]
        grace_secs: u64,
        /// Print the report as one JSON document on stdout (no progress output).
        #[arg(long)]
        json: bool,
    },
    /// The KMS keys of the metadata store, and where each backing key's copies are.
    Keys {
        #[command(subcommand)]
        cmd: cli::KeysCmd,
    },
    /// The API credentials (access keys) of every account.
    Credentials {
        #[command(subcommand)]
        cmd: cli::CredentialsCmd,
    },
    /// Accounts of this deployment.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Operator commands for the HSMs of the config.
    Hsm {
        #[command(subcommand)]
        cmd: HsmCmd,
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
    /// Serve one HSM for the service that started this process (internal: the service
    /// starts one per HSM when `hsm.isolation = "process"`). Reads its configuration and
    /// jobs on stdin, answers on stdout, logs on stderr; ends when stdin closes.
    #[command(hide = true)]
    HsmHost {
        /// The HSM's name (shown in process listings; the configuration comes on stdin).
        #[arg(long)]
        hsm: String,
    },
    /// Load generator: drive a KMS endpoint with SigV4-signed requests on N keep-alive
    /// HTTP/1.1 connections for a duration after a warm-up; print req/s (200 answers only),
    /// p50, p99 and every other answer as an error. Exit status 1 when there was any error.
    Bench(BenchArgs),
    /// Envelope encryption of files with a data key from KMS (GenerateDataKey / Decrypt).
    Envelope {
        #[command(subcommand)]
        cmd: EnvelopeCmd,
    },
    /// Benchmark: raw PKCS#11 AES-GCM against the same operation through the HSM layer,
    /// on fresh local SoftHSM2 tokens, in one run; with --ops, then raw PKCS#11 alone for
    /// each operation `bench` drives over HTTP (prints `RAW op=NAME ... ops_per_sec=N`).
    BenchHsm {
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Raw PKCS#11 rows to measure too: `all`, or a comma-separated list of encrypt,
        /// decrypt, generate-data-key, sign-ecdsa-p256, sign-rsa-2048-pss, generate-mac.
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
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
    // `KMS_LOG_FORMAT=json`: one JSON object per line, with the fields of the spans it
    // happened in (a request's `request_id` and `operation`); anything else: text.
    let json = match std::env::var("KMS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => {
            eprintln!("hsm-kms: KMS_LOG_FORMAT is `json` or `text`, not {other:?}; using text");
            false
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
        }))
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
        }))
        .with(filter)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("hsm-kms: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::SetupLocal {
            state_dir,
            so_pin_file,
        } => setup_local(&state_dir, so_pin_file.as_deref()),
        Cmd::Reconcile {
            config,
            fix,
            grace_secs,
            json,
        } => reconcile(&load_config(config)?, fix, grace_secs, json),
        Cmd::Keys { cmd } => cli::keys(cmd),
        Cmd::Credentials { cmd } => cli::credentials(cmd),
        Cmd::Hsm {
            cmd: HsmCmd::List(args),
        } => cli::hsm_list(args),
        Cmd::Hsm {
            cmd: HsmCmd::Probe(args),
        } => {
            if !cli::hsm_probe(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Account {
            cmd: AccountCmd::Create { account_id, config },
        } => account_create(&load_config(config)?, &account_id),
        Cmd::Audit {
            cmd: AuditCmd::Verify { config, dir, from },
        } => {
            // The HSMs check the digests' signatures unless only a folder was named.
            let hsms = match (&dir, config) {
                (Some(_), None) => None,
                (_, config) => Some(load_config(config)?),
            };
            let dir = match (dir, &hsms) {
                (Some(d), _) => d,
                (None, Some(l)) => l.audit().dir,
                (None, None) => bail!("no trail folder"),
            };
            if !audit_verify(&dir, from.as_deref(), hsms.as_ref())? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Hsm {
            cmd: HsmCmd::Check(args),
        } => std::process::exit(hsm_check(&args)),
        Cmd::Hsm {
            cmd:
                HsmCmd::Enroll {
                    name,
                    config,
                    so_pin_file,
                    source_so_pin_file,
                    yes,
                },
        } => hsm_enroll(
            &load_config(config)?,
            &name,
            so_pin_file.as_deref(),
            source_so_pin_file.as_deref(),
            yes,
        ),
        Cmd::BenchHsm {
            size,
            ops,
            threads,
            secs,
            reps,
            filler_keys,
            dir,
        } => {
            use hsm_kms::hsm::bench::{self, RawOp};
            let ops: Vec<RawOp> = match ops.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["all"] => RawOp::ALL.to_vec(),
                ref names => names
                    .iter()
                    .map(|n| n.parse::<RawOp>().map_err(anyhow::Error::msg))
                    .collect::<Result<_>>()?,
            };
            std::fs::create_dir_all(&dir)?;
            let report = bench::run_gcm_bench(&dir, size, threads, secs, reps, filler_keys)?;
            println!("{report}");
            if !ops.is_empty() {
                println!();
                print!(
                    "{}",
                    bench::run_raw_ops(&dir, &ops, size, threads, secs, reps)?
                );
            }
            Ok(())
        }
        Cmd::Bench(args) => {
            if !bench(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Envelope { cmd } => envelope(cmd),
        Cmd::HsmHost { hsm: _ } => {
            // Frames go to fd 1 unbuffered (`Stdout` would split them at newlines).
            let out = std::fs::File::from(
                std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?,
            );
            hsm_kms::hsm::serve_host(std::io::stdin().lock(), out)?;
            Ok(())
        }
        Cmd::Serve { config, listen } => {
            let loaded = load_config(config)?;
            prepare_environment(&loaded, &loaded.nodes()?);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(loaded, listen))
        }
    }
}

/// `hsm-kms bench`: true when no request failed.
fn bench(a: BenchArgs) -> Result<bool> {
    use hsm_kms::client::{envelope, loadgen};
    let secs = |what: &str, s: f64| {
        if s.is_finite() && s >= 0.0 {
            Ok(std::time::Duration::from_secs_f64(s))
        } else {
            bail!("--{what} must be a number of seconds")
        }
    };
    let (duration, warmup, timeout) = (
        secs("duration", a.duration)?,
        secs("warmup", a.warmup)?,
        secs("timeout", a.timeout)?,
    );
    if a.concurrency.is_empty() || a.concurrency.contains(&0) {
        bail!("--concurrency must be one or more positive numbers");
    }
    let client = Arc::new(a.client.client(timeout)?);
    let workload = loadgen::Workload {
        operation: a.op,
        key_id: a.key_id,
        size: a.size,
        context: envelope::parse_context(&a.context)?.into_iter().collect(),
        signing_algorithm: a.signing_algorithm,
        message_type: a.message_type,
        mac_algorithm: a.mac_algorithm,
        key_spec: a.key_spec,
    };
    let most = a.concurrency.iter().copied().max().unwrap_or(1);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = a.threads.unwrap_or(cpus.min(most)).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(async {
        let prepared = loadgen::prepare(&client, &workload).await?;
        if prepared.created {
            eprintln!(
                "bench: created key {} for {}",
                prepared.key_id, prepared.label
            );
        }
        let mut outcomes = Vec::new();
        for &c in &a.concurrency {
            eprintln!(
                "bench: {} on {} connection(s): {:.1} s warm-up, {:.1} s measured",
                prepared.label,
                c,
                warmup.as_secs_f64(),
                duration.as_secs_f64()
            );
            let o = loadgen::run(
                &client,
                &prepared,
                loadgen::Phase {
                    connections: c,
                    warmup,
                    duration,
                },
            )
            .await?;
            if !a.json {
                println!("{}", o.result_line());
            }
            outcomes.push(o);
        }
        if let Err(e) = loadgen::cleanup(&client, &prepared).await {
            eprintln!(
                "bench: warning: the deletion of key {} was not scheduled: {e}",
                prepared.key_id
            );
        } else if prepared.created {
            eprintln!(
                "bench: key {} scheduled for deletion in 7 days",
                prepared.key_id
            );
        }
        Ok::<_, anyhow::Error>(outcomes)
    })?;
    if a.json {
        println!("{}", serde_json::json!({ "runs": outcomes }));
    } else {
        println!();
        print!("{}", loadgen::table(&outcomes));
    }
    Ok(outcomes
        .iter()
        .all(|o| o.errors == 0 && o.warmup_errors == 0))
}

/// `hsm-kms envelope encrypt|decrypt`.
fn envelope(cmd: EnvelopeCmd) -> Result<()> {
    use hsm_kms::client::envelope;
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cancel = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        // Ctrl-C stops the work between chunks, so the temporary output is removed.
        let flag = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        let timeout = std::time::Duration::from_secs(30);
        match cmd {
            EnvelopeCmd::Encrypt {
                client,
                key_id,
                input,
                output,
                context,
                chunk_size,
                force,
            } => {
                let req = envelope::EncryptRequest {
                    key_id,
                    context: envelope::parse_context(&context)?,
                    input,
                    output,
                    chunk_size,
                    force,
                };
                let s = envelope::encrypt(&Arc::new(client.client(timeout)?), &req, cancel)
                    .await
                    .with_context(|| format!("encrypt {}", req.input.display()))?;
                eprintln!(
                    "encrypted {} bytes in {} chunks under {} into {}",
                    s.plaintext_bytes,
                    s.chunks,
                    s.key_arn,
                    req.output.display()
                );
            }
            EnvelopeCmd::Decrypt {
                client,
                input,
                output,
                context,
                key_id,
                force,
            } => {
                let req = envelope::DecryptRequest {
                    context: envelope::parse_context(&context)?,
                    input,
                    output,
                    key_id,
                    force,
                };
                let s = envelope::decrypt(&Arc::new(client.client(timeout)?), &req, cancel)
                    .await
                    .with_context(|| format!("decrypt {}", req.input.display()))?;
                eprintln!(
                    "decrypted {} bytes in {} chunks (key {}) into {}",
                    s.plaintext_bytes,
                    s.chunks,
                    s.key_arn,
                    req.output.display()
                );
            }
        }
        Ok(())
    })
}

/// The config at `path`, or `<state dir>/config.toml`.
pub(crate) fn load_config(path: Option<PathBuf>) -> Result<Loaded> {
    let path = path.unwrap_or_else(|| {
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
    Ok(Loaded::from_file(&path)?)
}

fn setup_local(state_dir: &Path, so_pin_file: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    let (so, shown) = match so_pin_file {
        Some(f) if f.exists() => (
            SoPin::read_file(f).with_context(|| format!("read {}", f.display()))?,
            true,
        ),
        Some(f) => {
            let so = SoPin::random();
            write_private(f, &format!("{}\n", so.expose()))?;
            println!("wrote the lab tokens' SO PIN to {}", f.display());
            (so, true)
        }
        None => (SoPin::random(), false),
    };
    let names = ["hsm-a", "hsm-b"];
    let fresh = names
        .iter()
        .any(|n| !state_dir.join("hsm").join(n).join("user.pin").exists());
    let hsms = softhsm::provision_cluster_with(
        &state_dir.join("hsm"),
        &names,
        &so,
        &mut cli::progress::Bars::new(false),
    )?;
    let cfg = state_dir.join("config.toml");
    if !cfg.exists() {
        std::fs::write(&cfg, config::local_config_text(&hsms, &state_dir))?;
        println!("wrote {}", cfg.display());
    }
    for h in &hsms {
        println!(
            "HSM {}: token '{}' in {} (enrolled)",
            h.name,
            h.label,
            h.token_dir.display()
        );
    }
    if fresh && !shown {
        // The SO PIN is needed only to enroll another token; it is never kept here.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "SO PIN of these lab tokens (shown once, not stored; needed only to enroll \
                 another token): {}",
                so.expose()
            );
        } else {
            println!(
                "the lab tokens' SO PIN was not stored (pass --so-pin-file to keep it); it is \
                 needed only to enroll another token"
            );
        }
    }
    Ok(())
}

/// The service configuration of a command that opens the store and the cluster without
/// serving.
fn offline_config(loaded: &Loaded, nodes: Vec<hsm_kms::hsm::NodeConfig>) -> Result<ServiceConfig> {
    let c = &loaded.config;
    Ok(ServiceConfig {
        nodes,
        cluster: loaded.cluster_options()?,
        database: loaded.state_dir.join("metadata.sqlite"),
        listen: String::new(),
        region: c.region.clone(),
        account_id: c.account_id.clone(),
        max_body_bytes: c.max_body_bytes,
        clock: Arc::new(SystemClock),
        maintenance_interval: std::time::Duration::from_millis(c.maintenance_interval_ms),
        audit: loaded.audit(),
        metrics_public: loaded.config.metrics_public,
    })
}

/// Before the runtime starts any thread (see `hsm::prepare_environment`): the modules'
/// environment, for HSMs served in this process; hosted HSMs get theirs on their own
/// process.
fn prepare_environment(loaded: &Loaded, nodes: &[hsm_kms::hsm::NodeConfig]) {
    if !loaded.hosted() {
        hsm_kms::hsm::prepare_environment(nodes);
    }
}

fn reconcile(loaded: &Loaded, fix: bool, grace_secs: u64, json: bool) -> Result<()> {
    let nodes = loaded.nodes()?;
    prepare_environment(loaded, &nodes);
    let cfg = offline_config(loaded, nodes)?;
    let mut progress = cli::progress::Bars::new(json);
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::reconcile(
            cfg,
            fix,
            std::time::Duration::from_secs(grace_secs),
            &mut progress,
        ))?;
    drop(progress);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// `hsm-kms audit verify`: true when the trail is intact.
fn audit_verify(dir: &Path, from: Option<&str>, hsms: Option<&Loaded>) -> Result<bool> {
    if let Some(f) = from {
        let date = f.get(..10).unwrap_or(f);
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(date, &fmt)
            .with_context(|| format!("--from {f}: not a date (YYYY-MM-DD[Thh:mm:ssZ])"))?;
    }
    if !dir.is_dir() {
        bail!("{} is not an audit trail folder", dir.display());
    }
    let r = match hsms {
        None => hsm_kms::audit::verify(dir, from)?,
        Some(loaded) => {
            let nodes = loaded.nodes()?;
            prepare_environment(loaded, &nodes);
            let mut cfg = offline_config(loaded, nodes)?;
            cfg.audit.dir = dir.to_path_buf();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(app::verify_audit(cfg, from))?
        }
    };
    if r.torn_tail {
        println!("note: the last file ends in an incomplete line (a write cut short, never acknowledged)");
    }
    match r.finding {
        None => {
            println!(
                "audit trail intact: {} records in {} files ({})",
                r.records,
                r.files,
                dir.display()
            );
            let macs = if r.macs_checked {
                "signatures checked by the HSMs"
            } else {
                "signatures NOT checked: pass --config to check them with the HSMs"
            };
            println!("digests: {} ({macs})", r.digests.len());
            match r.covered_to {
                _ if r.uncovered == 0 => {}
                Some(to) => println!(
                    "{} records after record {to} are not yet covered by a digest (a service stopped cleanly leaves none)",
                    r.uncovered
                ),
                None => println!(
                    "{} records are not yet covered by a digest: the trail holds none",
                    r.uncovered
                ),
            }
            Ok(true)
        }
        Some(f) => {
            println!(
                "audit trail BROKEN after {} good records: {f}",
                r.records.saturating_sub(1)
            );
            Ok(false)
        }
    }
}

fn account_create(loaded: &Loaded, account_id: &str) -> Result<()> {
    let nodes = loaded.nodes()?;
    prepare_environment(loaded, &nodes);
    let cfg = offline_config(loaded, nodes)?;
    let c = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::create_account(cfg, account_id))?;
    eprintln!(
        "account {account_id} created; its root user's credential ({}) follows",
        c.principal_arn
    );
    println!("export AWS_ACCESS_KEY_ID={}", c.access_key_id);
    println!(
        "export AWS_SECRET_ACCESS_KEY={}",
        c.secret_access_key.as_str()
    );
    Ok(())
}

/// An SO PIN from `file`, or asked on the terminal.
fn so_pin(file: Option<&Path>, whose: &str) -> Result<SoPin> {
    if let Some(f) = file {
        return SoPin::read_file(f).with_context(|| format!("read {}", f.display()));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no terminal to ask {whose}'s SO PIN on; pass it in a file (--so-pin-file)");
    }
    let pin = rpassword::prompt_password(format!("SO PIN of {whose}: "))?;
    Ok(SoPin::new(pin))
}

fn hsm_enroll(
    loaded: &Loaded,
    name: &str,
    so_pin_file: Option<&Path>,
    source_so_pin_file: Option<&Path>,
    yes: bool,
) -> Result<()> {
    let nodes = loaded.nodes()?;
    hsm_kms::hsm::prepare_environment(&nodes);
    let Some(target) = nodes.iter().find(|n| n.name == name) else {
        bail!("no HSM named '{name}' in the config");
    };
    // The other HSMs that hold the trusted cluster wrapping key, read once: the first is
    // the source, and with the target they are the enrolled HSMs afterwards.
    let enrolled_others: Vec<_> = nodes
        .iter()
        .filter(|n| n.name != name)
        .filter(|n| match ceremony::cwk_state(n) {
            Ok(state) => state == ceremony::CwkState::Trusted,
            Err(e) => {
                eprintln!(
                    "hsm-kms: {} cannot be read ({e}); not used as the source",
                    n.name
                );
                false
            }
        })
        .collect();
    let source = enrolled_others.first().copied();
    let target_so = so_pin(so_pin_file, name)?;
    let source_so = match source {
        Some(s) => Some(so_pin(source_so_pin_file.or(so_pin_file), &s.name)?),
        None => None,
    };
    let from = source.zip(source_so.as_ref());
    let mut confirm = |fingerprint: &str| {
        println!("transport key generated inside {name}: {fingerprint}");
        if yes {
            return true;
        }
        print!("Compare it with the fingerprint your HSM shows. Enroll {name}? Type yes: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && answer.trim() == "yes"
    };
    // The cluster wrapping key's arrival in a token is recorded for the service's trail.
    let enrolled_event =
        |details: serde_json::Value, hsms: Vec<String>| hsm_kms::kms::audit::ServiceEvent {
            source: hsm_kms::kms::audit::Source::Kms,
            event_name: "EnrollHsm",
            account: None,
            resources: Vec::new(),
            details,
            hsms,
            time: time::OffsetDateTime::now_utc(),
        };
    let event = match ceremony::enroll(target, &target_so, from, &mut confirm)? {
        Enrolled::Already => {
            println!("{name} already holds the cluster wrapping key");
            None
        }
        Enrolled::Generated => {
            println!(
                "{name}: its SO generated the cluster wrapping key (the first HSM of the cluster)"
            );
            Some(enrolled_event(
                serde_json::json!({"hsm": name, "clusterWrappingKey": "generated"}),
                vec![name.to_string()],
            ))
        }
        Enrolled::Received { from } => {
            println!("{name}: received the cluster wrapping key from {from}");
            Some(enrolled_event(
                serde_json::json!({"hsm": name, "clusterWrappingKey": "received", "from": from}),
                vec![from.to_string(), name.to_string()],
            ))
        }
    };
    let enrolled = enrolled_others.len() + 1;
    let cfg = offline_config(loaded, nodes)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(event) = event {
        rt.block_on(app::record_operator_event(
            &cfg,
            "hsm-kms hsm enroll",
            event,
        ))?;
    }
    if enrolled < 2 {
        println!("{enrolled} HSM enrolled; enroll at least one more before serving");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut progress = cli::progress::Bars::new(false);
    let copies = rt.block_on(app::copy_keys(cfg, &mut progress))?;
    drop(progress);
    println!(
        "copied {copies} key objects in {:.1} s; restart the service to use {name}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn serve(loaded: Loaded, listen: Option<String>) -> Result<()> {
    let c = &loaded.config;
    let running = app::start(ServiceConfig {
        nodes: loaded.nodes()?,
        cluster: loaded.cluster_options()?,
        database: loaded.state_dir.join("metadata.sqlite"),
        listen: listen.unwrap_or_else(|| c.listen.clone()),
        region: c.region.clone(),
        account_id: c.account_id.clone(),
        max_body_bytes: c.max_body_bytes,
        clock: Arc::new(SystemClock),
        maintenance_interval: std::time::Duration::from_millis(c.maintenance_interval_ms),
        audit: loaded.audit(),
        metrics_public: loaded.config.metrics_public,
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
    tracing::info!("shutting down");
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

/// `hsm-kms hsm check`: the exit status (2 for a usage error found here).
fn hsm_check(a: &CheckArgs) -> i32 {
    match check_targets(a) {
        Err(e) => {
            eprintln!("hsm-kms: {e:#}");
            2
        }
        Ok(targets) => {
            if let Err(e) = hsm_kms::hsm::check::cancel_on_signal() {
                eprintln!("hsm-kms: {e}");
            }
            let opts = hsm_kms::hsm::check::Options {
                threads: a.threads.max(1),
                find_objects: a.find_objects.max(1),
                session_limit: a.session_limit.max(1),
                ..Default::default()
            };
            // One stage per token, a step per row: a bar on a terminal, else one summary
            // line per token on stderr (none with --json).
            let mut bars = cli::progress::Bars::new(a.json);
            let mut current = String::new();
            let mut progress = |hsm: &str, _row: &str| {
                use hsm_kms::progress::Progress;
                if current != hsm {
                    current = hsm.to_string();
                    bars.stage(&format!("checking {hsm}"), 0);
                }
                bars.advance(1);
            };
            let report = hsm_kms::hsm::check::run(&targets, &opts, &mut progress);
            hsm_kms::progress::Progress::finish(&mut bars);
            if a.json {
                println!("{:#}", report.json());
            } else {
                print!("{}", report.table());
            }
            report.exit_status()
        }
    }
}

/// The tokens `hsm check` was asked to check.
fn check_targets(a: &CheckArgs) -> Result<Vec<hsm_kms::hsm::check::Target>> {
    use hsm_kms::hsm::check::Target;
    let pin = |f: &Option<PathBuf>| -> Result<Option<zeroize::Zeroizing<String>>> {
        f.as_ref()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|p| zeroize::Zeroizing::new(p.trim().to_string()))
                    .with_context(|| format!("read {}", f.display()))
            })
            .transpose()
    };
    let so = |f: &Option<PathBuf>| -> Result<Option<SoPin>> {
        f.as_ref()
            .map(|f| SoPin::read_file(f).with_context(|| format!("read {}", f.display())))
            .transpose()
    };
    let env = |v: &[String]| -> Result<Vec<(String, String)>> {
        v.iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => bail!("--env {kv}: not KEY=VALUE"),
            })
            .collect()
    };
    let name_of = |m: &Path| {
        m.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.display().to_string())
    };
    if let Some(config) = &a.config {
        let loaded = load_config(Some(config.clone()))?;
        let so_pin = so(&a.so_pin_file)?;
        return Ok(loaded
            .nodes()?
            .into_iter()
            .map(|n| Target {
                name: n.name,
                module: n.module,
                slot: None,
                token_label: Some(n.token_label),
                pin: Some(n.pin),
                so_pin: so_pin.as_ref().map(|p| SoPin::new(p.expose().to_string())),
                env: n.env,
            })
            .collect());
    }
    let Some(module) = &a.module else {
        bail!("pass --module or --config");
    };
    let mut targets = vec![Target {
        name: name_of(module),
        module: module.clone(),
        slot: a.slot,
        token_label: a.token_label.clone(),
        pin: pin(&a.pin_file)?,
        so_pin: so(&a.so_pin_file)?,
        env: env(&a.env)?,
    }];
    if let Some(other) = &a.against {
        let mut name = name_of(other);
        if targets.first().is_some_and(|t| t.name == name) {
            name = format!("{name} (against)");
        }
        let label = a.against_token_label.clone().or(a.token_label.clone());
        let pin_file = a.against_pin_file.clone().or(a.pin_file.clone());
        let so_pin_file = a.against_so_pin_file.clone().or(a.so_pin_file.clone());
        let against_env = if a.against_env.is_empty() {
            &a.env
        } else {
            &a.against_env
        };
        targets.push(Target {
            name,
            module: other.clone(),
            slot: a
                .against_slot
                .or(if label.is_some() { None } else { a.slot }),
            token_label: label,
            pin: pin(&pin_file)?,
            so_pin: so(&so_pin_file)?,
            env: env(against_env)?,
        });
    }
    Ok(targets)
}
