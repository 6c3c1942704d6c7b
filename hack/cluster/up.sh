#!/usr/bin/env bash
# Start a single-node Kubernetes on this host without Docker (like kind/kubeadm, minus images):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler as host processes; containerd
# (own config/root/state/socket, cgroupfs) + kubelet + kube-proxy (iptables) and CNI bridge
# networking. Idempotent: components already running (by recorded PID) are left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $EUID -eq 0 ]] || die "cluster-up must run as root"
T0=$SECONDS

"$CLUSTER_DIR/install-deps.sh"
"$CLUSTER_DIR/build-binaries.sh"
T_BUILD=$SECONDS
export PATH="$BIN_DIR:$PATH"

mkdir -p "$STATE_DIR" "$RUN_DIR/pids" "$LOG_DIR"
"$CLUSTER_DIR/pki.sh"

running() { local f="$RUN_DIR/pids/$1.pid"; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }
start() { # start <name> <cmd...>: run detached in its own session, record the PID
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$RUN_DIR/pids/$name.pid"))"; return 0; fi
  log "starting $name"
  # own session (survives make/terminal signals); the PID file is written by the process that
  # then execs the component, so it is the component's PID even if setsid has to fork. Every
  # descriptor above stderr is closed first: a component must not keep what the caller had
  # open, e.g. `flock /tmp/qwp-e2e.lock make e2e`'s lock, which would then never be released.
  setsid bash -c 'for fd in $(ls /proc/$$/fd); do ((fd > 2)) && eval "exec $fd>&-"; done
    echo $$ > "$0"; exec "$@"' "$RUN_DIR/pids/$name.pid" "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  local i
  for ((i = 0; i < 50; i++)); do [[ -s $RUN_DIR/pids/$name.pid ]] && return 0; sleep 0.1; done
  die "$name did not start"
}
start_or_restart() { # start_or_restart <name> <cmd...>: as start, but a running process whose
  # command line differs (e.g. flags added to up.sh since it started) is stopped and started anew
  local name=$1; shift
  if running "$name"; then
    local pid; pid=$(cat "$RUN_DIR/pids/$name.pid")
    if cmp -s <(printf '%s\0' "$@") "/proc/$pid/cmdline"; then
      log "$name already running (pid $pid)"; return 0
    fi
    log "restarting $name (pid $pid): its flags changed"
    kill "$pid"
    local i
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not stop within 30 s"
  fi
  start "$name" "$@"
}
wait_for() { # wait_for <what> <seconds> <cmd...>
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "timed out after ${secs}s waiting for $what (logs: $LOG_DIR)"
}
write_if_changed() { # write_if_changed <file> < content: components restart or exit when configs change
  local f=$1 tmp; tmp=$(mktemp)
  cat > "$tmp"
  if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv "$tmp" "$f"; chmod 644 "$f"; fi
}
check_alive() { running "$1" || die "$1 exited; last log lines:"$'\n'"$(tail -n 30 "$LOG_DIR/$1.log")"; }

# --- host settings (previous values saved once, restored by cluster-down) -------------------
SYSCTLS=(net/ipv4/conf/all/route_localnet=0 net/ipv4/ip_forward=1 net/bridge/bridge-nf-call-iptables=1 net/bridge/bridge-nf-call-ip6tables=1
         vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
         kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)
if [[ ! -f $STATE_DIR/sysctl.saved ]]; then
  for kv in "${SYSCTLS[@]}"; do k=${kv%%=*}; [[ -e /proc/sys/$k ]] && echo "$k=$(cat "/proc/sys/$k")"; done \
    > "$STATE_DIR/sysctl.saved"
fi
# the kubelet sets the last six itself (protectKernelDefaults: false); we set them first so
# that cluster-down knows what to restore.
for kv in "${SYSCTLS[@]}"; do k=${kv%%=*}; [[ -e /proc/sys/$k ]] && echo "${kv#*=}" > "/proc/sys/$k"; done

# --- pod network: our own bridge, its gateway is the node address pods reach -------------------
if ! ip link show "$BRIDGE_NAME" >/dev/null 2>&1; then
  ip link add "$BRIDGE_NAME" type bridge
fi
# (captured, not piped into grep -q: under pipefail ip dies of SIGPIPE once grep has matched)
[[ $(ip -4 addr show dev "$BRIDGE_NAME") == *"inet $BRIDGE_ADDR/"* ]] || ip addr add "$BRIDGE_ADDR/${POD_CIDR#*/}" dev "$BRIDGE_NAME"
ip link set "$BRIDGE_NAME" up
# Host services bound to 127.0.0.1 (LocalStack :4566) reached from pods as $BRIDGE_ADDR:<port>:
# an in-kernel forwarder (DNAT to loopback, route_localnet on the bridge only), no daemon.
echo 1 > "/proc/sys/net/ipv4/conf/$BRIDGE_NAME/route_localnet"
iptables -t nat -N QWP-HOST-FWD 2>/dev/null || iptables -t nat -F QWP-HOST-FWD
iptables -t nat -C PREROUTING -i "$BRIDGE_NAME" -d "$BRIDGE_ADDR" -j QWP-HOST-FWD 2>/dev/null ||
  iptables -t nat -I PREROUTING -i "$BRIDGE_NAME" -d "$BRIDGE_ADDR" -j QWP-HOST-FWD
for port in ${QWP_HOST_PORTS:-4566}; do
  iptables -t nat -A QWP-HOST-FWD -p tcp --dport "$port" -j DNAT --to-destination "127.0.0.1:$port"
done

