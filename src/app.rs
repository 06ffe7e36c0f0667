//! The composition root: connect the HSM cluster, open the metadata store, load the domain
//! and the credentials, and build the router. `main` and the end-to-end tests both start
//! the service through [`start`].

use crate::api::{router, AppState};
use crate::auth::{Credential, LiveCredentials};
use crate::clock::Clock;
use crate::hsm::{ClusterOptions, HsmCluster, HsmError, NodeConfig};
use crate::kms::types::Region;
use crate::kms::vault::KeyVault;
use crate::kms::{Kms, KmsError};
use crate::store::{SqliteStore, StoreError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The PKCS#11 cluster could not be connected (module load, token login, quorum).
    #[error("{0}")]
    Hsm(#[from] HsmError),
    /// The SQLite metadata store could not be opened or migrated.
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    /// The domain could not load its keys or credentials.
    #[error("{0}")]
    Kms(#[from] KmsError),
    /// A setting is invalid (e.g. the region), or a startup task failed.
    #[error("{0}")]
    Config(String),
    /// Creating the database folder or binding the listen address failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the service needs to start.
pub struct ServiceConfig {
    /// The PKCS#11 tokens (module, slot, PIN) that each hold a copy of every key.
    pub nodes: Vec<NodeConfig>,
    /// Worker counts and call timeouts of the HSM cluster.
    pub cluster: ClusterOptions,
    /// Path of the SQLite metadata database (created with its folder if absent).
    pub database: PathBuf,
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// The AWS region this service answers as (key ARNs, SigV4 credential scope).
    pub region: String,
    /// The 12-digit AWS account id that owns the keys and the first credential.
    pub account_id: String,
    /// Largest request body accepted; larger gets `RequestEntityTooLargeException`.
    pub max_body_bytes: usize,
    /// Wall time for SigV4 skew checks, rotations and deletion windows.
    pub clock: Arc<dyn Clock>,
    /// Period of the background maintenance pass.
    pub maintenance_interval: Duration,
    /// The audit trail.
    pub audit: AuditOptions,
    /// Serve `GET /metrics` to anyone (a scraper on a trusted network) instead of only to
    /// SigV4-signed requests.
    pub metrics_public: bool,
}

/// Where and how the audit trail is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The trail's folder (created if absent).
    pub dir: PathBuf,
    /// Answer calls whose record cannot be made durable (default false: refuse them).
    pub fail_open: bool,
    /// Size at which a new trail file is started.
    pub max_file_bytes: u64,
    /// Whether the trail is kept at all (`false`: nothing is recorded; benchmarks only).
    pub enabled: bool,
    /// A signed digest after this many records.
    pub digest_every_records: u64,
    /// A signed digest at least this often while records come.
    pub digest_every: Duration,
    /// CloudTrail `LookupEvents` calls allowed a second per account (0 is taken as 1, by
    /// [`crate::kms::lookup::LookupRate::new`]).
    pub lookup_events_per_second: u32,
}

impl AuditOptions {
    /// The trail in `dir`, fail-closed, default file size.
    pub fn in_dir(dir: PathBuf) -> AuditOptions {
        AuditOptions {
            dir,
            fail_open: false,
            max_file_bytes: crate::audit::DEFAULT_MAX_FILE_BYTES,
            enabled: true,
            digest_every_records: crate::audit::DEFAULT_DIGEST_RECORDS,
            digest_every: crate::audit::DEFAULT_DIGEST_EVERY,
            lookup_events_per_second: crate::kms::lookup::DEFAULT_PER_SECOND,
        }
    }
}

/// A running service.
pub struct Running {
    /// The address actually bound (the port is resolved when 0 was asked for).
    pub addr: SocketAddr,
    /// The KMS domain serving the requests (operator and test access).
    pub kms: Arc<Kms>,
    /// The HSM cluster behind the domain's port (health, operator and test access).
    pub cluster: Arc<HsmCluster>,
    /// The credential created on this first start, if any.
    pub new_credential: Option<Credential>,
    /// All credentials (for tests and the quick start).
    pub credentials: Vec<Credential>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    trail: Arc<crate::audit::FileTrail>,
}

/// Longest wait for the closing digest at shutdown.
const SEAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Running {
    /// Stop serving, write a closing audit digest (covering every record), then finalize
    /// every HSM module instance.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        match tokio::time::timeout(SEAL_TIMEOUT, self.trail.seal()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "no closing audit digest"),
            Err(_) => tracing::error!("no closing audit digest: the HSMs did not answer"),
        }
        self.cluster.shutdown();
    }

    /// Resolves when the server task ends.
    pub async fn wait(&mut self) {
        if let Some(h) = self.server.as_mut() {
            let _ = h.await;
        }
        self.server = None;
    }

    /// Ask the server to stop accepting and finish in-flight requests.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// How often a running service looks for credentials created or removed meanwhile.
const CREDENTIAL_REFRESH: Duration = Duration::from_millis(500);
/// How often HSM states are compared for `HsmStateChange` audit records.
const HSM_WATCH_EVERY: Duration = Duration::from_secs(1);

/// How often the service looks for records of operator commands waiting in the store.
const PENDING_RECORDS_EVERY: Duration = Duration::from_secs(1);

/// Create an account (`hsm-kms account create`): a credential for its root user, sealed
/// under the HSMs' credential-sealing key and stored; a running service sharing the store
/// accepts it within a second. Opens the store and the cluster like [`start`].
pub async fn create_account(
    cfg: ServiceConfig,
    account_id: &str,
) -> Result<Credential, StartError> {
    let core = open_core(
        cfg.database,
        cfg.nodes,
        cfg.cluster,
        cfg.clock.clone(),
        &cfg.region,
    )
    .await?;
    let vault: Arc<dyn KeyVault> = core.cluster.clone();
    let c = crate::kms::credentials::create_account(
        vault.as_ref(),
        &core.store,
        account_id,
        cfg.clock.now(),
    )
    .await?;
    core.cluster.shutdown();
    Ok(c)
}

/// `hsm-kms audit verify` with the HSMs: the trail's chain and digests, and each digest's
/// MAC checked by the HSMs' digest key. Opens the store and the cluster like [`start`].
pub async fn verify_audit(
    cfg: ServiceConfig,
    from: Option<&str>,
) -> Result<crate::audit::VerifyReport, StartError> {
    let dir = cfg.audit.dir.clone();
    let core = open_core(cfg.database, cfg.nodes, cfg.cluster, cfg.clock, &cfg.region).await?;
    let mut report =
        crate::audit::verify(&dir, from).map_err(|e| StartError::Config(e.to_string()));
    if let Ok(r) = report.as_mut() {
        let key = crate::kms::digest::HsmDigestKey::new(core.cluster.clone());
        if let Err(e) = crate::audit::check_digests(r, &key).await {
            report = Err(StartError::Kms(e));
        }
    }
    core.cluster.shutdown();
    report
}

/// The store counter that allocates each process start's GCM IV fixed field.
const IV_FIXED_FIELD: &str = "gcm_iv_fixed_field";

/// The service's core without its listener: the metadata store, the HSM cluster (with this
/// start's GCM IV fixed field, durably allocated first) and the domain.
struct Core {
    store: Arc<dyn crate::store::MetadataStore>,
    cluster: Arc<HsmCluster>,
    kms: Arc<Kms>,
}

/// The metadata store at `database` (its folder created if absent), opened off the
/// runtime's workers.
async fn open_store(database: PathBuf) -> Result<Arc<dyn crate::store::MetadataStore>, StartError> {
    if let Some(parent) = database.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&database))
            .await
            .map_err(|e| StartError::Config(format!("store open: {e}")))??,
    ))
}

