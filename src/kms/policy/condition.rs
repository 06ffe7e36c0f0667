//! The `Condition` element: the request's condition context, the operators (string,
//! numeric, date, `Bool`, `BinaryEquals`, IP address, ARN, `Null`), the `…IfExists` suffix,
//! the `ForAllValues:`/`ForAnyValue:` set qualifiers, and policy variables (`${aws:username}`,
//! `${key, 'default'}`, `${*}` `${?}` `${$}`) in the values of string and ARN operators.
//!
//! Semantics (AWS's): operators of a block, and keys of an operator, are ANDed; the values
//! of one key are ORed (NORed for a negated operator). A key missing from the request makes
//! a positive operator false and a negated one true, unless `…IfExists` (then true);
//! `ForAllValues:` over a missing or empty key is true, `ForAnyValue:` false. Condition keys
//! are case-insensitive. Typed values (numbers, dates, booleans, CIDRs, base64) are checked
//! when the policy is parsed; a request value that does not parse makes that comparison
//! false whatever the operator.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use serde_json::Value as Json;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use super::wildcard::{arn_matches, arn_matches_str, fold, tokens_match, Tok};
use super::PolicyError;

/// The condition keys of one request and their values (case-insensitive keys; a key may
/// have several values, e.g. `kms:EncryptionContextKeys`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionContext {
    keys: BTreeMap<String, Vec<String>>,
}

impl ConditionContext {
    /// An empty context.
    pub fn new() -> ConditionContext {
        ConditionContext::default()
    }

    /// Set `key` to `values` (replacing what it had).
    pub fn insert<I, S>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys.insert(
            key.to_lowercase(),
            values.into_iter().map(Into::into).collect(),
        );
    }

    /// The context with `key` set to `values`.
    pub fn with<I, S>(mut self, key: &str, values: I) -> ConditionContext
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insert(key, values);
        self
    }

    /// The values of `key`, if the request has it.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&key.to_lowercase()).map(Vec::as_slice)
    }

    /// [`ConditionContext::get`] for a key already in lower case (no allocation).
    fn get_lower(&self, key: &str) -> Option<&[String]> {
        self.keys.get(key).map(Vec::as_slice)
    }
}

/// `ForAllValues:`, `ForAnyValue:` or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Single,
    ForAllValues,
    ForAnyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrOp {
    Equals,
    EqualsIgnoreCase,
    Like,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, request: T, policy: T) -> bool {
        match self {
            Cmp::Eq => request == policy,
            Cmp::Lt => request < policy,
            Cmp::Le => request <= policy,
            Cmp::Gt => request > policy,
            Cmp::Ge => request >= policy,
        }
    }
}

/// An operator's positive form; negation is a separate flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    String(StrOp),
    Numeric(Cmp),
    Date(Cmp),
    Bool,
    Binary,
    Ip,
    Arn,
    Null,
}

