#!/usr/bin/env bash
# build-image.sh [options] <binary> <image:tag> <out.tar>
# Builds a registry-free OCI/docker image archive holding <binary> (at /usr/local/bin/<name>,
# the Entrypoint) plus the shared libraries it links (ldd), /etc/passwd with user 65532,
# /tmp and the CA bundle. No base image is downloaded. Options (see ociimage.py --help):
#   --user U:G  --entrypoint '["/x"]'  --cmd '[..]'  --env K=V  --add SRC:DST  --busybox PATH
# Load with: ctr -n k8s.io images import <out.tar>   |   kind load image-archive <out.tar>
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/ociimage.py" "$@"