async fn open_core(
    database: PathBuf,
    nodes: Vec<NodeConfig>,
    mut copts: ClusterOptions,
    clock: Arc<dyn Clock>,
    region: &str,
) -> Result<Core, StartError> {
    let region = Region::parse(region).map_err(|e| StartError::Config(e.to_string()))?;
    let store = open_store(database).await?;
    // This start's GCM IV fixed field, durably allocated before any encryption: no other
    // start (or node sharing the store) ever uses it, so IVs never repeat under any key.
    let s2 = store.clone();
    let start_number = tokio::task::spawn_blocking(move || s2.next_counter(IV_FIXED_FIELD))
        .await
        .map_err(|e| StartError::Config(format!("store: {e}")))??;
    let fixed = u32::try_from(start_number).map_err(|_| {
        StartError::Config("the GCM IV fixed fields (2^32 process starts) are used up".into())
    })?;
    copts.iv_fixed_field = Some(fixed);
    let cluster = tokio::task::spawn_blocking(move || HsmCluster::connect(nodes, copts))
        .await
        .map_err(|e| StartError::Config(format!("cluster start: {e}")))??;
    let cluster = Arc::new(cluster);
    let vault: Arc<dyn KeyVault> = cluster.clone();
    let kms = Arc::new(Kms::open(vault, store.clone(), clock, region)?);
    Ok(Core {
        store,
        cluster,
        kms,
    })
}

