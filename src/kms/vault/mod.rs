//! The port between the KMS domain and the HSMs, in domain vocabulary: create and destroy
//! backing keys by kind, encrypt/decrypt, sign/verify, MAC, derive, random bytes, health.
//! The domain owns this trait; `hsm::HsmCluster` implements it (every key operation inside
//! PKCS#11 tokens) and `vault::fake::FakeVault` implements it in memory for unit tests of
//! the domain rules. Nothing here names cryptoki, a PKCS#11 return code or a session.
//!
//! Errors carry one decision the domain needs, [`VaultError::retryable`]: may another HSM
//! or a later retry succeed? Everything else about a failure (which HSM, which PKCS#11
//! function, which return value) stays in the message, which is logged and never sent.
//!
//! Which HSMs answered the calls made for one request (the audit record's
//! `additionalEventData`) is collected beside the calls: [`served_by`] runs a future with a
//! task-local list that the vault adds to through [`note_served`].

use crate::pkix::{Curve, Hash};
use std::cell::RefCell;
use std::future::Future;
use zeroize::Zeroizing;

tokio::task_local! {
    static SERVED_BY: RefCell<Vec<String>>;
}

/// Note that the HSM named `hsm` answered a call made by the current task; a no-op outside
/// [`served_by`].
pub fn note_served(hsm: &str) {
    let _ = SERVED_BY.try_with(|s| {
        let mut s = s.borrow_mut();
        if !s.iter().any(|n| n == hsm) {
            s.push(hsm.to_string());
        }
    });
}

/// Run `f`, returning its output and the names of the HSMs that answered the vault calls it
/// made (in the order they first answered). Inside another `served_by`, the names count for
/// the enclosing one too.
pub async fn served_by<F: Future>(f: F) -> (F::Output, Vec<String>) {
    let (out, names) = SERVED_BY
        .scope(RefCell::new(Vec::new()), async {
            let out = f.await;
            let names = SERVED_BY.with(|s| s.take());
            (out, names)
        })
        .await;
    for n in &names {
        note_served(n);
    }
    (out, names)
}

#[cfg(any(test, feature = "test-hooks"))]
pub mod fake;

/// Length of a key copy's check value (see [`KeyVault::check_value`]).
pub const CHECK_LEN: usize = 8;

/// Length of the GCM IV the vault returns with each ciphertext.
pub const IV_LEN: usize = 12;

/// The name of one backing key inside every HSM (`CKA_ID` there), e.g. `kms/<key-id>/<version>`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ObjectId(String);

impl ObjectId {
    /// Wrap an object name.
    pub fn new(name: impl Into<String>) -> ObjectId {
        ObjectId(name.into())
    }
    /// The name as stored in metadata.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The bytes used as `CKA_ID`.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of a key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PairSpec {
    /// RSA with a modulus of this many bits.
    Rsa(u32),
    /// ECDSA / ECDH on a named curve.
    Ec(Curve),
    /// Ed25519.
    Ed25519,
}

/// What the private half of a key pair may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PairUse {
    /// Sign (and the public half verify).
    Sign,
    /// RSA-OAEP decrypt (and the public half encrypt).
    Decrypt,
    /// ECDH key agreement.
    Derive,
    /// Unwrap imported key material (the wrapping key pair of `GetParametersForImport`): the
    /// private half only unwraps, and what it unwraps is forced sensitive.
    Unwrap,
}

/// How imported key material arrives wrapped under the public half of an import wrapping key
/// pair (the `WrappingAlgorithm` of `GetParametersForImport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImportWrapping {
    /// RSAES-OAEP with this hash and MGF1 of the same hash (`RSAES_OAEP_SHA_*`).
    Oaep(Hash),
    /// An ephemeral AES key wrapped with RSAES-OAEP (this hash), followed by the material
    /// wrapped under it with AES key wrap with padding, RFC 5649 (`RSA_AES_KEY_WRAP_SHA_*`).
    RsaAes(Hash),
}

