//! The policy grammar: [`PolicyDocument::parse`] turns the JSON text of a key policy, an
//! identity policy or a role trust policy into typed statements, or refuses it with AWS's
//! message (`MalformedPolicyDocumentException`). The original text is kept verbatim, as
//! `GetKeyPolicy` returns what was stored.
//!
//! Choices where AWS is silent or varies: a key policy's `Resource` may be any ARN pattern
//! (AWS only documents `"*"`); duplicate `Sid`s are refused in identity and trust policies
//! (IAM) but not in key policies (KMS accepts them); a trust policy's `Resource` is
//! optional. Principals are checked for form only: whether a named user or role exists is
//! for the caller to check ([`PolicyDocument::named_principals`]).

use std::collections::BTreeSet;

use serde_json::{Map, Value as Json};

use super::arn::AwsPrincipal;
use super::condition::{Condition, Pattern};
use super::{
    PolicyError, IDENTITY_POLICY_MAX_CHARS, INVALID_PRINCIPALS, KEY_POLICY_MAX_BYTES,
    TRUST_POLICY_MAX_CHARS,
};

/// Which kind of policy a document is; it decides the size limit and which elements a
/// statement must, may or must not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// A KMS key policy: `Principal` and `Resource` required.
    Key,
    /// An IAM identity policy (user or role): `Principal` forbidden, `Resource` required.
    Identity,
    /// A role's trust policy (`AssumeRolePolicyDocument`): `Principal` required, `Resource`
    /// optional.
    Trust,
}

impl PolicyKind {
    fn name(self) -> &'static str {
        match self {
            PolicyKind::Key => "key policy",
            PolicyKind::Identity => "identity policy",
            PolicyKind::Trust => "trust policy",
        }
    }
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Allow,
    Deny,
}

/// A list that is either the named values (`Action`) or everything but them (`NotAction`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Matcher<T> {
    pub(super) not: bool,
    pub(super) items: Vec<T>,
}

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Statement {
    pub(super) sid: Option<String>,
    pub(super) effect: Effect,
    /// `Principal`/`NotPrincipal` (`None` in identity policies). `Service` and `Federated`
    /// principals are not kept: they never name a caller of this service.
    pub(super) principal: Option<Matcher<AwsPrincipal>>,
    pub(super) action: Matcher<String>,
    /// `Resource`/`NotResource` (`None`: absent, which a trust policy allows).
    pub(super) resource: Option<Matcher<Pattern>>,
    pub(super) condition: Condition,
}

/// A parsed policy: its verbatim text and its statements.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    text: String,
    kind: PolicyKind,
    id: Option<String>,
    pub(super) statements: Vec<Statement>,
}

fn malformed(msg: impl Into<String>) -> PolicyError {
    PolicyError::Malformed(msg.into())
}

const TOP_LEVEL: &[&str] = &["Version", "Id", "Statement"];
const STATEMENT: &[&str] = &[
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];

