//! The work an HSM does for the cluster, as plain data: every job a worker runs is a
//! [`Command`] answered by a [`Reply`], and the few settings the cluster pushes to an HSM
//! are a [`Control`]. Being data rather than closures, the same commands run on the
//! service's own worker threads (in-process HSMs) and in an HSM host process
//! (`hsm-kms hsm-host`, see `host`), where they arrive serialized over a pipe.
//!
//! [`Command::run`] is the one place that maps a command onto the per-family operations
//! (`aes`, `hmac`, `keypair`, `custody`, `integrity`); the health probe lives here too.

use super::aes::{self, AesTransfer, PROOF_AAD};
use super::custody;
use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CANARY_ID, CWK_ID};
use super::hmac::{self, HmacTransfer};
use super::import;
use super::integrity::{self, Recorded, CHECK_LEN};
use super::job::WorkerCtx;
use super::keypair::{self, PairTransfer};
use super::kinds::{DataKeyPair, KeyKind, PairSpec, Protections, Secret, SignScheme};
use super::mechanisms::{self, IV_LEN};
use super::node::Node;
use super::templates;
use crate::kms::vault::WrappedMaterial;
use crate::pkix::{Curve, Hash};
use cryptoki::mechanism::Mechanism;
use std::sync::Arc;
use zeroize::Zeroizing;

/// One of an HSM's worker lanes (see `worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Lane {
    /// Short cryptographic calls.
    Crypto,
    /// Key pair generation.
    Keygen,
    /// Health probes.
    Probe,
}

/// The receiving end of a job's outcome.
type ReplyFn = Box<dyn FnOnce(Result<Reply, HsmError>) + Send>;

/// Where a job's outcome goes: called once, by the worker (in a batch of completions) or by
/// the host link when the host process answers. Dropped uncalled (the job was dropped:
/// deadline passed, HSM down), it answers the caller [`HsmError::NodeDown`].
pub(super) struct Done {
    hsm: Arc<str>,
    reply: Option<ReplyFn>,
}

impl Done {
    pub(super) fn new(
        hsm: Arc<str>,
        reply: impl FnOnce(Result<Reply, HsmError>) + Send + 'static,
    ) -> Done {
        Done {
            hsm,
            reply: Some(Box::new(reply)),
        }
    }

    pub(super) fn send(mut self, r: Result<Reply, HsmError>) {
        if let Some(f) = self.reply.take() {
            f(r);
        }
    }

    /// Drop without answering (the submitter learns the outcome otherwise).
    pub(super) fn cancel(mut self) {
        self.reply.take();
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.reply.take() {
            f(Err(HsmError::NodeDown {
                hsm: self.hsm.to_string(),
            }));
        }
    }
}

/// What one HSM sends to another to copy a key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum Transfer {
    Aes(AesTransfer),
    Pair(PairTransfer),
    Hmac(HmacTransfer),
}

