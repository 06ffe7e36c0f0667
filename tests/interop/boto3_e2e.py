#!/usr/bin/env python3
"""boto3 end-to-end checks against a running hsm-kms server.

Run by tests/interop/run.sh. Needs KMS_ENDPOINT and the AWS_* variables from
the server's credentials.env. Prints one line per check and a closing line
"boto3: N passed, M failed"; exits 1 if any check failed.
"""

import os
import re
import sys
import uuid

import boto3
import botocore.config
from botocore.exceptions import ClientError

UNKNOWN_KEY = "00000000-0000-0000-0000-000000000000"
CONTEXT = {"purpose": "test", "team": "lab"}


def make_client(validate=True):
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = botocore.config.Config(
        region_name=region,
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 1},
        # Without this botocore rejects out-of-range members before sending,
        # and the server's own validation would go untested.
        parameter_validation=validate,
    )
    return boto3.client("kms", endpoint_url=os.environ["KMS_ENDPOINT"], config=config)


from checks import Failure, check, run_suite  # noqa: E402 (tests/interop is on sys.path)


def is_key_arn(value, key_id):
    """AWS answers KeyId members of Encrypt/Decrypt/ReEncrypt with the key ARN."""
    return bool(re.fullmatch(r"arn:aws:kms:[a-z0-9-]+:\d{12}:key/" + re.escape(key_id), value or ""))


def expect_error(code, fn, **kwargs):
    try:
        resp = fn(**kwargs)
    except ClientError as e:
        got = e.response.get("Error", {}).get("Code")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        check(got == code, f"want Error.Code {code}, got {got!r}: {e}")
        check(status == 400, f"want HTTP 400 for {code}, got {status}")
        return
    resp.pop("ResponseMetadata", None)
    raise Failure(f"want {code}, but the call succeeded: {repr(resp)[:300]}")


