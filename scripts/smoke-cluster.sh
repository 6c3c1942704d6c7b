#!/usr/bin/env bash
# `make smoke`: the seed's smoke test (scripts/smoke.sh) through the cluster's API server on
# localhost:8000, watching the sample pool's Deployment while it runs: it must start at 0
# replicas, scale up for the request, and return to 0. Prints what it observed, then PASS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BASE_URL="${BASE_URL:-http://localhost:8000}"
NAMESPACE=qwp-system
POOL=qwp-sample
# scale-down window (make up sets 15 s) + polls + the worker's drain, with room for a busy machine
BACK_TO_ZERO_TIMEOUT="${BACK_TO_ZERO_TIMEOUT:-180}"

fail() { echo "FAIL: $*" >&2; exit 1; }
env_out=$(scripts/up.sh env) || fail "nothing is up: run make up (make smoke-local is for make up-local)"
eval "$env_out"
kubectl -n "$NAMESPACE" get queueworkerpool "$POOL" >/dev/null || fail "no pool $POOL in $NAMESPACE"

replicas() { kubectl -n "$NAMESPACE" get deployment "$POOL" -o jsonpath='{.spec.replicas}' 2>/dev/null || echo 0; }

# A previous request may still hold the pool up: wait for 0 first (watch, not sampling).
if [[ $(replicas) != 0 ]]; then
  echo "pool $POOL is at $(replicas) replicas; waiting for it to return to 0 first"
  kubectl -n "$NAMESPACE" wait --for=jsonpath='{.spec.replicas}'=0 "deployment/$POOL" \
    --timeout="${BACK_TO_ZERO_TIMEOUT}s" >/dev/null || fail "pool $POOL did not return to 0 replicas"
fi

# Every change of the Deployment's replicas, with the time it was seen.
trace=$(mktemp)
watch_pid=
cleanup() { [[ -n $watch_pid ]] && kill "$watch_pid" 2>/dev/null; rm -f "$trace"; }
trap cleanup EXIT
(
  kubectl -n "$NAMESPACE" get deployment "$POOL" --watch \
    -o jsonpath='{.spec.replicas} {.status.readyReplicas}{"\n"}' |
    while read -r spec ready; do printf '%s %s %s\n' "$(date +%s.%N)" "$spec" "${ready:-0}"; done
) > "$trace" 2>/dev/null &
watch_pid=$!
# The watch's first event is the current state (0): wait for it so no change is missed.
for _ in $(seq 1 100); do [[ -s $trace ]] && break; sleep 0.1; done
[[ -s $trace ]] || fail "kubectl get --watch on deployment/$POOL printed nothing"
read -r _ first _ < "$trace"
[[ $first == 0 ]] || fail "pool $POOL was at $first replicas, not 0, when the request was sent"

t_request=$(date +%s.%N)
scripts/smoke.sh "$BASE_URL" | grep -v '^PASS$' || fail "the seed request through $BASE_URL failed"
t_done=$(date +%s.%N)

max_seen() { awk '{ if ($2 > m) m = $2 } END { print m + 0 }' "$trace"; }
[[ $(max_seen) -gt 0 ]] || fail "the job was done but pool $POOL never scaled up (trace: $(cat "$trace"))"
echo "pool $POOL scaled up; waiting for it to return to 0 (up to ${BACK_TO_ZERO_TIMEOUT}s)"
deadline=$((SECONDS + BACK_TO_ZERO_TIMEOUT))
until [[ $(tail -n1 "$trace" | awk '{print $2}') == 0 ]]; do
  ((SECONDS < deadline)) || fail "pool $POOL still at $(tail -n1 "$trace" | awk '{print $2}') replicas after ${BACK_TO_ZERO_TIMEOUT}s"
  kill -0 "$watch_pid" 2>/dev/null || fail "the watch on deployment/$POOL ended"
  sleep 1
done

python3 - "$trace" "$t_request" "$t_done" <<'EOF'
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
t_req, t_done = float(sys.argv[2]), float(sys.argv[3])
seq, ups = [], None
for t, spec, ready in rows:
    if not seq or seq[-1] != spec:
        seq.append(spec)
    if ups is None and int(spec) > 0:
        ups = float(t)
first_ready = next((float(t) for t, s, r in rows if int(r) > 0), None)
back = float(rows[-1][0])
print("pool qwp-sample replicas: " + " -> ".join(seq))
print(f"  scaled up {ups - t_req:.1f} s after the request"
      + (f", first worker ready at {first_ready - t_req:.1f} s" if first_ready else "")
      + f", result at {t_done - t_req:.1f} s, back to 0 {back - t_done:.1f} s after the result")
EOF
echo "PASS"
