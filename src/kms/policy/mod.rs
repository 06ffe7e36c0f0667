//! The IAM policy language as AWS KMS applies it: key policies, identity (IAM) policies and
//! role trust policies, parsed at the edge into typed documents, evaluated against one
//! request, and combined into KMS's authorization decision.
//!
//! | file | concern |
//! |---|---|
//! | `document.rs` | [`PolicyDocument::parse`]: the JSON grammar, size limits, AWS's messages |
//! | `arn.rs` | principals: the `AWS` principal forms a policy may name, and the [`Caller`] |
//! | `condition.rs` | the `Condition` operators, `IfExists`, `ForAllValues:`/`ForAnyValue:`, policy variables |
//! | `wildcard.rs` | `*`/`?` matching in time linear in the text (a bit-parallel automaton) |
//! | `eval.rs` | [`Request`], per-policy [`PolicyEffect`], [`authorize`], [`check_lockout`] |
//! | `defaults.rs` | [`default_key_policy`], [`aws_managed_key_policy`] in AWS's own layout |
//!
//! The decision follows AWS KMS: an explicit `Deny` in any policy wins; otherwise the
//! request is allowed when the key policy allows the caller directly (its ARN, `*`, or for
//! a role session the role or session ARN), or when the key policy allows the caller's
//! *account* (`111122223333` or `arn:aws:iam::111122223333:root`, which delegates to IAM)
//! and one of the caller's identity policies allows it, or when a grant allows it.
//!
//! Hostile input never panics: parsing rejects, evaluation decides. Matching is linear in
//! the text times the pattern's length in 64-bit words, and nesting is bounded by the
//! grammar (and by `serde_json`'s recursion limit before it).

mod arn;
mod condition;
mod defaults;
mod document;
mod eval;
mod wildcard;

pub use arn::{Caller, CallerKind};
pub use condition::ConditionContext;
pub use defaults::{aws_managed_key_policy, default_key_policy};
pub use document::{PolicyDocument, PolicyKind};
pub use eval::{authorize, check_lockout, AllowedBy, Decision, PolicyEffect, Request};

/// The largest key policy AWS KMS accepts, in bytes.
pub const KEY_POLICY_MAX_BYTES: usize = 32_768;
/// The largest identity policy accepted here, in characters: AWS's quota for the inline
/// policies of a role (10,240); a user's inline policies are limited to 2,048 by AWS, a
/// managed policy to 6,144 (without whitespace): the caller may enforce those itself.
pub const IDENTITY_POLICY_MAX_CHARS: usize = 10_240;
/// The largest role trust policy accepted here, in characters (AWS's default quota).
pub const TRUST_POLICY_MAX_CHARS: usize = 2_048;

/// AWS's message when a key policy names a principal that is not valid.
pub const INVALID_PRINCIPALS: &str =
    "Policy contains a statement with one or more invalid principals.";
/// AWS's message when a new key policy would lock its author out (the lockout safety check).
pub const LOCKOUT: &str =
    "The new key policy will not allow you to update the key policy in the future.";

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `MalformedPolicyDocumentException` (IAM: `MalformedPolicyDocument`): the document is
    /// not a valid policy; the message says why, in AWS's words where AWS has them.
    #[error("{0}")]
    Malformed(String),
    /// The document is longer than its kind allows (AWS answers with a
    /// `ValidationException` for the `Policy` member, or IAM's `LimitExceeded`).
    #[error("The policy document is {len} long; the limit for a {kind} is {limit}.")]
    TooLarge {
        /// The document's length (bytes for a key policy, characters otherwise).
        len: usize,
        /// The limit for its kind.
        limit: usize,
        /// The kind of policy, for the message.
        kind: &'static str,
    },
    /// A caller ARN that names no principal this module knows (root, user, assumed role).
    #[error("Not a valid caller principal ARN: {0}")]
    InvalidCaller(String),
}
