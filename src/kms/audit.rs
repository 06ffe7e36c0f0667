//! The audit trail, domain side: the CloudTrail record of one API call ([`Event`]), how it
//! is built from what the call was ([`Call`]) and where it came from ([`CallFacts`]), the
//! request parameters and response elements CloudTrail shows (allow-lists: a member not
//! listed is never recorded, so plaintext, ciphertext blobs, signatures, MACs, key
//! material, secrets and grant or session tokens never are), and the port the trail is
//! written through ([`AuditSink`]) with the service's policy over it ([`Auditor`]):
//! fail-closed by default, a call whose record cannot be made durable is refused.
//!
//! A cross-account call yields one record per recipient account (the caller's and each
//! key owner's), as CloudTrail delivers it, tied together by `sharedEventID`.

use super::error::KmsError;
use crate::auth::Principal;
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;

/// The CloudTrail record version written.
pub const EVENT_VERSION: &str = "1.08";

/// One CloudTrail record (`eventType` `AwsApiCall`), members in CloudTrail's order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `eventVersion`.
    pub event_version: &'static str,
    /// `userIdentity`.
    pub user_identity: UserIdentity,
    /// `eventTime`, ISO 8601 in whole seconds (`2024-05-01T12:00:00Z`).
    pub event_time: String,
    /// `eventSource`: `kms.amazonaws.com`, `iam.amazonaws.com`, `sts.amazonaws.com`,
    /// `cloudtrail.amazonaws.com`.
    pub event_source: &'static str,
    /// `eventName`: the operation or action.
    pub event_name: String,
    /// `awsRegion`.
    pub aws_region: String,
    /// `sourceIPAddress`: the TCP peer.
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: Option<String>,
    /// `userAgent`.
    pub user_agent: Option<String>,
    /// `errorCode` of a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `errorMessage` of a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// `requestParameters` (allow-listed members only; `null` when none).
    pub request_parameters: Value,
    /// `responseElements` (`null` for most operations).
    pub response_elements: Value,
    /// `additionalEventData`: `{"hsms": [...]}`, the HSMs that answered the call's key
    /// operations (absent when none did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<Value>,
    /// `requestID`: the `x-amzn-RequestId` answered (absent from service events).
    #[serde(rename = "requestID", skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// `eventID`: unique per record.
    #[serde(rename = "eventID")]
    pub event_id: String,
    /// `readOnly`.
    pub read_only: bool,
    /// `resources`: the keys the call named.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// `eventType`: `AwsApiCall`, or `AwsServiceEvent` for what the service did by itself.
    pub event_type: &'static str,
    /// `managementEvent`: true.
    pub management_event: bool,
    /// `recipientAccountId`: the account this copy of the record belongs to.
    pub recipient_account_id: String,
    /// `serviceEventDetails` of a service event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_event_details: Option<Value>,
    /// `sharedEventID`: for a call recorded in several accounts, the same in every copy.
    #[serde(rename = "sharedEventID", skip_serializing_if = "Option::is_none")]
    pub shared_event_id: Option<String>,
    /// `eventCategory`: `Management`.
    pub event_category: &'static str,
}

/// `userIdentity`: who made the call, as far as the call got.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// `Root`, `IAMUser`, `AssumedRole`, or `Unknown` before authentication succeeded;
    /// empty (absent) in a service event.
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    /// `AIDA…` for a user, `AROA…:session` for a role session, the account id for root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// The principal's ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// The principal's account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The access key id the request was signed with (also for a refused signature, as
    /// the request named it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// An IAM user's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// A role session's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_context: Option<SessionContext>,
    /// `invokedBy`: `AWS Internal` for a service event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<&'static str>,
}

/// `userIdentity.sessionContext` of a role session.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    /// `sessionIssuer`: the role.
    pub session_issuer: SessionIssuer,
    /// `attributes`: `mfaAuthenticated`.
    pub attributes: Map<String, Value>,
}

/// `sessionContext.sessionIssuer`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionIssuer {
    /// `Role`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The role's unique id (`AROA…`).
    pub principal_id: String,
    /// The role's ARN.
    pub arn: String,
    /// The role's account.
    pub account_id: String,
    /// The role's name.
    pub user_name: String,
}

