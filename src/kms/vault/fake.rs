//! [`FakeVault`]: the [`KeyVault`] port in memory, so that the domain rules can be unit-tested
//! in milliseconds without SoftHSM.
//!
//! Every operation does real cryptography with the RustCrypto crates (AES-256-GCM, HMAC,
//! RSA PKCS#1 v1.5 / PSS / OAEP, ECDSA and ECDH on P-256, P-384, P-521 and secp256k1,
//! Ed25519 and Ed25519ph), so ciphertexts, signatures, MACs and public keys produced through
//! the fake check out with any independent implementation.
//!
//! It models `N` HSMs, each holding its own map of object id → key material, with the
//! cluster's rules: a key is created in every up HSM and needs at least two of them; a key
//! operation is answered by an up HSM that holds the key (no up HSM: `Unavailable`; up HSMs
//! that all lack it: `Failed { retryable: true }`, like a key missing from a token);
//! `destroy_key` fails unless every HSM is up. Test controls ([`FakeVault::set_down`],
//! [`FakeVault::fail_next`], [`FakeVault::forget`], ...) and observers
//! ([`FakeVault::holds`], [`FakeVault::calls`], [`FakeVault::destroyed`], ...) are plain
//! methods. No method hands out secret key material: it leaves the fake only as the port
//! allows (data keys and data key pairs generated for the caller).
//!
//! ```ignore
//! let fake = Arc::new(FakeVault::new(3));
//! let vault: Arc<dyn KeyVault> = fake.clone();
//! // ... build the service on `vault`, then steer and observe it through `fake`:
//! fake.set_down(2, true);
//! fake.fail_next(1, Fault::Unavailable);
//! assert_eq!(fake.calls("encrypt"), 1);
//! ```
//!
//! Compiled for this crate's unit tests and, with the `test-hooks` feature, for any test.

use super::{
    DataKeyPair, HsmStatus, ImportWrapping, KeyKind, KeyVault, NewKey, ObjectId, PairSpec, PairUse,
    Sealed, SealedDataKey, SignScheme, VaultError, WrappedMaterial, CHECK_LEN, IV_LEN,
};
use crate::pkix::{Curve, Hash};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::Signature as EdSignature;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use parking_lot::Mutex;
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pkcs1v15Sign, Pss, RsaPrivateKey};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The names [`FakeVault::calls`] counts: the [`KeyVault`] method names.
pub const OPS: &[&str] = &[
    "create_key",
    "destroy_key",
    "replicate_missing",
    "encrypt",
    "decrypt",
    "generate_data_key",
    "random",
    "sign",
    "verify",
    "mac",
    "rsa_oaep_decrypt",
    "derive_shared_secret",
    "generate_data_key_pair",
    "kind_unavailable",
    "health",
    "import_key",
    "imported_check_value",
];

/// A failure injected with [`FakeVault::fail_next`] / [`FakeVault::fail_next_op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// [`VaultError::Unavailable`]: the HSMs were down, busy or too slow (retryable).
    Unavailable,
    /// [`VaultError::Failed`] with `retryable: true` (a device error; another try may work).
    Retryable,
    /// [`VaultError::Failed`] with `retryable: false`.
    Fatal,
}

impl Fault {
    fn error(self, op: &str) -> VaultError {
        match self {
            Fault::Unavailable => VaultError::Unavailable(format!("injected: {op}: HSMs busy")),
            Fault::Retryable => VaultError::Failed {
                message: format!("injected: {op}: CKR_DEVICE_ERROR"),
                retryable: true,
            },
            Fault::Fatal => VaultError::Failed {
                message: format!("injected: {op}: CKR_FUNCTION_FAILED"),
                retryable: false,
            },
        }
    }
}

/// The secret of one backing key, shared by every simulated HSM that holds a copy.
enum Material {
    Aes(Zeroizing<[u8; 32]>),
    Hmac(Zeroizing<Vec<u8>>),
    Rsa(Box<RsaPrivateKey>),
    /// The curve and the private scalar (big-endian, field length).
    Ec(Curve, Zeroizing<Vec<u8>>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// One object (all halves of one backing key) in one simulated HSM.
#[derive(Clone)]
struct Stored {
    kind: KeyKind,
    #[allow(dead_code)] // kept like CKA_LABEL; only copied
    label: String,
    material: Arc<Material>,
}

struct Hsm {
    name: String,
    up: bool,
    objects: BTreeMap<ObjectId, Stored>,
}

struct Injected {
    /// `None`: any operation.
    op: Option<String>,
    remaining: usize,
    fault: Fault,
}

struct State {
    hsms: Vec<Hsm>,
    faults: Vec<Injected>,
    calls: HashMap<&'static str, usize>,
    destroyed: Vec<ObjectId>,
    ed25519: bool,
    /// Check values handed over by the domain (recorded, not enforced: copies never drift
    /// in the fake).
    expected: Vec<(ObjectId, KeyKind, [u8; CHECK_LEN])>,
}

impl State {
    /// The HSMs that are up, in index order.
    fn up(&self) -> impl Iterator<Item = &Hsm> + '_ {
        self.hsms.iter().filter(|h| h.up)
    }

    /// HSM `hsm`, for the test controls. Panics if there is no such HSM: the index comes
    /// from the test, and a wrong one is a bug in that test.
    #[allow(clippy::indexing_slicing)] // intended: a test naming a missing HSM fails loudly
    fn hsm_mut(&mut self, hsm: usize) -> &mut Hsm {
        &mut self.hsms[hsm]
    }

    /// At least `needed` HSMs are up, or `Unavailable`.
    fn need_up(&self, needed: usize) -> Result<(), VaultError> {
        let up = self.up().count();
        if up >= needed {
            return Ok(());
        }
        Err(VaultError::TooFewCopies {
            healthy: up,
            needed,
        })
    }
}

/// An in-memory [`KeyVault`] of `N` simulated HSMs; see the module documentation.
pub struct FakeVault {
    state: Mutex<State>,
}

impl Default for FakeVault {
    /// Three HSMs, all up.
    fn default() -> FakeVault {
        FakeVault::new(3)
    }
}

impl std::fmt::Debug for FakeVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        let mut d = f.debug_struct("FakeVault");
        for h in &st.hsms {
            d.field(
                &h.name,
                &format_args!("up={} objects={}", h.up, h.objects.len()),
            );
        }
        d.finish()
    }
}

impl FakeVault {
    /// `hsm_count` simulated HSMs named `hsm-0`, `hsm-1`, ..., all up and empty, able to hold
    /// Ed25519 keys.
    pub fn new(hsm_count: usize) -> FakeVault {
        FakeVault {
            state: Mutex::new(State {
                hsms: (0..hsm_count)
                    .map(|i| Hsm {
                        name: format!("hsm-{i}"),
                        up: true,
                        objects: BTreeMap::new(),
                    })
                    .collect(),
                faults: Vec::new(),
                calls: HashMap::new(),
                destroyed: Vec::new(),
                expected: Vec::new(),
                ed25519: true,
            }),
        }
    }

    /// Builder form of [`FakeVault::set_ed25519_keys`].
    pub fn with_ed25519_keys(self, can: bool) -> FakeVault {
        self.set_ed25519_keys(can);
        self
    }

    /// What `kind_unavailable` answers for Ed25519 key pairs; when `false`, `create_key` of an Ed25519 pair
    /// is `Unsupported` (data key pairs still work, as on a token that can generate but not
    /// wrap them).
    pub fn set_ed25519_keys(&self, can: bool) {
        self.state.lock().ed25519 = can;
    }

    /// Number of simulated HSMs.
    pub fn hsm_count(&self) -> usize {
        self.state.lock().hsms.len()
    }

