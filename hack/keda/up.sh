#!/usr/bin/env bash
# `make keda-up`: KEDA on the local cluster (hack/cluster), idempotent.
#   1. build the operator and the metrics adapter from the Go module proxy (cached, build.sh)
#   2. image archives ghcr.io/kedacore/{keda,keda-metrics-apiserver}:<version> (binary at /keda,
#      /keda-adapter, as KEDA's manifests expect), imported into the cluster's containerd
#   3. `kubectl apply --server-side -k hack/keda/kustomize`: KEDA's own config/minimal from the
#      module source, patched for local images and no cluster DNS
#   4. wait for both Deployments and the external-metrics APIService, then smoke.sh
# Needs the cluster up with the aggregation layer (hack/cluster/up.sh sets its flags).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$SECONDS
export KUBECONFIG="$KUBECONFIG_PATH" PATH="$BIN_DIR:$PATH"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the cluster is not up: run make cluster-up"

"$KEDA_DIR/build.sh"

images="$CACHE_DIR/keda/images"
mkdir -p "$images"
for image in keda:keda keda-metrics-apiserver:keda-adapter; do
  name=${image%%:*} bin=${image##*:}
  out="$images/$name-$KEDA_IMAGE_TAG.tar"
  if [[ ! -f $out || $KEDA_BIN_DIR/$bin -nt $out ]]; then
    "$CLUSTER_DIR/build-image.sh" --dest "/$bin" "$KEDA_BIN_DIR/$bin" "ghcr.io/kedacore/$name:$KEDA_IMAGE_TAG" "$out"
  fi
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$out" >/dev/null
  klog "image ghcr.io/kedacore/$name:$KEDA_IMAGE_TAG imported"
done

# The manifests come from the module source (the Go module cache), linked into the overlay.
link_upstream
grep -q "newTag: \"$KEDA_IMAGE_TAG\"" "$KEDA_DIR/kustomize/kustomization.yaml" ||
  die "hack/keda/kustomize/kustomization.yaml: image tags must be $KEDA_IMAGE_TAG (tools/go.mod)"

kubectl apply --server-side --force-conflicts -k "$KEDA_DIR/kustomize" >/dev/null
klog "KEDA $KEDA_VERSION manifests applied (config/minimal + hack/keda/kustomize)"
kubectl -n "$KEDA_NAMESPACE" rollout status deploy/keda-operator --timeout=180s >&2
kubectl -n "$KEDA_NAMESPACE" rollout status deploy/keda-metrics-apiserver --timeout=180s >&2
kubectl wait --for=condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=120s >&2
klog "KEDA up in $((SECONDS - T0))s"

[[ ${QWP_KEDA_SMOKE:-1} == 1 ]] && "$KEDA_DIR/smoke.sh"
