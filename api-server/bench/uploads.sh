#!/usr/bin/env bash
# API server under concurrent maximum-size uploads: peak RSS and accepted jobs/s with 10,
# 40 and 100 clients each sending 8 MiB raw uploads back to back (examples/upload_flood.rs,
# clients honour Retry-After). Each run gets a fresh server and fresh private buckets and
# queue on LocalStack. Prints a markdown table; its "checks" column says whether every
# request was answered within 2 minutes and every accepted job has its input in S3 and
# its message queued, with nothing queued or stored that was not accepted (the script
# exits 1 otherwise, after the table). Needs LocalStack on AWS_ENDPOINT_URL
# (default http://127.0.0.1:4566): hack/localstack/localstack.sh up.
#
#   api-server/bench/uploads.sh                                # this checkout's server
#   BEFORE_BIN=/path/to/old/qwp-api-server api-server/bench/uploads.sh   # and an older one
#   SECONDS_PER_RUN=30 CONCURRENCY_LEVELS="40" SERVER_ENV="UPLOAD_MEMORY_MB=160" api-server/bench/uploads.sh
#   DRIPS=6 CONCURRENCY_LEVELS=40 api-server/bench/uploads.sh   # plus 6 slow-drip bodies (1 KiB/s)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-20}"
PAYLOAD_BYTES="${PAYLOAD_BYTES:-8388608}"
CONCURRENCY_LEVELS="${CONCURRENCY_LEVELS:-10 40 100}"
# Extra settings for the server under test, e.g. "UPLOAD_MEMORY_MB=160 MAX_CONNECTIONS=512".
SERVER_ENV="${SERVER_ENV:-}"
# Clients that announce PAYLOAD_BYTES and send 1 KiB/s, beside the uploads.
DRIPS="${DRIPS:-0}"
PORT="${BENCH_PORT:-18000}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-18091}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
WORK="$(mktemp -d)"

if ! curl -fsS "$AWS_ENDPOINT_URL/_localstack/health" >/dev/null; then
    echo "LocalStack is not reachable at $AWS_ENDPOINT_URL; start it with hack/localstack/localstack.sh up" >&2
    exit 1
fi
command -v jq >/dev/null || { echo "jq is required (apt-get install jq)" >&2; exit 1; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -j2 -p qwp-api-server --bin qwp-api-server --example raw_localstack --example upload_flood >&2
RAW="$ROOT/target/release/examples/raw_localstack"
FLOOD="$ROOT/target/release/examples/upload_flood"
SERVERS=("after:$ROOT/target/release/qwp-api-server")
if [[ -n "${BEFORE_BIN:-}" ]]; then
    SERVERS=("before:$BEFORE_BIN" "${SERVERS[@]}")
fi

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
    # shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=VALUE words
    env PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" INTERNAL_PORT=0 RUST_LOG=warn $SERVER_ENV "$1" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do curl -fsS "$BASE/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "server did not start" >&2; cat "$WORK/server.log" >&2; exit 1
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

echo "| server | clients | accepted jobs/s | accepted | 503 (Retry-After) | 408 | other/errors | accepted p50 ms | accepted p95 ms | slowest answer s | slow drips answered | /health after | checks | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|"
FAILED=""
for entry in "${SERVERS[@]}"; do
    name="${entry%%:*}"
    bin="${entry#*:}"
    for c in $CONCURRENCY_LEVELS; do
        fresh_stack
        start_server "$bin"
        "$FLOOD" "$BASE" "$c" "$SECONDS_PER_RUN" "$PAYLOAD_BYTES" "$SERVER_PID" "$DRIPS" >"$WORK/flood.json"
        health="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/health" || true)"
        stop_server
        drop_stack
        jq -r --arg name "$name" --arg c "$c" --arg health "$health" \
            '"| \($name) | \($c) | \(.accepted_per_sec * 10 | round / 10) | \(.accepted) | \(.refused_503) | \(.timed_out_408) | \(.other + .errors) | \(.p50_ms | round) | \(.p95_ms | round) | \(.max_answer_ms / 100 | round / 10) | \(.drip_answers | to_entries | map("\(.value)× \(.key)") | join(", ") | if . == "" then "—" else . end) | \($health) | \([if .unanswered > 0 then "\(.unanswered) unanswered" else empty end, if .lost > 0 then "\(.lost) lost" else empty end, if .queued_without_input > 0 then "\(.queued_without_input) queued without input" else empty end, if .stored_not_accepted > 0 then "\(.stored_not_accepted) stored, not accepted" else empty end] | if . == [] then "ok" else join(", ") end) | \(.peak_rss_mib * 10 | round / 10) |"' \
            "$WORK/flood.json"
        if [[ "$health" != 200 ]] || ! jq -e '.unanswered == 0 and .lost == 0 and .queued_without_input == 0 and .stored_not_accepted == 0' "$WORK/flood.json" >/dev/null; then
            FAILED+=" $name/$c"
        fi
    done
done
echo
echo "load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "payload ${PAYLOAD_BYTES} B, ${SECONDS_PER_RUN} s per run, ${DRIPS} slow drips${SERVER_ENV:+, server settings: $SERVER_ENV}; server, LocalStack and load generator on one $(nproc)-core machine"
if [[ -n "$FAILED" ]]; then
    echo "checks failed for:$FAILED" >&2
    exit 1
fi
