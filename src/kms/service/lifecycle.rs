//! Key lifecycle operations: enable, disable, description. (Scheduled deletion, tags and
//! AWS-managed keys join here.)

use super::{KeyState, Kms};
use crate::auth::Principal;
use crate::kms::model::Empty;
use crate::kms::KmsError;

impl Kms {
    /// A customer-managed key for a management operation (aliases not accepted).
    fn managed(&self, p: &Principal, key: &str) -> Result<std::sync::Arc<super::Entry>, KmsError> {
        let e = self.resolve(p, key, false)?;
        if e.doc.key_manager == crate::kms::types::KeyManager::Aws {
            return Err(KmsError::Unsupported(format!(
                "{} is an AWS managed key and cannot be modified.",
                self.arn(&e.doc)
            )));
        }
        Ok(e)
    }

    fn not_pending_deletion(&self, e: &super::Entry) -> Result<(), KmsError> {
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

    pub async fn enable_key(&self, p: &Principal, key: &str) -> Result<Empty, KmsError> {
        let e = self.managed(p, key)?;
        self.not_pending_deletion(&e)?;
        if e.doc.key_state == KeyState::PendingImport {
            return Err(KmsError::InvalidState(format!(
                "{} is pending import.",
                self.arn(&e.doc)
            )));
        }
        self.update_doc(&e.doc.key_id, |d| {
            d.key_state = KeyState::Enabled;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    pub async fn disable_key(&self, p: &Principal, key: &str) -> Result<Empty, KmsError> {
        let e = self.managed(p, key)?;
        self.not_pending_deletion(&e)?;
        if e.doc.key_state == KeyState::PendingImport {
            return Err(KmsError::InvalidState(format!(
                "{} is pending import.",
                self.arn(&e.doc)
            )));
        }
        self.update_doc(&e.doc.key_id, |d| {
            d.key_state = KeyState::Disabled;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    pub async fn update_key_description(
        &self,
        p: &Principal,
        key: &str,
        description: String,
    ) -> Result<Empty, KmsError> {
        let e = self.managed(p, key)?;
        self.not_pending_deletion(&e)?;
        self.update_doc(&e.doc.key_id, |d| {
            d.description = description;
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }
}