/// One `resources` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// The key's account.
    #[serde(rename = "accountId")]
    pub account_id: String,
    /// `AWS::KMS::Key`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The key's ARN.
    #[serde(rename = "ARN")]
    pub arn: String,
}

impl Resource {
    /// The resource of a key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`).
    pub fn key(arn: String) -> Resource {
        let account_id = arn.split(':').nth(4).unwrap_or_default().to_string();
        Resource {
            account_id,
            kind: "AWS::KMS::Key",
            arn,
        }
    }
}

/// Which API a call was made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// KMS (JSON 1.1).
    Kms,
    /// IAM (Query).
    Iam,
    /// STS (Query).
    Sts,
    /// CloudTrail (JSON 1.1: `LookupEvents`).
    CloudTrail,
}

impl Source {
    /// The `eventSource`.
    pub fn event_source(self) -> &'static str {
        match self {
            Source::Kms => "kms.amazonaws.com",
            Source::Iam => "iam.amazonaws.com",
            Source::Sts => "sts.amazonaws.com",
            Source::CloudTrail => "cloudtrail.amazonaws.com",
        }
    }
}

/// Where a call came from, as the HTTP front saw it.
#[derive(Debug, Clone)]
pub struct CallFacts {
    /// The `x-amzn-RequestId` answered.
    pub request_id: String,
    /// The TCP peer's address.
    pub source_ip: Option<IpAddr>,
    /// The `User-Agent` header (cut to 1024 characters).
    pub user_agent: Option<String>,
    /// When the call was received.
    pub time: OffsetDateTime,
    /// The access key id the request's `Authorization` header names, for a call whose
    /// signature was not accepted.
    pub claimed_access_key_id: Option<String>,
}

/// What a call was and how it ended.
#[derive(Debug)]
pub struct Call<'a> {
    /// The API.
    pub source: Source,
    /// The operation or action (`eventName`).
    pub event_name: &'a str,
    /// The authenticated caller, if authentication succeeded.
    pub principal: Option<&'a Principal>,
    /// The caller's unique id (`AIDA…`, `AROA…:session`, the account id), if known.
    pub principal_id: Option<String>,
    /// `readOnly`.
    pub read_only: bool,
    /// `requestParameters`.
    pub request_parameters: Value,
    /// `responseElements`.
    pub response_elements: Value,
    /// The keys named.
    pub resources: Vec<Resource>,
    /// `errorCode` and `errorMessage` of a failed call.
    pub error: Option<(&'a str, &'a str)>,
    /// The HSMs that answered the call's key operations.
    pub hsms: Vec<String>,
}

/// The most characters of a `User-Agent` recorded.
const USER_AGENT_MAX: usize = 1024;
/// The most characters of an unknown operation's name recorded.
const NAME_MAX: usize = 128;

/// A header value as recorded: at most `max` characters.
pub fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A `User-Agent` as recorded.
pub fn user_agent(s: &str) -> String {
    clip(s, USER_AGENT_MAX)
}

/// An unknown operation's name as recorded.
pub fn event_name(s: &str) -> String {
    clip(s, NAME_MAX)
}

/// A date inside IAM and STS `responseElements`, as CloudTrail writes them there:
/// `Jan 18, 2023 10:57:15 PM` (UTC).
pub fn response_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:none], [year] [hour repr:12 padding:none]:[minute]:[second] [period]"
    );
    // Every field is a UTC date's: formatting cannot fail.
    t.format(&fmt).unwrap_or_else(|_| timestamp(t))
}

/// ISO 8601 in whole seconds, UTC, `Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn user_identity(call: &Call<'_>, facts: &CallFacts) -> UserIdentity {
    let Some(p) = call.principal else {
        return UserIdentity {
            kind: "Unknown",
            access_key_id: facts.claimed_access_key_id.clone(),
            ..UserIdentity::default()
        };
    };
    let mut id = UserIdentity {
        kind: "IAMUser",
        principal_id: call.principal_id.clone(),
        arn: Some(p.arn.clone()),
        account_id: Some(p.account_id.clone()),
        access_key_id: Some(p.access_key_id.clone()),
        ..UserIdentity::default()
    };
    if let Some(s) = &p.session {
        id.kind = "AssumedRole";
        let mut attributes = Map::new();
        attributes.insert("mfaAuthenticated".into(), Value::from("false"));
        id.session_context = Some(SessionContext {
            session_issuer: SessionIssuer {
                kind: "Role",
                principal_id: s.role_id.clone(),
                arn: s.role_arn.clone(),
                account_id: p.account_id.clone(),
                user_name: s
                    .role_arn
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            },
            attributes,
        });
    } else if p.arn.ends_with(":root") {
        id.kind = "Root";
        id.principal_id = Some(p.account_id.clone());
    } else {
        id.user_name = p.arn.rsplit('/').next().map(str::to_string);
    }
    id
}