    /// Take HSM `hsm` down (`true`) or bring it back up (`false`); it keeps its objects.
    /// Panics if there is no such HSM.
    pub fn set_down(&self, hsm: usize, down: bool) {
        self.state.lock().hsm_mut(hsm).up = !down;
    }

    /// The next `n` operations (any [`KeyVault`] method but `health` and
    /// `kind_unavailable`) fail with `fault` before touching any HSM.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.inject(None, n, fault);
    }

    /// The next `n` calls of `op` (a name from [`OPS`]) fail with `fault`.
    pub fn fail_next_op(&self, op: &str, n: usize, fault: Fault) {
        assert!(OPS.contains(&op), "no KeyVault operation named {op}");
        self.inject(Some(op.to_string()), n, fault);
    }

    fn inject(&self, op: Option<String>, n: usize, fault: Fault) {
        if n > 0 {
            self.state.lock().faults.push(Injected {
                op,
                remaining: n,
                fault,
            });
        }
    }

    /// Whether HSM `hsm` (up or down) holds a copy of `id`. Panics if there is no such HSM.
    pub fn holds(&self, hsm: usize, id: &ObjectId) -> bool {
        self.state.lock().hsm_mut(hsm).objects.contains_key(id)
    }

    /// Distinct object ids held by any HSM, up or down.
    pub fn object_count(&self) -> usize {
        let st = self.state.lock();
        st.hsms
            .iter()
            .flat_map(|h| h.objects.keys())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Drop HSM `hsm`'s copy of `id` (as if the HSM were replaced by an empty one); true if
    /// it had one. Panics if there is no such HSM.
    pub fn forget(&self, hsm: usize, id: &ObjectId) -> bool {
        self.state.lock().hsm_mut(hsm).objects.remove(id).is_some()
    }

    /// How many times the [`KeyVault`] method named `op` was called (failed calls included).
    pub fn calls(&self, op: &str) -> usize {
        self.state.lock().calls.get(op).copied().unwrap_or(0)
    }

    /// Ids passed to `destroy_key` calls that succeeded, in order.
    pub fn destroyed(&self) -> Vec<ObjectId> {
        self.state.lock().destroyed.clone()
    }

    /// Count the call and fire an injected fault, if one is pending for `op`.
    fn begin(&self, op: &'static str) -> Result<(), VaultError> {
        let mut st = self.state.lock();
        *st.calls.entry(op).or_default() += 1;
        let hit = st
            .faults
            .iter_mut()
            .find(|f| f.op.as_deref().is_none_or(|o| o == op));
        if let Some(injected) = hit {
            injected.remaining -= 1;
            let fault = injected.fault;
            // Only the fault just fired can have run out: pending ones have `remaining > 0`.
            st.faults.retain(|f| f.remaining > 0);
            return Err(fault.error(op));
        }
        Ok(())
    }

    fn count(&self, op: &'static str) {
        *self.state.lock().calls.entry(op).or_default() += 1;
    }

    /// The copy of `id` in an up HSM.
    fn find(&self, id: &ObjectId) -> Result<Stored, VaultError> {
        let st = self.state.lock();
        st.need_up(1)?;
        let mut lacking = Vec::new();
        for h in st.up() {
            match h.objects.get(id) {
                Some(s) => return Ok(s.clone()),
                None => lacking.push(h.name.as_str()),
            }
        }
        Err(VaultError::Failed {
            message: format!(
                "{}: no object with CKA_ID {id} (C_FindObjects)",
                lacking.join(", ")
            ),
            retryable: true,
        })
    }
}

/// The fake's check value of secret key bytes.
fn check_of(bytes: &[u8]) -> [u8; CHECK_LEN] {
    let d = sha2::Sha256::digest(bytes);
    let mut v = [0u8; CHECK_LEN];
    v.iter_mut().zip(d.iter()).for_each(|(a, b)| *a = *b);
    v
}

/// A request the token refuses for this key (wrong type or usage): the domain's mistake.
fn not_permitted(id: &ObjectId, what: &str) -> VaultError {
    VaultError::Failed {
        message: format!("{id}: {what}: CKR_KEY_FUNCTION_NOT_PERMITTED"),
        retryable: false,
    }
}

fn internal(e: impl std::fmt::Display) -> VaultError {
    VaultError::Failed {
        message: format!("fake vault: {e}"),
        retryable: false,
    }
}

fn bad_input(e: impl std::fmt::Display) -> VaultError {
    VaultError::InvalidInput(format!("{e}"))
}

fn random_bytes(n: usize) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    OsRng.fill_bytes(&mut v);
    v
}

/// Run `$body` with `$m` naming the RustCrypto crate of `$curve`.
macro_rules! on_curve {
    ($curve:expr, $m:ident => $body:expr) => {
        match $curve {
            Curve::P256 => {
                use p256 as $m;
                $body
            }
            Curve::P384 => {
                use p384 as $m;
                $body
            }
            Curve::P521 => {
                use p521 as $m;
                $body
            }
            Curve::Secp256k1 => {
                use k256 as $m;
                $body
            }
        }
    };
}

/// Run `$body` with `$t` naming the hash type of `$hash`.
macro_rules! on_hash {
    ($hash:expr, $t:ident => $body:expr) => {
        match $hash {
            Hash::Sha1 => {
                type $t = sha1::Sha1;
                $body
            }
            Hash::Sha224 => {
                type $t = sha2::Sha224;
                $body
            }
            Hash::Sha256 => {
                type $t = sha2::Sha256;
                $body
            }
            Hash::Sha384 => {
                type $t = sha2::Sha384;
                $body
            }
            Hash::Sha512 => {
                type $t = sha2::Sha512;
                $body
            }
        }
    };
}

/// A SHA-512 digest computed by the caller, in the hasher shape ed25519-dalek's Ed25519ph
/// API takes (it only finalizes it).
#[derive(Clone)]
struct Sha512Digest([u8; 64]);

impl Default for Sha512Digest {
    fn default() -> Sha512Digest {
        Sha512Digest([0; 64])
    }
}

impl sha2::digest::HashMarker for Sha512Digest {}

impl sha2::digest::OutputSizeUser for Sha512Digest {
    type OutputSize = sha2::digest::consts::U64;
}

impl sha2::digest::Update for Sha512Digest {
    fn update(&mut self, _: &[u8]) {}
}

impl sha2::digest::FixedOutput for Sha512Digest {
    fn finalize_into(self, out: &mut sha2::digest::Output<Self>) {
        out.copy_from_slice(&self.0);
    }
}

fn ed25519ph_digest(input: &[u8]) -> Result<Sha512Digest, VaultError> {
    let d: [u8; 64] = input
        .try_into()
        .map_err(|_| bad_input("Ed25519ph needs a 64-byte SHA-512 digest"))?;
    Ok(Sha512Digest(d))
}