impl ImportWrapping {
    /// The OAEP hash.
    pub fn hash(self) -> Hash {
        match self {
            ImportWrapping::Oaep(h) | ImportWrapping::RsaAes(h) => h,
        }
    }
}

/// Imported key material as it arrives: wrapped under the public half of the wrapping key
/// pair `key` (whose modulus is `modulus_len` bytes) with `wrapping`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WrappedMaterial {
    /// The import wrapping key pair (its private half unwraps, inside an HSM).
    pub key: ObjectId,
    /// Modulus length of the wrapping key pair, in bytes.
    pub modulus_len: usize,
    /// How the material is wrapped.
    pub wrapping: ImportWrapping,
    /// The wrapped material (`EncryptedKeyMaterial`).
    pub material: Vec<u8>,
}

/// The kind of a backing key the vault creates and replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyKind {
    /// An AES-256 key for AES-256-GCM.
    Aes,
    /// A key pair.
    Pair(PairSpec, PairUse),
    /// An HMAC key of this many bytes.
    Hmac(usize),
}

/// A signature scheme over a digest (or over the message for pure Ed25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SignScheme {
    /// ECDSA; signatures are DER `ECDSA-Sig-Value`.
    Ecdsa(Curve),
    /// RSASSA-PKCS1-v1_5 over a digest of this hash.
    RsaPkcs1(Hash),
    /// RSASSA-PSS, salt length = digest length.
    RsaPss(Hash),
    /// Pure Ed25519 over the message itself.
    Ed25519,
    /// Ed25519ph over a SHA-512 digest.
    Ed25519ph,
}

/// AES-256-GCM output: the IV chosen inside the HSM and ciphertext ‖ tag.
pub type Sealed = ([u8; IV_LEN], Vec<u8>);

/// A data key: its plaintext (for the caller), IV, ciphertext ‖ tag.
pub type SealedDataKey = (Zeroizing<Vec<u8>>, [u8; IV_LEN], Vec<u8>);

/// A data key pair: PKCS#8 DER private key (for the caller), SPKI DER public key.
pub type DataKeyPair = (Zeroizing<Vec<u8>>, Vec<u8>);

/// One HSM as health reports show it.
#[derive(Debug, Clone)]
pub struct HsmStatus {
    /// The HSM's configured name.
    pub name: String,
    /// Serving requests normally.
    pub healthy: bool,
    /// The detail shown by `/health` (state, counters, last error).
    pub detail: serde_json::Value,
    /// The numbers `/metrics` shows.
    pub gauges: HsmGauges,
}

/// One HSM's numbers for `/metrics` (no key ids: names and counts only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HsmGauges {
    /// Its state's name (`Healthy`, `Suspect`, `Down`, `Failed`, `NotEnrolled`).
    pub state: &'static str,
    /// Worker sessions running a call now.
    pub busy_sessions: usize,
    /// Calls waiting for a worker now.
    pub queued: usize,
    /// Errors recorded against it since start.
    pub errors: u64,
    /// Calls that failed on it and were retried on another HSM, since start.
    pub failovers: u64,
    /// Background re-initializations since start.
    pub reinitializations: u64,
}

/// One HSM's change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The HSM's configured name.
    pub hsm: String,
    /// The state it left.
    pub from: &'static str,
    /// The state it entered.
    pub to: &'static str,
}

/// The state names [`HsmGauges::state`] takes.
pub const HSM_STATES: [&str; 5] = ["Healthy", "Suspect", "Down", "Failed", "NotEnrolled"];

