//! Throughput benchmark of the HSM layer against raw PKCS#11 (hsm-facts.md §2 and §8.iii):
//! AES-256-GCM encrypt on a token key, measured in one process and one run so that the
//! ratio "layer / raw" is meaningful on a noisy machine.
//!
//! * **raw**: cryptoki `Session::encrypt` (C_EncryptInit + 2 × C_Encrypt) on a separate
//!   SoftHSM2 token of our own, one logged-in session per thread, `threads` threads. Two
//!   variants: IV from a counter (what `p11-limit` measures) and IV from
//!   `C_GenerateRandom(12)` per operation, which is what the layer does
//!   ([`HsmCluster::encrypt`] draws every IV from the HSM). The like-for-like ratio uses
//!   the second one.
//! * **layer**: [`HsmCluster`] over two tokens with `threads` workers per HSM, driven by
//!   [`LAYER_CALLERS`] concurrent tokio tasks so the workers never wait for work. One row
//!   pins every call to one HSM ([`HsmCluster::encrypt_on`]), one lets the cluster choose.
//!
//! Every key is an AES-256 token object (`CKA_TOKEN`, sensitive, private), made the way the
//! KMS makes them. The variants alternate within each repetition (with a rotating order)
//! and every row reports the median over the repetitions.
//!
//! [`run_raw_ops`] measures raw PKCS#11 alone for each operation `scripts/bench.sh` drives
//! over HTTP, doing in the token exactly the calls the service's HSM job does for it (keys
//! made with the service's templates, `threads` threads with a logged-in session each), so
//! the script can print each HTTP figure beside its raw one from the same run:
//!
//! | [`RawOp`] | KMS call | PKCS#11 per operation |
//! |---|---|---|
//! | `encrypt` | Encrypt `size` B | `C_EncryptInit`/`C_Encrypt` `CKM_AES_GCM`, IV from a counter, 56 B AAD |
//! | `decrypt` | Decrypt | `C_DecryptInit`/`C_Decrypt` `CKM_AES_GCM` of that ciphertext |
//! | `generate-data-key` | GenerateDataKey AES_256 | `C_GenerateRandom` 32 B + GCM encrypt of it |
//! | `sign-ecdsa-p256` | Sign ECDSA_SHA_256 DIGEST | `C_SignInit`/`C_Sign` `CKM_ECDSA`, P-256 |
//! | `sign-rsa-2048-pss` | Sign RSASSA_PSS_SHA_256 DIGEST | `CKM_RSA_PKCS_PSS` SHA-256, RSA-2048 |
//! | `generate-mac` | GenerateMac HMAC_SHA_256 `size` B | `CKM_SHA256_HMAC`, 32-byte key |

use super::cluster::{ClusterOptions, HsmCluster};
use super::error::{HsmError, Operation};
use super::instance::{find_slot, load_module};
use super::kinds::{PairSpec, PairUse, SignScheme};
use super::mechanisms;
use super::mechanisms::IV_LEN;
use super::softhsm::{self, LocalHsm};
use super::templates;
use crate::pkix::{Curve, Hash};
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Concurrent callers that keep the layer's workers busy.
pub const LAYER_CALLERS: usize = 64;

/// 56 bytes of AAD, the size `p11-limit` uses (an encryption-context-like string).
const AAD: &[u8; 56] = b"kms-context:arn:aws:kms:eu-west-1:111122223333:key/bench";
const KEY_ID: &[u8] = b"hsm-kms/bench/gcm";
const RAW_HSM: &str = "bench-raw";
const LAYER_HSMS: [&str; 2] = ["bench-a", "bench-b"];

const ROW_RAW_COUNTER: &str = "raw PKCS#11, IV from a counter";
const ROW_RAW_RANDOM: &str = "raw PKCS#11, IV from C_GenerateRandom";
const ROW_LAYER_ONE: &str = "layer, 1 HSM (encrypt_on)";
const ROW_LAYER_CLUSTER: &str = "layer, cluster (2 HSMs, encrypt)";

/// One measured line.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Which variant was measured (raw PKCS#11 or the layer, and how).
    pub name: String,
    /// Threads on the raw side; worker threads per HSM on the layer side.
    pub threads: usize,
    /// Median over the repetitions.
    pub ops_per_sec: f64,
    /// Slowest repetition (ops/s).
    pub min: f64,
    /// Fastest repetition (ops/s).
    pub max: f64,
}