/// One job for an HSM.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Command {
    /// AES-256-GCM encryption; `iv` from the cluster's deterministic source, else drawn here.
    Encrypt {
        key: Vec<u8>,
        iv: Option<[u8; IV_LEN]>,
        aad: Vec<u8>,
        plaintext: Secret,
    },
    /// AES-256-GCM decryption (tag failure: [`HsmError::InvalidCiphertext`]).
    Decrypt {
        key: Vec<u8>,
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    },
    /// `n` random bytes and their encryption under `key`, in one job.
    DataKey {
        key: Vec<u8>,
        n: usize,
        iv: Option<[u8; IV_LEN]>,
        aad: Vec<u8>,
    },
    /// Random bytes.
    Random { n: usize },
    /// Sign a digest (or a message, pure Ed25519).
    Sign {
        key: Vec<u8>,
        scheme: SignScheme,
        digest: Vec<u8>,
    },
    /// Verify a signature with the public key object.
    Verify {
        key: Vec<u8>,
        scheme: SignScheme,
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
    /// HMAC of a message.
    Hmac {
        key: Vec<u8>,
        hash: Hash,
        msg: Vec<u8>,
    },
    /// RSA-OAEP decryption with a private key whose modulus is `k` bytes.
    OaepDecrypt {
        key: Vec<u8>,
        hash: Hash,
        k: usize,
        ct: Vec<u8>,
    },
    /// ECDH with a private key and a peer's uncompressed point.
    Ecdh {
        key: Vec<u8>,
        curve: Curve,
        peer: Vec<u8>,
    },
    /// A data key pair generated as session objects and exported (for the caller).
    DataKeyPair { spec: PairSpec },
    /// Generate a replicable key and export it for copying (the first step of replication).
    Create {
        id: Vec<u8>,
        label: String,
        kind: KeyKind,
    },
    /// Export a key this HSM holds, for copying to another.
    Export { id: Vec<u8>, kind: KeyKind },
    /// Install a copy made by [`Command::Create`] or [`Command::Export`], and prove it.
    Install {
        id: Vec<u8>,
        label: String,
        kind: KeyKind,
        transfer: Transfer,
    },
    /// Unwrap imported key material into key `id` (checked to fit `kind`) and, with
    /// `export`, export it for copying like [`Command::Create`].
    Import {
        wrapped: WrappedMaterial,
        id: Vec<u8>,
        label: String,
        kind: KeyKind,
        export: bool,
    },
    /// Destroy every object (private, public, secret) with this `CKA_ID`.
    DestroyAll { id: Vec<u8> },
    /// Verify this HSM's copy of secret key `id` again now (quarantined if it disagrees).
    Reverify { id: Vec<u8> },
    /// The check value of this HSM's copy of key `id`.
    CheckValue { id: Vec<u8>, kind: KeyKind },
    /// Whether the handle cache knows an object of this kind and `CKA_ID`.
    Holds { kind: ObjectKind, id: Vec<u8> },
    /// The `CKA_ID` of every object the handle cache knows.
    Inventory,
    /// Which custody protections the token enforces.
    CustodyProbe,
    /// Enrollment proof, first HSM: a throw-away key wrapped under the cluster wrapping key
    /// and a GCM encryption under it.
    ProofMake { id: Vec<u8> },
    /// Enrollment proof, other HSMs: the throw-away key unwraps and decrypts here.
    ProofCheck { id: Vec<u8>, proof: AesTransfer },
    /// Health probe: token info plus a GCM round trip with the canary key.
    Probe,
}

/// What an HSM sends to adjust how it works (no PKCS#11 call; applied in order).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Control {
    /// Record (or replace) the check values copies are verified against.
    ExpectChecks(Vec<Recorded>),
    /// Verify every copy again at its next use.
    ForgetVerified,
    /// Test hook: stall every call (jobs and probes), or every job, by these many ms.
    Stall {
        all_ms: Option<u64>,
        job_ms: Option<u64>,
    },
}

impl Control {
    /// Apply to `node` (in the service for an in-process HSM, in the host process otherwise).
    pub(super) fn apply(self, node: &Node) {
        match self {
            Control::ExpectChecks(values) => node.opts.checks.extend(values),
            Control::ForgetVerified => {
                if let Some(i) = node.current() {
                    i.handles.clear_all_verified();
                }
            }
            Control::Stall { all_ms, job_ms } => node.set_stalls(all_ms, job_ms),
        }
    }
}

/// What an HSM learned about itself at its last probe (also in the health report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Facts {
    /// Login epoch of the module instance.
    pub(super) epoch: u64,
    /// Objects in the handle cache.
    pub(super) cached_handles: usize,
    /// Objects that could not be read when the instance opened.
    pub(super) unreadable: usize,
    /// The token does RSA-OAEP with SHA-256 itself.
    pub(super) oaep_sha256: bool,
    /// The token can generate, use and wrap Ed25519 keys.
    pub(super) ed25519_keys: bool,
    /// The token offers `CKM_RSA_PKCS_OAEP` (imports).
    #[serde(default)]
    pub(super) oaep: bool,
    /// The token offers `CKM_AES_KEY_WRAP_PAD` (RSA_AES imports).
    #[serde(default)]
    pub(super) aes_key_wrap_pad: bool,
    /// The token enforces nested unwrap templates (confined RSA_AES imports).
    #[serde(default)]
    pub(super) nested_unwrap_templates: bool,
    /// What the service needs that the token offers (`needs`), found at connect.
    #[serde(default)]
    pub(super) offered: super::needs::Offered,
}

