#!/usr/bin/env bash
# kind.sh up|e2e|down — qwp on kind, for machines with Docker (make kind-up / kind-e2e /
# kind-down). It shares every step it can with the local-cluster path: the same image archives
# (hack/cluster/images.sh, loaded with `kind load image-archive`), the same chart, the same e2e
# crate (hack/e2e/run.sh). What differs: LocalStack runs in the cluster from its public image
# (hack/e2e/kind-localstack.yaml) and the host reaches it through kind-config.yaml's port map.
# Needs: docker, kind (installed with `go install` into .cache/kind/bin when missing), kubectl
# and helm (from PATH, else hack/cluster's built binaries).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLUSTER=qwp
KIND_DIR="$ROOT/.cache/kind"
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
export KUBECONFIG="$KIND_DIR/kubeconfig"
export PATH="$KIND_DIR/bin:$PATH"
log() { printf '[kind %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[kind] ERROR: %s\n' "$*" >&2; exit 1; }

tools() {
  command -v docker >/dev/null || die "docker is required for kind"
  if ! command -v kind >/dev/null; then
    command -v go >/dev/null || die "kind is not installed and go is missing to install it"
    log "installing kind $KIND_VERSION into $KIND_DIR/bin"
    GOBIN="$KIND_DIR/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
  if ! command -v kubectl >/dev/null || ! command -v helm >/dev/null; then
    make -C "$ROOT" cluster-binaries
    # shellcheck source=/dev/null
    source "$ROOT/hack/cluster/lib.sh"
    export PATH="$PATH:$BIN_DIR"
  fi
}

up() {
  tools
  mkdir -p "$KIND_DIR"
  if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 120s
  fi
  log "building the images (dev builds, the same archives as make e2e-images)"
  cargo build --bins -p qwp-operator -p qwp-worker -p qwp-api-server
  QWP_RELEASE_DIR="$ROOT/target/debug" hack/cluster/images.sh build
  for image in qwp-operator qwp-worker qwp-api-server; do
    kind load image-archive --name "$CLUSTER" ".cache/cluster/images/$image.tar"
  done
  log "LocalStack in the cluster"
  kubectl apply -f hack/e2e/kind-localstack.yaml
  kubectl -n localstack rollout status deploy/localstack --timeout=300s
  log "helm install (operator, API server on localhost:8000, sample pool)"
  helm upgrade --install qwp charts/qwp --namespace qwp-system --create-namespace --wait --timeout 180s \
    --set aws.endpoint=http://localstack.localstack:4566 \
    --set aws.credentials.create=true,aws.credentials.accessKeyId=test,aws.credentials.secretAccessKey=test \
    --set apiServer.enabled=true,apiServer.service.type=NodePort,apiServer.service.nodePort=30080 \
    --set samplePool.enabled=true
  log "ready: curl -F inputFile=@README.md http://localhost:8000/   (KUBECONFIG=$KUBECONFIG)"
}

e2e() {
  tools
  kind get clusters | grep -qx "$CLUSTER" || die "no kind cluster $CLUSTER: make kind-up"
  # The suite reuses the release kind-up installed (helm --reset-then-reuse-values).
  export AWS_ENDPOINT_URL=http://127.0.0.1:14566
  export E2E_POD_AWS_ENDPOINT=http://localstack.localstack:4566
  # Where pods reach this host (the outage test's proxy): the kind network's gateway. On
  # Docker Desktop (macOS, Windows) that does not route to the host; set E2E_HOST_ADDR.
  E2E_HOST_ADDR="${E2E_HOST_ADDR:-$(docker network inspect kind -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' | awk '{print $1}')}"
  export E2E_HOST_ADDR
  exec hack/e2e/run.sh "$@"
}

down() {
  command -v kind >/dev/null || die "kind is not installed"
  kind delete cluster --name "$CLUSTER"
  rm -f "$KUBECONFIG"
}

case "${1:-}" in
  up) up ;;
  e2e) shift; e2e "$@" ;;
  down) down ;;
  *) echo "usage: $0 up|e2e|down" >&2; exit 2 ;;
esac
