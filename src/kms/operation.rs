//! Every AWS KMS operation, as one closed enum: its wire name (`X-Amz-Target:
//! TrentService.<Name>`), its IAM action (`kms:<Name>`), its family, whether it is
//! read-only (CloudTrail's `readOnly`), and whether it takes `GrantTokens` / `DryRun`.
//! The request path, authorization, the audit record and the fuzz test all iterate or
//! match this one list.

use std::fmt;

/// Which part of the service answers an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Key creation, description, listing and symmetric cryptography.
    Core,
    /// Aliases.
    Alias,
    /// Key state, description, deletion and tags.
    Lifecycle,
    /// Asymmetric and HMAC keys.
    Asymmetric,
    /// Key rotation.
    Rotation,
    /// Key policies (not built yet).
    Policy,
    /// Grants.
    Grant,
    /// Imported key material.
    Import,
    /// Custom key stores (not built yet).
    CustomKeyStore,
    /// Multi-Region keys (not built yet).
    MultiRegion,
    /// Audit (`GetKeyLastUsage`).
    Audit,
}

macro_rules! operations {
    ($( $name:ident : $family:ident, read_only = $ro:literal, grant_tokens = $gt:literal, dry_run = $dr:literal, built = $built:literal; )+) => {
        /// One AWS KMS operation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation { $( #[doc = concat!("`", stringify!($name), "`")] $name, )+ }

        impl Operation {
            /// Every operation of the AWS KMS API, in the API reference's order.
            pub const ALL: &'static [Operation] = &[ $( Operation::$name, )+ ];

            /// The wire name (`Encrypt`).
            pub fn name(self) -> &'static str {
                match self { $( Operation::$name => stringify!($name), )+ }
            }

            /// The IAM action (`kms:Encrypt`).
            pub fn action(self) -> &'static str {
                match self { $( Operation::$name => concat!("kms:", stringify!($name)), )+ }
            }

            /// The family that answers it.
            pub fn family(self) -> Family {
                match self { $( Operation::$name => Family::$family, )+ }
            }

            /// True for operations that change nothing (CloudTrail's `readOnly`).
            pub fn read_only(self) -> bool {
                match self { $( Operation::$name => $ro, )+ }
            }

            /// True when the request accepts `GrantTokens`.
            pub fn takes_grant_tokens(self) -> bool {
                match self { $( Operation::$name => $gt, )+ }
            }

            /// True when the request accepts `DryRun`.
            pub fn takes_dry_run(self) -> bool {
                match self { $( Operation::$name => $dr, )+ }
            }

            /// True when this service answers it (others are `UnknownOperationException`).
            pub fn is_built(self) -> bool {
                match self { $( Operation::$name => $built, )+ }
            }

            /// Parse a wire name.
            pub fn from_name(name: &str) -> Option<Operation> {
                match name { $( stringify!($name) => Some(Operation::$name), )+ _ => None }
            }
        }
    };
}