/// The result of [`run_gcm_bench`]; `Display` prints a markdown table and the ratio line.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// One row per variant, raw rows first.
    pub rows: Vec<BenchRow>,
    /// One line describing the parameters (size, duration, repetitions, filler keys).
    pub setup: String,
}

impl BenchReport {
    fn row(&self, name: &str) -> Option<&BenchRow> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// Like-for-like ratio: layer pinned to one HSM ÷ raw with an HSM-drawn IV.
    pub fn ratio(&self) -> Option<f64> {
        let raw = self.row(ROW_RAW_RANDOM)?.ops_per_sec;
        let layer = self.row(ROW_LAYER_ONE)?.ops_per_sec;
        (raw > 0.0).then(|| layer / raw)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.setup)?;
        writeln!(f)?;
        writeln!(
            f,
            "| operation | threads | ops/s (median) | min–max | vs raw (C_GenerateRandom IV) |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        let base = self.row(ROW_RAW_RANDOM).map(|r| r.ops_per_sec);
        for r in &self.rows {
            let vs = match base {
                Some(b) if b > 0.0 => format!("{:.2}", r.ops_per_sec / b),
                _ => "–".into(),
            };
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.0}–{:.0} | {} |",
                r.name, r.threads, r.ops_per_sec, r.min, r.max, vs
            )?;
        }
        writeln!(f)?;
        match self.ratio() {
            Some(x) => write!(
                f,
                "layer/raw = {x:.2} (layer 1 HSM ÷ raw with C_GenerateRandom IV; {:+.0} %)",
                (x - 1.0) * 100.0
            ),
            None => write!(f, "layer/raw = n/a"),
        }
    }
}

