//! The cluster of ≥ 2 HSMs ([`HsmCluster`]) and the API the rest of the service calls:
//! start-up (open every HSM, start its workers, probe thread and monitor, enroll the cluster
//! wrapping key), HSM selection (healthy first, then fewest calls in flight), per-request
//! failover to another HSM when a failure is retryable, and one method per operation, each a
//! thin call into the module of its key family (`aes`, `keypair`, `hmac`) or into
//! `replication`.
//!
//! Key pair generation (`CreateKey` of an asymmetric key, `GenerateDataKeyPair`) runs in
//! each HSM's key generation lane (`worker`), with its own threads, queue and deadline: a
//! full lane sends the generation to the next HSM, and when every lane is full the caller
//! gets [`HsmError::KeygenBusy`] (retryable; the domain answers
//! `DependencyTimeoutException`). AES and HMAC key creation is one `C_GenerateKey` of a few
//! milliseconds and stays in the crypto lane.

use super::command::{Command, Control, FromReply, Reply, Transfer};
use super::enrollment;
use super::error::{Fault, HsmError};
use super::handles::ObjectKind;
use super::health;
use super::host::HostLink;
use super::instance::NodeConfig;
use super::integrity::{Expected, CHECK_LEN};
use super::iv::IvSource;
use super::kinds::{holding_object, DataKeyPair, KeyKind, PairSpec, PairUse, Secret, SignScheme};
use super::mechanisms::IV_LEN;
use super::needs::{Need, Support};
use super::node::{state_after_failed_open, HsmHealth, Node, NodeOptions, NodeState};
use super::replication::{self, Created, Replicator};
use super::worker::Pool;
use crate::kms::vault::{ImportWrapping, WrappedMaterial};
use crate::pkix::{Curve, Hash};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Tunables of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Crypto worker threads (one session each) per HSM.
    pub workers_per_hsm: usize,
    /// Jobs that may wait per HSM for a crypto worker before new ones are refused (and
    /// sent elsewhere).
    pub queue_depth: usize,
    /// Key generation worker threads (one session each) per HSM: the most key pair
    /// generations that run inside one HSM's module at once.
    pub keygen_workers_per_hsm: usize,
    /// Key pair generations that may wait per HSM for a key generation worker; past that,
    /// the generation goes to another HSM, or is refused with [`HsmError::KeygenBusy`].
    pub keygen_queue_depth: usize,
    /// Deadline of one cryptographic call, and of one health probe.
    pub call_timeout: Duration,
    /// Deadline of one key generation (queueing included), and of replication and
    /// enrollment steps.
    pub keygen_timeout: Duration,
    /// Health probe period.
    pub probe_interval: Duration,
    /// HSMs that must hold a new key before it is acknowledged (at least 2).
    pub min_copies: usize,
    /// Paranoid mode: every Encrypt, GenerateDataKey, GenerateMac and Sign answer is
    /// confirmed by a second HSM before it leaves (about twice the HSM work per call).
    pub paranoid: bool,
    /// The fixed field of this process start's deterministic GCM IVs (SP 800-38D §8.2.1),
    /// allocated durably so that no other start or node ever uses it (`app` takes it from
    /// the metadata store). `None`: random IVs from `C_GenerateRandom`, which bound each key
    /// to 2^32 encryptions; only for HSM-level tests and benchmarks.
    pub iv_fixed_field: Option<u32>,
    /// Where each HSM is served: `None` in this process (its module loaded here, its
    /// environment set around `C_Initialize`); `Some(program)`: in a host process of its
    /// own, `program hsm-host` (the `hsm-kms` binary), supervised and restarted by the
    /// service (see `host`).
    pub host_program: Option<PathBuf>,
    /// Accept RSA_AES_KEY_WRAP imports on tokens that cannot confine the ephemeral AES key
    /// (no nested unwrap templates, as SoftHSM 2.6.1): a holder of the user PIN who
    /// captured the wrapped material could then unwrap it readable while its wrapping key
    /// lives (24 hours at most). Off by default: those imports are refused.
    pub allow_unconfined_rsa_aes_import: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            workers_per_hsm: 2,
            queue_depth: 1024,
            keygen_workers_per_hsm: 2,
            keygen_queue_depth: 4,
            call_timeout: Duration::from_millis(2000),
            keygen_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_millis(1000),
            min_copies: 2,
            paranoid: false,
            iv_fixed_field: None,
            host_program: None,
            allow_unconfined_rsa_aes_import: false,
        }
    }
}

/// A set of HSMs that each hold a copy of every key.
pub struct HsmCluster {
    hsms: Vec<Pool>,
    opts: ClusterOptions,
    rr: AtomicUsize,
    /// Recorded check values of the keys, shared with every in-process HSM's workers (and
    /// sent to every host process).
    checks: Arc<Expected>,
    /// Deterministic GCM IVs of this process start (`None`: drawn in the HSMs).
    iv: Option<Arc<IvSource>>,
}

/// The confirmation of an answer by a second HSM (paranoid mode): the command it runs, and
/// what its outcome must be.
type Confirmation = (
    Command,
    Box<dyn FnOnce(Result<Reply, HsmError>) -> Result<bool, HsmError> + Send>,
);

