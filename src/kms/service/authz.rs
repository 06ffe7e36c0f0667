//! Authorization, in one place: [`Kms::authorize`] decides every KMS call as AWS KMS does,
//! from the key policy, the caller's identity (IAM) policies and grants, over the condition
//! keys KMS documents. Also the key policy operations (`GetKeyPolicy`, `PutKeyPolicy`,
//! `ListKeyPolicies`) and the policy checks of `CreateKey`.
//!
//! The decision, per key the call acts on (ReEncrypt: `kms:ReEncryptFrom` on the source key
//! and `kms:ReEncryptTo` on the destination):
//!
//! * an explicit `Deny` in the key policy or an identity policy refuses;
//! * the caller's own account: allowed when the key policy allows the caller directly, or
//!   allows its account (delegating to IAM) and an identity policy allows the call (the
//!   account's root user needs none), or a grant allows it;
//! * another account (cross-account use, by key or alias ARN only): the key policy must
//!   allow the caller or its account **and** the caller's identity policies must allow the
//!   call; or a grant allows it.
//!
//! Calls on no key (`CreateKey`, `ListKeys`, `ListAliases`, `GenerateRandom`, …) are decided
//! by identity policies alone (resource `*`); alias operations need the action on the alias
//! ARN (identity policies) and on each key involved (key policy). `RetireGrant` is decided by
//! the grant itself. A refusal is `AccessDeniedException` with AWS's message shape.

use super::dispatch::Resolved;
use super::{Entry, Kms};
use crate::auth::Principal;
use crate::kms::context::EncryptionContext;
use crate::kms::error::KmsError;
use crate::kms::model::KeyDoc;
use crate::kms::operation::Operation;
use crate::kms::policy::{
    self, Caller, CallerKind, ConditionContext, PolicyDocument, PolicyEffect, PolicyError,
    PolicyKind,
};
use crate::kms::requests::Request;
use crate::kms::types::{EncryptionAlgorithm, KeyRef, Tag};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// The transport facts of a call that policies may test (`aws:SourceIp`,
/// `aws:SecureTransport`), given by the API layer.
#[derive(Debug, Clone, Default)]
pub struct CallEnv {
    /// The client's address, when known.
    pub source_ip: Option<IpAddr>,
    /// Whether the call came over TLS.
    pub secure_transport: bool,
    /// The AWS service endpoint a call came through (`kms:ViaService`,
    /// `ec2.us-east-1.amazonaws.com`), which only an AWS managed key's policy tests. Set
    /// only by an in-process caller acting for such a service; the HTTP API never sets it
    /// (no AWS service fronts this one), so AWS managed keys are not usable directly, as
    /// in AWS.
    pub via_service: Option<String>,
}

/// The only key policy name AWS KMS has.
pub(super) const DEFAULT_POLICY_NAME: &str = "default";

/// A key's policy as evaluated: parsed once per policy text.
pub(super) fn parse_key_policy(doc: &KeyDoc) -> Result<Arc<PolicyDocument>, KmsError> {
    let text = match &doc.policy {
        Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
        None => std::borrow::Cow::Owned(policy::default_key_policy(doc.account_id.as_str())),
    };
    PolicyDocument::parse(&text, PolicyKind::Key)
        .map(Arc::new)
        .map_err(|e| KmsError::Internal(format!("key {}: stored policy: {e}", doc.key_id)))
}

impl Kms {
    /// A key policy given by a caller, parsed as AWS validates it: valid JSON and grammar,
    /// and every IAM user and role it names must exist ("The principals in the key policy
    /// must exist and be visible to KMS").
    pub(super) fn parse_given_policy(&self, text: &str) -> Result<PolicyDocument, KmsError> {
        let parsed = PolicyDocument::parse(text, PolicyKind::Key).map_err(malformed)?;
        if parsed
            .named_principals()
            .iter()
            .any(|arn| !self.iam.principal_exists(arn))
        {
            return Err(KmsError::MalformedPolicyDocument(
                policy::INVALID_PRINCIPALS.to_string(),
            ));
        }
        Ok(parsed)
    }
}

fn malformed(e: PolicyError) -> KmsError {
    KmsError::MalformedPolicyDocument(e.to_string())
}

