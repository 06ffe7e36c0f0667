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

use super::aes;
use super::enrollment;
use super::error::{Fault, HsmError};
use super::handles::ObjectKind;
use super::health;
use super::hmac;
use super::instance::NodeConfig;
use super::integrity::{self, Expected, CHECK_LEN};
use super::job::WorkerCtx;
use super::keypair;
use super::kinds::{DataKeyPair, KeyKind, PairSpec, PairUse, SignScheme};
use super::mechanisms::IV_LEN;
use super::node::{HsmHealth, Node, NodeOptions, NodeState};
use super::replication::{Replicator, Transfer};
use super::worker::Pool;
use crate::pkix::{Curve, Hash};
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
        }
    }
}

/// A set of HSMs that each hold a copy of every key.
pub struct HsmCluster {
    hsms: Vec<Pool>,
    opts: ClusterOptions,
    rr: AtomicUsize,
    /// Recorded check values of the keys, shared with every HSM's workers.
    checks: Arc<Expected>,
}

impl HsmCluster {
    /// Open every HSM (blocking), then make sure the enrolled ones hold the same cluster
    /// wrapping key. Refuses to start with fewer than two HSMs configured, or when no
    /// enrolled HSM can be opened; an HSM that cannot be opened is started down (a refused
    /// PIN: failed), reported in [`HsmCluster::health`], retried in the background and
    /// proven (`enrollment::admit`) before it is used.
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
        let checks = Arc::new(Expected::default());
        let nopts = NodeOptions {
            workers: opts.workers_per_hsm,
            queue_depth: opts.queue_depth,
            keygen_workers: opts.keygen_workers_per_hsm,
            keygen_queue_depth: opts.keygen_queue_depth,
            keygen_timeout: opts.keygen_timeout,
            probe_interval: opts.probe_interval,
            probe_timeout: opts.call_timeout,
            iv: opts
                .iv_fixed_field
                .map(|f| Arc::new(super::iv::IvSource::new(f))),
            checks: checks.clone(),
        };
        // Every HSM that can be opened is; one that cannot (module missing, token folder
        // missing or unreadable, no token with its label…) is started `Down` (a refused PIN
        // `Failed`) with its error in the health report, and its monitor keeps trying.
        let mut hsms: Vec<Pool> = Vec::new();
        for cfg in cfgs {
            let node = Arc::new(Node::open(cfg, nopts.clone()));
            match Pool::start(node.clone()) {
                Ok(pool) => hsms.push(pool),
                Err(e) => {
                    node.shutdown();
                    hsms.iter().for_each(|p| p.node().shutdown());
                    return Err(e);
                }
            }
        }
        let cluster = HsmCluster {
            hsms,
            opts,
            rr: AtomicUsize::new(0),
            checks,
        };
        let t = cluster.opts.keygen_timeout;
        // Dropping the cluster on an error shuts every HSM down.
        enrollment::check(&cluster.hsms, t)?;
        for (i, pool) in cluster.hsms.iter().enumerate() {
            let peers = (cluster.hsms.iter().enumerate())
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.clone())
                .collect();
            health::watch(pool, enrollment::admitter(peers, t))?;
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

