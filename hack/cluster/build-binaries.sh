#!/usr/bin/env bash
# Build the cluster's binaries once from Go modules into a version-keyed cache:
#   .cache/cluster/<k8s-version>/bin/{etcd,kube-apiserver,kube-controller-manager,
#                                     kube-scheduler,kubelet,kube-proxy,kubectl,kubeadm,helm}
# (kubeadm is for the kind node image, hack/kind/node-image.sh)
# Modules come from the Go module proxy; versions are pinned by hack/cluster/tools/*/go.mod.
# Binaries that already exist are not rebuilt (delete the bin/ folder to force a rebuild).
# With arguments, only those (`build-binaries.sh helm`: the chart checks of `make unit`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_go() {
  command -v go >/dev/null 2>&1 || die "the Go toolchain is required (go >= 1.24) to build Kubernetes from k8s.io/kubernetes"
}

mkdir -p "$BIN_DIR"
JOBS="${QWP_BUILD_JOBS:-2}"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

build() { # build <tools-dir> <ldflags> <pkg>...
  local dir=$1 ldflags=$2; shift 2
  local missing=() p
  for p in "$@"; do [[ -x "$BIN_DIR/$(basename "$p")" ]] || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  need_go
  log "building ${missing[*]##*/} (go build -p $JOBS) ..."
  local t0=$SECONDS
  (cd "$TOOLS_DIR/$dir" && go build -p "$JOBS" -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/" "${missing[@]}")
  log "built ${missing[*]##*/} in $((SECONDS - t0))s"
}

# A copy outside the work tree (kept on this machine) lets fresh clones, such as CI's, skip the
# build: keyed by the Kubernetes version and a hash of the pinned tools modules.
PINS=$(cat "$TOOLS_DIR"/*/go.mod | sha256sum | cut -c1-12)
SHARED_DIR="${QWP_CLUSTER_BIN_CACHE:-$HOME/.cache/qwp-cluster}/$K8S_VERSION-$PINS/bin"
ALL=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm helm)
WANTED=("${@:-${ALL[@]}}")
wanted() { local b; for b in "$@"; do [[ " ${WANTED[*]} " == *" $b "* ]] && return 0; done; return 1; }
for b in "${ALL[@]}"; do
  if [[ ! -x $BIN_DIR/$b && -x $SHARED_DIR/$b ]]; then
    cp -l "$SHARED_DIR/$b" "$BIN_DIR/$b" 2>/dev/null || cp "$SHARED_DIR/$b" "$BIN_DIR/$b"
  fi
done

T0=$SECONDS
# `go build -o dir/` names the etcd main package go.etcd.io/etcd/server/v3 "server"
! wanted etcd || [[ -x "$BIN_DIR/etcd" ]] || { build etcd "" go.etcd.io/etcd/server/v3 && mv "$BIN_DIR/server" "$BIN_DIR/etcd"; }

MAJOR=${K8S_VERSION#v}; MAJOR=${MAJOR%%.*}
MINOR=${K8S_VERSION#v*.}; MINOR=${MINOR%%.*}
KLD=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KLD+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
  KLD+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
! wanted kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm ||
build k8s "$KLD" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubeadm

HELM_VERSION=$(awk '$1=="require" && $2=="helm.sh/helm/v3" {print $3}' "$TOOLS_DIR/helm/go.mod")
! wanted helm || build helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm

mkdir -p "$SHARED_DIR"
for b in "${ALL[@]}"; do
  [[ -x $BIN_DIR/$b ]] || continue
  [[ $BIN_DIR/$b -ef $SHARED_DIR/$b ]] && continue
  rm -f "$SHARED_DIR/$b"
  cp -l "$BIN_DIR/$b" "$SHARED_DIR/$b" 2>/dev/null || cp "$BIN_DIR/$b" "$SHARED_DIR/$b"
done
log "binaries ready in $BIN_DIR ($((SECONDS - T0))s)"