/// Raw PKCS#11 AES-256-GCM encrypt of `size` bytes side by side with the same operation
/// through [`HsmCluster`], in one process and one run: `reps` repetitions of `secs` seconds
/// each, variants alternating, median per row. `filler_keys` extra AES keys are first
/// added to every token (0 = none; SoftHSM2 writes ~100 keys/s per token).
///
/// Tokens are made in a fresh folder under `dir`, removed at the end. Blocking: it runs on
/// its own thread with its own tokio runtime, so it may be called from anywhere (inside an
/// async context, wrap it in `spawn_blocking`).
pub fn run_gcm_bench(
    dir: &Path,
    size: usize,
    threads: usize,
    secs: f64,
    reps: usize,
    filler_keys: usize,
) -> Result<BenchReport, HsmError> {
    if threads == 0 || reps == 0 || !(secs > 0.0 && secs.is_finite()) {
        return Err(HsmError::Internal(
            "bench: threads, reps and secs must be positive".into(),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| HsmError::Internal(format!("bench: create {}: {e}", dir.display())))?;
    let work = dir.join(format!("hsm-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let p = Params {
        size,
        threads,
        dur: Duration::from_secs_f64(secs),
        reps,
        filler_keys,
    };
    let r = std::thread::scope(|s| {
        s.spawn(|| bench_in(&work, &p))
            .join()
            .unwrap_or_else(|_| Err(HsmError::Internal("bench thread panicked".into())))
    });
    let _ = std::fs::remove_dir_all(&work);
    r
}

struct Params {
    size: usize,
    threads: usize,
    dur: Duration,
    reps: usize,
    filler_keys: usize,
}

fn bench_in(work: &Path, p: &Params) -> Result<BenchReport, HsmError> {
    let so = super::ceremony::SoPin::random();
    let raw_hsm = softhsm::provision(work, RAW_HSM, &so)?;
    let layer_hsms = softhsm::provision_cluster(work, &LAYER_HSMS, &so)?;
    if p.filler_keys > 0 {
        // Before any module instance below opens these tokens; one thread per token.
        std::thread::scope(|s| {
            let hs: Vec<_> = std::iter::once(&raw_hsm)
                .chain(&layer_hsms)
                .map(|h| s.spawn(move || softhsm::add_filler_keys(h, p.filler_keys)))
                .collect();
            hs.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(HsmError::Internal("filler thread panicked".into())))
            })
        })?;
    }

    let raw = RawToken::open(&raw_hsm)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| HsmError::Internal(format!("bench: tokio runtime: {e}")))?;
    let cfgs = layer_hsms
        .iter()
        .map(LocalHsm::node_config)
        .collect::<Result<Vec<_>, _>>()?;
    let opts = ClusterOptions {
        workers_per_hsm: p.threads,
        ..ClusterOptions::default()
    };
    let cluster = Arc::new(HsmCluster::connect(cfgs, opts)?);
    rt.block_on(cluster.create_aes_key(KEY_ID, "hsm-kms bench"))?;

    let plaintext = vec![0x5Au8; p.size];
    let warm = p.dur.min(Duration::from_millis(200));
    let variants: [&str; 4] = [
        ROW_RAW_COUNTER,
        ROW_RAW_RANDOM,
        ROW_LAYER_ONE,
        ROW_LAYER_CLUSTER,
    ];
    let run = |name: &str, dur: Duration| -> Result<f64, HsmError> {
        match name {
            ROW_RAW_COUNTER => raw.measure(p.threads, dur, &plaintext, false),
            ROW_RAW_RANDOM => raw.measure(p.threads, dur, &plaintext, true),
            ROW_LAYER_ONE => rt.block_on(layer_measure(&cluster, true, dur, &plaintext)),
            _ => rt.block_on(layer_measure(&cluster, false, dur, &plaintext)),
        }
    };
    for v in variants {
        run(v, warm)?;
    }
    let mut samples: Vec<(&str, Vec<f64>)> = variants
        .iter()
        .map(|name| (*name, Vec::with_capacity(p.reps)))
        .collect();
    for rep in 0..p.reps {
        // Rotate which variant goes first: from variant `rep % 4` to the last, then the rest.
        let (before, from) = samples
            .split_at_mut_checked(rep % variants.len())
            .ok_or_else(|| HsmError::Internal("bench: variant rotation out of range".into()))?;
        for (name, v) in from.iter_mut().chain(before) {
            v.push(run(name, p.dur)?);
        }
    }
    let rows = samples
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            let (Some(ops_per_sec), Some(&min), Some(&max)) = (median(&v), v.first(), v.last())
            else {
                return Err(HsmError::Internal(format!("bench: no samples for {name}")));
            };
            Ok(BenchRow {
                name: name.to_string(),
                threads: p.threads,
                ops_per_sec,
                min,
                max,
            })
        })
        .collect::<Result<Vec<_>, HsmError>>();

    drop(rt);
    cluster.shutdown();
    drop(raw);
    Ok(BenchReport {
        rows: rows?,
        setup: format!(
            "AES-256-GCM encrypt of {} B, {} B AAD, token-object keys; {} × {:.2} s per row \
             (median); {} extra keys per token; layer driven by {} concurrent tasks; \
             the raw 'C_GenerateRandom' row draws a 12-byte IV from the HSM per op, as the layer does.",
            p.size,
            AAD.len(),
            p.reps,
            p.dur.as_secs_f64(),
            p.filler_keys,
            LAYER_CALLERS
        ),
    })
}

/// Median of sorted samples; `None` when there are none.
fn median(sorted: &[f64]) -> Option<f64> {
    let (lower, upper) = sorted.split_at_checked(sorted.len() / 2)?;
    let mid = *upper.first()?;
    if sorted.len() % 2 == 1 {
        Some(mid)
    } else {
        Some((lower.last()? + mid) / 2.0)
    }
}