    /// Run `f` on one HSM; a retryable failure is retried once on another HSM.
    async fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: Fn(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
    {
        self.run_indexed(timeout, f).await.map(|(_, v)| v)
    }

    /// Have `pool`'s copy of secret key `id` verified again now (quarantined if it disagrees
    /// with its recorded check value); the outcome is logged, not returned.
    async fn reverify(&self, pool: &Pool, id: &[u8]) {
        let id = id.to_vec();
        let _ = pool
            .call(self.opts.call_timeout, move |ctx| {
                ctx.instance().handles.clear_verified(&id);
                ctx.handle(ObjectKind::Secret, &id).map(|_| ())
            })
            .await;
    }

    /// [`HsmCluster::run`], also naming (by index) the HSM that answered.
    async fn run_indexed<T, F>(&self, timeout: Duration, f: F) -> Result<(usize, T), HsmError>
    where
        T: Send + 'static,
        F: Fn(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let (first, pool) = self.pick(None).ok_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        })?;
        let f1 = f.clone();
        match pool.call(timeout, move |ctx| f1(ctx)).await {
            Ok(v) => Ok((first, v)),
            Err(e) if e.retryable() && e.fault() != Fault::Capacity => {
                pool.node().suspect(&e);
                let Some((i, second)) = self.pick(Some(first)) else {
                    return Err(e);
                };
                tracing::warn!(failed = %pool.node().name(), retry = %second.node().name(), error = %e, "failing over");
                second
                    .call(timeout, move |ctx| f(ctx))
                    .await
                    .map(|v| (i, v))
            }
            Err(e) => Err(e),
        }
    }

    /// Run `f` on one HSM like [`HsmCluster::run`]; with a `confirm` (paranoid mode: the
    /// callers build it, and copy what it needs, only then), also have another HSM confirm
    /// the answer (decrypt what was encrypted, compute the same MAC, verify the signature)
    /// before it leaves. An answer another HSM does not confirm is never sent: the first
    /// HSM's copy of key `id` is re-verified (and quarantined if it disagrees with its
    /// recorded check value) and the caller gets a retryable error.
    async fn run_confirmed<T, F, C>(
        &self,
        id: &[u8],
        f: F,
        confirm: Option<C>,
    ) -> Result<T, HsmError>
    where
        T: Send + Sync + 'static,
        F: Fn(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
        C: Fn(&mut WorkerCtx<'_>, &T) -> Result<bool, HsmError> + Send + Sync + 'static,
    {
        let timeout = self.opts.call_timeout;
        let Some(confirm) = confirm else {
            return self.run(timeout, f).await;
        };
        let (first, v) = self.run_indexed(timeout, f).await?;
        let Some((_, other)) = self.pick(Some(first)) else {
            // One usable HSM: nothing to confirm with (the copy was verified at first use).
            return Ok(v);
        };
        let v = Arc::new(v);
        let v2 = v.clone();
        let confirmed = other.call(timeout, move |ctx| confirm(ctx, &v2)).await?;
        if confirmed {
            return Arc::try_unwrap(v)
                .map_err(|_| HsmError::Internal("paranoid check kept the answer".into()));
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

    /// Run the key generation `f` in the key generation lane of one HSM (see
    /// [`health::keygen_order`]). A full lane sends it to the next HSM; a retryable failure
    /// other than capacity makes that HSM suspect and is retried once on another HSM, like
    /// [`HsmCluster::run`]. A deadline is answered at once (the caller has waited the whole
    /// key generation deadline already). Neither a full lane nor a deadline makes an HSM
    /// suspect.
    async fn run_keygen<T, F>(&self, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: Fn(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut failed_over = false;
        let mut last = None;
        for pool in health::keygen_order(&self.hsms) {
            let g = f.clone();
            match pool.keygen(move |ctx| g(ctx)).await {
                Ok(v) => return Ok(v),
                Err(e @ HsmError::KeygenBusy { .. }) => last = Some(e),
                Err(e) if e.retryable() && e.fault() != Fault::Capacity && !failed_over => {
                    pool.node().suspect(&e);
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
    pub fn expect_check_values(&self, values: Vec<(Vec<u8>, [u8; CHECK_LEN])>) {
        self.checks.extend(values);
    }

    /// Have every copy verified again at its next use (the periodic check: a token that
    /// does not reload its objects can still drift).
    pub fn reverify_copies(&self) {
        for p in &self.hsms {
            if let Some(i) = p.node().current() {
                i.handles.clear_all_verified();
            }
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
        let mut seen: Vec<(String, [u8; CHECK_LEN])> = Vec::new();
        for pool in health::usable(&self.hsms) {
            if !pool.node().has_object(ObjectKind::Secret, id) {
                continue;
            }
            let id2 = id.to_vec();
            let v = pool
                .call(self.opts.call_timeout, move |ctx| {
                    let h = ctx.find_handle(ObjectKind::Secret, &id2)?;
                    integrity::compute(ctx.session(), h, kind)
                        .map_err(|e| ctx.err(super::error::Operation::CheckValue, e))
                })
                .await?;
            if let Some(v) = v {
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
    /// the token when its instance opened): (HSM name, usable now, object ids).
    pub fn inventory(&self) -> Vec<(String, bool, Vec<Vec<u8>>)> {
        self.hsms
            .iter()
            .map(|p| {
                let node = p.node();
                let ids = node.current().map(|i| i.handles.ids()).unwrap_or_default();
                (node.name().to_string(), node.usable(), ids)
            })
            .collect()
    }

    /// Replication over this cluster's HSMs.
    fn replicator(&self) -> Replicator<'_> {
        Replicator {
            hsms: &self.hsms,
            min_copies: self.opts.min_copies,
            timeout: self.opts.keygen_timeout,
        }
    }

    /// AES-256-GCM encrypt under key `id` with an IV from the HSM: (IV, ciphertext ‖ tag).
    pub async fn encrypt(
        &self,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let confirm = self.opts.paranoid.then(|| {
            let (key, aad, pt) = (id.to_vec(), aad.clone(), plaintext.clone());
            move |ctx: &mut WorkerCtx<'_>, (iv, ct): &([u8; IV_LEN], Vec<u8>)| {
                let back = aes::gcm_decrypt(ctx, &key, iv, &aad, ct);
                Ok(matches!(back, Ok(b) if b.as_slice() == pt.as_slice()))
            }
        });
        let key = id.to_vec();
        self.run_confirmed(
            id,
            move |ctx| aes::gcm_encrypt(ctx, &key, &aad, &plaintext),
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
        let id = id.to_vec();
        let key = id.clone();
        let (first, pool) = self.pick(None).ok_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        })?;
        let decrypt = Arc::new(move |ctx: &mut WorkerCtx<'_>| {
            aes::gcm_decrypt(ctx, &id, &iv, &aad, &ciphertext)
        });
        let d1 = decrypt.clone();
        let e = match pool.call(self.opts.call_timeout, move |ctx| d1(ctx)).await {
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
        let v = second
            .call(self.opts.call_timeout, move |ctx| decrypt(ctx))
            .await?;
        if matches!(e, HsmError::InvalidCiphertext) {
            tracing::warn!(
                target: "hsm_kms::audit",
                failed = %pool.node().name(),
                opened = %second.node().name(),
                object = %hex::encode(&key),
                "a ciphertext failed authentication on one HSM and opened on another; \
                 re-verifying the first copy"
            );
            self.reverify(pool, &key).await;
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
            move |ctx: &mut WorkerCtx<'_>, (dk, iv, ct): &DataKey| {
                let back = aes::gcm_decrypt(ctx, &key, iv, &aad, ct);
                Ok(matches!(back, Ok(b) if b.as_slice() == dk.as_slice()))
            }
        });
        let key = id.to_vec();
        self.run_confirmed(
            id,
            move |ctx| {
                let dk = Zeroizing::new(ctx.random(n)?);
                let (iv, ct) = aes::gcm_encrypt(ctx, &key, &aad, &dk)?;
                Ok((dk, iv, ct))
            },
            confirm,
        )
        .await
    }

    /// Random bytes from an HSM.
    pub async fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        self.run(self.opts.call_timeout, move |ctx| ctx.random(n))
            .await
    }

    /// Create an AES-256 key with `CKA_ID = id` in one HSM and copy it into every other
    /// usable HSM under the cluster wrapping key, proving each copy with a GCM round trip.
    /// At least `min_copies` HSMs must end up holding it; on any failure every copy made is
    /// destroyed.
    pub async fn create_aes_key(&self, id: &[u8], label: &str) -> Result<(), HsmError> {
        let (i2, l2) = (id.to_vec(), label.to_string());
        self.replicator()
            .create(id, label, KeyKind::Aes, move |ctx| {
                aes::generate(ctx, &i2, &l2).map(|_| ())
            })
            .await
            .map(|_| ())
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
        let (i2, l2) = (id.to_vec(), label.to_string());
        let transfer = self
            .replicator()
            .create(id, label, KeyKind::Pair(spec, usage), move |ctx| {
                keypair::generate(ctx, &i2, &l2, spec, usage)
            })
            .await?;
        match &*transfer {
            Transfer::Pair(tr) => tr.public().spki(),
            _ => Err(HsmError::Internal("key pair expected".into())),
        }
    }

    /// Create an HMAC key of `len` bytes (`CKK_GENERIC_SECRET`, sign/verify) in one HSM and
    /// copy it into every other usable HSM, proving each copy with an HMAC.
    pub async fn create_hmac_key(
        &self,
        id: &[u8],
        label: &str,
        len: usize,
    ) -> Result<(), HsmError> {
        let (i2, l2) = (id.to_vec(), label.to_string());
        self.replicator()
            .create(id, label, KeyKind::Hmac(len), move |ctx| {
                hmac::generate(ctx, &i2, &l2, len)
            })
            .await
            .map(|_| ())
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
            let id = id.to_vec();
            if let Err(e) = pool
                .call(self.opts.keygen_timeout, move |ctx| ctx.destroy_all(&id))
                .await
            {
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
            move |ctx: &mut WorkerCtx<'_>, sig: &Vec<u8>| {
                keypair::verify(ctx, &key, scheme, &digest, sig)
            }
        });
        let key = id.to_vec();
        self.run_confirmed(
            id,
            move |ctx| keypair::sign(ctx, &key, scheme, &digest),
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
        let key = id.to_vec();
        let id = id.to_vec();
        let verify = Arc::new(move |ctx: &mut WorkerCtx<'_>| {
            keypair::verify(ctx, &id, scheme, &digest, &signature)
        });
        let v1 = verify.clone();
        let (first, valid) = self
            .run_indexed(self.opts.call_timeout, move |ctx| v1(ctx))
            .await?;
        if valid {
            return Ok(true);
        }
        // A signature refused by one HSM's copy of the public key is checked once on
        // another before it is answered invalid: a drifted copy must not refuse good ones.
        let Some((_, other)) = self.pick(Some(first)) else {
            return Ok(false);
        };
        let valid = other
            .call(self.opts.call_timeout, move |ctx| verify(ctx))
            .await?;
        if valid {
            let failed = self.hsms.get(first).map(|p| p.node().name().to_string());
            tracing::error!(
                target: "hsm_kms::audit",
                failed = ?failed,
                verified = %other.node().name(),
                object = %hex::encode(&key),
                "drift finding: a signature one HSM's copy of a public key refused verified on another"
            );
        }
        Ok(valid)
    }

    /// HMAC of `msg` under HMAC key `id`.
    pub async fn hmac(&self, id: &[u8], h: Hash, msg: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let confirm =
            self.opts.paranoid.then(|| {
                let (key, msg) = (id.to_vec(), msg.clone());
                move |ctx: &mut WorkerCtx<'_>, mac: &Vec<u8>| {
                    Ok(hmac::hmac(ctx, &key, h, &msg)? == *mac)
                }
            });
        let key = id.to_vec();
        self.run_confirmed(id, move |ctx| hmac::hmac(ctx, &key, h, &msg), confirm)
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
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            keypair::oaep_decrypt(ctx, &id, h, k, &ct)
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
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            keypair::ecdh(ctx, &id, curve, &peer_point)
        })
        .await
    }

    /// A data key pair generated inside an HSM (session objects, destroyed at once):
    /// (PKCS#8 DER private key, SPKI DER public key).
    pub async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, HsmError> {
        self.run_keygen(move |ctx| keypair::data_key_pair(ctx, spec))
            .await
    }

    /// State of every HSM.
    pub fn health(&self) -> Vec<HsmHealth> {
        self.hsms.iter().map(|p| p.node().report()).collect()
    }

    /// Names of the HSMs, in configuration order.
    pub fn hsm_names(&self) -> Vec<String> {
        self.hsms
            .iter()
            .map(|p| p.node().name().to_string())
            .collect()
    }

    /// True if the HSM's handle cache knows a secret key with this `CKA_ID`.
    pub fn hsm_holds(&self, hsm: &str, id: &[u8]) -> bool {
        self.hsms
            .iter()
            .any(|p| p.node().name() == hsm && p.node().has_object(ObjectKind::Secret, id))
    }

    /// True if the HSM's handle cache knows a private key with this `CKA_ID`.
    pub fn hsm_holds_private(&self, hsm: &str, id: &[u8]) -> bool {
        self.hsms
            .iter()
            .any(|p| p.node().name() == hsm && p.node().has_object(ObjectKind::Private, id))
    }

    /// Whether every HSM can hold (generate, use and replicate) Ed25519 keys.
    pub fn can_hold_ed25519_keys(&self) -> bool {
        self.hsms.iter().all(|p| p.node().ed25519_keys())
    }

    /// The capabilities found at connect on each HSM.
    pub fn capabilities(&self) -> Vec<(String, bool)> {
        self.hsms
            .iter()
            .map(|p| (p.node().name().to_string(), p.node().oaep_sha256()))
            .collect()
    }

    /// Run an operation on one named HSM (no failover): for tests and operator checks.
    pub async fn encrypt_on(
        &self,
        hsm: &str,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let pool = self.by_name(hsm)?;
        let id = id.to_vec();
        pool.call(self.opts.call_timeout, move |ctx| {
            aes::gcm_encrypt(ctx, &id, &aad, &plaintext)
        })
        .await
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
        let pool = self.by_name(hsm)?;
        let id = id.to_vec();
        pool.call(self.opts.call_timeout, move |ctx| {
            aes::gcm_decrypt(ctx, &id, &iv, &aad, &ciphertext)
        })
        .await
    }

    /// Sign on one named HSM (no failover): for tests and operator checks.
    pub async fn sign_on(
        &self,
        hsm: &str,
        id: &[u8],
        scheme: SignScheme,
        digest: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let pool = self.by_name(hsm)?;
        let id = id.to_vec();
        pool.call(self.opts.call_timeout, move |ctx| {
            keypair::sign(ctx, &id, scheme, &digest)
        })
        .await
    }

    /// Test hook: make every call into `hsm`'s module (worker jobs and health probes) hang
    /// for `d` inside the call gate before touching the token: a hung module.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_stall(&self, hsm: &str, d: Duration) -> Result<(), HsmError> {
        self.by_name(hsm)?.node().set_stall(d);
        Ok(())
    }

    /// Test hook: make every worker job on `hsm` (not its health probes) take `d` longer,
    /// inside the call gate: slow operations queued on its workers.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_job_stall(&self, hsm: &str, d: Duration) -> Result<(), HsmError> {
        self.by_name(hsm)?.node().set_job_stall(d);
        Ok(())
    }

    /// Stop worker threads and finalize every module instance.
    pub fn shutdown(&self) {
        for p in &self.hsms {
            p.node().shutdown();
        }
    }
}

impl Drop for HsmCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
