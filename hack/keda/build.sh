#!/usr/bin/env bash
# Build KEDA's operator (/keda) and metrics adapter (/keda-adapter) from the Go module proxy,
# pinned by hack/keda/tools/go.mod, into a cache keyed by version + pins (~10-15 min cold on
# 2 cores, then instant). Same flags as KEDA's Makefile (CGO off, version stamped).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null 2>&1 || die "the Go toolchain is required (go >= 1.26) to build KEDA"
mkdir -p "$KEDA_BIN_DIR"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
LDFLAGS="-s -w -X=github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION -X=github.com/kedacore/keda/v2/version.GitCommit=module-proxy"
T0=$SECONDS
for cmd in operator:keda adapter:keda-adapter; do
  pkg=github.com/kedacore/keda/v2/cmd/${cmd%%:*} out=$KEDA_BIN_DIR/${cmd##*:}
  [[ -x $out ]] && continue
  klog "building $pkg -> $out (go build -p ${QWP_BUILD_JOBS:-2}) ..."
  t0=$SECONDS
  (cd "$KEDA_TOOLS_DIR" && nice -n 10 go build -p "${QWP_BUILD_JOBS:-2}" -trimpath -ldflags "$LDFLAGS" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  klog "built ${cmd##*:} in $((SECONDS - t0))s"
done
klog "KEDA $KEDA_VERSION binaries ready in $KEDA_BIN_DIR ($((SECONDS - T0))s)"