/// `LAYER_CALLERS` tasks call the layer in a loop until the deadline; total ops ÷ time
/// until the last one returned.
async fn layer_measure(
    cluster: &Arc<HsmCluster>,
    pinned: bool,
    dur: Duration,
    plaintext: &[u8],
) -> Result<f64, HsmError> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..LAYER_CALLERS)
        .map(|_| {
            let (c, done, pt) = (cluster.clone(), done.clone(), plaintext.to_vec());
            tokio::spawn(async move {
                while Instant::now() < end {
                    if pinned {
                        c.encrypt_on(LAYER_HSMS[0], KEY_ID, AAD.to_vec(), pt.clone())
                            .await?;
                    } else {
                        c.encrypt(KEY_ID, AAD.to_vec(), Zeroizing::new(pt.clone()))
                            .await?;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), HsmError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| HsmError::Internal(format!("bench task: {e}")))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// One raw PKCS#11 operation: `(session, thread, n)`.
type RawFn<'a> = dyn Fn(&Session, usize, u64) -> Result<(), CkError> + Sync + 'a;

/// A 12-byte GCM IV from a counter, distinct per thread: `thread ‖ 0 0 0 ‖ n`.
fn counter_iv(thread: usize, n: u64) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    let t = (thread as u32).to_be_bytes();
    for (d, s) in iv.iter_mut().zip(t.iter().chain(&n.to_be_bytes())) {
        *d = *s;
    }
    iv
}

/// The operations [`run_raw_ops`] measures (the table in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp {
    /// AES-256-GCM encrypt of `size` bytes, IV from a counter.
    Encrypt,
    /// AES-256-GCM decrypt of `size` bytes.
    Decrypt,
    /// 32 random bytes from the token, GCM-encrypted.
    GenerateDataKey,
    /// ECDSA P-256 signature of a 32-byte digest.
    SignEcdsaP256,
    /// RSA-2048 PSS (SHA-256) signature of a 32-byte digest.
    SignRsa2048Pss,
    /// HMAC-SHA-256 of `size` bytes.
    GenerateMac,
}

impl RawOp {
    /// Every operation, in table order.
    pub const ALL: [RawOp; 6] = [
        RawOp::Encrypt,
        RawOp::Decrypt,
        RawOp::GenerateDataKey,
        RawOp::SignEcdsaP256,
        RawOp::SignRsa2048Pss,
        RawOp::GenerateMac,
    ];

    /// The name `--ops` takes and `RAW op=` prints.
    pub fn name(self) -> &'static str {
        match self {
            RawOp::Encrypt => "encrypt",
            RawOp::Decrypt => "decrypt",
            RawOp::GenerateDataKey => "generate-data-key",
            RawOp::SignEcdsaP256 => "sign-ecdsa-p256",
            RawOp::SignRsa2048Pss => "sign-rsa-2048-pss",
            RawOp::GenerateMac => "generate-mac",
        }
    }

    fn describe(self, size: usize) -> String {
        match self {
            RawOp::Encrypt => format!("AES-256-GCM encrypt {size} B (counter IV)"),
            RawOp::Decrypt => format!("AES-256-GCM decrypt {size} B"),
            RawOp::GenerateDataKey => "C_GenerateRandom 32 B + AES-256-GCM encrypt".into(),
            RawOp::SignEcdsaP256 => "ECDSA P-256 sign (CKM_ECDSA, 32 B digest)".into(),
            RawOp::SignRsa2048Pss => "RSA-2048 PSS sign (SHA-256, 32 B digest)".into(),
            RawOp::GenerateMac => format!("HMAC-SHA-256 of {size} B"),
        }
    }
}

impl std::str::FromStr for RawOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        RawOp::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = RawOp::ALL.iter().map(|o| o.name()).collect();
                format!("unknown operation {s:?} (one of {})", names.join(", "))
            })
    }
}

/// The result of [`run_raw_ops`]; `Display` prints a markdown table, then one
/// `RAW op=<name> threads=<n> ops_per_sec=<median> min=<..> max=<..>` line per operation.
#[derive(Debug, Clone)]
pub struct RawReport {
    /// One row per operation, with the operation it measured.
    pub rows: Vec<(RawOp, BenchRow)>,
    /// One line describing the parameters.
    pub setup: String,
}

impl std::fmt::Display for RawReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.setup)?;
        writeln!(f)?;
        writeln!(
            f,
            "| raw PKCS#11 operation | threads | ops/s (median) | min–max |"
        )?;
        writeln!(f, "|---|---:|---:|---:|")?;
        for (_, r) in &self.rows {
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.0}–{:.0} |",
                r.name, r.threads, r.ops_per_sec, r.min, r.max
            )?;
        }
        writeln!(f)?;
        for (op, r) in &self.rows {
            writeln!(
                f,
                "RAW op={} threads={} ops_per_sec={:.1} min={:.1} max={:.1}",
                op.name(),
                r.threads,
                r.ops_per_sec,
                r.min,
                r.max
            )?;
        }
        Ok(())
    }
}

