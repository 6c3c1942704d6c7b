#!/usr/bin/env bash
# node-image.sh — the kind node image (`make kind-image`); prints its reference (kind.sh uses it).
#
#   KIND_NODE_IMAGE=<ref>   use that image (pulled by kind if missing), build nothing
#   KIND_NODE_IMAGE=build   always use the image built here
#   (unset)                 kind's published kindest/node of the pinned Kubernetes version when
#                           its registry answers, else the image built here
#
# The built image is kind's node image assembled without a registry, from the same pins as
# hack/cluster: a Debian 12 root filesystem (mmdebstrap from Debian's packages: systemd,
# containerd, runc, CNI plugins, iptables, nftables), kind's entrypoint and systemd units from
# the kind Go module, kubeadm/kubelet/kubectl and the control-plane images (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, etcd, pause) built from the
# k8s.io/kubernetes and etcd pins of hack/cluster/tools, preloaded into the node's containerd.
# What kind's own image has and this one has not: kindnetd (its module is not served; a ptp
# CNI config is baked in instead), CoreDNS (kind.sh turns kubeadm's DNS addon off for this
# image) and the local-path provisioner (a plain StorageClass only). kube-proxy runs in
# nftables mode (its image holds nft, no iptables).
#
# Cached: the image is keyed by a hash of every input (pins, package list, this script, kind's
# version); an image with the key in the provider's store, or the archive in $KIND_HOME, is
# reused; anything else rebuilds (~2-4 min once the Kubernetes binaries exist).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NODE_PACKAGES=systemd,systemd-sysv,containerd,runc,containernetworking-plugins,iptables,nftables,conntrack,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,ca-certificates,procps,jq,pigz,socat
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1     # kubeadm v1.34's pause
ETCD_VERSION="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$TOOLS_DIR/etcd/go.mod")"
ETCD_TAG="${ETCD_VERSION#v}-0"
POD_SUBNET=10.245.0.0/16                      # kind-config.yaml's podSubnet
NODE_POD_CIDR=10.245.0.0/24                   # the first node's range of it

record() { echo "$1"; }

provider
mkdir -p "$KIND_HOME"

case "${KIND_NODE_IMAGE:-}" in
  "" | build) ;;
  *) record "$KIND_NODE_IMAGE"; exit 0 ;;
esac

if [[ -z ${KIND_NODE_IMAGE:-} ]] && getent hosts registry-1.docker.io >/dev/null 2>&1; then
  published="kindest/node:$K8S_VERSION"
  klog "registry reachable: pulling $published"
  if timeout 600 "$ENGINE" pull "docker.io/$published" >&2; then record "docker.io/$published"; exit 0; fi
  klog "could not pull $published; building the node image here"
fi

