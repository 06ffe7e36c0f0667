#!/usr/bin/env bash
# Benchmarks of hsm-kms (not a test; prints numbers, asserts nothing).
#
#   scripts/bench.sh [--size N] [--threads N] [--secs S] [--reps N] [--filler-keys N] [--http]
#                    [--isolation] [--policy] [--audit]
#
# Everything it runs is built from this repository: `hsm-kms bench-hsm` (raw PKCS#11 and the
# HSM layer, on SoftHSM2 tokens of its own) and `hsm-kms bench` (the HTTP load generator:
# N keep-alive connections, every request SigV4-signed afresh, req/s counting 200 answers
# only, p50/p99 latency, every other answer counted and shown as an error).
#
# 1. Always: `hsm-kms bench-hsm`: raw PKCS#11 AES-256-GCM encrypt side by side with the same
#    operation through the HSM layer, in one process and one run, and the layer/raw ratio.
#    Defaults: --size 32 --threads 2 --secs 1 --reps 5 --filler-keys 0.
#    --filler-keys 10000 checks "throughput with 10,000 keys in the tokens within 10 % of
#    1 key" (creating them takes minutes: SoftHSM2 writes ~100 keys/s per token).
# 2. With --http or KMS_BENCH_HTTP=1: `bench-hsm --ops all` also measures raw PKCS#11 alone
#    for each operation below (one token, --threads threads, --reps x --secs, median); then
#    the service is started on 127.0.0.1 (two local tokens) and `hsm-kms bench` drives it:
#    Encrypt --size B and GenerateDataKey at c=1,8,64; Decrypt --size B, Sign ECDSA P-256
#    and RSA-2048 PSS (DIGEST), GenerateMac HMAC-SHA-256 --size B at c=64. Each point is a
#    1 s warm-up and KMS_BENCH_DURATION seconds measured (default 10). Prints ONE table:
#    each operation's req/s, p50, p99 and errors beside the raw PKCS#11 ops/s of the same
#    run and the ratio HTTP/raw.
# 3. With --isolation: the HSM isolation modes side by side, alternated over 2 rounds:
#    Encrypt 32 B and Sign ECDSA P-256 at c=64 with each HSM in a host process of its own
#    (hsm_isolation = "process", the default) and inside the service ("in-process");
#    prints the process/in-process ratios (targets: Encrypt >= 0.80, Sign >= 0.90).
# 4. With --policy: authorization's cost (issue 13), alternated over 2 rounds: Encrypt 32 B
#    at c=64 by the account root on a key with the default policy, and by an IAM user with
#    5 identity policies on a key with a 20-statement key policy with conditions; prints
#    the user/root ratio (target >= 0.90). Its IAM setup needs the aws CLI and python3.
# 5. With --audit: the audit trail's cost (issue 14): Encrypt 32 B at c=64 on two servers
#    started side by side, one with `audit_enabled = false`, one with the trail on
#    (fail-closed, group commit); the load alternates between them in short slices
#    (KMS_BENCH_AUDIT_ROUNDS rounds, default 8, of one KMS_BENCH_AUDIT_SLICE-second slice
#    each, default 4, in the order off-on, on-off, ...). Prints each round's on/off ratio,
#    their median (target >= 0.85), the mean of all slices, the VM's steal time, the
#    servers' CPU a call (service and HSM host processes, from /proc) with its on/off ratio,
#    and what one durable commit (32 KiB written with O_DSYNC) takes on the trail's disk.
#
# Environment: KMS_BENCH_DURATION (seconds per HTTP point, default 10), KMS_BENCH_HTTP=1
# (as --http), KMS_BENCH_AUDIT_ROUNDS and KMS_BENCH_AUDIT_SLICE (--audit). Uses
# $CARGO_TARGET_DIR if set, else <repo>/target. Ends only the servers it started.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # REPO, log/warn/die, build_release, kms_bin, ...
LOG_TAG=bench.sh
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"   # kms_bin resolves a relative one against $REPO
SIZE=32 THREADS=2 SECS=1 REPS=5 FILLER=0
HTTP=${KMS_BENCH_HTTP:-0}
ISOLATION=0
POLICY=0
AUDIT=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --filler-keys) FILLER=$2; shift 2 ;;
    --http) HTTP=1; shift ;;
    --isolation) ISOLATION=1; shift ;;
    --policy) POLICY=1; shift ;;
    --audit) AUDIT=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