/// Raw PKCS#11 alone, for each of `ops`, on a fresh SoftHSM2 token under `dir`: `threads`
/// threads (one logged-in session each), a 0.2 s warm-up, then `reps` × `secs` per
/// operation (operations alternating within each repetition), median per row. `size` is
/// the plaintext or message size of `encrypt`, `decrypt` and `generate-mac`. Blocking.
pub fn run_raw_ops(
    dir: &Path,
    ops: &[RawOp],
    size: usize,
    threads: usize,
    secs: f64,
    reps: usize,
) -> Result<RawReport, HsmError> {
    if threads == 0 || reps == 0 || ops.is_empty() || !(secs > 0.0 && secs.is_finite()) {
        return Err(HsmError::Internal(
            "bench: ops, threads, reps and secs must be given and positive".into(),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| HsmError::Internal(format!("bench: create {}: {e}", dir.display())))?;
    let work = dir.join(format!("hsm-raw-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            raw_ops_in(
                &work,
                ops,
                size,
                threads,
                Duration::from_secs_f64(secs),
                reps,
            )
        })
        .join()
        .unwrap_or_else(|_| Err(HsmError::Internal("bench thread panicked".into())))
    });
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn raw_ops_in(
    work: &Path,
    ops: &[RawOp],
    size: usize,
    threads: usize,
    dur: Duration,
    reps: usize,
) -> Result<RawReport, HsmError> {
    let so = super::ceremony::SoPin::random();
    let hsm = softhsm::provision(work, RAW_HSM, &so)?;
    let raw = RawToken::open(&hsm)?;
    let keys = raw.keys_for_ops(size)?;
    let plaintext = vec![0x5Au8; size];
    let digest = [0x66u8; 32];
    let run = |op: RawOp, dur: Duration| -> Result<f64, HsmError> {
        let aes = raw.key;
        match op {
            RawOp::Encrypt => raw.measure(threads, dur, &plaintext, false),
            RawOp::Decrypt => {
                raw.measure_with(threads, dur, Operation::AesGcmDecrypt, &|s, _, _| {
                    let mut iv = DECRYPT_IV;
                    s.decrypt(&mechanisms::gcm(&mut iv, AAD)?, aes, &keys.ciphertext)?;
                    Ok(())
                })
            }
            RawOp::GenerateDataKey => {
                raw.measure_with(threads, dur, Operation::AesGcmEncrypt, &|s, t, n| {
                    let dk = Zeroizing::new(s.generate_random_vec(32)?);
                    let mut iv = counter_iv(t, n);
                    s.encrypt(&mechanisms::gcm(&mut iv, AAD)?, aes, &dk)?;
                    Ok(())
                })
            }
            // Mechanisms are not `Sync`: each call builds its own, as the service's jobs do.
            RawOp::SignEcdsaP256 => raw.measure_with(threads, dur, Operation::Sign, &|s, _, _| {
                let (mech, input) = mechanisms::sign(SignScheme::Ecdsa(Curve::P256), &digest);
                s.sign(&mech, keys.ec, &input).map(drop)
            }),
            RawOp::SignRsa2048Pss => raw.measure_with(threads, dur, Operation::Sign, &|s, _, _| {
                let (mech, input) = mechanisms::sign(SignScheme::RsaPss(Hash::Sha256), &digest);
                s.sign(&mech, keys.rsa, &input).map(drop)
            }),
            RawOp::GenerateMac => raw.measure_with(threads, dur, Operation::Hmac, &|s, _, _| {
                s.sign(&mechanisms::hmac(Hash::Sha256), keys.hmac, &plaintext)
                    .map(drop)
            }),
        }
    };
    let warm = dur.min(Duration::from_millis(200));
    let mut samples: Vec<(RawOp, Vec<f64>)> = Vec::with_capacity(ops.len());
    for &op in ops {
        run(op, warm)?;
        samples.push((op, Vec::with_capacity(reps)));
    }
    for rep in 0..reps {
        let (before, from) = samples
            .split_at_mut_checked(rep % ops.len())
            .ok_or_else(|| HsmError::Internal("bench: rotation out of range".into()))?;
        for (op, v) in from.iter_mut().chain(before) {
            v.push(run(*op, dur)?);
        }
    }
    drop(raw);
    let rows = samples
        .into_iter()
        .map(|(op, mut v)| {
            v.sort_by(f64::total_cmp);
            let (Some(ops_per_sec), Some(&min), Some(&max)) = (median(&v), v.first(), v.last())
            else {
                return Err(HsmError::Internal(format!(
                    "bench: no samples for {}",
                    op.name()
                )));
            };
            Ok((
                op,
                BenchRow {
                    name: op.describe(size),
                    threads,
                    ops_per_sec,
                    min,
                    max,
                },
            ))
        })
        .collect::<Result<Vec<_>, HsmError>>()?;
    Ok(RawReport {
        rows,
        setup: format!(
            "raw PKCS#11 on one SoftHSM2 token, {threads} threads (one session each), token-object \
             keys made with the service's templates; {reps} × {:.2} s per row (median); \
             {size} B plaintext/message, {} B AAD",
            dur.as_secs_f64(),
            AAD.len()
        ),
    })
}

