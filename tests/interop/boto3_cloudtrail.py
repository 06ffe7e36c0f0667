#!/usr/bin/env python3
"""boto3 CloudTrail (LookupEvents) and KMS GetKeyLastUsage checks against a running
hsm-kms server (same endpoint as KMS).

Run by tests/interop/run.sh. Needs KMS_ENDPOINT and the AWS_* variables of the
account root (the server's credentials.env). Uses boto3's own `cloudtrail`, `kms` and
`iam` clients with endpoint_url = the server. Prints one line per check and a closing
line "boto3-cloudtrail: N passed, M failed"; exits 1 if any check failed.
"""

import json
import os
import sys
import time
import uuid

import boto3
import botocore.config
from botocore.exceptions import ClientError

REGION = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
CONFIG = botocore.config.Config(
    region_name=REGION,
    connect_timeout=10,
    read_timeout=60,
    retries={"mode": "standard", "total_max_attempts": 1},
)
# LookupEvents allows two calls a second per account, as AWS; its clients retry a
# ThrottlingException as users' do (standard mode, enough attempts never to run out).
LOOKUP_CONFIG = CONFIG.merge(botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 10}))
SUFFIX = uuid.uuid4().hex[:8]
USER = f"interop-trail-{SUFFIX}"


def client(service, config=None, **creds):
    if config is None:
        config = LOOKUP_CONFIG if service == "cloudtrail" else CONFIG
    return boto3.client(service, endpoint_url=os.environ["KMS_ENDPOINT"], config=config, **creds)


from checks import Failure, check, run_suite  # noqa: E402 (tests/interop is on sys.path)


def expect_error(code, fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        got = e.response.get("Error", {}).get("Code")
        check(got == code, f"want {code}, got {got!r}: {e}")
        return e
    raise Failure(f"want {code}, the call succeeded")


def by(ct, key, value, **kwargs):
    return ct.lookup_events(
        LookupAttributes=[{"AttributeKey": key, "AttributeValue": value}], **kwargs
    )["Events"]


class Suite:
    def __init__(self):
        self.ct = client("cloudtrail")
        self.kms = client("kms")
        self.iam = client("iam")
        self.key = self.kms.create_key(Description=f"trail-{SUFFIX}")["KeyMetadata"]
        self.encrypt = self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"interop")

    def test_find_by_event_name_and_resource(self):
        rid = self.encrypt["ResponseMetadata"]["RequestId"]
        events = by(self.ct, "EventName", "Encrypt")
        mine = [e for e in events if json.loads(e["CloudTrailEvent"])["requestID"] == rid]
        check(len(mine) == 1, f"Encrypt {rid} not found once: {len(mine)}")
        e = mine[0]
        check(e["EventSource"] == "kms.amazonaws.com", e)
        check(e["ReadOnly"] == "true", e)
        check(hasattr(e["EventTime"], "year"), f"EventTime not a timestamp: {e['EventTime']!r}")
        check(
            e["Resources"] == [{"ResourceType": "AWS::KMS::Key", "ResourceName": self.key["Arn"]}],
            e["Resources"],
        )
        found = by(self.ct, "ResourceName", self.key["KeyId"])
        check({x["EventName"] for x in found} >= {"Encrypt"}, found)
        found = by(self.ct, "EventId", e["EventId"])
        check([x["EventId"] for x in found] == [e["EventId"]], found)

    def test_paginator_and_time_range(self):
        for _ in range(3):
            self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"x")
        pages = self.ct.get_paginator("lookup_events").paginate(
            LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": self.key["Arn"]}],
            PaginationConfig={"PageSize": 2},
        )
        ids = [e["EventId"] for p in pages for e in p["Events"]]
        check(len(ids) >= 4 and len(set(ids)) == len(ids), ids)
        now = time.time()
        past = self.ct.lookup_events(StartTime=now - 86400 * 400, EndTime=now - 86400 * 399)
        check(past["Events"] == [], past["Events"])
        expect_error("InvalidTimeRangeException", self.ct.lookup_events, StartTime=now, EndTime=now - 60)
        expect_error("InvalidNextTokenException", self.ct.lookup_events, NextToken="forged")
        expect_error(
            "InvalidLookupAttributesException",
            self.ct.lookup_events,
            LookupAttributes=[
                {"AttributeKey": "EventName", "AttributeValue": "Encrypt"},
                {"AttributeKey": "ReadOnly", "AttributeValue": "true"},
            ],
        )

    def test_permission_needed(self):
        self.iam.create_user(UserName=USER)
        k = self.iam.create_access_key(UserName=USER)["AccessKey"]
        user = client("cloudtrail", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        time.sleep(0.5)
        expect_error("AccessDeniedException", user.lookup_events)
        self.iam.put_user_policy(
            UserName=USER,
            PolicyName="trail",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "cloudtrail:LookupEvents", "Resource": "*"}]}
            ),
        )
        found = by(user, "Username", USER)
        check(any(e["EventName"] == "LookupEvents" for e in found), found)
        self.iam.delete_user_policy(UserName=USER, PolicyName="trail")
        self.iam.delete_access_key(UserName=USER, AccessKeyId=k["AccessKeyId"])
        self.iam.delete_user(UserName=USER)

    def test_throttled_over_two_calls_a_second_and_retried_by_the_sdk(self):
        # With no retries, a burst sees AWS's throttling error (400, "Rate exceeded") ...
        bare = client("cloudtrail", config=CONFIG)
        errors = []
        for _ in range(5):
            try:
                bare.lookup_events(MaxResults=1)
            except ClientError as e:
                errors.append(e.response)
        check(errors, "five back-to-back calls, none throttled")
        for r in errors:
            check(r["Error"]["Code"] == "ThrottlingException", r["Error"])
            check(r["Error"]["Message"] == "Rate exceeded", r["Error"])
            check(r["ResponseMetadata"]["HTTPStatusCode"] == 400, r["ResponseMetadata"])
        # ... which boto3 recognizes and retries: a burst of ten all answered.
        for _ in range(10):
            self.ct.lookup_events(MaxResults=1)

    def test_get_key_last_usage(self):
        r = self.kms.decrypt(CiphertextBlob=self.encrypt["CiphertextBlob"])
        rid = r["ResponseMetadata"]["RequestId"]
        u = self.kms.get_key_last_usage(KeyId=self.key["Arn"])
        check(u["KeyId"] == self.key["KeyId"], u)
        last = u["KeyLastUsage"]
        check(last["Operation"] == "Decrypt", last)
        check(last["KmsRequestId"] == rid, last)
        check(u["TrackingStartDate"] <= last["Timestamp"], u)
        check(u["KeyCreationDate"] == self.key["CreationDate"], u)
        found = by(self.ct, "EventId", last["CloudTrailEventId"])
        check(len(found) == 1 and found[0]["EventName"] == "Decrypt", found)


def main():
    suite = Suite()
    tests = [
        "test_find_by_event_name_and_resource",
        "test_paginator_and_time_range",
        "test_permission_needed",
        "test_throttled_over_two_calls_a_second_and_retried_by_the_sdk",
        "test_get_key_last_usage",
    ]
    return run_suite(suite, tests, "boto3-cloudtrail")


if __name__ == "__main__":
    sys.exit(main())