TMP=$(mktemp -d /tmp/hsm-kms-bench.XXXXXX)
SERVER_PID=
EXTRA_PIDS=   # servers kept running side by side (--audit)
# stop_pids PID...: end the servers this script started (those still running).
stop_pids() {
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  # shellcheck disable=SC2086
  stop_pids $SERVER_PID $EXTRA_PIDS
  rm -rf "$TMP"
}
trap cleanup EXIT

ensure_system_deps
log "build (target dir: $TARGET)"
build_release
BIN="$(kms_bin release)"

# --- HSM layer vs raw PKCS#11 (and, for --http, raw PKCS#11 per operation) ---
OPS=()
[ "$HTTP" != 1 ] || OPS=(--ops all)
log "hsm-kms bench-hsm --size $SIZE --threads $THREADS --secs $SECS --reps $REPS --filler-keys $FILLER ${OPS[*]}"
"$BIN" bench-hsm --size "$SIZE" --threads "$THREADS" --secs "$SECS" --reps "$REPS" \
  --filler-keys "$FILLER" --dir "$TMP/hsm" "${OPS[@]}" | tee "$TMP/bench-hsm.txt"
RATIO=$(grep -m1 '^layer/raw' "$TMP/bench-hsm.txt" || true)
echo
echo "================================================================"
echo " RAW vs LAYER (AES-256-GCM ${SIZE} B, ${THREADS} threads):"
echo "   ${RATIO:-no 'layer/raw' line in the output}"
echo "   (1.00 = the layer is as fast as raw PKCS#11; hsm-facts.md: noise ±25 % run to run)"
echo "================================================================"

# --- HTTP benchmarks ---
if [ "$HTTP" != 1 ] && [ "$ISOLATION" != 1 ] && [ "$POLICY" != 1 ] && [ "$AUDIT" != 1 ]; then
  echo "(HTTP benchmarks skipped: pass --http, --isolation, --policy, --audit, or set KMS_BENCH_HTTP=1)"
  exit 0
fi
DUR=${KMS_BENCH_DURATION:-10}
WARM=1
AUDIT_ROUNDS=${KMS_BENCH_AUDIT_ROUNDS:-8}
AUDIT_SLICE=${KMS_BENCH_AUDIT_SLICE:-4}

# Start the service on a fresh state folder with `hsm_isolation = $2` (and `$3`, another
# top-level config line); sets SERVER_PID and KMS_ENDPOINT and exports its credentials.
start_server() { # state-dir isolation [config-line]
  local st=$1 iso=$2
  mkdir -p "$st"
  "$BIN" setup-local --state-dir "$st" >/dev/null 2>&1
  sed -i "1i hsm_isolation = \"$iso\"" "$st/config.toml"
  [ -z "${3:-}" ] || sed -i "1i $3" "$st/config.toml"
  KMS_LOG=warn KMS_LISTEN=127.0.0.1:0 KMS_STATE_DIR="$st" "$BIN" serve --config "$st/config.toml" \
    >"$st/serve.out" 2>"$st/serve.err" &
  SERVER_PID=$!
  PORT=
  for _ in $(seq 1 300); do   # up to 30 s
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$st/serve.out" | head -n1)
    [ -n "$PORT" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$PORT" ] || { cat "$st/serve.out" "$st/serve.err" >&2; die "the server did not start"; }
  set -a
  # shellcheck disable=SC1091
  . "$st/credentials.env"
  set +a
  export KMS_ENDPOINT="http://127.0.0.1:$PORT"   # the port is ours (KMS_LISTEN=...:0)
  export AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$AWS_REGION}
  log "server pid $SERVER_PID on $KMS_ENDPOINT (hsm_isolation = $iso)"
}

stop_server() {
  stop_pids "$SERVER_PID"
  SERVER_PID=
}

