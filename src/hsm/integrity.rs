//! Key-copy integrity. A token can silently hold a wrong copy of a key (SoftHSM2 stores key
//! values AES-CBC encrypted with no MAC, so one flipped bit is a different, valid key that
//! answers wrong MACs and makes ciphertexts no other copy can open: hsm-facts.md §10). So:
//!
//! * a copy's **check value** is computed inside its HSM from the key itself: the first
//!   8 bytes of AES-ECB of a zero block for an AES key (the classic key check value), of an
//!   HMAC of a fixed message for an HMAC key (HMAC-SHA-256; HMAC-SHA-224 for a key shorter
//!   than 32 bytes, which tokens refuse under SHA-256). A key pair's is computed by
//!   `keypair::check_value`;
//! * the value is read from the HSM that made a key, when it was made, and the domain
//!   records it with the key (keys made before that: once their copies agree) and hands
//!   the recorded values to the cluster ([`Expected`]) at every start;
//! * each copy is **verified the first time it is used in a module instance** (by
//!   `WorkerCtx::handle`, with the pieces here) (so after every
//!   connect and re-initialization, when a token reloads its objects from disk). A copy that
//!   disagrees is **quarantined**: its `CKA_ID` is renamed (the object stays as evidence but
//!   is never found again), the finding is logged, and the call fails over to another HSM as
//!   for a missing key; re-sync then copies the key back from a copy that agrees.

use super::kinds::KeyKind;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use parking_lot::RwLock;
use std::collections::HashMap;

pub use crate::kms::vault::CHECK_LEN;

/// The message an HMAC key's check value is computed over.
const HMAC_CHECK_MESSAGE: &[u8] = b"hsm-kms key check value";

/// The prefix of a quarantined copy's `CKA_ID`.
const QUARANTINE_PREFIX: &[u8] = b"hsm-kms/quarantine/";

/// The recorded check values of the cluster's keys, shared by every HSM.
#[derive(Debug, Default)]
pub(super) struct Expected {
    values: RwLock<HashMap<Vec<u8>, Check>>,
}

/// A key's kind and the check value recorded for one of its objects.
type Check = (KeyKind, [u8; CHECK_LEN]);

/// A recorded check value: object id, its key's kind, the value.
pub(super) type Recorded = (Vec<u8>, KeyKind, [u8; CHECK_LEN]);

impl Expected {
    /// Record (or replace) the expected values of these objects.
    pub(super) fn extend(&self, values: impl IntoIterator<Item = Recorded>) {
        let mut map = self.values.write();
        for (id, kind, v) in values {
            map.insert(id, (kind, v));
        }
    }

    /// The kind and expected value of object `id`, if one was recorded.
    pub(super) fn get(&self, id: &[u8]) -> Option<Check> {
        self.values.read().get(id).copied()
    }

    /// Every recorded value (what a new HSM host process is sent when it starts).
    pub(super) fn all(&self) -> Vec<Recorded> {
        self.values
            .read()
            .iter()
            .map(|(id, (kind, v))| (id.clone(), *kind, *v))
            .collect()
    }
}

/// The check value of the copy `h` (of kind `kind`) through session `s`; `None` for kinds
/// that have none.
pub(super) fn compute(
    s: &Session,
    h: ObjectHandle,
    kind: KeyKind,
) -> Result<Option<[u8; CHECK_LEN]>, CkError> {
    let out = match kind {
        KeyKind::Aes => s.encrypt(&Mechanism::AesEcb, h, &[0u8; 16])?,
        // Tokens refuse an HMAC key shorter than the hash (SoftHSM2: CKR_KEY_SIZE_RANGE for
        // a 28-byte HMAC_224 key under SHA-256): such a key is checked with HMAC-SHA-224.
        KeyKind::Hmac(len) if len < 32 => s.sign(&Mechanism::Sha224Hmac, h, HMAC_CHECK_MESSAGE)?,
        KeyKind::Hmac(_) => s.sign(&Mechanism::Sha256Hmac, h, HMAC_CHECK_MESSAGE)?,
        KeyKind::Pair(..) => return Ok(None),
    };
    let mut v = [0u8; CHECK_LEN];
    for (d, s) in v.iter_mut().zip(out) {
        *d = s;
    }
    Ok(Some(v))
}

/// The `CKA_ID` a quarantined copy of object `id` is renamed to.
pub(super) fn quarantined_id(id: &[u8]) -> Vec<u8> {
    [QUARANTINE_PREFIX, id].concat()
}
