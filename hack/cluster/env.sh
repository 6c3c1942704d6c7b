# shellcheck shell=bash
# Source me: exports KUBECONFIG, QWP_HOST_ADDR and puts the cluster's kubectl/helm first on PATH.
#   source hack/cluster/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export KUBECONFIG="$KUBECONFIG_PATH"
export PATH="$BIN_DIR:$PATH"
export QWP_HOST_ADDR="$BRIDGE_ADDR"
export QWP_CLUSTER_IMAGES_DIR="$IMAGES_DIR"