# --- the key ----------------------------------------------------------------------------------
KEY=$( {
  echo "$KIND_VERSION $K8S_VERSION $DEBIAN_SUITE $NODE_PACKAGES $PAUSE_IMAGE $ETCD_TAG $POD_SUBNET"
  cat "$TOOLS_DIR"/*/go.mod "${BASH_SOURCE[0]}" "$CLUSTER_DIR/ociimage.py" "$CLUSTER_DIR/images/pause.c"
} | sha256sum | cut -c1-12)
IMAGE="localhost/qwp-kind-node:$K8S_VERSION-$KEY"
ARCHIVE="$KIND_HOME/node-$KEY.tar"

if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
  klog "node image $IMAGE is up to date"
  record "$IMAGE"; exit 0
fi

import_archive() {
  klog "importing $ARCHIVE as $IMAGE ($ENGINE)"
  "$ENGINE" import \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --change 'ENV container=docker' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    "$ARCHIVE" "$IMAGE" >/dev/null
}
if [[ -f $ARCHIVE ]]; then import_archive; record "$IMAGE"; exit 0; fi

# --- build --------------------------------------------------------------------------------------
T0=$SECONDS
[[ $EUID -eq 0 ]] || kdie "building the node image needs root (mmdebstrap, a temporary containerd)"
apt_install mmdebstrap containerd nftables gcc libc6-dev python3 ca-certificates
need_kind
need_cluster_tools
for b in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd; do
  [[ -x $BIN_DIR/$b ]] || kdie "$BIN_DIR/$b is missing (hack/cluster/build-binaries.sh)"
done
KIND_MOD="$(cd "$KIND_HOME" && GOFLAGS='' go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
KIND_FILES="$KIND_MOD/images/base/files"
[[ -f $KIND_FILES/usr/local/bin/entrypoint ]] || kdie "kind's node files are not in $KIND_MOD"

# 1. Debian root filesystem (cached by suite and package list)
BASE_KEY=$(echo "$DEBIAN_SUITE $NODE_PACKAGES" | sha256sum | cut -c1-12)
BASE="$KIND_HOME/rootfs-$DEBIAN_SUITE-$BASE_KEY.tar"
if [[ ! -f $BASE ]]; then
  klog "mmdebstrap $DEBIAN_SUITE ($NODE_PACKAGES)"
  rm -rf "$BASE.tmp"
  nice -n 10 mmdebstrap --mode=root --format=tar --variant=minbase --include="$NODE_PACKAGES" \
    "$DEBIAN_SUITE" "$BASE.tmp" "$DEBIAN_MIRROR" >&2
  mv "$BASE.tmp" "$BASE"
fi

WORK="$KIND_HOME/build-$KEY"
R="$WORK/rootfs"
CTRD_RUN="/run/qwp-kind-build-$KEY"
cleanup() {
  if [[ -f $CTRD_RUN/pid ]]; then kill "$(cat "$CTRD_RUN/pid")" 2>/dev/null || true; fi
  rm -rf "$CTRD_RUN" "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$R" "$WORK/images"
tar -C "$R" -xf "$BASE"

# 2. kind's node files and the changes of kind's base image Dockerfile
klog "kind $KIND_VERSION node files, systemd units"
install -m 0755 "$KIND_FILES"/usr/local/bin/* "$R/usr/local/bin/"
mkdir -p "$R/kind/bin"
cp -r "$KIND_FILES/kind/." "$R/kind/"
chmod -R u=rwX,go=rX "$R/kind"; chmod 0755 "$R"/kind/bin/*
cp "$KIND_FILES/etc/crictl.yaml" "$R/etc/"
mkdir -p "$R/etc/containerd" "$R/etc/default" "$R/etc/sysctl.d" "$R/etc/systemd/system/kubelet.service.d"
cp "$KIND_FILES"/etc/default/* "$R/etc/default/"
cp "$KIND_FILES"/etc/sysctl.d/* "$R/etc/sysctl.d/"
cp "$KIND_FILES"/etc/systemd/system/*.service "$KIND_FILES"/etc/systemd/system/*.slice "$R/etc/systemd/system/"
cp "$KIND_FILES"/etc/systemd/system/kubelet.service.d/* "$R/etc/systemd/system/kubelet.service.d/"
find "$R/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$R"/lib/systemd/system/multi-user.target.wants/* "$R"/etc/systemd/system/*.wants/* \
  "$R"/lib/systemd/system/local-fs.target.wants/* "$R"/lib/systemd/system/sockets.target.wants/*udev* \
  "$R"/lib/systemd/system/sockets.target.wants/*initctl* "$R"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$R/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$R/sbin/init"
chroot "$R" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$R/etc/kubernetes/manifests"
# Debian's containerd and CNI plugins where kind's units and defaults look for them
ln -sf /usr/bin/containerd "$R/usr/local/bin/containerd"
mkdir -p "$R/opt/cni"; ln -sfn /usr/lib/cni "$R/opt/cni/bin"
chroot "$R" sh -c 'ctr oci spec | jq ".hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}" | jq "del(.process.rlimits)"' \
  > "$R/etc/containerd/cri-base.json"
# kind's containerd config, with kubeadm's pause image and restrict_oom_score_adj: a root
# without CAP_SYS_RESOURCE (these VMs) cannot set the negative scores kubelet asks for; the
# option clamps them to containerd's own score, which changes nothing where it could.
sed -e "s|sandbox_image = .*|sandbox_image = \"$PAUSE_IMAGE\"|" \
    -e 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' \
    "$KIND_FILES/etc/containerd/config.toml" > "$R/etc/containerd/config.toml"
# Pod network in place of kindnetd: ptp (routed veths, as kindnetd does), masquerade off the node.
mkdir -p "$R/etc/cni/net.d"
cat > "$R/etc/cni/net.d/10-qwp-ptp.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "qwp-kind",
  "plugins": [
    {"type": "ptp", "ipMasq": true, "mtu": 1500,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
install -m 0755 "$BIN_DIR/kubeadm" "$BIN_DIR/kubelet" "$BIN_DIR/kubectl" "$R/usr/bin/"
echo "$K8S_VERSION" > "$R/kind/version"
mkdir -p "$R/kind/manifests"
# kind applies this as the "default CNI": the network itself is the ptp config above.
cat > "$R/kind/manifests/default-cni.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: qwp-kind-cni
  namespace: kube-system
data:
  README: "Pod network: /etc/cni/net.d/10-qwp-ptp.conflist in the node image (ptp + host-local $NODE_POD_CIDR), no CNI pods."
EOF
cat > "$R/kind/manifests/default-storage.yaml" <<'EOF'
# No provisioner in this node image (kind's local-path-provisioner needs a registry).
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF

# 3. the control-plane images (root: they read kubeadm's keys), registry-free archives
klog "control-plane images ($K8S_VERSION, etcd $ETCD_TAG, $PAUSE_IMAGE)"
img() { python3 "$CLUSTER_DIR/ociimage.py" --user 0:0 "$@" >/dev/null; }
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  img "$BIN_DIR/$c" "registry.k8s.io/$c:$K8S_VERSION" "$WORK/images/$c.tar"
done
# kube-proxy in nftables mode (kind.sh sets it for this image) needs only nft
img --add "$(command -v nft):/usr/sbin/nft" "$BIN_DIR/kube-proxy" "registry.k8s.io/kube-proxy:$K8S_VERSION" "$WORK/images/kube-proxy.tar"
img "$BIN_DIR/etcd" "registry.k8s.io/etcd:$ETCD_TAG" "$WORK/images/etcd.tar"
gcc -static -Os -s -o "$WORK/pause" "$CLUSTER_DIR/images/pause.c"
python3 "$CLUSTER_DIR/ociimage.py" --user 65535:65535 --dest /pause "$WORK/pause" "$PAUSE_IMAGE" "$WORK/images/pause.tar" >/dev/null

# 4. preload them into the node's containerd store, with a containerd of our own on the host
# (same Debian package as the node's) whose root is the node's /var/lib/containerd
klog "preloading the images into the node's containerd"
mkdir -p "$CTRD_RUN"
cat > "$CTRD_RUN/config.toml" <<EOF
version = 2
root = "$R/var/lib/containerd"
state = "$CTRD_RUN/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_RUN/containerd.sock"
[ttrpc]
  address = "$CTRD_RUN/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_RUN/opt"
EOF
containerd --config "$CTRD_RUN/config.toml" > "$CTRD_RUN/containerd.log" 2>&1 &
echo $! > "$CTRD_RUN/pid"
for _ in $(seq 1 100); do ctr --address "$CTRD_RUN/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr --address "$CTRD_RUN/containerd.sock" version >/dev/null || kdie "temporary containerd did not start: $(tail -5 "$CTRD_RUN/containerd.log")"
for f in "$WORK"/images/*.tar; do
  ctr --address "$CTRD_RUN/containerd.sock" -n k8s.io images import --snapshotter overlayfs "$f" >/dev/null
done
ctr --address "$CTRD_RUN/containerd.sock" -n k8s.io images ls -q >&2
kill "$(cat "$CTRD_RUN/pid")"; wait "$(cat "$CTRD_RUN/pid")" 2>/dev/null || true; rm -f "$CTRD_RUN/pid"

# 5. the archive and the image
klog "writing $ARCHIVE"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$R" -cf "$ARCHIVE.tmp" .
mv "$ARCHIVE.tmp" "$ARCHIVE"
import_archive
# older keys' archives and images are dead weight (an image a node still runs stays)
find "$KIND_HOME" -maxdepth 1 -name 'node-*.tar' ! -name "node-$KEY.tar" -delete
"$ENGINE" images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/qwp-kind-node:' | grep -vx "$IMAGE" |
  while read -r old; do "$ENGINE" rmi "$old" >/dev/null 2>&1 || true; done
klog "node image $IMAGE built in $((SECONDS - T0))s"
record "$IMAGE"