/// Every operator name, with its positive form and whether it is negated.
const OPERATORS: &[(&str, Base, bool)] = &[
    ("StringEquals", Base::String(StrOp::Equals), false),
    ("StringNotEquals", Base::String(StrOp::Equals), true),
    (
        "StringEqualsIgnoreCase",
        Base::String(StrOp::EqualsIgnoreCase),
        false,
    ),
    (
        "StringNotEqualsIgnoreCase",
        Base::String(StrOp::EqualsIgnoreCase),
        true,
    ),
    ("StringLike", Base::String(StrOp::Like), false),
    ("StringNotLike", Base::String(StrOp::Like), true),
    ("NumericEquals", Base::Numeric(Cmp::Eq), false),
    ("NumericNotEquals", Base::Numeric(Cmp::Eq), true),
    ("NumericLessThan", Base::Numeric(Cmp::Lt), false),
    ("NumericLessThanEquals", Base::Numeric(Cmp::Le), false),
    ("NumericGreaterThan", Base::Numeric(Cmp::Gt), false),
    ("NumericGreaterThanEquals", Base::Numeric(Cmp::Ge), false),
    ("DateEquals", Base::Date(Cmp::Eq), false),
    ("DateNotEquals", Base::Date(Cmp::Eq), true),
    ("DateLessThan", Base::Date(Cmp::Lt), false),
    ("DateLessThanEquals", Base::Date(Cmp::Le), false),
    ("DateGreaterThan", Base::Date(Cmp::Gt), false),
    ("DateGreaterThanEquals", Base::Date(Cmp::Ge), false),
    ("Bool", Base::Bool, false),
    ("BinaryEquals", Base::Binary, false),
    ("IpAddress", Base::Ip, false),
    ("NotIpAddress", Base::Ip, true),
    ("ArnEquals", Base::Arn, false),
    ("ArnLike", Base::Arn, false),
    ("ArnNotEquals", Base::Arn, true),
    ("ArnNotLike", Base::Arn, true),
    ("Null", Base::Null, false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Operator {
    qualifier: Qualifier,
    base: Base,
    negated: bool,
    if_exists: bool,
}

impl Operator {
    fn parse(name: &str) -> Option<Operator> {
        let (qualifier, rest) = if let Some(r) = name.strip_prefix("ForAllValues:") {
            (Qualifier::ForAllValues, r)
        } else if let Some(r) = name.strip_prefix("ForAnyValue:") {
            (Qualifier::ForAnyValue, r)
        } else {
            (Qualifier::Single, name)
        };
        let (if_exists, rest) = match rest.strip_suffix("IfExists") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let &(_, base, negated) = OPERATORS.iter().find(|(n, _, _)| *n == rest)?;
        if base == Base::Null && (if_exists || qualifier != Qualifier::Single) {
            return None;
        }
        Some(Operator {
            qualifier,
            base,
            negated,
            if_exists,
        })
    }
}

/// A piece of a string value with policy variables.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// Text as written (`*` and `?` are wildcards for `…Like`).
    Text(String),
    /// `${*}`, `${?}`, `${$}`: the character itself, never a wildcard.
    Escaped(char),
    /// `${key}` or `${key, 'default'}`.
    Var {
        key: String,
        default: Option<String>,
    },
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4(u32, u32),
    V6(u128, u128),
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (ip, Some(p.parse::<u32>().ok()?))
            }
            None => (s, None),
        };
        if let Ok(v4) = ip.parse::<Ipv4Addr>() {
            let p = prefix.unwrap_or(32);
            let mask = u32::MAX.checked_shl(32u32.checked_sub(p)?).unwrap_or(0);
            return Some(Cidr::V4(u32::from(v4) & mask, mask));
        }
        let v6 = ip.parse::<Ipv6Addr>().ok()?;
        let p = prefix.unwrap_or(128);
        let mask = u128::MAX.checked_shl(128u32.checked_sub(p)?).unwrap_or(0);
        Some(Cidr::V6(u128::from(v6) & mask, mask))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match (self, ip) {
            (Cidr::V4(net, mask), IpAddr::V4(a)) => u32::from(a) & mask == *net,
            (Cidr::V6(net, mask), IpAddr::V6(a)) => u128::from(a) & mask == *net,
            _ => false,
        }
    }
}

/// One value of a condition, parsed for its operator.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(Vec<Part>),
    Number(f64),
    Date(i128),
    Bool(bool),
    Cidr(Cidr),
    Binary(Vec<u8>),
}

/// A number as IAM writes them: `-12`, `3.5`, `1e3`; never `NaN` or `inf`.
fn parse_number(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (body.get(..i)?, Some(body.get(i + 1..)?)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if s.len() > 400
        || (int.is_empty() && frac.is_empty())
        || !digits(int)
        || !digits(frac)
        || !exp_ok
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A date as ISO 8601 (with or without an offset, UTC assumed; or a plain date) or epoch
/// seconds, as Unix nanoseconds.
fn parse_date(s: &str) -> Option<i128> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .map(|secs| i128::from(secs) * 1_000_000_000);
    }
    if s.len() > 64 {
        return None;
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp_nanos());
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Iso8601::DEFAULT) {
        return Some(t.unix_timestamp_nanos());
    }
    if let Ok(t) = PrimitiveDateTime::parse(s, &Iso8601::DEFAULT) {
        return Some(t.assume_utc().unix_timestamp_nanos());
    }
    Date::parse(s, format_description!("[year]-[month]-[day]"))
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp_nanos())
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_binary(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A string value split into text, escapes and variables (`variables`: the policy is
/// version 2012-10-17; in 2008-10-17 `${…}` is plain text).
fn parse_parts(s: &str, variables: bool) -> Vec<Part> {
    if !variables {
        return vec![Part::Text(s.to_string())];
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let (before, after) = rest.split_at(i);
        text.push_str(before);
        let inner_and_rest = after.get(2..).unwrap_or("");
        let Some(end) = inner_and_rest.find('}') else {
            text.push_str(after);
            rest = "";
            break;
        };
        let inner = inner_and_rest.get(..end).unwrap_or("");
        rest = inner_and_rest.get(end + 1..).unwrap_or("");
        let part = match inner {
            "*" => Some(Part::Escaped('*')),
            "?" => Some(Part::Escaped('?')),
            "$" => Some(Part::Escaped('$')),
            _ => parse_variable(inner),
        };
        match part {
            Some(p) => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(p);
            }
            None => {
                text.push_str("${");
                text.push_str(inner);
                text.push('}');
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() || parts.is_empty() {
        parts.push(Part::Text(text));
    }
    parts
}

/// `key` or `key, 'default'`.
fn parse_variable(inner: &str) -> Option<Part> {
    let (key, default) = match inner.split_once(',') {
        Some((k, d)) => {
            let d = d.trim();
            let d = d.strip_prefix('\'')?.strip_suffix('\'')?;
            (k.trim(), Some(d.to_string()))
        }
        None => (inner.trim(), None),
    };
    let valid =
        !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || c == '$' || c == '{');
    valid.then(|| Part::Var {
        key: key.to_string(),
        default,
    })
}

/// The value of a variable: the key's single value, else the default.
fn variable<'a>(ctx: &'a ConditionContext, key: &str, default: Option<&'a str>) -> Option<&'a str> {
    match ctx.get(key) {
        Some([one]) => Some(one.as_str()),
        _ => default,
    }
}

/// The parts with variables substituted, as pattern tokens (`None`: a variable has no
/// value, so the policy value matches nothing).
fn expand_tokens(parts: &[Part], ctx: &ConditionContext) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            Part::Text(t) => out.extend(super::wildcard::tokens(t)),
            Part::Escaped(c) => out.push(Tok::Lit(*c)),
            Part::Var { key, default } => out.extend(
                variable(ctx, key, default.as_deref())?
                    .chars()
                    .map(Tok::Lit),
            ),
        }
    }
    Some(out)
}