class Suite:
    def __init__(self):
        self.kms = make_client()
        self.kms_raw = make_client(validate=False)
        self.key1 = None
        self.key2 = None
        self.alias = f"alias/boto3-e2e-{uuid.uuid4().hex[:12]}"
        self.blob = None
        self.plaintext = os.urandom(300)

    def need(self, attr):
        value = getattr(self, attr)
        check(value is not None, f"needs {attr}, which an earlier check did not produce")
        return value

    # -- keys and aliases ------------------------------------------------

    def test_create_key(self):
        resp = self.kms.create_key(
            Description="boto3 e2e",
            Tags=[{"TagKey": "team", "TagValue": "lab"}],
        )
        md = resp["KeyMetadata"]
        check(md["KeyState"] == "Enabled", f"KeyState {md['KeyState']}")
        check(md.get("KeySpec") == "SYMMETRIC_DEFAULT", f"KeySpec {md.get('KeySpec')}")
        check(md.get("KeyUsage") == "ENCRYPT_DECRYPT", f"KeyUsage {md.get('KeyUsage')}")
        check(md.get("Enabled") is True, f"Enabled {md.get('Enabled')}")
        check(is_key_arn(md.get("Arn"), md["KeyId"]), f"Arn {md.get('Arn')}")
        self.key1 = md["KeyId"]
        md2 = self.kms.create_key(Description="boto3 e2e second key")["KeyMetadata"]
        self.key2 = md2["KeyId"]
        check(self.key1 != self.key2, "two create_key calls gave the same KeyId")

    def test_describe_key(self):
        key = self.need("key1")
        md = self.kms.describe_key(KeyId=key)["KeyMetadata"]
        check(md["KeyId"] == key, f"KeyId {md['KeyId']}")
        check(md["Description"] == "boto3 e2e", f"Description {md['Description']!r}")

    def test_alias(self):
        key = self.need("key1")
        self.kms.create_alias(AliasName=self.alias, TargetKeyId=key)
        aliases = self.kms.list_aliases(KeyId=key)["Aliases"]
        names = [a["AliasName"] for a in aliases]
        check(self.alias in names, f"{self.alias} not in {names}")
        md = self.kms.describe_key(KeyId=self.alias)["KeyMetadata"]
        check(md["KeyId"] == key, f"alias resolves to {md['KeyId']}")

    # -- encrypt / decrypt -----------------------------------------------

    def test_encrypt_decrypt(self):
        key = self.need("key1")
        enc = self.kms.encrypt(KeyId=self.alias, Plaintext=self.plaintext, EncryptionContext=CONTEXT)
        check(is_key_arn(enc["KeyId"], key), f"Encrypt KeyId {enc['KeyId']}")
        check(enc.get("EncryptionAlgorithm") == "SYMMETRIC_DEFAULT",
              f"EncryptionAlgorithm {enc.get('EncryptionAlgorithm')}")
        self.blob = enc["CiphertextBlob"]
        dec = self.kms.decrypt(CiphertextBlob=self.blob, EncryptionContext=CONTEXT)
        check(dec["Plaintext"] == self.plaintext, "plaintext differs after the round trip")
        check(is_key_arn(dec["KeyId"], key), f"Decrypt KeyId {dec['KeyId']}")
        # Giving the right KeyId explicitly also works.
        dec = self.kms.decrypt(CiphertextBlob=self.blob, EncryptionContext=CONTEXT, KeyId=key)
        check(dec["Plaintext"] == self.plaintext, "plaintext differs with explicit KeyId")

    def test_decrypt_wrong_context(self):
        blob = self.need("blob")
        expect_error("InvalidCiphertextException", self.kms.decrypt,
                     CiphertextBlob=blob, EncryptionContext={"purpose": "test", "team": "other"})
        expect_error("InvalidCiphertextException", self.kms.decrypt, CiphertextBlob=blob)

    def test_tampered_blob(self):
        blob = bytearray(self.need("blob"))
        blob[-1] ^= 0x01
        expect_error("InvalidCiphertextException", self.kms.decrypt,
                     CiphertextBlob=bytes(blob), EncryptionContext=CONTEXT)

    def test_garbage_blob(self):
        expect_error("InvalidCiphertextException", self.kms.decrypt, CiphertextBlob=b"\x00" * 64)

    def test_incorrect_key(self):
        blob = self.need("blob")
        other = self.need("key2")
        expect_error("IncorrectKeyException", self.kms.decrypt,
                     CiphertextBlob=blob, EncryptionContext=CONTEXT, KeyId=other)

    # -- envelope encryption ----------------------------------------------

    def test_envelope(self):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self.need("key1")
        gdk = self.kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=CONTEXT)
        check(len(gdk["Plaintext"]) == 32, f"data key is {len(gdk['Plaintext'])} bytes")
        check(is_key_arn(gdk["KeyId"], key), f"GenerateDataKey KeyId {gdk['KeyId']}")
        wrapped = gdk["CiphertextBlob"]
        message = b"envelope-encrypted message " + os.urandom(64)
        nonce = os.urandom(12)
        sealed = AESGCM(gdk["Plaintext"]).encrypt(nonce, message, b"hsm-kms interop")
        del gdk  # keep only the wrapped data key, as a client would
        dk = self.kms.decrypt(CiphertextBlob=wrapped, EncryptionContext=CONTEXT)["Plaintext"]
        check(len(dk) == 32, f"unwrapped data key is {len(dk)} bytes")
        opened = AESGCM(dk).decrypt(nonce, sealed, b"hsm-kms interop")
        check(opened == message, "message differs after the envelope round trip")

    def test_reencrypt(self):
        blob = self.need("blob")
        key1, key2 = self.need("key1"), self.need("key2")
        dest_ctx = {"purpose": "moved"}
        re_ = self.kms.re_encrypt(
            CiphertextBlob=blob,
            SourceEncryptionContext=CONTEXT,
            DestinationKeyId=key2,
            DestinationEncryptionContext=dest_ctx,
        )
        check(is_key_arn(re_["KeyId"], key2), f"ReEncrypt KeyId {re_['KeyId']}")
        check(is_key_arn(re_["SourceKeyId"], key1), f"ReEncrypt SourceKeyId {re_['SourceKeyId']}")
        dec = self.kms.decrypt(CiphertextBlob=re_["CiphertextBlob"], EncryptionContext=dest_ctx)
        check(dec["Plaintext"] == self.plaintext, "plaintext differs after ReEncrypt")
        check(is_key_arn(dec["KeyId"], key2), f"Decrypt KeyId after ReEncrypt {dec['KeyId']}")

    # -- random and errors -------------------------------------------------

    def test_generate_random(self):
        out = self.kms.generate_random(NumberOfBytes=64)["Plaintext"]
        check(len(out) == 64, f"got {len(out)} bytes")
        check(out != self.kms.generate_random(NumberOfBytes=64)["Plaintext"], "two equal random outputs")

    def test_generate_random_out_of_range(self):
        expect_error("ValidationException", self.kms_raw.generate_random, NumberOfBytes=0)
        expect_error("ValidationException", self.kms_raw.generate_random, NumberOfBytes=1025)

    def test_unknown_key(self):
        expect_error("NotFoundException", self.kms.describe_key, KeyId=UNKNOWN_KEY)
        expect_error("NotFoundException", self.kms.encrypt, KeyId=UNKNOWN_KEY, Plaintext=b"x")
        expect_error("NotFoundException", self.kms.describe_key, KeyId="alias/boto3-e2e-does-not-exist")

    # -- rotation ----------------------------------------------------------

    def test_rotation(self):
        import datetime
        key = self.kms.create_key(Description="boto3 rotation")["KeyMetadata"]["KeyId"]
        first = self.kms.describe_key(KeyId=key)["KeyMetadata"].get("CurrentKeyMaterialId", "")
        check(re.fullmatch(r"[0-9a-f]{64}", first), f"CurrentKeyMaterialId {first!r}")
        old = self.kms.encrypt(KeyId=key, Plaintext=b"old material")["CiphertextBlob"]
        self.kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)
        st = self.kms.get_key_rotation_status(KeyId=key)
        check(st["KeyRotationEnabled"] is True, f"status {st}")
        check(st["RotationPeriodInDays"] == 180, f"period {st.get('RotationPeriodInDays')}")
        check(isinstance(st["NextRotationDate"], datetime.datetime), f"NextRotationDate {st}")
        check(is_key_arn(st["KeyId"], key), f"KeyId {st['KeyId']}")
        check(self.kms.rotate_key_on_demand(KeyId=key)["KeyId"] == key, "RotateKeyOnDemand KeyId")
        rot = self.kms.list_key_rotations(KeyId=key)["Rotations"]
        check(len(rot) == 1 and rot[0]["RotationType"] == "ON_DEMAND", f"rotations {rot}")
        check(isinstance(rot[0]["RotationDate"], datetime.datetime), f"RotationDate {rot[0]}")
        now = self.kms.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"]
        check(now != first and rot[0]["KeyMaterialId"] == now, f"material {first} -> {now}, {rot}")
        pages = self.kms.get_paginator("list_key_rotations").paginate(
            KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL", PaginationConfig={"PageSize": 1})
        states = [r["KeyMaterialState"] for p in pages for r in p["Rotations"]]
        check(states == ["NON_CURRENT", "CURRENT"], f"paginated states {states}")
        dec = self.kms.decrypt(CiphertextBlob=old)
        check(dec["Plaintext"] == b"old material", "old ciphertext no longer decrypts")
        self.kms.disable_key_rotation(KeyId=key)
        check(self.kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False, "still enabled")
        expect_error("ValidationException", self.kms_raw.enable_key_rotation, KeyId=key,
                     RotationPeriodInDays=89)
        self.kms.disable_key(KeyId=key)
        expect_error("DisabledException", self.kms.rotate_key_on_demand, KeyId=key)


def main():
    suite = Suite()
    tests = [
        "test_create_key",
        "test_describe_key",
        "test_alias",
        "test_encrypt_decrypt",
        "test_decrypt_wrong_context",
        "test_tampered_blob",
        "test_garbage_blob",
        "test_incorrect_key",
        "test_envelope",
        "test_reencrypt",
        "test_generate_random",
        "test_generate_random_out_of_range",
        "test_unknown_key",
        "test_rotation",
    ]
    return run_suite(suite, tests, "boto3")


if __name__ == "__main__":
    sys.exit(main())
