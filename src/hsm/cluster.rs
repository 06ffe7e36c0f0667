//! The cluster of ≥ 2 HSMs: node selection (healthy first, least in flight), per-request
//! failover to another HSM, enrollment of the cluster wrapping key (RSA-OAEP transport into
//! a key pair generated inside the receiving token), and key creation with replication
//! (generate in one token, wrap/unwrap into every other, prove each copy).

use super::asym::KeyKind;
use super::error::HsmError;
use super::node::{Node, NodeOptions, WorkerCtx, SECRET};
use super::ops::{self, IV_LEN};
use super::{HsmHealth, NodeConfig, NodeState};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// `CKA_ID` of the cluster wrapping key present in every token.
pub const CWK_ID: &[u8] = b"hsm-kms/cluster-wrapping-key";
const CWK_LABEL: &str = "hsm-kms cluster wrapping key";
pub(super) const PROOF_AAD: &[u8] = b"hsm-kms replication proof";

/// Tunables of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Worker threads (one session each) per HSM.
    pub workers_per_hsm: usize,
    /// Jobs that may wait per HSM before new ones are refused (and sent elsewhere).
    pub queue_depth: usize,
    /// Deadline of one cryptographic call.
    pub call_timeout: Duration,
    /// Deadline of key generation, replication and enrollment steps.
    pub keygen_timeout: Duration,
    /// Health probe period.
    pub probe_interval: Duration,
    /// HSMs that must hold a new key before it is acknowledged (at least 2).
    pub min_copies: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            workers_per_hsm: 2,
            queue_depth: 1024,
            call_timeout: Duration::from_millis(2000),
            keygen_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_millis(1000),
            min_copies: 2,
        }
    }
}

/// A set of HSMs that each hold a copy of every key.
pub struct HsmCluster {
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) opts: ClusterOptions,
    rr: AtomicUsize,
}

type Shared<F> = Arc<F>;

