//! CloudTrail `LookupEvents`, domain side: who may look (`cloudtrail:LookupEvents` allowed
//! by an identity policy; an account's root user always), what they see (only records
//! delivered to their own account, `recipientAccountId`), the filter (one lookup
//! attribute, a time range), newest first, paginated by an opaque `NextToken` bound to the
//! query it was issued for; CloudTrail's rate limit (two calls a second per account by
//! default, [`LookupRate`]); and the port the trail is read through ([`AuditReader`]).

use super::audit::Auditor;
use super::error::KmsError;
use super::marker::{self, Marker};
use super::policy::{self, Decision};
use super::Kms;
use crate::auth::Principal;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;

/// The IAM action a caller needs.
pub const ACTION: &str = "cloudtrail:LookupEvents";
/// The most events in one answer, and the default.
pub const MAX_RESULTS: usize = 50;

/// AWS's rate of `LookupEvents` calls: two a second per account and Region.
pub const DEFAULT_PER_SECOND: u32 = 2;

/// CloudTrail's limit on `LookupEvents`: `per_second` calls a second per account, a burst
/// of at most `per_second` calls then one every `1/per_second` s, on the service's clock
/// (GCRA, in whole nanoseconds: a token bucket without rounding). A call over the limit
/// is refused (`ThrottlingException`) and uses nothing; the SDKs retry it after a pause.
pub struct LookupRate {
    /// Nanoseconds between calls at the steady rate.
    interval: i128,
    /// How far ahead of now an account's next call may be booked (the burst).
    tolerance: i128,
    /// Per account: when its next call would be due at the steady rate (ns since epoch).
    due: Mutex<HashMap<String, i128>>,
}

impl LookupRate {
    /// `per_second` calls a second per account (at least 1).
    pub fn new(per_second: u32) -> Self {
        let per_second = i128::from(per_second.max(1));
        let interval = 1_000_000_000 / per_second;
        LookupRate {
            interval,
            tolerance: interval * (per_second - 1),
            due: Mutex::new(HashMap::new()),
        }
    }

    /// Take one call for `account` at `now`; `Throttled` when it has none left. A clock
    /// that moved back gives nothing back.
    pub fn take(&self, account: &str, now: OffsetDateTime) -> Result<(), KmsError> {
        let now = now.unix_timestamp_nanos();
        let mut due = self
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = due.entry(account.to_string()).or_insert(now);
        let from = (*next).max(now);
        if from - now > self.tolerance {
            return Err(KmsError::Throttled("Rate exceeded".into()));
        }
        *next = from + self.interval;
        Ok(())
    }
}

impl Default for LookupRate {
    fn default() -> Self {
        LookupRate::new(DEFAULT_PER_SECOND)
    }
}

/// The port the trail is read through (adapter: `crate::audit::FileTrail`).
pub trait AuditReader: Send + Sync {
    /// Visit the trail's records newest first, starting below sequence number `before`
    /// (from the newest when `None`): `visit` gets each record's sequence number and the
    /// JSON text of its CloudTrail record, and returns `false` to stop. Blocking.
    fn scan(
        &self,
        before: Option<u64>,
        visit: &mut dyn FnMut(u64, &str) -> bool,
    ) -> Result<(), KmsError>;
}

/// The one lookup attribute of a query (`AttributeKey` and `AttributeValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `EventId`: the record's `eventID`.
    EventId(String),
    /// `EventName`: the operation or action.
    EventName(String),
    /// `ReadOnly`: `true` or `false`.
    ReadOnly(String),
    /// `Username`: the IAM user's or role session's name, `root` for the root user.
    Username(String),
    /// `ResourceType`: `AWS::KMS::Key`.
    ResourceType(String),
    /// `ResourceName`: a key's ARN or id.
    ResourceName(String),
    /// `EventSource`: `kms.amazonaws.com`, …
    EventSource(String),
    /// `AccessKeyId`: the access key the call was signed with.
    AccessKeyId(String),
}

/// A `LookupEvents` query, validated at the edge.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// At most one attribute (as AWS).
    pub attribute: Option<Attribute>,
    /// Only events at or after this time.
    pub start: Option<OffsetDateTime>,
    /// Only events at or before this time.
    pub end: Option<OffsetDateTime>,
    /// 1 to [`MAX_RESULTS`].
    pub max_results: usize,
    /// The previous answer's `NextToken`.
    pub next_token: Option<String>,
    /// `EventCategory` `insight`: Insights events only (this service has none).
    pub insight: bool,
}

