//! The domain's three steps of every call, in the order the request path runs them:
//! [`Kms::resolve`] finds the keys a request names (creating an AWS managed key on the
//! first use of its `alias/aws/<service>` alias), [`Kms::authorize`] decides whether the
//! principal may perform the operation's IAM action on them, and [`Kms::execute`] runs the
//! operation's domain method and returns its output.

use super::{Entry, Kms};
use crate::auth::Principal;
use crate::kms::ciphertext::Blob;
use crate::kms::error::KmsError;
use crate::kms::operation::Operation;
use crate::kms::requests::Request;
use crate::kms::types::{KeyRef, KeyState};
use serde::Serialize;
use std::sync::Arc;

/// The keys a request names, resolved before authorization.
#[derive(Debug, Default)]
pub struct Resolved {
    /// The key the operation acts on (the source key of ReEncrypt, an alias's target).
    pub(super) key: Option<Arc<Entry>>,
    /// ReEncrypt's destination key.
    pub(super) destination: Option<Arc<Entry>>,
    /// A symmetric ciphertext's parsed blob (Decrypt, ReEncrypt's source); `None` with a
    /// `key` means an asymmetric (RSA) ciphertext.
    pub(super) blob: Option<Blob>,
    /// The key an alias points at before the call (UpdateAlias, DeleteAlias), which the
    /// caller must be allowed to act on too.
    pub(super) alias_key: Option<Arc<Entry>>,
}

impl Resolved {
    /// The key the operation acts on.
    pub(super) fn key(&self) -> Result<Arc<Entry>, KmsError> {
        self.key
            .clone()
            .ok_or_else(|| KmsError::Internal("request path: key not resolved".into()))
    }

    /// ReEncrypt's destination.
    pub(super) fn destination(&self) -> Result<Arc<Entry>, KmsError> {
        self.destination
            .clone()
            .ok_or_else(|| KmsError::Internal("request path: destination not resolved".into()))
    }

    fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.key
            .iter()
            .chain(self.destination.iter())
            .chain(self.alias_key.iter())
    }
}

impl Kms {
    /// The ARNs of the resolved keys (for the call's record).
    pub fn resource_arns(&self, keys: &Resolved) -> Vec<String> {
        keys.entries().map(|e| self.arn(&e.doc)).collect()
    }
}

/// An operation's output, serialized by the API layer as AWS shapes it.
pub trait Output: Send {
    /// The JSON body.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<T: Serialize + Send> Output for T {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// What [`Kms::execute`] returns.
pub type Reply = Box<dyn Output>;

fn reply<T: Serialize + Send + 'static>(v: T) -> Result<Reply, KmsError> {
    Ok(Box::new(v))
}

/// Operations whose first use of `alias/aws/<service>` creates the AWS managed key.
fn creates_aws_managed_key(op: Operation) -> bool {
    matches!(
        op,
        Operation::Encrypt
            | Operation::GenerateDataKey
            | Operation::GenerateDataKeyWithoutPlaintext
            | Operation::DescribeKey
            | Operation::ReEncrypt
    )
}