/// Why the vault could not do what was asked. Messages may name HSMs and PKCS#11
/// functions; they are logged with the request id, never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A ciphertext, tag or signature input failed authentication (the request is bad).
    #[error("ciphertext failed authentication")]
    InvalidCiphertext,
    /// The token refused caller-supplied input (e.g. a point not on the curve).
    #[error("{0}")]
    InvalidInput(String),
    /// Imported key material unwrapped but does not fit the key (length, key type, size).
    #[error("{0}")]
    WrongKeyMaterial(String),
    /// No HSM offers the mechanism this needs.
    #[error("mechanism {mechanism} is not offered ({detail})")]
    Unsupported {
        /// The PKCS#11 mechanism name.
        mechanism: String,
        /// Where it was missing.
        detail: String,
    },
    /// The HSMs did not answer in time, are down or busy: retry.
    #[error("{0}")]
    Unavailable(String),
    /// Fewer HSMs than needed hold (or can take) a healthy copy: retry when one returns.
    #[error("fewer than {needed} HSMs hold a healthy copy ({healthy} usable)")]
    TooFewCopies {
        /// Usable HSMs found.
        healthy: usize,
        /// HSMs the operation needs.
        needed: usize,
    },
    /// Anything else; `retryable` says whether another HSM or a later call may succeed.
    #[error("{message}")]
    Failed {
        /// What failed, naming the HSM and the PKCS#11 function.
        message: String,
        /// Another HSM or a later call may succeed.
        retryable: bool,
    },
}

impl VaultError {
    /// True when another HSM or a later retry may succeed (a device fault, not a bad request).
    pub fn retryable(&self) -> bool {
        match self {
            VaultError::InvalidCiphertext
            | VaultError::InvalidInput(_)
            | VaultError::WrongKeyMaterial(_)
            | VaultError::Unsupported { .. } => false,
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. } => true,
            VaultError::Failed { retryable, .. } => *retryable,
        }
    }
}

/// A key the vault created ([`KeyVault::create_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The SPKI DER of a key pair's public half (`None` for secret keys).
    pub public_key: Option<Vec<u8>>,
    /// The check value of its copies, read from the HSM that made it (`None` for kinds
    /// without one). Recorded with the key at once, it tells a right copy from a different
    /// key under the same name: an HSM that failed while making it may still finish later.
    pub check_value: Option<[u8; CHECK_LEN]>,
}

/// What the domain asks of the HSMs. Object-safe: the domain holds an `Arc<dyn KeyVault>`.
///
/// Durability: `create_key` returns only once the key exists (and is proven) in at least
/// two HSMs; `destroy_key` only once every HSM answered.
#[async_trait::async_trait]
pub trait KeyVault: Send + Sync {
    /// Create a key of `kind` named `id` in one HSM and copy it into every other usable HSM.
    /// Returns a key pair's public half and the check value of the copies, which the vault
    /// expects from then on and the caller records with the key (see [`NewKey`]).
    async fn create_key(
        &self,
        id: &ObjectId,
        label: &str,
        kind: KeyKind,
    ) -> Result<NewKey, VaultError>;

    /// Destroy every object named `id` (secret, private and public halves) in every HSM.
    async fn destroy_key(&self, id: &ObjectId) -> Result<(), VaultError>;

    /// Copy keys that some usable HSM lacks from one that holds them; returns copies made.
    async fn replicate_missing(
        &self,
        keys: &[(ObjectId, String, KeyKind)],
    ) -> Result<usize, VaultError>;

