//! CloudTrail `LookupEvents` and KMS `GetKeyLastUsage` over HTTP with real tokens: events
//! found by each lookup attribute and by time range, newest first, paged with `NextToken`
//! (a forged or re-used-with-other-parameters token refused); another account's events
//! invisible; `cloudtrail:LookupEvents` required of IAM users (the root user always may);
//! CloudTrail's errors; and `GetKeyLastUsage` naming the last cryptographic call with the
//! request id the client received and the event id LookupEvents finds, kept across a
//! restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;

const A: &str = "111122223333";

const LOOKUP_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"cloudtrail:LookupEvents","Resource":"*"}]}"#;

/// LookupEvents with `body`, required to succeed.
async fn lookup(c: &Client, body: Value) -> Value {
    let r = c.cloudtrail("LookupEvents", body.clone()).await;
    assert_eq!(r.status, 200, "LookupEvents {body}: {}", r.body);
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/x-amz-json-1.1")
    );
    r.body
}

/// The events of a lookup by one attribute (one page of up to 50).
async fn by(c: &Client, key: &str, value: &str) -> Vec<Value> {
    let r = lookup(
        c,
        json!({"LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}]}),
    )
    .await;
    r["Events"].as_array().unwrap().clone()
}

/// An event's record (its `CloudTrailEvent`, parsed).
fn record(e: &Value) -> Value {
    serde_json::from_str(e["CloudTrailEvent"].as_str().unwrap()).unwrap()
}

/// The event of the call answered with `request_id`, among `events`.
fn of_request<'a>(events: &'a [Value], request_id: &str) -> Option<&'a Value> {
    events.iter().find(|e| record(e)["requestID"] == request_id)
}

