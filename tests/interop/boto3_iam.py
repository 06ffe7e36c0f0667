#!/usr/bin/env python3
"""boto3 IAM and STS checks against a running hsm-kms server (same endpoint as KMS).

Run by tests/interop/run.sh. Needs KMS_ENDPOINT and the AWS_* variables of the
account root (the server's credentials.env). Uses boto3's own `iam` and `sts`
clients with endpoint_url = the server. Prints one line per check and a closing
line "boto3-iam: N passed, M failed"; exits 1 if any check failed.
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
SUFFIX = uuid.uuid4().hex[:8]
USER = f"interop-{SUFFIX}"
ROLE = f"interop-role-{SUFFIX}"


def client(service, **creds):
    return boto3.client(service, endpoint_url=os.environ["KMS_ENDPOINT"], config=CONFIG, **creds)


from checks import Failure, check, run_suite  # noqa: E402 (tests/interop is on sys.path)


def expect_error(code, status, fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        got = e.response.get("Error", {}).get("Code")
        http = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        check(got == code, f"want {code}, got {got!r}: {e}")
        check(http == status, f"want HTTP {status} for {code}, got {http}")
        return e
    raise Failure(f"want {code}, the call succeeded")


def eventually(fn, secs=5):
    end = time.time() + secs
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001
            if time.time() > end:
                raise
            time.sleep(0.2)


class Suite:
    def __init__(self):
        self.iam = client("iam")
        self.sts = client("sts")
        self.account = self.sts.get_caller_identity()["Account"]
        self.user_arn = f"arn:aws:iam::{self.account}:user/interop/{USER}"
        self.key = None

    def test_create_get_list_user(self):
        u = self.iam.create_user(UserName=USER, Path="/interop/")["User"]
        check(u["Arn"] == self.user_arn, u)
        check(u["UserId"].startswith("AIDA") and len(u["UserId"]) == 21, u)
        check(self.iam.get_user(UserName=USER)["User"]["UserId"] == u["UserId"], "get_user")
        names = [x["UserName"] for x in self.iam.list_users(PathPrefix="/interop/")["Users"]]
        check(USER in names, names)
        pages = list(self.iam.get_paginator("list_users").paginate(PaginationConfig={"PageSize": 1}))
        check(any(x["UserName"] == USER for p in pages for x in p["Users"]), "paginator")
        me = self.iam.get_user()["User"]
        check(me["Arn"] == f"arn:aws:iam::{self.account}:root", me)

    def test_user_errors(self):
        expect_error("EntityAlreadyExists", 409, self.iam.create_user, UserName=USER)
        expect_error("NoSuchEntity", 404, self.iam.get_user, UserName="no-such-user-" + SUFFIX)
        expect_error("ValidationError", 400, self.iam.create_user, UserName="bad name")

    def test_access_keys(self):
        k = self.iam.create_access_key(UserName=USER)["AccessKey"]
        check(k["AccessKeyId"].startswith("AKIA") and k["Status"] == "Active", k)
        self.key = k
        k2 = self.iam.create_access_key(UserName=USER)["AccessKey"]
        expect_error("LimitExceeded", 409, self.iam.create_access_key, UserName=USER)
        self.iam.delete_access_key(UserName=USER, AccessKeyId=k2["AccessKeyId"])
        listed = self.iam.list_access_keys(UserName=USER)["AccessKeyMetadata"]
        check([x["AccessKeyId"] for x in listed] == [k["AccessKeyId"]], listed)
        user_sts = client("sts", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        who = eventually(user_sts.get_caller_identity)
        check(who["Arn"] == self.user_arn, who)

    def test_inactive_key_refused_then_active_again(self):
        k = self.key
        user_sts = client("sts", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        self.iam.update_access_key(UserName=USER, AccessKeyId=k["AccessKeyId"], Status="Inactive")
        expect_error("InvalidClientTokenId", 403, user_sts.get_caller_identity)
        self.iam.update_access_key(UserName=USER, AccessKeyId=k["AccessKeyId"], Status="Active")
        user_sts.get_caller_identity()

    def test_user_policies_and_access_denied(self):
        k = self.key
        user_iam = client("iam", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        e = expect_error("AccessDenied", 403, user_iam.list_users)
        check("because no identity-based policy allows the iam:ListUsers action" in str(e), e)
        doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iam:ListUsers", "sts:AssumeRole"], "Resource": "*"}]}
        self.iam.put_user_policy(UserName=USER, PolicyName="p", PolicyDocument=json.dumps(doc))
        got = self.iam.get_user_policy(UserName=USER, PolicyName="p")
        check(got["PolicyDocument"] == doc, got)  # boto3 decodes the URL-encoded JSON
        check(self.iam.list_user_policies(UserName=USER)["PolicyNames"] == ["p"], "list_user_policies")
        user_iam.list_users()
        expect_error("MalformedPolicyDocument", 400, self.iam.put_user_policy, UserName=USER, PolicyName="bad", PolicyDocument="{}")

    def test_roles(self):
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{self.account}:root"}, "Action": "sts:AssumeRole"}]}
        r = self.iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust), Description="interop", MaxSessionDuration=7200)["Role"]
        check(r["RoleId"].startswith("AROA") and r["MaxSessionDuration"] == 7200, r)
        check(r["AssumeRolePolicyDocument"] == trust, r)
        got = self.iam.get_role(RoleName=ROLE)["Role"]
        check(got["Arn"] == f"arn:aws:iam::{self.account}:role/{ROLE}" and got["Description"] == "interop", got)
        kms_doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
        self.iam.put_role_policy(RoleName=ROLE, PolicyName="kms", PolicyDocument=json.dumps(kms_doc))
        check(self.iam.get_role_policy(RoleName=ROLE, PolicyName="kms")["PolicyDocument"] == kms_doc, "get_role_policy")
        check(self.iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["kms"], "list_role_policies")
        expect_error("ValidationError", 400, self.iam.create_role, RoleName=ROLE + "x", AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=100000)
        expect_error("EntityAlreadyExists", 409, self.iam.create_role, RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))

    def test_assume_role(self):
        role_arn = f"arn:aws:iam::{self.account}:role/{ROLE}"
        expect_error("AccessDenied", 403, self.sts.assume_role, RoleArn=role_arn, RoleSessionName="root")
        k = self.key
        user_sts = client("sts", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        out = user_sts.assume_role(RoleArn=role_arn, RoleSessionName="interop", DurationSeconds=900)
        c = out["Credentials"]
        check(c["AccessKeyId"].startswith("ASIA"), c)
        check(out["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{self.account}:assumed-role/{ROLE}/interop", out)
        creds = dict(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
        who = client("sts", **creds).get_caller_identity()
        check(who["UserId"] == out["AssumedRoleUser"]["AssumedRoleId"], who)
        client("kms", **creds).list_keys()
        bad = dict(creds, aws_session_token="IQoJb3JpZ2luX2VjEwrong")
        expect_error("InvalidClientTokenId", 403, client("sts", **bad).get_caller_identity)

    def test_cleanup_with_delete_conflicts(self):
        expect_error("DeleteConflict", 409, self.iam.delete_role, RoleName=ROLE)
        self.iam.delete_role_policy(RoleName=ROLE, PolicyName="kms")
        self.iam.delete_role(RoleName=ROLE)
        expect_error("NoSuchEntity", 404, self.iam.get_role, RoleName=ROLE)
        expect_error("DeleteConflict", 409, self.iam.delete_user, UserName=USER)
        self.iam.delete_access_key(UserName=USER, AccessKeyId=self.key["AccessKeyId"])
        expect_error("DeleteConflict", 409, self.iam.delete_user, UserName=USER)
        self.iam.delete_user_policy(UserName=USER, PolicyName="p")
        self.iam.delete_user(UserName=USER)
        expect_error("NoSuchEntity", 404, self.iam.get_user, UserName=USER)


def main():
    suite = Suite()
    tests = [
        "test_create_get_list_user",
        "test_user_errors",
        "test_access_keys",
        "test_inactive_key_refused_then_active_again",
        "test_user_policies_and_access_denied",
        "test_roles",
        "test_assume_role",
        "test_cleanup_with_delete_conflicts",
    ]
    return run_suite(suite, tests, "boto3-iam")


if __name__ == "__main__":
    sys.exit(main())
