//! `hsm-kms keys list|show`: the KMS keys of the metadata store (every account), and for
//! one key its backing key versions with, per HSM, whether the HSM holds the copy
//! (`present`), lacks it (`missing`), holds only a copy set aside by the integrity check
//! (`quarantined`), or could not be scanned (`unreachable`). The HSMs are scanned by the
//! caller (`hsm::inspect::scan`, one per HSM) and handed in as [`HsmObjects`].

use super::{rfc3339, table, OpsError};
use crate::kms::model::KeyDoc;
use crate::kms::types::{KeyArn, KeyRef, KeyState, Region};
use crate::store::{KeyRow, MetadataStore};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The `CKA_ID` prefix of a copy the integrity check quarantined (`hsm::integrity`).
const QUARANTINE_PREFIX: &str = "hsm-kms/quarantine/";

/// One key as `keys list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyLine {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub arn: String,
    /// The owning account.
    pub account_id: String,
    /// `KeyState`.
    pub state: String,
    /// `KeySpec`.
    pub spec: String,
    /// `KeyUsage`.
    pub usage: String,
    /// `Origin`.
    pub origin: String,
    /// `KeyManager`.
    pub manager: String,
    /// `CreationDate` (RFC 3339).
    pub created: String,
    /// `DeletionDate` of a key pending deletion (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
    /// `Description`.
    pub description: String,
}

fn doc_of(row: &KeyRow) -> Result<KeyDoc, OpsError> {
    serde_json::from_value(row.doc.clone()).map_err(|e| {
        OpsError::Corrupt(format!(
            "the metadata of key {} cannot be read: {e}",
            row.key_id
        ))
    })
}

impl KeyLine {
    fn of(doc: &KeyDoc, region: &Region) -> KeyLine {
        KeyLine {
            key_id: doc.key_id.to_string(),
            arn: KeyArn::new(region.clone(), doc.account_id.clone(), doc.key_id).to_string(),
            account_id: doc.account_id.to_string(),
            state: doc.key_state.to_string(),
            spec: doc.key_spec.to_string(),
            usage: doc.key_usage.to_string(),
            origin: doc.origin.to_string(),
            manager: doc.key_manager.to_string(),
            created: rfc3339(doc.creation_date),
            deletion_date: doc.deletion_date.map(rfc3339),
            description: doc.description.clone(),
        }
    }
}

/// The region of the config, checked.
pub fn region(name: &str) -> Result<Region, OpsError> {
    Region::parse(name).map_err(|e| OpsError::Invalid(format!("region {name}: {e}")))
}

