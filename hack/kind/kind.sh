#!/usr/bin/env bash
# kind.sh up|e2e|down|status — qwp on a kind cluster (make kind-up / kind-e2e / kind-down; make up
# calls the steps one by one). Docker or Podman, whichever works (hack/kind/lib.sh).
#   tools     kind (go install), kubectl/helm/kubeadm (hack/cluster's build), the provider
#   image     the node image (hack/kind/node-image.sh: built here, or kind's published one)
#   create    the cluster (kind-config.yaml), kubeconfig in .cache/kind/kubeconfig
#   images    dev builds of the three binaries as image archives, `kind load image-archive`
#   install   helm install: operator, API server (NodePort → localhost:8000), sample pool at 0
#   up        all of the above;  e2e [filter]  the e2e crate against the cluster;  down  delete it
# It shares every step it can with the hack/cluster path: the same image builder
# (hack/cluster/build-image.sh), the same chart, the same e2e crate (hack/e2e/run.sh).
# LocalStack: KIND_LOCALSTACK=host (default) uses the host's (`make localstack-up`, bound to
# 0.0.0.0), which pods reach at the kind network's gateway; KIND_LOCALSTACK=cluster runs it in
# the cluster from its public image (hack/kind/localstack.yaml; needs a registry).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../face/image.sh
source "$(dirname "${BASH_SOURCE[0]}")/../face/image.sh"
cd "$ROOT"
LOCALSTACK_MODE="${KIND_LOCALSTACK:-host}"
RELEASE=qwp
NAMESPACE=qwp-system
KIND_IMAGES="$KIND_STATE/images"
IMAGE_TAG="${E2E_IMAGE_TAG:-dev}"

tools() { provider; need_kind; need_cluster_tools; }

node_image() {
  "$KIND_LIB_DIR/node-image.sh" | tail -n1
}

# The kind network's IPv4 gateway: the host as the node and its pods reach it.
gateway() {
  provider
  case "$ENGINE" in
    podman) podman network inspect kind --format '{{range .Subnets}}{{.Gateway}} {{end}}' ;;
    docker) docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' ;;
  esac | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | head -n1
}

create() {
  tools
  local image config
  image=$(node_image)
  mkdir -p "$KIND_STATE"
  if cluster_exists; then
    klog "cluster $KIND_CLUSTER exists ($ENGINE)"
    kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1
    return 0
  fi
  config="$KIND_STATE/kind-config.yaml"
  cp kind-config.yaml "$config"
  if [[ $image == localhost/qwp-kind-node:* ]]; then
    # The node image built here has no CoreDNS image and a kube-proxy image for nftables only.
    local etcd_tag
    etcd_tag="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$TOOLS_DIR/etcd/go.mod")"
    cat >> "$config" <<EOF
kubeadmConfigPatches:
  - |
    kind: InitConfiguration
    skipPhases: [addon/coredns]
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: "${etcd_tag#v}-0"
  - |
    kind: KubeProxyConfiguration
    mode: nftables
EOF
  fi
  klog "kind create cluster $KIND_CLUSTER ($ENGINE, $image)"
  kind create cluster --name "$KIND_CLUSTER" --image "$image" --config "$config" \
    --kubeconfig "$KUBECONFIG" --wait 180s
  kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
}

images() {
  tools
  cluster_exists || kdie "no kind cluster $KIND_CLUSTER: make kind-up"
  klog "dev builds of the three binaries, image archives (as make e2e-images), kind load"
  cargo build --bins -p qwp-operator -p qwp-worker -p qwp-api-server
  # Archives of this checkout's kind cluster: hack/cluster's ($IMAGES_DIR) may be another
  # checkout's, loaded by its e2e run at the same time.
  mkdir -p "$KIND_IMAGES"
  local name bin out src extra
  for name in qwp-operator qwp-worker qwp-api-server; do
    bin="$ROOT/target/debug/$name" out="$KIND_IMAGES/$name.tar" extra=()
    src="$(stat -L -c '%n %s %Y' "$bin") $name:$IMAGE_TAG"
    if [[ $name == qwp-worker ]]; then face_model_args; src+=" $(face_models_digest)"; fi
    if [[ ! -f $out || "$(cat "$out.src" 2>/dev/null)" != "$src" ]]; then
      "$CLUSTER_DIR/build-image.sh" "${extra[@]}" "$bin" "$name:$IMAGE_TAG" "$out"
      echo "$src" > "$out.src"
    fi
    kind load image-archive --name "$KIND_CLUSTER" "$out"
  done
}