# Pods get no route off this machine: anything forwarded from the pod bridge to another
# interface is rejected (pods still reach each other, Services, and the host itself). Without
# it, e.g. the AWS SDK's IMDS probe (169.254.169.254) would leave the machine.
iptables -N QWP-EGRESS 2>/dev/null || iptables -F QWP-EGRESS
iptables -A QWP-EGRESS -o "$BRIDGE_NAME" -j RETURN
iptables -A QWP-EGRESS -j REJECT --reject-with icmp-net-unreachable
iptables -C FORWARD -i "$BRIDGE_NAME" -j QWP-EGRESS 2>/dev/null || iptables -I FORWARD 1 -i "$BRIDGE_NAME" -j QWP-EGRESS

mkdir -p "$STATE_DIR/cni/net.d" "$STATE_DIR/cni/ipam"
write_if_changed "$STATE_DIR/cni/net.d/10-qwp.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "qwp",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE_NAME", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_ADDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# --- containerd ---------------------------------------------------------------------------------
RESTRICT_OOM=false
if ! (echo -999 > /proc/self/oom_score_adj) 2>/dev/null; then RESTRICT_OOM=true; fi
mkdir -p "$STATE_DIR/containerd" "$RUN_DIR/containerd"
write_if_changed "$STATE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$STATE_DIR/containerd/root"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN_DIR/containerd/containerd.sock.ttrpc"
[debug]
  address = "$RUN_DIR/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  enable_unprivileged_ports = true
  # This machine's root lacks CAP_SYS_RESOURCE, so negative oom_score_adj (sandbox -998,
  # Guaranteed pods -997) fails in runc ("failed to update /proc/self/oom_score_adj").
  # Clamp to containerd's own score instead (the option exists for rootless setups).
  restrict_oom_score_adj = $RESTRICT_OOM
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$RUN_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/net.d"
EOF
start containerd containerd --config "$STATE_DIR/containerd/config.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
check_alive containerd

# images: the sandbox (pause) image is required; our images are imported when built
"$CLUSTER_DIR/images.sh" build
"$CLUSTER_DIR/images.sh" load

# --- etcd + control plane ---------------------------------------------------------------------
start etcd etcd --name qwp --data-dir "$STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "qwp=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 2147483648
P=$PKI_DIR
# The aggregation layer (requestheader + proxy client flags, like kubeadm) serves extension
# API servers such as KEDA's external-metrics adapter; without cluster DNS, the aggregator
# routes to the Service's endpoint IPs instead of its DNS name.
start_or_restart kube-apiserver kube-apiserver \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --advertise-address "$BRIDGE_ADDR" --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" \
  --service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
  --client-ca-file "$P/ca.crt" --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" --kubelet-client-key "$P/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --profiling=false --v=1 \
  --requestheader-client-ca-file "$P/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
  --enable-aggregator-routing=true
wait_for kube-apiserver 90 curl -sfk --cacert "$P/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"
check_alive etcd
check_alive kube-apiserver

start kube-controller-manager kube-controller-manager \
  --kubeconfig "$P/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$P/controller-manager.kubeconfig" --authorization-kubeconfig "$P/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
  --root-ca-file "$P/ca.crt" --service-account-private-key-file "$P/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false --v=1
start kube-scheduler kube-scheduler \
  --kubeconfig "$P/scheduler.kubeconfig" \
  --authentication-kubeconfig "$P/scheduler.kubeconfig" --authorization-kubeconfig "$P/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1

# --- kubelet ----------------------------------------------------------------------------------
KUBELET_DIR="$STATE_DIR/kubelet"
mkdir -p "$KUBELET_DIR"
# kubelet wants its pod volume tree on a shared mount; the host's / is private here, so make
# only our directory a shared bind mount (undone by cluster-down).
if ! findmnt -n "$KUBELET_DIR" >/dev/null; then
  mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
  mount --make-rshared "$KUBELET_DIR"
fi
write_if_changed "$STATE_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: 0.0.0.0
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
staticPodPath: $STATE_DIR/manifests
podLogsDir: $STATE_DIR/pod-logs
podCIDR: $POD_CIDR
maxPods: 60
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
shutdownGracePeriod: 0s
localStorageCapacityIsolation: true
logging: {verbosity: 1}
EOF
mkdir -p "$STATE_DIR/manifests"
start kubelet kubelet --config "$STATE_DIR/kubelet-config.yaml" --kubeconfig "$P/kubelet.kubeconfig" \
  --root-dir "$KUBELET_DIR" --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_ADDR"

# --- kube-proxy (ClusterIP Services) -------------------------------------------------------------
write_if_changed "$STATE_DIR/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $P/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0}
# NodePorts only on the node address: otherwise kube-proxy sets route_localnet=1 host-wide
nodePortAddresses: ["$BRIDGE_ADDR/32"]
iptables: {masqueradeAll: false, syncPeriod: 10s, minSyncPeriod: 1s}
EOF
start kube-proxy kube-proxy --config "$STATE_DIR/kube-proxy-config.yaml" --v=1

export KUBECONFIG="$KUBECONFIG_PATH"
wait_for "node $NODE_NAME to register" 90 kubectl get node "$NODE_NAME"
for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do check_alive "$c"; done
wait_for "node $NODE_NAME Ready" 120 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
wait_for "default service account" 60 kubectl -n default get serviceaccount default
log "node $NODE_NAME Ready (binaries: $((T_BUILD - T0))s, start: $((SECONDS - T_BUILD))s, total $((SECONDS - T0))s)"
echo "$KUBECONFIG_PATH"