impl HsmCluster {
    /// Open every HSM (blocking), then make sure each holds the same cluster wrapping key.
    /// Refuses to start with fewer than two HSMs or if any HSM cannot be opened.
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
        let nopts = NodeOptions {
            workers: opts.workers_per_hsm,
            queue_depth: opts.queue_depth,
            probe_interval: opts.probe_interval,
            probe_timeout: opts.call_timeout,
        };
        let mut nodes = Vec::new();
        for cfg in cfgs {
            match Node::start(cfg, nopts.clone()) {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    nodes.iter().for_each(|n: &Arc<Node>| n.shutdown());
                    return Err(e);
                }
            }
        }
        let cluster = HsmCluster {
            nodes,
            opts,
            rr: AtomicUsize::new(0),
        };
        if let Err(e) = cluster.enroll() {
            cluster.shutdown();
            return Err(e);
        }
        Ok(cluster)
    }

    /// Enrollment: the first HSM that holds the cluster wrapping key (or HSM 0, which then
    /// generates it) sends it to every HSM lacking it by RSA-OAEP transport; then every HSM
    /// proves it holds the same key.
    fn enroll(&self) -> Result<(), HsmError> {
        let t = self.opts.keygen_timeout;
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].has_object(SECRET, CWK_ID))
            .collect();
        let source = match holders.first() {
            Some(i) => *i,
            None => {
                self.nodes[0].call_blocking(t, |ctx| {
                    let h = ctx
                        .session()
                        .generate_key(
                            &cryptoki::mechanism::Mechanism::AesKeyGen,
                            &[
                                vec![Attribute::ValueLen(32.into())],
                                ops::unwrapped_aes_template(CWK_ID, CWK_LABEL, true, true),
                            ]
                            .concat(),
                        )
                        .map_err(|e| ctx.err(e))?;
                    ctx.remember(SECRET, CWK_ID, h);
                    Ok(())
                })?;
                tracing::info!(hsm = %self.nodes[0].name(), "generated the cluster wrapping key");
                0
            }
        };
        for (i, node) in self.nodes.iter().enumerate() {
            if i == source || node.has_object(SECRET, CWK_ID) {
                continue;
            }
            let tid = format!("hsm-kms/transport/{}", uuid::Uuid::new_v4()).into_bytes();
            let tid2 = tid.clone();
            let (n, e) = node.call_blocking(t, move |ctx| ops::transport_keypair(ctx, &tid2))?;
            let wrapped = self.nodes[source]
                .call_blocking(t, move |ctx| ops::wrap_for_transport(ctx, CWK_ID, &n, &e))?;
            node.call_blocking(t, move |ctx| {
                ops::unwrap_from_transport(
                    ctx,
                    &tid,
                    &wrapped,
                    CWK_ID,
                    &ops::unwrapped_aes_template(CWK_ID, CWK_LABEL, true, true),
                )
            })?;
            tracing::info!(from = %self.nodes[source].name(), to = %node.name(), "cluster wrapping key enrolled");
        }
        // Proof: a throw-away key wrapped on HSM 0 unwraps and decrypts on every other HSM.
        let proof = self.nodes[0].call_blocking(t, |ctx| {
            let id = b"hsm-kms/cwk-proof".to_vec();
            let h = ctx
                .session()
                .generate_key(
                    &cryptoki::mechanism::Mechanism::AesKeyGen,
                    &session_aes(&id, true),
                )
                .map_err(|e| ctx.err(e))?;
            ctx.remember(SECRET, &id, h);
            let r = (|| {
                let wrapped = ops::wrap_secret(ctx, CWK_ID, &id)?;
                let pt = ops::random(ctx, 32)?;
                let (iv, ct) = ops::gcm_encrypt(ctx, &id, PROOF_AAD, &pt)?;
                Ok((wrapped, iv, pt, ct))
            })();
            let _ = ops::destroy(ctx, SECRET, &id);
            r
        })?;
        let proof = Arc::new(proof);
        for node in &self.nodes[1..] {
            let p = proof.clone();
            let hsm = node.name().to_string();
            node.call_blocking(t, move |ctx| {
                let id = b"hsm-kms/cwk-proof".to_vec();
                let (wrapped, iv, pt, ct) = &*p;
                let h = ctx.with_key(SECRET, CWK_ID, |s, w| {
                    s.unwrap_key(
                        &cryptoki::mechanism::Mechanism::AesKeyWrapPad,
                        w,
                        wrapped,
                        &session_aes(&id, false),
                    )
                });
                let h = h.map_err(|_| HsmError::Setup {
                    hsm: hsm.clone(),
                    message: "holds a different cluster wrapping key than the other HSMs".into(),
                })?;
                ctx.remember(SECRET, &id, h);
                let back = ops::gcm_decrypt(ctx, &id, iv, PROOF_AAD, ct);
                let _ = ops::destroy(ctx, SECRET, &id);
                match back {
                    Ok(b) if b.as_slice() == pt.as_slice() => Ok(()),
                    _ => Err(HsmError::Setup {
                        hsm,
                        message: "holds a different cluster wrapping key than the other HSMs"
                            .into(),
                    }),
                }
            })?;
        }
        Ok(())
    }

    /// Pick a usable HSM: healthy before suspect, then fewest calls in flight.
    fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let n = self.nodes.len();
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| Some(*i) != exclude && self.nodes[*i].usable())
            .min_by_key(|i| {
                let node = &self.nodes[*i];
                (node.state() != NodeState::Healthy, node.inflight())
            })
    }

    /// Run `f` on one HSM; a failure that another HSM may not share is retried once there.
    pub(super) async fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: Fn(&mut WorkerCtx<'_>) -> Result<T, HsmError> + Send + Sync + 'static,
    {
        let f: Shared<F> = Arc::new(f);
        let first = self.pick(None).ok_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: 1,
        })?;
        let f1 = f.clone();
        match self.nodes[first].call(timeout, move |ctx| f1(ctx)).await {
            Ok(v) => Ok(v),
            Err(e) if e.retry_elsewhere() => {
                self.nodes[first].suspect(&e);
                let Some(second) = self.pick(Some(first)) else {
                    return Err(e);
                };
                tracing::warn!(failed = %self.nodes[first].name(), retry = %self.nodes[second].name(), error = %e, "failing over");
                self.nodes[second].call(timeout, move |ctx| f(ctx)).await
            }
            Err(e) => Err(e),
        }
    }

    /// AES-256-GCM encrypt under key `id` with an IV from the HSM: (IV, ciphertext ‖ tag).
    pub async fn encrypt(
        &self,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            ops::gcm_encrypt(ctx, &id, &aad, &plaintext)
        })
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
        self.run(self.opts.call_timeout, move |ctx| {
            ops::gcm_decrypt(ctx, &id, &iv, &aad, &ciphertext)
        })
        .await
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
        let id = id.to_vec();
        self.run(self.opts.call_timeout, move |ctx| {
            let dk = Zeroizing::new(ops::random(ctx, n)?);
            let (iv, ct) = ops::gcm_encrypt(ctx, &id, &aad, &dk)?;
            Ok((dk, iv, ct))
        })
        .await
    }

    /// Random bytes from an HSM.
    pub async fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        self.run(self.opts.call_timeout, move |ctx| ops::random(ctx, n))
            .await
    }

    pub(super) fn usable_nodes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].usable())
            .collect();
        v.sort_by_key(|i| self.nodes[*i].state() != NodeState::Healthy);
        v
    }

    /// Create an AES-256 key with `CKA_ID = id` in one HSM and copy it into every other
    /// usable HSM under the cluster wrapping key, proving each copy with a GCM round trip.
    /// At least `min_copies` HSMs must end up holding it; on any failure every copy made is
    /// destroyed.
    pub async fn create_aes_key(&self, id: &[u8], label: &str) -> Result<(), HsmError> {
        let (i2, l2) = (id.to_vec(), label.to_string());
        self.create_replicated(id, label, KeyKind::Aes, move |ctx| {
            ops::generate_aes(ctx, &i2, &l2).map(|_| ())
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

    /// Destroy a key on every HSM. Fails (so the caller retries later) unless every HSM
    /// answered; HSMs that never held it count as done.
    pub async fn destroy_key(&self, id: &[u8]) -> Result<(), HsmError> {
        let mut first_err = None;
        for node in &self.nodes {
            let id = id.to_vec();
            if let Err(e) = node
                .call(self.opts.keygen_timeout, move |ctx| {
                    super::asym::destroy_all(ctx, &id)
                })
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// State of every HSM.
    pub fn health(&self) -> Vec<HsmHealth> {
        self.nodes
            .iter()
            .map(|n| HsmHealth {
                name: n.name().to_string(),
                state: n.state(),
                in_flight: n.inflight(),
                login_epoch: n.epoch(),
                cached_handles: n.cached_handles(),
                request_finds: n.find_count(),
                reinitializations: n.reinit_count(),
                last_error: n.last_error(),
            })
            .collect()
    }

    /// Names of the HSMs, in configuration order.
    pub fn hsm_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name().to_string()).collect()
    }

    /// True if the HSM's handle cache knows a secret key with this `CKA_ID`.
    pub fn hsm_holds(&self, hsm: &str, id: &[u8]) -> bool {
        self.nodes
            .iter()
            .any(|n| n.name() == hsm && n.has_object(SECRET, id))
    }

    /// Run an operation on one named HSM (no failover): for tests and operator checks.
    pub async fn encrypt_on(
        &self,
        hsm: &str,
        id: &[u8],
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<([u8; IV_LEN], Vec<u8>), HsmError> {
        let node = self.node(hsm)?;
        let id = id.to_vec();
        node.call(self.opts.call_timeout, move |ctx| {
            ops::gcm_encrypt(ctx, &id, &aad, &plaintext)
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
        let node = self.node(hsm)?;
        let id = id.to_vec();
        node.call(self.opts.call_timeout, move |ctx| {
            ops::gcm_decrypt(ctx, &id, &iv, &aad, &ciphertext)
        })
        .await
    }

    fn node(&self, hsm: &str) -> Result<&Arc<Node>, HsmError> {
        self.nodes
            .iter()
            .find(|n| n.name() == hsm)
            .ok_or_else(|| HsmError::Internal(format!("no HSM named {hsm}")))
    }

    /// Test hook: make every call on `hsm` hang for `d` before touching the token.
    #[doc(hidden)]
    pub fn inject_stall(&self, hsm: &str, d: Duration) -> Result<(), HsmError> {
        self.node(hsm)?.set_stall(d);
        Ok(())
    }

    /// Stop worker threads and finalize every module instance.
    pub fn shutdown(&self) {
        for n in &self.nodes {
            n.shutdown();
        }
    }
}

impl Drop for HsmCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A throw-away session AES key (for proofs).
fn session_aes(id: &[u8], with_len: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Id(id.to_vec()),
    ];
    if with_len {
        t.push(Attribute::ValueLen(32.into()));
    }
    t
}