# load TAG FILE BENCH-ARGS...: one `hsm-kms bench` run against $KMS_ENDPOINT with the
# credentials in the environment; appends its RESULT lines, prefixed with TAG, to FILE (and
# shows them). Errors are never dropped: the error lines are shown and flagged.
load() {
  local tag=$1 file=$2
  shift 2
  local rc=0
  "$BIN" bench --endpoint-url "$KMS_ENDPOINT" --duration "$DUR" --warmup "$WARM" "$@" \
    >"$TMP/load.out" 2>"$TMP/load.err" || rc=$?
  grep '^RESULT' "$TMP/load.out" | sed "s/^/$tag /" | tee -a "$file" || true
  if [ "$rc" != 0 ]; then
    grep '^errors of' "$TMP/load.out" >&2 || cat "$TMP/load.err" >&2
    warn "hsm-kms bench $* reported errors (exit $rc); they are in the figures' errors column"
  fi
}

if [ "$ISOLATION" = 1 ]; then
  : >"$TMP/isolation.txt"
  for round in 1 2; do
    for iso in in-process process; do
      start_server "$TMP/iso-$round-$iso" "$iso"
      load "$iso" "$TMP/isolation.txt" --op Encrypt --size 32 -c 64
      load "$iso" "$TMP/isolation.txt" --op Sign --signing-algorithm ECDSA_SHA_256 -c 64
      stop_server
    done
  done
  echo
  echo "================================================================"
  for op in Encrypt Sign; do
    awk -v op="$op" '$3 == "op=" op { split($0, a, "rps="); split(a[2], b, " ");
        sum[$1] += b[1]; n[$1]++ }
      END { p = sum["process"] / n["process"]; i = sum["in-process"] / n["in-process"];
        printf " %-7s c=64: process %.0f rps, in-process %.0f rps: ratio %.2f\n", op, p, i, p / i }' \
      "$TMP/isolation.txt"
  done
  echo " (targets: Encrypt >= 0.80, Sign ECDSA P-256 >= 0.90; same run, alternated)"
  echo "================================================================"
  [ "$HTTP" = 1 ] || [ "$POLICY" = 1 ] || [ "$AUDIT" = 1 ] || exit 0
fi