/// Operations AWS allows on a key of another account (by key ARN or alias ARN).
pub(super) fn cross_account(op: Operation) -> bool {
    use Operation::*;
    matches!(
        op,
        CreateGrant
            | Decrypt
            | DeriveSharedSecret
            | DescribeKey
            | Encrypt
            | GenerateDataKey
            | GenerateDataKeyPair
            | GenerateDataKeyPairWithoutPlaintext
            | GenerateDataKeyWithoutPlaintext
            | GenerateMac
            | GetKeyRotationStatus
            | GetPublicKey
            | ListGrants
            | ReEncrypt
            | RetireGrant
            | RevokeGrant
            | Sign
            | Verify
            | VerifyMac
    )
}

/// Operations on no key: identity policies alone decide, on resource `*`.
fn keyless(op: Operation) -> bool {
    use Operation::*;
    matches!(
        op,
        CreateKey | ListKeys | ListAliases | GenerateRandom | ListRetirableGrants
    )
}

/// Which policy refused, for AWS's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ExplicitResource,
    ExplicitIdentity,
    NoResource,
    NoIdentity,
}

/// One check: `action` on `resource`, with the key policy when the resource is a key.
struct Check<'a> {
    action: &'static str,
    resource: String,
    key: Option<&'a Entry>,
    /// For the destination of ReEncrypt.
    destination: bool,
}

impl Kms {
    /// May `p` perform `op` (with `request`'s parameters) on the resolved keys?
    pub fn authorize(
        &self,
        p: &Principal,
        op: Operation,
        request: &Request,
        keys: &Resolved,
        env: &CallEnv,
    ) -> Result<(), KmsError> {
        if op == Operation::RetireGrant {
            return Ok(());
        }
        let caller = self.iam.caller(p)?;
        if let Request::ListRetirableGrants(r) = request {
            // Only principals of the caller's own account (AWS: "You must specify a
            // principal in your AWS account").
            let account = r.retiring.split(':').nth(4).unwrap_or(&r.retiring);
            if account != caller.account_id() {
                return Err(denied(
                    &caller,
                    op.action(),
                    &r.retiring,
                    Refusal::NoResource,
                ));
            }
        }
        let identity = self.iam.policies_for(p);
        for check in self.checks(op, request, keys)? {
            let mut req = policy::Request::new(check.action, &check.resource, caller.clone());
            self.global_keys(req.context_mut(), env);
            request_keys(req.context_mut(), request, check.destination);
            if let Some(e) = check.key {
                self.key_keys(req.context_mut(), &e.doc);
                // The key's aliases cost a scan: only when a policy tests them.
                const ALIASES: &str = "kms:ResourceAliases";
                if std::iter::once(&e.policy)
                    .chain(identity.iter())
                    .any(|p| p.tests_condition_key(ALIASES))
                {
                    self.resource_aliases(req.context_mut(), &e.doc);
                }
            }
            let grant = || {
                check.key.is_some_and(|e| {
                    self.grant_allows_entry(e, &caller, op, request, check.destination)
                })
            };
            if let Err(why) = decide(&req, check.key.map(|e| &*e.policy), &identity, grant) {
                return Err(denied(&caller, check.action, &check.resource, why));
            }
        }
        Ok(())
    }

