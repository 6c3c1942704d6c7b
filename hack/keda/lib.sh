# shellcheck shell=bash
# Common settings for hack/keda scripts. Source it; do not execute.
KEDA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/lib.sh
source "$KEDA_DIR/../cluster/lib.sh"
KEDA_TOOLS_DIR="$KEDA_DIR/tools"
KEDA_VERSION="$(awk '$1=="require" && $2=="github.com/kedacore/keda/v2" {print $3}' "$KEDA_TOOLS_DIR/go.mod")"
# Binaries: keyed by the version and a hash of the pinned tools module, outside the work tree
# so a fresh clone on the same machine reuses them.
KEDA_PINS="$(cat "$KEDA_TOOLS_DIR/go.mod" "$KEDA_TOOLS_DIR/go.sum" | sha256sum | cut -c1-12)"
KEDA_BIN_DIR="${QWP_KEDA_BIN_CACHE:-$HOME/.cache/qwp-keda}/$KEDA_VERSION-$KEDA_PINS/bin"
KEDA_IMAGE_TAG="${KEDA_VERSION#v}"
KEDA_NAMESPACE=keda
klog() { printf '[keda %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Links KEDA's module source (Go module cache) as hack/keda/kustomize/upstream, for kustomize.
link_upstream() {
  local src
  src=$(cd "$KEDA_TOOLS_DIR" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $src/config/minimal ]] || die "no config/minimal in the KEDA module ($src)"
  ln -sfn "$src" "$KEDA_DIR/kustomize/upstream"
}
