//! The encryption context of symmetric operations: a validated string→string map and its
//! canonical, order-independent byte encoding, which becomes part of the AES-GCM AAD.
//!
//! AWS rules, and what this module adds:
//! - Keys and values are strings and may hold any Unicode (developer guide, "Encryption context
//!   rules"). Matching is exact and case-sensitive; only pair order may differ.
//! - An empty key or value is refused with `ValidationException` "Invalid EncryptionContext".
//!   This is not in the API model (whose `EncryptionContextKey/Value` shapes have no length
//!   constraint); it is reported by users of real AWS (aws/aws-sdk-go#1952 for the message,
//!   bank-vaults/vault-operator#147 and amazon-mq/rabbitmq-stream-s3#367 for empty values).
//! - AWS documents no size limit. This service caps the sum of the UTF-8 lengths of all keys and
//!   values at [`EncryptionContext::MAX_TOTAL_BYTES`] so the AAD handed to the HSM stays bounded;
//!   that cap is ours, not AWS's.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::types::ValidationError;

/// A validated encryption context. Empty when the request had none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

fn invalid() -> ValidationError {
    ValidationError::new("Invalid EncryptionContext")
}

impl EncryptionContext {
    /// Service limit on the summed UTF-8 length of all keys and values (not an AWS rule).
    pub const MAX_TOTAL_BYTES: usize = 8192;

    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates key/value pairs. A repeated key keeps its last value (as JSON parsing does).
    pub fn from_pairs<I>(pairs: I) -> Result<Self, ValidationError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        let mut total = 0usize;
        for (k, v) in &map {
            if k.is_empty() || v.is_empty() {
                return Err(invalid());
            }
            total += k.len() + v.len();
            if total > Self::MAX_TOTAL_BYTES {
                return Err(ValidationError::new(format!(
                    "Invalid EncryptionContext: it exceeds {} bytes",
                    Self::MAX_TOTAL_BYTES
                )));
            }
        }
        Ok(Self(map))
    }

    /// From the optional `EncryptionContext` request member: absent or `null` is the empty
    /// context; otherwise it must be an object whose values are all strings.
    pub fn from_json(value: Option<&serde_json::Value>) -> Result<Self, ValidationError> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(Self::new()),
            Some(serde_json::Value::Object(obj)) => Self::from_pairs(
                obj.iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                        _ => Err(invalid()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => Err(invalid()),
        }
    }

    /// The value paired with `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pairs (no context).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs as a map, keys in ascending order.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The canonical encoding: `u32 BE pair count`, then for each pair in ascending key order
    /// (byte-wise UTF-8) `u32 BE key length ‖ key ‖ u32 BE value length ‖ value`.
    ///
    /// Independent of insertion order, and injective: every field is length-prefixed, so two
    /// contexts that differ in any key or value encode differently.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let size = 4 + self
            .0
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        // Lengths fit in u32: the whole context is at most MAX_TOTAL_BYTES.
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            for field in [k, v] {
                out.extend_from_slice(&(field.len() as u32).to_be_bytes());
                out.extend_from_slice(field.as_bytes());
            }
        }
        out
    }
}

/// A grant's constraints (`GrantConstraints`): the encryption context a request must have
/// for the grant to allow it. Either member may be absent; an empty map counts as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantConstraints {
    /// `EncryptionContextSubset`: every pair must be in the request's context.
    #[serde(
        rename = "EncryptionContextSubset",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub subset: Option<EncryptionContext>,
    /// `EncryptionContextEquals`: the request's context must be exactly this one.
    #[serde(
        rename = "EncryptionContextEquals",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub equals: Option<EncryptionContext>,
}

impl GrantConstraints {
    /// Most pairs in one constraint (AWS's limit).
    pub const MAX_PAIRS: usize = 8;
    /// Longest value of a pair, in characters (AWS's limit).
    pub const MAX_VALUE_CHARS: usize = 384;

    /// The constraints, or `None` when both members are absent or empty (no constraint).
    pub fn new(
        subset: Option<EncryptionContext>,
        equals: Option<EncryptionContext>,
    ) -> Result<Option<GrantConstraints>, ValidationError> {
        let subset = subset.filter(|c| !c.is_empty());
        let equals = equals.filter(|c| !c.is_empty());
        for c in subset.iter().chain(equals.iter()) {
            if c.len() > Self::MAX_PAIRS {
                return Err(ValidationError::new(format!(
                    "A grant constraint can have at most {} encryption context pairs",
                    Self::MAX_PAIRS
                )));
            }
            if c.iter()
                .any(|(_, v)| v.chars().count() > Self::MAX_VALUE_CHARS)
            {
                return Err(ValidationError::new(format!(
                    "An encryption context value in a grant constraint cannot exceed {} characters",
                    Self::MAX_VALUE_CHARS
                )));
            }
        }
        Ok((subset.is_some() || equals.is_some()).then_some(GrantConstraints { subset, equals }))
    }

