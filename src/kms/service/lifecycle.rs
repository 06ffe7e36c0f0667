//! Key lifecycle operations: enable, disable, description, scheduled deletion (and the
//! background destruction of due keys on every HSM), tags, and AWS managed keys
//! (`alias/aws/<service>`, created on first use).

use super::{Entry, KeyState, Kms, Resolved};
use crate::auth::Principal;
use crate::kms::audit::Resource;
use crate::kms::marker::{self, Marker};
use crate::kms::model::{epoch_seconds, Empty};
use crate::kms::requests::CreateKey;
use crate::kms::types::{AliasName, KeyId, KeyManager, KeyRef, Tag};
use crate::kms::KmsError;
use crate::store::AliasRow;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// Tags per KMS key (AWS quota).
pub(crate) const MAX_TAGS_PER_KEY: usize = 50;
/// `PendingWindowInDays` when the request has none.
pub(crate) const DEFAULT_PENDING_WINDOW_DAYS: u32 = 30;

/// `ScheduleKeyDeletion` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionOutput {
    /// `KeyId`: the ARN of the key scheduled for deletion.
    pub key_id: String,
    /// `DeletionDate`: when the key material will be destroyed.
    #[serde(with = "epoch_seconds")]
    pub deletion_date: OffsetDateTime,
    /// `KeyState`: the key's state now, `PendingDeletion`.
    pub key_state: KeyState,
    /// `PendingWindowInDays`: the waiting period before the key is destroyed.
    pub pending_window_in_days: u32,
}

/// `CancelKeyDeletion` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CancelKeyDeletionOutput {
    /// `KeyId`: the ARN of the key whose deletion was cancelled.
    pub key_id: String,
}

/// `ListResourceTags` response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListResourceTagsOutput {
    /// `Tags`: this page of the key's tags, in tag key order.
    pub tags: Vec<Tag>,
    /// `NextMarker`: the `Marker` that fetches the next page; only when `Truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<Marker>,
    /// `Truncated`: whether more tags follow this page.
    pub truncated: bool,
}

fn is_due(doc: &crate::kms::model::KeyDoc, now: OffsetDateTime) -> bool {
    doc.key_state == KeyState::PendingDeletion && doc.deletion_date.is_some_and(|d| d <= now)
}

/// The services whose `alias/aws/<service>` AWS managed key is created on first use (the
/// AWS managed keys AWS services create in an account); any other `alias/aws/…` name is
/// simply not found.
const AWS_MANAGED_KEY_SERVICES: &[&str] = &[
    "acm",
    "airflow",
    "appflow",
    "backup",
    "cloud9",
    "cloudtrail",
    "codeartifact",
    "codecommit",
    "connect",
    "dms",
    "dynamodb",
    "ebs",
    "ecr",
    "elasticfilesystem",
    "es",
    "fsx",
    "glue",
    "imagebuilder",
    "kafka",
    "kendra",
    "kinesis",
    "kinesisvideo",
    "lambda",
    "lightsail",
    "mq",
    "qldb",
    "rds",
    "redshift",
    "s3",
    "secretsmanager",
    "ses",
    "sns",
    "sqs",
    "ssm",
    "timestream",
    "transfer",
    "workspaces",
    "xray",
];

fn reserved_tag_key(key: &str) -> bool {
    key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:"))
}

impl Kms {
    fn not_pending_deletion(&self, e: &Entry) -> Result<(), KmsError> {
        match e.doc.key_state {
            KeyState::PendingDeletion
            | KeyState::PendingReplicaDeletion
            | KeyState::Unavailable => Err(KmsError::InvalidState(format!(
                "{} is {}.",
                self.arn(&e.doc),
                match e.doc.key_state {
                    KeyState::Unavailable => "unavailable",
                    _ => "pending deletion",
                }
            ))),
            _ => Ok(()),
        }
    }

