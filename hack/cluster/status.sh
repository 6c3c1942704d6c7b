#!/usr/bin/env bash
# Show which cluster components run (by recorded PID), the node and pods. Exit 1 if not up.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PATH="$BIN_DIR:$PATH"
rc=0
for c in containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  f="$RUN_DIR/pids/$c.pid"
  if [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then
    printf '%-24s running (pid %s)\n' "$c" "$(cat "$f")"
  else
    printf '%-24s stopped\n' "$c"; rc=1
  fi
done
echo "kubeconfig: $KUBECONFIG_PATH"
echo "host address for pods (QWP_HOST_ADDR): $BRIDGE_ADDR"
if ((rc == 0)); then
  kubectl --kubeconfig "$KUBECONFIG_PATH" get nodes -o wide || rc=1
  kubectl --kubeconfig "$KUBECONFIG_PATH" get pods -A -o wide 2>/dev/null
fi
exit $rc
