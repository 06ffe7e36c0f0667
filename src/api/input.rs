//! Reading request members from the JSON object: wrong JSON types are
//! `SerializationException`, missing or out-of-range members `ValidationException`, with
//! AWS's wording ("Value null at 'keyId' failed to satisfy constraint: …").

use super::error::ApiError;
use base64::Engine;
use serde_json::{Map, Value};

/// The members of one request.
pub(crate) struct Input<'a> {
    obj: &'a Map<String, Value>,
}

fn lower_first(m: &str) -> String {
    let mut c = m.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn wrong_type(member: &str, expected: &str) -> ApiError {
    ApiError::serialization(format!(
        "Unexpected value type for member '{member}': expected {expected}"
    ))
}

impl<'a> Input<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>) -> Self {
        Input { obj }
    }

    fn get(&self, m: &str) -> Option<&'a Value> {
        match self.obj.get(m) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn missing(member: &str) -> ApiError {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(member)
        ))
    }

    pub(crate) fn string(&self, m: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(m) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(m, "a string")),
        }
    }

    pub(crate) fn req_string(&self, m: &str) -> Result<&'a str, ApiError> {
        self.string(m)?.ok_or_else(|| Self::missing(m))
    }

    /// A string member with AWS length limits.
    pub(crate) fn string_len(
        &self,
        m: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<&'a str>, ApiError> {
        let s = self.string(m)?;
        if let Some(s) = s {
            let n = s.chars().count();
            if n < min || n > max {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{s}' at '{}' failed to satisfy constraint: Member must have length {}",
                    lower_first(m),
                    if n < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") }
                )));
            }
        }
        Ok(s)
    }

    pub(crate) fn bool(&self, m: &str) -> Result<bool, ApiError> {
        match self.get(m) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(wrong_type(m, "a boolean")),
        }
    }

    /// An integer member within `min..=max`.
    pub(crate) fn int(&self, m: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(m) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let v = n.as_i64().ok_or_else(|| wrong_type(m, "an integer"))?;
                if v < min || v > max {
                    return Err(ApiError::validation(format!(
                        "1 validation error detected: Value '{v}' at '{}' failed to satisfy constraint: Member must have value {}",
                        lower_first(m),
                        if v < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") }
                    )));
                }
                Ok(Some(v))
            }
            Some(_) => Err(wrong_type(m, "an integer")),
        }
    }

    /// A base64 blob member with length limits on the decoded bytes.
    pub(crate) fn blob(
        &self,
        m: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(s) = self.string(m)? else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| ApiError::serialization(format!("Member '{m}' is not valid base64")))?;
        if bytes.len() < min || bytes.len() > max {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must have length {}",
                lower_first(m),
                if bytes.len() < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") }
            )));
        }
        Ok(Some(bytes))
    }

    /// An enum member parsed by the domain type's own parser.
    pub(crate) fn parse<T>(
        &self,
        m: &str,
        parse: impl Fn(&str) -> Result<T, crate::kms::types::ValidationError>,
    ) -> Result<Option<T>, ApiError> {
        match self.string(m)? {
            None => Ok(None),
            Some(s) => parse(s)
                .map(Some)
                .map_err(|e| ApiError::validation(e.at(lower_first(m)).to_string())),
        }
    }

    /// A timestamp member: epoch seconds as a JSON number (the JSON 1.1 protocol's form).
    pub(crate) fn timestamp(&self, m: &str) -> Result<Option<time::OffsetDateTime>, ApiError> {
        match self.get(m) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .and_then(crate::kms::model::epoch_seconds::from_f64)
                .map(Some)
                .ok_or_else(|| wrong_type(m, "a timestamp")),
            Some(_) => Err(wrong_type(m, "a timestamp")),
        }
    }

    /// The raw JSON of a member (for maps such as EncryptionContext).
    pub(crate) fn raw(&self, m: &str) -> Option<&'a Value> {
        self.get(m)
    }

    /// A list member.
    pub(crate) fn list(&self, m: &str) -> Result<&'a [Value], ApiError> {
        match self.get(m) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(wrong_type(m, "a list")),
        }
    }
}
