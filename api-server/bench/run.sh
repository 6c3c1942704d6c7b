#!/usr/bin/env bash
# API server benchmark: accepted jobs/s and latency at 20, 50 and 200 concurrent clients
# (oha, POST /jobs raw body, wait=0), GET /status/{id} at 50 clients, and beside each
# submission run the raw capacity of LocalStack for the same PutObject + SendMessage
# pair (examples/raw_localstack.rs), so the server's overhead shows as a ratio.
# Prints a markdown table. Needs LocalStack on AWS_ENDPOINT_URL (default
# http://127.0.0.1:4566): hack/localstack/localstack.sh up.
#
#   api-server/bench/run.sh              # 15 s per run, 4 KiB payload
#   SECONDS_PER_RUN=30 PAYLOAD_BYTES=65536 api-server/bench/run.sh
#   BEFORE_BIN=/path/to/old/qwp-api-server api-server/bench/run.sh   # and an older server,
#                                      # run beside this one at each client count
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
PAYLOAD_BYTES="${PAYLOAD_BYTES:-4096}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-20 50 200}"
PORT="${BENCH_PORT:-18000}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-18091}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
TOOLS="$ROOT/.cache/tools"
OHA="$TOOLS/bin/oha"
WORK="$(mktemp -d)"

if ! curl -fsS "$AWS_ENDPOINT_URL/_localstack/health" >/dev/null; then
    echo "LocalStack is not reachable at $AWS_ENDPOINT_URL; start it with hack/localstack/localstack.sh up" >&2
    exit 1
fi
if [[ ! -x "$OHA" ]]; then
    echo "installing the load generator oha (crates.io) into $TOOLS" >&2
    cargo install oha --locked --root "$TOOLS" -j2
fi
command -v jq >/dev/null || { echo "jq is required (apt-get install jq)" >&2; exit 1; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -j2 -p qwp-api-server --bin qwp-api-server --example raw_localstack >&2
RAW="$ROOT/target/release/examples/raw_localstack"
SERVERS=("after:$ROOT/target/release/qwp-api-server")
if [[ -n "${BEFORE_BIN:-}" ]]; then
    SERVERS=("before:$BEFORE_BIN" "${SERVERS[@]}")
fi

head -c "$PAYLOAD_BYTES" /dev/urandom >"$WORK/payload.bin"

# Every run gets fresh private buckets and a fresh queue, so no run pays for the
# objects and messages an earlier one left behind.
SERVER_PID=""
STACK_UP=""
fresh_stack() {
    eval "$("$RAW" setup | sed 's/^/export /')"
    STACK_UP=1
}
drop_stack() {
    [[ -n "$STACK_UP" ]] || return 0
    "$RAW" cleanup >&2 || echo "cleanup of $S3_IN_BUCKET/$S3_OUT_BUCKET failed" >&2
    STACK_UP=""
}
start_server() {
    PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" INTERNAL_PORT=0 RUST_LOG=warn "$1" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do curl -fsS "$BASE/health" >/dev/null 2>&1 && break; sleep 0.1; done
    # Servers from before issue 12 answer /readyz on the public port.
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 || curl -fsS "$BASE/readyz" >/dev/null ||
        { echo "server not ready" >&2; cat "$WORK/server.log" >&2; exit 1; }
}
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    stop_server
    drop_stack
    rm -rf "$WORK"
}
trap cleanup EXIT
BASE="http://127.0.0.1:$PORT"

# oha's JSON summary → "rps p50_ms p95_ms p99_ms unexpected": other statuses and errors,
# not counting requests cut off when the run's time is up.
oha_row() {
    local expected="$1" file="$2"
    jq -r --arg ok "$expected" '[
        .summary.requestsPerSec,
        .latencyPercentiles.p50 * 1000, .latencyPercentiles.p95 * 1000, .latencyPercentiles.p99 * 1000,
        ([.statusCodeDistribution | to_entries[] | select(.key != $ok) | .value] | add // 0)
        + ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0)
    ] | @tsv' "$file"
}

echo "| server | clients | API accepted jobs/s | API p50 ms | API p95 ms | API p99 ms | API non-202 | raw Put+Send ops/s | raw p50 ms | raw p95 ms | raw p99 ms | API/raw throughput |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CONCURRENCY_LEVELS; do
    # LocalStack's raw capacity once per client count, between the servers' runs.
    fresh_stack
    "$RAW" drive "$c" "$SECONDS_PER_RUN" "$PAYLOAD_BYTES" >"$WORK/raw-$c.json"
    read -r raw_ops raw_p50 raw_p95 raw_p99 < <(jq -r '[.ops_per_sec, .p50_ms, .p95_ms, .p99_ms] | @tsv' "$WORK/raw-$c.json")
    drop_stack
    for entry in "${SERVERS[@]}"; do
        name="${entry%%:*}"
        fresh_stack
        start_server "${entry#*:}"
        "$OHA" --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -c "$c" -m POST \
            -T application/octet-stream -D "$WORK/payload.bin" \
            "$BASE/jobs?filename=bench.bin&wait=0" >"$WORK/api-$name-$c.json"
        read -r rps p50 p95 p99 bad < <(oha_row 202 "$WORK/api-$name-$c.json")
        stop_server
        drop_stack
        printf '| %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %.2f |\n' \
            "$name" "$c" "$rps" "$p50" "$p95" "$p99" "$bad" "$raw_ops" "$raw_p50" "$raw_p95" "$raw_p99" \
            "$(echo "$rps / $raw_ops" | bc -l)"
    done
done

# Reading a job back: a pending job costs a GetObject of its result (the listing that
# tells pending from unknown is remembered after the first read).
echo
echo "| GET /status/{id} (pending), 50 clients | req/s | p50 ms | p95 ms | p99 ms | non-202 |"
echo "|---|---:|---:|---:|---:|---:|"
for entry in "${SERVERS[@]}"; do
    name="${entry%%:*}"
    fresh_stack
    start_server "${entry#*:}"
    JOB_ID="$(curl -fsS -X POST -H 'content-type: application/octet-stream' --data-binary @"$WORK/payload.bin" \
        "$BASE/jobs?filename=status.bin&wait=0" | jq -r .job_id)"
    "$OHA" --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -c 50 "$BASE/status/$JOB_ID" >"$WORK/status-$name.json"
    read -r rps p50 p95 p99 bad < <(oha_row 202 "$WORK/status-$name.json")
    stop_server
    drop_stack
    printf '| %s | %.1f | %.1f | %.1f | %.1f | %s |\n' "$name" "$rps" "$p50" "$p95" "$p99" "$bad"
done
echo
echo "load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "payload ${PAYLOAD_BYTES} B, ${SECONDS_PER_RUN} s per run, server, LocalStack and load generator on one $(nproc)-core machine"