/// The records of one call: one per recipient account (the caller's, then each other
/// account owning a named key); `home_account` receives calls with no known caller.
pub fn events(call: Call<'_>, facts: &CallFacts, region: &str, home_account: &str) -> Vec<Event> {
    let mut recipients: Vec<String> = Vec::with_capacity(1);
    match call.principal {
        Some(p) => recipients.push(p.account_id.clone()),
        None => recipients.push(home_account.to_string()),
    }
    for r in &call.resources {
        if !r.account_id.is_empty() && !recipients.contains(&r.account_id) {
            recipients.push(r.account_id.clone());
        }
    }
    let shared = (recipients.len() > 1).then(|| super::types::random_uuid().to_string());
    let base = Event {
        event_version: EVENT_VERSION,
        user_identity: user_identity(&call, facts),
        event_time: timestamp(facts.time),
        event_source: call.source.event_source(),
        event_name: call.event_name.to_string(),
        aws_region: region.to_string(),
        source_ip_address: facts.source_ip.map(|ip| ip.to_string()),
        user_agent: facts.user_agent.clone(),
        error_code: call.error.map(|(c, _)| c.to_string()),
        error_message: call
            .error
            .map(|(_, m)| m)
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        request_parameters: call.request_parameters,
        response_elements: call.response_elements,
        additional_event_data: hsms_data(call.hsms),
        request_id: facts.request_id.clone(),
        event_id: String::new(),
        read_only: call.read_only,
        resources: call.resources,
        event_type: "AwsApiCall",
        management_event: true,
        recipient_account_id: String::new(),
        service_event_details: None,
        shared_event_id: shared,
        event_category: "Management",
    };
    let mut out = Vec::with_capacity(recipients.len());
    let last = recipients.len().saturating_sub(1);
    let mut base = Some(base);
    for (i, account) in recipients.into_iter().enumerate() {
        // The last copy takes the record itself (most calls have one recipient).
        let Some(mut e) = (if i == last { base.take() } else { base.clone() }) else {
            break;
        };
        e.event_id = super::types::random_uuid().to_string();
        e.recipient_account_id = account;
        out.push(e);
    }
    out
}

/// `{"hsms": [...]}`, or nothing when no HSM answered.
fn hsms_data(hsms: Vec<String>) -> Option<Value> {
    (!hsms.is_empty()).then(|| serde_json::json!({ "hsms": hsms }))
}

/// What the service did by itself (an `AwsServiceEvent` record): automatic rotation, the
/// destruction of a key at the end of its waiting period, an HSM becoming unavailable or
/// available again, keys copied into an HSM that lacked them, key material no key refers
/// to destroyed; and access keys it found changed in the store without a call (the
/// operator CLI).
#[derive(Debug)]
pub struct ServiceEvent {
    /// `eventSource`: KMS, or IAM for access keys.
    pub source: Source,
    /// `eventName`: `RotateKey`, `DeleteKey`, `DeleteExpiredKeyMaterial`,
    /// `DeleteOrphanedKeyMaterial`, `HsmStateChange`, `SynchronizeHsms`, `EnrollHsm`;
    /// `CreateAccessKey`, `UpdateAccessKey`, `DeleteAccessKey`.
    pub event_name: &'static str,
    /// The account the record belongs to: the key's; `None` for the service's own (HSM
    /// events).
    pub account: Option<String>,
    /// The keys concerned.
    pub resources: Vec<Resource>,
    /// `serviceEventDetails`.
    pub details: Value,
    /// The HSMs that did the work (`additionalEventData.hsms`).
    pub hsms: Vec<String>,
    /// When it happened.
    pub time: OffsetDateTime,
}

