#!/usr/bin/env bash
# Install the host packages the cluster needs (Debian/Ubuntu, as root). Idempotent.
#   containerd + runc            container runtime (CRI v1)
#   containernetworking-plugins  bridge/host-local/loopback/portmap CNI plugins
#   iptables, conntrack          kube-proxy (iptables mode) and CNI portmap/masquerade
#   busybox-static               /bin/sh for the test images (no registry to pull one from)
#   gcc, libc6-dev               builds the static pause binary
#   ca-certificates, openssl     image CA bundle, cluster certificates
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $EUID -eq 0 ]] || die "must run as root (containerd, kubelet, mounts, iptables)"

PKGS=(containerd runc containernetworking-plugins iptables conntrack ethtool kmod
      busybox-static gcc libc6-dev ca-certificates openssl util-linux iproute2 procps
      python3 socat)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian containerd package starts its own daemon on /run/containerd; we run our own
# instance with separate root/state/socket, so the packaged service is left as it is.
