#!/usr/bin/env bash
# Full check, README command 2 and the CI entry (.ci/run):
#   ./scripts/test.sh [extra args for cargo test]
#
# Steps, in order; the first failure stops the run and is named:
#   system packages, python packages, cargo tools (cargo-deny, cargo-machete),
#   cargo fmt --check, cargo clippy, cargo doc, cargo deny, cargo machete,
#   cargo test --release, interop (aws CLI + boto3 against a live server).
# The last line printed on success is "interop: N passed, 0 failed".
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=test.sh
cd "$REPO"

CURRENT_STEP=""
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$CURRENT_STEP" ]; then
        printf 'test.sh: FAILED at step "%s" (exit %s)\n' "$CURRENT_STEP" "$rc" >&2
    fi
}
trap on_exit EXIT

step() {
    CURRENT_STEP="$1"
    printf '\n==> %s\n' "$1"
}

step "system packages"
ensure_system_deps

step "python packages"
ensure_python_packages

step "cargo available"
require_cargo
cargo --version

step "cargo tools"
ensure_cargo_tool cargo-deny "$CARGO_DENY_VERSION"
ensure_cargo_tool cargo-machete "$CARGO_MACHETE_VERSION"

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets --features test-hooks -- -D warnings"
cargo clippy --all-targets --features test-hooks -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet

step "cargo deny check licenses bans sources"
cargo deny --log-level error check licenses bans sources

step "cargo machete (unused dependencies)"
cargo machete

step "cargo test --release --features test-hooks (all but the availability drills)"
RUST_BACKTRACE="${RUST_BACKTRACE:-1}" cargo test --release --features test-hooks "$@" -- --skip drill_

step "availability drills (tests/drills.rs, one line per drill)"
RUST_BACKTRACE="${RUST_BACKTRACE:-1}" cargo test --release --features test-hooks --test drills \
  -- --nocapture --test-threads 1 2>&1 | tee "${TMPDIR:-/tmp}/hsm-kms-drills.txt" | grep -E '^DRILL|^test |test result|panicked' || true
grep -q 'test result: ok' "${TMPDIR:-/tmp}/hsm-kms-drills.txt" || { cat "${TMPDIR:-/tmp}/hsm-kms-drills.txt"; exit 1; }

step "interop (tests/interop/run.sh)"
bash tests/interop/run.sh
CURRENT_STEP=""
