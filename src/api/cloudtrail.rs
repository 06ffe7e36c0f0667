//! CloudTrail at the same endpoint as KMS: JSON 1.1 with `X-Amz-Target:
//! com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.<Op>`, SigV4 service
//! `cloudtrail`; one operation, `LookupEvents`, so that `aws cloudtrail lookup-events
//! --endpoint-url …` and boto3's `cloudtrail` client read this service's trail.
//!
//! The request path is the KMS one, shortened: authenticate (read the body, check the
//! protocol's `Content-Type`, find the operation, verify SigV4 for `cloudtrail`) → parse
//! (the members, with CloudTrail's errors) → execute (`kms::lookup`: authorize, filter,
//! page) → record (the call's own CloudTrail record, `eventSource`
//! `cloudtrail.amazonaws.com`, durable before the answer) → respond.

use super::error::{content_type, ApiError};
use super::input::Input;
use super::{pipeline, set_headers, AppState};
use crate::auth::Principal;
use crate::kms::audit::{self, Call, CallFacts, Source};
use crate::kms::lookup::{self, Attribute, Lookup};
use crate::kms::model::epoch_seconds;
use crate::kms::KmsError;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tracing::Instrument;

/// The `X-Amz-Target` prefix of every CloudTrail operation.
pub(crate) const TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.";

/// The longest `AttributeValue` CloudTrail accepts.
const ATTRIBUTE_VALUE_MAX: usize = 2000;

/// Whether a request is for CloudTrail (its `X-Amz-Target` prefix).
pub(crate) fn is_cloudtrail(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(TARGET_PREFIX))
}

/// What a call was, as far as it got: what is recorded.
struct Attempt {
    operation: String,
    principal: Option<Principal>,
    request_parameters: Value,
}

/// Serve one CloudTrail request (the trail must be healthy before, and the call's record
/// durable before the answer, as for KMS calls).
pub(crate) async fn handle(app: &AppState, req: Request) -> Response {
    let request_id = crate::kms::types::random_uuid().to_string();
    let operation = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(audit::event_name)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        operation = %operation
    );
    let started = std::time::Instant::now();
    // A bounded label: the one operation served here, or `unknown`.
    let label = if operation == "LookupEvents" {
        "LookupEvents"
    } else {
        "unknown"
    };
    async {
        let facts = pipeline::call_facts(app, &req, &request_id);
        let mut call = Attempt {
            operation,
            principal: None,
            request_parameters: Value::Null,
        };
        let _expected = app.audit.expect_record();
        let mut result = match app.audit.admit() {
            Ok(()) => run(app, req, &mut call).await,
            Err(e) => Err(e.into()),
        };
        let events = record(app, &call, &result, &facts);
        let committing = std::time::Instant::now();
        if let Err(e) = app.audit.commit(events).await {
            result = Err(e.into());
        }
        app.metrics.record_audit_write(committing.elapsed());
        app.metrics.record_call(
            "cloudtrail",
            label,
            result.as_ref().map_or_else(|e| e.aws_type, |_| "OK"),
            started.elapsed(),
        );
        match result {
            Ok(mut r) => {
                set_headers(&mut r, &request_id);
                r
            }
            Err(e) => e.into_response_with(&request_id),
        }
    }
    .instrument(span)
    .await
}

fn record(
    app: &AppState,
    call: &Attempt,
    result: &Result<Response, ApiError>,
    facts: &CallFacts,
) -> Vec<audit::Event> {
    let error = result.as_ref().err();
    if let Some(e) = error {
        tracing::info!(
            target: "hsm_kms::audit",
            operation = %call.operation,
            principal = %call.principal.as_ref().map_or("-", |p| p.arn.as_str()),
            error = %e.aws_type,
            "call failed"
        );
    }
    app.audit.events(
        Call {
            source: Source::CloudTrail,
            event_name: &call.operation,
            principal: call.principal.as_ref(),
            principal_id: call
                .principal
                .as_ref()
                .and_then(|p| pipeline::principal_id(app, p)),
            read_only: true,
            request_parameters: call.request_parameters.clone(),
            response_elements: Value::Null,
            resources: Vec::new(),
            error: error.map(|e| (e.aws_type, e.message.as_str())),
            hsms: Vec::new(),
        },
        facts,
    )
}