/// Copy every key to every enrolled HSM that lacks it (after `hsm-kms hsm enroll`), telling
/// `progress` as it goes; returns the copies made. Opens the store and the cluster like
/// [`start`], without listening.
pub async fn copy_keys(
    cfg: ServiceConfig,
    progress: &mut dyn crate::progress::Progress,
) -> Result<usize, StartError> {
    let core = open_core(cfg.database, cfg.nodes, cfg.cluster, cfg.clock, &cfg.region).await?;
    record_for_the_service(
        &core,
        cfg.audit.enabled,
        &cfg.account_id,
        "hsm-kms hsm enroll",
    );
    Ok(core.kms.resync_hsms_with_progress(progress).await?)
}

/// Have what the operator command `command` does in the service's stead (copies, orphaned
/// objects destroyed) recorded through the store into the running service's trail, or its
/// next start's ([`crate::audit::pending`]), when the trail is on.
fn record_for_the_service(core: &Core, enabled: bool, home_account: &str, command: &'static str) {
    if !enabled {
        return;
    }
    let region = core.kms.region().as_str().to_string();
    core.kms.set_auditor(operator_auditor(
        core.store.clone(),
        &region,
        home_account,
        command,
    ));
}

/// The auditor of the operator command `command`: its records wait in `store` for the
/// service's trail.
fn operator_auditor(
    store: Arc<dyn crate::store::MetadataStore>,
    region: &str,
    home_account: &str,
    command: &'static str,
) -> Arc<crate::kms::audit::Auditor> {
    let sink = Arc::new(crate::audit::pending::PendingRecords::new(store));
    Arc::new(
        crate::kms::audit::Auditor::new(sink, false, region, home_account)
            .for_operator_command(command),
    )
}

/// Record `event`, made by the operator command `command` without the service (an HSM
/// enrolled), for the service's trail through the store ([`crate::audit::pending`]), when
/// the trail is on. Opens the metadata store only.
pub async fn record_operator_event(
    cfg: &ServiceConfig,
    command: &'static str,
    event: crate::kms::audit::ServiceEvent,
) -> Result<(), StartError> {
    if !cfg.audit.enabled {
        return Ok(());
    }
    let store = open_store(cfg.database.clone()).await?;
    operator_auditor(store, &cfg.region, &cfg.account_id, command)
        .record_service_event(event)
        .await;
    Ok(())
}

/// Reconcile the metadata with every HSM's objects (`hsm-kms reconcile`): the report, and
/// with `fix` missing material copied and orphaned objects destroyed after `grace`. Opens
/// the store and the cluster like [`start`], without listening.
pub async fn reconcile(
    cfg: ServiceConfig,
    fix: bool,
    grace: Duration,
    progress: &mut dyn crate::progress::Progress,
) -> Result<crate::kms::ReconcileReport, StartError> {
    let core = open_core(cfg.database, cfg.nodes, cfg.cluster, cfg.clock, &cfg.region).await?;
    record_for_the_service(
        &core,
        cfg.audit.enabled,
        &cfg.account_id,
        "hsm-kms reconcile",
    );
    Ok(core.kms.reconcile(fix, grace, progress).await?)
}