    /// EnableKey / DisableKey: a customer key that is neither pending deletion nor pending
    /// import moves to `state`.
    pub(super) async fn set_key_state(
        &self,
        keys: &Resolved,
        state: KeyState,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.not_pending_deletion(&e)?;
        if e.doc.key_state == KeyState::PendingImport {
            return Err(KmsError::InvalidState(format!(
                "{} is pending import.",
                self.arn(&e.doc)
            )));
        }
        let arn = self.arn(&e.doc);
        self.update_doc(&e.doc.key_id, |d| {
            // Checked again under the write lock: a ScheduleKeyDeletion committed since the
            // check above must not be undone (the key would never be destroyed).
            if matches!(
                d.key_state,
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
            ) {
                return Err(KmsError::InvalidState(format!(
                    "{arn} is pending deletion."
                )));
            }
            d.key_state = state;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    /// `UpdateKeyDescription`: replaces the key's description.
    pub async fn update_key_description(
        &self,
        keys: &Resolved,
        description: String,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.not_pending_deletion(&e)?;
        self.update_doc(&e.doc.key_id, |d| {
            d.description = description;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    // ------------------------------------------------------------ scheduled deletion

    /// Schedule deletion after `window_days` (7–30, validated at the edge; default 30). The
    /// key becomes `PendingDeletion` at once (no cryptographic use); `maintenance()`
    /// destroys it on every HSM once `DeletionDate` has passed.
    pub async fn schedule_key_deletion(
        &self,
        keys: &Resolved,
        window_days: Option<u32>,
    ) -> Result<ScheduleKeyDeletionOutput, KmsError> {
        let e = keys.key()?;
        let window = window_days.unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
        if !(7..=30).contains(&window) {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
            )));
        }
        let arn = self.arn(&e.doc);
        let already = KmsError::InvalidState(format!("{arn} is pending deletion."));
        if matches!(
            e.doc.key_state,
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
        ) {
            return Err(already);
        }
        let deletion_date = self.now().saturating_add(Duration::days(i64::from(window)));
        let doc = self
            .update_doc(&e.doc.key_id, |d| {
                if d.key_state == KeyState::PendingDeletion {
                    return Err(already);
                }
                d.key_state = KeyState::PendingDeletion;
                d.deletion_date = Some(deletion_date);
                d.pending_window_days = Some(window);
                Ok(())
            })
            .await?;
        tracing::info!(key = %arn, %deletion_date, "key deletion scheduled");
        Ok(ScheduleKeyDeletionOutput {
            key_id: arn,
            deletion_date,
            key_state: doc.key_state,
            pending_window_in_days: window,
        })
    }

    /// Cancel a scheduled deletion: the key becomes `Disabled`. Refused once the waiting
    /// period has ended (destruction may be under way; the key never comes back).
    pub async fn cancel_key_deletion(
        &self,
        keys: &Resolved,
    ) -> Result<CancelKeyDeletionOutput, KmsError> {
        let e = keys.key()?;
        let arn = self.arn(&e.doc);
        let not_pending = || KmsError::InvalidState(format!("{arn} is not pending deletion."));
        let ended = || {
            KmsError::InvalidState(format!(
                "{arn} is pending deletion and its waiting period has ended."
            ))
        };
        if e.doc.key_state != KeyState::PendingDeletion {
            return Err(not_pending());
        }
        let now = self.now();
        self.update_doc(&e.doc.key_id, |d| {
            if d.key_state != KeyState::PendingDeletion {
                return Err(not_pending());
            }
            if is_due(d, now) {
                return Err(ended());
            }
            // A key whose imported material is missing goes back to waiting for it.
            d.key_state = if super::import::complete(d) {
                KeyState::Disabled
            } else {
                KeyState::PendingImport
            };
            d.deletion_date = None;
            d.pending_window_days = None;
            Ok(())
        })
        .await?;
        tracing::info!(key = %arn, "key deletion cancelled");
        Ok(CancelKeyDeletionOutput { key_id: arn })
    }

    /// Destroy every key whose waiting period has ended: all its backing objects on every
    /// HSM, then its metadata. A key that some HSM could not confirm stays
    /// `PendingDeletion` (unusable, not cancellable) and is retried on the next pass.
    /// Returns how many keys were destroyed.
    pub(crate) async fn destroy_due_keys(&self) -> Result<usize, KmsError> {
        let now = self.now();
        let due: Vec<KeyId> = self
            .keys
            .read()
            .values()
            .filter(|e| is_due(&e.doc, now))
            .map(|e| e.doc.key_id)
            .collect();
        let mut destroyed = 0;
        let mut failed = Vec::new();
        for id in due {
            // Wait for any CancelKeyDeletion that is committing, then re-check.
            let doc = {
                let _w = self.writes.lock().await;
                match self.keys.read().get(&id) {
                    Some(e) if is_due(&e.doc, now) => e.doc.clone(),
                    _ => continue,
                }
            };
            let arn = self.arn(&doc);
            let objects = doc
                .backing
                .iter()
                .map(|b| &b.object_id)
                .chain(doc.import_parameters.iter().map(|p| &p.object_id));
            let (complete, hsms) = crate::kms::vault::served_by(async {
                let mut complete = true;
                for object in objects {
                    if let Err(e) = self.vault.destroy_key(object).await {
                        tracing::warn!(key = %arn, object = %object, error = %e,
                            "key destruction incomplete (an HSM did not confirm); will retry");
                        complete = false;
                    }
                }
                complete
            })
            .await;
            if !complete {
                failed.push(arn);
                continue;
            }
            self.forget_key(&id).await?;
            tracing::info!(key = %arn, "key destroyed on every HSM and deleted");
            self.service_event(
                "DeleteKey",
                Some(doc.account_id.to_string()),
                vec![Resource::key(arn.clone())],
                serde_json::json!({
                    "keyId": doc.key_id.to_string(),
                    "keyMaterialIds": doc.backing.iter()
                        .map(|b| super::rotation::key_material_id(b.object_id.as_str()))
                        .collect::<Vec<_>>(),
                }),
                hsms,
            )
            .await;
            destroyed += 1;
        }
        if failed.is_empty() {
            Ok(destroyed)
        } else {
            Err(KmsError::Unavailable(format!(
                "destruction pending for {}",
                failed.join(", ")
            )))
        }
    }

    // ------------------------------------------------------------------ tags

    /// `TagResource`: adds tags to the key, replacing the value of a tag key it already has.
    pub async fn tag_resource(&self, keys: &Resolved, tags: Vec<Tag>) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.not_pending_deletion(&e)?;
        if let Some(t) = tags.iter().find(|t| t.is_aws_reserved()) {
            return Err(KmsError::Tag(format!(
                "Tags beginning with aws: are reserved ('{}')",
                t.key()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(t) = tags.iter().find(|t| !seen.insert(t.key())) {
            return Err(KmsError::Tag(format!(
                "Duplicate tag keys in the request: '{}' appears more than once.",
                t.key()
            )));
        }
        let arn = self.arn(&e.doc);
        self.update_doc(&e.doc.key_id, |d| {
            for t in tags {
                match d.tags.iter_mut().find(|o| o.key() == t.key()) {
                    Some(o) => *o = t,
                    None => d.tags.push(t),
                }
            }
            if d.tags.len() > MAX_TAGS_PER_KEY {
                return Err(KmsError::LimitExceeded(format!(
                    "The request would exceed the limit of {MAX_TAGS_PER_KEY} tags on {arn}."
                )));
            }
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    /// `UntagResource`: removes the tags with the given keys; absent keys are ignored.
    pub async fn untag_resource(
        &self,
        keys: &Resolved,
        tag_keys: Vec<String>,
    ) -> Result<Empty, KmsError> {
        let e = keys.key()?;
        self.not_pending_deletion(&e)?;
        if let Some(k) = tag_keys.iter().find(|k| reserved_tag_key(k)) {
            return Err(KmsError::Tag(format!(
                "Tags beginning with aws: are reserved ('{k}')"
            )));
        }
        self.update_doc(&e.doc.key_id, |d| {
            d.tags.retain(|t| !tag_keys.iter().any(|k| k == t.key()));
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    /// Tags of a key (any state, AWS managed keys included), sorted by tag key, paginated
    /// with an opaque marker.
    pub fn list_resource_tags(
        &self,
        keys: &Resolved,
        limit: usize,
        marker: Option<&str>,
    ) -> Result<ListResourceTagsOutput, KmsError> {
        let e = keys.key()?;
        let after = Marker::decode_opt(marker::ResourceTags, marker)?;
        let mut tags = e.doc.tags.clone();
        tags.sort_by(|a, b| a.key().cmp(b.key()));
        let rest: Vec<Tag> = tags
            .into_iter()
            .filter(|t| after.as_deref().is_none_or(|a| t.key() > a))
            .collect();
        let truncated = rest.len() > limit;
        let page: Vec<Tag> = rest.into_iter().take(limit).collect();
        let next_marker = Marker::after_last(marker::ResourceTags, truncated, &page, |t| {
            t.key().to_string()
        });
        Ok(ListResourceTagsOutput {
            tags: page,
            truncated: next_marker.is_some(),
            next_marker,
        })
    }

    // ------------------------------------------------------------ AWS managed keys

    /// If `raw` names an `alias/aws/<service>` alias (name or ARN of this account) that
    /// has no key yet, create the AWS managed key for it (KeyManager `AWS`), as AWS does on
    /// first use by Encrypt, GenerateDataKey* or DescribeKey. Anything else: no effect.
    pub(super) async fn ensure_aws_managed_key(
        &self,
        p: &Principal,
        r: &KeyRef,
    ) -> Result<(), KmsError> {
        // Only an alias of this region can name an AWS managed key; a key id or ARN costs
        // nothing here (the caller's account is parsed only for an alias).
        let (name, arn_account) = match r {
            KeyRef::AliasName(n) => (n, None),
            KeyRef::AliasArn(a) if a.region == self.region => (&a.alias, Some(&a.account)),
            _ => return Ok(()),
        };
        let account = self.account(p)?;
        if arn_account.is_some_and(|a| *a != account) {
            return Ok(());
        }
        // Only the services AWS makes managed keys for: no caller can fill the HSMs with
        // undeletable keys by naming made-up services.
        let service = match name.as_str().strip_prefix(AliasName::AWS_RESERVED_PREFIX) {
            Some(s) if AWS_MANAGED_KEY_SERVICES.contains(&s) => s.to_string(),
            _ => return Ok(()),
        };
        let k = (account.as_str().to_string(), name.as_str().to_string());
        if self.aliases.read().contains_key(&k) {
            return Ok(());
        }
        let _one = self.aws_managed.lock().await;
        if self.aliases.read().contains_key(&k) {
            return Ok(());
        }
        let created = self
            .create_key(
                p,
                CreateKey {
                    description: Some(format!(
                        "Default key that protects my {service} resources when no other key is defined"
                    )),
                    ..CreateKey::default()
                },
            )
            .await?;
        let id = KeyId::parse(&created.key_metadata.key_id)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        let policy = crate::kms::policy::aws_managed_key_policy(
            account.as_str(),
            &service,
            self.region.as_str(),
        );
        self.update_doc(&id, |d| {
            d.key_manager = KeyManager::Aws;
            d.policy = Some(policy);
            Ok(())
        })
        .await?;
        let _w = self.writes.lock().await;
        let now = self.now();
        let row = AliasRow {
            account_id: k.0.clone(),
            alias_name: k.1.clone(),
            key_id: id.to_string(),
            created_at: now,
            updated_at: now,
        };
        let r2 = row.clone();
        self.blocking(move |s| s.create_alias(&r2)).await?;
        self.aliases.write().insert(k, row);
        tracing::info!(alias = %name.as_str(), key = %id, "created AWS managed key");
        Ok(())
    }
}

/// The fixed policy of an AWS managed key written before key policies were kept: found
/// through its `alias/aws/<service>` alias (`None` when it has none).
pub(super) fn aws_managed_policy_of(
    doc: &crate::kms::model::KeyDoc,
    aliases: &[crate::store::AliasRow],
    region: &crate::kms::types::Region,
) -> Option<String> {
    let id = doc.key_id.to_string();
    aliases
        .iter()
        .filter(|a| a.key_id == id && a.account_id == doc.account_id.as_str())
        .find_map(|a| a.alias_name.strip_prefix(AliasName::AWS_RESERVED_PREFIX))
        .map(|service| {
            crate::kms::policy::aws_managed_key_policy(
                doc.account_id.as_str(),
                service,
                region.as_str(),
            )
        })
}