impl Material {
    fn new_pair(spec: PairSpec) -> Result<Material, VaultError> {
        Ok(match spec {
            PairSpec::Rsa(bits) => {
                if !(1024..=8192).contains(&bits) {
                    return Err(internal(format!(
                        "RSA-{bits}: CKR_KEY_SIZE_RANGE (C_GenerateKeyPair)"
                    )));
                }
                Material::Rsa(Box::new(
                    RsaPrivateKey::new(&mut OsRng, bits as usize).map_err(internal)?,
                ))
            }
            PairSpec::Ec(curve) => on_curve!(curve, c => {
                let sk = c::SecretKey::random(&mut OsRng);
                Material::Ec(curve, Zeroizing::new(sk.to_bytes().to_vec()))
            }),
            PairSpec::Ed25519 => {
                let mut seed = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(seed.as_mut());
                Material::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
        })
    }

    fn new(kind: KeyKind) -> Result<Material, VaultError> {
        match kind {
            KeyKind::Aes => {
                let mut k = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(k.as_mut());
                Ok(Material::Aes(k))
            }
            KeyKind::Hmac(0) => Err(internal("HMAC key of 0 bytes: CKR_KEY_SIZE_RANGE")),
            KeyKind::Hmac(len) => Ok(Material::Hmac(random_bytes(len))),
            KeyKind::Pair(spec, usage) => {
                let ok = matches!(
                    (spec, usage),
                    (
                        PairSpec::Rsa(_),
                        PairUse::Sign | PairUse::Decrypt | PairUse::Unwrap
                    ) | (PairSpec::Ec(_), PairUse::Sign | PairUse::Derive)
                        | (PairSpec::Ed25519, PairUse::Sign)
                );
                if !ok {
                    return Err(internal(format!("unsupported key pair usage {kind:?}")));
                }
                Material::new_pair(spec)
            }
        }
    }

    /// SubjectPublicKeyInfo DER of a pair's public half.
    fn spki(&self) -> Result<Vec<u8>, VaultError> {
        let der = match self {
            Material::Rsa(k) => k.to_public_key().to_public_key_der(),
            Material::Ec(curve, d) => on_curve!(*curve, c => {
                c::SecretKey::from_slice(d)
                    .map_err(internal)?
                    .public_key()
                    .to_public_key_der()
            }),
            Material::Ed25519(k) => k.verifying_key().to_public_key_der(),
            Material::Aes(_) | Material::Hmac(_) => {
                return Err(internal("a secret key has no public half"))
            }
        };
        Ok(der.map_err(internal)?.as_bytes().to_vec())
    }

    /// PKCS#8 DER of a pair's private half (data key pairs only).
    fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let doc = match self {
            Material::Rsa(k) => k.to_pkcs8_der(),
            Material::Ec(curve, d) => on_curve!(*curve, c => {
                c::SecretKey::from_slice(d).map_err(internal)?.to_pkcs8_der()
            }),
            Material::Ed25519(k) => k.to_pkcs8_der(),
            Material::Aes(_) | Material::Hmac(_) => {
                return Err(internal("a secret key is not a key pair"))
            }
        };
        Ok(Zeroizing::new(doc.map_err(internal)?.as_bytes().to_vec()))
    }

    fn aes(&self, id: &ObjectId) -> Result<Aes256Gcm, VaultError> {
        match self {
            Material::Aes(k) => Aes256Gcm::new_from_slice(k.as_ref()).map_err(internal),
            _ => Err(not_permitted(id, "AES-GCM with a key that is not AES")),
        }
    }

    fn sign(&self, id: &ObjectId, scheme: SignScheme, input: &[u8]) -> Result<Vec<u8>, VaultError> {
        match (scheme, self) {
            (SignScheme::Ecdsa(want), Material::Ec(curve, d)) if want == *curve => {
                on_curve!(*curve, c => {
                    let k = c::ecdsa::SigningKey::from_slice(d).map_err(internal)?;
                    let sig: c::ecdsa::Signature = k.sign_prehash(input).map_err(bad_input)?;
                    Ok(sig.to_der().as_bytes().to_vec())
                })
            }
            (SignScheme::RsaPkcs1(h), Material::Rsa(k)) => {
                if input.len() != h.len() {
                    return Err(bad_input("digest length does not match the hash"));
                }
                let padding = Pkcs1v15Sign {
                    hash_len: Some(h.len()),
                    prefix: h.digest_info_prefix().into(),
                };
                k.sign(padding, input).map_err(bad_input)
            }
            (SignScheme::RsaPss(h), Material::Rsa(k)) => on_hash!(h, H => {
                k.sign_with_rng(&mut OsRng, Pss::new_with_salt::<H>(h.len()), input)
                    .map_err(bad_input)
            }),
            (SignScheme::Ed25519, Material::Ed25519(k)) => {
                use ed25519_dalek::Signer;
                Ok(k.sign(input).to_bytes().to_vec())
            }
            (SignScheme::Ed25519ph, Material::Ed25519(k)) => Ok(k
                .sign_prehashed(ed25519ph_digest(input)?, Some(b""))
                .map_err(internal)?
                .to_bytes()
                .to_vec()),
            _ => Err(not_permitted(id, &format!("{scheme:?} with this key"))),
        }
    }

    /// A malformed or wrong signature is `false`, as on the token.
    fn verify(
        &self,
        id: &ObjectId,
        scheme: SignScheme,
        input: &[u8],
        signature: &[u8],
    ) -> Result<bool, VaultError> {
        match (scheme, self) {
            (SignScheme::Ecdsa(want), Material::Ec(curve, d)) if want == *curve => {
                on_curve!(*curve, c => {
                    let k = c::ecdsa::SigningKey::from_slice(d).map_err(internal)?;
                    let Ok(sig) = c::ecdsa::Signature::from_der(signature) else {
                        return Ok(false);
                    };
                    // Tokens accept either s; the crates reject high s on secp256k1.
                    let sig = sig.normalize_s().unwrap_or(sig);
                    let vk = c::ecdsa::VerifyingKey::from(&k);
                    Ok(vk.verify_prehash(input, &sig).is_ok())
                })
            }
            (SignScheme::RsaPkcs1(h), Material::Rsa(k)) => {
                let padding = Pkcs1v15Sign {
                    hash_len: Some(h.len()),
                    prefix: h.digest_info_prefix().into(),
                };
                Ok(k.to_public_key().verify(padding, input, signature).is_ok())
            }
            (SignScheme::RsaPss(h), Material::Rsa(k)) => on_hash!(h, H => {
                let padding = Pss::new_with_salt::<H>(h.len());
                Ok(k.to_public_key().verify(padding, input, signature).is_ok())
            }),
            (SignScheme::Ed25519 | SignScheme::Ed25519ph, Material::Ed25519(k)) => {
                let Ok(sig) = EdSignature::from_slice(signature) else {
                    return Ok(false);
                };
                let vk = k.verifying_key();
                Ok(if scheme == SignScheme::Ed25519 {
                    vk.verify_strict(input, &sig).is_ok()
                } else {
                    let Ok(d) = ed25519ph_digest(input) else {
                        return Ok(false);
                    };
                    vk.verify_prehashed_strict(d, Some(b""), &sig).is_ok()
                })
            }
            _ => Err(not_permitted(id, &format!("{scheme:?} with this key"))),
        }
    }
}

/// The key `id` as `kind` needs it (wrong type or usage: refused like a token would).
fn expect_pair(s: &Stored, id: &ObjectId, usage: PairUse) -> Result<(), VaultError> {
    match s.kind {
        KeyKind::Pair(_, u) if u == usage => Ok(()),
        _ => Err(not_permitted(
            id,
            &format!("{usage:?} with a {:?} key", s.kind),
        )),
    }
}