    /// AES-256-GCM encryption under `id` with an IV made inside the HSM.
    async fn encrypt(
        &self,
        id: &ObjectId,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Sealed, VaultError>;

    /// AES-256-GCM decryption; a tag failure is [`VaultError::InvalidCiphertext`].
    async fn decrypt(
        &self,
        id: &ObjectId,
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError>;

    /// `n` random bytes from an HSM, encrypted under `id` in the same HSM call.
    async fn generate_data_key(
        &self,
        id: &ObjectId,
        n: usize,
        aad: Vec<u8>,
    ) -> Result<SealedDataKey, VaultError>;

    /// `n` random bytes from an HSM.
    async fn random(&self, n: usize) -> Result<Vec<u8>, VaultError>;

    /// The check value of secret key `id` (AES or HMAC), computed inside every usable HSM
    /// that holds a copy: `None` when none holds it or its kind has no check value; an
    /// error when the copies disagree.
    async fn check_value(
        &self,
        id: &ObjectId,
        kind: KeyKind,
    ) -> Result<Option<[u8; CHECK_LEN]>, VaultError>;

    /// Hand the vault the check values recorded for keys (of each key's kind): every copy is
    /// verified against them the first time it is used after each (re)connect, and a copy
    /// that disagrees is quarantined and replaced by re-sync.
    fn expect_check_values(&self, values: Vec<(ObjectId, KeyKind, [u8; CHECK_LEN])>);

    /// Have every copy verified again at its next use (the periodic check).
    fn reverify_copies(&self);

    /// Sign `input` (a digest, or the message for pure Ed25519) with private key `id`.
    async fn sign(
        &self,
        id: &ObjectId,
        scheme: SignScheme,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError>;

    /// Verify `signature` over `input` with the public half of `id` held by the HSMs.
    async fn verify(
        &self,
        id: &ObjectId,
        scheme: SignScheme,
        input: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, VaultError>;

    /// HMAC of `message` under HMAC key `id`.
    async fn mac(&self, id: &ObjectId, hash: Hash, message: Vec<u8>)
        -> Result<Vec<u8>, VaultError>;

    /// RSA-OAEP decryption with private key `id` whose modulus is `modulus_len` bytes.
    async fn rsa_oaep_decrypt(
        &self,
        id: &ObjectId,
        hash: Hash,
        modulus_len: usize,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError>;

    /// ECDH (`CKD_NULL`) with private key `id` and a peer's uncompressed point.
    async fn derive_shared_secret(
        &self,
        id: &ObjectId,
        curve: Curve,
        peer_point: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError>;

    /// A key pair generated inside an HSM for the caller (never stored there).
    async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, VaultError>;

    /// Why the HSMs cannot unwrap material wrapped with `wrapping` inside themselves: the
    /// missing mechanism (for the error message), or `None` when every usable HSM can.
    /// Never a reason to decode the material on the host instead.
    fn import_unsupported(&self, wrapping: ImportWrapping) -> Option<String>;

    /// Unwrap imported key material inside an HSM (under the private half of
    /// `wrapped.key`) into a new key `id` of `kind`, with the attributes of the service's own
    /// keys, check that it fits `kind` (length, key type and size), then copy it into every
    /// other usable HSM under the cluster wrapping key and prove each copy, as `create_key`
    /// does. Returns the SPKI DER of a key pair's public half (read from the token).
    /// Undecryptable material is [`VaultError::InvalidCiphertext`]; material that does not
    /// fit is [`VaultError::WrongKeyMaterial`].
    async fn import_key(
        &self,
        wrapped: &WrappedMaterial,
        id: &ObjectId,
        label: &str,
        kind: KeyKind,
    ) -> Result<Option<Vec<u8>>, VaultError>;

    /// Unwrap imported key material as [`KeyVault::import_key`] does, but into a throw-away
    /// object `id` in one HSM only, and answer its check value (what tells the same material
    /// from another; for a key pair it covers the public half); the object is destroyed
    /// before answering.
    async fn imported_check_value(
        &self,
        wrapped: &WrappedMaterial,
        id: &ObjectId,
        kind: KeyKind,
    ) -> Result<[u8; CHECK_LEN], VaultError>;

    /// Why keys of `kind` cannot be made here, if they cannot: fewer than two HSMs can
    /// generate, use and copy them. The reason names each missing mechanism and the HSM
    /// that lacks it (`CKM_EC_KEY_PAIR_GEN (secp256k1) is missing in HSM b`).
    fn kind_unavailable(&self, kind: KeyKind) -> Option<String>;

    /// One line per HSM.
    fn health(&self) -> Vec<HsmStatus>;

    /// Every HSM state change since the last call (of the names [`HSM_STATES`] lists),
    /// oldest first per HSM. A vault without state changes has none.
    fn take_state_changes(&self) -> Vec<StateChange> {
        Vec::new()
    }

    /// What each HSM holds: (HSM name, usable now, the ids of its objects).
    async fn inventory(&self) -> Vec<(String, bool, Vec<ObjectId>)>;
}