/// One event found, as `LookupEvents` answers it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FoundEvent {
    /// The record's `eventID`.
    pub event_id: String,
    /// The record's `eventName`.
    pub event_name: String,
    /// `"true"` or `"false"`.
    pub read_only: String,
    /// The access key the call was signed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Epoch seconds.
    pub event_time: i64,
    /// The record's `eventSource`.
    pub event_source: String,
    /// The caller's user name (`root` for the root user, the session name of a role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The keys the call named.
    pub resources: Vec<FoundResource>,
    /// The whole record, as JSON text.
    pub cloud_trail_event: String,
}

/// One entry of `Resources`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FoundResource {
    /// `AWS::KMS::Key`.
    pub resource_type: String,
    /// The key's ARN.
    pub resource_name: String,
}

/// A `LookupEvents` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LookedUp {
    /// Newest first.
    pub events: Vec<FoundEvent>,
    /// Where the next page starts, when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<Marker>,
}

/// The record's caller name as CloudTrail's `Username` shows it.
fn username(record: &Value) -> Option<String> {
    let id = record.get("userIdentity").unwrap_or(&Value::Null);
    match id.get("type").unwrap_or(&Value::Null).as_str()? {
        "Root" => Some("root".into()),
        "IAMUser" => id
            .get("userName")
            .unwrap_or(&Value::Null)
            .as_str()
            .map(str::to_string),
        "AssumedRole" => id
            .get("arn")
            .unwrap_or(&Value::Null)
            .as_str()
            .and_then(|a| a.rsplit('/').next())
            .map(str::to_string),
        _ => None,
    }
}

