#!/usr/bin/env bash
# Issue 15's local-process figures (the cluster figures are `make bench-seed`):
#  1. upload → result of a checksum job with one warm local worker, REQUESTS sequential
#     `POST /jobs?wait=20`, p50/p99 of the client's time, with completion hints on and off
#     ("off": the server advertises TEST-NET 192.0.2.1, so every hint is lost and only the
#     S3 poll answers, which is main's behaviour before hints);
#  2. GET /jobs/{id} of a finished job at 50 clients (oha), with the finished-result cache
#     on and off (RESULT_CACHE_MB=0: one GetObject per read, as before the cache).
# Same binaries, same machine, one after the other. PROFILE=release (default) builds
# release binaries of the server and worker; PROFILE=debug uses the dev build. BEFORE_BIN, an
# older qwp-api-server (e.g. main's before issue 15, built in its own checkout), adds its rows
# ("before"), measured the same way with this checkout's worker.
#
#   api-server/bench/latency.sh
#   BEFORE_BIN=/path/to/old/release/qwp-api-server api-server/bench/latency.sh
#   PROFILE=debug REQUESTS=50 SECONDS_PER_RUN=10 api-server/bench/latency.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-release}"
REQUESTS="${REQUESTS:-100}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
PORT="${BENCH_PORT:-18100}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-18191}"
INTERNAL_PORT="${BENCH_INTERNAL_PORT:-18192}"
WORKER_ADMIN_PORT="${BENCH_WORKER_ADMIN_PORT:-18190}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
OHA="$ROOT/.cache/tools/bin/oha"
WORK="$(mktemp -d)"
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
[[ -x "$OHA" ]] || { echo "oha missing: cargo install oha --locked --root .cache/tools" >&2; exit 1; }

if [[ "$PROFILE" == release ]]; then
    cargo build --release -j2 -p qwp-api-server --bin qwp-api-server --example raw_localstack >&2
    cargo build --release -j2 -p qwp-worker --no-default-features --bin qwp-worker >&2
    DIR=release
else
    cargo build -p qwp-api-server --bin qwp-api-server --example raw_localstack >&2
    cargo build -p qwp-worker --no-default-features --bin qwp-worker >&2
    DIR=debug
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/$DIR"
RAW="$TARGET/examples/raw_localstack"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

SERVER_PID="" WORKER_PID="" STACK_UP=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [[ -n "$WORKER_PID" ]] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
    [[ -n "$STACK_UP" ]] && "$RAW" cleanup >&2
    rm -rf "$WORK"
}
trap cleanup EXIT
BASE="http://127.0.0.1:$PORT"

SERVER_BIN="$TARGET/qwp-api-server"
start() { # $1: POD_IP, $2: RESULT_CACHE_MB; the server is $SERVER_BIN
    eval "$("$RAW" setup | sed 's/^/export /')"
    STACK_UP=1
    PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" INTERNAL_PORT="$INTERNAL_PORT" POD_IP="$1" \
        RESULT_CACHE_MB="$2" RUST_LOG=warn "$SERVER_BIN" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    WORKER_PROCESSOR=checksum WORKER_ADMIN_PORT="$WORKER_ADMIN_PORT" SQS_WAIT_TIME_SECONDS=20 \
        RUST_LOG=warn "$TARGET/qwp-worker" >>"$WORK/worker.log" 2>&1 &
    WORKER_PID=$!
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$WORKER_ADMIN_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop() {
    kill "$SERVER_PID" "$WORKER_PID"; wait "$SERVER_PID" "$WORKER_PID" 2>/dev/null || true
    SERVER_PID="" WORKER_PID=""
    "$RAW" cleanup >&2; STACK_UP=""
}
percentiles() { # times in seconds, one per line → "p50_ms p99_ms mean_ms"
    sort -n | awk '{a[NR]=$1; s+=$1} END {
        p50=a[int((NR-1)*0.50)+1]; p99=a[int((NR-1)*0.99)+1];
        printf "%.1f %.1f %.1f\n", p50*1000, p99*1000, s/NR*1000 }'
}
upload_to_result() { # $1: label, $2: POD_IP
    start "$2" 64
    head -c 1024 /dev/urandom >"$WORK/in.bin"
    : >"$WORK/times"
    for _ in $(seq "$REQUESTS"); do
        curl -fsS -o "$WORK/out.json" -w '%{time_total}\n' -H 'content-type: application/octet-stream' \
            --data-binary @"$WORK/in.bin" "$BASE/jobs?filename=in.bin&wait=20" >>"$WORK/times"
        jq -e '.status == "done"' "$WORK/out.json" >/dev/null || { echo "not done: $(cat "$WORK/out.json")" >&2; exit 1; }
    done
    read -r p50 p99 mean < <(percentiles <"$WORK/times")
    printf '| upload → result, hints %s | %s | %s | %s |\n' "$1" "$p50" "$p99" "$mean"
    stop
}
status_reads() { # $1: label, $2: RESULT_CACHE_MB
    start 127.0.0.1 "$2"
    job="$(curl -fsS -H 'content-type: application/octet-stream' --data-binary 'x' \
        "$BASE/jobs?filename=x.bin&wait=20" | jq -r .job_id)"
    "$OHA" --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -c 50 "$BASE/jobs/$job" >"$WORK/status.json"
    jq -r --arg l "$1" '"| status reads, cache \($l) | \(.summary.requestsPerSec | floor) reads/s | p50 \(.latencyPercentiles.p50*10000|floor/10) ms | p99 \(.latencyPercentiles.p99*10000|floor/10) ms | non-200: \([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0) |"' "$WORK/status.json"
    stop
}

echo "| run | p50 ms | p99 ms | mean ms |"
echo "|---|---:|---:|---:|"
if [[ -n "${BEFORE_BIN:-}" ]]; then
    SERVER_BIN="$BEFORE_BIN" upload_to_result "before (main, BEFORE_BIN)" 127.0.0.1
fi
SERVER_BIN="$TARGET/qwp-api-server"
upload_to_result off 192.0.2.1
upload_to_result on 127.0.0.1
echo
if [[ -n "${BEFORE_BIN:-}" ]]; then
    SERVER_BIN="$BEFORE_BIN" status_reads "before (main, BEFORE_BIN)" 0
fi
SERVER_BIN="$TARGET/qwp-api-server"
status_reads off 0
status_reads on 64
echo
echo "profile $PROFILE, $REQUESTS sequential uploads, ${SECONDS_PER_RUN} s status runs; load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