/// The answer to a [`Command`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Reply {
    Unit,
    Bool(bool),
    Bytes(Vec<u8>),
    Secret(Secret),
    Sealed([u8; IV_LEN], Vec<u8>),
    DataKey(Secret, [u8; IV_LEN], Vec<u8>),
    Transfer(Transfer),
    Pair(Secret, Vec<u8>),
    Check(Option<[u8; CHECK_LEN]>),
    Ids(Vec<Vec<u8>>),
    Protections(Protections),
    Proof(AesTransfer),
    Facts(Facts),
}

/// A typed view of a [`Reply`]: what a caller of a [`Command`] expects back.
pub(super) trait FromReply: Sized {
    fn from_reply(r: Reply) -> Option<Self>;
}

macro_rules! from_reply {
    ($t:ty, $p:pat => $e:expr) => {
        impl FromReply for $t {
            fn from_reply(r: Reply) -> Option<Self> {
                match r {
                    $p => Some($e),
                    _ => None,
                }
            }
        }
    };
}

impl FromReply for Reply {
    fn from_reply(r: Reply) -> Option<Self> {
        Some(r)
    }
}

from_reply!((), Reply::Unit => ());
from_reply!(bool, Reply::Bool(b) => b);
from_reply!(Vec<u8>, Reply::Bytes(b) => b);
from_reply!(Zeroizing<Vec<u8>>, Reply::Secret(s) => s.0);
from_reply!(([u8; IV_LEN], Vec<u8>), Reply::Sealed(iv, ct) => (iv, ct));
from_reply!((Zeroizing<Vec<u8>>, [u8; IV_LEN], Vec<u8>), Reply::DataKey(dk, iv, ct) => (dk.0, iv, ct));
from_reply!(Transfer, Reply::Transfer(t) => t);
from_reply!(DataKeyPair, Reply::Pair(p, s) => (p.0, s));
from_reply!(Option<[u8; CHECK_LEN]>, Reply::Check(c) => c);
from_reply!(Vec<Vec<u8>>, Reply::Ids(ids) => ids);
from_reply!(Protections, Reply::Protections(p) => p);
from_reply!(AesTransfer, Reply::Proof(p) => p);
from_reply!(Facts, Reply::Facts(f) => f);

/// `r` as the type the caller expects (a mismatch is a bug, or a host of another version).
pub(super) fn expect<T: FromReply>(r: Result<Reply, HsmError>) -> Result<T, HsmError> {
    T::from_reply(r?).ok_or_else(|| HsmError::Internal("unexpected reply from an HSM".into()))
}