async fn run(app: &AppState, req: Request, call: &mut Attempt) -> Result<Response, ApiError> {
    let (parts, body) = pipeline::post_body(app, req).await?;
    pipeline::protocol_content_type(&parts.headers)?;
    if call.operation != "LookupEvents" {
        return Err(ApiError::unknown_operation());
    }
    let principal = pipeline::verify_signature_for(app, &parts, &body, "cloudtrail")?;
    let principal = &*call.principal.insert(principal);
    let json = pipeline::json_body(&body)?;
    call.request_parameters = request_parameters(&json);
    let query = parse(&Input::new(&json))?;
    let found = lookup::lookup_events(&app.kms, &app.audit, principal, query)
        .await
        .map_err(|e| match e {
            KmsError::InvalidMarker(_) => ApiError::new(
                "InvalidNextTokenException",
                "Invalid NextToken: it was not issued for these parameters.",
            ),
            other => other.into(),
        })?;
    let bytes = serde_json::to_vec(&found).map_err(|e| {
        tracing::error!(error = %e, "response serialization failed");
        ApiError::new("KMSInternalException", "An internal error occurred.")
    })?;
    let mut r = bytes.into_response();
    r.headers_mut().insert("content-type", content_type());
    Ok(r)
}

/// CloudTrail's `requestParameters` of a `LookupEvents` call (never `NextToken`).
fn request_parameters(body: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (name, wire) in [
        ("lookupAttributes", "LookupAttributes"),
        ("startTime", "StartTime"),
        ("endTime", "EndTime"),
        ("eventCategory", "EventCategory"),
        ("maxResults", "MaxResults"),
    ] {
        if let Some(v) = body.get(wire) {
            let v = match v {
                Value::Array(a) => Value::Array(
                    a.iter()
                        .map(|e| match e {
                            Value::Object(m) => Value::Object(
                                m.iter()
                                    .filter(|(k, _)| *k == "AttributeKey" || *k == "AttributeValue")
                                    .map(|(k, v)| {
                                        let k = if k == "AttributeKey" {
                                            "attributeKey"
                                        } else {
                                            "attributeValue"
                                        };
                                        (k.to_string(), v.clone())
                                    })
                                    .collect(),
                            ),
                            _ => Value::Null,
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            out.insert(name.to_string(), v);
        }
    }
    if out.is_empty() {
        Value::Null
    } else {
        Value::Object(out)
    }
}

fn invalid_attributes(message: impl Into<String>) -> ApiError {
    ApiError::new("InvalidLookupAttributesException", message)
}

/// A `Date` member: epoch seconds (a JSON number, as the SDKs send it).
fn date(i: &Input<'_>, m: &str) -> Result<Option<time::OffsetDateTime>, ApiError> {
    match i.raw(m) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(epoch_seconds::from_f64)
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    "InvalidTimeRangeException",
                    format!("{m} is outside the range of possible values."),
                )
            }),
        Some(_) => Err(ApiError::serialization(format!(
            "{m} must be a timestamp (epoch seconds)"
        ))),
    }
}