    /// The checks a call needs.
    fn checks<'a>(
        &self,
        op: Operation,
        request: &Request,
        keys: &'a Resolved,
    ) -> Result<Vec<Check<'a>>, KmsError> {
        let key_check = |e: &'a Arc<Entry>, action: &'static str, destination: bool| Check {
            action,
            resource: self.arn(&e.doc),
            key: Some(&**e),
            destination,
        };
        if keyless(op) {
            return Ok(vec![Check {
                action: op.action(),
                resource: "*".into(),
                key: None,
                destination: false,
            }]);
        }
        let mut out = Vec::with_capacity(2);
        match request {
            Request::CreateAlias(r) | Request::UpdateAlias(r) => {
                out.push(self.alias_check(op, &keys.key()?.doc, &r.alias));
            }
            Request::DeleteAlias(alias) => {
                if let Some(e) = &keys.alias_key {
                    out.push(self.alias_check(op, &e.doc, alias));
                }
            }
            _ => {}
        }
        match op {
            Operation::ReEncrypt => {
                out.push(key_check(
                    keys.key.as_ref().ok_or_else(unresolved)?,
                    "kms:ReEncryptFrom",
                    false,
                ));
                out.push(key_check(
                    keys.destination.as_ref().ok_or_else(unresolved)?,
                    "kms:ReEncryptTo",
                    true,
                ));
            }
            _ => {
                for e in keys.key.iter().chain(keys.alias_key.iter()) {
                    out.push(key_check(e, op.action(), false));
                }
            }
        }
        Ok(out)
    }

    /// The alias half of an alias operation: the action on the alias ARN (in the key's
    /// account, which is the caller's: aliases never cross accounts).
    fn alias_check(
        &self,
        op: Operation,
        doc: &KeyDoc,
        alias: &crate::kms::types::AliasName,
    ) -> Check<'static> {
        Check {
            action: op.action(),
            resource: self.alias_arn(&doc.account_id, alias),
            key: None,
            destination: false,
        }
    }

    /// Keys every request has.
    fn global_keys(&self, ctx: &mut ConditionContext, env: &CallEnv) {
        let now = self.now();
        let iso = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        ctx.insert("aws:CurrentTime", [iso]);
        ctx.insert("aws:EpochTime", [now.unix_timestamp().to_string()]);
        ctx.insert(
            "aws:SecureTransport",
            [if env.secure_transport {
                "true"
            } else {
                "false"
            }],
        );
        ctx.insert("aws:RequestedRegion", [self.region.as_str()]);
        if let Some(ip) = env.source_ip {
            ctx.insert("aws:SourceIp", [ip.to_string()]);
        }
        if let Some(via) = &env.via_service {
            ctx.insert("kms:ViaService", [via.as_str()]);
        }
    }

    /// Keys that describe the key a check is about.
    fn key_keys(&self, ctx: &mut ConditionContext, doc: &KeyDoc) {
        ctx.insert("kms:KeySpec", [doc.key_spec.as_str()]);
        ctx.insert("kms:CustomerMasterKeySpec", [doc.key_spec.as_str()]);
        ctx.insert("kms:KeyUsage", [doc.key_usage.as_str()]);
        ctx.insert("kms:CustomerMasterKeyUsage", [doc.key_usage.as_str()]);
        ctx.insert("kms:KeyOrigin", [doc.origin.as_str()]);
        ctx.insert("kms:MultiRegion", ["false"]);
        for t in &doc.tags {
            ctx.insert(&format!("aws:ResourceTag/{}", t.key()), [t.value()]);
        }
    }

    /// `kms:ResourceAliases`: the aliases of the key.
    fn resource_aliases(&self, ctx: &mut ConditionContext, doc: &KeyDoc) {
        let id = doc.key_id.to_string();
        let aliases: Vec<String> = self
            .aliases
            .read()
            .values()
            .filter(|a| a.key_id == id && a.account_id == doc.account_id.as_str())
            .map(|a| a.alias_name.clone())
            .collect();
        if !aliases.is_empty() {
            ctx.insert("kms:ResourceAliases", aliases);
        }
    }

    /// Whether a grant on `e` lets `caller` do `op` with this request's parameters
    /// (ReEncrypt: `ReEncryptFrom` on the source, `ReEncryptTo` on the destination, each
    /// with its own encryption context; CreateGrant: only a grant at least as wide as the
    /// new one, AWS's rule for grants made through a grant).
    fn grant_allows_entry(
        &self,
        e: &Entry,
        caller: &Caller,
        op: Operation,
        request: &Request,
        destination: bool,
    ) -> bool {
        use crate::kms::types::GrantOperation as G;
        let doc = &e.doc;
        match request {
            Request::ReEncrypt(r) if destination => {
                self.grant_allows_op(doc, caller, G::ReEncryptTo, Some(&r.destination_context))
            }
            Request::ReEncrypt(r) => {
                self.grant_allows_op(doc, caller, G::ReEncryptFrom, Some(&r.source_context))
            }
            Request::CreateGrant(r) => {
                self.grant_permits_child(doc, caller, &r.operations, r.constraints.as_ref())
            }
            Request::Encrypt(r) => self.grant_allows(doc, caller, op, Some(&r.context)),
            Request::Decrypt(r) => self.grant_allows(doc, caller, op, Some(&r.context)),
            Request::GenerateDataKey(r) => self.grant_allows(doc, caller, op, Some(&r.context)),
            Request::GenerateDataKeyPair(r) => self.grant_allows(doc, caller, op, Some(&r.context)),
            _ => self.grant_allows(doc, caller, op, None),
        }
    }

    // ---------------------------------------------------------- key policy operations

    /// `GetKeyPolicy`: the key's policy text (`PolicyName` must be `default`).
    pub(super) fn get_key_policy(
        &self,
        keys: &Resolved,
        name: Option<&str>,
    ) -> Result<GetKeyPolicyOutput, KmsError> {
        check_policy_name(name)?;
        let e = keys.key()?;
        Ok(GetKeyPolicyOutput {
            policy: policy_text(&e.doc),
            policy_name: DEFAULT_POLICY_NAME,
        })
    }

    /// `ListKeyPolicies`: always `["default"]`.
    pub(super) fn list_key_policies(
        &self,
        keys: &Resolved,
        _limit: usize,
        marker: Option<&str>,
    ) -> Result<ListKeyPoliciesOutput, KmsError> {
        keys.key()?;
        // One policy fits any page: no marker is ever issued, so none is valid.
        if marker.is_some() {
            return Err(KmsError::InvalidMarker("Invalid marker".into()));
        }
        Ok(ListKeyPoliciesOutput {
            policy_names: vec![DEFAULT_POLICY_NAME],
            truncated: false,
        })
    }

    /// `PutKeyPolicy`: replace the key's policy, after the lockout safety check unless
    /// bypassed.
    pub(super) async fn put_key_policy(
        &self,
        p: &Principal,
        keys: &Resolved,
        name: Option<&str>,
        text: String,
        bypass: bool,
    ) -> Result<crate::kms::model::Empty, KmsError> {
        check_policy_name(name)?;
        let e = keys.key()?;
        let parsed = self.parse_given_policy(&text)?;
        if !bypass {
            self.lockout_check(p, &parsed, &self.arn(&e.doc))?;
        }
        self.update_doc(&e.doc.key_id, |d| {
            d.policy = Some(text);
            Ok(())
        })
        .await?;
        Ok(crate::kms::model::Empty {})
    }

    /// The lockout safety check: the new policy must let the caller call `PutKeyPolicy`.
    pub(super) fn lockout_check(
        &self,
        p: &Principal,
        parsed: &PolicyDocument,
        key_arn: &str,
    ) -> Result<(), KmsError> {
        let caller = self.iam.caller(p)?;
        let mut req = policy::Request::new("kms:PutKeyPolicy", key_arn, caller);
        self.global_keys(req.context_mut(), &CallEnv::default());
        policy::check_lockout(parsed, &req).map_err(malformed)
    }
}

