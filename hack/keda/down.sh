#!/usr/bin/env bash
# `make keda-down`: remove what keda-up applied (CRDs with every ScaledObject, the operator, the
# adapter and its APIService). Idempotent. An APIService whose server is gone would make API
# discovery, and so namespace deletion, fail for everyone on the cluster: it goes first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export KUBECONFIG="$KUBECONFIG_PATH" PATH="$BIN_DIR:$PATH"
kubectl get --raw /readyz >/dev/null 2>&1 || { klog "cluster not up: nothing to remove"; exit 0; }
kubectl delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found >&2
# Every KEDA object first, while the operator still runs to remove their finalizers (a
# TriggerAuthentication carries one too: left behind, its CRD never goes and delete -k times out).
kinds=()
for kind in scaledobjects scaledjobs triggerauthentications clustertriggerauthentications; do
  kubectl get crd "$kind.keda.sh" >/dev/null 2>&1 && kinds+=("$kind.keda.sh")
done
if ((${#kinds[@]})); then
  kubectl delete "$(IFS=,; echo "${kinds[*]}")" --all -A --ignore-not-found --timeout=60s >&2 || true
fi
link_upstream
kubectl delete -k "$KEDA_DIR/kustomize" --ignore-not-found --timeout=120s >&2
klog "KEDA removed"