operations! {
    CancelKeyDeletion: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    ConnectCustomKeyStore: CustomKeyStore, read_only = false, grant_tokens = false, dry_run = false, built = false;
    CreateAlias: Alias, read_only = false, grant_tokens = false, dry_run = false, built = true;
    CreateCustomKeyStore: CustomKeyStore, read_only = false, grant_tokens = false, dry_run = false, built = false;
    CreateGrant: Grant, read_only = false, grant_tokens = true, dry_run = true, built = true;
    CreateKey: Core, read_only = false, grant_tokens = false, dry_run = false, built = true;
    Decrypt: Core, read_only = true, grant_tokens = true, dry_run = true, built = true;
    DeleteAlias: Alias, read_only = false, grant_tokens = false, dry_run = false, built = true;
    DeleteCustomKeyStore: CustomKeyStore, read_only = false, grant_tokens = false, dry_run = false, built = false;
    DeleteImportedKeyMaterial: Import, read_only = false, grant_tokens = false, dry_run = false, built = true;
    DeriveSharedSecret: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    DescribeCustomKeyStores: CustomKeyStore, read_only = true, grant_tokens = false, dry_run = false, built = false;
    DescribeKey: Core, read_only = true, grant_tokens = true, dry_run = false, built = true;
    DisableKey: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    DisableKeyRotation: Rotation, read_only = false, grant_tokens = false, dry_run = false, built = true;
    DisconnectCustomKeyStore: CustomKeyStore, read_only = false, grant_tokens = false, dry_run = false, built = false;
    EnableKey: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    EnableKeyRotation: Rotation, read_only = false, grant_tokens = false, dry_run = false, built = true;
    Encrypt: Core, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateDataKey: Core, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateDataKeyPair: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateDataKeyPairWithoutPlaintext: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateDataKeyWithoutPlaintext: Core, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateMac: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    GenerateRandom: Core, read_only = true, grant_tokens = false, dry_run = false, built = true;
    GetKeyLastUsage: Audit, read_only = true, grant_tokens = false, dry_run = false, built = true;
    GetKeyPolicy: Policy, read_only = true, grant_tokens = false, dry_run = false, built = true;
    GetKeyRotationStatus: Rotation, read_only = true, grant_tokens = false, dry_run = false, built = true;
    GetParametersForImport: Import, read_only = true, grant_tokens = false, dry_run = false, built = true;
    GetPublicKey: Asymmetric, read_only = true, grant_tokens = true, dry_run = false, built = true;
    ImportKeyMaterial: Import, read_only = false, grant_tokens = false, dry_run = false, built = true;
    ListAliases: Alias, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListGrants: Grant, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListKeyPolicies: Policy, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListKeyRotations: Rotation, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListKeys: Core, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListResourceTags: Lifecycle, read_only = true, grant_tokens = false, dry_run = false, built = true;
    ListRetirableGrants: Grant, read_only = true, grant_tokens = false, dry_run = false, built = true;
    PutKeyPolicy: Policy, read_only = false, grant_tokens = false, dry_run = false, built = true;
    ReEncrypt: Core, read_only = true, grant_tokens = true, dry_run = true, built = true;
    ReplicateKey: MultiRegion, read_only = false, grant_tokens = false, dry_run = false, built = false;
    RetireGrant: Grant, read_only = false, grant_tokens = false, dry_run = true, built = true;
    RevokeGrant: Grant, read_only = false, grant_tokens = false, dry_run = true, built = true;
    RotateKeyOnDemand: Rotation, read_only = false, grant_tokens = false, dry_run = false, built = true;
    ScheduleKeyDeletion: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    Sign: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    TagResource: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    UntagResource: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    UpdateAlias: Alias, read_only = false, grant_tokens = false, dry_run = false, built = true;
    UpdateCustomKeyStore: CustomKeyStore, read_only = false, grant_tokens = false, dry_run = false, built = false;
    UpdateKeyDescription: Lifecycle, read_only = false, grant_tokens = false, dry_run = false, built = true;
    UpdatePrimaryRegion: MultiRegion, read_only = false, grant_tokens = false, dry_run = false, built = false;
    Verify: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
    VerifyMac: Asymmetric, read_only = true, grant_tokens = true, dry_run = true, built = true;
}

impl Operation {
    /// True for the cryptographic operations `GetKeyLastUsage` reports (its
    /// `KeyLastUsageTrackingOperation` values).
    pub fn tracks_last_usage(self) -> bool {
        use Operation::*;
        matches!(
            self,
            Decrypt
                | DeriveSharedSecret
                | Encrypt
                | GenerateDataKey
                | GenerateDataKeyPair
                | GenerateDataKeyPairWithoutPlaintext
                | GenerateDataKeyWithoutPlaintext
                | GenerateMac
                | ReEncrypt
                | Sign
                | Verify
                | VerifyMac
        )
    }

    /// Parse an `X-Amz-Target` header value (`TrentService.Encrypt`).
    pub fn from_target(target: &str) -> Option<Operation> {
        target
            .strip_prefix("TrentService.")
            .and_then(Operation::from_name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips_and_names_its_action() {
        assert_eq!(Operation::ALL.len(), 54);
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.name()), Some(*op));
            assert_eq!(
                Operation::from_target(&format!("TrentService.{}", op.name())),
                Some(*op)
            );
            assert_eq!(op.action(), format!("kms:{}", op.name()));
        }
        assert_eq!(Operation::ALL.iter().filter(|o| o.is_built()).count(), 46);
        assert_eq!(Operation::from_target("Encrypt"), None);
        assert_eq!(Operation::from_target("TrentService.NoSuchOperation"), None);
    }
}
