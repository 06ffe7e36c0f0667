//! Key-copy integrity. A token can silently hold a wrong copy of a key (SoftHSM2 stores key
//! values AES-CBC encrypted with no MAC, so one flipped bit is a different, valid key that
//! answers wrong MACs and makes ciphertexts no other copy can open: hsm-facts.md §10). So:
//!
//! * a copy's **check value** is computed inside its HSM from the key itself: the first
//!   8 bytes of AES-ECB of a zero block for an AES key (the classic key check value), of an
//!   HMAC-SHA-256 of a fixed message for an HMAC key. Key pairs have none yet;
//! * the domain records the value of each key when its copies agree and hands the recorded
//!   values to the cluster ([`Expected`]);
//! * each copy is **verified the first time it is used in a module instance** (so after every
//!   connect and re-initialization, when a token reloads its objects from disk). A copy that
//!   disagrees is **quarantined**: its `CKA_ID` is renamed (the object stays as evidence but
//!   is never found again), the finding is logged, and the call fails over to another HSM as
//!   for a missing key; re-sync then copies the key back from a copy that agrees.

use super::error::{HsmError, Operation};
use super::handles::ObjectKind;
use super::job::WorkerCtx;
use super::kinds::KeyKind;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
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
    values: RwLock<HashMap<Vec<u8>, [u8; CHECK_LEN]>>,
}

impl Expected {
    /// Record (or replace) the expected values of these objects.
    pub(super) fn extend(&self, values: impl IntoIterator<Item = (Vec<u8>, [u8; CHECK_LEN])>) {
        self.values.write().extend(values);
    }

    /// The expected value of object `id`, if one was recorded.
    pub(super) fn get(&self, id: &[u8]) -> Option<[u8; CHECK_LEN]> {
        self.values.read().get(id).copied()
    }
}

/// The check value of the copy `h` (object `id`, of kind `kind`) in the HSM behind `ctx`;
/// `None` for kinds that have none.
pub(super) fn compute(
    ctx: &mut WorkerCtx<'_>,
    h: ObjectHandle,
    kind: KeyKind,
) -> Result<Option<[u8; CHECK_LEN]>, HsmError> {
    let out = match kind {
        KeyKind::Aes => ctx.session().encrypt(&Mechanism::AesEcb, h, &[0u8; 16]),
        KeyKind::Hmac(_) => ctx
            .session()
            .sign(&Mechanism::Sha256Hmac, h, HMAC_CHECK_MESSAGE),
        KeyKind::Pair(..) => return Ok(None),
    };
    let out = out.map_err(|e| ctx.err(Operation::CheckValue, e))?;
    let mut v = [0u8; CHECK_LEN];
    for (d, s) in v.iter_mut().zip(out) {
        *d = s;
    }
    Ok(Some(v))
}

/// The kind a check value is computed for, from the handle's key type (secret keys only).
fn kind_of(ctx: &mut WorkerCtx<'_>, h: ObjectHandle) -> Result<KeyKind, HsmError> {
    let t = ctx
        .session()
        .get_attributes(h, &[cryptoki::object::AttributeType::KeyType])
        .map_err(|e| ctx.err(Operation::CheckValue, e))?;
    Ok(
        if t.contains(&Attribute::KeyType(cryptoki::object::KeyType::AES)) {
            KeyKind::Aes
        } else {
            KeyKind::Hmac(0)
        },
    )
}

/// Verify the copy `h` of secret key `id` against its recorded check value, once per module
/// instance. A copy that disagrees is quarantined and answered as missing on this HSM.
pub(super) fn verify_once(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    h: ObjectHandle,
) -> Result<(), HsmError> {
    let Some(expected) = ctx.expected_check(id) else {
        return Ok(());
    };
    if ctx.instance().handles.is_verified(id) {
        return Ok(());
    }
    let kind = kind_of(ctx, h)?;
    let found = compute(ctx, h, kind)?;
    if found == Some(expected) {
        ctx.instance().handles.set_verified(id);
        return Ok(());
    }
    let hsm = ctx.hsm().to_string();
    let renamed = ctx
        .session()
        .update_attributes(h, &[Attribute::Id([QUARANTINE_PREFIX, id].concat())])
        .is_ok();
    ctx.forget(ObjectKind::Secret, id);
    tracing::error!(
        target: "hsm_kms::audit",
        hsm = %hsm,
        object = %hex::encode(id),
        renamed,
        "drift finding: this HSM's copy of a key disagrees with the check value recorded \
         when the key was made; the copy is quarantined (never used again) and will be \
         replaced from a copy that agrees"
    );
    Err(HsmError::KeyMissing {
        hsm,
        object: hex::encode(id),
    })
}