impl HsmCluster {
    /// Open every HSM (blocking), then make sure the enrolled ones hold the same cluster
    /// wrapping key. Refuses to start with fewer than two HSMs configured, or when no
    /// enrolled HSM can be opened; an HSM that cannot be opened is started down (a refused
    /// PIN: failed), reported in [`HsmCluster::health`], retried in the background and
    /// proven (`enrollment::admit`) before it is used. With `opts.host_program`, each HSM is
    /// opened by a host process of its own, all of them at once, each within the key
    /// generation deadline (a hung module then delays the start by at most that).
    pub fn connect(cfgs: Vec<NodeConfig>, opts: ClusterOptions) -> Result<HsmCluster, HsmError> {
        if cfgs.len() < 2 {
            return Err(HsmError::Setup {
                hsm: "cluster".into(),
                message: format!("at least two HSMs are required; {} configured", cfgs.len()),
            });
        }
        let mut names = std::collections::HashSet::new();
        for c in &cfgs {
            if !names.insert(c.name.clone()) {
                return Err(HsmError::Setup {
                    hsm: c.name.clone(),
                    message: "HSM name used twice".into(),
                });
            }
        }
        if opts.host_program.is_none() {
            // In one process, two HSMs loading the same module file would share one module
            // instance (and SoftHSM2 one configuration): each needs its own copy.
            let mut modules = std::collections::HashMap::new();
            for c in &cfgs {
                let m = std::fs::canonicalize(&c.module).unwrap_or_else(|_| c.module.clone());
                if let Some(other) = modules.insert(m, c.name.clone()) {
                    return Err(HsmError::Setup {
                        hsm: c.name.clone(),
                        message: format!(
                            "uses the same module file as {other} ({}): in process each HSM \
                             needs its own copy of the module; copy it, or run each HSM in a \
                             process of its own (hsm_isolation = \"process\")",
                            c.module.display()
                        ),
                    });
                }
            }
        }
        let checks = Arc::new(Expected::default());
        let iv = opts.iv_fixed_field.map(|f| Arc::new(IvSource::new(f)));
        let nopts = NodeOptions {
            workers: opts.workers_per_hsm,
            queue_depth: opts.queue_depth,
            keygen_workers: opts.keygen_workers_per_hsm,
            keygen_queue_depth: opts.keygen_queue_depth,
            keygen_timeout: opts.keygen_timeout,
            probe_interval: opts.probe_interval,
            probe_timeout: opts.call_timeout,
            iv: iv.clone(),
            checks: checks.clone(),
        };
        // Every HSM that can be opened is; one that cannot (module missing, token folder
        // missing or unreadable, no token with its label…) is started `Down` (a refused PIN
        // `Failed`) with its error in the health report, and its monitor keeps trying.
        // Starting an HSM (its host process, the enrollment steps) is no key generation:
        // a deadline set short to bound generations must not fail the starts.
        let start = opts.keygen_timeout.max(opts.call_timeout);
        let hsms = match &opts.host_program {
            None => open_in_process(cfgs, &nopts)?,
            Some(program) => open_hosted(cfgs, &nopts, program, &checks, start),
        };
        let cluster = HsmCluster {
            hsms,
            opts,
            rr: AtomicUsize::new(0),
            checks,
            iv,
        };
        // Dropping the cluster on an error shuts every HSM down.
        enrollment::check(&cluster.hsms, start)?;
        for (i, pool) in cluster.hsms.iter().enumerate() {
            let peers = (cluster.hsms.iter().enumerate())
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.clone())
                .collect();
            health::watch(pool, enrollment::admitter(peers, start))?;
        }
        Ok(cluster)
    }

    /// Pick a usable HSM (its index and pool): healthy before suspect, then fewest calls in
    /// flight; ties go to the first in round-robin order.
    fn pick(&self, exclude: Option<usize>) -> Option<(usize, &Pool)> {
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let first = start.checked_rem(self.hsms.len())?;
        let all = self.hsms.iter().enumerate();
        // Round-robin order: from `first` to the end, then from the start up to `first`.
        all.clone()
            .skip(first)
            .chain(all.take(first))
            .filter(|(i, p)| Some(*i) != exclude && p.node().usable())
            .min_by_key(|(_, p)| {
                let node = p.node();
                (node.state() != NodeState::Healthy, node.inflight())
            })
    }

    /// The IV of the next request-path GCM encryption, from this start's deterministic
    /// source (`None`: the HSM draws one).
    fn next_iv(&self) -> Result<Option<[u8; IV_LEN]>, HsmError> {
        match &self.iv {
            None => Ok(None),
            Some(source) => source.next().map(Some).ok_or_else(|| {
                HsmError::Internal("the GCM IV counter of this process start is exhausted".into())
            }),
        }
    }

    /// Run the command `make` builds on one HSM; a retryable failure is retried once, with
    /// a command built afresh, on another HSM.
    async fn run<T: FromReply>(
        &self,
        timeout: Duration,
        make: impl Fn() -> Result<Command, HsmError>,
    ) -> Result<T, HsmError> {
        self.run_indexed(timeout, make).await.map(|(_, v)| v)
    }

    /// Have `pool`'s copy of secret key `id` verified again now (quarantined if it disagrees
    /// with its recorded check value); the outcome is logged, not returned.
    async fn reverify(&self, pool: &Pool, id: &[u8]) {
        let cmd = Command::Reverify { id: id.to_vec() };
        let _ = pool.call::<()>(self.opts.call_timeout, cmd).await;
    }

    /// [`HsmCluster::run`], also naming (by index) the HSM that answered.
    async fn run_indexed<T: FromReply>(
        &self,
        timeout: Duration,
        make: impl Fn() -> Result<Command, HsmError>,
    ) -> Result<(usize, T), HsmError> {
        let (first, pool) = self.pick(None).ok_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        })?;
        match pool.call(timeout, make()?).await {
            Ok(v) => Ok((first, v)),
            Err(e) if e.retryable() && e.fault() != Fault::Capacity => {
                pool.node().suspect(&e);
                let Some((i, second)) = self.pick(Some(first)) else {
                    return Err(e);
                };
                pool.node().count_failover();
                tracing::warn!(failed = %pool.node().name(), retry = %second.node().name(), error = %e, "failing over");
                second.call(timeout, make()?).await.map(|v| (i, v))
            }
            Err(e) => Err(e),
        }
    }

    /// Run the command `make` builds on one HSM like [`HsmCluster::run`]; with a `confirm`
    /// (paranoid mode: the callers build it, and copy what it needs, only then), also have
    /// another HSM confirm the answer (decrypt what was encrypted, compute the same MAC,
    /// verify the signature) before it leaves. An answer another HSM does not confirm is
    /// never sent: the first HSM's copy of key `id` is re-verified (and quarantined if it
    /// disagrees with its recorded check value) and the caller gets a retryable error.
    async fn run_confirmed<T: FromReply>(
        &self,
        id: &[u8],
        make: impl Fn() -> Result<Command, HsmError>,
        confirm: Option<impl FnOnce(&T) -> Confirmation>,
    ) -> Result<T, HsmError> {
        let timeout = self.opts.call_timeout;
        let Some(confirm) = confirm else {
            return self.run(timeout, make).await;
        };
        let (first, v) = self.run_indexed(timeout, make).await?;
        let Some((_, other)) = self.pick(Some(first)) else {
            // One usable HSM: nothing to confirm with (the copy was verified at first use).
            return Ok(v);
        };
        let (cmd, check) = confirm(&v);
        if check(other.call::<Reply>(timeout, cmd).await)? {
            return Ok(v);
        }
        let Some(pool) = self.hsms.get(first) else {
            return Err(HsmError::Internal("no HSM at the answering index".into()));
        };
        tracing::error!(
            target: "hsm_kms::audit",
            answered = %pool.node().name(),
            refuted = %other.node().name(),
            object = %hex::encode(id),
            "paranoid check: an answer was not confirmed by another HSM and was not sent"
        );
        self.reverify(pool, id).await;
        Err(HsmError::Unconfirmed(format!(
            "{}'s answer for {} was not confirmed by {}",
            pool.node().name(),
            hex::encode(id),
            other.node().name()
        )))
    }

    /// Run the key generation `make` builds in the key generation lane of one HSM (see
    /// [`health::keygen_order`]). A full lane sends it to the next HSM; a retryable failure
    /// other than capacity makes that HSM suspect and is retried once on another HSM, like
    /// [`HsmCluster::run`]. A deadline is answered at once (the caller has waited the whole
    /// key generation deadline already). Neither a full lane nor a deadline makes an HSM
    /// suspect.
    async fn run_keygen<T: FromReply>(&self, make: impl Fn() -> Command) -> Result<T, HsmError> {
        let mut failed_over = false;
        let mut last = None;
        for pool in health::keygen_order(&self.hsms) {
            match pool.keygen(make()).await {
                Ok(v) => return Ok(v),
                Err(e @ HsmError::KeygenBusy { .. }) => last = Some(e),
                Err(e) if e.retryable() && e.fault() != Fault::Capacity && !failed_over => {
                    pool.node().suspect(&e);
                    pool.node().count_failover();
                    tracing::warn!(failed = %pool.node().name(), error = %e, "key generation failing over");
                    failed_over = true;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        }))
    }

    /// The HSM named `hsm`.
    fn by_name(&self, hsm: &str) -> Result<&Pool, HsmError> {
        self.hsms
            .iter()
            .find(|p| p.node().name() == hsm)
            .ok_or_else(|| HsmError::Internal(format!("no HSM named {hsm}")))
    }

    /// Record the check values of keys (object id, value), as the domain recorded them when
    /// the copies agreed: every copy is then verified against them the first time it is
    /// used in a module instance, and quarantined if it disagrees.
    pub fn expect_check_values(&self, values: Vec<(Vec<u8>, KeyKind, [u8; CHECK_LEN])>) {
        self.checks.extend(values.iter().cloned());
        for p in self.hsms.iter().filter(|p| p.is_hosted()) {
            p.control(Control::ExpectChecks(values.clone()));
        }
    }

    /// Have every copy verified again at its next use (the periodic check: a token that
    /// does not reload its objects can still drift).
    pub fn reverify_copies(&self) {
        for p in &self.hsms {
            p.control(Control::ForgetVerified);
        }
    }

    /// The check value of key `id` (of kind `kind`), computed in every usable HSM that holds
    /// it: `None` when no HSM holds it or the kind has none; an error naming each HSM's
    /// value when the copies disagree (the caller has no recorded value to decide by).
    pub async fn check_value(
        &self,
        id: &[u8],
        kind: KeyKind,
    ) -> Result<Option<[u8; CHECK_LEN]>, HsmError> {
        let t = self.opts.call_timeout;
        let mut seen: Vec<(String, [u8; CHECK_LEN])> = Vec::new();
        let object = holding_object(kind);
        for pool in health::usable(&self.hsms) {
            let holds = Command::Holds {
                kind: object,
                id: id.to_vec(),
            };
            if !pool.call::<bool>(t, holds).await? {
                continue;
            }
            let cmd = Command::CheckValue {
                id: id.to_vec(),
                kind,
            };
            if let Some(v) = pool.call::<Option<[u8; CHECK_LEN]>>(t, cmd).await? {
                seen.push((pool.node().name().to_string(), v));
            }
        }
        let Some((_, first)) = seen.first() else {
            return Ok(None);
        };
        if seen.iter().all(|(_, v)| v == first) {
            return Ok(Some(*first));
        }
        Err(HsmError::CopiesDisagree(format!(
            "the copies of {} disagree and no check value was recorded: {}",
            hex::encode(id),
            seen.iter()
                .map(|(h, v)| format!("{h}={}", hex::encode(v)))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// What each HSM holds, by `CKA_ID` (from its handle cache, warmed with one find over
    /// the token when its instance opened): (HSM name, usable now, object ids). An HSM that
    /// does not answer shows none.
    pub async fn inventory(&self) -> Vec<(String, bool, Vec<Vec<u8>>)> {
        let mut out = Vec::new();
        for p in &self.hsms {
            let node = p.node();
            let ids = p
                .call::<Vec<Vec<u8>>>(self.opts.call_timeout, Command::Inventory)
                .await
                .unwrap_or_default();
            out.push((node.name().to_string(), node.usable(), ids));
        }
        out
    }

    /// Replication over this cluster's HSMs.
    fn replicator(&self) -> Replicator<'_> {
        Replicator {
            hsms: &self.hsms,
            min_copies: self.opts.min_copies,
            timeout: self.opts.keygen_timeout,
        }
    }

    /// AES-256-GCM encrypt under key `id`: (IV, ciphertext ‖ tag).
    pub async fn encrypt(
        &self,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let plaintext = Secret(plaintext);
        let confirm = self.opts.paranoid.then(|| {
            let (key, aad, pt) = (id.to_vec(), aad.clone(), plaintext.clone());
            move |(iv, ct): &([u8; IV_LEN], Vec<u8>)| -> Confirmation {
                let cmd = Command::Decrypt {
                    key,
                    iv: *iv,
                    aad,
                    ciphertext: ct.clone(),
                };
                let check = move |r: Result<Reply, HsmError>| {
                    Ok(matches!(r, Ok(Reply::Secret(b)) if b.as_slice() == pt.as_slice()))
                };
                (cmd, Box::new(check))
            }
        });
        self.run_confirmed(
            id,
            || {
                Ok(Command::Encrypt {
                    key: id.to_vec(),
                    iv: self.next_iv()?,
                    aad: aad.clone(),
                    plaintext: plaintext.clone(),
                })
            },
            confirm,
        )
        .await
    }

    /// AES-256-GCM decrypt; tag failure → [`HsmError::InvalidCiphertext`].
    pub async fn decrypt(
        &self,
        id: &[u8],
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let (first, pool) = self.pick(None).ok_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        })?;
        let decrypt = || Command::Decrypt {
            key: id.to_vec(),
            iv,
            aad: aad.clone(),
            ciphertext: ciphertext.clone(),
        };
        let e = match pool.call(self.opts.call_timeout, decrypt()).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !matches!(e, HsmError::InvalidCiphertext) {
            // Device faults fail over as every operation does.
            if !e.retryable() || e.fault() == Fault::Capacity {
                return Err(e);
            }
            pool.node().suspect(&e);
        }
        // A tag failure is retried once on another HSM before it is answered: if this copy
        // drifted, the other one opens the blob (and this copy is re-verified below).
        let Some((_, second)) = self.pick(Some(first)) else {
            return Err(e);
        };
        let v = match second.call(self.opts.call_timeout, decrypt()).await {
            Ok(v) => v,
            // The second HSM cannot say (no copy yet, e.g. its drifted copy was quarantined;
            // or a fault): a tag failure from a copy verified against the check value
            // recorded when the key was made is the answer.
            Err(e2)
                if matches!(e, HsmError::InvalidCiphertext)
                    && !matches!(e2, HsmError::InvalidCiphertext)
                    && self.checks.get(id).is_some() =>
            {
                return Err(e);
            }
            Err(e2) => return Err(e2),
        };
        if matches!(e, HsmError::InvalidCiphertext) {
            tracing::warn!(
                target: "hsm_kms::audit",
                failed = %pool.node().name(),
                opened = %second.node().name(),
                object = %hex::encode(id),
                "a ciphertext failed authentication on one HSM and opened on another; \
                 re-verifying the first copy"
            );
            self.reverify(pool, id).await;
        }
        Ok(v)
    }

    /// A data key: `n` random bytes from the HSM and their encryption under key `id`, in
    /// one job. Returns (plaintext data key, IV, ciphertext ‖ tag).
    #[allow(clippy::type_complexity)]
    pub async fn generate_data_key(
        &self,
        id: &[u8],
        n: usize,
        aad: Vec<u8>,
    ) -> Result<(Zeroizing<Vec<u8>>, [u8; IV_LEN], Vec<u8>), HsmError> {
        type DataKey = (Zeroizing<Vec<u8>>, [u8; IV_LEN], Vec<u8>);
        let confirm = self.opts.paranoid.then(|| {
            let (key, aad) = (id.to_vec(), aad.clone());
            move |(dk, iv, ct): &DataKey| -> Confirmation {
                let cmd = Command::Decrypt {
                    key,
                    iv: *iv,
                    aad,
                    ciphertext: ct.clone(),
                };
                let dk = Secret(dk.clone());
                let check = move |r: Result<Reply, HsmError>| {
                    Ok(matches!(r, Ok(Reply::Secret(b)) if b.as_slice() == dk.as_slice()))
                };
                (cmd, Box::new(check))
            }
        });
        self.run_confirmed(
            id,
            || {
                Ok(Command::DataKey {
                    key: id.to_vec(),
                    n,
                    iv: self.next_iv()?,
                    aad: aad.clone(),
                })
            },
            confirm,
        )
        .await
    }

    /// Random bytes from an HSM.
    pub async fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        self.run(self.opts.call_timeout, || Ok(Command::Random { n }))
            .await
    }

    /// Create an AES-256 key with `CKA_ID = id` in one HSM and copy it into every other
    /// usable HSM under the cluster wrapping key, proving each copy with a GCM round trip.
    /// At least `min_copies` HSMs must end up holding it; on any failure every copy made is
    /// destroyed.
    pub async fn create_aes_key(&self, id: &[u8], label: &str) -> Result<(), HsmError> {
        self.create_checked(id, label, KeyKind::Aes)
            .await
            .map(|_| ())
    }

    /// Create a key of `kind` (see [`Replicator::create`]) and expect its check value from
    /// now on: every copy is verified against it at first use. Returns the key's transfer
    /// and check value (for the caller to record with the key).
    pub(super) async fn create_checked(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
    ) -> Result<Created, HsmError> {
        let created = self.replicator().create(id, label, kind).await?;
        if let Some(check) = created.check {
            self.expect_check_values(vec![(id.to_vec(), kind, check)]);
        }
        Ok(created)
    }

    /// Create a key pair with `CKA_ID = id` in one HSM and copy it into every other usable
    /// HSM (private half wrapped under the cluster wrapping key, public half as a public
    /// object), proving each copy. Returns the SubjectPublicKeyInfo DER. On any failure
    /// every copy made is destroyed.
    pub async fn create_key_pair(
        &self,
        id: &[u8],
        label: &str,
        spec: PairSpec,
        usage: PairUse,
    ) -> Result<Vec<u8>, HsmError> {
        self.create_checked(id, label, KeyKind::Pair(spec, usage))
            .await?
            .spki()
    }

    /// Create an HMAC key of `len` bytes (`CKK_GENERIC_SECRET`, sign/verify) in one HSM and
    /// copy it into every other usable HSM, proving each copy with an HMAC.
    pub async fn create_hmac_key(
        &self,
        id: &[u8],
        label: &str,
        len: usize,
    ) -> Result<(), HsmError> {
        self.create_checked(id, label, KeyKind::Hmac(len))
            .await
            .map(|_| ())
    }

    /// Unwrap imported key material inside an HSM into key `id` of `kind` (see
    /// `hsm::import`) and copy it into every other usable HSM under the cluster wrapping
    /// key, proving each copy. Returns the SPKI DER of a key pair's public half.
    pub async fn import_key(
        &self,
        wrapped: &WrappedMaterial,
        id: &[u8],
        label: &str,
        kind: KeyKind,
    ) -> Result<Option<Vec<u8>>, HsmError> {
        let transfer = self
            .replicator()
            .create_by(id, label, kind, || Command::Import {
                wrapped: wrapped.clone(),
                id: id.to_vec(),
                label: label.to_string(),
                kind,
                export: true,
            })
            .await?;
        match (&*transfer, kind) {
            (Transfer::Pair(tr), KeyKind::Pair(..)) => Ok(Some(tr.public().spki()?)),
            (_, KeyKind::Pair(..)) => Err(HsmError::Internal("key pair expected".into())),
            _ => Ok(None),
        }
    }

    /// Unwrap imported key material into the throw-away key `id` in one HSM (the first
    /// usable one holding the wrapping key), answer its check value and destroy it.
    pub async fn imported_check_value(
        &self,
        wrapped: &WrappedMaterial,
        id: &[u8],
        kind: KeyKind,
    ) -> Result<[u8; CHECK_LEN], HsmError> {
        let mut last = None;
        for pool in health::usable(&self.hsms) {
            let cmd = Command::Import {
                wrapped: wrapped.clone(),
                id: id.to_vec(),
                label: "hsm-kms import check".into(),
                kind,
                export: false,
            };
            let made: Result<(), HsmError> = pool.call(self.opts.keygen_timeout, cmd).await;
            let value = match made {
                Ok(()) => {
                    let cmd = Command::CheckValue {
                        id: id.to_vec(),
                        kind,
                    };
                    pool.call::<Option<[u8; CHECK_LEN]>>(self.opts.call_timeout, cmd)
                        .await
                }
                Err(e) => Err(e),
            };
            let destroyed = pool
                .call::<bool>(
                    self.opts.keygen_timeout,
                    Command::DestroyAll { id: id.to_vec() },
                )
                .await;
            match value {
                Ok(Some(v)) => {
                    destroyed?;
                    return Ok(v);
                }
                Ok(None) => {
                    return Err(HsmError::Internal("imported key has no check value".into()))
                }
                Err(e) if e.retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        }))
    }

    /// The mechanism some usable HSM lacks to unwrap material wrapped with `wrapping`
    /// inside itself (from what each HSM's token offered at connect), if any.
    pub fn import_unsupported(&self, wrapping: ImportWrapping) -> Option<String> {
        health::usable(&self.hsms).into_iter().find_map(|p| {
            let f = p.facts()?;
            let caps = super::capabilities::ImportCaps {
                oaep: f.oaep,
                oaep_sha256: f.oaep_sha256,
                aes_key_wrap_pad: f.aes_key_wrap_pad,
                nested_unwrap_templates: f.nested_unwrap_templates,
            };
            super::capabilities::import_missing(
                &caps,
                self.opts.allow_unconfined_rsa_aes_import,
                wrapping,
            )
            .map(|m| format!("{m} (HSM {})", p.node().name()))
        })
    }

    /// Copy AES keys that some usable HSM lacks (e.g. it was down when they were created)
    /// from an HSM that holds them. Returns how many copies were made.
    pub async fn replicate_missing(&self, ids: &[(Vec<u8>, String)]) -> Result<usize, HsmError> {
        let keys: Vec<_> = ids
            .iter()
            .map(|(id, label)| (id.clone(), label.clone(), KeyKind::Aes))
            .collect();
        self.replicate_missing_kinds(&keys).await
    }

    /// Copy keys of any kind that some usable HSM lacks (it was down or new when they were
    /// created) from an HSM that holds them. Returns how many copies were made.
    pub async fn replicate_missing_kinds(
        &self,
        keys: &[(Vec<u8>, String, KeyKind)],
    ) -> Result<usize, HsmError> {
        self.replicator().resync(keys).await
    }

    /// Destroy a key on every HSM. Fails (so the caller retries later) unless every HSM
    /// answered; HSMs that never held it count as done.
    pub async fn destroy_key(&self, id: &[u8]) -> Result<(), HsmError> {
        self.destroy_key_objects(id).await
    }

    /// Destroy every object (secret, private, public) with this `CKA_ID` on every HSM.
    /// Fails unless every HSM answered.
    pub async fn destroy_key_objects(&self, id: &[u8]) -> Result<(), HsmError> {
        let mut first_err = None;
        for pool in &self.hsms {
            let cmd = Command::DestroyAll { id: id.to_vec() };
            if let Err(e) = pool.call::<bool>(self.opts.keygen_timeout, cmd).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sign a digest with private key `id` (ECDSA signatures as DER).
    pub async fn sign(
        &self,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let confirm = self.opts.paranoid.then(|| {
            let (key, digest) = (id.to_vec(), digest.clone());
            move |sig: &Vec<u8>| -> Confirmation {
                let cmd = Command::Verify {
                    key,
                    scheme,
                    digest,
                    signature: sig.clone(),
                };
                (cmd, Box::new(super::command::expect::<bool>))
            }
        });
        self.run_confirmed(
            id,
            || {
                Ok(Command::Sign {
                    key: id.to_vec(),
                    scheme,
                    digest: digest.clone(),
                })
            },
            confirm,
        )
        .await
    }

    /// Verify a signature over a digest with the public key `id` held by the HSMs.
    pub async fn verify(
        &self,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, HsmError> {
        let verify = || Command::Verify {
            key: id.to_vec(),
            scheme,
            digest: digest.clone(),
            signature: signature.clone(),
        };
        let (first, valid) = self
            .run_indexed(self.opts.call_timeout, || Ok(verify()))
            .await?;
        if valid {
            return Ok(true);
        }
        // A signature refused by one HSM's copy of the public key is checked once on
        // another before it is answered invalid: a drifted copy must not refuse good ones.
        let Some((_, other)) = self.pick(Some(first)) else {
            return Ok(false);
        };
        let valid = other.call(self.opts.call_timeout, verify()).await?;
        if valid {
            let failed = self.hsms.get(first).map(|p| p.node().name().to_string());
            tracing::error!(
                target: "hsm_kms::audit",
                failed = ?failed,
                verified = %other.node().name(),
                object = %hex::encode(id),
                "drift finding: a signature one HSM's copy of a public key refused verified on another"
            );
        }
        Ok(valid)
    }

    /// HMAC of `msg` under HMAC key `id`.
    pub async fn hmac(&self, id: &[u8], h: Hash, msg: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let confirm = self.opts.paranoid.then(|| {
            let (key, msg) = (id.to_vec(), msg.clone());
            move |mac: &Vec<u8>| -> Confirmation {
                let cmd = Command::Hmac { key, hash: h, msg };
                let mac = mac.clone();
                let check = move |r| Ok(super::command::expect::<Vec<u8>>(r)? == mac);
                (cmd, Box::new(check))
            }
        });
        self.run_confirmed(
            id,
            || {
                Ok(Command::Hmac {
                    key: id.to_vec(),
                    hash: h,
                    msg: msg.clone(),
                })
            },
            confirm,
        )
        .await
    }

    /// RSA-OAEP decryption with private key `id` whose modulus is `k` bytes.
    pub async fn rsa_oaep_decrypt(
        &self,
        id: &[u8],
        h: Hash,
        k: usize,
        ct: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.run(self.opts.call_timeout, || {
            Ok(Command::OaepDecrypt {
                key: id.to_vec(),
                hash: h,
                k,
                ct: ct.clone(),
            })
        })
        .await
    }

    /// ECDH with private key `id` and a peer's raw uncompressed point.
    pub async fn ecdh(
        &self,
        id: &[u8],
        curve: Curve,
        peer_point: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.run(self.opts.call_timeout, || {
            Ok(Command::Ecdh {
                key: id.to_vec(),
                curve,
                peer: peer_point.clone(),
            })
        })
        .await
    }

    /// A data key pair generated inside an HSM (session objects, destroyed at once):
    /// (PKCS#8 DER private key, SPKI DER public key).
    pub async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, HsmError> {
        self.run_keygen(|| Command::DataKeyPair { spec }).await
    }

    /// State of every HSM.
    pub fn health(&self) -> Vec<HsmHealth> {
        self.hsms.iter().map(Pool::report).collect()
    }

    /// The per-HSM call latency histograms (`hsm_kms_hsm_call_duration_seconds{hsm}`), to
    /// register with a Prometheus registry.
    pub fn latency_histograms(&self) -> Vec<prometheus::Histogram> {
        self.hsms
            .iter()
            .filter_map(|p| p.node().latency().cloned())
            .collect()
    }

    /// Every HSM's state changes since the last call: (HSM, from, to), oldest first per HSM.
    pub fn take_state_changes(&self) -> Vec<(String, NodeState, NodeState)> {
        self.hsms
            .iter()
            .flat_map(|p| {
                let node = p.node();
                node.take_transitions()
                    .into_iter()
                    .map(|(from, to)| (node.name().to_string(), from, to))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Names of the HSMs, in configuration order.
    pub fn hsm_names(&self) -> Vec<String> {
        self.hsms
            .iter()
            .map(|p| p.node().name().to_string())
            .collect()
    }

    /// True if the HSM's handle cache knows an object of this kind with this `CKA_ID`
    /// (blocking, for tests and operator checks; false if it does not answer).
    fn hsm_holds_kind(&self, hsm: &str, kind: ObjectKind, id: &[u8]) -> bool {
        let Ok(p) = self.by_name(hsm) else {
            return false;
        };
        let cmd = Command::Holds {
            kind,
            id: id.to_vec(),
        };
        p.call_blocking(self.opts.call_timeout, cmd)
            .unwrap_or(false)
    }

    /// True if the HSM's handle cache knows a secret key with this `CKA_ID` (blocking, for
    /// tests and operator checks).
    pub fn hsm_holds(&self, hsm: &str, id: &[u8]) -> bool {
        self.hsm_holds_kind(hsm, ObjectKind::Secret, id)
    }

    /// True if the HSM's handle cache knows a private key with this `CKA_ID` (blocking, for
    /// tests and operator checks).
    pub fn hsm_holds_private(&self, hsm: &str, id: &[u8]) -> bool {
        self.hsm_holds_kind(hsm, ObjectKind::Private, id)
    }

    /// Whether the cluster can hold (generate, use and replicate) Ed25519 keys.
    pub fn can_hold_ed25519_keys(&self) -> bool {
        self.kind_unavailable(KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign))
            .is_none()
    }

    /// Why keys of `kind` cannot be made here, if they cannot: fewer than `min_copies`
    /// (at least 2) HSMs are not known to lack what the kind needs (`needs::support` of
    /// what each token offered at connect; an HSM not opened yet is not counted against
    /// it). Names each lacking HSM and the missing mechanism.
    pub fn kind_unavailable(&self, kind: KeyKind) -> Option<String> {
        let lacking: Vec<(String, Need)> = self
            .hsms
            .iter()
            .filter_map(|p| match replication::support_on(p, kind) {
                Support::Missing(n) => Some((p.node().name().to_string(), n)),
                Support::Native | Support::Fallback(_) => None,
            })
            .collect();
        let able = self.hsms.len() - lacking.len();
        if lacking.is_empty() || able >= self.opts.min_copies.max(2) {
            return None;
        }
        Some(
            lacking
                .iter()
                .map(|(hsm, n)| format!("{} is missing in HSM {hsm}", n.mechanism()))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// The capabilities found at connect on each HSM.
    pub fn capabilities(&self) -> Vec<(String, bool)> {
        self.hsms
            .iter()
            .map(|p| {
                let oaep = p.facts().is_some_and(|f| f.oaep_sha256);
                (p.node().name().to_string(), oaep)
            })
            .collect()
    }

    /// The PID of `hsm`'s host process (`None` in process or while none runs): for drills.
    #[doc(hidden)]
    pub fn host_pid(&self, hsm: &str) -> Option<u32> {
        self.by_name(hsm).ok().and_then(Pool::host_pid)
    }

    /// Run an operation on one named HSM (no failover): for tests and operator checks.
    pub async fn encrypt_on(
        &self,
        hsm: &str,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let cmd = Command::Encrypt {
            key: id.to_vec(),
            iv: self.next_iv()?,
            aad,
            plaintext: Secret::new(plaintext),
        };
        self.by_name(hsm)?.call(self.opts.call_timeout, cmd).await
    }

    /// Decrypt on one named HSM (no failover): for tests and operator checks.
    pub async fn decrypt_on(
        &self,
        hsm: &str,
        id: &[u8],
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let cmd = Command::Decrypt {
            key: id.to_vec(),
            iv,
            aad,
            ciphertext,
        };
        self.by_name(hsm)?.call(self.opts.call_timeout, cmd).await
    }

    /// Sign on one named HSM (no failover): for tests and operator checks.
    pub async fn sign_on(
        &self,
        hsm: &str,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let cmd = Command::Sign {
            key: id.to_vec(),
            scheme,
            digest,
        };
        self.by_name(hsm)?.call(self.opts.call_timeout, cmd).await
    }

    /// Test hook: make every call into `hsm`'s module (worker jobs and health probes) hang
    /// for `d` inside the call gate before touching the token: a hung module.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_stall(&self, hsm: &str, d: Duration) -> Result<(), HsmError> {
        self.by_name(hsm)?.control(Control::Stall {
            all_ms: Some(d.as_millis() as u64),
            job_ms: None,
        });
        Ok(())
    }

    /// Test hook: make every worker job on `hsm` (not its health probes) take `d` longer,
    /// inside the call gate: slow operations queued on its workers.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_job_stall(&self, hsm: &str, d: Duration) -> Result<(), HsmError> {
        self.by_name(hsm)?.control(Control::Stall {
            all_ms: None,
            job_ms: Some(d.as_millis() as u64),
        });
        Ok(())
    }

    /// Stop worker threads and finalize every module instance (end every host process).
    pub fn shutdown(&self) {
        for p in &self.hsms {
            p.shutdown();
        }
    }
}

impl Drop for HsmCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Open every HSM in this process, one after the other, and start its workers.
fn open_in_process(cfgs: Vec<NodeConfig>, nopts: &NodeOptions) -> Result<Vec<Pool>, HsmError> {
    let mut hsms: Vec<Pool> = Vec::new();
    for cfg in cfgs {
        let (node, _) = Node::open(cfg, nopts.clone());
        let node = Arc::new(node);
        match Pool::start(node.clone()) {
            Ok(pool) => hsms.push(pool),
            Err(e) => {
                node.shutdown();
                hsms.iter().for_each(Pool::shutdown);
                return Err(e);
            }
        }
    }
    Ok(hsms)
}

/// Start a host process for every HSM, all at once, each within `start_timeout`. A host that
/// cannot open its HSM leaves it down (a refused PIN: failed) with the error recorded, for
/// its monitor to retry with a new host.
fn open_hosted(
    cfgs: Vec<NodeConfig>,
    nopts: &NodeOptions,
    program: &std::path::Path,
    checks: &Arc<Expected>,
    start_timeout: Duration,
) -> Vec<Pool> {
    let pools: Vec<Pool> = cfgs
        .into_iter()
        .map(|cfg| {
            let node = Arc::new(Node::hosted(cfg, nopts.clone()));
            let link = HostLink::new(
                node.clone(),
                program.to_path_buf(),
                checks.clone(),
                start_timeout,
            );
            Pool::hosted(node, Arc::new(link))
        })
        .collect();
    std::thread::scope(|s| {
        for pool in &pools {
            s.spawn(move || {
                let node = pool.node();
                match pool.reinit() {
                    Ok(_) => node.set_state(NodeState::Healthy),
                    Err(e) => {
                        let state = state_after_failed_open(&e);
                        tracing::error!(hsm = %node.name(), error = %e, ?state, "HSM cannot be opened at start");
                        node.record_error(&e);
                        node.set_state(state);
                    }
                }
            });
        }
    });
    pools
}