/// The parts with variables substituted: borrowed when they are one text (no variable).
fn expand_cow<'a>(parts: &'a [Part], ctx: &ConditionContext) -> Option<std::borrow::Cow<'a, str>> {
    match parts {
        [Part::Text(t)] => Some(std::borrow::Cow::Borrowed(t.as_str())),
        _ => expand_string(parts, ctx).map(std::borrow::Cow::Owned),
    }
}

/// The parts with variables substituted, as a plain string.
fn expand_string(parts: &[Part], ctx: &ConditionContext) -> Option<String> {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Escaped(c) => out.push(*c),
            Part::Var { key, default } => out.push_str(variable(ctx, key, default.as_deref())?),
        }
    }
    Some(out)
}

/// A `Resource` (or other ARN pattern) with policy variables.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pattern(Vec<Part>);

impl Pattern {
    pub(super) fn parse(s: &str, variables: bool) -> Pattern {
        Pattern(parse_parts(s, variables))
    }

    /// Whether `arn` matches, IAM's way (component by component).
    pub(super) fn matches_arn(&self, arn: &str, ctx: &ConditionContext) -> bool {
        match self.0.as_slice() {
            [Part::Text(t)] => arn_matches_str(t, arn),
            parts => expand_tokens(parts, ctx).is_some_and(|toks| arn_matches(&toks, arn)),
        }
    }
}

/// One key under one operator.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    op: Operator,
    key: String,
    values: Vec<Value>,
}

/// A statement's `Condition`: every entry must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Condition(Vec<Entry>);

fn malformed(msg: String) -> PolicyError {
    PolicyError::Malformed(msg)
}

/// The scalar values of a condition key: a string, number or boolean, or an array of them.
fn scalars(v: &Json) -> Option<Vec<String>> {
    fn one(v: &Json) -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Bool(b) => Some(b.to_string()),
            Json::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    match v {
        Json::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|s| vec![s]),
    }
}

impl Condition {
    /// Parse a `Condition` element (`variables`: the policy's version has them).
    pub(super) fn parse(v: &Json, variables: bool) -> Result<Condition, PolicyError> {
        let Json::Object(ops) = v else {
            return Err(malformed("Condition must be an object.".into()));
        };
        let mut entries = Vec::new();
        for (name, body) in ops {
            let op = Operator::parse(name).ok_or_else(|| {
                malformed(format!(
                    "Policy contains an unknown condition operator: {name}."
                ))
            })?;
            let Json::Object(keys) = body else {
                return Err(malformed(format!(
                    "Condition operator {name} must map condition keys to values."
                )));
            };
            if keys.is_empty() {
                return Err(malformed(format!(
                    "Condition operator {name} names no condition key."
                )));
            }
            for (key, raw) in keys {
                if key.is_empty() {
                    return Err(malformed("Policy contains an empty condition key.".into()));
                }
                let strings = scalars(raw).ok_or_else(|| {
                    malformed(format!(
                        "Condition key {key} must have a string, number or boolean value, or an array of them."
                    ))
                })?;
                let values = strings
                    .iter()
                    .map(|s| parse_value(op.base, s, variables))
                    .collect::<Option<Vec<Value>>>()
                    .ok_or_else(|| {
                        malformed(format!(
                            "Condition operator {name} has an invalid value for {key}."
                        ))
                    })?;
                entries.push(Entry {
                    op,
                    key: key.to_lowercase(),
                    values,
                });
            }
        }
        Ok(Condition(entries))
    }

