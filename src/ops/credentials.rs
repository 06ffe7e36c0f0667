//! `hsm-kms credentials list|revoke`: the API credentials of every account as the store
//! holds them (never the secret, which exists only sealed there), and revocation: the
//! access key made `Inactive` through the store path of IAM's `UpdateAccessKey`
//! (`MetadataStore::set_credential_status`). A running service reads the credential rows
//! every `CREDENTIAL_REFRESH` (500 ms, `app.rs`) and from then on refuses the key as an
//! unknown one (`UnrecognizedClientException`), as AWS does with an inactive access key.

use super::{rfc3339, table, OpsError};
use crate::store::{CredentialRow, MetadataStore};
use serde::Serialize;
use time::OffsetDateTime;

/// One credential as `credentials list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CredentialLine {
    /// `AKIA…` (long-term) or `ASIA…` (a role session).
    pub access_key_id: String,
    /// The account it acts in.
    pub account_id: String,
    /// The principal it authenticates.
    pub principal_arn: String,
    /// The IAM user it belongs to (`None`: the account's root or a role session).
    pub user_name: Option<String>,
    /// `long-term` or `session`.
    pub kind: &'static str,
    /// `Active`, `Inactive`, or `Expired` (a role session past its expiry).
    pub status: &'static str,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When a role session's credential expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl CredentialLine {
    fn of(r: &CredentialRow, now: OffsetDateTime) -> CredentialLine {
        let expired = r.session.as_ref().is_some_and(|s| s.expires_at <= now);
        CredentialLine {
            access_key_id: r.access_key_id.clone(),
            account_id: r.account_id.clone(),
            principal_arn: r.principal_arn.clone(),
            user_name: r.user_name.clone(),
            kind: if r.session.is_some() {
                "session"
            } else {
                "long-term"
            },
            status: match (r.active, expired) {
                (false, _) => "Inactive",
                (true, true) => "Expired",
                (true, false) => "Active",
            },
            created: rfc3339(r.created_at),
            expires: r.session.as_ref().map(|s| rfc3339(s.expires_at)),
        }
    }
}

/// Every credential (of `account`, if given), oldest first.
pub fn list(
    store: &dyn MetadataStore,
    account: Option<&str>,
    now: OffsetDateTime,
) -> Result<Vec<CredentialLine>, OpsError> {
    let mut rows = store.credentials()?;
    rows.retain(|r| account.is_none_or(|a| r.account_id == a));
    rows.sort_by(|a, b| (a.created_at, &a.access_key_id).cmp(&(b.created_at, &b.access_key_id)));
    Ok(rows.iter().map(|r| CredentialLine::of(r, now)).collect())
}

/// The listing as a table.
pub fn list_table(lines: &[CredentialLine]) -> String {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|c| {
            vec![
                c.access_key_id.clone(),
                c.account_id.clone(),
                c.principal_arn.clone(),
                c.status.to_string(),
                c.kind.to_string(),
                c.created.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ACCESS KEY ID",
            "ACCOUNT",
            "PRINCIPAL",
            "STATUS",
            "KIND",
            "CREATED",
        ],
        &rows,
    )
}

/// What `credentials revoke` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Revoked {
    /// The access key.
    pub access_key_id: String,
    /// Its account.
    pub account_id: String,
    /// Its principal.
    pub principal_arn: String,
    /// Whether it was active before (false: it was inactive already; nothing changed).
    pub was_active: bool,
    /// Its status now: `Inactive`.
    pub status: &'static str,
}

/// Make `access_key_id` `Inactive` (IAM `UpdateAccessKey`'s store path); a running service
/// refuses it from its next credential refresh on. `NotFound` for an unknown key.
pub fn revoke(store: &dyn MetadataStore, access_key_id: &str) -> Result<Revoked, OpsError> {
    let row = store
        .credentials()?
        .into_iter()
        .find(|r| r.access_key_id == access_key_id)
        .ok_or_else(|| OpsError::NotFound(format!("no access key {access_key_id} is stored")))?;
    if row.active {
        store.set_credential_status(&row.access_key_id, false)?;
        tracing::info!(
            target: "hsm_kms::audit",
            access_key_id = %row.access_key_id,
            account_id = %row.account_id,
            principal = %row.principal_arn,
            "access key revoked by an operator (status Inactive)"
        );
    }
    Ok(Revoked {
        access_key_id: row.access_key_id,
        account_id: row.account_id,
        principal_arn: row.principal_arn,
        was_active: row.active,
        status: "Inactive",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn row(akid: &str, account: &str, active: bool) -> CredentialRow {
        CredentialRow {
            access_key_id: akid.into(),
            account_id: account.into(),
            principal_arn: format!("arn:aws:iam::{account}:root"),
            sealed_secret: b"sealed secret bytes".to_vec(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            active,
            user_name: None,
            session: None,
        }
    }

    #[test]
    fn revoke_makes_the_key_inactive_once_and_unknown_keys_are_not_found() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .put_credential(&row("AKIAONE", "111122223333", true))
            .unwrap();
        store
            .put_credential(&row("AKIATWO", "444455556666", true))
            .unwrap();
        let r = revoke(&store, "AKIAONE").unwrap();
        assert!(r.was_active);
        let again = revoke(&store, "AKIAONE").unwrap();
        assert!(!again.was_active);
        let now = OffsetDateTime::now_utc();
        let all = list(&store, None, now).unwrap();
        let status: Vec<_> = all
            .iter()
            .map(|c| (c.access_key_id.as_str(), c.status))
            .collect();
        assert_eq!(status, [("AKIAONE", "Inactive"), ("AKIATWO", "Active")]);
        let only = list(&store, Some("444455556666"), now).unwrap();
        assert_eq!(only.len(), 1);
        assert!(matches!(
            revoke(&store, "AKIANONE"),
            Err(OpsError::NotFound(_))
        ));
        let json = serde_json::to_string(&all).unwrap();
        assert!(!json.contains("sealed"), "{json}");
    }
}