/// Connect, load and serve (in a background task); returns once listening.
pub async fn start(cfg: ServiceConfig) -> Result<Running, StartError> {
    let Core {
        store,
        cluster,
        kms,
    } = open_core(
        cfg.database.clone(),
        cfg.nodes,
        cfg.cluster,
        cfg.clock.clone(),
        &cfg.region,
    )
    .await?;
    let now = cfg.clock.now();
    let vault: Arc<dyn KeyVault> = cluster.clone();
    let (credentials, new_credential) =
        crate::kms::credentials::load_or_create(vault.as_ref(), &store, &cfg.account_id, now)
            .await?;
    // Background work (HSM re-sync, due deletions and rotations) on a fixed period.
    let weak = Arc::downgrade(&kms);
    let period = cfg.maintenance_interval;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(k) = weak.upgrade() else { break };
            if let Err(e) = k.maintenance().await {
                tracing::warn!(error = %e, "maintenance pass failed; will retry");
            }
        }
    });
    let lookup = Arc::new(LiveCredentials::new(credentials.iter().cloned().collect()));
    // Credentials created while the service runs (`hsm-kms account create`, another node)
    // are accepted within CREDENTIAL_REFRESH; removed ones stop being accepted as fast.
    // Access keys changed so, outside the API, are recorded in the audit trail.
    let (live, v2, s2, clock, kms_w) = (
        Arc::downgrade(&lookup),
        vault.clone(),
        store.clone(),
        cfg.clock.clone(),
        Arc::downgrade(&kms),
    );
    tokio::spawn(async move {
        let mut refused = std::collections::HashSet::new();
        loop {
            tokio::time::sleep(CREDENTIAL_REFRESH).await;
            let Some(live) = live.upgrade() else { break };
            // Access key calls hold this lock from their store write until the set has
            // their change: every difference found under it was made outside the API.
            let changing = live.lock_changes().await;
            let known = live.snapshot();
            let now = clock.now();
            match crate::kms::credentials::refresh(v2.as_ref(), &s2, &known, &mut refused, now)
                .await
            {
                // A change made meanwhile by this node (a new role session) is kept: the
                // next pass sees it in the store, and any outside change again with it.
                Ok(Some(next)) => {
                    let changes = crate::auth::credentials::access_key_changes(&known, &next);
                    let replaced = live.replace_if(&known, next);
                    drop(changing);
                    match kms_w.upgrade() {
                        Some(kms) if replaced && !changes.is_empty() => {
                            kms.record_access_key_changes(&changes).await;
                        }
                        _ => {}
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "credential refresh failed; will retry"),
            }
        }
    });
    crate::kms::digest::ensure_digest_key(vault.as_ref(), &store).await?;
    // The import token key, like the digest key, exists in every HSM from the first start
    // (so that reconciliation and re-sync always find it).
    kms.ensure_import_token_key().await?;
    let trail = Arc::new(crate::audit::FileTrail::open_with_digests(
        &cfg.audit.dir,
        cfg.audit.max_file_bytes,
        Some(crate::audit::DigestOptions {
            signer: Arc::new(crate::kms::digest::HsmDigestKey::new(vault.clone())),
            every_records: cfg.audit.digest_every_records.max(1),
            every: cfg.audit.digest_every,
        }),
    ));
    let sink: Arc<dyn crate::kms::audit::AuditSink> = if cfg.audit.enabled {
        trail.clone()
    } else {
        tracing::warn!(
            "AUDIT TRAIL DISABLED (audit_enabled = false): no call is recorded; for benchmarks and labs only"
        );
        Arc::new(crate::kms::audit::DisabledSink)
    };
    let audit = Arc::new(
        crate::kms::audit::Auditor::new(
            sink.clone(),
            cfg.audit.fail_open,
            kms.region().as_str(),
            &cfg.account_id,
        )
        .with_reader(trail.clone())
        .with_lookup_rate(cfg.audit.lookup_events_per_second),
    );
    // Service events (rotation, deletion, re-sync, HSM state changes) go to the same trail,
    // and so do those of operator commands, which wait in the store until moved here.
    kms.set_auditor(audit.clone());
    let (s2, sink_w) = (store.clone(), Arc::downgrade(&sink));
    tokio::spawn(async move {
        loop {
            let Some(sink) = sink_w.upgrade() else { break };
            let moved = crate::audit::pending::drain(&s2, sink.as_ref()).await;
            drop(sink);
            match moved {
                Ok(0) => {}
                Ok(n) => tracing::info!(target: "hsm_kms::audit", records = n,
                    "operator commands' records moved into the trail"),
                Err(e) => tracing::warn!(error = %e,
                    "operator commands' records not moved into the trail yet; will retry"),
            }
            tokio::time::sleep(PENDING_RECORDS_EVERY).await;
        }
    });
    let weak = Arc::downgrade(&kms);
    tokio::spawn(async move {
        loop {
            let Some(k) = weak.upgrade() else { break };
            k.watch_hsms().await;
            drop(k);
            tokio::time::sleep(HSM_WATCH_EVERY).await;
        }
    });
    let metrics = crate::api::metrics::Metrics::new(cfg.metrics_public)
        .map_err(|e| StartError::Config(e.to_string()))?;
    for h in cluster.latency_histograms() {
        metrics
            .register_histogram(h)
            .map_err(|e| StartError::Config(e.to_string()))?;
    }
    let state = Arc::new(AppState {
        kms: kms.clone(),
        credentials: lookup,
        clock: cfg.clock.clone(),
        max_body_bytes: cfg.max_body_bytes,
        audit,
        metrics: Arc::new(metrics),
    });
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state);
    let server = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Running {
        addr,
        kms,
        cluster,
        new_credential,
        credentials,
        shutdown: Some(tx),
        server: Some(server),
        trail,
    })
}
