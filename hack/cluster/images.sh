#!/usr/bin/env bash
# images.sh build|pause|load|list  — registry-free images for the cluster.
#   pause  build the sandbox image ($SANDBOX_IMAGE) from images/pause.c (static C)
#   build  build qwp-operator / qwp-api-server / qwp-worker images from target/release
#          (whichever exist), plus qwp-testbox (static busybox shell) and qwp-kubectl
#          (the built kubectl) for smoke tests
#   load   import every archive in .cache/cluster/images into containerd's k8s.io namespace
#   list   list images in the cluster's containerd
# Archives (.cache/cluster/images/*.tar) also load with `kind load image-archive` / `docker load`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TAG="${QWP_IMAGE_TAG:-dev}"
RELEASE_DIR="${QWP_RELEASE_DIR:-$REPO_ROOT/target/release}"
mkdir -p "$IMAGES_DIR"
BUILD="$CLUSTER_DIR/build-image.sh"

build_pause() {
  local out="$IMAGES_DIR/pause.tar" src="$CLUSTER_DIR/images/pause.c"
  [[ -f $out && $out -nt $src ]] && return 0
  command -v gcc >/dev/null || die "gcc is required to build the pause image (hack/cluster/install-deps.sh)"
  local tmp; tmp=$(mktemp -d)
  gcc -static -Os -s -o "$tmp/pause" "$src"
  "$BUILD" --user 65535:65535 --dest /pause "$tmp/pause" "$SANDBOX_IMAGE" "$out"
  rm -rf "$tmp"
}

build_testbox() {
  local out="$IMAGES_DIR/qwp-testbox.tar" bb=/bin/busybox
  [[ -x $bb ]] || die "busybox-static is required for the test image (hack/cluster/install-deps.sh)"
  [[ -f $out && $out -nt $bb && $out -nt $CLUSTER_DIR/ociimage.py ]] && return 0
  "$BUILD" --busybox "$bb" --dest /bin/sh --entrypoint '["/bin/sh"]' "$bb" "qwp-testbox:$TAG" "$out"
}

build_kubectl() { # in-cluster API client for smoke tests (kubectl is static: no libraries)
  local out="$IMAGES_DIR/qwp-kubectl.tar" bin="$BIN_DIR/kubectl"
  [[ -x $bin ]] || return 0
  [[ -f $out && $out -nt $bin ]] && return 0
  "$BUILD" "$bin" "qwp-kubectl:$TAG" "$out"
}

# shellcheck source=../face/image.sh
source "$CLUSTER_DIR/../face/image.sh"

build_qwp() {
  local name found=0
  for name in qwp-operator qwp-api-server qwp-worker; do
    local bin="$RELEASE_DIR/$name" out="$IMAGES_DIR/$name.tar" extra=()
    if [[ ! -x $bin ]]; then log "skip $name: $bin not built (cargo build --release)"; continue; fi
    found=1
    if [[ $name == qwp-worker ]]; then face_model_args; fi
    # rebuild when the source binary (path, size, mtime), the tag or the added files changed
    local src; src="$(stat -L -c '%n %s %Y' "$bin") $name:$TAG"
    if ((${#extra[@]})); then src+=" $(face_models_digest)"; fi
    if [[ -f $out && -f $out.src && "$(cat "$out.src")" == "$src" ]]; then log "$name image up to date"; continue; fi
    "$BUILD" "${extra[@]}" "$bin" "$name:$TAG" "$out"
    echo "$src" > "$out.src"
  done
  ((found)) || log "no qwp release binaries found in $RELEASE_DIR"
}

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

load() {
  if ! ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
    die "the cluster's containerd is not running ($CONTAINERD_SOCK): run make cluster-up"
  fi
  local f
  for f in "$IMAGES_DIR"/*.tar; do
    [[ -e $f ]] || continue
    ctr_ images import "$f" >/dev/null || die "ctr images import $f failed"
    log "imported $(basename "$f")"
  done
}

case "${1:-}" in
  pause) build_pause ;;
  build) build_pause; build_testbox; build_kubectl; build_qwp ;;
  load) load ;;
  list) ctr_ images ls ;;
  *) echo "usage: $0 build|pause|load|list" >&2; exit 2 ;;
esac