/// The record of a service event.
pub fn service_event(ev: ServiceEvent, region: &str, home_account: &str) -> Event {
    // As CloudTrail writes KMS's own events (e.g. an automatic `RotateKey`).
    const INTERNAL: &str = "AWS Internal";
    let account = ev.account.unwrap_or_else(|| home_account.to_string());
    Event {
        event_version: EVENT_VERSION,
        user_identity: UserIdentity {
            account_id: Some(account.clone()),
            invoked_by: Some(INTERNAL),
            ..UserIdentity::default()
        },
        event_time: timestamp(ev.time),
        event_source: ev.source.event_source(),
        event_name: ev.event_name.to_string(),
        aws_region: region.to_string(),
        source_ip_address: Some(INTERNAL.to_string()),
        user_agent: Some(INTERNAL.to_string()),
        error_code: None,
        error_message: None,
        request_parameters: Value::Null,
        response_elements: Value::Null,
        additional_event_data: hsms_data(ev.hsms),
        request_id: String::new(),
        event_id: super::types::random_uuid().to_string(),
        read_only: false,
        resources: ev.resources,
        event_type: "AwsServiceEvent",
        management_event: true,
        recipient_account_id: account,
        service_event_details: Some(ev.details),
        shared_event_id: None,
        event_category: "Management",
    }
}

/// The KMS request members CloudTrail shows, by their wire names. Anything else
/// (`Plaintext`, `CiphertextBlob`, `Message`, `Signature`, `Mac`, `PublicKey`,
/// `GrantTokens`, `GrantToken`, `Recipient`, `Marker`, …) is never recorded.
const KMS_PARAMETERS: &[&str] = &[
    "AliasName",
    "BypassPolicyLockoutSafetyCheck",
    "Constraints",
    "CustomerMasterKeySpec",
    "Description",
    "DestinationEncryptionAlgorithm",
    "DestinationEncryptionContext",
    "DestinationKeyId",
    "DryRun",
    "EncryptionAlgorithm",
    "EncryptionContext",
    "ExpirationModel",
    "GrantId",
    "GranteePrincipal",
    "ImportType",
    "IncludeKeyMaterial",
    "KeyAgreementAlgorithm",
    "KeyId",
    "KeyMaterialId",
    "KeyPairSpec",
    "KeySpec",
    "KeyUsage",
    "Limit",
    "MacAlgorithm",
    "MessageType",
    "MultiRegion",
    "Name",
    "NumberOfBytes",
    "Operations",
    "Origin",
    "PendingWindowInDays",
    "Policy",
    "PolicyName",
    "RetiringPrincipal",
    "RotationPeriodInDays",
    "SigningAlgorithm",
    "SourceEncryptionAlgorithm",
    "SourceEncryptionContext",
    "SourceKeyId",
    "TagKeys",
    "Tags",
    "TargetKeyId",
    "ValidTo",
    "WrappingAlgorithm",
    "WrappingKeySpec",
];

/// The IAM and STS parameters CloudTrail shows. Anything else (`SerialNumber`,
/// `TokenCode`, `ExternalId`, …) is never recorded; no action takes a secret as a
/// parameter, and none is listed here.
const QUERY_PARAMETERS: &[&str] = &[
    "AccessKeyId",
    "AssumeRolePolicyDocument",
    "Description",
    "DurationSeconds",
    "MaxItems",
    "MaxSessionDuration",
    "NewPath",
    "NewUserName",
    "Path",
    "PathPrefix",
    "PolicyDocument",
    "PolicyName",
    "RoleArn",
    "RoleName",
    "RoleSessionName",
    "Status",
    "UserName",
];

/// `Name` as CloudTrail spells it: first letter lower-cased (`KeyId` → `keyId`).
fn camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Whether a member's value is a caller-defined map whose keys are kept as they are.
fn user_map(name: &str) -> bool {
    name.ends_with("EncryptionContext")
        || name == "EncryptionContextSubset"
        || name == "EncryptionContextEquals"
}