impl Command {
    /// Run the command on a worker's session.
    pub(super) fn run(self, ctx: &mut WorkerCtx<'_>) -> Result<Reply, HsmError> {
        match self {
            Command::Encrypt {
                key,
                iv,
                aad,
                plaintext,
            } => {
                let iv = match iv {
                    Some(iv) => iv,
                    None => ctx.next_iv()?,
                };
                aes::gcm_encrypt_with(ctx, &key, iv, &aad, &plaintext)
                    .map(|ct| Reply::Sealed(iv, ct))
            }
            Command::Decrypt {
                key,
                iv,
                aad,
                ciphertext,
            } => {
                aes::gcm_decrypt(ctx, &key, &iv, &aad, &ciphertext).map(|p| Reply::Secret(p.into()))
            }
            Command::DataKey { key, n, iv, aad } => {
                let dk = Zeroizing::new(ctx.random(n)?);
                let iv = match iv {
                    Some(iv) => iv,
                    None => ctx.next_iv()?,
                };
                let ct = aes::gcm_encrypt_with(ctx, &key, iv, &aad, &dk)?;
                Ok(Reply::DataKey(dk.into(), iv, ct))
            }
            Command::Random { n } => ctx.random(n).map(Reply::Bytes),
            Command::Sign {
                key,
                scheme,
                digest,
            } => {
                keypair::verify_once(ctx, &key)?;
                keypair::sign(ctx, &key, scheme, &digest).map(Reply::Bytes)
            }
            Command::Verify {
                key,
                scheme,
                digest,
                signature,
            } => {
                keypair::verify_once(ctx, &key)?;
                keypair::verify(ctx, &key, scheme, &digest, &signature).map(Reply::Bool)
            }
            Command::Hmac { key, hash, msg } => hmac::hmac(ctx, &key, hash, &msg).map(Reply::Bytes),
            Command::OaepDecrypt { key, hash, k, ct } => {
                keypair::verify_once(ctx, &key)?;
                keypair::oaep_decrypt(ctx, &key, hash, k, &ct).map(|p| Reply::Secret(p.into()))
            }
            Command::Ecdh { key, curve, peer } => {
                keypair::verify_once(ctx, &key)?;
                keypair::ecdh(ctx, &key, curve, &peer).map(|z| Reply::Secret(z.into()))
            }
            Command::DataKeyPair { spec } => {
                keypair::data_key_pair(ctx, spec).map(|(p, s)| Reply::Pair(p.into(), s))
            }
            Command::Create { id, label, kind } => {
                match kind {
                    KeyKind::Aes => aes::generate(ctx, &id, &label).map(|_| ())?,
                    KeyKind::Pair(spec, usage) => keypair::generate(ctx, &id, &label, spec, usage)?,
                    KeyKind::Hmac(len) => hmac::generate(ctx, &id, &label, len)?,
                }
                export(ctx, &id, kind).map(Reply::Transfer)
            }
            Command::Export { id, kind } => export(ctx, &id, kind).map(Reply::Transfer),
            Command::Import {
                wrapped,
                id,
                label,
                kind,
                export: with_export,
            } => {
                import::unwrap_material(ctx, &wrapped, &id, &label, kind)?;
                if with_export {
                    export(ctx, &id, kind).map(Reply::Transfer)
                } else {
                    Ok(Reply::Unit)
                }
            }
            Command::Install {
                id,
                label,
                kind,
                transfer,
            } => install(ctx, &id, &label, kind, &transfer).map(|()| Reply::Unit),
            Command::DestroyAll { id } => ctx.destroy_all(&id).map(Reply::Bool),
            Command::Reverify { id } => {
                ctx.instance().handles.clear_verified(&id);
                ctx.handle(ObjectKind::Secret, &id).map(|_| Reply::Unit)
            }
            Command::CheckValue {
                id,
                kind: KeyKind::Pair(spec, usage),
            } => keypair::check_value(ctx, &id, spec, usage).map(|v| Reply::Check(Some(v))),
            Command::CheckValue { id, kind } => {
                let h = ctx.find_handle(ObjectKind::Secret, &id)?;
                integrity::compute(ctx.session(), h, kind)
                    .map(Reply::Check)
                    .map_err(|e| ctx.err(Operation::CheckValue, e))
            }
            Command::Holds { kind, id } => {
                Ok(Reply::Bool(ctx.instance().handles.contains(kind, &id)))
            }
            Command::Inventory => Ok(Reply::Ids(ctx.instance().handles.ids())),
            Command::CustodyProbe => custody::probe(ctx).map(Reply::Protections),
            Command::ProofMake { id } => proof_make(ctx, &id).map(Reply::Proof),
            Command::ProofCheck { id, proof } => {
                proof_check(ctx, &id, &proof).map(|()| Reply::Unit)
            }
            Command::Probe => probe(ctx).map(Reply::Facts),
        }
    }
}

fn export(ctx: &mut WorkerCtx<'_>, id: &[u8], kind: KeyKind) -> Result<Transfer, HsmError> {
    match kind {
        KeyKind::Aes => aes::export(ctx, id).map(Transfer::Aes),
        KeyKind::Pair(spec, usage) => keypair::export(ctx, id, spec, usage).map(Transfer::Pair),
        KeyKind::Hmac(len) => hmac::export(ctx, id, len).map(Transfer::Hmac),
    }
}

fn install(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    kind: KeyKind,
    transfer: &Transfer,
) -> Result<(), HsmError> {
    match (kind, transfer) {
        (KeyKind::Aes, Transfer::Aes(tr)) => aes::install(ctx, id, label, tr),
        (KeyKind::Pair(spec, usage), Transfer::Pair(tr)) => {
            keypair::install(ctx, id, label, spec, usage, tr)
        }
        (KeyKind::Hmac(len), Transfer::Hmac(tr)) => hmac::install(ctx, id, label, len, tr),
        _ => Err(HsmError::Internal("key kind mismatch".into())),
    }
}