fn unresolved() -> KmsError {
    KmsError::Internal("request path: key not resolved".into())
}

fn check_policy_name(name: Option<&str>) -> Result<(), KmsError> {
    match name {
        None | Some(DEFAULT_POLICY_NAME) => Ok(()),
        Some(_) => Err(KmsError::NotFound("No such policy exists".into())),
    }
}

/// The key policy text a key has (its default when none was ever set).
pub(super) fn policy_text(doc: &KeyDoc) -> String {
    doc.policy
        .clone()
        .unwrap_or_else(|| policy::default_key_policy(doc.account_id.as_str()))
}

/// `GetKeyPolicy`'s answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicyOutput {
    policy: String,
    policy_name: &'static str,
}

/// `ListKeyPolicies`' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyPoliciesOutput {
    policy_names: Vec<&'static str>,
    truncated: bool,
}

/// The decision for one check.
fn decide(
    req: &policy::Request,
    key_policy: Option<&PolicyDocument>,
    identity: &[Arc<PolicyDocument>],
    grant: impl FnOnce() -> bool,
) -> Result<(), Refusal> {
    let caller = req.caller();
    let root = caller.kind() == &CallerKind::Root;
    let mut identity_allows = root;
    for p in identity {
        match p.evaluate(req) {
            PolicyEffect::ExplicitDeny => return Err(Refusal::ExplicitIdentity),
            PolicyEffect::AllowDirect | PolicyEffect::AllowAccount => identity_allows = true,
            PolicyEffect::NotApplicable => {}
        }
    }
    let Some(key_policy) = key_policy else {
        return if identity_allows {
            Ok(())
        } else {
            Err(Refusal::NoIdentity)
        };
    };
    let same_account = resource_account(req.resource()) == Some(caller.account_id());
    let key = key_policy.evaluate(req);
    let allowed = match key {
        PolicyEffect::ExplicitDeny => return Err(Refusal::ExplicitResource),
        PolicyEffect::AllowDirect if same_account => true,
        PolicyEffect::AllowDirect | PolicyEffect::AllowAccount => identity_allows,
        PolicyEffect::NotApplicable => false,
    };
    if allowed || grant() {
        return Ok(());
    }
    Err(match key {
        PolicyEffect::NotApplicable => Refusal::NoResource,
        _ => Refusal::NoIdentity,
    })
}