/// `v` with every object member name camel-cased, except inside caller-defined maps.
fn camel_value(name: &str, v: &Value) -> Value {
    match v {
        Value::Object(m) if !user_map(name) => Value::Object(
            m.iter()
                .map(|(k, v)| (camel(k), camel_value(k, v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| camel_value(name, v)).collect()),
        other => other.clone(),
    }
}

/// A KMS request's `requestParameters`: the allow-listed members of its JSON body, named
/// as CloudTrail names them; `null` when there are none.
pub fn kms_request_parameters(body: &Map<String, Value>) -> Value {
    allowed_members(body, KMS_PARAMETERS)
}

/// The members of `m` named in `keep`, named as CloudTrail names them; `null` when there
/// are none.
fn allowed_members(m: &Map<String, Value>, keep: &[&str]) -> Value {
    let out: Map<String, Value> = m
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (camel(k), camel_value(k, v)))
        .collect();
    if out.is_empty() {
        Value::Null
    } else {
        Value::Object(out)
    }
}

/// A KMS answer's `responseElements`, for the operations CloudTrail shows one for
/// (CreateKey's `keyMetadata`, CreateGrant's `grantId`, ScheduleKeyDeletion's dates);
/// `null` for the others. Never a plaintext, blob, signature, MAC or token: only these
/// members are read.
pub fn kms_response_elements(operation: &str, reply: &[u8]) -> Value {
    let keep: &[&str] = match operation {
        "CreateKey" => &["KeyMetadata"],
        "CreateGrant" => &["GrantId"],
        "ScheduleKeyDeletion" => &["KeyId", "DeletionDate", "KeyState", "PendingWindowInDays"],
        "CancelKeyDeletion" => &["KeyId"],
        "ImportKeyMaterial" | "DeleteImportedKeyMaterial" => &["KeyId", "KeyMaterialId"],
        _ => return Value::Null,
    };
    match serde_json::from_slice::<Value>(reply) {
        Ok(Value::Object(m)) => allowed_members(&m, keep),
        _ => Value::Null,
    }
}

/// An IAM or STS request's `requestParameters`: the allow-listed parameters, named as
/// CloudTrail names them; `null` when there are none.
pub fn query_request_parameters<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    let out: Map<String, Value> = params
        .filter(|(k, _)| QUERY_PARAMETERS.contains(k))
        .map(|(k, v)| (camel(k), Value::from(v)))
        .collect();
    if out.is_empty() {
        Value::Null
    } else {
        Value::Object(out)
    }
}

/// Room made for a record before it is serialized: most are under 1 KiB, so one
/// allocation holds them (`serde_json::to_vec` starts at 128 bytes and grows 3 times).
const RECORD_CAPACITY: usize = 1536;

/// A record as the trail stores it (one JSON object, no newline).
fn serialize(e: &Event) -> Result<Vec<u8>, KmsError> {
    let mut out = Vec::with_capacity(RECORD_CAPACITY);
    serde_json::to_writer(&mut out, e)
        .map_err(|err| KmsError::Internal(format!("audit record: {err}")))?;
    Ok(out)
}

/// The port the trail is written through (adapter: `crate::audit::FileTrail`).
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Whether the last write reached the disk and the writer runs. Cheap; while
    /// unhealthy it may ask the writer to re-check (the next call sees the answer).
    fn healthy(&self) -> bool;

    /// Append these serialized records (each one JSON object, no newline) to the trail,
    /// in this order; resolves once they are durable (written and synced), or with the
    /// reason they are not.
    async fn append(&self, records: Vec<Vec<u8>>) -> Result<(), KmsError>;

    /// Whether the sink keeps records. A sink that keeps none (`audit_enabled = false`) is
    /// not handed any: the records are then not even serialized. Default: true.
    fn keeps_records(&self) -> bool {
        true
    }

    /// Batches waiting for the writer now (a gauge; 0 where the sink has no queue).
    fn queue_depth(&self) -> usize {
        0
    }

    /// The group commits made so far (counters; zero where the sink makes none).
    fn group_commits(&self) -> GroupCommits {
        GroupCommits::default()
    }

    /// A call has started whose record(s) will come ([`Auditor::expect_record`]): a
    /// writer may hold a sync briefly so that they share it. Default: nothing.
    fn call_started(&self) {}

    /// That call has ended (its records handed over, or the call dropped).
    fn call_ended(&self) {}
}

/// Counters of a sink's group commits (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommits {
    /// Writes made durable (one sync each).
    pub commits: u64,
    /// Event records they carried.
    pub records: u64,
}

/// A call whose record(s) the trail can expect, while it lives
/// ([`Auditor::expect_record`]).
pub struct ExpectedRecord<'a> {
    sink: &'a dyn AuditSink,
}

