#!/usr/bin/env bash
# bench-keda.sh — `make bench-keda` (after localstack-up, keda-up, e2e-images): qwp and real
# KEDA side by side on the local cluster, same worker Deployment, same arrivals; see
# docs/benchmarks.md "qwp vs KEDA on the same cluster". Runs tests/e2e/src/bin/keda_bench.rs,
# which prints one table per trace and writes docs/bench/keda/<trace>.{md,json,csv,png}.
# Environment: KEDA_BENCH_* (see the binary's header), CARGO, CARGO_BUILD_JOBS, KUBECONFIG.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [[ -z ${KUBECONFIG:-} ]]; then
  # shellcheck source=/dev/null
  source hack/cluster/env.sh
fi
# shellcheck source=/dev/null
source hack/keda/lib.sh # KEDA_VERSION
export KEDA_VERSION
kubectl wait --for=condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=60s >/dev/null ||
  die "KEDA is not installed or its metrics API is unavailable: run make keda-up"
cargo="${CARGO:-cargo}"
"$cargo" build -j "${CARGO_BUILD_JOBS:-2}" -p qwp-e2e --bin keda_bench
start=$(date +%s)
target/debug/keda_bench
echo "bench-keda: finished in $(( $(date +%s) - start )) s" >&2
