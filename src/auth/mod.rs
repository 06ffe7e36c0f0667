//! Request authentication: AWS Signature Version 4 verification of incoming KMS requests,
//! the credential types it checks against, and the principal it yields.
//!
//! The layer above (`api`) calls [`verify`] with the raw request parts and a
//! [`CredentialLookup`]; on success it gets the [`Principal`] that made the request, on failure an
//! [`AuthError`] that already knows its AWS `__type`, HTTP status and client-safe message.
//! [`Signer`] signs this crate's own outgoing requests (the `bench` and `envelope` commands)
//! with the same canonicalization; the tests sign with AWS's own `aws-sigv4` crate.

pub mod credentials;
pub mod sign;
pub mod sigv4;

pub use credentials::{LiveCredentials, StaticCredentials};
pub use sign::Signer;
pub use sigv4::{verify, AuthError, RequestParts};

use std::fmt;
use std::sync::Arc;

/// A credential the service knows. `Debug` redacts the secret.
#[derive(Clone)]
pub struct Credential {
    /// The AWS access key id (`AKIA…`) requests name in their SigV4 credential scope.
    pub access_key_id: String,
    /// The secret the SigV4 signing key is derived from; zeroized on drop.
    pub secret_access_key: zeroize::Zeroizing<String>,
    /// The 12-digit AWS account the credential belongs to.
    pub account_id: String,
    /// The IAM ARN of the user or role the credential authenticates as.
    pub principal_arn: String,
    /// `false` for an access key made `Inactive`: refused like an unknown key.
    pub active: bool,
    /// For temporary credentials (`ASIA…`) of a role session, the session they belong to.
    pub session: Option<SessionCredential>,
}

/// What a temporary credential adds to a long-term one: the session token every request
/// must carry (held as its SHA-256), its expiry, and the role session it acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCredential {
    /// SHA-256 of the session token (`X-Amz-Security-Token`).
    pub token_sha256: [u8; 32],
    /// When the credential stops being accepted (`ExpiredToken` from then on).
    pub expires_at: time::OffsetDateTime,
    /// The session as the authenticated principal shows it.
    pub session: Session,
}

/// A role session: which role, which session name, the role's unique id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The assumed role's IAM ARN, with its path.
    pub role_arn: String,
    /// The role's unique id (`AROA…`).
    pub role_id: String,
    /// The session name.
    pub session_name: String,
}

impl Credential {
    /// Builds a credential; the secret is moved into zeroize-on-drop storage.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        account_id: impl Into<String>,
        principal_arn: impl Into<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: zeroize::Zeroizing::new(secret_access_key.into()),
            account_id: account_id.into(),
            principal_arn: principal_arn.into(),
            active: true,
            session: None,
        }
    }

    /// The principal this credential authenticates as.
    pub fn principal(&self) -> Principal {
        Principal {
            access_key_id: self.access_key_id.clone(),
            account_id: self.account_id.clone(),
            arn: self.principal_arn.clone(),
            session: self.session.as_ref().map(|s| s.session.clone()),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("account_id", &self.account_id)
            .field("principal_arn", &self.principal_arn)
            .field("active", &self.active)
            .field("session", &self.session)
            .finish()
    }
}

/// Who made a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The access key id the request was signed with.
    pub access_key_id: String,
    /// The 12-digit AWS account of the signer.
    pub account_id: String,
    /// The IAM ARN of the signer, as recorded for each call (for a role session, the
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` ARN).
    pub arn: String,
    /// For temporary credentials, the role session the signer acts as.
    pub session: Option<Session>,
}

/// Resolves an access key id to the credential that owns it.
pub trait CredentialLookup: Send + Sync {
    /// The credential with this access key id, or `None` if the service does not know it.
    fn lookup(&self, access_key_id: &str) -> Option<Arc<Credential>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_debug_redacts_secret() {
        let c = Credential::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "111122223333",
            "arn:aws:iam::111122223333:user/alice",
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wJalrXUtnFEMI"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        assert!(dbg.contains("AKIDEXAMPLE"));
        assert_eq!(
            c.principal(),
            Principal {
                access_key_id: "AKIDEXAMPLE".into(),
                account_id: "111122223333".into(),
                arn: "arn:aws:iam::111122223333:user/alice".into(),
                session: None,
            }
        );
    }
}