/// The account of an ARN (`arn:aws:kms:REGION:ACCOUNT:…`).
fn resource_account(arn: &str) -> Option<&str> {
    arn.split(':').nth(4)
}

fn denied(caller: &Caller, action: &str, resource: &str, why: Refusal) -> KmsError {
    let who = caller.arn();
    KmsError::AccessDenied(match why {
        Refusal::ExplicitResource => format!(
            "User: {who} is not authorized to perform: {action} on resource: {resource} with an explicit deny in a resource-based policy"
        ),
        Refusal::ExplicitIdentity => format!(
            "User: {who} is not authorized to perform: {action} on resource: {resource} with an explicit deny in an identity-based policy"
        ),
        Refusal::NoResource => format!(
            "User: {who} is not authorized to perform: {action} on resource: {resource} because no resource-based policy allows the {action} action"
        ),
        Refusal::NoIdentity => format!(
            "User: {who} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
        ),
    })
}

fn context_keys(ctx: &mut ConditionContext, ec: &EncryptionContext) {
    if ec.is_empty() {
        return;
    }
    for (k, v) in ec.iter() {
        ctx.insert(&format!("kms:EncryptionContext:{k}"), [v]);
    }
    ctx.insert("kms:EncryptionContextKeys", ec.iter().map(|(k, _)| k));
}

fn alias_of(ctx: &mut ConditionContext, r: Option<&KeyRef>) {
    match r {
        Some(KeyRef::AliasName(a)) => ctx.insert("kms:RequestAlias", [a.as_str()]),
        Some(KeyRef::AliasArn(a)) => ctx.insert("kms:RequestAlias", [a.alias.as_str()]),
        _ => {}
    }
}

fn algorithm(ctx: &mut ConditionContext, a: Option<EncryptionAlgorithm>) {
    let a = a.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
    ctx.insert("kms:EncryptionAlgorithm", [a.as_str()]);
}

fn tag_keys(ctx: &mut ConditionContext, tags: &[Tag]) {
    for t in tags {
        ctx.insert(&format!("aws:RequestTag/{}", t.key()), [t.value()]);
    }
    if !tags.is_empty() {
        ctx.insert("aws:TagKeys", tags.iter().map(|t| t.key()));
    }
}

