#!/usr/bin/env bash
# Stop everything cluster-up started (by recorded PID), then remove its containers, mounts,
# network namespaces, cgroups, bridge, iptables rules and state. Safe to run repeatedly.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $EUID -eq 0 ]] || die "cluster-down must run as root"
export PATH="$BIN_DIR:$PATH"
ctr_() { timeout 20 ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

pid_of() { local f="$RUN_DIR/pids/$1.pid"; [[ -f $f ]] && cat "$f"; }
stop() { # stop <name>: SIGTERM the recorded PID, SIGKILL after 10s
  local name=$1 pid
  pid=$(pid_of "$name") || return 0
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$RUN_DIR/pids/$name.pid"
}

# 1. Let the kubelet stop pods properly (runs their preStop/grace period, tears down CNI).
if [[ -n "$(pid_of kubelet)" ]] && kill -0 "$(pid_of kubelet)" 2>/dev/null && [[ -f $KUBECONFIG_PATH ]]; then
  log "deleting all pods"
  timeout 30 kubectl --kubeconfig "$KUBECONFIG_PATH" delete pods --all --all-namespaces \
    --grace-period=5 --wait=false >/dev/null 2>&1 || true
  timeout 20 kubectl --kubeconfig "$KUBECONFIG_PATH" delete deployments,replicasets,statefulsets,daemonsets,jobs \
    --all --all-namespaces --wait=false >/dev/null 2>&1 || true
  for _ in $(seq 40); do
    [[ -z "$(ctr_ tasks ls -q 2>/dev/null | head -1)" ]] && break
    sleep 0.5
  done
fi

# 2. Control plane and node agents.
for c in kube-proxy kubelet kube-scheduler kube-controller-manager; do stop "$c" & done
wait
stop kube-apiserver
stop etcd

# 3. Whatever containers remain: record their network namespaces, kill them, remove them.
NETNS=()
if ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ns=$(ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json,sys
try: spec=json.load(sys.stdin)["Spec"]
except Exception: sys.exit()
for n in spec.get("linux",{}).get("namespaces",[]):
    if n.get("type")=="network" and n.get("path","").startswith("/"): print(n["path"])' 2>/dev/null)
    [[ -n $ns ]] && NETNS+=("$ns")
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1
  done
  sleep 1
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1
    ctr_ containers delete "$id" >/dev/null 2>&1
  done
fi
# shims of *our* containerd (identified by our socket path on their command line)
for p in /proc/[0-9]*; do
  if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK"; then
    kill -KILL "${p#/proc/}" 2>/dev/null
  fi
done
stop containerd
# containerd 1.6 puts shim sockets in /run/containerd/s regardless of its state dir
rmdir /run/containerd/s /run/containerd 2>/dev/null
rmdir /run/netns 2>/dev/null  # created by containerd for pod netns; removed only if empty

# 4. Processes left in the kubelet's pod cgroups (cgroupfs driver: <controller>/kubepods), then the cgroups.
for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
  [[ -d $cg ]] || continue
  find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null
done
sleep 0.5
for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
  [[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# 5. Mounts under our state/run dirs (deepest first) and the pods' network namespaces.
unmount_under() {
  local dir=$1
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}
for ns in "${NETNS[@]}"; do
  umount "$ns" 2>/dev/null; rm -f "$ns"
done
unmount_under "$STATE_DIR"
unmount_under "$RUN_DIR"

# 6. Network: bridge, iptables rules of kube-proxy / kubelet / CNI / ours, sysctls.
ip link show "$BRIDGE_NAME" >/dev/null 2>&1 && ip link delete "$BRIDGE_NAME"
[[ -x $BIN_DIR/kube-proxy ]] && timeout 30 kube-proxy --cleanup >/dev/null 2>&1
for ipt in iptables ip6tables; do
  command -v "$ipt-save" >/dev/null || continue
  if "$ipt-save" 2>/dev/null | grep -qE '(KUBE-|CNI-|QWP-)'; then
    "$ipt-save" | python3 -c '
import re,sys
out=[]
for line in sys.stdin:
    if re.match(r"^:(KUBE-|CNI-|QWP-)", line): continue
    if line.startswith("-A ") and re.search(r"(^-A (KUBE-|CNI-|QWP-))|(-j (KUBE-|CNI-|QWP-))", line): continue
    out.append(line)
sys.stdout.write("".join(out))' | "$ipt-restore"
  fi
done
if [[ -f $STATE_DIR/sysctl.saved ]]; then
  while IFS='=' read -r k v; do [[ -e /proc/sys/$k ]] && echo "$v" > "/proc/sys/$k"; done < "$STATE_DIR/sysctl.saved"
fi

# 7. State. The kubelet links container logs from the fixed /var/log/containers into podLogsDir.
if [[ -d /var/log/containers ]]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE_DIR/*" -delete 2>/dev/null
  rmdir /var/log/containers 2>/dev/null
fi
rm -rf "$STATE_DIR" "$RUN_DIR" "$KUBECONFIG_PATH"
left=$(awk -v a="$STATE_DIR" -v b="$RUN_DIR" 'index($5, a) == 1 || index($5, b) == 1' /proc/self/mountinfo | wc -l)
((left == 0)) || log "WARNING: $left mounts remain under $STATE_DIR / $RUN_DIR"
log "cluster down"