impl Drop for ExpectedRecord<'_> {
    fn drop(&mut self) {
        self.sink.call_ended();
    }
}

/// A sink that keeps nothing (`audit_enabled = false`: benchmarks and labs only).
#[derive(Debug, Clone, Copy, Default)]
pub struct DisabledSink;

#[async_trait::async_trait]
impl AuditSink for DisabledSink {
    fn healthy(&self) -> bool {
        true
    }

    fn keeps_records(&self) -> bool {
        false
    }

    async fn append(&self, _records: Vec<Vec<u8>>) -> Result<(), KmsError> {
        Ok(())
    }
}

/// The service's policy over the trail: refuse a call before it runs while the trail is
/// unhealthy, and answer it only once its record is durable — unless `fail_open`, which
/// answers anyway with an `error!` line.
pub struct Auditor {
    sink: Arc<dyn AuditSink>,
    reader: Option<Arc<dyn super::lookup::AuditReader>>,
    lookup_rate: super::lookup::LookupRate,
    fail_open: bool,
    region: String,
    home_account: String,
    /// See [`Auditor::for_operator_command`].
    operator_command: Option<&'static str>,
}

impl Auditor {
    /// An auditor writing through `sink` for a service of `region` whose own account is
    /// `home_account` (the recipient of calls with no authenticated caller).
    pub fn new(
        sink: Arc<dyn AuditSink>,
        fail_open: bool,
        region: &str,
        home_account: &str,
    ) -> Self {
        Auditor {
            sink,
            reader: None,
            lookup_rate: super::lookup::LookupRate::default(),
            fail_open,
            region: region.to_string(),
            home_account: home_account.to_string(),
            operator_command: None,
        }
    }

    /// The same auditor, recording what the operator command `command` (its own process:
    /// `hsm-kms reconcile`, …) does in the service's stead: its service events name the
    /// command as `invokedBy`, `sourceIPAddress` and `userAgent` instead of `AWS Internal`.
    pub fn for_operator_command(mut self, command: &'static str) -> Self {
        self.operator_command = Some(command);
        self
    }

    /// The same auditor, whose trail `LookupEvents` reads through `reader`.
    pub fn with_reader(mut self, reader: Arc<dyn super::lookup::AuditReader>) -> Self {
        self.reader = Some(reader);
        self
    }

    /// The same auditor, whose `LookupEvents` callers may make `per_second` calls a second
    /// per account (default [`super::lookup::DEFAULT_PER_SECOND`], as AWS).
    pub fn with_lookup_rate(mut self, per_second: u32) -> Self {
        self.lookup_rate = super::lookup::LookupRate::new(per_second);
        self
    }

    /// The rate limit of `LookupEvents` calls.
    pub fn lookup_rate(&self) -> &super::lookup::LookupRate {
        &self.lookup_rate
    }

    /// The trail's reader (`LookupEvents`); `Internal` when none was given.
    pub fn reader(&self) -> Result<Arc<dyn super::lookup::AuditReader>, KmsError> {
        self.reader
            .clone()
            .ok_or_else(|| KmsError::Internal("audit trail: no reader".into()))
    }

    /// Before a call runs: `Internal` while the trail cannot take records (fail-closed).
    pub fn admit(&self) -> Result<(), KmsError> {
        if self.sink.healthy() {
            return Ok(());
        }
        if self.fail_open {
            tracing::error!(
                target: "hsm_kms::audit",
                "AUDIT TRAIL UNAVAILABLE: serving without a durable record (audit_fail_open)"
            );
            return Ok(());
        }
        Err(KmsError::Internal(
            "audit trail unavailable: call refused (fail-closed)".into(),
        ))
    }