/// Every event of a lookup, following `NextToken` with pages of `page`.
async fn all_pages(c: &Client, mut body: Value, page: u64) -> (Vec<Value>, usize) {
    body["MaxResults"] = json!(page);
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let r = lookup(c, body.clone()).await;
        pages += 1;
        let events = r["Events"].as_array().unwrap();
        assert!(events.len() as u64 <= page);
        out.extend(events.iter().cloned());
        match r["NextToken"].as_str() {
            Some(t) => body["NextToken"] = json!(t),
            None => return (out, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_events_finds_by_each_attribute_pages_and_shows_only_the_callers_account() {
    let s = service().await;
    let root = &s.client;
    let key = root.create_key(json!({"Description": "lookup"})).await;
    let arn = format!("arn:aws:kms:us-east-1:{A}:key/{key}");
    let mut encrypts = Vec::new();
    let mut blob = Value::Null;
    for _ in 0..5 {
        let r = root
            .call("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"hi")}))
            .await;
        assert_eq!(r.status, 200);
        blob = r.body["CiphertextBlob"].clone();
        encrypts.push(r.request_id.unwrap());
    }
    let dec = root.call("Decrypt", json!({"CiphertextBlob": blob})).await;
    assert_eq!(dec.status, 200);
    let alice = new_user(root, "alice", &[LOOKUP_POLICY]).await;
    let bob = new_user(root, "bob", &[]).await;
    let bobs = bob.call("DescribeKey", json!({"KeyId": key})).await;
    assert_eq!(bobs.error_type(), "AccessDeniedException");
    let bobs = bobs.request_id.unwrap();

    // EventName, and the shape of each event.
    let events = by(root, "EventName", "Encrypt").await;
    assert!(events.iter().all(|e| e["EventName"] == "Encrypt"));
    for id in &encrypts {
        let e = of_request(&events, id).expect("every Encrypt found");
        assert_eq!(e["EventSource"], "kms.amazonaws.com");
        assert_eq!(e["ReadOnly"], "true");
        assert_eq!(e["Username"], "root");
        assert_eq!(e["AccessKeyId"], root.cred.access_key_id.as_str());
        assert!(e["EventTime"].as_i64().unwrap() > 1_700_000_000);
        assert_eq!(
            e["Resources"],
            json!([{"ResourceType": "AWS::KMS::Key", "ResourceName": arn}])
        );
        let r = record(e);
        assert_eq!(r["eventID"], e["EventId"]);
        assert_eq!(r["recipientAccountId"], A);
    }
    // Newest first: the last Encrypt comes before the first.
    let pos = |id: &str| {
        events
            .iter()
            .position(|e| record(e)["requestID"] == id)
            .unwrap()
    };
    assert!(pos(&encrypts[4]) < pos(&encrypts[0]));
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["EventTime"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // EventId.
    let first = of_request(&events, &encrypts[0]).unwrap();
    let id = first["EventId"].as_str().unwrap();
    let found = by(root, "EventId", id).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["EventId"], id);

    // ResourceName (key id and key ARN), ResourceType.
    for name in [key.as_str(), arn.as_str()] {
        let found = by(root, "ResourceName", name).await;
        assert!(of_request(&found, &encrypts[2]).is_some(), "by {name}");
        assert!(of_request(&found, dec.request_id.as_deref().unwrap()).is_some());
        assert!(found
            .iter()
            .all(|e| e["Resources"][0]["ResourceName"] == arn.as_str()));
    }
    let found = by(root, "ResourceType", "AWS::KMS::Key").await;
    assert!(of_request(&found, &encrypts[1]).is_some());
    assert!(found
        .iter()
        .all(|e| e["Resources"][0]["ResourceType"] == "AWS::KMS::Key"));

    // Username and AccessKeyId (a denied call is an event too).
    let found = by(root, "Username", "bob").await;
    assert!(of_request(&found, &bobs).is_some());
    assert!(found.iter().all(|e| e["Username"] == "bob"));
    let found = by(root, "AccessKeyId", &bob.cred.access_key_id).await;
    assert!(of_request(&found, &bobs).is_some());
    assert!(found
        .iter()
        .all(|e| e["AccessKeyId"] == bob.cred.access_key_id.as_str()));
    assert_eq!(record(&found[0])["errorCode"], "AccessDeniedException");

    // ReadOnly, EventSource.
    let found = by(root, "ReadOnly", "false").await;
    assert!(found.iter().any(|e| e["EventName"] == "CreateKey"));
    assert!(found.iter().all(|e| e["ReadOnly"] == "false"));
    let found = by(root, "EventSource", "iam.amazonaws.com").await;
    assert!(found.iter().any(|e| e["EventName"] == "CreateUser"));
    assert!(found
        .iter()
        .all(|e| e["EventSource"] == "iam.amazonaws.com"));
    // LookupEvents calls are events themselves.
    let found = by(root, "EventSource", "cloudtrail.amazonaws.com").await;
    assert!(!found.is_empty());
    assert!(found.iter().all(|e| e["EventName"] == "LookupEvents"));

    // Time range: now includes the calls; a range in the past holds none.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let r = lookup(
        root,
        json!({"StartTime": now - 600, "EndTime": now + 5,
            "LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": "Encrypt"}]}),
    )
    .await;
    assert_eq!(r["Events"].as_array().unwrap().len(), 5);
    let r = lookup(
        root,
        json!({"StartTime": 946_684_800, "EndTime": 946_771_200}),
    )
    .await;
    assert_eq!(r["Events"], json!([]));
    assert!(r.get("NextToken").is_none());

    // Pagination: pages of 2 find the same 5 Encrypts as one page, once each.
    let body =
        json!({"LookupAttributes": [{"AttributeKey": "EventName", "AttributeValue": "Encrypt"}]});
    let (paged, pages) = all_pages(root, body.clone(), 2).await;
    assert_eq!(pages, 3);
    let ids: Vec<&str> = paged
        .iter()
        .map(|e| e["EventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);
    let single: Vec<&str> = events
        .iter()
        .map(|e| e["EventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, single);
    // Without an attribute, paging walks the whole trail of the account.
    let (everything, _) = all_pages(root, json!({}), 7).await;
    let (in_fifties, _) = all_pages(root, json!({}), 50).await;
    assert!(everything.len() >= 15);
    assert_eq!(
        everything
            .iter()
            .map(|e| e["EventId"].clone())
            .collect::<HashSet<_>>()
            .len(),
        everything.len()
    );
    // (the second walk also sees the first walk's own LookupEvents calls)
    assert!(in_fifties.len() >= everything.len());

    // NextToken: forged, or used with other parameters.
    let mut page = body.clone();
    page["MaxResults"] = json!(1);
    let token = lookup(root, page).await["NextToken"]
        .as_str()
        .unwrap()
        .to_string();
    for (forged, params) in [
        ("bm90IGEgdG9rZW4".to_string(), body.clone()),
        (format!("{token}x"), body.clone()),
        (token.clone(), json!({})),
    ] {
        let mut b = params;
        b["NextToken"] = json!(forged);
        let r = root.cloudtrail("LookupEvents", b).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error_type(), "InvalidNextTokenException");
    }

    // CloudTrail's errors, never a 5xx.
    for (b, error) in [
        (
            json!({"LookupAttributes": [
                {"AttributeKey": "EventName", "AttributeValue": "Encrypt"},
                {"AttributeKey": "Username", "AttributeValue": "root"}]}),
            "InvalidLookupAttributesException",
        ),
        (
            json!({"LookupAttributes": [{"AttributeKey": "Colour", "AttributeValue": "x"}]}),
            "InvalidLookupAttributesException",
        ),
        (
            json!({"StartTime": now, "EndTime": now - 10}),
            "InvalidTimeRangeException",
        ),
        (json!({"MaxResults": 51}), "InvalidMaxResultsException"),
        (json!({"MaxResults": 0}), "InvalidMaxResultsException"),
        (
            json!({"EventCategory": "data"}),
            "InvalidEventCategoryException",
        ),
        (json!({"StartTime": "yesterday"}), "SerializationException"),
    ] {
        let r = root.cloudtrail("LookupEvents", b.clone()).await;
        assert_eq!(r.status, 400, "{b}: {}", r.body);
        assert_eq!(r.error_type(), error, "{b}");
    }
    let r = root.cloudtrail("CreateTrail", json!({})).await;
    assert_eq!(r.error_type(), "UnknownOperationException");

    // Permission: bob (no policy) is refused, alice (allowed) is not.
    let r = bob.cloudtrail("LookupEvents", json!({})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_type(), "AccessDeniedException");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("cloudtrail:LookupEvents"),
        "{}",
        r.body
    );
    let found = by(&alice, "EventName", "Encrypt").await;
    assert_eq!(found.len(), 5);
    // The refusal is recorded too.
    let refused = by(root, "Username", "bob").await;
    assert!(refused
        .iter()
        .any(|e| e["EventName"] == "LookupEvents"
            && record(e)["errorCode"] == "AccessDeniedException"));

    // Another account sees only its own events.
    let other = new_account(&s, "444455556666").await;
    let theirs = other.create_key(json!({})).await;
    other
        .ok("Encrypt", json!({"KeyId": theirs, "Plaintext": b64(b"x")}))
        .await;
    assert!(by(root, "ResourceName", &theirs).await.is_empty());
    assert!(by(&other, "ResourceName", &key).await.is_empty());
    let mine = by(&other, "EventName", "Encrypt").await;
    assert_eq!(mine.len(), 1);
    let (all_theirs, _) = all_pages(&other, json!({}), 50).await;
    assert!(all_theirs
        .iter()
        .all(|e| record(e)["recipientAccountId"] == "444455556666"));
    let (all_mine, _) = all_pages(root, json!({}), 50).await;
    assert!(all_mine
        .iter()
        .all(|e| record(e)["recipientAccountId"] == A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_key_last_usage_names_the_last_cryptographic_call_and_survives_a_restart() {
    let s = service().await;
    let root = &s.client;
    let key = root.create_key(json!({})).await;
    let arn = format!("arn:aws:kms:us-east-1:{A}:key/{key}");

    // Never used: an empty KeyLastUsage; tracking started with the key.
    let u = root.ok("GetKeyLastUsage", json!({"KeyId": key})).await;
    assert_eq!(u["KeyId"], key.as_str());
    assert_eq!(u["KeyLastUsage"], json!({}));
    let created = root.ok("DescribeKey", json!({"KeyId": key})).await["KeyMetadata"]
        ["CreationDate"]
        .as_f64()
        .unwrap();
    assert_eq!(u["KeyCreationDate"].as_f64().unwrap(), created);
    assert_eq!(u["TrackingStartDate"].as_f64().unwrap(), created);

    // After Encrypt: the operation, the request id answered, the event LookupEvents finds.
    let enc = root
        .call(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"secret")}),
        )
        .await;
    assert_eq!(enc.status, 200);
    let enc_id = enc.request_id.clone().unwrap();
    let u = root.ok("GetKeyLastUsage", json!({"KeyId": arn})).await;
    let last = &u["KeyLastUsage"];
    assert_eq!(last["Operation"], "Encrypt");
    assert_eq!(last["KmsRequestId"], enc_id.as_str());
    assert!(last["Timestamp"].as_f64().unwrap() >= created.floor());
    let event_id = last["CloudTrailEventId"].as_str().unwrap();
    let found = by(root, "EventId", event_id).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["EventName"], "Encrypt");
    assert_eq!(record(&found[0])["requestID"], enc_id.as_str());

    // After Decrypt; a failed Decrypt and a DescribeKey change nothing.
    let dec = root
        .call(
            "Decrypt",
            json!({"CiphertextBlob": enc.body["CiphertextBlob"]}),
        )
        .await;
    assert_eq!(dec.status, 200);
    let dec_id = dec.request_id.unwrap();
    let bad = root
        .call(
            "Decrypt",
            json!({"CiphertextBlob": enc.body["CiphertextBlob"],
                "EncryptionContext": {"wrong": "context"}}),
        )
        .await;
    assert_eq!(bad.error_type(), "InvalidCiphertextException");
    root.ok("DescribeKey", json!({"KeyId": key})).await;
    let u = root.ok("GetKeyLastUsage", json!({"KeyId": key})).await;
    assert_eq!(u["KeyLastUsage"]["Operation"], "Decrypt");
    assert_eq!(u["KeyLastUsage"]["KmsRequestId"], dec_id.as_str());
    let event_id = u["KeyLastUsage"]["CloudTrailEventId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        record(&by(root, "EventId", &event_id).await[0])["requestID"],
        dec_id.as_str()
    );

    // Errors: no such key, an alias (not supported), no KeyId; never a 5xx.
    for (b, error) in [
        (
            json!({"KeyId": "11111111-2222-3333-4444-555555555555"}),
            "NotFoundException",
        ),
        (json!({}), "ValidationException"),
    ] {
        let r = root.call("GetKeyLastUsage", b.clone()).await;
        assert_eq!(r.status, 400, "{b}: {}", r.body);
        assert_eq!(r.error_type(), error, "{b}");
    }
    root.ok(
        "CreateAlias",
        json!({"AliasName": "alias/used", "TargetKeyId": key}),
    )
    .await;
    let r = root
        .call("GetKeyLastUsage", json!({"KeyId": "alias/used"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A user without kms:GetKeyLastUsage is refused.
    let bob = new_user(root, "bob", &[]).await;
    let r = bob.call("GetKeyLastUsage", json!({"KeyId": arn})).await;
    assert_eq!(r.error_type(), "AccessDeniedException");

    // Kept across a restart once written (by the next maintenance pass).
    s.running.kms.flush_key_usage().await.unwrap();
    let Service {
        tokens, running, ..
    } = s;
    running.stop().await;
    let (running, root) = start_on(&tokens, std::sync::Arc::new(hsm_kms::clock::SystemClock)).await;
    let u = root.ok("GetKeyLastUsage", json!({"KeyId": key})).await;
    assert_eq!(u["KeyLastUsage"]["Operation"], "Decrypt");
    assert_eq!(u["KeyLastUsage"]["KmsRequestId"], dec_id.as_str());
    assert_eq!(u["KeyLastUsage"]["CloudTrailEventId"], event_id.as_str());
    assert_eq!(u["TrackingStartDate"].as_f64().unwrap(), created);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_events_allows_two_calls_a_second_per_account_as_aws_then_throttles() {
    // The service's defaults (AWS's rate), on a clock that moves only when told.
    let clock = hsm_kms::clock::ManualClock::new(time::OffsetDateTime::now_utc());
    let tokens = tokens(&["a", "b"]);
    let audit_dir = tokens.dir.path().join("audit");
    let (running, root) = start_audit(
        &tokens,
        std::sync::Arc::new(clock.clone()),
        fast_options(),
        std::time::Duration::from_secs(3600),
        hsm_kms::app::AuditOptions::in_dir(audit_dir.clone()),
    )
    .await;
    let throttled = |r: &Reply| {
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error_type(), "ThrottlingException", "{}", r.body);
        assert_eq!(r.body["message"], "Rate exceeded");
    };

    // A burst of two, then refused; a refused call takes nothing, and half a second
    // later there is one call again, not two.
    lookup(&root, json!({})).await;
    lookup(&root, json!({"MaxResults": 1})).await;
    throttled(&root.cloudtrail("LookupEvents", json!({})).await);
    clock.advance(std::time::Duration::from_millis(499));
    throttled(&root.cloudtrail("LookupEvents", json!({})).await);
    clock.advance(std::time::Duration::from_millis(1));
    lookup(&root, json!({})).await;
    throttled(&root.cloudtrail("LookupEvents", json!({})).await);
    // Idle time banks at most a burst of two; a call refused for its parameters (a
    // forged NextToken, a MaxResults out of range) uses none.
    clock.advance(std::time::Duration::from_secs(60));
    for b in [json!({"NextToken": "Zm9yZ2Vk"}), json!({"MaxResults": 51})] {
        let r = root.cloudtrail("LookupEvents", b).await;
        assert_ne!(r.error_type(), "ThrottlingException", "{}", r.body);
        assert_eq!(r.status, 400, "{}", r.body);
    }
    lookup(&root, json!({})).await;
    lookup(&root, json!({})).await;
    throttled(&root.cloudtrail("LookupEvents", json!({})).await);

    // The limit is per account: another account's root still has its two.
    let s = Service {
        tokens,
        running,
        client: root.clone(),
    };
    let other = new_account(&s, "444455556666").await;
    lookup(&other, json!({})).await;
    lookup(&other, json!({})).await;
    throttled(&other.cloudtrail("LookupEvents", json!({})).await);

    // A caller refused permission is told so (not throttled) and uses none of its
    // account's calls.
    let bob = new_user(&root, "bob", &[]).await;
    clock.advance(std::time::Duration::from_secs(1));
    for _ in 0..3 {
        let r = bob.cloudtrail("LookupEvents", json!({})).await;
        assert_eq!(r.error_type(), "AccessDeniedException", "{}", r.body);
    }
    lookup(&root, json!({})).await;
    lookup(&root, json!({})).await;
    throttled(&root.cloudtrail("LookupEvents", json!({})).await);

    // Each throttled call is in the trail, with its error.
    let (_, events) = trail(&audit_dir);
    let refused = events
        .iter()
        .filter(|e| e["eventName"] == "LookupEvents" && e["errorCode"] == "ThrottlingException")
        .count();
    assert_eq!(refused, 6);
    s.running.stop().await;
}