    /// Whether a request with encryption context `ctx` meets the constraints.
    pub fn hold_for(&self, ctx: &EncryptionContext) -> bool {
        self.equals.as_ref().is_none_or(|e| e == ctx)
            && self
                .subset
                .as_ref()
                .is_none_or(|s| s.iter().all(|(k, v)| ctx.get(k) == Some(v)))
    }

    /// Whether `child` is at least as strict as `self`: every context `child` allows, `self`
    /// allows too (AWS's rule for a grant created under a grant's CreateGrant permission).
    pub fn at_least_as_strict(&self, child: Option<&GrantConstraints>) -> bool {
        let Some(child) = child else {
            return false;
        };
        let equals_ok = self
            .equals
            .as_ref()
            .is_none_or(|e| child.equals.as_ref() == Some(e));
        let subset_ok = self.subset.as_ref().is_none_or(|s| {
            [child.subset.as_ref(), child.equals.as_ref()]
                .into_iter()
                .flatten()
                .any(|c| s.iter().all(|(k, v)| c.get(k) == Some(v)))
        });
        equals_ok && subset_ok
    }
}

impl Serialize for EncryptionContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EncryptionContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Self::from_pairs(map).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap()
    }

    #[test]
    fn empty_context_encodes_as_zero_count() {
        assert_eq!(EncryptionContext::new().canonical_bytes(), [0, 0, 0, 0]);
        assert_eq!(EncryptionContext::from_json(None).unwrap().len(), 0);
        assert!(EncryptionContext::from_json(Some(&json!(null)))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn known_encoding() {
        let c = ctx(&[("b", "2"), ("a", "xy")]);
        assert_eq!(
            c.canonical_bytes(),
            [
                0, 0, 0, 2, //
                0, 0, 0, 1, b'a', 0, 0, 0, 2, b'x', b'y', //
                0, 0, 0, 1, b'b', 0, 0, 0, 1, b'2',
            ]
        );
    }

    #[test]
    fn order_independent() {
        let a = ctx(&[("k1", "v1"), ("k2", "v2"), ("ü", "☃")]);
        let b = ctx(&[("ü", "☃"), ("k2", "v2"), ("k1", "v1")]);
        assert_eq!(a, b);
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn json_rules() {
        let c = EncryptionContext::from_json(Some(&json!({"Department": "10103.0"}))).unwrap();
        assert_eq!(c.get("Department"), Some("10103.0"));
        for bad in [
            json!({"k": 1}),
            json!({"k": null}),
            json!({"k": ["v"]}),
            json!(["k", "v"]),
            json!("k=v"),
            json!({"": "v"}),
            json!({"k": ""}),
        ] {
            let err = EncryptionContext::from_json(Some(&bad)).unwrap_err();
            assert_eq!(err.to_string(), "Invalid EncryptionContext", "{bad}");
        }
    }

    #[test]
    fn size_cap() {
        let max = EncryptionContext::MAX_TOTAL_BYTES;
        assert!(EncryptionContext::from_pairs([("k".into(), "v".repeat(max - 1))]).is_ok());
        assert!(EncryptionContext::from_pairs([("k".into(), "v".repeat(max))]).is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let c = ctx(&[("purpose", "test")]);
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(s, r#"{"purpose":"test"}"#);
        assert_eq!(serde_json::from_str::<EncryptionContext>(&s).unwrap(), c);
        assert!(serde_json::from_str::<EncryptionContext>(r#"{"k":""}"#).is_err());
    }

    fn arb_context() -> impl Strategy<Value = EncryptionContext> {
        // Small alphabet so that collisions, shared prefixes and separators-in-data occur.
        let s = "[ab\u{0}\u{1}=,é]{1,6}";
        proptest::collection::btree_map(s, s, 0..5)
            .prop_map(|m| EncryptionContext::from_pairs(m).unwrap())
    }

    proptest! {
        #[test]
        fn canonical_encoding_is_injective(a in arb_context(), b in arb_context()) {
            prop_assert_eq!(a == b, a.canonical_bytes() == b.canonical_bytes());
        }

        #[test]
        fn single_edit_changes_encoding(
            c in arb_context().prop_filter("non-empty", |c| !c.is_empty()),
            idx in any::<prop::sample::Index>(),
            edit_key in any::<bool>(),
            suffix in "[ab\u{0}]{1,2}",
        ) {
            let mut pairs: Vec<(String, String)> =
                c.as_map().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let i = idx.index(pairs.len());
            if edit_key { pairs[i].0.push_str(&suffix) } else { pairs[i].1.push_str(&suffix) }
            let edited = EncryptionContext::from_pairs(pairs).unwrap();
            prop_assert_ne!(&edited, &c);
            prop_assert_ne!(edited.canonical_bytes(), c.canonical_bytes());
        }
    }
}
