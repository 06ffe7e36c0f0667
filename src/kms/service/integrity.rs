//! Key-copy integrity, the domain's half: the check value of each key's material is
//! recorded in its metadata when the material is made (the vault reads it from the HSM that
//! made it); for material made before that, or whose value could not be read then, the
//! background pass records it once every copy agrees. The recorded values are handed to the
//! vault at start and as they are recorded, so the vault verifies each copy after every
//! (re)connect and quarantines one that disagrees (re-sync then replaces it from a copy
//! that agrees).

use super::asymmetric::key_kind;
use super::Kms;
use crate::kms::error::KmsError;
use crate::kms::model::KeyDoc;
use crate::kms::types::{KeySpec, KeyState, KeyUsage};
use crate::kms::vault::{KeyKind, ObjectId, CHECK_LEN};

/// The kind of a key's material as far as check values go (every kind has one: AES and
/// HMAC keys a value computed with the key, key pairs one of their public half and of what
/// the private half reproduces).
fn checked_kind(spec: KeySpec, usage: KeyUsage) -> Option<KeyKind> {
    if spec == KeySpec::SymmetricDefault {
        return Some(KeyKind::Aes);
    }
    key_kind(spec, usage)
}

/// The recorded check values of these keys' materials, with each key's kind.
pub(super) fn recorded<'a>(
    docs: impl Iterator<Item = &'a KeyDoc>,
) -> Vec<(ObjectId, KeyKind, [u8; CHECK_LEN])> {
    docs.filter_map(|d| Some((d, checked_kind(d.key_spec, d.key_usage)?)))
        .flat_map(|(d, kind)| d.backing.iter().map(move |b| (b, kind)))
        .filter_map(|(b, kind)| {
            let v = hex::decode(b.check_value.as_deref()?).ok()?;
            Some((
                b.object_id.clone(),
                kind,
                <[u8; CHECK_LEN]>::try_from(v).ok()?,
            ))
        })
        .collect()
}

impl Kms {
    /// Record the check value of every key material that has none yet, when its copies
    /// agree, and hand it to the vault. Copies that disagree with no recorded value cannot
    /// be told apart: that is logged (a drift finding) and left for an operator. Returns how
    /// many values were recorded.
    pub async fn record_check_values(&self) -> Result<usize, KmsError> {
        let todo: Vec<_> = self
            .keys
            .read()
            .values()
            .filter(|e| e.doc.key_state != KeyState::PendingDeletion)
            .filter_map(|e| {
                let kind = checked_kind(e.doc.key_spec, e.doc.key_usage)?;
                let missing: Vec<_> = e
                    .doc
                    .backing
                    .iter()
                    .filter(|b| b.check_value.is_none())
                    .map(|b| b.object_id.clone())
                    .collect();
                (!missing.is_empty()).then_some((e.doc.key_id, kind, missing))
            })
            .collect();
        let mut recorded = 0;
        for (key_id, kind, objects) in todo {
            for object in objects {
                let value = match self.vault.check_value(&object, kind).await {
                    Ok(Some(v)) => v,
                    Ok(None) => continue,
                    Err(e) if e.retryable() => return Err(e.into()),
                    Err(e) => {
                        tracing::error!(
                            target: "hsm_kms::audit",
                            key_id = %key_id,
                            error = %e,
                            "drift finding: the HSMs' copies of this key disagree and no check \
                             value was recorded to tell the right one"
                        );
                        continue;
                    }
                };
                let hexed = hex::encode(value);
                let o2 = object.clone();
                self.update_doc(&key_id, move |d| {
                    if let Some(b) = d.backing.iter_mut().find(|b| b.object_id == o2) {
                        b.check_value = Some(hexed);
                    }
                    Ok(())
                })
                .await?;
                self.vault.expect_check_values(vec![(object, kind, value)]);
                recorded += 1;
            }
        }
        Ok(recorded)
    }
}
