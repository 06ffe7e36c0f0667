//! Evaluation: one [`Request`] against one policy ([`PolicyDocument::evaluate`] →
//! [`PolicyEffect`]), the KMS decision over the key policy, the caller's identity policies
//! and grants ([`authorize`] → [`Decision`]), and the key policy lockout safety check
//! ([`check_lockout`]).

use super::arn::{Caller, CallerKind, PrincipalMatch};
use super::condition::{ConditionContext, Pattern};
use super::document::{Effect, Matcher, PolicyDocument, Statement};
use super::wildcard;
use super::{PolicyError, LOCKOUT};

/// One request to authorize: who, which action, on which resource, in which context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    action: String,
    resource: String,
    caller: Caller,
    context: ConditionContext,
}

impl Request {
    /// A request by `caller` for `action` (`kms:Encrypt`) on `resource` (the key's ARN),
    /// with the caller's global condition keys already set: `aws:PrincipalArn` (for a role
    /// session, the role's ARN), `aws:PrincipalAccount`, `aws:PrincipalType`,
    /// `kms:CallerAccount`, and `aws:username` / `aws:userid` when the caller has them (the
    /// root user's `aws:userid` is its account).
    /// Add the request's own keys (encryption context, `kms:ViaService`, `aws:SourceIp`,
    /// `aws:CurrentTime`, `aws:SecureTransport`, …) with [`Request::with`].
    pub fn new(action: &str, resource: &str, caller: Caller) -> Request {
        let mut context = ConditionContext::new();
        context.insert("aws:PrincipalArn", [caller.principal_arn()]);
        context.insert("aws:PrincipalAccount", [caller.account_id()]);
        context.insert("kms:CallerAccount", [caller.account_id()]);
        let kind = match caller.kind() {
            CallerKind::Root => "Account",
            CallerKind::User { .. } => "User",
            CallerKind::AssumedRole { .. } => "AssumedRole",
        };
        context.insert("aws:PrincipalType", [kind]);
        if let Some(name) = caller.username() {
            context.insert("aws:username", [name]);
        }
        // The root user's id is its account.
        let userid = match caller.kind() {
            CallerKind::Root => caller.userid().or(Some(caller.account_id())),
            _ => caller.userid(),
        };
        if let Some(id) = userid {
            context.insert("aws:userid", [id]);
        }
        Request {
            action: action.to_string(),
            resource: resource.to_string(),
            caller,
            context,
        }
    }

    /// The request with condition key `key` set to `values`.
    pub fn with<I, S>(mut self, key: &str, values: I) -> Request
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.context.insert(key, values);
        self
    }

    /// The action.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The resource ARN.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The condition context.
    pub fn context(&self) -> &ConditionContext {
        &self.context
    }

    /// The condition context, to add keys.
    pub fn context_mut(&mut self) -> &mut ConditionContext {
        &mut self.context
    }
}

/// What one policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyEffect {
    /// A `Deny` statement applies: the request is refused whatever else allows it.
    ExplicitDeny,
    /// An `Allow` statement names the caller itself: its ARN, `*`, its role (for a role
    /// session), the root user's account; or any statement of an identity policy.
    AllowDirect,
    /// An `Allow` statement names only the caller's account (`111122223333` or its `:root`
    /// ARN): the account's IAM policies decide.
    AllowAccount,
    /// No statement applies.
    NotApplicable,
}

/// Which policy allowed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedBy {
    /// The key policy, naming the caller directly.
    KeyPolicy,
    /// An identity policy of the caller, the key policy delegating to the caller's account
    /// (or no key involved).
    IdentityPolicy,
    /// A grant.
    Grant,
}

/// The decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allowed(AllowedBy),
    /// Refused by a `Deny` statement.
    ExplicitDeny,
    /// Refused because nothing allows it.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

fn actions_match(m: &Matcher<String>, action: &str) -> bool {
    m.items.iter().any(|p| wildcard::matches(p, action, true)) != m.not
}

fn resources_match(m: Option<&Matcher<Pattern>>, resource: &str, ctx: &ConditionContext) -> bool {
    m.is_none_or(|m| m.items.iter().any(|p| p.matches_arn(resource, ctx)) != m.not)
}