impl Kms {
    /// Resolve the keys `request` names, in the order AWS reports their errors.
    pub async fn resolve(
        &self,
        p: &Principal,
        op: Operation,
        request: &Request,
    ) -> Result<Resolved, KmsError> {
        let one = |key: Option<Arc<Entry>>| Resolved {
            key,
            ..Resolved::default()
        };
        let cross = super::authz::cross_account(op);
        Ok(match request {
            Request::CreateKey(_) | Request::ListKeys(_) | Request::GenerateRandom(_) => {
                Resolved::default()
            }
            Request::Key(op, r) => {
                let aliases = matches!(op, Operation::DescribeKey | Operation::GetPublicKey);
                self.first_use(p, *op, r).await?;
                one(Some(self.resolve_ref(p, r, aliases, cross)?))
            }
            Request::Encrypt(r) => {
                self.first_use(p, op, &r.key).await?;
                one(Some(self.resolve_ref(p, &r.key, true, cross)?))
            }
            Request::GenerateDataKey(r) => {
                self.first_use(p, op, &r.key).await?;
                one(Some(self.resolve_ref(p, &r.key, true, cross)?))
            }
            Request::Sign(r) => one(Some(self.resolve_ref(p, &r.key, true, cross)?)),
            Request::Mac(r) => one(Some(self.resolve_ref(p, &r.key, true, cross)?)),
            Request::DeriveSharedSecret(r) => one(Some(self.resolve_ref(p, &r.key, true, cross)?)),
            Request::GenerateDataKeyPair(r) => one(Some(self.resolve_ref(p, &r.key, true, cross)?)),
            Request::Decrypt(r) => {
                let (key, blob) = self.ciphertext_key(p, &r.ciphertext, r.key.as_ref())?;
                Resolved {
                    key: Some(key),
                    blob,
                    ..Resolved::default()
                }
            }
            Request::ReEncrypt(r) => {
                self.first_use(p, op, &r.destination_key).await?;
                let rsa = |k: Option<&KeyRef>| {
                    k.and_then(|k| self.resolve_ref(p, k, true, cross).ok())
                        .is_some_and(|e| super::asymmetric::is_rsa(&e))
                };
                // With an RSA key on either side the destination is checked first, so
                // that nothing is decrypted for a request that fails.
                if rsa(r.source_key.as_ref()) || rsa(Some(&r.destination_key)) {
                    let destination = Some(self.resolve_ref(p, &r.destination_key, true, cross)?);
                    let (key, blob) =
                        self.ciphertext_key(p, &r.ciphertext, r.source_key.as_ref())?;
                    Resolved {
                        key: Some(key),
                        blob,
                        destination,
                        alias_key: None,
                    }
                } else {
                    let (key, blob) =
                        self.ciphertext_key(p, &r.ciphertext, r.source_key.as_ref())?;
                    Resolved {
                        key: Some(key),
                        blob,
                        destination: Some(self.resolve_ref(p, &r.destination_key, true, cross)?),
                        alias_key: None,
                    }
                }
            }
            Request::CreateAlias(r) => {
                self.user_alias(&r.alias)?;
                one(Some(self.alias_target(p, &r.target)?))
            }
            Request::UpdateAlias(r) => {
                self.user_alias(&r.alias)?;
                let key = Some(self.alias_target(p, &r.target)?);
                let alias_key = self.alias_key(p, &r.alias)?;
                Resolved {
                    key,
                    alias_key,
                    ..Resolved::default()
                }
            }
            Request::DeleteAlias(alias) => {
                self.user_alias(alias)?;
                Resolved {
                    alias_key: self.alias_key(p, alias)?,
                    ..Resolved::default()
                }
            }
            Request::GetKeyPolicy(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::PutKeyPolicy(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::ListKeyPolicies(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::ListAliases(r) => match &r.key {
                Some(k) => one(Some(self.resolve_ref(p, k, false, cross)?)),
                None => Resolved::default(),
            },
            Request::UpdateKeyDescription(r) => {
                one(Some(self.resolve_ref(p, &r.key, false, cross)?))
            }
            Request::ScheduleKeyDeletion(r) => {
                one(Some(self.resolve_ref(p, &r.key, false, cross)?))
            }
            Request::TagResource(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::UntagResource(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::ListResourceTags(r) | Request::ListKeyRotations(r) => {
                one(Some(self.resolve_ref(p, &r.key, false, cross)?))
            }
            Request::EnableKeyRotation(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::CreateGrant(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::ListGrants(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::ListRetirableGrants(_) => Resolved::default(),
            // A token names its grant, hence its key (a token this service did not issue
            // is `InvalidGrantTokenException` here, before anything else).
            Request::RetireGrant(r) => match &r.grant {
                crate::kms::requests::GrantRef::Token(t) => one(Some(self.grant_token_key(t)?)),
                crate::kms::requests::GrantRef::Id { key, .. } => {
                    one(Some(self.resolve_ref(p, key, false, cross)?))
                }
            },
            Request::RevokeGrant(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::GetParametersForImport(r) => {
                one(Some(self.resolve_ref(p, &r.key, false, cross)?))
            }
            Request::ImportKeyMaterial(r) => one(Some(self.resolve_ref(p, &r.key, false, cross)?)),
            Request::DeleteImportedKeyMaterial(r) => {
                one(Some(self.resolve_ref(p, &r.key, false, cross)?))
            }
        })
    }

    /// Create the AWS managed key of an `alias/aws/<service>` alias on its first use.
    async fn first_use(&self, p: &Principal, op: Operation, r: &KeyRef) -> Result<(), KmsError> {
        if creates_aws_managed_key(op) {
            self.ensure_aws_managed_key(p, r).await?;
        }
        Ok(())
    }

    /// Run `request` on its resolved keys.
    pub async fn execute(
        &self,
        p: &Principal,
        request: Request,
        keys: &Resolved,
    ) -> Result<Reply, KmsError> {
        match request {
            Request::CreateKey(r) => reply(self.create_key(p, r).await?),
            Request::ListKeys(page) => reply(self.list_keys(p, page).await?),
            Request::GenerateRandom(n) => reply(self.generate_random(n).await?),
            Request::Key(op, _) => match op {
                Operation::DescribeKey => reply(self.describe_key(keys)?),
                Operation::GetPublicKey => reply(self.get_public_key(keys)?),
                Operation::EnableKey => reply(self.set_key_state(keys, KeyState::Enabled).await?),
                Operation::DisableKey => reply(self.set_key_state(keys, KeyState::Disabled).await?),
                Operation::CancelKeyDeletion => reply(self.cancel_key_deletion(keys).await?),
                Operation::DisableKeyRotation => reply(self.disable_key_rotation(keys).await?),
                Operation::GetKeyRotationStatus => reply(self.get_key_rotation_status(keys)?),
                Operation::RotateKeyOnDemand => reply(self.rotate_key_on_demand(keys).await?),
                Operation::GetKeyLastUsage => reply(self.get_key_last_usage(keys).await?),
                other => Err(KmsError::Internal(format!(
                    "request path: {other} is not a key-only operation"
                ))),
            },
            Request::Encrypt(r) => reply(
                self.encrypt(keys, r.plaintext, r.context, r.algorithm, r.dry_run)
                    .await?,
            ),
            Request::Decrypt(r) => reply(self.decrypt(keys, r).await?),
            Request::ReEncrypt(r) => reply(self.re_encrypt(keys, r).await?),
            Request::GenerateDataKey(r) => reply(
                self.generate_data_key(keys, r.size, r.context, r.with_plaintext, r.dry_run)
                    .await?,
            ),
            Request::CreateAlias(r) => reply(self.create_alias(p, keys, r.alias).await?),
            Request::UpdateAlias(r) => reply(self.update_alias(p, keys, r.alias).await?),
            Request::DeleteAlias(alias) => reply(self.delete_alias(p, alias).await?),
            Request::ListAliases(r) => reply(self.list_aliases(p, keys, r.page).await?),
            Request::UpdateKeyDescription(r) => {
                reply(self.update_key_description(keys, r.description).await?)
            }
            Request::ScheduleKeyDeletion(r) => {
                reply(self.schedule_key_deletion(keys, r.window_days).await?)
            }
            Request::TagResource(r) => reply(self.tag_resource(keys, r.tags).await?),
            Request::UntagResource(r) => reply(self.untag_resource(keys, r.tag_keys).await?),
            Request::ListResourceTags(r) => {
                reply(self.list_resource_tags(keys, r.page.limit, r.page.marker.as_deref())?)
            }
            Request::Sign(r) => match r.signature {
                None => reply(
                    self.sign(keys, r.message, r.message_type, r.algorithm, r.dry_run)
                        .await?,
                ),
                Some(sig) => reply(
                    self.verify(keys, r.message, r.message_type, sig, r.algorithm, r.dry_run)
                        .await?,
                ),
            },
            Request::Mac(r) => match r.mac {
                None => reply(
                    self.generate_mac(keys, r.message, r.algorithm, r.dry_run)
                        .await?,
                ),
                Some(mac) => reply(
                    self.verify_mac(keys, r.message, mac, r.algorithm, r.dry_run)
                        .await?,
                ),
            },
            Request::DeriveSharedSecret(r) => reply(
                self.derive_shared_secret(keys, r.algorithm, &r.public_key, r.dry_run)
                    .await?,
            ),
            Request::GenerateDataKeyPair(r) => reply(
                self.generate_data_key_pair(keys, r.spec, r.context, r.with_plaintext, r.dry_run)
                    .await?,
            ),
            Request::EnableKeyRotation(r) => {
                reply(self.enable_key_rotation(keys, r.period_days).await?)
            }
            Request::GetKeyPolicy(r) => reply(self.get_key_policy(keys, r.name.as_deref())?),
            Request::PutKeyPolicy(r) => reply(
                self.put_key_policy(
                    p,
                    keys,
                    r.name.as_deref(),
                    r.policy,
                    r.bypass_policy_lockout_safety_check,
                )
                .await?,
            ),
            Request::ListKeyPolicies(r) => {
                reply(self.list_key_policies(keys, r.page.limit, r.page.marker.as_deref())?)
            }
            Request::ListKeyRotations(r) => reply(self.list_key_rotations(
                keys,
                r.include_all_material,
                r.page.limit,
                r.page.marker.as_deref(),
            )?),
            Request::CreateGrant(r) => reply(self.create_grant(p, keys, r).await?),
            Request::ListGrants(r) => reply(self.list_grants(keys, r)?),
            Request::ListRetirableGrants(r) => reply(self.list_retirable_grants(r)?),
            Request::RetireGrant(r) => reply(self.retire_grant(p, keys, r).await?),
            Request::RevokeGrant(r) => reply(self.revoke_grant(keys, r).await?),
            Request::GetParametersForImport(r) => {
                reply(self.get_parameters_for_import(keys, r).await?)
            }
            Request::ImportKeyMaterial(r) => reply(self.import_key_material(keys, r).await?),
            Request::DeleteImportedKeyMaterial(r) => {
                reply(self.delete_imported_key_material(keys, r).await?)
            }
        }
    }

    /// Which key a ciphertext belongs to: a caller-named RSA key (its ciphertext is raw
    /// RSA-OAEP), else the key in the blob's header, which a caller-named key must match.
    fn ciphertext_key(
        &self,
        p: &Principal,
        ciphertext: &[u8],
        given: Option<&KeyRef>,
    ) -> Result<(Arc<Entry>, Option<Blob>), KmsError> {
        if let Some(k) = given {
            if let Ok(e) = self.resolve_ref(p, k, true, true) {
                if super::asymmetric::is_rsa(&e) {
                    return Ok((e, None));
                }
            }
        }
        let (blob, owner) = self.open_blob(p, ciphertext, given)?;
        Ok((owner, Some(blob)))
    }
}
