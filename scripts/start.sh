#!/usr/bin/env bash
# Quick start, README command 1:  ./scripts/start.sh [extra serve args]
#
# Installs the Debian packages for local SoftHSM2 tokens if missing, builds the
# release binary, creates (once) two SoftHSM2 tokens and a config under the
# state dir, then runs the service in the foreground (Ctrl-C stops it).
#
# Environment:
#   KMS_STATE_DIR  state dir (default: ./var in the repository; a relative
#                  path is taken from the current directory)
#   KMS_LISTEN     listen address (default from the config, 127.0.0.1:4599)
set -euo pipefail

ORIG_PWD="$PWD"
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=start.sh
cd "$REPO"

log "[1/4] system packages"
ensure_system_deps

log "[2/4] build"
build_release
BIN="$(kms_bin release)"

STATE="${KMS_STATE_DIR:-$REPO/var}"
case "$STATE" in
    /*) ;;
    *) STATE="$ORIG_PWD/$STATE" ;;
esac
export KMS_STATE_DIR="$STATE"

log "[3/4] local HSM tokens and config in $STATE (kept if present)"
"$BIN" setup-local --state-dir "$STATE" || die "hsm-kms setup-local failed"
[ -f "$STATE/config.toml" ] || die "setup-local did not leave $STATE/config.toml"

log "[4/4] serving (Ctrl-C to stop); in another shell: source $STATE/credentials.env"
exec "$BIN" serve --config "$STATE/config.toml" "$@"