impl Statement {
    /// How the statement applies to the request, if it does.
    fn applies(&self, req: &Request) -> Option<PrincipalMatch> {
        let principal = match &self.principal {
            None => Some(PrincipalMatch::Direct),
            Some(m) if m.not => {
                (!req.caller.excluded_by(&m.items)).then_some(PrincipalMatch::Direct)
            }
            Some(m) => m
                .items
                .iter()
                .filter_map(|p| req.caller.matched_by(p))
                .max(),
        }?;
        (actions_match(&self.action, &req.action)
            && resources_match(self.resource.as_ref(), &req.resource, &req.context)
            && self.condition.holds(&req.context))
        .then_some(principal)
    }
}

impl PolicyDocument {
    /// What this policy says about `req`: a `Deny` that applies wins over any `Allow`, an
    /// `Allow` naming the caller over one naming its account.
    pub fn evaluate(&self, req: &Request) -> PolicyEffect {
        let mut best: Option<PrincipalMatch> = None;
        for s in &self.statements {
            match (s.effect, s.applies(req)) {
                (Effect::Deny, Some(_)) => return PolicyEffect::ExplicitDeny,
                (Effect::Allow, Some(m)) => best = best.max(Some(m)),
                (_, None) => {}
            }
        }
        match best {
            Some(PrincipalMatch::Direct) => PolicyEffect::AllowDirect,
            Some(PrincipalMatch::Account) => PolicyEffect::AllowAccount,
            None => PolicyEffect::NotApplicable,
        }
    }
}

/// The AWS KMS decision on `req`: an explicit deny in the key policy or any identity policy
/// wins; else allowed when the key policy allows the caller directly, or when it allows
/// the caller's account and an identity policy of the caller allows the request (the root
/// user needs none: IAM allows it everything), or when `allowed_by_grant`; else an
/// implicit deny. `key_policy` is `None` for actions on no key (`kms:CreateKey`,
/// `kms:ListKeys`…): IAM alone decides.
pub fn authorize<'a, I>(
    req: &Request,
    key_policy: Option<&PolicyDocument>,
    identity_policies: I,
    allowed_by_grant: bool,
) -> Decision
where
    I: IntoIterator<Item = &'a PolicyDocument>,
{
    let key = key_policy.map(|p| p.evaluate(req));
    let mut identity_allows = req.caller.kind() == &CallerKind::Root;
    for p in identity_policies {
        match p.evaluate(req) {
            PolicyEffect::ExplicitDeny => return Decision::ExplicitDeny,
            PolicyEffect::AllowDirect | PolicyEffect::AllowAccount => identity_allows = true,
            PolicyEffect::NotApplicable => {}
        }
    }
    match key {
        Some(PolicyEffect::ExplicitDeny) => Decision::ExplicitDeny,
        Some(PolicyEffect::AllowDirect) => Decision::Allowed(AllowedBy::KeyPolicy),
        Some(PolicyEffect::AllowAccount) | None if identity_allows => {
            Decision::Allowed(AllowedBy::IdentityPolicy)
        }
        _ if allowed_by_grant => Decision::Allowed(AllowedBy::Grant),
        _ => Decision::ImplicitDeny,
    }
}

