"""What the boto3 interop scripts share: the failure type, `check`, and the runner that
calls each named check of a suite, prints one line per check and a closing line
"TAG: N passed, M failed", and returns the exit status (1 if any check failed)."""

import sys
import traceback


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def run_suite(suite, tests, tag):
    passed = failed = 0
    for name in tests:
        label = f"{tag}: " + name[len("test_"):].replace("_", " ")
        try:
            getattr(suite, name)()
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL - {label}: {type(e).__name__}: {e}")
            if not isinstance(e, Failure):
                for line in traceback.format_exc().rstrip().splitlines():
                    print("    | " + line)
        else:
            passed += 1
            print(f"ok   - {label}")
        sys.stdout.flush()
    print(f"{tag}: {passed} passed, {failed} failed")
    return 1 if failed else 0