/// Every key (of `account`, in `state`, if given), in creation order.
pub fn list(
    store: &dyn MetadataStore,
    region: &Region,
    account: Option<&str>,
    state: Option<&str>,
) -> Result<Vec<KeyLine>, OpsError> {
    let state = state
        .map(|s| {
            KeyState::parse(s).map_err(|_| {
                OpsError::Invalid(format!(
                    "--state {s}: one of {}",
                    KeyState::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .transpose()?;
    let mut rows = store.all_keys()?;
    rows.retain(|r| account.is_none_or(|a| r.account_id == a));
    rows.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let doc = doc_of(r)?;
        if state.is_none_or(|s| doc.key_state == s) {
            out.push(KeyLine::of(&doc, region));
        }
    }
    Ok(out)
}

/// The listing as a table.
pub fn list_table(keys: &[KeyLine]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.clone(),
                k.account_id.clone(),
                k.state.clone(),
                k.spec.clone(),
                k.usage.clone(),
                k.origin.clone(),
                k.created.clone(),
            ]
        })
        .collect();
    table(
        &[
            "KEY ID", "ACCOUNT", "STATE", "SPEC", "USAGE", "ORIGIN", "CREATED",
        ],
        &rows,
    )
}

/// The stored metadata of `key`: a key id, a key ARN, an alias ARN, or an alias name
/// (`alias/…`) of `account`.
pub fn find(store: &dyn MetadataStore, key: &str, account: &str) -> Result<KeyDoc, OpsError> {
    let id = match KeyRef::parse(key) {
        Ok(KeyRef::Id(id)) => id.to_string(),
        Ok(KeyRef::KeyArn(arn)) => arn.key_id.to_string(),
        Ok(KeyRef::AliasName(name)) => target_of(store, account, name.as_str())?,
        Ok(KeyRef::AliasArn(arn)) => target_of(store, arn.account.as_str(), arn.alias.as_str())?,
        Ok(KeyRef::Malformed(_)) | Err(_) => {
            return Err(OpsError::Invalid(format!(
                "{key} is neither a key id, a key ARN, an alias name nor an alias ARN"
            )))
        }
    };
    let row = store
        .get_key(&id)?
        .ok_or_else(|| OpsError::NotFound(format!("no key {id} in the metadata")))?;
    doc_of(&row)
}

/// The key id alias `alias` of `account` points at.
fn target_of(store: &dyn MetadataStore, account: &str, alias: &str) -> Result<String, OpsError> {
    store
        .get_alias(account, alias)?
        .map(|a| a.key_id)
        .ok_or_else(|| OpsError::NotFound(format!("no alias {alias} in account {account}")))
}

/// What one HSM holds, as a scan found it, or why it could not be scanned.
#[derive(Debug, Clone)]
pub struct HsmObjects {
    /// The HSM's name in the config.
    pub name: String,
    /// The object ids it holds (`Err`: why it could not be scanned).
    pub ids: Result<BTreeSet<String>, String>,
}

/// Where one HSM stands for one backing key.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// The HSM holds the copy.
    Present,
    /// The HSM lacks it (`reconcile --fix` copies it from another HSM).
    Missing,
    /// The HSM holds only a copy the integrity check set aside (kept as evidence).
    Quarantined,
    /// The HSM could not be scanned.
    Unreachable,
}

impl CopyState {
    fn as_str(self) -> &'static str {
        match self {
            CopyState::Present => "present",
            CopyState::Missing => "missing",
            CopyState::Quarantined => "quarantined",
            CopyState::Unreachable => "unreachable",
        }
    }
}

/// One backing key version of `keys show`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackingLine {
    /// Its generation number.
    pub version: u32,
    /// Whether new ciphertexts and signatures use it.
    pub current: bool,
    /// The `CKA_ID` of its copies.
    pub object_id: String,
    /// When it was generated (RFC 3339).
    pub created: String,
    /// Whether the HSMs should hold it (false: imported material deleted or expired).
    pub expected: bool,
    /// Per HSM (config order): where it stands.
    pub hsms: BTreeMap<String, CopyState>,
    /// The HSMs that hold a copy.
    pub held_by: Vec<String>,
}

/// An HSM scanned for `keys show`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScannedHsm {
    /// The HSM's name in the config.
    pub name: String,
    /// Whether it could be scanned.
    pub reachable: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `keys show`: the key and its backing keys' copies.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyDetail {
    /// The key.
    pub key: KeyLine,
    /// Its backing key versions, oldest first.
    pub backing: Vec<BackingLine>,
    /// The HSMs scanned.
    pub hsms: Vec<ScannedHsm>,
}

/// The key `doc` with its copies found in `scans`.
pub fn detail(doc: &KeyDoc, region: &Region, scans: &[HsmObjects]) -> KeyDetail {
    let backing = doc
        .backing
        .iter()
        .map(|b| {
            let id = b.object_id.as_str();
            let quarantined = format!("{QUARANTINE_PREFIX}{id}");
            let hsms: BTreeMap<String, CopyState> = scans
                .iter()
                .map(|s| {
                    let c = match &s.ids {
                        Err(_) => CopyState::Unreachable,
                        Ok(ids) if ids.contains(id) => CopyState::Present,
                        Ok(ids) if ids.contains(&quarantined) => CopyState::Quarantined,
                        Ok(_) => CopyState::Missing,
                    };
                    (s.name.clone(), c)
                })
                .collect();
            let held_by = scans
                .iter()
                .filter(|s| hsms.get(&s.name) == Some(&CopyState::Present))
                .map(|s| s.name.clone())
                .collect();
            BackingLine {
                version: b.version,
                current: b.version == doc.current_backing,
                object_id: id.to_string(),
                created: rfc3339(b.created),
                expected: b
                    .import
                    .as_ref()
                    .is_none_or(|i| i.state == crate::kms::types::ImportState::Imported),
                hsms,
                held_by,
            }
        })
        .collect();
    KeyDetail {
        key: KeyLine::of(doc, region),
        backing,
        hsms: scans
            .iter()
            .map(|s| ScannedHsm {
                name: s.name.clone(),
                reachable: s.ids.is_ok(),
                error: s.ids.as_ref().err().cloned(),
            })
            .collect(),
    }
}

