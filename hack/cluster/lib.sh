# shellcheck shell=bash
# Common settings for hack/cluster scripts. Source it; do not execute.
CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
TOOLS_DIR="$CLUSTER_DIR/tools"
K8S_VERSION="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$TOOLS_DIR/k8s/go.mod")"
CACHE_DIR="${QWP_CLUSTER_CACHE:-$REPO_ROOT/.cache/cluster}"
BIN_DIR="$CACHE_DIR/$K8S_VERSION/bin"
IMAGES_DIR="$CACHE_DIR/images"
KUBECONFIG_PATH="$CACHE_DIR/kubeconfig"
# Runtime state lives outside the repo: kubelet/containerd mount things under it.
STATE_DIR="${QWP_CLUSTER_STATE:-/var/lib/qwp-cluster}"
RUN_DIR="${QWP_CLUSTER_RUN:-/run/qwp-cluster}"
LOG_DIR="$STATE_DIR/logs"
PKI_DIR="$STATE_DIR/pki"
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"

# Networking (all inside network namespaces this cluster creates).
CLUSTER_NAME=qwp
NODE_NAME="${QWP_NODE_NAME:-qwp-node}"
POD_CIDR="${QWP_POD_CIDR:-10.244.0.0/24}"
BRIDGE_NAME=qwp-cni0
BRIDGE_ADDR="${QWP_BRIDGE_ADDR:-10.244.0.1}"       # gateway of the pod bridge = node address pods reach
SERVICE_CIDR="${QWP_SERVICE_CIDR:-10.96.0.0/16}"
KUBERNETES_SVC_IP="${QWP_KUBERNETES_SVC_IP:-10.96.0.1}"
APISERVER_PORT="${QWP_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${QWP_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${QWP_ETCD_PEER_PORT:-23800}"
SANDBOX_IMAGE="${QWP_SANDBOX_IMAGE:-registry.k8s.io/pause:3.10}"

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }
