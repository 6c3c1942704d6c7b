#!/usr/bin/env bash
# run.sh [cargo test filter...] — the end-to-end suite against the current kubeconfig.
# `make e2e` prepares the local cluster, LocalStack and images, then calls this; `make kind-e2e`
# calls it with the kind cluster's settings. Extra arguments go to the test binary
# (e.g. `hack/e2e/run.sh t3_burst`).
# Environment (defaults for the local cluster): KUBECONFIG, QWP_HOST_ADDR (from
# hack/cluster/env.sh), E2E_POD_AWS_ENDPOINT, AWS_ENDPOINT_URL, E2E_IMAGE_TAG; see docs/e2e.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [[ -z ${KUBECONFIG:-} && -f hack/cluster/env.sh ]]; then
  # shellcheck source=/dev/null
  source hack/cluster/env.sh
fi
command -v kubectl >/dev/null || { echo "e2e: kubectl not on PATH (source hack/cluster/env.sh)" >&2; exit 1; }
command -v helm >/dev/null || { echo "e2e: helm not on PATH (source hack/cluster/env.sh)" >&2; exit 1; }
kubectl get nodes >/dev/null || { echo "e2e: the cluster in $KUBECONFIG does not answer (make cluster-up)" >&2; exit 1; }

cargo="${CARGO:-cargo}"
"$cargo" build -p qwp-e2e --tests -j "${CARGO_BUILD_JOBS:-2}"
start=$(date +%s)
status=0
"$cargo" test -p qwp-e2e --test e2e -j "${CARGO_BUILD_JOBS:-2}" -- --test-threads=1 --nocapture "$@" || status=$?
echo "e2e: suite finished in $(( $(date +%s) - start )) s (exit $status); output in tests/e2e/out/"
exit "$status"