/// The IV of the ciphertext the raw `decrypt` row replays.
const DECRYPT_IV: [u8; IV_LEN] = [7; IV_LEN];

/// The other keys of the raw rows, on the [`RawToken`]'s token.
struct RawKeys {
    ec: ObjectHandle,
    rsa: ObjectHandle,
    hmac: ObjectHandle,
    /// `size` bytes under the AES key with [`DECRYPT_IV`].
    ciphertext: Vec<u8>,
}

/// Our own SoftHSM2 token for the raw side: its module copy, a keeper session that keeps
/// the token logged in, and one AES-256 token key.
struct RawToken {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    keeper: Option<cryptoki::session::Session>,
}

impl RawToken {
    fn open(hsm: &LocalHsm) -> Result<RawToken, HsmError> {
        let ck = |op: Operation| move |e: CkError| HsmError::from_ck(&hsm.name, op, e);
        let cfg = hsm.node_config()?;
        let ctx = load_module(&hsm.module, &cfg.env).map_err(ck(Operation::LoadModule))?;
        let opened = (|| {
            let slot = find_slot(&ctx, &hsm.label)
                .map_err(ck(Operation::FindToken))?
                .ok_or_else(|| HsmError::Setup {
                    hsm: hsm.name.clone(),
                    message: "bench token not found".into(),
                })?;
            let keeper = ctx
                .open_rw_session(slot)
                .map_err(ck(Operation::OpenSession))?;
            keeper
                .login(UserType::User, Some(&AuthPin::new(cfg.pin.as_str().into())))
                .map_err(ck(Operation::Login))?;
            // Same template as the layer's keys (sensitive, private, token, extractable
            // only under wrapping for replication).
            let key = keeper
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &templates::aes_key(KEY_ID, "hsm-kms bench raw", true),
                )
                .map_err(ck(Operation::GenerateKey))?;
            Ok((slot, keeper, key))
        })();
        match opened {
            Ok((slot, keeper, key)) => Ok(RawToken {
                ctx,
                slot,
                key,
                keeper: Some(keeper),
            }),
            Err(e) => {
                let _ = ctx.finalize();
                Err(e)
            }
        }
    }

    /// An ECDSA P-256 and an RSA-2048 signing pair and a 32-byte HMAC key (token objects,
    /// the service's templates), and the ciphertext of `size` bytes the decrypt row replays.
    fn keys_for_ops(&self, size: usize) -> Result<RawKeys, HsmError> {
        let ck = |op: Operation| move |e: CkError| HsmError::from_ck(RAW_HSM, op, e);
        let s = self
            .keeper
            .as_ref()
            .ok_or_else(|| HsmError::Internal("bench: no session".into()))?;
        let pair = |spec: PairSpec, mech: Mechanism<'_>, id: &[u8]| {
            let mut public =
                templates::generated_public_key(id, "hsm-kms bench raw", PairUse::Sign);
            public.extend(templates::key_pair_params(spec));
            let private =
                templates::private_key(spec, id, "hsm-kms bench raw", PairUse::Sign, false);
            s.generate_key_pair(&mech, &public, &private)
                .map(|(_, private)| private)
                .map_err(ck(Operation::GenerateKeyPair))
        };
        let ec = pair(
            PairSpec::Ec(Curve::P256),
            Mechanism::EccKeyPairGen,
            b"bench/ec",
        )?;
        let rsa = pair(
            PairSpec::Rsa(2048),
            Mechanism::RsaPkcsKeyPairGen,
            b"bench/rsa",
        )?;
        let hmac = s
            .generate_key(
                &Mechanism::GenericSecretKeyGen,
                &templates::generated_hmac_key(b"bench/hmac", "hsm-kms bench raw", 32),
            )
            .map_err(ck(Operation::GenerateKey))?;
        let mut iv = DECRYPT_IV;
        let ciphertext = s
            .encrypt(
                &mechanisms::gcm(&mut iv, AAD).map_err(ck(Operation::AesGcmEncrypt))?,
                self.key,
                &vec![0x5Au8; size],
            )
            .map_err(ck(Operation::AesGcmEncrypt))?;
        Ok(RawKeys {
            ec,
            rsa,
            hmac,
            ciphertext,
        })
    }

    /// `threads` threads, one session each, encrypt in a loop for `dur`; total ops/s.
    fn measure(
        &self,
        threads: usize,
        dur: Duration,
        plaintext: &[u8],
        random_iv: bool,
    ) -> Result<f64, HsmError> {
        let key = self.key;
        self.measure_with(threads, dur, Operation::AesGcmEncrypt, &|session, t, n| {
            let mut iv = [0u8; IV_LEN];
            if random_iv {
                session.generate_random_slice(&mut iv)?;
            } else {
                iv = counter_iv(t, n);
            }
            session.encrypt(&mechanisms::gcm(&mut iv, AAD)?, key, plaintext)?;
            Ok(())
        })
    }

    /// `threads` threads, one session each, run `op(session, thread, n)` in a loop for
    /// `dur`; total ops/s. A failure is reported as operation `what`.
    fn measure_with(
        &self,
        threads: usize,
        dur: Duration,
        what: Operation,
        op: &RawFn<'_>,
    ) -> Result<f64, HsmError> {
        let ck = |op: Operation| move |e: CkError| HsmError::from_ck(RAW_HSM, op, e);
        let barrier = Barrier::new(threads + 1);
        // Only the Sync parts go to the threads (the keeper session stays here).
        let (ctx, slot) = (&self.ctx, self.slot);
        let (total, elapsed) = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || -> Result<u64, HsmError> {
                        let session = ctx.open_rw_session(slot);
                        barrier.wait();
                        let session = session.map_err(ck(Operation::OpenSession))?;
                        let end = Instant::now() + dur;
                        let mut n: u64 = 0;
                        while Instant::now() < end {
                            op(&session, t, n).map_err(ck(what))?;
                            n += 1;
                        }
                        Ok(n)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut total = 0u64;
            let mut first_err = None;
            for h in hs {
                match h.join() {
                    Ok(Ok(n)) => total += n,
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(HsmError::Internal("raw thread panicked".into()));
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok((total, start.elapsed())),
            }
        })?;
        Ok(total as f64 / elapsed.as_secs_f64())
    }
}