if [ "$AUDIT" = 1 ]; then
  # What one durable commit costs on this disk, where the trail will be (before the
  # servers start): 32 KiB written in place with O_DSYNC (the data and a cache flush, as
  # each group commit's write and fdatasync), 400 in a row, 3 runs; the median of the
  # runs' mean. Calls wait this long (and more under load) for their records. Best
  # effort: no figure rather than no benchmark.
  DISK_US=
  mkdir -p "$TMP/audit-disk"
  if dd if=/dev/zero of="$TMP/audit-disk/probe" bs=32k count=400 conv=fsync status=none 2>/dev/null; then
    DISK_US=$(for _ in 1 2 3; do
        { LC_ALL=C dd if=/dev/zero of="$TMP/audit-disk/probe" bs=32k count=400 oflag=dsync conv=notrunc 2>&1 || true; } |
          awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") { printf "%.0f\n", $(i - 1) * 1e6 / 400 } }'
      done | sort -n | sed -n 2p)
  fi
  rm -rf "$TMP/audit-disk"
  # Both servers run side by side, and the load alternates between them in short slices
  # (off on, on off, ...): this VM's speed drifts by tens of percent within a minute, so
  # slices next to each other see the same machine. Each round's ratio is on/off of its two
  # slices; the figure is their median (the mean of the slices is shown too).
  start_server "$TMP/audit-off" process "audit_enabled = false"
  OFF_PID=$SERVER_PID OFF_URL=$KMS_ENDPOINT
  start_server "$TMP/audit-on" process "audit_enabled = true"
  ON_PID=$SERVER_PID ON_URL=$KMS_ENDPOINT
  SERVER_PID=
  EXTRA_PIDS="$OFF_PID $ON_PID"
  : >"$TMP/audit.txt"
  # The machine's steal ticks and its total ticks (user to steal) from /proc/stat.
  steal_and_total() { awk '/^cpu /{ print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
  # CPU ticks (user + system) used so far by server $1 and its HSM host processes.
  server_ticks() {
    local p s t=0
    # Children are listed by the thread that started them.
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null || true); do
      s=$(cat "/proc/$p/stat" 2>/dev/null) || continue   # gone meanwhile (a host restarted)
      # Fields 14 and 15 (utime, stime), counted after the ")" that ends the name.
      t=$((t + $(echo "${s##*) }" | awk '{ print $12 + $13 }')))
    done
    echo "$t"
  }
  slice() { # mode round
    local url=$OFF_URL pid=$OFF_PID c0 c1
    [ "$1" = off ] || { url=$ON_URL; pid=$ON_PID; }
    set -a
    # shellcheck disable=SC1090,SC1091
    . "$TMP/audit-$1/credentials.env"
    set +a
    export KMS_ENDPOINT=$url
    local s0 s1
    s0=$(steal_and_total)
    c0=$(server_ticks "$pid")
    DUR=$AUDIT_SLICE load "audit-$1 round=$2" "$TMP/audit.txt" --op Encrypt --size 32 -c 64
    c1=$(server_ticks "$pid")
    s1=$(steal_and_total)
    echo "audit-$1 round=$2 ticks=$((c1 - c0))" >>"$TMP/audit-cpu.txt"
    echo "audit-$1 round=$2 steal_pct=$(echo "$s0 $s1" | awk '{ d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0) }')" \
      >>"$TMP/audit-steal.txt"
  }
  for round in $(seq 1 "$AUDIT_ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then slice off "$round"; slice on "$round"
    else slice on "$round"; slice off "$round"; fi
  done
  stop_pids "$OFF_PID" "$ON_PID"
  EXTRA_PIDS=
  echo
  echo "================================================================"
  awk '
    { split($0, a, "rps="); split(a[2], b, " "); r = $2; sub("round=", "", r); r += 0;
      rps[$1, r] = b[1]; sum[$1] += b[1]; n[$1]++; if (r > rounds) rounds = r }
    END {
      if (!n["audit-off"] || !n["audit-on"]) { print " no figures (see the errors above)"; exit }
      for (r = 1; r <= rounds; r++) {
        off = rps["audit-off", r]; q[r] = (off > 0) ? rps["audit-on", r] / off : 0;
        printf " round %d: audit off %.0f rps, audit on %.0f rps: %.2f\n", r, rps["audit-off", r], rps["audit-on", r], q[r]
      }
      for (i = 1; i <= rounds; i++) for (j = i + 1; j <= rounds; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = rounds % 2 ? q[(rounds + 1) / 2] : (q[rounds / 2] + q[rounds / 2 + 1]) / 2
      printf " Encrypt c=64, %d rounds: mean audit off %.0f rps, audit on %.0f rps (%.2f); median of the rounds: ratio %.2f\n",
        rounds, sum["audit-off"] / n["audit-off"], sum["audit-on"] / n["audit-on"],
        (sum["audit-on"] / n["audit-on"]) / (sum["audit-off"] / n["audit-off"]), med }' \
    "$TMP/audit.txt"
  awk '{ s = $3; sub("steal_pct=", "", s); s += 0; t += s; if (s > m) m = s; n++ }
    END { if (n) printf " (steal time during the slices: mean %.1f %%, max %.1f %%)\n", t / n, m }' "$TMP/audit-steal.txt"
  # Server CPU a call: the ticks of a slice (its warm-up included) over its measured
  # requests scaled to the whole slice. Steadier than req/s on a shared VM (a slow slice
  # is slow for every thread), but blind to idle CPU, which group commit adds.
  awk -v hz="$(getconf CLK_TCK)" -v slice="$AUDIT_SLICE" -v warm="$WARM" '
    BEGIN { k = (slice + warm) / slice }
    FNR == NR { t = $3; sub("ticks=", "", t); r = $2; sub("round=", "", r); ticks[$1, r + 0] = t; next }
    { split($0, a, "requests="); split(a[2], b, " "); r = $2; sub("round=", "", r); r += 0;
      if (b[1] > 0) us[$1, r] = ticks[$1, r] * 1e6 / hz / (b[1] * k); if (r > rounds) rounds = r }
    END {
      n = 0
      for (r = 1; r <= rounds; r++) if (us["audit-off", r] > 0 && us["audit-on", r] > 0) {
        q[++n] = us["audit-on", r] / us["audit-off", r]; so += us["audit-off", r]; sn += us["audit-on", r] }
      if (!n) exit
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = n % 2 ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
      printf " server CPU a call (service and its HSM host processes): audit off %.0f us, audit on %.0f us; median of the rounds: on/off %.2f\n",
        so / n, sn / n, med }' "$TMP/audit-cpu.txt" "$TMP/audit.txt"
  [ -z "$DISK_US" ] ||
    echo " durable commit on this disk (32 KiB, O_DSYNC, idle): ${DISK_US} us; each call waits for one"
  echo " (target: >= 0.85; same run: both servers up, the load alternated between them)"
  echo "================================================================"
  [ "$HTTP" = 1 ] || [ "$POLICY" = 1 ] || exit 0
fi

if [ "$POLICY" = 1 ]; then
  command -v aws >/dev/null || die "--policy sets up IAM users with the aws CLI: pip install awscli"
  command -v python3 >/dev/null || die "--policy writes its policies with python3"
  start_server "$TMP/policy" process
  ROOT_ID=$AWS_ACCESS_KEY_ID ROOT_SECRET=$AWS_SECRET_ACCESS_KEY
  ACCOUNT=$(aws sts get-caller-identity --endpoint-url "$KMS_ENDPOINT" --query Account --output text)
  # A 20-statement key policy with conditions: the account delegation, 18 statements that
  # do not apply to this request (other principals, denies with conditions that do not
  # hold), and the one that lets the user encrypt with its context.
  python3 - "$ACCOUNT" >"$TMP/key-policy.json" <<'PY'
import json, sys
a = sys.argv[1]
s = [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
      "Principal": {"AWS": f"arn:aws:iam::{a}:root"}, "Action": "kms:*", "Resource": "*"}]
for i in range(9):
    s.append({"Sid": f"DenyCtx{i}", "Effect": "Deny", "Principal": {"AWS": "*"},
              "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
              "Condition": {"StringEquals": {f"kms:EncryptionContext:tier{i}": ["secret", "top"]},
                            "Bool": {"aws:SecureTransport": "true"}}})
for i in range(9):
    s.append({"Sid": f"OtherUser{i}", "Effect": "Allow",
              "Principal": {"AWS": f"arn:aws:iam::{a}:user/other{i}"},
              "Action": ["kms:Encrypt", "kms:ReEncrypt*"], "Resource": "*",
              "Condition": {"StringLike": {"kms:EncryptionContext:app": f"svc-{i}-*"},
                            "IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}}})
s.append({"Sid": "BenchUser", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{a}:user/bench"},
          "Action": "kms:Encrypt", "Resource": "*",
          "Condition": {"StringEquals": {"kms:EncryptionContext:app": "bench"},
                        "DateLessThan": {"aws:CurrentTime": "2100-01-01T00:00:00Z"}}})
print(json.dumps({"Version": "2012-10-17", "Id": "bench-20", "Statement": s}))
PY
  # Every user a key policy names must exist.
  for u in bench other0 other1 other2 other3 other4 other5 other6 other7 other8; do
    aws iam create-user --user-name "$u" --endpoint-url "$KMS_ENDPOINT" >/dev/null
  done
  for i in 1 2 3 4 5; do
    python3 - "$i" >"$TMP/identity-$i.json" <<'PY'
import json, sys
i = int(sys.argv[1])
# AWS limits a user's inline policies to 2,048 characters in all: ~400 each.
s = [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
      "Condition": {"StringEqualsIfExists": {"kms:EncryptionContext:app": "bench"},
                    "NotIpAddress": {"aws:SourceIp": f"203.0.{i}.0/24"}}},
     {"Effect": "Deny", "NotAction": "kms:Describe*", "Resource": f"arn:aws:kms:*:*:key/x{i}",
      "Condition": {"StringLike": {"kms:EncryptionContext:b": f"y{i}*"}}}]
print(json.dumps({"Version": "2012-10-17", "Statement": s}, separators=(",", ":")))
PY
    aws iam put-user-policy --user-name bench --policy-name "p$i" \
      --policy-document "file://$TMP/identity-$i.json" --endpoint-url "$KMS_ENDPOINT"
  done
  read -r USER_ID USER_SECRET < <(aws iam create-access-key --user-name bench --endpoint-url "$KMS_ENDPOINT" \
    --query 'AccessKey.[AccessKeyId,SecretAccessKey]' --output text)
  plain=$(aws kms create-key --endpoint-url "$KMS_ENDPOINT" --query KeyMetadata.KeyId --output text)
  custom=$(aws kms create-key --policy "file://$TMP/key-policy.json" --endpoint-url "$KMS_ENDPOINT" \
    --query KeyMetadata.KeyId --output text)
  : >"$TMP/policy.txt"
  for round in 1 2; do
    AWS_ACCESS_KEY_ID=$ROOT_ID AWS_SECRET_ACCESS_KEY=$ROOT_SECRET \
      load root-default "$TMP/policy.txt" --op Encrypt --key-id "$plain" --size 32 -c 64 --context app=bench
    sleep 1   # a new access key is served within 0.5 s; the wait also settles the machine
    AWS_ACCESS_KEY_ID=$USER_ID AWS_SECRET_ACCESS_KEY=$USER_SECRET \
      load user-policies "$TMP/policy.txt" --op Encrypt --key-id "$custom" --size 32 -c 64 --context app=bench
  done
  stop_server
  echo
  echo "================================================================"
  awk '{ split($0, a, "rps="); split(a[2], b, " "); sum[$1] += b[1]; n[$1]++ }
    END { r = sum["root-default"] / n["root-default"]; u = sum["user-policies"] / n["user-policies"];
      printf " Encrypt c=64: root + default policy %.0f rps; user + 5 identity policies + 20-statement key policy %.0f rps: ratio %.2f\n", r, u, u / r }' \
    "$TMP/policy.txt"
  echo " (target: >= 0.90; same run, alternated)"
  echo "================================================================"
  [ "$HTTP" = 1 ] || exit 0
fi

# --http: every operation over HTTP, each beside its raw PKCS#11 figure of this run. The tag
# of each run is the `bench-hsm --ops` name of the raw row it is compared with.
start_server "$TMP/http" process
: >"$TMP/http.txt"
load encrypt "$TMP/http.txt" --op Encrypt --size "$SIZE" -c 1,8,64
load generate-data-key "$TMP/http.txt" --op GenerateDataKey -c 1,8,64
load decrypt "$TMP/http.txt" --op Decrypt --size "$SIZE" -c 64
load sign-ecdsa-p256 "$TMP/http.txt" --op Sign --signing-algorithm ECDSA_SHA_256 --message-type DIGEST -c 64
load sign-rsa-2048-pss "$TMP/http.txt" --op Sign --signing-algorithm RSASSA_PSS_SHA_256 \
  --message-type DIGEST -c 64
load generate-mac "$TMP/http.txt" --op GenerateMac --size "$SIZE" -c 64
stop_server
echo
echo "================================================================"
echo " HTTP (hsm-kms bench: ${WARM} s warm-up + ${DUR} s per point, 2 HSMs) vs raw PKCS#11 (bench-hsm:"
echo " one token, ${THREADS} threads, median of ${REPS} x ${SECS} s), same run, same machine:"
echo
awk '
  FNR == NR { if ($1 == "RAW") { split($2, o, "="); split($4, r, "="); raw[o[2]] = r[2] } next }
  { tag = $1; label = $0; sub(/.* label=/, "", label)
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    rr = (tag in raw) ? sprintf("%.0f", raw[tag]) : "n/a"
    ratio = (tag in raw && raw[tag] > 0) ? sprintf("%.2f", v["rps"] / raw[tag]) : "n/a"
    printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s |\n", label, v["c"], v["rps"],
      v["p50_ms"], v["p99_ms"], v["errors"] + v["warmup_errors"], rr, ratio }
  BEGIN { print "| operation | connections | req/s | p50 ms | p99 ms | errors | raw PKCS#11 ops/s | HTTP/raw |"
          print "|---|---:|---:|---:|---:|---:|---:|---:|" }
' "$TMP/bench-hsm.txt" "$TMP/http.txt"
echo
echo " errors: every answer but 200 (warm-up included); req/s counts 200 answers only."
echo " HTTP/raw > 1 is possible: the service spreads the load over 2 HSMs, raw uses one token."
echo "================================================================"
echo "Reminder: ${RATIO:-layer/raw = n/a}"