/// The members of a `LookupEvents` request, with CloudTrail's errors.
fn parse(i: &Input<'_>) -> Result<Lookup, ApiError> {
    let attributes = match i.raw("LookupAttributes") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(ApiError::serialization(
                "LookupAttributes must be a list of lookup attributes",
            ))
        }
    };
    if attributes.len() > 1 {
        return Err(invalid_attributes(
            "You can only specify one lookup attribute.",
        ));
    }
    let attribute = match attributes.first() {
        None => None,
        Some(Value::Object(a)) => {
            let key = a.get("AttributeKey").and_then(Value::as_str);
            let value = a.get("AttributeValue").and_then(Value::as_str);
            let (Some(key), Some(value)) = (key, value) else {
                return Err(invalid_attributes(
                    "A lookup attribute needs an AttributeKey and an AttributeValue.",
                ));
            };
            if value.is_empty() || value.chars().count() > ATTRIBUTE_VALUE_MAX {
                return Err(invalid_attributes(format!(
                    "AttributeValue must be 1 to {ATTRIBUTE_VALUE_MAX} characters long."
                )));
            }
            let v = value.to_string();
            Some(match key {
                "EventId" => Attribute::EventId(v),
                "EventName" => Attribute::EventName(v),
                "ReadOnly" => match value {
                    "true" | "false" => Attribute::ReadOnly(v),
                    _ => {
                        return Err(invalid_attributes(
                            "The ReadOnly attribute value must be true or false.",
                        ))
                    }
                },
                "Username" => Attribute::Username(v),
                "ResourceType" => Attribute::ResourceType(v),
                "ResourceName" => Attribute::ResourceName(v),
                "EventSource" => Attribute::EventSource(v),
                "AccessKeyId" => Attribute::AccessKeyId(v),
                other => {
                    return Err(invalid_attributes(format!(
                        "Invalid AttributeKey: {}. Valid keys are EventId, EventName, ReadOnly, \
                         Username, ResourceType, ResourceName, EventSource and AccessKeyId.",
                        audit::event_name(other)
                    )))
                }
            })
        }
        Some(_) => {
            return Err(ApiError::serialization(
                "A lookup attribute must be an object",
            ))
        }
    };
    let start = date(i, "StartTime")?;
    let end = date(i, "EndTime")?;
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return Err(ApiError::new(
                "InvalidTimeRangeException",
                "The start time must be at or before the end time.",
            ));
        }
    }
    let max_results = match i.raw("MaxResults") {
        None | Some(Value::Null) => lookup::MAX_RESULTS,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(m) if (1..=lookup::MAX_RESULTS as i64).contains(&m) => m as usize,
            _ => {
                return Err(ApiError::new(
                    "InvalidMaxResultsException",
                    format!("MaxResults must be from 1 to {}.", lookup::MAX_RESULTS),
                ))
            }
        },
        Some(_) => return Err(ApiError::serialization("MaxResults must be an integer")),
    };
    let next_token = i.string("NextToken")?.map(str::to_string);
    let insight = match i.string("EventCategory")? {
        None => false,
        Some("insight") => true,
        Some(_) => {
            return Err(ApiError::new(
                "InvalidEventCategoryException",
                "The only valid EventCategory is insight.",
            ))
        }
    };
    Ok(Lookup {
        attribute,
        start,
        end,
        max_results,
        next_token,
        insight,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn parsed(v: Value) -> Result<Lookup, ApiError> {
        parse(&Input::new(v.as_object().unwrap()))
    }

    fn error(v: Value) -> &'static str {
        parsed(v).unwrap_err().aws_type
    }

    #[test]
    fn members_parse_with_cloudtrails_errors() {
        let q = parsed(json!({})).unwrap();
        assert_eq!(q.max_results, 50);
        assert!(q.attribute.is_none());
        let q = parsed(json!({"LookupAttributes": [{"AttributeKey": "EventName",
            "AttributeValue": "CreateKey"}], "StartTime": 1.5, "EndTime": 2, "MaxResults": 3}))
        .unwrap();
        assert_eq!(q.attribute, Some(Attribute::EventName("CreateKey".into())));
        assert_eq!(q.max_results, 3);
        let two = json!({"LookupAttributes": [
            {"AttributeKey": "EventName", "AttributeValue": "a"},
            {"AttributeKey": "EventName", "AttributeValue": "b"}]});
        assert_eq!(error(two), "InvalidLookupAttributesException");
        for bad in [
            json!({"LookupAttributes": [{"AttributeKey": "Nope", "AttributeValue": "a"}]}),
            json!({"LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": ""}]}),
            json!({"LookupAttributes": [{"AttributeKey": "ReadOnly", "AttributeValue": "x"}]}),
            json!({"LookupAttributes": [{"AttributeKey": "EventName"}]}),
        ] {
            assert_eq!(error(bad), "InvalidLookupAttributesException");
        }
        assert_eq!(
            error(json!({"StartTime": 10, "EndTime": 5})),
            "InvalidTimeRangeException"
        );
        assert_eq!(
            error(json!({"StartTime": 1e300})),
            "InvalidTimeRangeException"
        );
        for m in [0, 51, -1] {
            assert_eq!(
                error(json!({ "MaxResults": m })),
                "InvalidMaxResultsException"
            );
        }
        assert_eq!(
            error(json!({"EventCategory": "data"})),
            "InvalidEventCategoryException"
        );
        assert_eq!(error(json!({"StartTime": "x"})), "SerializationException");
        assert_eq!(
            error(json!({"LookupAttributes": "x"})),
            "SerializationException"
        );
    }

    #[test]
    fn the_next_token_is_never_recorded() {
        let b = json!({"NextToken": "t", "MaxResults": 5,
            "LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": "Encrypt"}]});
        let p = request_parameters(b.as_object().unwrap());
        assert_eq!(
            p,
            json!({"maxResults": 5, "lookupAttributes":
                [{"attributeKey": "EventName", "attributeValue": "Encrypt"}]})
        );
    }
}