impl Drop for RawToken {
    fn drop(&mut self) {
        drop(self.keeper.take()); // closes the session (logs the token out)
        let _ = self.ctx.clone().finalize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_sorted_samples() {
        assert_eq!(median(&[1.0, 2.0, 4.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), Some(3.0));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn raw_ops_measure_every_operation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = run_raw_ops(dir.path(), &RawOp::ALL, 48, 1, 0.05, 1).expect("bench runs");
        assert_eq!(r.rows.len(), RawOp::ALL.len());
        for (op, row) in &r.rows {
            assert!(row.ops_per_sec > 0.0, "{op:?} {row:?}");
        }
        let text = r.to_string();
        for op in RawOp::ALL {
            assert!(
                text.contains(&format!("RAW op={} threads=1 ", op.name())),
                "{text}"
            );
            assert_eq!(op.name().parse::<RawOp>(), Ok(op));
        }
        assert!("sign".parse::<RawOp>().is_err());
        assert_eq!(counter_iv(1, 2), [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn tiny_run_reports_every_row() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 3 filler keys per token: exercises that path in well under a second.
        let r = run_gcm_bench(dir.path(), 32, 1, 0.05, 1, 3).expect("bench runs");
        assert_eq!(r.rows.len(), 4);
        for row in &r.rows {
            assert!(row.ops_per_sec > 0.0, "{row:?}");
        }
        assert!(r.ratio().is_some_and(|x| x > 0.0));
        let text = r.to_string();
        assert!(text.contains("| operation |") && text.contains("layer/raw"));
    }
}
