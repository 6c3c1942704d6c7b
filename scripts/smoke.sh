#!/usr/bin/env bash
# The seed's smoke test: health, upload, result. Prints PASS or fails naming the step.
set -euo pipefail
BASE_URL="${1:-${BASE_URL:-http://localhost:8000}}"
echo "Smoke test against $BASE_URL"

fail() { echo "FAIL: $*" >&2; exit 1; }
json_field() {
  python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1], ""); print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

health=$(curl -fsS "$BASE_URL/health") || fail "GET /health did not answer"
[ "$(echo "$health" | json_field status)" = "ok" ] || fail "GET /health said $health"
echo "Health check OK"

# SMOKE_FILE=photo.jpg sends that file instead (e.g. to a worker with WORKER_PROCESSOR=face);
# SMOKE_EXPECT=text then requires that result.
if [ -n "${SMOKE_FILE:-}" ]; then
  [ -f "$SMOKE_FILE" ] || fail "SMOKE_FILE=$SMOKE_FILE is not a file"
  upload=$SMOKE_FILE
else
  upload=$(mktemp)
  trap 'rm -f "$upload"' EXIT
  printf 'smoke test input %s\n' "$(date +%s%N)" > "$upload"
fi
response=$(curl -sS -w '\n%{http_code}' -F "inputFile=@$upload;filename=$(basename "${SMOKE_FILE:-smoke.txt}")" "$BASE_URL/") || fail "POST / failed"
code=$(echo "$response" | tail -n1)
body=$(echo "$response" | sed '$d')
job_id=$(echo "$body" | json_field job_id)
[ -n "$job_id" ] || fail "POST / answered $code without a job_id: $body"

# A 202 means the worker has not finished within MAX_WAIT_SECONDS: poll for up to 60 s more.
for _ in $(seq 1 60); do
  status=$(echo "$body" | json_field status)
  [ "$status" = "pending" ] || break
  sleep 1
  body=$(curl -sS "$BASE_URL/status/$job_id")
done
status=$(echo "$body" | json_field status)
[ "$status" = "done" ] || fail "job $job_id ended with status '$status': $body"
echo "Upload OK, job_id=$job_id, status=done"
result=$(echo "$body" | json_field result)
echo "Result: $result"
[ -z "${SMOKE_EXPECT:-}" ] || [ "$result" = "$SMOKE_EXPECT" ] || fail "expected the result '$SMOKE_EXPECT', got '$result'"
echo "PASS"