impl FakeVault {
    /// Imported material as the HSMs would unwrap it (RSA-OAEP only), checked to fit `kind`.
    fn unwrap_imported(&self, w: &WrappedMaterial, kind: KeyKind) -> Result<Material, VaultError> {
        if let Some(m) = self.import_unsupported(w.wrapping) {
            return Err(VaultError::Unsupported {
                mechanism: m,
                detail: "the fake HSMs".into(),
            });
        }
        let s = self.find(&w.key)?;
        expect_pair(&s, &w.key, PairUse::Unwrap)?;
        let Material::Rsa(k) = &*s.material else {
            return Err(not_permitted(&w.key, "unwrap with a key that is not RSA"));
        };
        if w.material.len() != k.size() || k.size() != w.modulus_len {
            return Err(VaultError::InvalidCiphertext);
        }
        let plain = on_hash!(w.wrapping.hash(), H => k.decrypt(Oaep::new::<H>(), &w.material))
            .map(Zeroizing::new)
            .map_err(|_| VaultError::InvalidCiphertext)?;
        let wrong = |want: usize| {
            VaultError::WrongKeyMaterial(format!(
                "The key material is {} bytes long; this key needs {want} bytes.",
                plain.len()
            ))
        };
        match kind {
            KeyKind::Aes => {
                let k: [u8; 32] = plain.as_slice().try_into().map_err(|_| wrong(32))?;
                Ok(Material::Aes(Zeroizing::new(k)))
            }
            KeyKind::Hmac(len) if plain.len() == len => Ok(Material::Hmac(plain)),
            KeyKind::Hmac(len) => Err(wrong(len)),
            KeyKind::Pair(..) => Err(VaultError::Unsupported {
                mechanism: "imported key pairs".into(),
                detail: "not modelled by the in-memory vault".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl KeyVault for FakeVault {
    async fn create_key(
        &self,
        id: &ObjectId,
        label: &str,
        kind: KeyKind,
    ) -> Result<NewKey, VaultError> {
        self.begin("create_key")?;
        {
            let st = self.state.lock();
            st.need_up(2)?;
            if let Some(h) = st.hsms.iter().find(|h| h.objects.contains_key(id)) {
                return Err(internal(format!(
                    "{}: an object {id} already exists",
                    h.name
                )));
            }
            if matches!(kind, KeyKind::Pair(PairSpec::Ed25519, _)) && !st.ed25519 {
                return Err(VaultError::Unsupported {
                    mechanism: "CKM_EC_EDWARDS_KEY_PAIR_GEN".into(),
                    detail: "the fake HSMs are set not to hold Ed25519 keys".into(),
                });
            }
        }
        let material = Arc::new(Material::new(kind)?);
        let (public_key, check_value) = match &*material {
            Material::Aes(k) => (None, Some(check_of(k.as_slice()))),
            Material::Hmac(k) => (None, Some(check_of(k.as_slice()))),
            _ => (Some(material.spki()?), None),
        };
        let mut st = self.state.lock();
        st.need_up(2)?;
        let stored = Stored {
            kind,
            label: label.to_string(),
            material,
        };
        for h in st.hsms.iter_mut().filter(|h| h.up) {
            h.objects.insert(id.clone(), stored.clone());
        }
        Ok(NewKey {
            public_key,
            check_value,
        })
    }

    async fn destroy_key(&self, id: &ObjectId) -> Result<(), VaultError> {
        self.begin("destroy_key")?;
        let mut st = self.state.lock();
        let mut down = Vec::new();
        for h in st.hsms.iter_mut() {
            if h.up {
                h.objects.remove(id);
            } else {
                down.push(h.name.clone());
            }
        }
        if !down.is_empty() {
            return Err(VaultError::Unavailable(format!(
                "{}: down; {id} not destroyed there",
                down.join(", ")
            )));
        }
        st.destroyed.push(id.clone());
        Ok(())
    }

    async fn replicate_missing(
        &self,
        keys: &[(ObjectId, String, KeyKind)],
    ) -> Result<usize, VaultError> {
        self.begin("replicate_missing")?;
        let mut st = self.state.lock();
        let mut copies = 0;
        for (id, label, kind) in keys {
            let Some(src) = st.up().find_map(|h| h.objects.get(id).cloned()) else {
                continue;
            };
            for h in st.hsms.iter_mut().filter(|h| h.up) {
                if h.objects.contains_key(id) {
                    continue;
                }
                if src.kind != *kind {
                    return Err(internal(format!(
                        "{id} is a {:?} key, not {kind:?}: key kind mismatch",
                        src.kind
                    )));
                }
                h.objects.insert(
                    id.clone(),
                    Stored {
                        kind: *kind,
                        label: label.clone(),
                        material: src.material.clone(),
                    },
                );
                copies += 1;
            }
        }
        Ok(copies)
    }

    async fn encrypt(
        &self,
        id: &ObjectId,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Sealed, VaultError> {
        self.begin("encrypt")?;
        let cipher = self.find(id)?.material.aes(id)?;
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(internal)?;
        Ok((iv, ct))
    }

    async fn decrypt(
        &self,
        id: &ObjectId,
        iv: [u8; IV_LEN],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.begin("decrypt")?;
        let cipher = self.find(id)?.material.aes(id)?;
        cipher
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::InvalidCiphertext)
    }

    async fn generate_data_key(
        &self,
        id: &ObjectId,
        n: usize,
        aad: Vec<u8>,
    ) -> Result<SealedDataKey, VaultError> {
        self.begin("generate_data_key")?;
        let cipher = self.find(id)?.material.aes(id)?;
        let plaintext = random_bytes(n);
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(internal)?;
        Ok((plaintext, iv, ct))
    }

    async fn check_value(
        &self,
        id: &ObjectId,
        kind: KeyKind,
    ) -> Result<Option<[u8; CHECK_LEN]>, VaultError> {
        self.begin("check_value")?;
        let st = self.state.lock();
        let mut seen = Vec::new();
        for h in st.hsms.iter().filter(|h| h.up) {
            if let Some(s) = h.objects.get(id) {
                let bytes: &[u8] = match (&*s.material, kind) {
                    (Material::Aes(k), KeyKind::Aes) => k.as_slice(),
                    (Material::Hmac(k), KeyKind::Hmac(_)) => k.as_slice(),
                    _ => return Ok(None),
                };
                seen.push(check_of(bytes));
            }
        }
        match seen.first() {
            None => Ok(None),
            Some(f) if seen.iter().all(|v| v == f) => Ok(Some(*f)),
            Some(_) => Err(VaultError::Failed {
                message: format!("copies of {id} disagree"),
                retryable: false,
            }),
        }
    }

    async fn inventory(&self) -> Vec<(String, bool, Vec<ObjectId>)> {
        self.state
            .lock()
            .hsms
            .iter()
            .map(|h| (h.name.clone(), h.up, h.objects.keys().cloned().collect()))
            .collect()
    }

    fn reverify_copies(&self) {
        self.count("reverify_copies");
    }

    fn expect_check_values(&self, values: Vec<(ObjectId, KeyKind, [u8; CHECK_LEN])>) {
        self.state.lock().expected.extend(values);
    }

    async fn random(&self, n: usize) -> Result<Vec<u8>, VaultError> {
        self.begin("random")?;
        self.state.lock().need_up(1)?;
        let mut v = vec![0u8; n];
        OsRng.fill_bytes(&mut v);
        Ok(v)
    }

    async fn sign(
        &self,
        id: &ObjectId,
        scheme: SignScheme,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError> {
        self.begin("sign")?;
        let s = self.find(id)?;
        expect_pair(&s, id, PairUse::Sign)?;
        s.material.sign(id, scheme, &input)
    }

    async fn verify(
        &self,
        id: &ObjectId,
        scheme: SignScheme,
        input: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, VaultError> {
        self.begin("verify")?;
        let s = self.find(id)?;
        expect_pair(&s, id, PairUse::Sign)?;
        s.material.verify(id, scheme, &input, &signature)
    }

    async fn mac(
        &self,
        id: &ObjectId,
        hash: Hash,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, VaultError> {
        self.begin("mac")?;
        let s = self.find(id)?;
        let Material::Hmac(key) = &*s.material else {
            return Err(not_permitted(id, "HMAC with a key that is not an HMAC key"));
        };
        on_hash!(hash, H => {
            use hmac::Mac;
            let mut m = <hmac::Hmac<H> as Mac>::new_from_slice(key).map_err(internal)?;
            m.update(&message);
            Ok(m.finalize().into_bytes().to_vec())
        })
    }

    async fn rsa_oaep_decrypt(
        &self,
        id: &ObjectId,
        hash: Hash,
        modulus_len: usize,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.begin("rsa_oaep_decrypt")?;
        let s = self.find(id)?;
        expect_pair(&s, id, PairUse::Decrypt)?;
        let Material::Rsa(k) = &*s.material else {
            return Err(not_permitted(id, "RSA-OAEP with a key that is not RSA"));
        };
        if k.size() != modulus_len {
            return Err(internal(format!(
                "{id}: modulus is {} bytes, not {modulus_len}",
                k.size()
            )));
        }
        if ciphertext.len() != modulus_len {
            return Err(VaultError::InvalidCiphertext);
        }
        on_hash!(hash, H => k.decrypt(Oaep::new::<H>(), &ciphertext))
            .map(Zeroizing::new)
            .map_err(|_| VaultError::InvalidCiphertext)
    }

    async fn derive_shared_secret(
        &self,
        id: &ObjectId,
        curve: Curve,
        peer_point: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.begin("derive_shared_secret")?;
        let s = self.find(id)?;
        expect_pair(&s, id, PairUse::Derive)?;
        let Material::Ec(key_curve, d) = &*s.material else {
            return Err(not_permitted(id, "ECDH with a key that is not EC"));
        };
        if *key_curve != curve {
            return Err(not_permitted(
                id,
                &format!("ECDH on {curve:?} with a {key_curve:?} key"),
            ));
        }
        let invalid = || {
            VaultError::InvalidInput(
                "The public key is not a valid point on the key's curve.".into(),
            )
        };
        if peer_point.len() != curve.point_len() || peer_point.first() != Some(&0x04) {
            return Err(invalid());
        }
        on_curve!(curve, c => {
            let sk = c::SecretKey::from_slice(d).map_err(internal)?;
            let peer = c::PublicKey::from_sec1_bytes(&peer_point).map_err(|_| invalid())?;
            let shared = c::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.as_affine());
            Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
        })
    }

    async fn generate_data_key_pair(&self, spec: PairSpec) -> Result<DataKeyPair, VaultError> {
        self.begin("generate_data_key_pair")?;
        self.state.lock().need_up(1)?;
        let m = Material::new_pair(spec)?;
        Ok((m.pkcs8()?, m.spki()?))
    }

    fn kind_unavailable(&self, kind: KeyKind) -> Option<String> {
        self.count("kind_unavailable");
        (matches!(kind, KeyKind::Pair(PairSpec::Ed25519, _)) && !self.state.lock().ed25519).then(
            || {
                "C_WrapKey of CKK_EC_EDWARDS private keys with CKM_AES_KEY_WRAP_PAD is missing \
                 in HSM fake-0; C_WrapKey of CKK_EC_EDWARDS private keys with \
                 CKM_AES_KEY_WRAP_PAD is missing in HSM fake-1"
                    .to_string()
            },
        )
    }

    fn import_unsupported(&self, wrapping: ImportWrapping) -> Option<String> {
        match wrapping {
            ImportWrapping::Oaep(Hash::Sha1 | Hash::Sha256) => None,
            ImportWrapping::Oaep(h) => Some(format!("CKM_RSA_PKCS_OAEP with {}", h.name())),
            ImportWrapping::RsaAes(_) => {
                Some("CKM_AES_KEY_WRAP_PAD (not modelled by the in-memory vault)".into())
            }
        }
    }

    async fn import_key(
        &self,
        wrapped: &WrappedMaterial,
        id: &ObjectId,
        label: &str,
        kind: KeyKind,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        self.begin("import_key")?;
        let material = Arc::new(self.unwrap_imported(wrapped, kind)?);
        let mut st = self.state.lock();
        st.need_up(2)?;
        if let Some(h) = st.hsms.iter().find(|h| h.objects.contains_key(id)) {
            return Err(internal(format!(
                "{}: an object {id} already exists",
                h.name
            )));
        }
        let stored = Stored {
            kind,
            label: label.to_string(),
            material,
        };
        for h in st.hsms.iter_mut().filter(|h| h.up) {
            h.objects.insert(id.clone(), stored.clone());
        }
        Ok(None)
    }

    async fn imported_check_value(
        &self,
        wrapped: &WrappedMaterial,
        _id: &ObjectId,
        kind: KeyKind,
    ) -> Result<[u8; CHECK_LEN], VaultError> {
        self.begin("imported_check_value")?;
        let m = self.unwrap_imported(wrapped, kind)?;
        let bytes: &[u8] = match &m {
            Material::Aes(k) => k.as_slice(),
            Material::Hmac(k) => k.as_slice(),
            _ => return Err(internal("imported key pairs are not modelled")),
        };
        Ok(check_of(bytes))
    }

    fn health(&self) -> Vec<HsmStatus> {
        self.count("health");
        let st = self.state.lock();
        st.hsms
            .iter()
            .map(|h| HsmStatus {
                name: h.name.clone(),
                healthy: h.up,
                detail: serde_json::json!({
                    "name": h.name,
                    "state": if h.up { "Healthy" } else { "Down" },
                    "objects": h.objects.len(),
                }),
                gauges: super::HsmGauges {
                    state: if h.up { "Healthy" } else { "Down" },
                    ..Default::default()
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::RsaPublicKey;
    use sha2::Digest;

    const CURVES: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];

    fn oid(s: &str) -> ObjectId {
        ObjectId::new(s)
    }

    fn digest_for(curve: Curve, msg: &[u8]) -> Vec<u8> {
        match curve {
            Curve::P256 | Curve::Secp256k1 => Hash::Sha256.digest(msg),
            Curve::P384 => Hash::Sha384.digest(msg),
            Curve::P521 => Hash::Sha512.digest(msg),
        }
    }

    fn is_retryable_failure(e: &VaultError) -> bool {
        matches!(
            e,
            VaultError::Failed {
                retryable: true,
                ..
            }
        )
    }

    fn is_fatal_failure(e: &VaultError) -> bool {
        matches!(
            e,
            VaultError::Failed {
                retryable: false,
                ..
            }
        )
    }

    #[tokio::test]
    async fn aes_round_trip_fresh_ivs_and_tag_failures() {
        let v = FakeVault::new(3);
        let id = oid("kms/k1/1");
        let made = v.create_key(&id, "k1", KeyKind::Aes).await.unwrap();
        assert_eq!(made.public_key, None);
        assert!(made.check_value.is_some());
        assert!((0..3).all(|i| v.holds(i, &id)));
        let pt = Zeroizing::new(b"hello".to_vec());
        let (iv, ct) = v.encrypt(&id, b"ctx".to_vec(), pt.clone()).await.unwrap();
        assert_eq!(ct.len(), 5 + 16);
        let (iv2, ct2) = v.encrypt(&id, b"ctx".to_vec(), pt.clone()).await.unwrap();
        assert_ne!((iv, &ct), (iv2, &ct2));
        let back = v
            .decrypt(&id, iv, b"ctx".to_vec(), ct.clone())
            .await
            .unwrap();
        assert_eq!(back.as_slice(), b"hello");

        let wrong_aad = v.decrypt(&id, iv, b"other".to_vec(), ct.clone()).await;
        assert!(matches!(wrong_aad, Err(VaultError::InvalidCiphertext)));
        let mut flipped = ct.clone();
        flipped[0] ^= 1;
        let e = v
            .decrypt(&id, iv, b"ctx".to_vec(), flipped)
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::InvalidCiphertext) && !e.retryable());
        let short = v.decrypt(&id, iv, b"ctx".to_vec(), vec![1, 2, 3]).await;
        assert!(matches!(short, Err(VaultError::InvalidCiphertext)));

        // Another key of the same kind cannot open it.
        let other = oid("kms/k2/1");
        v.create_key(&other, "k2", KeyKind::Aes).await.unwrap();
        let e = v
            .decrypt(&other, iv, b"ctx".to_vec(), ct)
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::InvalidCiphertext));
    }

    #[tokio::test]
    async fn data_keys_and_random() {
        let v = FakeVault::new(2);
        let id = oid("kms/dk/1");
        v.create_key(&id, "dk", KeyKind::Aes).await.unwrap();
        let (pt, iv, ct) = v.generate_data_key(&id, 32, b"a".to_vec()).await.unwrap();
        assert_eq!(pt.len(), 32);
        let back = v.decrypt(&id, iv, b"a".to_vec(), ct).await.unwrap();
        assert_eq!(back.as_slice(), pt.as_slice());

        let r1 = v.random(48).await.unwrap();
        let r2 = v.random(48).await.unwrap();
        assert_eq!(r1.len(), 48);
        assert_ne!(r1, r2);
        assert!(v.random(0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn hmac_is_deterministic_and_per_key() {
        let v = FakeVault::new(3);
        let (a, b) = (oid("kms/m1/1"), oid("kms/m2/1"));
        v.create_key(&a, "m1", KeyKind::Hmac(32)).await.unwrap();
        v.create_key(&b, "m2", KeyKind::Hmac(64)).await.unwrap();
        for (h, len) in [
            (Hash::Sha1, 20),
            (Hash::Sha224, 28),
            (Hash::Sha256, 32),
            (Hash::Sha384, 48),
            (Hash::Sha512, 64),
        ] {
            let m1 = v.mac(&a, h, b"msg".to_vec()).await.unwrap();
            assert_eq!(m1.len(), len);
            assert_eq!(m1, v.mac(&a, h, b"msg".to_vec()).await.unwrap());
            assert_ne!(m1, v.mac(&a, h, b"msh".to_vec()).await.unwrap());
            assert_ne!(m1, v.mac(&b, h, b"msg".to_vec()).await.unwrap());
        }
        // Every HSM's copy gives the same MAC.
        let want = v.mac(&a, Hash::Sha256, b"x".to_vec()).await.unwrap();
        v.set_down(0, true);
        v.set_down(1, true);
        assert_eq!(v.mac(&a, Hash::Sha256, b"x".to_vec()).await.unwrap(), want);
        // An HMAC key is not an AES key, nor the reverse.
        v.set_down(0, false);
        v.set_down(1, false);
        let e = v
            .encrypt(&a, vec![], Zeroizing::new(vec![1]))
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
        let aes = oid("kms/aes/1");
        v.create_key(&aes, "aes", KeyKind::Aes).await.unwrap();
        let e = v.mac(&aes, Hash::Sha256, vec![]).await.unwrap_err();
        assert!(is_fatal_failure(&e));
    }

    #[tokio::test]
    async fn ecdsa_sign_verify_on_every_curve() {
        let v = FakeVault::new(2);
        for curve in CURVES {
            let id = oid(&format!("kms/ec-{curve:?}/1"));
            let spki = v
                .create_key(&id, "ec", KeyKind::Pair(PairSpec::Ec(curve), PairUse::Sign))
                .await
                .unwrap()
                .public_key
                .unwrap();
            assert_eq!(
                crate::pkix::parse_ec_spki(&spki).map(|(c, _)| c),
                Some(curve)
            );
            let digest = digest_for(curve, b"message");
            let scheme = SignScheme::Ecdsa(curve);
            let sig = v.sign(&id, scheme, digest.clone()).await.unwrap();
            assert!(v
                .verify(&id, scheme, digest.clone(), sig.clone())
                .await
                .unwrap());
            let other = digest_for(curve, b"other");
            assert!(!v.verify(&id, scheme, other, sig.clone()).await.unwrap());
            assert!(!v
                .verify(&id, scheme, digest.clone(), vec![0x30, 0])
                .await
                .unwrap());
            // An independent implementation accepts the DER signature under the SPKI.
            on_curve!(curve, c => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let pk = c::PublicKey::from_public_key_der(&spki).unwrap();
                let point = pk.to_encoded_point(false);
                let vk = c::ecdsa::VerifyingKey::from_sec1_bytes(point.as_bytes()).unwrap();
                let s = c::ecdsa::Signature::from_der(&sig).unwrap();
                vk.verify_prehash(&digest, &s).unwrap();
            });
        }
        // A key of another curve, or another scheme, is refused.
        let id = oid("kms/ec-P256/1");
        let e = v
            .sign(&id, SignScheme::Ecdsa(Curve::P384), vec![0; 48])
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
        let e = v
            .sign(&id, SignScheme::RsaPss(Hash::Sha256), vec![0; 32])
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
    }

    #[tokio::test]
    async fn rsa_pkcs1_and_pss_sign_verify() {
        let v = FakeVault::new(2);
        let id = oid("kms/rsa-sign/1");
        let spki = v
            .create_key(&id, "r", KeyKind::Pair(PairSpec::Rsa(2048), PairUse::Sign))
            .await
            .unwrap()
            .public_key
            .unwrap();
        let public = RsaPublicKey::from_public_key_der(&spki).unwrap();
        assert_eq!(public.size(), 256);
        for h in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let digest = h.digest(b"message");
            for scheme in [SignScheme::RsaPkcs1(h), SignScheme::RsaPss(h)] {
                let sig = v.sign(&id, scheme, digest.clone()).await.unwrap();
                assert_eq!(sig.len(), 256);
                assert!(v
                    .verify(&id, scheme, digest.clone(), sig.clone())
                    .await
                    .unwrap());
                let mut bad = sig.clone();
                bad[10] ^= 1;
                assert!(!v.verify(&id, scheme, digest.clone(), bad).await.unwrap());
                assert!(!v
                    .verify(&id, scheme, digest.clone(), vec![1; 3])
                    .await
                    .unwrap());
            }
        }
        // Independent checks with the standard paddings.
        let digest = sha2::Sha256::digest(b"message").to_vec();
        let sig = v
            .sign(&id, SignScheme::RsaPkcs1(Hash::Sha256), digest.clone())
            .await
            .unwrap();
        public
            .verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &sig)
            .unwrap();
        let sig = v
            .sign(&id, SignScheme::RsaPss(Hash::Sha256), digest.clone())
            .await
            .unwrap();
        public
            .verify(Pss::new::<sha2::Sha256>(), &digest, &sig)
            .unwrap();
        // A digest of the wrong length is the caller's fault.
        let e = v
            .sign(&id, SignScheme::RsaPkcs1(Hash::Sha256), vec![0; 20])
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::InvalidInput(_)));
        // A signing key does not decrypt.
        let e = v
            .rsa_oaep_decrypt(&id, Hash::Sha256, 256, vec![0; 256])
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
    }

    #[tokio::test]
    async fn rsa_oaep_decrypt_sha1_and_sha256() {
        let v = FakeVault::new(2);
        let id = oid("kms/rsa-enc/1");
        let spki = v
            .create_key(
                &id,
                "r",
                KeyKind::Pair(PairSpec::Rsa(2048), PairUse::Decrypt),
            )
            .await
            .unwrap()
            .public_key
            .unwrap();
        let public = RsaPublicKey::from_public_key_der(&spki).unwrap();
        let ct1 = public
            .encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), b"one")
            .unwrap();
        let ct256 = public
            .encrypt(&mut OsRng, Oaep::new::<sha2::Sha256>(), b"two")
            .unwrap();
        let pt = v
            .rsa_oaep_decrypt(&id, Hash::Sha1, 256, ct1.clone())
            .await
            .unwrap();
        assert_eq!(pt.as_slice(), b"one");
        let pt = v
            .rsa_oaep_decrypt(&id, Hash::Sha256, 256, ct256.clone())
            .await
            .unwrap();
        assert_eq!(pt.as_slice(), b"two");
        // The wrong hash, a short blob or garbage fail authentication.
        for (h, ct) in [
            (Hash::Sha256, ct1.clone()),
            (Hash::Sha1, ct1[..255].to_vec()),
            (Hash::Sha1, vec![7; 256]),
        ] {
            let e = v.rsa_oaep_decrypt(&id, h, 256, ct).await.unwrap_err();
            assert!(matches!(e, VaultError::InvalidCiphertext), "{e:?}");
        }
        // A decryption key does not sign.
        let e = v
            .sign(&id, SignScheme::RsaPss(Hash::Sha256), vec![0; 32])
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
    }

    #[tokio::test]
    async fn ecdh_matches_the_peer_on_every_curve() {
        let v = FakeVault::new(2);
        for curve in CURVES {
            let id = oid(&format!("kms/ecdh-{curve:?}/1"));
            let spki = v
                .create_key(
                    &id,
                    "d",
                    KeyKind::Pair(PairSpec::Ec(curve), PairUse::Derive),
                )
                .await
                .unwrap()
                .public_key
                .unwrap();
            on_curve!(curve, c => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let ours = c::PublicKey::from_public_key_der(&spki).unwrap();
                let peer = c::SecretKey::random(&mut OsRng);
                let point = peer.public_key().to_encoded_point(false).as_bytes().to_vec();
                let got = v.derive_shared_secret(&id, curve, point).await.unwrap();
                let want = c::ecdh::diffie_hellman(peer.to_nonzero_scalar(), ours.as_affine());
                assert_eq!(got.as_slice(), want.raw_secret_bytes().as_slice());
                assert_eq!(got.len(), curve.field_len());
            });
            let mut off_curve = vec![0x04];
            off_curve.extend(vec![1u8; 2 * curve.field_len()]);
            let e = v
                .derive_shared_secret(&id, curve, off_curve)
                .await
                .unwrap_err();
            assert!(matches!(e, VaultError::InvalidInput(_)), "{e:?}");
            // A derive key does not sign.
            let e = v
                .sign(&id, SignScheme::Ecdsa(curve), digest_for(curve, b"m"))
                .await
                .unwrap_err();
            assert!(is_fatal_failure(&e));
        }
    }

    #[tokio::test]
    async fn ed25519_pure_and_prehashed() {
        let v = FakeVault::new(2);
        assert_eq!(
            v.kind_unavailable(KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign)),
            None
        );
        let id = oid("kms/ed/1");
        let spki = v
            .create_key(&id, "ed", KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign))
            .await
            .unwrap()
            .public_key
            .unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&spki).unwrap();

        let sig = v
            .sign(&id, SignScheme::Ed25519, b"message".to_vec())
            .await
            .unwrap();
        assert_eq!(sig.len(), 64);
        let s = EdSignature::from_slice(&sig).unwrap();
        vk.verify_strict(b"message", &s).unwrap();
        assert!(v
            .verify(&id, SignScheme::Ed25519, b"message".to_vec(), sig.clone())
            .await
            .unwrap());
        assert!(!v
            .verify(&id, SignScheme::Ed25519, b"massage".to_vec(), sig.clone())
            .await
            .unwrap());
        assert!(!v
            .verify(&id, SignScheme::Ed25519, b"message".to_vec(), vec![0; 10])
            .await
            .unwrap());

        let digest = sha2::Sha512::digest(b"message").to_vec();
        let sig = v
            .sign(&id, SignScheme::Ed25519ph, digest.clone())
            .await
            .unwrap();
        let s = EdSignature::from_slice(&sig).unwrap();
        vk.verify_prehashed(sha2::Sha512::new().chain_update(b"message"), Some(b""), &s)
            .unwrap();
        assert!(v
            .verify(&id, SignScheme::Ed25519ph, digest.clone(), sig.clone())
            .await
            .unwrap());
        assert!(!v
            .verify(&id, SignScheme::Ed25519, digest, sig)
            .await
            .unwrap());
        let e = v
            .sign(&id, SignScheme::Ed25519ph, vec![0; 32])
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::InvalidInput(_)));
    }

    #[tokio::test]
    async fn ed25519_keys_can_be_switched_off() {
        let v = FakeVault::new(2).with_ed25519_keys(false);
        assert!(v
            .kind_unavailable(KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign))
            .is_some());
        let e = v
            .create_key(
                &oid("kms/ed/1"),
                "ed",
                KeyKind::Pair(PairSpec::Ed25519, PairUse::Sign),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, VaultError::Unsupported { .. }) && !e.retryable());
        assert_eq!(v.object_count(), 0);
    }

    #[tokio::test]
    async fn data_key_pairs_are_matching_pkcs8_and_spki() {
        let v = FakeVault::new(1);
        let (private, public) = v.generate_data_key_pair(PairSpec::Rsa(2048)).await.unwrap();
        let k = RsaPrivateKey::from_pkcs8_der(&private).unwrap();
        assert_eq!(
            k.to_public_key().to_public_key_der().unwrap().as_bytes(),
            public.as_slice()
        );
        for curve in CURVES {
            let (private, public) = v.generate_data_key_pair(PairSpec::Ec(curve)).await.unwrap();
            on_curve!(curve, c => {
                let k = c::SecretKey::from_pkcs8_der(&private).unwrap();
                assert_eq!(
                    k.public_key().to_public_key_der().unwrap().as_bytes(),
                    public.as_slice()
                );
            });
        }
        let (private, public) = v.generate_data_key_pair(PairSpec::Ed25519).await.unwrap();
        let k = ed25519_dalek::SigningKey::from_pkcs8_der(&private).unwrap();
        assert_eq!(
            k.verifying_key().to_public_key_der().unwrap().as_bytes(),
            public.as_slice()
        );
        // Nothing is stored.
        assert_eq!(v.object_count(), 0);
    }

    #[tokio::test]
    async fn create_needs_two_up_hsms_and_skips_down_ones() {
        let v = FakeVault::new(3);
        v.set_down(0, true);
        v.set_down(2, true);
        let id = oid("kms/a/1");
        let e = v.create_key(&id, "a", KeyKind::Aes).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "fewer than 2 HSMs hold a healthy copy (1 usable)"
        );
        assert!(e.retryable());
        assert_eq!(v.object_count(), 0);

        v.set_down(2, false);
        v.create_key(&id, "a", KeyKind::Aes).await.unwrap();
        assert!(!v.holds(0, &id) && v.holds(1, &id) && v.holds(2, &id));
        assert_eq!(v.object_count(), 1);

        // A second key with the same name is refused.
        v.set_down(0, false);
        let e = v.create_key(&id, "a", KeyKind::Aes).await.unwrap_err();
        assert!(is_fatal_failure(&e));

        // A single HSM never holds a key alone.
        let one = FakeVault::new(1);
        let e = one.create_key(&id, "a", KeyKind::Aes).await.unwrap_err();
        assert!(matches!(
            e,
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
    }

    #[tokio::test]
    async fn operations_fail_over_to_an_up_hsm_that_holds_the_key() {
        let v = FakeVault::new(3);
        let id = oid("kms/a/1");
        v.set_down(2, true);
        v.create_key(&id, "a", KeyKind::Aes).await.unwrap();
        v.set_down(2, false);
        let (iv, ct) = v
            .encrypt(&id, vec![], Zeroizing::new(b"x".to_vec()))
            .await
            .unwrap();

        // hsm-0 down: hsm-1 answers.
        v.set_down(0, true);
        assert_eq!(
            v.decrypt(&id, iv, vec![], ct.clone())
                .await
                .unwrap()
                .as_slice(),
            b"x"
        );
        // Only hsm-2 (which lacks the key) up: a retryable miss.
        v.set_down(1, true);
        let e = v.decrypt(&id, iv, vec![], ct.clone()).await.unwrap_err();
        assert!(is_retryable_failure(&e), "{e:?}");
        // Nothing up: unavailable, for key operations and random alike.
        v.set_down(2, true);
        let e = v.decrypt(&id, iv, vec![], ct.clone()).await.unwrap_err();
        assert!(matches!(
            e,
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
        assert!(matches!(
            v.random(8).await.unwrap_err(),
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
        assert!(matches!(
            v.generate_data_key_pair(PairSpec::Ec(Curve::P256))
                .await
                .unwrap_err(),
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
    }

    #[tokio::test]
    async fn unknown_object_is_a_retryable_failure() {
        let v = FakeVault::new(2);
        let e = v
            .encrypt(&oid("kms/none/1"), vec![], Zeroizing::new(vec![1]))
            .await
            .unwrap_err();
        assert!(is_retryable_failure(&e) && e.retryable(), "{e:?}");
        let e = v
            .sign(&oid("kms/none/1"), SignScheme::Ed25519, vec![1])
            .await
            .unwrap_err();
        assert!(is_retryable_failure(&e));
    }

    #[tokio::test]
    async fn replicate_missing_copies_to_up_hsms_only() {
        let v = FakeVault::new(3);
        let aes = oid("kms/a/1");
        let pair = oid("kms/p/1");
        let mac = oid("kms/m/1");
        let pair_kind = KeyKind::Pair(PairSpec::Ec(Curve::P256), PairUse::Sign);
        v.set_down(2, true);
        v.create_key(&aes, "a", KeyKind::Aes).await.unwrap();
        let spki = v
            .create_key(&pair, "p", pair_kind)
            .await
            .unwrap()
            .public_key
            .unwrap();
        v.create_key(&mac, "m", KeyKind::Hmac(32)).await.unwrap();
        let want_mac = v.mac(&mac, Hash::Sha256, b"m".to_vec()).await.unwrap();
        let (iv, ct) = v
            .encrypt(&aes, vec![], Zeroizing::new(b"x".to_vec()))
            .await
            .unwrap();
        let keys = vec![
            (aes.clone(), "a".to_string(), KeyKind::Aes),
            (pair.clone(), "p".to_string(), pair_kind),
            (mac.clone(), "m".to_string(), KeyKind::Hmac(32)),
            (oid("kms/gone/1"), "g".to_string(), KeyKind::Aes),
        ];
        // Still down: nothing to do.
        assert_eq!(v.replicate_missing(&keys).await.unwrap(), 0);
        v.set_down(2, false);
        assert_eq!(v.replicate_missing(&keys).await.unwrap(), 3);
        assert!(v.holds(2, &aes) && v.holds(2, &pair) && v.holds(2, &mac));
        assert_eq!(v.replicate_missing(&keys).await.unwrap(), 0);

        // The copies are the same keys: hsm-2 alone opens, signs and MACs like the others.
        v.set_down(0, true);
        v.set_down(1, true);
        assert_eq!(
            v.decrypt(&aes, iv, vec![], ct).await.unwrap().as_slice(),
            b"x"
        );
        let digest = Hash::Sha256.digest(b"m");
        let sig = v
            .sign(&pair, SignScheme::Ecdsa(Curve::P256), digest.clone())
            .await
            .unwrap();
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
        vk.verify_prehash(&digest, &p256::ecdsa::Signature::from_der(&sig).unwrap())
            .unwrap();
        assert_eq!(
            v.mac(&mac, Hash::Sha256, b"m".to_vec()).await.unwrap(),
            want_mac
        );

        // A replaced (empty) HSM gets everything back; a wrong kind is refused.
        v.set_down(0, false);
        v.set_down(1, false);
        assert!(v.forget(1, &aes));
        assert!(!v.holds(1, &aes));
        let wrong = [(aes.clone(), "a".to_string(), KeyKind::Hmac(32))];
        assert!(is_fatal_failure(
            &v.replicate_missing(&wrong).await.unwrap_err()
        ));
        assert_eq!(v.replicate_missing(&keys).await.unwrap(), 1);
        assert!(v.holds(1, &aes));
    }

    #[tokio::test]
    async fn destroy_needs_every_hsm() {
        let v = FakeVault::new(3);
        let id = oid("kms/a/1");
        v.create_key(&id, "a", KeyKind::Aes).await.unwrap();
        v.set_down(1, true);
        let e = v.destroy_key(&id).await.unwrap_err();
        assert!(matches!(&e, VaultError::Unavailable(m) if m.contains("hsm-1")));
        assert!(!v.holds(0, &id) && v.holds(1, &id) && !v.holds(2, &id));
        assert!(v.destroyed().is_empty());
        assert_eq!(v.object_count(), 1);

        v.set_down(1, false);
        v.destroy_key(&id).await.unwrap();
        assert_eq!(v.destroyed(), vec![id.clone()]);
        assert_eq!(v.object_count(), 0);
        let e = v
            .encrypt(&id, vec![], Zeroizing::new(vec![1]))
            .await
            .unwrap_err();
        assert!(is_retryable_failure(&e));
        // Destroying what is not there succeeds (as on the tokens).
        v.destroy_key(&oid("kms/never/1")).await.unwrap();
        assert_eq!(v.destroyed().len(), 2);
    }

    #[tokio::test]
    async fn injected_faults_and_call_counters() {
        let v = FakeVault::new(2);
        let id = oid("kms/a/1");
        v.fail_next(2, Fault::Unavailable);
        let e = v.create_key(&id, "a", KeyKind::Aes).await.unwrap_err();
        assert!(matches!(
            e,
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
        let e = v.random(4).await.unwrap_err();
        assert!(matches!(
            e,
            VaultError::Unavailable(_) | VaultError::TooFewCopies { .. }
        ));
        assert_eq!(v.object_count(), 0);
        v.create_key(&id, "a", KeyKind::Aes).await.unwrap();

        v.fail_next_op("decrypt", 1, Fault::Retryable);
        v.fail_next_op("encrypt", 1, Fault::Fatal);
        let e = v
            .encrypt(&id, vec![], Zeroizing::new(vec![1]))
            .await
            .unwrap_err();
        assert!(is_fatal_failure(&e));
        let (iv, ct) = v
            .encrypt(&id, vec![], Zeroizing::new(vec![1]))
            .await
            .unwrap();
        let e = v.decrypt(&id, iv, vec![], ct.clone()).await.unwrap_err();
        assert!(is_retryable_failure(&e));
        v.decrypt(&id, iv, vec![], ct).await.unwrap();

        assert_eq!(v.calls("create_key"), 2);
        assert_eq!(v.calls("random"), 1);
        assert_eq!(v.calls("encrypt"), 2);
        assert_eq!(v.calls("decrypt"), 2);
        assert_eq!(v.calls("sign"), 0);
        v.health();
        assert_eq!(v.calls("health"), 1);
    }

    #[tokio::test]
    async fn health_reports_each_hsm() {
        let v = FakeVault::new(3);
        v.set_down(1, true);
        let h = v.health();
        assert_eq!(h.len(), 3);
        assert_eq!(
            h.iter().map(|s| s.healthy).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(h[1].name, "hsm-1");
        assert_eq!(h[1].detail["name"], "hsm-1");
        assert_eq!(h[1].detail["state"], "Down");
        assert_eq!(h[0].detail["state"], "Healthy");
        assert_eq!(v.hsm_count(), 3);
        assert!(format!("{v:?}").contains("hsm-1"));
    }

    #[tokio::test]
    async fn usable_as_a_shared_dyn_key_vault() {
        let fake = Arc::new(FakeVault::default());
        let vault: Arc<dyn KeyVault> = fake.clone();
        let id = oid("kms/a/1");
        vault.create_key(&id, "a", KeyKind::Aes).await.unwrap();
        assert!(fake.holds(2, &id));
        assert_eq!(fake.calls("create_key"), 1);
    }
}
