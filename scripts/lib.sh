# shellcheck shell=bash
# Shared helpers for scripts/start.sh, scripts/test.sh and tests/interop/run.sh.
# Source it; it defines functions and REPO, and changes nothing else.

# Repository root (this file lives in $REPO/scripts).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages the service and its local HSMs need.
# softhsm2 brings /usr/lib/softhsm/libsofthsm2.so; opensc (pkcs11-tool) and
# p11-kit/p11-kit-modules are tooling for inspecting tokens and fault tests.
KMS_DEBIAN_PACKAGES=(softhsm2 opensc p11-kit p11-kit-modules gcc libc6-dev)

# Python packages the interop tests need: "import-name=pip-name".
KMS_PYTHON_PACKAGES=(awscli=awscli boto3=boto3 botocore=botocore cryptography=cryptography)

# Cargo tools scripts/test.sh runs (installed from crates.io once per machine).
CARGO_DENY_VERSION=0.20.2
CARGO_MACHETE_VERSION=0.9.2

log() { printf '%s: %s\n' "${LOG_TAG:-hsm-kms}" "$*"; }
warn() { printf '%s: warning: %s\n' "${LOG_TAG:-hsm-kms}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${LOG_TAG:-hsm-kms}" "$*" >&2
    exit 1
}

# Prefix with sudo only when not root.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ensure_debian_packages PKG... : install the packages that dpkg does not list
# as installed; runs apt-get update once, only when something is missing.
ensure_debian_packages() {
    local missing=() pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        if [ "$status" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages present: $*"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
}

ensure_system_deps() {
    ensure_debian_packages "${KMS_DEBIAN_PACKAGES[@]}"
    [ -e /usr/lib/softhsm/libsofthsm2.so ] ||
        die "/usr/lib/softhsm/libsofthsm2.so not found after installing softhsm2"
}

# The Python interpreter the interop tests use (override with PYTHON=...).
kms_python() { printf '%s\n' "${PYTHON:-python3}"; }

# ensure_python_packages : pip-install the interop test dependencies that
# cannot be imported. Falls back to --break-system-packages on a Debian
# "externally managed" interpreter.
ensure_python_packages() {
    local py missing=() entry mod
    py="$(kms_python)"
    command -v "$py" >/dev/null 2>&1 || ensure_debian_packages python3 python3-pip
    for entry in "${KMS_PYTHON_PACKAGES[@]}"; do
        mod="${entry%%=*}"
        if ! "$py" -c "import $mod" >/dev/null 2>&1; then
            missing+=("${entry#*=}")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Python packages present: ${KMS_PYTHON_PACKAGES[*]%%=*}"
        return 0
    fi
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        ensure_debian_packages python3-pip
    fi
    log "pip installing: ${missing[*]}"
    if ! "$py" -m pip install --quiet "${missing[@]}"; then
        warn "plain pip install failed; retrying with --break-system-packages"
        "$py" -m pip install --quiet --break-system-packages "${missing[@]}" ||
            die "pip install ${missing[*]} failed"
    fi
}

require_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found on PATH. Install a Rust toolchain (https://rustup.rs) or add ~/.cargo/bin to PATH, then re-run."
}

# ensure_cargo_tool CRATE VERSION : `cargo install --locked CRATE@VERSION` unless a binary
# of that crate and version is already installed (from crates.io; built once per machine).
ensure_cargo_tool() {
    local crate="$1" version="$2"
    if cargo install --list 2>/dev/null | grep -q "^$crate v$version:"; then
        log "$crate $version present"
        return 0
    fi
    log "cargo install $crate $version (once per machine)"
    cargo install --locked --quiet "$crate@$version" || die "cargo install $crate@$version failed"
}

# kms_target_dir : absolute cargo target dir (CARGO_TARGET_DIR may be relative
# to the repository, where cargo is run).
kms_target_dir() {
    local dir="${CARGO_TARGET_DIR:-$REPO/target}"
    case "$dir" in
        /*) ;;
        *) dir="$REPO/$dir" ;;
    esac
    printf '%s\n' "$dir"
}

# kms_bin [release|debug] : path of the hsm-kms binary.
kms_bin() {
    printf '%s/%s/hsm-kms\n' "$(kms_target_dir)" "${1:-release}"
}

# build_release : cargo build --release of the binary (fast when up to date).
build_release() {
    require_cargo
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --bin hsm-kms) || die "cargo build --release failed"
    [ -x "$(kms_bin release)" ] || die "build finished but $(kms_bin release) is missing"
}
