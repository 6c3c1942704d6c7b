#!/usr/bin/env bash
# bench-seed.sh — `make bench-seed`: the seeds' workloads (flash sale, upload-to-result, status
# reads) on the local cluster; see docs/benchmarks.md "Seed workloads on the local cluster".
# The API server and the workers run release builds, as a user deploys them, loaded as images
# tagged `bench` (the operator keeps the e2e suite's dev image; `make e2e-images` builds it).
# Installs the load generator oha into .cache/tools if missing, then runs the seed_workloads
# binary (tests/e2e/src/bin/seed_workloads.rs), which prints the table and writes docs/bench/.
# Environment: SEED_* (see the binary's header), CARGO, CARGO_BUILD_JOBS, KUBECONFIG.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [[ -z ${KUBECONFIG:-} ]]; then
  # shellcheck source=/dev/null
  source hack/cluster/env.sh
fi
# shellcheck source=/dev/null
source hack/cluster/lib.sh # CONTAINERD_SOCK
cargo="${CARGO:-cargo}"
jobs="${CARGO_BUILD_JOBS:-2}"
export SEED_IMAGE_TAG="${SEED_IMAGE_TAG:-bench}"

# The workloads run the sleep and checksum processors: the worker is built without the face
# processor (no tract to compile in release mode).
"$cargo" build --release -j "$jobs" -p qwp-api-server -p qwp-worker --no-default-features
mkdir -p .cache/bench-images
for name in qwp-api-server qwp-worker; do
  hack/cluster/build-image.sh "target/release/$name" "$name:$SEED_IMAGE_TAG" ".cache/bench-images/$name.tar"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import ".cache/bench-images/$name.tar"
done
if [[ ! -x .cache/tools/bin/oha ]]; then
  echo "bench-seed: installing the load generator oha (crates.io) into .cache/tools" >&2
  "$cargo" install oha --locked --root .cache/tools -j "$jobs"
fi
"$cargo" build -j "$jobs" -p qwp-e2e --bin seed_workloads
start=$(date +%s)
target/debug/seed_workloads
echo "bench-seed: workloads finished in $(( $(date +%s) - start )) s"