/// The condition keys of the request's own parameters (`destination`: ReEncrypt's
/// destination side).
fn request_keys(ctx: &mut ConditionContext, request: &Request, destination: bool) {
    match request {
        Request::CreateKey(r) => {
            let spec = r
                .key_spec
                .unwrap_or(crate::kms::types::KeySpec::SymmetricDefault);
            ctx.insert("kms:KeySpec", [spec.as_str()]);
            if let Some(u) = r.key_usage.or_else(|| spec.default_usage()) {
                ctx.insert("kms:KeyUsage", [u.as_str()]);
            }
            let origin = r.origin.unwrap_or(crate::kms::types::Origin::AwsKms);
            ctx.insert("kms:KeyOrigin", [origin.as_str()]);
            ctx.insert("kms:MultiRegion", [bool_str(r.multi_region)]);
            ctx.insert(
                "kms:BypassPolicyLockoutSafetyCheck",
                [bool_str(r.bypass_policy_lockout_safety_check)],
            );
            tag_keys(ctx, &r.tags);
        }
        Request::Key(_, r) => alias_of(ctx, Some(r)),
        Request::Encrypt(r) => {
            context_keys(ctx, &r.context);
            algorithm(ctx, r.algorithm);
            alias_of(ctx, Some(&r.key));
        }
        Request::Decrypt(r) => {
            context_keys(ctx, &r.context);
            algorithm(ctx, r.algorithm);
            alias_of(ctx, r.key.as_ref());
        }
        Request::ReEncrypt(r) if destination => {
            context_keys(ctx, &r.destination_context);
            algorithm(ctx, r.destination_algorithm);
            alias_of(ctx, Some(&r.destination_key));
        }
        Request::ReEncrypt(r) => {
            context_keys(ctx, &r.source_context);
            algorithm(ctx, r.source_algorithm);
            alias_of(ctx, r.source_key.as_ref());
        }
        Request::GenerateDataKey(r) => {
            context_keys(ctx, &r.context);
            algorithm(ctx, None);
            alias_of(ctx, Some(&r.key));
        }
        Request::GenerateDataKeyPair(r) => {
            context_keys(ctx, &r.context);
            ctx.insert("kms:DataKeyPairSpec", [r.spec.as_str()]);
            alias_of(ctx, Some(&r.key));
        }
        Request::Sign(r) => {
            ctx.insert("kms:SigningAlgorithm", [r.algorithm.as_str()]);
            let mt = r
                .message_type
                .unwrap_or(crate::kms::types::MessageType::Raw);
            ctx.insert("kms:MessageType", [mt.as_str()]);
            alias_of(ctx, Some(&r.key));
        }
        Request::Mac(r) => {
            ctx.insert("kms:MacAlgorithm", [r.algorithm.as_str()]);
            alias_of(ctx, Some(&r.key));
        }
        Request::DeriveSharedSecret(r) => {
            ctx.insert("kms:KeyAgreementAlgorithm", [r.algorithm.as_str()]);
            alias_of(ctx, Some(&r.key));
        }
        Request::TagResource(r) => tag_keys(ctx, &r.tags),
        Request::UntagResource(r) if !r.tag_keys.is_empty() => {
            ctx.insert("aws:TagKeys", r.tag_keys.iter().map(String::as_str));
        }
        Request::ScheduleKeyDeletion(r) => {
            let days = r.window_days.unwrap_or(30);
            ctx.insert(
                "kms:ScheduleKeyDeletionPendingWindowInDays",
                [days.to_string()],
            );
        }
        Request::EnableKeyRotation(r) => {
            let days = r.period_days.unwrap_or(365);
            ctx.insert("kms:RotationPeriodInDays", [days.to_string()]);
        }
        Request::CreateGrant(r) => {
            ctx.insert(
                "kms:GrantOperations",
                r.operations.iter().map(|o| o.as_str()),
            );
            ctx.insert("kms:GranteePrincipal", [r.grantee.as_str()]);
            if let Some(retiring) = &r.retiring {
                ctx.insert("kms:RetiringPrincipal", [retiring.as_str()]);
            }
            ctx.insert("kms:GrantIsForAWSResource", ["false"]);
            if let Some(c) = &r.constraints {
                let mut types = Vec::new();
                if c.equals.is_some() {
                    types.push("EncryptionContextEquals");
                }
                if c.subset.is_some() {
                    types.push("EncryptionContextSubset");
                }
                ctx.insert("kms:GrantConstraintType", types);
                for ec in [&c.equals, &c.subset].into_iter().flatten() {
                    context_keys(ctx, ec);
                }
            }
        }
        Request::PutKeyPolicy(r) => {
            ctx.insert(
                "kms:BypassPolicyLockoutSafetyCheck",
                [bool_str(r.bypass_policy_lockout_safety_check)],
            );
        }
        Request::GetParametersForImport(r) => {
            ctx.insert("kms:WrappingAlgorithm", [r.algorithm.as_str()]);
            ctx.insert("kms:WrappingKeySpec", [r.spec.as_str()]);
        }
        Request::ImportKeyMaterial(r) => {
            let model = r
                .expiration_model
                .unwrap_or(crate::kms::types::ExpirationModel::KeyMaterialExpires);
            ctx.insert("kms:ExpirationModel", [model.as_str()]);
            if let Some(t) = r.valid_to {
                ctx.insert(
                    "kms:ValidTo",
                    [crate::kms::model::epoch_seconds::to_f64(t).to_string()],
                );
            }
        }
        _ => {}
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}