/// Health probe: token info plus a real GCM round trip with the canary key; answers what
/// the instance knows of itself.
pub(super) fn probe(ctx: &mut WorkerCtx<'_>) -> Result<Facts, HsmError> {
    let inst = ctx.instance();
    let info = inst.ctx.get_token_info(inst.slot);
    info.map_err(|e| ctx.err(Operation::Probe, e))?;
    let pt = b"hsm-kms health probe";
    let (iv, ct) = aes::gcm_encrypt(ctx, CANARY_ID, b"probe", pt)?;
    let back = aes::gcm_decrypt(ctx, CANARY_ID, &iv, b"probe", &ct)?;
    if back.as_slice() != pt {
        return Err(HsmError::Internal(format!(
            "{}: canary round trip returned wrong data",
            ctx.hsm()
        )));
    }
    Ok(facts_of(ctx.instance()))
}

/// What an instance knows of itself.
pub(super) fn facts_of(inst: &super::instance::Instance) -> Facts {
    Facts {
        epoch: inst.epoch(),
        cached_handles: inst.handles.len(),
        unreadable: inst.handles.unreadable(),
        oaep_sha256: inst.caps.oaep_sha256,
        ed25519_keys: inst.caps.ed25519_keys,
        oaep: inst
            .caps
            .has(cryptoki::mechanism::MechanismType::RSA_PKCS_OAEP),
        aes_key_wrap_pad: inst
            .caps
            .has(cryptoki::mechanism::MechanismType::AES_KEY_WRAP_PAD),
        nested_unwrap_templates: inst.caps.nested_unwrap_templates,
        offered: inst.caps.offered,
    }
}

/// Enrollment proof, first HSM: a throw-away session key `id` wrapped under the cluster
/// wrapping key, and a random message encrypted under it.
fn proof_make(ctx: &mut WorkerCtx<'_>, id: &[u8]) -> Result<AesTransfer, HsmError> {
    let h = ctx
        .session()
        .generate_key(&Mechanism::AesKeyGen, &templates::session_aes(id, true))
        .map_err(|e| ctx.err(Operation::GenerateKey, e))?;
    ctx.remember(ObjectKind::Secret, id, h);
    let r = (|| {
        let wrapped = aes::wrap_secret(ctx, CWK_ID, id)?;
        let pt = ctx.random(32)?;
        let (iv, ct) = aes::gcm_encrypt(ctx, id, PROOF_AAD, &pt)?;
        Ok((wrapped.into(), iv, pt, ct))
    })();
    let _ = ctx.destroy(ObjectKind::Secret, id);
    r
}

/// Enrollment proof, other HSMs: the throw-away key unwraps under this HSM's cluster
/// wrapping key and decrypts the message; anything else means a different wrapping key.
fn proof_check(ctx: &mut WorkerCtx<'_>, id: &[u8], proof: &AesTransfer) -> Result<(), HsmError> {
    let (wrapped, iv, pt, ct) = proof;
    let h = ctx.with_key(Operation::UnwrapKey, ObjectKind::Secret, CWK_ID, |s, w| {
        s.unwrap_key(
            &mechanisms::key_wrap(),
            w,
            wrapped,
            &templates::session_aes(id, false),
        )
    });
    let different = |hsm: &str| HsmError::Setup {
        hsm: hsm.to_string(),
        message: "holds a different cluster wrapping key than the other HSMs".into(),
    };
    // Tokens answer an unwrap under the wrong key with all sorts of return values (SoftHSM:
    // a general error): the unwrap failure means a different key only if the token still
    // answers; if it does not, the failure is passed on and the admission tries again.
    let h = match h {
        Ok(h) => h,
        Err(e) => {
            return Err(match ctx.random(1) {
                Ok(_) => different(ctx.hsm()),
                Err(_) => e,
            })
        }
    };
    ctx.remember(ObjectKind::Secret, id, h);
    let back = aes::gcm_decrypt(ctx, id, iv, PROOF_AAD, ct);
    let _ = ctx.destroy(ObjectKind::Secret, id);
    match back {
        Ok(b) if b.as_slice() == pt.as_slice() => Ok(()),
        _ => Err(different(ctx.hsm())),
    }
}