    /// Tell the trail a call has started whose record(s) it will hand over before the
    /// returned guard drops (a hint for group commit: how many records may come soon).
    pub fn expect_record(&self) -> ExpectedRecord<'_> {
        self.sink.call_started();
        ExpectedRecord { sink: &*self.sink }
    }

    /// Whether the trail takes records now ([`AuditSink::healthy`]).
    pub fn healthy(&self) -> bool {
        self.sink.healthy()
    }

    /// Whether calls are answered even when their record cannot be made durable.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Batches waiting for the trail's writer now.
    pub fn queue_depth(&self) -> usize {
        self.sink.queue_depth()
    }

    /// The trail's group commits so far.
    pub fn group_commits(&self) -> GroupCommits {
        self.sink.group_commits()
    }

    /// The records of `call`.
    pub fn events(&self, call: Call<'_>, facts: &CallFacts) -> Vec<Event> {
        events(call, facts, &self.region, &self.home_account)
    }

    /// Record what the service did by itself. It is done already, so a record that cannot
    /// be made durable is only reported (an `error!` line), whatever `fail_open` says.
    pub async fn record_service_event(&self, ev: ServiceEvent) {
        if !self.sink.keeps_records() {
            return;
        }
        let name = ev.event_name;
        let mut e = service_event(ev, &self.region, &self.home_account);
        if let Some(command) = self.operator_command {
            e.user_identity.invoked_by = Some(command);
            e.source_ip_address = Some(command.to_string());
            e.user_agent = Some(command.to_string());
        }
        let r = match serialize(&e) {
            Ok(record) => self.sink.append(vec![record]).await,
            Err(err) => Err(err),
        };
        if let Err(err) = r {
            tracing::error!(
                target: "hsm_kms::audit",
                error = %err,
                event = name,
                "AUDIT RECORD LOST: a service event could not be recorded"
            );
        }
    }

    /// Make `events` durable; `Internal` when that fails (fail-closed), else `Ok` after
    /// an `error!` line (fail-open). With a sink that keeps no records, `Ok` at once
    /// (nothing is serialized).
    pub async fn commit(&self, events: Vec<Event>) -> Result<(), KmsError> {
        if !self.sink.keeps_records() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(events.len());
        for e in &events {
            records.push(serialize(e)?);
        }
        match self.sink.append(records).await {
            Ok(()) => Ok(()),
            Err(e) if self.fail_open => {
                tracing::error!(
                    target: "hsm_kms::audit",
                    error = %e,
                    request_id = %events.first().map_or("-", |e| e.request_id.as_str()),
                    "AUDIT RECORD LOST: answered without a durable record (audit_fail_open)"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn only_allow_listed_members_are_recorded_with_cloudtrail_names() {
        let body = json!({
            "KeyId": "alias/x",
            "Plaintext": "c2VjcmV0",
            "CiphertextBlob": "YmxvYg==",
            "GrantTokens": ["tok"],
            "EncryptionContext": {"Department": "Eng", "KeyId": "v"},
            "Tags": [{"TagKey": "k", "TagValue": "v"}],
            "Constraints": {"EncryptionContextSubset": {"A": "b"}},
            "Signature": "c2ln",
            "Mac": "bWFj",
            "Message": "bXNn",
        });
        let p = kms_request_parameters(body.as_object().unwrap());
        assert_eq!(
            p,
            json!({
                "keyId": "alias/x",
                "encryptionContext": {"Department": "Eng", "KeyId": "v"},
                "tags": [{"tagKey": "k", "tagValue": "v"}],
                "constraints": {"encryptionContextSubset": {"A": "b"}},
            })
        );
        assert_eq!(kms_request_parameters(&Map::new()), Value::Null);
        let q = query_request_parameters(
            [
                ("UserName", "bob"),
                ("Action", "CreateUser"),
                ("TokenCode", "1"),
            ]
            .into_iter(),
        );
        assert_eq!(q, json!({"userName": "bob"}));
    }

    #[test]
    fn response_elements_keep_only_what_cloudtrail_shows() {
        let r = br#"{"GrantId":"g1","GrantToken":"secret-token"}"#;
        assert_eq!(
            kms_response_elements("CreateGrant", r),
            json!({"grantId": "g1"})
        );
        let r = br#"{"KeyId":"k","CiphertextBlob":"x","Plaintext":"y"}"#;
        assert_eq!(kms_response_elements("GenerateDataKey", r), Value::Null);
        let r = br#"{"KeyMetadata":{"AWSAccountId":"1","KeyId":"k"}}"#;
        assert_eq!(
            kms_response_elements("CreateKey", r),
            json!({"keyMetadata": {"aWSAccountId": "1", "keyId": "k"}})
        );
    }

    fn facts() -> CallFacts {
        CallFacts {
            request_id: "r".into(),
            source_ip: Some("127.0.0.1".parse().unwrap()),
            user_agent: Some("ua".into()),
            time: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            claimed_access_key_id: Some("AKIACLAIMED".into()),
        }
    }

    #[test]
    fn a_cross_account_call_is_recorded_for_each_account_and_identities_are_typed() {
        let p = Principal {
            access_key_id: "AKIA1".into(),
            account_id: "111111111111".into(),
            arn: "arn:aws:iam::111111111111:user/alice".into(),
            session: None,
        };
        let call = Call {
            source: Source::Kms,
            event_name: "Encrypt",
            principal: Some(&p),
            principal_id: Some("AIDAX".into()),
            read_only: true,
            request_parameters: Value::Null,
            response_elements: Value::Null,
            resources: vec![Resource::key(
                "arn:aws:kms:us-east-1:222222222222:key/k".into(),
            )],
            error: None,
            hsms: vec!["a".into()],
        };
        let ev = events(call, &facts(), "us-east-1", "999999999999");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].recipient_account_id, "111111111111");
        assert_eq!(ev[1].recipient_account_id, "222222222222");
        assert_ne!(ev[0].event_id, ev[1].event_id);
        assert!(ev[0].shared_event_id.is_some());
        assert_eq!(ev[0].shared_event_id, ev[1].shared_event_id);
        let v = serde_json::to_value(&ev[0]).unwrap();
        assert_eq!(v["userIdentity"]["type"], "IAMUser");
        assert_eq!(v["userIdentity"]["userName"], "alice");
        assert_eq!(v["eventTime"], "2023-11-14T22:13:20Z");
        assert_eq!(v["resources"][0]["type"], "AWS::KMS::Key");
        assert_eq!(v["resources"][0]["accountId"], "222222222222");
        assert!(v.get("errorCode").is_none());
        assert_eq!(v["additionalEventData"], serde_json::json!({"hsms": ["a"]}));

        let call = Call {
            source: Source::Sts,
            event_name: "GetCallerIdentity",
            principal: None,
            principal_id: None,
            read_only: true,
            request_parameters: Value::Null,
            response_elements: Value::Null,
            resources: vec![],
            error: Some(("SignatureDoesNotMatch", "bad")),
            hsms: Vec::new(),
        };
        let ev = events(call, &facts(), "us-east-1", "999999999999");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].recipient_account_id, "999999999999");
        assert!(ev[0].shared_event_id.is_none());
        let v = serde_json::to_value(&ev[0]).unwrap();
        assert_eq!(v["userIdentity"]["type"], "Unknown");
        assert_eq!(v["userIdentity"]["accessKeyId"], "AKIACLAIMED");
        assert_eq!(v["errorCode"], "SignatureDoesNotMatch");
        assert_eq!(v["eventSource"], "sts.amazonaws.com");
    }

    /// A sink that keeps no records, counting what it is handed.
    struct Discarding(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl AuditSink for Discarding {
        fn healthy(&self) -> bool {
            true
        }
        fn keeps_records(&self) -> bool {
            false
        }
        async fn append(&self, _records: Vec<Vec<u8>>) -> Result<(), KmsError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn response_dates_are_written_as_cloudtrail_writes_them() {
        use time::macros::datetime;
        assert_eq!(
            response_date(datetime!(2023-01-18 22:57:15 UTC)),
            "Jan 18, 2023 10:57:15 PM"
        );
        assert_eq!(
            response_date(datetime!(2026-12-04 00:05:09 +01:00)),
            "Dec 3, 2026 11:05:09 PM"
        );
        assert_eq!(
            response_date(datetime!(2026-07-09 12:56:54 UTC)),
            "Jul 9, 2026 12:56:54 PM"
        );
    }

    #[tokio::test]
    async fn a_sink_that_keeps_no_records_is_handed_none() {
        let sink = Arc::new(Discarding(std::sync::atomic::AtomicUsize::new(0)));
        let auditor = Auditor::new(sink.clone(), false, "us-east-1", "111122223333");
        let ev = || ServiceEvent {
            source: Source::Kms,
            event_name: "RotateKey",
            account: None,
            resources: Vec::new(),
            details: Value::Null,
            hsms: Vec::new(),
            time: OffsetDateTime::UNIX_EPOCH,
        };
        let event = service_event(ev(), "us-east-1", "111122223333");
        auditor.commit(vec![event]).await.unwrap();
        auditor.record_service_event(ev()).await;
        assert_eq!(sink.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!DisabledSink.keeps_records());
    }
}