    /// Whether an entry tests `key` (case-insensitively).
    pub(super) fn tests_key(&self, key: &str) -> bool {
        self.0.iter().any(|e| e.key.eq_ignore_ascii_case(key))
    }

    /// Whether every entry holds for the request's `ctx`.
    pub(super) fn holds(&self, ctx: &ConditionContext) -> bool {
        self.0.iter().all(|e| e.holds(ctx))
    }
}

fn parse_value(base: Base, s: &str, variables: bool) -> Option<Value> {
    match base {
        Base::String(_) | Base::Arn => Some(Value::Text(parse_parts(s, variables))),
        Base::Numeric(_) => parse_number(s).map(Value::Number),
        Base::Date(_) => parse_date(s).map(Value::Date),
        Base::Bool | Base::Null => parse_bool(s).map(Value::Bool),
        Base::Binary => parse_binary(s).map(Value::Binary),
        Base::Ip => Cidr::parse(s).map(Value::Cidr),
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars().map(fold).eq(b.chars().map(fold))
}

impl Entry {
    fn holds(&self, ctx: &ConditionContext) -> bool {
        let present = ctx.get_lower(&self.key).filter(|v| !v.is_empty());
        if self.op.base == Base::Null {
            let absent = present.is_none();
            return self.values.contains(&Value::Bool(absent));
        }
        let Some(request) = present else {
            return self.op.if_exists
                || match self.op.qualifier {
                    Qualifier::ForAllValues => true,
                    Qualifier::ForAnyValue => false,
                    Qualifier::Single => self.op.negated,
                };
        };
        // The operator applied to one request value; an unparseable value fails it.
        let op = |v: &String| self.positive(v, ctx).map(|m| m != self.op.negated) == Some(true);
        match self.op.qualifier {
            Qualifier::Single if self.op.negated => request.iter().all(op),
            Qualifier::Single | Qualifier::ForAnyValue => request.iter().any(op),
            Qualifier::ForAllValues => request.iter().all(op),
        }
    }

    /// Whether the positive form matches `v` against any policy value (`None`: `v` is
    /// not a value of the operator's type).
    fn positive(&self, v: &str, ctx: &ConditionContext) -> Option<bool> {
        let mut values = self.values.iter();
        Some(match self.op.base {
            Base::String(StrOp::Equals) => values
                .filter_map(|p| text(p).and_then(|parts| expand_cow(parts, ctx)))
                .any(|p| p == v),
            Base::String(StrOp::EqualsIgnoreCase) => values
                .filter_map(|p| text(p).and_then(|parts| expand_cow(parts, ctx)))
                .any(|p| eq_ignore_case(&p, v)),
            Base::String(StrOp::Like) => values.filter_map(text).any(|parts| match parts {
                [Part::Text(t)] => super::wildcard::matches(t, v, false),
                parts => expand_tokens(parts, ctx).is_some_and(|toks| tokens_match(&toks, v)),
            }),
            Base::Arn => values.filter_map(text).any(|parts| match parts {
                [Part::Text(t)] => arn_matches_str(t, v),
                parts => expand_tokens(parts, ctx).is_some_and(|toks| arn_matches(&toks, v)),
            }),
            Base::Numeric(cmp) => {
                let n = parse_number(v)?;
                values.any(|p| matches!(p, Value::Number(q) if cmp.holds(n, *q)))
            }
            Base::Date(cmp) => {
                let d = parse_date(v)?;
                values.any(|p| matches!(p, Value::Date(q) if cmp.holds(d, *q)))
            }
            Base::Bool => {
                let b = parse_bool(v)?;
                values.any(|p| *p == Value::Bool(b))
            }
            Base::Binary => {
                let b = parse_binary(v)?;
                values.any(|p| matches!(p, Value::Binary(q) if *q == b))
            }
            Base::Ip => {
                let ip = v.parse::<IpAddr>().ok()?;
                values.any(|p| matches!(p, Value::Cidr(c) if c.contains(ip)))
            }
            Base::Null => false,
        })
    }
}

fn text(v: &Value) -> Option<&[Part]> {
    match v {
        Value::Text(parts) => Some(parts),
        _ => None,
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

    fn cond(v: Json) -> Condition {
        Condition::parse(&v, true).unwrap()
    }

    fn holds(c: Json, ctx: &ConditionContext) -> bool {
        cond(c).holds(ctx)
    }

    fn ctx(pairs: &[(&str, &[&str])]) -> ConditionContext {
        let mut c = ConditionContext::new();
        for (k, v) in pairs {
            c.insert(k, v.iter().copied());
        }
        c
    }

    #[test]
    fn context_keys_are_case_insensitive() {
        let c = ctx(&[("kms:EncryptionContext:Department", &["IT"])]);
        assert_eq!(c.get("KMS:encryptioncontext:department").unwrap(), ["IT"]);
        assert!(holds(
            json!({"StringEquals": {"kms:encryptioncontext:DEPARTMENT": "IT"}}),
            &c
        ));
    }

    #[test]
    fn string_operators() {
        let c = ctx(&[("k", &["Finance"])]);
        let t = |op: &str, v: Json| holds(json!({ op: { "k": v } }), &c);
        assert!(t("StringEquals", json!("Finance")));
        assert!(!t("StringEquals", json!("finance")));
        assert!(t("StringEquals", json!(["IT", "Finance"])));
        assert!(!t("StringNotEquals", json!("Finance")));
        assert!(t("StringNotEquals", json!("IT")));
        assert!(!t("StringNotEquals", json!(["IT", "Finance"])));
        assert!(t("StringEqualsIgnoreCase", json!("FINANCE")));
        assert!(!t("StringNotEqualsIgnoreCase", json!("fInAnCe")));
        assert!(t("StringNotEqualsIgnoreCase", json!("IT")));
        assert!(t("StringLike", json!("Fin*")));
        assert!(t("StringLike", json!("Fin?nce")));
        assert!(!t("StringLike", json!("fin*")));
        assert!(t("StringNotLike", json!("IT*")));
        assert!(!t("StringNotLike", json!(["IT*", "*nce"])));
        // StringEquals takes `*` literally.
        assert!(!t("StringEquals", json!("Fin*")));
        // Numbers and booleans are compared as their text.
        let n = ctx(&[("k", &["12"]), ("b", &["true"])]);
        assert!(holds(json!({"StringEquals": {"k": 12, "b": true}}), &n));
    }

    #[test]
    fn missing_keys() {
        let c = ConditionContext::new();
        let t = |op: &str| holds(json!({ op: { "k": "v" } }), &c);
        for positive in ["StringEquals", "StringLike", "ArnLike"] {
            assert!(!t(positive), "{positive}");
        }
        for negated in [
            "StringNotEquals",
            "StringNotLike",
            "ArnNotLike",
            "ArnNotEquals",
        ] {
            assert!(t(negated), "{negated}");
        }
        assert!(!holds(json!({"NumericEquals": {"k": "1"}}), &c));
        assert!(holds(json!({"NumericNotEquals": {"k": "1"}}), &c));
        assert!(holds(json!({"NotIpAddress": {"k": "10.0.0.0/8"}}), &c));
        assert!(t("StringEqualsIfExists"));
        assert!(t("StringNotEqualsIfExists"));
        assert!(t("ForAllValues:StringEquals"));
        assert!(!t("ForAnyValue:StringEquals"));
        assert!(t("ForAnyValue:StringEqualsIfExists"));
        // An empty multi-valued key counts as missing.
        let empty = ctx(&[("k", &[])]);
        assert!(holds(
            json!({"ForAllValues:StringEquals": {"k": "v"}}),
            &empty
        ));
        assert!(!holds(
            json!({"ForAnyValue:StringEquals": {"k": "v"}}),
            &empty
        ));
    }

    #[test]
    fn if_exists_on_present_keys_compares() {
        let c = ctx(&[("k", &["a"])]);
        assert!(holds(json!({"StringEqualsIfExists": {"k": "a"}}), &c));
        assert!(!holds(json!({"StringEqualsIfExists": {"k": "b"}}), &c));
        assert!(holds(
            json!({"NumericLessThanIfExists": {"missing": "3"}}),
            &c
        ));
    }

    #[test]
    fn set_qualifiers() {
        let keys = ctx(&[("kms:EncryptionContextKeys", &["Department", "Project"])]);
        let t = |op: &str, v: Json| holds(json!({ op: { "kms:EncryptionContextKeys": v } }), &keys);
        assert!(t(
            "ForAllValues:StringEquals",
            json!(["Department", "Project", "Other"])
        ));
        assert!(!t("ForAllValues:StringEquals", json!(["Department"])));
        assert!(t("ForAnyValue:StringEquals", json!(["Department"])));
        assert!(!t("ForAnyValue:StringEquals", json!(["Other"])));
        assert!(t("ForAllValues:StringLike", json!("*t")));
        assert!(!t("ForAllValues:StringLike", json!("D*")));
        // Negated under a qualifier: each request value against all policy values.
        assert!(t("ForAnyValue:StringNotEquals", json!("Department")));
        assert!(!t("ForAllValues:StringNotEquals", json!("Department")));
        assert!(t("ForAllValues:StringNotEquals", json!("Other")));
        // Without a qualifier: positive = any value matches, negated = none does.
        assert!(t("StringEquals", json!("Project")));
        assert!(!t("StringNotEquals", json!("Project")));
        assert!(t("StringNotEquals", json!("Other")));
    }

    #[test]
    fn numeric_operators() {
        let c = ctx(&[("n", &["10"]), ("f", &["2.5"]), ("bad", &["ten"])]);
        let t = |op: &str, k: &str, v: Json| holds(json!({ op: { k: v } }), &c);
        assert!(t("NumericEquals", "n", json!("10")));
        assert!(t("NumericEquals", "n", json!(10)));
        assert!(t("NumericEquals", "n", json!("10.0")));
        assert!(!t("NumericNotEquals", "n", json!("10")));
        assert!(t("NumericNotEquals", "n", json!("11")));
        assert!(t("NumericLessThan", "n", json!("11")));
        assert!(!t("NumericLessThan", "n", json!("10")));
        assert!(t("NumericLessThanEquals", "n", json!("10")));
        assert!(t("NumericGreaterThan", "f", json!("2")));
        assert!(!t("NumericGreaterThan", "f", json!("2.5")));
        assert!(t("NumericGreaterThanEquals", "f", json!("2.5")));
        assert!(t("NumericGreaterThanEquals", "n", json!("-1e3")));
        // A request value that is not a number fails positive and negated operators.
        assert!(!t("NumericEquals", "bad", json!("10")));
        assert!(!t("NumericNotEquals", "bad", json!("10")));
        for bad in ["ten", "NaN", "inf", "", "1..2", "1e", "--1", "0x10"] {
            assert!(
                Condition::parse(&json!({"NumericEquals": {"n": bad}}), true).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn date_operators() {
        let c = ctx(&[
            ("aws:CurrentTime", &["2024-06-01T12:00:00Z"]),
            ("e", &["1717243200"]),
        ]);
        let t = |op: &str, k: &str, v: &str| holds(json!({ op: { k: v } }), &c);
        assert!(t("DateEquals", "aws:CurrentTime", "2024-06-01T12:00:00Z"));
        assert!(t(
            "DateEquals",
            "aws:CurrentTime",
            "2024-06-01T14:00:00+02:00"
        ));
        assert!(t("DateEquals", "aws:CurrentTime", "1717243200"));
        assert!(t("DateEquals", "e", "2024-06-01T12:00:00Z"));
        assert!(!t("DateNotEquals", "e", "2024-06-01T12:00:00Z"));
        assert!(t("DateNotEquals", "e", "2024-06-01"));
        assert!(t("DateLessThan", "aws:CurrentTime", "2025-01-01T00:00:00Z"));
        assert!(!t(
            "DateLessThan",
            "aws:CurrentTime",
            "2024-06-01T12:00:00Z"
        ));
        assert!(t(
            "DateLessThanEquals",
            "aws:CurrentTime",
            "2024-06-01T12:00:00Z"
        ));
        assert!(t("DateGreaterThan", "aws:CurrentTime", "2024-06-01"));
        assert!(t(
            "DateGreaterThanEquals",
            "aws:CurrentTime",
            "2024-06-01T12:00:00.000Z"
        ));
        assert!(t("DateLessThan", "aws:CurrentTime", "2024-06-01T12:00:01"));
        assert!(Condition::parse(&json!({"DateEquals": {"k": "yesterday"}}), true).is_err());
        let bad = ctx(&[("aws:CurrentTime", &["soon"])]);
        assert!(!holds(
            json!({"DateNotEquals": {"aws:CurrentTime": "2024-01-01"}}),
            &bad
        ));
    }

    #[test]
    fn bool_binary_null() {
        let c = ctx(&[("aws:SecureTransport", &["true"]), ("b", &["AQID"])]);
        assert!(holds(json!({"Bool": {"aws:SecureTransport": "true"}}), &c));
        assert!(holds(json!({"Bool": {"aws:SecureTransport": true}}), &c));
        assert!(!holds(
            json!({"Bool": {"aws:SecureTransport": "false"}}),
            &c
        ));
        assert!(holds(
            json!({"BoolIfExists": {"aws:MultiFactorAuthPresent": "true"}}),
            &c
        ));
        assert!(!holds(
            json!({"Bool": {"aws:MultiFactorAuthPresent": "false"}}),
            &c
        ));
        assert!(Condition::parse(&json!({"Bool": {"k": "yes"}}), true).is_err());
        assert!(holds(json!({"BinaryEquals": {"b": "AQID"}}), &c));
        assert!(!holds(json!({"BinaryEquals": {"b": "AQIE"}}), &c));
        assert!(Condition::parse(&json!({"BinaryEquals": {"b": "!!"}}), true).is_err());
        assert!(holds(json!({"Null": {"missing": "true"}}), &c));
        assert!(!holds(json!({"Null": {"missing": "false"}}), &c));
        assert!(holds(json!({"Null": {"aws:SecureTransport": "false"}}), &c));
        assert!(!holds(json!({"Null": {"aws:SecureTransport": true}}), &c));
        assert!(Condition::parse(&json!({"NullIfExists": {"k": "true"}}), true).is_err());
        assert!(Condition::parse(&json!({"Null": {"k": "maybe"}}), true).is_err());
    }

    #[test]
    fn ip_operators() {
        let c = ctx(&[
            ("v4", &["203.0.113.7"]),
            ("v6", &["2001:db8::1"]),
            ("mapped", &["::ffff:203.0.113.7"]),
            ("bad", &["not-an-ip"]),
        ]);
        let t = |op: &str, k: &str, v: Json| holds(json!({ op: { k: v } }), &c);
        assert!(t("IpAddress", "v4", json!("203.0.113.0/24")));
        assert!(t("IpAddress", "v4", json!("203.0.113.7")));
        assert!(t("IpAddress", "v4", json!("0.0.0.0/0")));
        assert!(!t("IpAddress", "v4", json!("203.0.114.0/24")));
        assert!(t(
            "IpAddress",
            "v4",
            json!(["10.0.0.0/8", "203.0.113.0/24"])
        ));
        assert!(t("NotIpAddress", "v4", json!("10.0.0.0/8")));
        assert!(!t("NotIpAddress", "v4", json!("203.0.113.0/24")));
        assert!(t("IpAddress", "v6", json!("2001:db8::/32")));
        assert!(!t("IpAddress", "v6", json!("2001:db9::/32")));
        assert!(t("IpAddress", "v6", json!("::/0")));
        assert!(!t("IpAddress", "v6", json!("0.0.0.0/0")));
        assert!(t("IpAddress", "mapped", json!("203.0.113.0/24")));
        assert!(!t("IpAddress", "bad", json!("0.0.0.0/0")));
        assert!(!t("NotIpAddress", "bad", json!("10.0.0.0/8")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
        ] {
            assert!(
                Condition::parse(&json!({"IpAddress": {"k": bad}}), true).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn arn_operators() {
        let c = ctx(&[(
            "aws:PrincipalArn",
            &["arn:aws:iam::111122223333:role/admin"],
        )]);
        let t = |op: &str, v: &str| holds(json!({ op: { "aws:PrincipalArn": v } }), &c);
        for op in ["ArnEquals", "ArnLike"] {
            assert!(t(op, "arn:aws:iam::111122223333:role/admin"), "{op}");
            assert!(t(op, "arn:aws:iam::111122223333:role/*"), "{op}");
            assert!(t(op, "arn:aws:iam::*:role/adm?n"), "{op}");
            assert!(!t(op, "arn:aws:iam::111122223333:user/*"), "{op}");
            assert!(!t(op, "arn:aws:iam::111122223333:role/ADMIN"), "{op}");
        }
        for op in ["ArnNotEquals", "ArnNotLike"] {
            assert!(!t(op, "arn:aws:iam::111122223333:role/*"), "{op}");
            assert!(t(op, "arn:aws:iam::444455556666:role/*"), "{op}");
        }
    }

    #[test]
    fn unknown_operators_and_bad_shapes_are_malformed() {
        for bad in [
            json!({"StringEqual": {"k": "v"}}),
            json!({"ForAllValue:StringEquals": {"k": "v"}}),
            json!({"stringequals": {"k": "v"}}),
            json!({"StringEquals": "v"}),
            json!({"StringEquals": {}}),
            json!({"StringEquals": {"k": {"nested": "v"}}}),
            json!({"StringEquals": {"k": ["a", ["b"]]}}),
            json!({"StringEquals": {"k": null}}),
            json!({"StringEquals": {"": "v"}}),
            json!(["StringEquals"]),
        ] {
            assert!(Condition::parse(&bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_variables() {
        let c = ctx(&[
            ("aws:username", &["alice"]),
            ("s3:prefix", &["home/alice/x"]),
            ("lit", &["a*b"]),
            ("multi", &["x", "y"]),
        ]);
        assert!(holds(
            json!({"StringLike": {"s3:prefix": "home/${aws:username}/*"}}),
            &c
        ));
        assert!(!holds(
            json!({"StringLike": {"s3:prefix": "home/${aws:userid}/*"}}),
            &c
        ));
        assert!(holds(
            json!({"StringLike": {"s3:prefix": "home/${aws:userid, 'alice'}/*"}}),
            &c
        ));
        assert!(holds(json!({"StringEquals": {"lit": "a${*}b"}}), &c));
        // `${*}` is a literal star even under StringLike.
        assert!(holds(json!({"StringLike": {"lit": "a${*}b"}}), &c));
        let other = ctx(&[("lit", &["aXb"])]);
        assert!(!holds(json!({"StringLike": {"lit": "a${*}b"}}), &other));
        assert!(holds(json!({"StringLike": {"lit": "a*b"}}), &other));
        // A multi-valued key does not substitute.
        assert!(!holds(json!({"StringEquals": {"multi": "${multi}"}}), &c));
        // Unclosed or empty variables are text.
        let raw = ctx(&[("k", &["${oops"]), ("e", &["${}"])]);
        assert!(holds(json!({"StringEquals": {"k": "${oops"}}), &raw));
        assert!(holds(json!({"StringEquals": {"e": "${}"}}), &raw));
        // Version 2008-10-17 has no variables.
        let plain =
            Condition::parse(&json!({"StringEquals": {"k": "${aws:username}"}}), false).unwrap();
        assert!(plain.holds(&ctx(&[("k", &["${aws:username}"])])));
    }

    #[test]
    fn operators_and_keys_are_anded() {
        let c = ctx(&[("a", &["1"]), ("b", &["2"])]);
        assert!(holds(json!({"StringEquals": {"a": "1", "b": "2"}}), &c));
        assert!(!holds(json!({"StringEquals": {"a": "1", "b": "3"}}), &c));
        assert!(holds(
            json!({"StringEquals": {"a": "1"}, "NumericEquals": {"b": 2}}),
            &c
        ));
        assert!(!holds(
            json!({"StringEquals": {"a": "1"}, "NumericEquals": {"b": 3}}),
            &c
        ));
        assert!(holds(json!({}), &c));
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
            "\\PC{0,12}".prop_map(Json::String),
            prop_oneof![
                Just("10.0.0.0/8"),
                Just("2024-01-01"),
                Just("*"),
                Just("${aws:username}"),
                Just("AQID"),
                Just("true")
            ]
            .prop_map(|s| Json::String(s.into())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::btree_map(arb_key(), inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_key() -> impl Strategy<Value = String> {
        let ops: Vec<String> = OPERATORS
            .iter()
            .flat_map(|(n, _, _)| {
                [
                    n.to_string(),
                    format!("{n}IfExists"),
                    format!("ForAllValues:{n}"),
                    format!("ForAnyValue:{n}IfExists"),
                ]
            })
            .collect();
        prop_oneof![
            proptest::sample::select(ops),
            Just("k".to_string()),
            "\\PC{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_conditions_never_panic(
            c in arb_json(),
            vals in proptest::collection::vec("\\PC{0,16}", 0..4),
            variables in any::<bool>(),
        ) {
            if let Ok(cond) = Condition::parse(&c, variables) {
                let mut ctx = ConditionContext::new();
                ctx.insert("k", vals.clone());
                ctx.insert("aws:username", vals);
                let _ = cond.holds(&ctx);
            }
        }

        #[test]
        fn arbitrary_request_values_never_panic(v in "\\PC{0,40}") {
            let all = json!({
                "StringLike": {"k": "*${aws:username}*"},
                "NumericLessThan": {"k": "5"},
                "DateGreaterThan": {"k": "2020-01-01T00:00:00Z"},
                "Bool": {"k": "true"},
                "BinaryEquals": {"k": "AQID"},
                "IpAddress": {"k": "10.0.0.0/8"},
                "ArnLike": {"k": "arn:aws:*:*:*:*"},
            });
            let ctx = ConditionContext::new().with("k", [v.clone()]).with("aws:username", [v]);
            let _ = cond(all).holds(&ctx);
        }

        #[test]
        fn cidr_membership_agrees_with_masking(a in any::<u32>(), b in any::<u32>(), p in 0u32..=32) {
            let net = std::net::Ipv4Addr::from(a);
            let ip = std::net::Ipv4Addr::from(b);
            let c = Cidr::parse(&format!("{net}/{p}")).unwrap();
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            prop_assert_eq!(c.contains(IpAddr::V4(ip)), a & mask == b & mask);
        }
    }
}
