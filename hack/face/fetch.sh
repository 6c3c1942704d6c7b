#!/usr/bin/env bash
# fetch.sh models|photos|all — the face processor's models and labelled test photos, from
# registry packages (nothing else may be downloaded), checked against pinned SHA-256 sums
# and unpacked into the git-ignored cache:
#   $QWP_FACE_CACHE/models/{fr_detect,fr_landmark,fr_feature}.onnx
#       from the npm package faceplugin-face-recognition-js (MIT; see docs/worker.md)
#   $QWP_FACE_CACHE/photos/{johns,faces}/
#       from the Debian package libdlib19.1 (dlib's example photos)
#   $QWP_FACE_CACHE/demo-gallery/{Person Name}/  (demo-gallery: two johns photos per person,
#       a gallery directory for `WORKER_FACE_GALLERY` with `make up-local`)
# Re-running is a no-op once the files are there with the right sums.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${QWP_FACE_CACHE:-$REPO_ROOT/.cache/face}"

NPM_PACKAGE=faceplugin-face-recognition-js@0.0.1
NPM_TARBALL=faceplugin-face-recognition-js-0.0.1.tgz
NPM_SHA256=7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba
MODELS=(
  "fr_detect.onnx 6c0256ccd3164f844736a401faf936ec2930764a87ae39442180887d0c5c8854"
  "fr_landmark.onnx f10b0ba1d2a8a099adefede1ebf3733e44fe370715e7303dbeb7f59c02142258"
  "fr_feature.onnx 87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"
)
DEB_PACKAGE=libdlib19.1=19.24+dfsg-1
DEB_FILE=libdlib19.1_19.24+dfsg-1_amd64.deb
DEB_SHA256=f03f46681d43701914ddd38eee42f1d34dc1d12e2f125bd1e3b562f23572b4da

log() { echo "[face] $*" >&2; }
die() { echo "[face] error: $*" >&2; exit 1; }
check_sum() { # file sha256
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$2" ]] || die "$1: SHA-256 $got, expected the pinned $2"
}
models_ok() {
  local entry
  for entry in "${MODELS[@]}"; do
    set -- $entry
    [[ -f $CACHE/models/$1 ]] || return 1
    [[ $(sha256sum "$CACHE/models/$1" | cut -d' ' -f1) == "$2" ]] || return 1
  done
}

fetch_models() {
  if models_ok; then log "models up to date in $CACHE/models"; return 0; fi
  command -v npm >/dev/null || die "npm is needed to fetch $NPM_PACKAGE (apt-get install npm)"
  local tmp; tmp=$(mktemp -d)
  log "fetching $NPM_PACKAGE"
  (cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  check_sum "$tmp/$NPM_TARBALL" "$NPM_SHA256"
  tar -xzf "$tmp/$NPM_TARBALL" -C "$tmp" package/model package/LICENSE
  mkdir -p "$CACHE/models"
  local entry
  for entry in "${MODELS[@]}"; do
    set -- $entry
    check_sum "$tmp/package/model/$1" "$2"
    install -m 0644 "$tmp/package/model/$1" "$CACHE/models/$1"
  done
  install -m 0644 "$tmp/package/LICENSE" "$CACHE/models/LICENSE"
  rm -rf "$tmp"
  log "models in $CACHE/models"
}

fetch_photos() {
  local dest="$CACHE/photos" stamp="$CACHE/photos/.$DEB_SHA256"
  if [[ -f $stamp ]]; then log "photos up to date in $dest"; return 0; fi
  command -v apt-get >/dev/null || die "apt-get is needed to fetch the Debian package $DEB_PACKAGE"
  local tmp; tmp=$(mktemp -d)
  chmod 0777 "$tmp" # apt's sandbox user writes the download
  log "fetching the Debian package $DEB_PACKAGE"
  if ! (cd "$tmp" && apt-get download -q "$DEB_PACKAGE" >/dev/null 2>&1); then
    log "package not in the apt lists: apt-get update"
    apt-get update -q >/dev/null
    (cd "$tmp" && apt-get download -q "$DEB_PACKAGE" >/dev/null)
  fi
  check_sum "$tmp/$DEB_FILE" "$DEB_SHA256"
  dpkg-deb -x "$tmp/$DEB_FILE" "$tmp/root"
  rm -rf "$dest"; mkdir -p "$dest"
  cp -r "$tmp/root/usr/share/doc/libdlib19.1/examples/johns" "$tmp/root/usr/share/doc/libdlib19.1/examples/faces" "$dest/"
  touch "$stamp"
  rm -rf "$tmp"
  log "photos in $dest"
}

demo_gallery() {
  fetch_photos
  local person name
  for person in "$CACHE"/photos/johns/*/; do
    name=$(basename "$person"); name=${name//_/ }
    mkdir -p "$CACHE/demo-gallery/$name"
    find "$person" -name '*.jpg' | sort | head -n 2 | xargs -I{} cp {} "$CACHE/demo-gallery/$name/"
  done
  log "demo gallery in $CACHE/demo-gallery"
}

case "${1:-all}" in
  models) fetch_models ;;
  photos) fetch_photos ;;
  all) fetch_models; fetch_photos ;;
  demo-gallery) demo_gallery ;;
  *) die "usage: fetch.sh models|photos|all|demo-gallery" ;;
esac