impl PolicyDocument {
    /// Parse and validate `text` as a policy of `kind`.
    pub fn parse(text: &str, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
        let (len, limit) = match kind {
            PolicyKind::Key => (text.len(), KEY_POLICY_MAX_BYTES),
            PolicyKind::Identity => (text.chars().count(), IDENTITY_POLICY_MAX_CHARS),
            PolicyKind::Trust => (text.chars().count(), TRUST_POLICY_MAX_CHARS),
        };
        if len > limit {
            return Err(PolicyError::TooLarge {
                len,
                limit,
                kind: kind.name(),
            });
        }
        let json: Json = serde_json::from_str(text)
            .map_err(|_| malformed("The policy document is not valid JSON."))?;
        let Json::Object(top) = json else {
            return Err(malformed("The policy document must be a JSON object."));
        };
        if let Some(k) = top.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
            return Err(malformed(format!(
                "Policy document contains an unknown element: {k}."
            )));
        }
        let variables = match top.get("Version") {
            None => false,
            Some(Json::String(v)) if v == "2012-10-17" => true,
            Some(Json::String(v)) if v == "2008-10-17" => false,
            Some(v) => {
                return Err(malformed(format!(
                    "Policy document has an invalid Version: {v}."
                )))
            }
        };
        let id = match top.get("Id") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed("The policy Id must be a string.")),
        };
        let raw: Vec<&Json> = match top.get("Statement") {
            None => return Err(malformed("Missing required field Statement.")),
            Some(Json::Array(items)) => items.iter().collect(),
            Some(one @ Json::Object(_)) => vec![one],
            Some(_) => {
                return Err(malformed(
                    "Statement must be an object or an array of objects.",
                ))
            }
        };
        let statements = raw
            .into_iter()
            .map(|s| match s {
                Json::Object(m) => Statement::parse(m, kind, variables),
                _ => Err(malformed(
                    "Statement must be an object or an array of objects.",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if kind != PolicyKind::Key {
            let mut seen = BTreeSet::new();
            if statements
                .iter()
                .filter_map(|s| s.sid.as_deref())
                .any(|sid| !seen.insert(sid))
            {
                return Err(malformed(
                    "Statement IDs (SID) in a single policy must be unique.",
                ));
            }
        }
        Ok(PolicyDocument {
            text: text.to_string(),
            kind,
            id,
            statements,
        })
    }

    /// The policy exactly as it was written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The kind it was parsed as.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The policy's `Id`, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Whether a `Condition` of the policy tests the condition key `key` (compared
    /// case-insensitively), so that a caller may skip computing a costly key no policy
    /// reads.
    pub fn tests_condition_key(&self, key: &str) -> bool {
        self.statements.iter().any(|s| s.condition.tests_key(key))
    }

    /// The user, role and role-session ARNs the policy names as `AWS` principals (in
    /// `Principal` or `NotPrincipal`), each once: AWS refuses a key policy naming one that
    /// does not exist, with [`INVALID_PRINCIPALS`]; that check needs the identity store.
    pub fn named_principals(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in self
            .statements
            .iter()
            .filter_map(|s| s.principal.as_ref())
            .flat_map(|m| m.items.iter())
        {
            if let AwsPrincipal::User(a) | AwsPrincipal::Role(a) | AwsPrincipal::Session(a) = p {
                if !out.contains(&a.as_str()) {
                    out.push(a);
                }
            }
        }
        out
    }
}

/// A string or a non-empty array of strings (`None` for anything else).
fn strings(v: &Json) -> Option<Vec<&str>> {
    match v {
        Json::String(s) => Some(vec![s.as_str()]),
        Json::Array(items) if !items.is_empty() => items.iter().map(Json::as_str).collect(),
        _ => None,
    }
}

/// One of the pair `name`/`Not<name>`: `Ok(None)` when neither is there.
fn either<'a>(
    m: &'a Map<String, Json>,
    name: &str,
) -> Result<Option<(bool, &'a Json)>, PolicyError> {
    let not = format!("Not{name}");
    match (m.get(name), m.get(&not)) {
        (Some(_), Some(_)) => Err(malformed(format!(
            "Statement can contain only one of {name} and {not}."
        ))),
        (Some(v), None) => Ok(Some((false, v))),
        (None, Some(v)) => Ok(Some((true, v))),
        (None, None) => Ok(None),
    }
}

/// `"*"`, or `service:pattern` with one colon and a wildcard-free service prefix.
fn valid_action(a: &str) -> Result<(), PolicyError> {
    if a == "*" {
        return Ok(());
    }
    let Some((vendor, name)) = a.split_once(':') else {
        return Err(malformed(
            "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.",
        ));
    };
    if name.contains(':') {
        return Err(malformed("Actions/Condition can contain only one colon."));
    }
    let vendor_ok = !vendor.is_empty()
        && vendor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !vendor_ok || name.is_empty() {
        return Err(malformed(format!(
            "Policy contains an invalid action: {a}."
        )));
    }
    Ok(())
}

/// `"*"` or an ARN (`arn:` and five more colon-separated parts).
fn valid_resource(r: &str) -> Result<(), PolicyError> {
    if r == "*" || (r.starts_with("arn:") && r.splitn(6, ':').count() == 6) {
        Ok(())
    } else {
        Err(malformed(format!(
            "Resource {r} must be in ARN format or \"*\"."
        )))
    }
}

/// The `AWS` principals of a `Principal` element (`None`: not a valid principal element).
fn principals(v: &Json) -> Option<Vec<AwsPrincipal>> {
    match v {
        Json::String(s) if s == "*" => Some(vec![AwsPrincipal::Everyone]),
        Json::Object(m) if !m.is_empty() => {
            let mut out = Vec::new();
            for (k, v) in m {
                let list = strings(v)?;
                match k.as_str() {
                    "AWS" => {
                        for s in list {
                            out.push(AwsPrincipal::parse(s)?);
                        }
                    }
                    // Valid principals that are never a caller of this service.
                    "Service" | "Federated" => {
                        if list.iter().any(|s| s.is_empty()) {
                            return None;
                        }
                    }
                    _ => return None,
                }
            }
            Some(out)
        }
        _ => None,
    }
}

impl Statement {
    fn parse(
        m: &Map<String, Json>,
        kind: PolicyKind,
        variables: bool,
    ) -> Result<Statement, PolicyError> {
        if let Some(k) = m.keys().find(|k| !STATEMENT.contains(&k.as_str())) {
            return Err(malformed(format!(
                "Policy statement contains an unknown element: {k}."
            )));
        }
        let sid = match m.get("Sid") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed("The statement Sid must be a string.")),
        };
        let effect = match m.get("Effect") {
            None => return Err(malformed("Missing required field Effect.")),
            Some(Json::String(s)) if s == "Allow" => Effect::Allow,
            Some(Json::String(s)) if s == "Deny" => Effect::Deny,
            Some(v) => return Err(malformed(format!("Invalid effect: {v}."))),
        };
        let principal = match (kind, either(m, "Principal")?) {
            (PolicyKind::Identity, Some(_)) => {
                return Err(malformed("Policy document should not specify a principal."))
            }
            (PolicyKind::Identity, None) => None,
            (PolicyKind::Key, None) => {
                return Err(malformed("Policy contains a statement with no principal."))
            }
            (PolicyKind::Trust, None) => {
                return Err(malformed("Missing required field Principal."))
            }
            (_, Some((not, v))) => Some(Matcher {
                not,
                items: principals(v).ok_or_else(|| malformed(INVALID_PRINCIPALS))?,
            }),
        };
        let action = match either(m, "Action")? {
            None => return Err(malformed("Policy statement must contain actions.")),
            Some((not, v)) => {
                let list = strings(v)
                    .ok_or_else(|| malformed("Policy statement must contain actions."))?;
                for a in &list {
                    valid_action(a)?;
                }
                Matcher {
                    not,
                    items: list.into_iter().map(str::to_string).collect(),
                }
            }
        };
        let resource = match either(m, "Resource")? {
            None if kind == PolicyKind::Trust => None,
            None => return Err(malformed("Policy statement must contain resources.")),
            Some((not, v)) => {
                let list = strings(v)
                    .ok_or_else(|| malformed("Policy statement must contain resources."))?;
                for r in &list {
                    valid_resource(r)?;
                }
                Some(Matcher {
                    not,
                    items: list
                        .into_iter()
                        .map(|r| Pattern::parse(r, variables))
                        .collect(),
                })
            }
        };
        let condition = match m.get("Condition") {
            None => Condition::default(),
            Some(c) => Condition::parse(c, variables)?,
        };
        Ok(Statement {
            sid,
            effect,
            principal,
            action,
            resource,
            condition,
        })
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
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key(v: Json) -> Result<PolicyDocument, PolicyError> {
        PolicyDocument::parse(&v.to_string(), PolicyKind::Key)
    }

    fn msg(r: Result<PolicyDocument, PolicyError>) -> String {
        match r {
            Err(PolicyError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn stmt(extra: Json) -> Json {
        let mut s = json!({
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
            "Action": "kms:*",
            "Resource": "*",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                s.as_object_mut().unwrap().remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        s
    }

    fn with(extra: Json) -> Json {
        json!({"Version": "2012-10-17", "Statement": [stmt(extra)]})
    }

    #[test]
    fn accepts_the_usual_shapes() {
        let text = super::super::default_key_policy("111122223333");
        let d = PolicyDocument::parse(&text, PolicyKind::Key).unwrap();
        assert_eq!(d.text(), text);
        assert_eq!(d.id(), Some("key-default-1"));
        assert_eq!(d.kind(), PolicyKind::Key);
        assert_eq!(d.statements.len(), 1);
        assert!(key(json!({"Statement": stmt(json!({}))})).is_ok());
        assert!(key(json!({"Version": "2008-10-17", "Id": "x", "Statement": []})).is_ok());
        for p in [
            json!("*"),
            json!({"AWS": "*"}),
            json!({"AWS": ["111122223333", "arn:aws:iam::444455556666:root"]}),
            json!({"AWS": "arn:aws:iam::111122223333:user/path/alice"}),
            json!({"AWS": "arn:aws:iam::111122223333:role/admin"}),
            json!({"AWS": "arn:aws:sts::111122223333:assumed-role/admin/s"}),
            json!({"Service": "ec2.amazonaws.com"}),
            json!({"Service": ["a.amazonaws.com", "b.amazonaws.com"], "AWS": "*"}),
            json!({"Federated": "cognito-identity.amazonaws.com"}),
        ] {
            assert!(key(with(json!({ "Principal": p.clone() }))).is_ok(), "{p}");
        }
        assert!(key(with(
            json!({"Principal": null, "NotPrincipal": {"AWS": "111122223333"}})
        ))
        .is_ok());
        assert!(key(with(
            json!({"Action": ["kms:Encrypt", "kms:Decrypt"], "Sid": "anything goes here"})
        ))
        .is_ok());
        assert!(key(with(json!({"Action": null, "NotAction": "kms:Put*"}))).is_ok());
        assert!(key(with(
            json!({"Resource": null, "NotResource": "arn:aws:kms:*:*:key/x"})
        ))
        .is_ok());
        assert!(key(with(
            json!({"Resource": "arn:aws:kms:us-east-1:111122223333:key/*"})
        ))
        .is_ok());
        assert!(key(with(
            json!({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": false}}})
        ))
        .is_ok());
        // KMS accepts repeated Sids.
        assert!(
            key(json!({"Statement": [stmt(json!({"Sid": "a"})), stmt(json!({"Sid": "a"}))]}))
                .is_ok()
        );
    }

    #[test]
    fn refuses_with_aws_messages() {
        let cases: Vec<(Json, &str)> = vec![
            (
                with(json!({"Principal": {"AWS": "arn:aws:iam::111122223333:user/*"}})),
                INVALID_PRINCIPALS,
            ),
            (
                with(json!({"Principal": {"AWS": "alice"}})),
                INVALID_PRINCIPALS,
            ),
            (with(json!({"Principal": {"AWS": []}})), INVALID_PRINCIPALS),
            (
                with(json!({"Principal": {"AWS": ["111122223333", 7]}})),
                INVALID_PRINCIPALS,
            ),
            (
                with(json!({"Principal": {"CanonicalUser": "abc"}})),
                INVALID_PRINCIPALS,
            ),
            (with(json!({"Principal": {}})), INVALID_PRINCIPALS),
            (
                with(json!({"Principal": "111122223333"})),
                INVALID_PRINCIPALS,
            ),
            (with(json!({"Principal": {"aws": "*"}})), INVALID_PRINCIPALS),
            (
                with(json!({"Principal": null})),
                "Policy contains a statement with no principal.",
            ),
            (
                with(json!({"Effect": null})),
                "Missing required field Effect.",
            ),
            (
                with(json!({"Effect": "allow"})),
                "Invalid effect: \"allow\".",
            ),
            (
                with(json!({"Action": null})),
                "Policy statement must contain actions.",
            ),
            (
                with(json!({"Action": []})),
                "Policy statement must contain actions.",
            ),
            (
                with(json!({"Action": "Encrypt"})),
                "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.",
            ),
            (
                with(json!({"Action": "kms:a:b"})),
                "Actions/Condition can contain only one colon.",
            ),
            (
                with(json!({"Action": "km*:Encrypt"})),
                "Policy contains an invalid action: km*:Encrypt.",
            ),
            (
                with(json!({"NotAction": "kms:*"})),
                "Statement can contain only one of Action and NotAction.",
            ),
            (
                with(json!({"NotResource": "*"})),
                "Statement can contain only one of Resource and NotResource.",
            ),
            (
                with(json!({"NotPrincipal": "*"})),
                "Statement can contain only one of Principal and NotPrincipal.",
            ),
            (
                with(json!({"Resource": null})),
                "Policy statement must contain resources.",
            ),
            (
                with(json!({"Resource": "key/x"})),
                "Resource key/x must be in ARN format or \"*\".",
            ),
            (
                with(json!({"Sid": 3})),
                "The statement Sid must be a string.",
            ),
            (
                with(json!({"Extra": 1})),
                "Policy statement contains an unknown element: Extra.",
            ),
            (
                with(json!({"Condition": {"StringEqualz": {"k": "v"}}})),
                "Policy contains an unknown condition operator: StringEqualz.",
            ),
            (
                json!({"Statement": [], "Other": 1}),
                "Policy document contains an unknown element: Other.",
            ),
            (
                json!({"Version": "2012-10-18", "Statement": []}),
                "Policy document has an invalid Version: \"2012-10-18\".",
            ),
            (
                json!({"Version": 2012, "Statement": []}),
                "Policy document has an invalid Version: 2012.",
            ),
            (
                json!({"Id": 1, "Statement": []}),
                "The policy Id must be a string.",
            ),
            (
                json!({"Version": "2012-10-17"}),
                "Missing required field Statement.",
            ),
            (
                json!({"Statement": "x"}),
                "Statement must be an object or an array of objects.",
            ),
            (
                json!({"Statement": ["x"]}),
                "Statement must be an object or an array of objects.",
            ),
            (json!([]), "The policy document must be a JSON object."),
            (json!("text"), "The policy document must be a JSON object."),
        ];
        for (doc, want) in cases {
            assert_eq!(msg(key(doc.clone())), want, "{doc}");
        }
        for text in ["", "   ", "{", "{\"Statement\": [}", "not json", "{}{}"] {
            assert_eq!(
                msg(PolicyDocument::parse(text, PolicyKind::Key)),
                "The policy document is not valid JSON.",
                "{text:?}"
            );
        }
    }

    #[test]
    fn kinds_differ_on_principal_resource_and_sids() {
        let identity = |v: Json| PolicyDocument::parse(&v.to_string(), PolicyKind::Identity);
        let trust = |v: Json| PolicyDocument::parse(&v.to_string(), PolicyKind::Trust);
        let id_stmt = json!({"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"});
        assert!(identity(json!({"Statement": id_stmt.clone()})).is_ok());
        assert_eq!(
            msg(identity(json!({"Statement": stmt(json!({}))}))),
            "Policy document should not specify a principal."
        );
        assert_eq!(
            msg(identity(
                json!({"Statement": {"Effect": "Allow", "Action": "kms:Encrypt"}})
            )),
            "Policy statement must contain resources."
        );
        assert_eq!(
            msg(identity(json!({"Statement": [
                {"Sid": "a", "Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"},
                {"Sid": "a", "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"},
            ]}))),
            "Statement IDs (SID) in a single policy must be unique."
        );
        let t = json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "sts:AssumeRole"});
        assert!(trust(json!({"Version": "2012-10-17", "Statement": [t]})).is_ok());
        assert_eq!(
            msg(trust(
                json!({"Statement": {"Effect": "Allow", "Action": "sts:AssumeRole"}})
            )),
            "Missing required field Principal."
        );
    }

    #[test]
    fn size_limits() {
        let pad = |n: usize| {
            let base = json!({"Statement": [], "Id": ""}).to_string();
            let id = "x".repeat(n - base.len());
            json!({"Statement": [], "Id": id}).to_string()
        };
        assert!(PolicyDocument::parse(&pad(KEY_POLICY_MAX_BYTES), PolicyKind::Key).is_ok());
        assert!(matches!(
            PolicyDocument::parse(&pad(KEY_POLICY_MAX_BYTES + 1), PolicyKind::Key),
            Err(PolicyError::TooLarge {
                len: 32769,
                limit: 32768,
                ..
            })
        ));
        assert!(
            PolicyDocument::parse(&pad(IDENTITY_POLICY_MAX_CHARS), PolicyKind::Identity).is_ok()
        );
        assert!(
            PolicyDocument::parse(&pad(IDENTITY_POLICY_MAX_CHARS + 1), PolicyKind::Identity)
                .is_err()
        );
        assert!(
            PolicyDocument::parse(&pad(TRUST_POLICY_MAX_CHARS + 1), PolicyKind::Trust).is_err()
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!("{{\"Statement\": {deep}}}");
        assert!(PolicyDocument::parse(
            &text[..KEY_POLICY_MAX_BYTES.min(text.len())],
            PolicyKind::Key
        )
        .is_err());
        let cond = format!(
            "{{\"Statement\": {{\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"*\", \"Resource\": \"*\", \"Condition\": {}1{}}}}}",
            "{\"a\":".repeat(5000),
            "}".repeat(5000)
        );
        assert!(PolicyDocument::parse(&cond, PolicyKind::Key).is_err());
    }

    #[test]
    fn named_principals_for_existence_checks() {
        let d = key(json!({"Statement": [
            stmt(json!({"Principal": {"AWS": ["arn:aws:iam::111122223333:user/a", "111122223333", "*"]}})),
            stmt(json!({"Principal": {"AWS": ["arn:aws:iam::111122223333:role/r", "arn:aws:iam::111122223333:user/a"]}})),
        ]}))
        .unwrap();
        assert_eq!(
            d.named_principals(),
            [
                "arn:aws:iam::111122223333:user/a",
                "arn:aws:iam::111122223333:role/r"
            ]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            for kind in [PolicyKind::Key, PolicyKind::Identity, PolicyKind::Trust] {
                let _ = PolicyDocument::parse(&text, kind);
            }
        }

        #[test]
        fn near_valid_text_never_panics(cut in 0usize..400, insert in "[\\[\\]{}\",:*a ]{0,5}") {
            let text = super::super::default_key_policy("111122223333");
            let cut = cut.min(text.len());
            let mut t = text[..cut].to_string();
            t.push_str(&insert);
            t.push_str(&text[cut..]);
            let _ = PolicyDocument::parse(&t, PolicyKind::Key);
        }
    }
}