# Where pods reach LocalStack, and the host's tests reach it, for this LOCALSTACK_MODE.
pod_aws_endpoint() {
  case "$LOCALSTACK_MODE" in
    host) echo "http://$(gateway):4566" ;;
    cluster) echo "http://localstack.localstack:4566" ;;
    *) kdie "KIND_LOCALSTACK=$LOCALSTACK_MODE: use host or cluster" ;;
  esac
}

localstack() {
  case "$LOCALSTACK_MODE" in
    host)
      local gw; gw=$(gateway)
      [[ -n $gw ]] || kdie "no IPv4 gateway on the $ENGINE network 'kind'"
      curl -fsS --max-time 5 "http://$gw:4566/_localstack/health" >/dev/null ||
        kdie "LocalStack does not answer on the kind network's gateway http://$gw:4566: start it bound to all addresses (LOCALSTACK_LISTEN=0.0.0.0:4566 make localstack-up; stop a loopback-only one first)" ;;
    cluster)
      klog "LocalStack in the cluster (hack/kind/localstack.yaml)"
      kubectl apply -f hack/kind/localstack.yaml
      kubectl -n localstack rollout status deploy/localstack --timeout=300s ;;
  esac
}

install() {
  tools
  localstack
  local endpoint; endpoint=$(pod_aws_endpoint)
  klog "helm install $RELEASE (operator, API server on localhost:8000, pool qwp-sample at 0; LocalStack $endpoint)"
  helm upgrade --install "$RELEASE" charts/qwp --namespace "$NAMESPACE" --create-namespace --wait --timeout 180s \
    --set aws.endpoint="$endpoint" \
    --set aws.credentials.create=true,aws.credentials.accessKeyId=test,aws.credentials.secretAccessKey=test \
    --set apiServer.enabled=true,apiServer.service.type=NodePort,apiServer.service.nodePort=30080 \
    --set samplePool.enabled=true,samplePool.scaleDownStabilizationSeconds="${QWP_SAMPLE_SCALE_DOWN_SECONDS:-15}" \
    --set-string operator.podAnnotations.qwp\\.io/images="$(cat "$KIND_IMAGES"/*.src 2>/dev/null | sha256sum | cut -c1-12)"
  local _
  for _ in $(seq 1 60); do
    curl -fsS --max-time 2 http://localhost:8000/health >/dev/null 2>&1 && { klog "API server: http://localhost:8000 (KUBECONFIG=$KUBECONFIG)"; return 0; }
    sleep 1
  done
  kdie "the API server does not answer on http://localhost:8000/health (NodePort 30080 through kind-config.yaml's port map)"
}

e2e() {
  tools
  cluster_exists || kdie "no kind cluster $KIND_CLUSTER: make kind-up"
  images
  localstack
  export E2E_POD_AWS_ENDPOINT; E2E_POD_AWS_ENDPOINT=$(pod_aws_endpoint)
  [[ $LOCALSTACK_MODE == cluster ]] && export AWS_ENDPOINT_URL=http://127.0.0.1:14566
  # Where pods reach this host (the outage test's proxy): the kind network's gateway. On
  # Docker Desktop (macOS, Windows) that does not route to the host; set E2E_HOST_ADDR.
  export E2E_HOST_ADDR="${E2E_HOST_ADDR:-$(gateway)}"
  klog "e2e suite against kind ($ENGINE), pods reach LocalStack at $E2E_POD_AWS_ENDPOINT"
  exec hack/e2e/run.sh "$@"
}

down() {
  provider
  if [[ -x $KIND_BIN ]] && cluster_exists; then
    kind delete cluster --name "$KIND_CLUSTER" --kubeconfig "$KUBECONFIG"
  else
    klog "no kind cluster $KIND_CLUSTER"
  fi
  rm -f "$KUBECONFIG"
  # kind leaves its network behind; remove it when nothing else is attached.
  if [[ $ENGINE == podman ]] && podman network exists kind 2>/dev/null &&
     [[ -z $(podman ps -aq --filter network=kind) ]]; then
    podman network rm kind >/dev/null && klog "removed the podman network kind"
  fi
}

status() {
  provider
  echo "provider: $ENGINE   kind: $KIND_BIN   kubeconfig: $KUBECONFIG"
  if cluster_exists; then kubectl get nodes -o wide; kubectl get pods -A; else echo "no kind cluster $KIND_CLUSTER"; fi
}

case "${1:-}" in
  tools) tools ;;
  image) provider; node_image ;;
  create) create ;;
  images) images ;;
  install) install ;;
  up) create; images; install ;;
  e2e) shift; e2e "$@" ;;
  down) down ;;
  status) status ;;
  gateway) gateway ;;
  *) echo "usage: $0 up|e2e [filter]|down|status|tools|image|create|images|install|gateway" >&2; exit 2 ;;
esac