fn resources(record: &Value) -> Vec<FoundResource> {
    record
        .get("resources")
        .unwrap_or(&Value::Null)
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| FoundResource {
                    resource_type: r
                        .get("type")
                        .unwrap_or(&Value::Null)
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    resource_name: r
                        .get("ARN")
                        .unwrap_or(&Value::Null)
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn event_time(record: &Value) -> Option<OffsetDateTime> {
    let t = record.get("eventTime").unwrap_or(&Value::Null).as_str()?;
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

fn text(record: &Value, name: &str) -> String {
    record
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Attribute {
    fn matches(&self, record: &Value) -> bool {
        let is = |name: &str, v: &str| record.get(name).and_then(Value::as_str) == Some(v);
        match self {
            Attribute::EventId(v) => is("eventID", v),
            Attribute::EventName(v) => is("eventName", v),
            Attribute::EventSource(v) => is("eventSource", v),
            Attribute::ReadOnly(v) => record
                .get("readOnly")
                .unwrap_or(&Value::Null)
                .as_bool()
                .is_some_and(|b| b.to_string() == *v),
            Attribute::Username(v) => username(record).as_deref() == Some(v.as_str()),
            Attribute::AccessKeyId(v) => {
                record
                    .pointer("/userIdentity/accessKeyId")
                    .unwrap_or(&Value::Null)
                    .as_str()
                    == Some(v.as_str())
            }
            Attribute::ResourceType(v) => resources(record).iter().any(|r| r.resource_type == *v),
            Attribute::ResourceName(v) => resources(record).iter().any(|r| {
                r.resource_name == *v
                    || r.resource_name
                        .rsplit_once(":key/")
                        .is_some_and(|(_, id)| id == v)
            }),
        }
    }
}

impl Lookup {
    /// Whether `record` (of `account`'s trail) answers this query.
    fn matches(&self, account: &str, record: &Value) -> bool {
        if record
            .get("recipientAccountId")
            .unwrap_or(&Value::Null)
            .as_str()
            != Some(account)
        {
            return false;
        }
        if self.start.is_some() || self.end.is_some() {
            let Some(t) = event_time(record) else {
                return false;
            };
            if self.start.is_some_and(|s| t < s) || self.end.is_some_and(|e| t > e) {
                return false;
            }
        }
        self.attribute.as_ref().is_none_or(|a| a.matches(record))
    }

    /// What a `NextToken` is bound to: the caller's account and the query's parameters
    /// (not `MaxResults`).
    fn fingerprint(&self, account: &str) -> [u8; 8] {
        let d = Sha256::new()
            .chain_update(account.as_bytes())
            .chain_update(
                format!(
                    "|{:?}|{:?}|{:?}|{}",
                    self.attribute,
                    self.start.map(|t| t.unix_timestamp_nanos()),
                    self.end.map(|t| t.unix_timestamp_nanos()),
                    self.insight
                )
                .as_bytes(),
            )
            .finalize();
        let mut out = [0u8; 8];
        for (o, b) in out.iter_mut().zip(d.iter()) {
            *o = *b;
        }
        out
    }
}

fn found(record: &Value, raw: &str) -> FoundEvent {
    let access_key_id = record
        .pointer("/userIdentity/accessKeyId")
        .unwrap_or(&Value::Null)
        .as_str()
        .map(str::to_string);
    FoundEvent {
        event_id: text(record, "eventID"),
        event_name: text(record, "eventName"),
        read_only: record
            .get("readOnly")
            .unwrap_or(&Value::Null)
            .as_bool()
            .unwrap_or(false)
            .to_string(),
        access_key_id,
        event_time: event_time(record).map_or(0, OffsetDateTime::unix_timestamp),
        event_source: text(record, "eventSource"),
        username: username(record),
        resources: resources(record),
        cloud_trail_event: raw.to_string(),
    }
}

/// AWS's `AccessDeniedException` for `caller_arn` calling `LookupEvents`.
fn denied(caller_arn: &str, explicit: bool) -> KmsError {
    KmsError::AccessDenied(if explicit {
        format!(
            "User: {caller_arn} is not authorized to perform: {ACTION} with an explicit deny \
             in an identity-based policy"
        )
    } else {
        format!(
            "User: {caller_arn} is not authorized to perform: {ACTION} because no \
             identity-based policy allows the {ACTION} action"
        )
    })
}

/// `LookupEvents` by `p` over the trail of `audit`: `AccessDenied` without the permission,
/// `InvalidMarker` for a `NextToken` this service did not issue for this query,
/// `Throttled` over the account's rate (only a call that would be answered counts).
pub async fn lookup_events(
    kms: &Kms,
    audit: &Auditor,
    p: &Principal,
    q: Lookup,
) -> Result<LookedUp, KmsError> {
    let caller = kms.iam().caller(p)?;
    let req = policy::Request::new(ACTION, "*", caller);
    let policies = kms.iam().policies_for(p);
    match policy::authorize(&req, None, policies.iter().map(AsRef::as_ref), false) {
        Decision::Allowed(_) => {}
        Decision::ExplicitDeny => return Err(denied(&p.arn, true)),
        Decision::ImplicitDeny => return Err(denied(&p.arn, false)),
    }
    let account = p.account_id.clone();
    let fingerprint = q.fingerprint(&account);
    let before = match Marker::decode_opt(marker::TrailEvents, q.next_token.as_deref())? {
        Some((seq, f)) if f == fingerprint => Some(seq),
        Some(_) => return Err(marker::InvalidMarker.into()),
        None => None,
    };
    audit.lookup_rate().take(&account, kms.now())?;
    let reader = audit.reader()?;
    if q.insight {
        return Ok(LookedUp {
            events: Vec::new(),
            next_token: None,
        });
    }
    let limit = q.max_results.clamp(1, MAX_RESULTS);
    let (events, more) = tokio::task::spawn_blocking(move || {
        let mut out: Vec<(u64, FoundEvent)> = Vec::new();
        let mut more = false;
        reader.scan(before, &mut |seq, raw| {
            let Ok(record) = serde_json::from_str::<Value>(raw) else {
                return true;
            };
            if !q.matches(&account, &record) {
                return true;
            }
            if out.len() == limit {
                more = true;
                return false;
            }
            out.push((seq, found(&record, raw)));
            true
        })?;
        Ok::<_, KmsError>((out, more))
    })
    .await
    .map_err(|e| KmsError::Internal(format!("trail reader: {e}")))??;
    let next_token = match (more, events.last()) {
        (true, Some((seq, _))) => Some(Marker::encode(marker::TrailEvents, &(*seq, fingerprint))),
        _ => None,
    };
    Ok(LookedUp {
        events: events.into_iter().map(|(_, e)| e).collect(),
        next_token,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "eventTime": "2024-05-01T12:00:00Z",
            "eventSource": "kms.amazonaws.com",
            "eventName": "Encrypt",
            "eventID": "e1",
            "readOnly": true,
            "recipientAccountId": "111122223333",
            "userIdentity": {"type": "AssumedRole", "accessKeyId": "ASIA1",
                "arn": "arn:aws:sts::111122223333:assumed-role/R/sess"},
            "resources": [{"type": "AWS::KMS::Key", "accountId": "111122223333",
                "ARN": "arn:aws:kms:us-east-1:111122223333:key/k-1"}],
        })
    }

    #[test]
    fn each_attribute_and_the_time_range_filter() {
        let r = record();
        let q = |attribute| Lookup {
            attribute: Some(attribute),
            ..Lookup::default()
        };
        for a in [
            Attribute::EventId("e1".into()),
            Attribute::EventName("Encrypt".into()),
            Attribute::ReadOnly("true".into()),
            Attribute::Username("sess".into()),
            Attribute::ResourceType("AWS::KMS::Key".into()),
            Attribute::ResourceName("k-1".into()),
            Attribute::ResourceName("arn:aws:kms:us-east-1:111122223333:key/k-1".into()),
            Attribute::EventSource("kms.amazonaws.com".into()),
            Attribute::AccessKeyId("ASIA1".into()),
        ] {
            assert!(q(a.clone()).matches("111122223333", &r), "{a:?}");
        }
        for a in [
            Attribute::EventId("e2".into()),
            Attribute::ReadOnly("false".into()),
            Attribute::Username("R".into()),
            Attribute::ResourceName("k".into()),
            Attribute::AccessKeyId("AKIA1".into()),
        ] {
            assert!(!q(a.clone()).matches("111122223333", &r), "{a:?}");
        }
        assert!(!Lookup::default().matches("999999999999", &r));
        let at = |s| OffsetDateTime::from_unix_timestamp(s).unwrap();
        let t = 1_714_564_800; // 2024-05-01T12:00:00Z
        let range = |start, end| Lookup {
            start: Some(at(start)),
            end: Some(at(end)),
            ..Lookup::default()
        };
        assert!(range(t, t).matches("111122223333", &r));
        assert!(!range(t + 1, t + 9).matches("111122223333", &r));
        assert!(!range(t - 9, t - 1).matches("111122223333", &r));
        let f = found(&r, "{}");
        assert_eq!(f.event_time, t);
        assert_eq!(f.username.as_deref(), Some("sess"));
        assert_eq!(f.read_only, "true");
    }

    #[test]
    fn the_rate_is_a_burst_then_a_refill_per_account_and_a_clock_moved_back_refills_nothing() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_714_564_800).unwrap();
        let ms = |n: i64| t0 + time::Duration::milliseconds(n);
        let rate = LookupRate::new(2);
        let take = |a: &str, t| rate.take(a, t).map_err(|e| e.aws_type());
        assert_eq!(take("1", t0), Ok(()));
        assert_eq!(take("1", t0), Ok(()));
        assert_eq!(take("1", t0), Err("ThrottlingException"));
        assert_eq!(take("2", t0), Ok(()));
        assert_eq!(take("1", ms(499)), Err("ThrottlingException"));
        assert_eq!(take("1", ms(500)), Ok(()));
        // Back in time: nothing refilled, and the bucket keeps its latest time.
        assert_eq!(take("1", ms(-5_000)), Err("ThrottlingException"));
        assert_eq!(take("1", ms(999)), Err("ThrottlingException"));
        assert_eq!(take("1", ms(1_000)), Ok(()));
        // An hour idle banks two calls, no more.
        let later = ms(3_600_000);
        assert_eq!(take("1", later), Ok(()));
        assert_eq!(take("1", later), Ok(()));
        assert_eq!(take("1", later), Err("ThrottlingException"));
        // A rate of 0 is taken as 1.
        let one = LookupRate::new(0);
        assert!(one.take("1", t0).is_ok());
        assert!(one.take("1", t0).is_err());
    }

    #[test]
    fn a_token_is_bound_to_its_query_and_account() {
        let a = Lookup::default();
        let b = Lookup {
            attribute: Some(Attribute::EventName("Encrypt".into())),
            ..Lookup::default()
        };
        assert_ne!(a.fingerprint("1"), b.fingerprint("1"));
        assert_ne!(a.fingerprint("1"), a.fingerprint("2"));
        assert_eq!(b.fingerprint("1"), b.clone().fingerprint("1"));
    }
}