/// `keys show` for people: the key's fields, then one row per backing key version with a
/// column per HSM.
pub fn detail_text(d: &KeyDetail) -> String {
    let k = &d.key;
    let mut s = String::new();
    for (name, value) in [
        ("Key ID", k.key_id.as_str()),
        ("ARN", &k.arn),
        ("Account", &k.account_id),
        ("State", &k.state),
        ("Spec", &k.spec),
        ("Usage", &k.usage),
        ("Origin", &k.origin),
        ("Manager", &k.manager),
        ("Created", &k.created),
        ("Deletion date", k.deletion_date.as_deref().unwrap_or("-")),
        ("Description", &k.description),
    ] {
        s.push_str(&format!("{name:<14} {value}\n"));
    }
    s.push('\n');
    let mut header = vec!["VERSION", "CURRENT", "OBJECT ID", "CREATED"];
    header.extend(d.hsms.iter().map(|h| h.name.as_str()));
    let rows: Vec<Vec<String>> = d
        .backing
        .iter()
        .map(|b| {
            let mut r = vec![
                b.version.to_string(),
                if b.current { "yes" } else { "" }.to_string(),
                b.object_id.clone(),
                b.created.clone(),
            ];
            for h in &d.hsms {
                let c = b.hsms.get(&h.name).map_or("?", |c| c.as_str());
                r.push(if b.expected {
                    c.to_string()
                } else {
                    format!("{c} (deleted)")
                });
            }
            r
        })
        .collect();
    s.push_str(&table(&header, &rows));
    for h in &d.hsms {
        if let Some(e) = &h.error {
            s.push_str(&format!("{}: not scanned: {e}\n", h.name));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan(name: &str, ids: &[&str]) -> HsmObjects {
        HsmObjects {
            name: name.into(),
            ids: Ok(ids.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn each_copy_is_present_missing_quarantined_or_unreachable_per_hsm() {
        let id = "5f1c2a64-3d1e-4c4b-9a53-1f0e2d3c4b5a";
        let doc: KeyDoc = serde_json::from_value(json!({
            "key_id": id,
            "account_id": "111122223333",
            "description": "",
            "key_spec": "SYMMETRIC_DEFAULT",
            "key_usage": "ENCRYPT_DECRYPT",
            "key_state": "Enabled",
            "origin": "AWS_KMS",
            "key_manager": "CUSTOMER",
            "creation_date": 1_700_000_000.0,
            "backing": [
                {"version": 1, "object_id": format!("kms/{id}/1"), "created": 1_700_000_000.0},
                {"version": 2, "object_id": format!("kms/{id}/2"), "created": 1_700_000_100.0},
            ],
            "current_backing": 2,
        }))
        .unwrap();
        let v1 = format!("kms/{id}/1");
        let v2 = format!("kms/{id}/2");
        let q1 = format!("hsm-kms/quarantine/kms/{id}/1");
        let scans = [
            scan("a", &[&v1, &v2]),
            scan("b", &[&q1, &v2]),
            scan("c", &[&v1]),
            HsmObjects {
                name: "d".into(),
                ids: Err("open: no token".into()),
            },
        ];
        let d = detail(&doc, &region("us-east-1").unwrap(), &scans);
        use CopyState::*;
        let states = |b: &BackingLine| b.hsms.values().copied().collect::<Vec<_>>();
        assert_eq!(
            states(&d.backing[0]),
            [Present, Quarantined, Present, Unreachable]
        );
        assert_eq!(
            states(&d.backing[1]),
            [Present, Present, Missing, Unreachable]
        );
        assert_eq!(d.backing[0].held_by, ["a", "c"]);
        assert!(!d.backing[0].current && d.backing[1].current);
        assert_eq!(d.hsms[3].error.as_deref(), Some("open: no token"));
        assert_eq!(
            d.key.arn,
            format!("arn:aws:kms:us-east-1:111122223333:key/{id}")
        );
        let text = detail_text(&d);
        assert!(
            text.contains("quarantined") && text.contains("d: not scanned"),
            "{text}"
        );
    }
}