/// The key policy lockout safety check of `CreateKey` and `PutKeyPolicy` (unless
/// `BypassPolicyLockoutSafetyCheck`): the new `policy` must allow the principal making
/// `req` to call `kms:PutKeyPolicy` on the key (`req`'s resource) later, naming it
/// directly or through its account; else AWS's [`LOCKOUT`] message. `req`'s action is
/// replaced; its condition context is used as is.
pub fn check_lockout(policy: &PolicyDocument, req: &Request) -> Result<(), PolicyError> {
    let mut put = req.clone();
    put.action = "kms:PutKeyPolicy".to_string();
    match policy.evaluate(&put) {
        PolicyEffect::AllowDirect | PolicyEffect::AllowAccount => Ok(()),
        PolicyEffect::ExplicitDeny | PolicyEffect::NotApplicable => {
            Err(PolicyError::Malformed(LOCKOUT.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::super::{default_key_policy, PolicyKind};
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value as Json};

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
    const BOB: &str = "arn:aws:iam::111122223333:user/bob";
    const ROOT: &str = "arn:aws:iam::111122223333:root";
    const ROLE: &str = "arn:aws:iam::111122223333:role/admin";
    const SESSION: &str = "arn:aws:sts::111122223333:assumed-role/admin/s1";
    const OTHER_USER: &str = "arn:aws:iam::444455556666:user/carol";

    fn kp(statements: Json) -> PolicyDocument {
        PolicyDocument::parse(
            &json!({"Version": "2012-10-17", "Statement": statements}).to_string(),
            PolicyKind::Key,
        )
        .unwrap()
    }

    fn ip(statements: Json) -> PolicyDocument {
        PolicyDocument::parse(
            &json!({"Version": "2012-10-17", "Statement": statements}).to_string(),
            PolicyKind::Identity,
        )
        .unwrap()
    }

    fn allow(principal: Json, action: Json) -> Json {
        json!({"Effect": "Allow", "Principal": principal, "Action": action, "Resource": "*"})
    }

    fn req(caller: &str, action: &str) -> Request {
        Request::new(action, KEY, Caller::from_arn(caller).unwrap())
    }

    fn eff(p: &PolicyDocument, caller: &str, action: &str) -> PolicyEffect {
        p.evaluate(&req(caller, action))
    }

    #[test]
    fn actions_match_case_insensitively_with_wildcards() {
        for (pattern, action, want) in [
            ("kms:*", "kms:Encrypt", true),
            ("*", "kms:Encrypt", true),
            ("kms:Encrypt*", "kms:Encrypt", true),
            ("kms:encrypt", "kms:Encrypt", true),
            ("KMS:ENCRYPT", "kms:Encrypt", true),
            ("kms:Generate*", "kms:GenerateDataKeyPair", true),
            ("kms:Get*", "kms:GenerateDataKey", false),
            ("kms:?ecrypt", "kms:Decrypt", true),
            ("s3:*", "kms:Encrypt", false),
        ] {
            let p = kp(json!([allow(json!({"AWS": ALICE}), json!(pattern))]));
            let got = eff(&p, ALICE, action) == PolicyEffect::AllowDirect;
            assert_eq!(got, want, "{pattern} vs {action}");
        }
    }

    #[test]
    fn not_action() {
        let p = kp(
            json!([{"Effect": "Allow", "Principal": {"AWS": ALICE}, "NotAction": ["kms:Put*", "kms:ScheduleKeyDeletion"], "Resource": "*"}]),
        );
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(
            eff(&p, ALICE, "kms:PutKeyPolicy"),
            PolicyEffect::NotApplicable
        );
        assert_eq!(
            eff(&p, ALICE, "kms:ScheduleKeyDeletion"),
            PolicyEffect::NotApplicable
        );
    }

    #[test]
    fn resources_and_not_resource() {
        let id = |r: Json, not: bool| {
            let k = if not { "NotResource" } else { "Resource" };
            ip(json!([{"Effect": "Allow", "Action": "kms:*", k: r}]))
        };
        let allowed =
            |p: &PolicyDocument| eff(p, ALICE, "kms:Encrypt") == PolicyEffect::AllowDirect;
        assert!(allowed(&id(json!("*"), false)));
        assert!(allowed(&id(
            json!("arn:aws:kms:*:111122223333:key/*"),
            false
        )));
        assert!(allowed(&id(json!(KEY), false)));
        assert!(!allowed(&id(
            json!("arn:aws:kms:*:111122223333:alias/*"),
            false
        )));
        assert!(!allowed(&id(
            json!("arn:aws:kms:*:444455556666:key/*"),
            false
        )));
        assert!(!allowed(&id(
            json!("arn:aws:kms:us-east-1:111122223333:key/1234ABCD*"),
            false
        )));
        assert!(!allowed(&id(
            json!("arn:aws:kms:*:111122223333:key/*"),
            true
        )));
        assert!(allowed(&id(
            json!("arn:aws:kms:*:111122223333:alias/*"),
            true
        )));
        // A resource with a policy variable.
        let v = id(json!("arn:aws:kms:*:${aws:PrincipalAccount}:key/*"), false);
        assert!(allowed(&v));
        assert_eq!(
            eff(&v, OTHER_USER, "kms:Encrypt"),
            PolicyEffect::NotApplicable
        );
    }

    #[test]
    fn principal_kinds() {
        let p = |pr: Json| kp(json!([allow(pr, json!("kms:*"))]));
        // Everyone.
        for pr in [json!("*"), json!({"AWS": "*"})] {
            for c in [ALICE, ROOT, SESSION, OTHER_USER] {
                assert_eq!(
                    eff(&p(pr.clone()), c, "kms:Encrypt"),
                    PolicyEffect::AllowDirect,
                    "{pr} {c}"
                );
            }
        }
        // The account: delegation, except for its root user.
        for pr in [json!({"AWS": "111122223333"}), json!({"AWS": ROOT})] {
            let pol = p(pr);
            assert_eq!(eff(&pol, ALICE, "kms:Encrypt"), PolicyEffect::AllowAccount);
            assert_eq!(
                eff(&pol, SESSION, "kms:Encrypt"),
                PolicyEffect::AllowAccount
            );
            assert_eq!(eff(&pol, ROOT, "kms:Encrypt"), PolicyEffect::AllowDirect);
            assert_eq!(
                eff(&pol, OTHER_USER, "kms:Encrypt"),
                PolicyEffect::NotApplicable
            );
        }
        // A user.
        let u = p(json!({"AWS": ALICE}));
        assert_eq!(eff(&u, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(eff(&u, BOB, "kms:Encrypt"), PolicyEffect::NotApplicable);
        assert_eq!(eff(&u, ROOT, "kms:Encrypt"), PolicyEffect::NotApplicable);
        // A role: its sessions; a session: itself.
        let r = p(json!({"AWS": ROLE}));
        assert_eq!(eff(&r, SESSION, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(
            eff(
                &r,
                "arn:aws:sts::111122223333:assumed-role/admin/other",
                "kms:Encrypt"
            ),
            PolicyEffect::AllowDirect
        );
        assert_eq!(
            eff(
                &r,
                "arn:aws:sts::111122223333:assumed-role/reader/s1",
                "kms:Encrypt"
            ),
            PolicyEffect::NotApplicable
        );
        let s = p(json!({"AWS": SESSION}));
        assert_eq!(eff(&s, SESSION, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(
            eff(
                &s,
                "arn:aws:sts::111122223333:assumed-role/admin/s2",
                "kms:Encrypt"
            ),
            PolicyEffect::NotApplicable
        );
        // A role with a path matches sessions whose role ARN carries it.
        let pathed = p(json!({"AWS": "arn:aws:iam::111122223333:role/team/admin"}));
        let c = Caller::assumed_role("arn:aws:iam::111122223333:role/team/admin", "s1").unwrap();
        assert_eq!(
            pathed.evaluate(&Request::new("kms:Encrypt", KEY, c)),
            PolicyEffect::AllowDirect
        );
        // Service and Federated principals never name a caller.
        let svc = p(json!({"Service": "ec2.amazonaws.com", "Federated": "x"}));
        assert_eq!(eff(&svc, ROOT, "kms:Encrypt"), PolicyEffect::NotApplicable);
        // Direct beats account in the same policy.
        let both = kp(json!([
            allow(json!({"AWS": ROOT}), json!("kms:*")),
            allow(json!({"AWS": ALICE}), json!("kms:Encrypt"))
        ]));
        assert_eq!(eff(&both, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(eff(&both, ALICE, "kms:Decrypt"), PolicyEffect::AllowAccount);
    }

    #[test]
    fn not_principal() {
        let deny_all_but = |listed: Json| {
            kp(json!([
                allow(json!("*"), json!("kms:*")),
                {"Effect": "Deny", "NotPrincipal": {"AWS": listed}, "Action": "kms:*", "Resource": "*"},
            ]))
        };
        // A user is exempt only with its account listed too.
        let p = deny_all_but(json!([ALICE, "111122223333"]));
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(eff(&p, BOB, "kms:Encrypt"), PolicyEffect::ExplicitDeny);
        assert_eq!(eff(&p, ROOT, "kms:Encrypt"), PolicyEffect::AllowDirect);
        let p = deny_all_but(json!([ALICE]));
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::ExplicitDeny);
        // A session needs its role, its session and its account.
        let p = deny_all_but(json!([ROLE, SESSION, ROOT]));
        assert_eq!(eff(&p, SESSION, "kms:Encrypt"), PolicyEffect::AllowDirect);
        let p = deny_all_but(json!([ROLE, ROOT]));
        assert_eq!(eff(&p, SESSION, "kms:Encrypt"), PolicyEffect::ExplicitDeny);
        // Allow with NotPrincipal: everyone else, directly.
        let p = kp(
            json!([{"Effect": "Allow", "NotPrincipal": {"AWS": [BOB, ROOT]}, "Action": "kms:*", "Resource": "*"}]),
        );
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        assert_eq!(eff(&p, BOB, "kms:Encrypt"), PolicyEffect::NotApplicable);
        assert_eq!(
            eff(&p, OTHER_USER, "kms:Encrypt"),
            PolicyEffect::AllowDirect
        );
        let p = kp(
            json!([{"Effect": "Allow", "NotPrincipal": "*", "Action": "kms:*", "Resource": "*"}]),
        );
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::NotApplicable);
    }

    #[test]
    fn explicit_deny_wins() {
        let p = kp(json!([
            allow(json!({"AWS": ALICE}), json!("kms:*")),
            {"Effect": "Deny", "Principal": {"AWS": ROOT}, "Action": "kms:Decrypt", "Resource": "*"},
        ]));
        assert_eq!(eff(&p, ALICE, "kms:Encrypt"), PolicyEffect::AllowDirect);
        // A deny naming the account denies everyone in it.
        assert_eq!(eff(&p, ALICE, "kms:Decrypt"), PolicyEffect::ExplicitDeny);
        let r = req(ALICE, "kms:Decrypt");
        assert_eq!(authorize(&r, Some(&p), [], true), Decision::ExplicitDeny);
        // A deny in an identity policy wins over the key policy's direct allow.
        let p = kp(json!([allow(json!({"AWS": ALICE}), json!("kms:*"))]));
        let deny = ip(json!([{"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"}]));
        assert_eq!(
            authorize(&req(ALICE, "kms:Encrypt"), Some(&p), [&deny], false),
            Decision::ExplicitDeny
        );
        assert_eq!(
            authorize(&req(ALICE, "kms:Decrypt"), Some(&p), [&deny], false),
            Decision::Allowed(AllowedBy::KeyPolicy)
        );
    }

    #[test]
    fn account_delegation_needs_an_identity_policy() {
        let default =
            PolicyDocument::parse(&default_key_policy("111122223333"), PolicyKind::Key).unwrap();
        let enc = ip(
            json!([{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "arn:aws:kms:*:111122223333:key/*"}]),
        );
        let r = req(ALICE, "kms:Encrypt");
        assert_eq!(
            authorize(&r, Some(&default), [], false),
            Decision::ImplicitDeny
        );
        assert_eq!(
            authorize(&r, Some(&default), [&enc], false),
            Decision::Allowed(AllowedBy::IdentityPolicy)
        );
        assert_eq!(
            authorize(
                &req(ALICE, "kms:PutKeyPolicy"),
                Some(&default),
                [&enc],
                false
            ),
            Decision::ImplicitDeny
        );
        // The root user needs no identity policy.
        assert_eq!(
            authorize(&req(ROOT, "kms:PutKeyPolicy"), Some(&default), [], false),
            Decision::Allowed(AllowedBy::KeyPolicy)
        );
        // Without the account in the key policy, IAM policies grant nothing.
        let only_bob = kp(json!([allow(json!({"AWS": BOB}), json!("kms:*"))]));
        assert_eq!(
            authorize(&r, Some(&only_bob), [&enc], false),
            Decision::ImplicitDeny
        );
        assert_eq!(
            authorize(&r, Some(&only_bob), [&enc], true),
            Decision::Allowed(AllowedBy::Grant)
        );
        // Cross-account: the key policy names the other account, whose IAM policy allows.
        let cross = kp(json!([allow(
            json!({"AWS": "444455556666"}),
            json!("kms:Encrypt")
        )]));
        let other = Request::new("kms:Encrypt", KEY, Caller::from_arn(OTHER_USER).unwrap());
        assert_eq!(cross.evaluate(&other), PolicyEffect::AllowAccount);
        assert_eq!(
            authorize(&other, Some(&cross), [&enc], false),
            Decision::Allowed(AllowedBy::IdentityPolicy)
        );
        assert_eq!(
            authorize(&other, Some(&cross), [], false),
            Decision::ImplicitDeny
        );
        // No key: IAM alone.
        let create = req(ALICE, "kms:CreateKey");
        let creator = ip(json!([{"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"}]));
        assert_eq!(
            authorize(&create, None, [&creator], false),
            Decision::Allowed(AllowedBy::IdentityPolicy)
        );
        assert_eq!(authorize(&create, None, [], false), Decision::ImplicitDeny);
        assert_eq!(
            authorize(&req(ROOT, "kms:CreateKey"), None, [], false),
            Decision::Allowed(AllowedBy::IdentityPolicy)
        );
        assert!(Decision::Allowed(AllowedBy::Grant).is_allowed());
        assert!(!Decision::ImplicitDeny.is_allowed());
    }

    #[test]
    fn conditions_use_the_request_context() {
        let p = kp(json!([{
            "Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:EncryptionContext:Department": "IT"},
                "Bool": {"aws:SecureTransport": "true"},
            },
        }]));
        let base = req(ALICE, "kms:Decrypt");
        assert_eq!(p.evaluate(&base), PolicyEffect::NotApplicable);
        let ok = base
            .clone()
            .with("kms:EncryptionContext:department", ["IT"])
            .with("aws:SecureTransport", ["true"]);
        assert_eq!(p.evaluate(&ok), PolicyEffect::AllowDirect);
        let mut wrong = ok.clone();
        wrong
            .context_mut()
            .insert("kms:EncryptionContext:Department", ["HR"]);
        assert_eq!(p.evaluate(&wrong), PolicyEffect::NotApplicable);
        // The caller's own keys are set by Request::new.
        let mine = kp(json!([{
            "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": "111122223333", "aws:username": "alice", "aws:PrincipalType": "User"}},
        }]));
        assert_eq!(
            mine.evaluate(&req(ALICE, "kms:Encrypt")),
            PolicyEffect::AllowDirect
        );
        assert_eq!(
            mine.evaluate(&req(BOB, "kms:Encrypt")),
            PolicyEffect::NotApplicable
        );
        let role = kp(json!([{
            "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
            "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/adm*"}, "StringLike": {"aws:userid": "AROA*:s1"}},
        }]));
        let c = Caller::from_arn(SESSION)
            .unwrap()
            .with_userid("AROAEXAMPLE:s1");
        assert_eq!(
            role.evaluate(&Request::new("kms:Encrypt", KEY, c)),
            PolicyEffect::AllowDirect
        );
        let r = req(ALICE, "kms:Encrypt");
        assert_eq!(r.action(), "kms:Encrypt");
        assert_eq!(r.resource(), KEY);
        assert_eq!(r.caller().arn(), ALICE);
        assert_eq!(r.context().get("aws:userid"), None);
        let root = req(ROOT, "kms:Encrypt");
        assert_eq!(root.context().get("aws:userid").unwrap(), ["111122223333"]);
        assert_eq!(
            root.context().get("aws:PrincipalType").unwrap(),
            ["Account"]
        );
    }

    #[test]
    fn aws_managed_key_policy_allows_through_the_service_only() {
        let text = super::super::aws_managed_key_policy("111122223333", "ebs", "us-east-1");
        let p = PolicyDocument::parse(&text, PolicyKind::Key).unwrap();
        let direct = req(ALICE, "kms:Decrypt");
        assert_eq!(p.evaluate(&direct), PolicyEffect::NotApplicable);
        let via = direct
            .clone()
            .with("kms:ViaService", ["ec2.us-east-1.amazonaws.com"]);
        assert_eq!(p.evaluate(&via), PolicyEffect::AllowDirect);
        let other_region = direct.with("kms:ViaService", ["ec2.eu-west-1.amazonaws.com"]);
        assert_eq!(p.evaluate(&other_region), PolicyEffect::NotApplicable);
        assert_eq!(
            eff(&p, ALICE, "kms:DescribeKey"),
            PolicyEffect::AllowAccount
        );
        assert_eq!(
            eff(&p, ALICE, "kms:RevokeGrant"),
            PolicyEffect::AllowAccount
        );
        assert_eq!(
            eff(&p, ROOT, "kms:PutKeyPolicy"),
            PolicyEffect::NotApplicable
        );
        let other = Request::new("kms:Decrypt", KEY, Caller::from_arn(OTHER_USER).unwrap())
            .with("kms:ViaService", ["ec2.us-east-1.amazonaws.com"]);
        assert_eq!(p.evaluate(&other), PolicyEffect::NotApplicable);
    }

    #[test]
    fn lockout_check() {
        let default =
            PolicyDocument::parse(&default_key_policy("111122223333"), PolicyKind::Key).unwrap();
        assert_eq!(
            check_lockout(&default, &req(ALICE, "kms:CreateKey")),
            Ok(())
        );
        assert_eq!(check_lockout(&default, &req(ROOT, "kms:CreateKey")), Ok(()));
        let lock = Err(PolicyError::Malformed(LOCKOUT.to_string()));
        assert_eq!(
            check_lockout(&default, &req(OTHER_USER, "kms:CreateKey")),
            lock
        );
        let users_only = kp(json!([allow(
            json!({"AWS": ALICE}),
            json!(["kms:Encrypt", "kms:Decrypt"])
        )]));
        assert_eq!(
            check_lockout(&users_only, &req(ALICE, "kms:PutKeyPolicy")),
            lock
        );
        let admins = kp(json!([allow(json!({"AWS": ROLE}), json!("kms:Put*"))]));
        assert_eq!(
            check_lockout(&admins, &req(SESSION, "kms:CreateKey")),
            Ok(())
        );
        assert_eq!(check_lockout(&admins, &req(ALICE, "kms:CreateKey")), lock);
        let denied = kp(json!([
            allow(json!({"AWS": ROOT}), json!("kms:*")),
            {"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*"},
        ]));
        assert_eq!(check_lockout(&denied, &req(ROOT, "kms:CreateKey")), lock);
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let words = proptest::sample::select(vec![
            "Version",
            "2012-10-17",
            "Statement",
            "Effect",
            "Allow",
            "Deny",
            "Principal",
            "NotPrincipal",
            "AWS",
            "*",
            "Action",
            "NotAction",
            "kms:*",
            "kms:Encrypt",
            "Resource",
            "NotResource",
            "Condition",
            "StringLike",
            "ForAnyValue:StringEquals",
            "NumericLessThanIfExists",
            "Null",
            "aws:username",
            "${aws:username}",
            "111122223333",
            ALICE,
            ROOT,
            SESSION,
            ROLE,
            KEY,
            "arn:aws:kms:*:*:*",
            "IpAddress",
            "10.0.0.0/8",
            "Sid",
            "Id",
        ]);
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            words.clone().prop_map(|s| Json::String(s.to_string())),
            "\\PC{0,10}".prop_map(Json::String),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
                proptest::collection::btree_map(
                    words.clone().prop_map(str::to_string),
                    inner,
                    0..6
                )
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_caller() -> impl Strategy<Value = Caller> {
        proptest::sample::select(vec![ALICE, BOB, ROOT, SESSION, OTHER_USER])
            .prop_map(|a| Caller::from_arn(a).unwrap())
    }

    proptest! {
        #[test]
        fn arbitrary_policies_parse_and_evaluate_without_panicking(
            doc in arb_json(),
            caller in arb_caller(),
            action in "(kms:)?\\PC{0,12}",
            values in proptest::collection::vec("\\PC{0,12}", 0..3),
        ) {
            let text = doc.to_string();
            let req = Request::new(&action, KEY, caller)
                .with("aws:username", values.clone())
                .with("kms:EncryptionContextKeys", values);
            for kind in [PolicyKind::Key, PolicyKind::Identity, PolicyKind::Trust] {
                if let Ok(p) = PolicyDocument::parse(&text, kind) {
                    let _ = p.evaluate(&req);
                    let _ = authorize(&req, Some(&p), [&p], false);
                    let _ = check_lockout(&p, &req);
                }
            }
        }

        #[test]
        fn statements_wrapped_in_a_policy_evaluate(stmt in arb_json(), caller in arb_caller()) {
            let text = json!({"Version": "2012-10-17", "Statement": [stmt]}).to_string();
            if let Ok(p) = PolicyDocument::parse(&text, PolicyKind::Key) {
                let _ = p.evaluate(&Request::new("kms:Encrypt", KEY, caller));
            }
        }
    }
}
