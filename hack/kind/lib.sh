# shellcheck shell=bash
# Common settings for the kind scripts (hack/kind/*.sh). Source it; do not execute.
#
# kind runs the node as a privileged container of a "provider": Docker where its daemon
# answers, else Podman (installed from the distribution's packages when missing, on
# Debian/Ubuntu as root). KIND_PROVIDER=docker|podman forces one.
KIND_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$KIND_LIB_DIR/../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$ROOT/hack/cluster/lib.sh"   # K8S_VERSION, BIN_DIR (kubectl, helm, kubeadm), IMAGES_DIR

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KIND_CLUSTER="${KIND_CLUSTER:-qwp}"
# Built once per machine, outside the work tree (like hack/cluster's binaries): the kind
# binary, the node image archive, the Podman settings.
KIND_HOME="${QWP_KIND_HOME:-$HOME/.cache/qwp-kind}"
KIND_BIN="$KIND_HOME/kind-$KIND_VERSION/kind"
# Per checkout: the kubeconfig of the kind cluster.
KIND_STATE="${QWP_KIND_STATE:-$ROOT/.cache/kind}"
export KUBECONFIG="${KIND_KUBECONFIG:-$KIND_STATE/kubeconfig}"
PATH="$(dirname "$KIND_BIN"):$BIN_DIR:$PATH"
export PATH

klog() { printf '[kind %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
kdie() { printf '[kind] ERROR: %s\n' "$*" >&2; exit 1; }

# --- provider ---------------------------------------------------------------------------------
apt_install() { # apt_install <pkg>...: Debian/Ubuntu as root only
  if ! command -v apt-get >/dev/null || [[ $EUID -ne 0 ]]; then
    kdie "install $* (needs apt-get as root here; or set KIND_PROVIDER to a working provider)"
  fi
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  klog "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

has_cap() { # has_cap <bit>: the effective capability set of this shell has it
  local eff; eff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  (( (16#$eff >> $1) & 1 ))
}

# Podman settings, in a private file (CONTAINERS_CONF) rather than /etc/containers. Each line
# is there because a machine like the build VMs needs it:
# - nofile/nproc limits podman can grant: its default (nofile 1048576) needs CAP_SYS_RESOURCE,
#   which a root without it lacks ("error setting rlimit type 7: operation not permitted").
# - cgroupfs and file events: no systemd on the host.
# - runc: Debian 12's crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported").
podman_conf() {
  local conf="$KIND_HOME/containers.conf" tmp
  mkdir -p "$KIND_HOME"
  tmp=$(mktemp)
  {
    echo "# written by hack/kind/lib.sh"
    echo "[containers]"
    has_cap 24 || echo 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
    echo "[engine]"
    if [[ ! -d /run/systemd/system ]]; then
      echo 'cgroup_manager = "cgroupfs"'
      echo 'events_logger = "file"'
    fi
    command -v runc >/dev/null && echo 'runtime = "runc"'
  } > "$tmp"
  if cmp -s "$tmp" "$conf" 2>/dev/null; then rm -f "$tmp"; else mv "$tmp" "$conf"; chmod 644 "$conf"; fi
  export CONTAINERS_CONF="$conf"
}

# Sets ENGINE (docker|podman) and what kind needs for it; installs Podman if nothing works.
provider() {
  [[ -n ${ENGINE:-} ]] && return 0
  local want="${KIND_PROVIDER:-}"
  if [[ -z $want ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then want=docker; else want=podman; fi
  fi
  case "$want" in
    docker)
      docker info >/dev/null 2>&1 || kdie "KIND_PROVIDER=docker but \`docker info\` fails"
      ENGINE=docker
      unset KIND_EXPERIMENTAL_PROVIDER ;;
    podman)
      if ! command -v podman >/dev/null; then
        apt_install podman runc netavark aardvark-dns iptables conntrack
      fi
      podman_conf
      ENGINE=podman
      export KIND_EXPERIMENTAL_PROVIDER=podman ;;
    *) kdie "KIND_PROVIDER=$want: use docker or podman" ;;
  esac
  # kind mounts /lib/modules into the node (read-only); some VMs have none.
  [[ -d /lib/modules ]] || mkdir -p /lib/modules
}

# Succeeds when a provider is usable here without installing anything big: `make up` uses
# this to choose between kind and the hack/cluster node.
provider_available() {
  [[ ${KIND_PROVIDER:-} == docker || ${KIND_PROVIDER:-} == podman ]] && return 0
  command -v docker >/dev/null && docker info >/dev/null 2>&1 && return 0
  command -v podman >/dev/null && return 0
  command -v apt-get >/dev/null && [[ $EUID -eq 0 ]]
}

# --- tools ------------------------------------------------------------------------------------
need_kind() {
  [[ -x $KIND_BIN ]] && return 0
  command -v go >/dev/null || kdie "kind $KIND_VERSION is not installed and the Go toolchain is missing to install it"
  klog "installing kind $KIND_VERSION from its Go module (go install sigs.k8s.io/kind@$KIND_VERSION)"
  mkdir -p "$(dirname "$KIND_BIN")"
  GOBIN="$(dirname "$KIND_BIN")" GOFLAGS='' nice -n 10 go install "sigs.k8s.io/kind@$KIND_VERSION"
}

# kubectl, helm (and kubeadm for the node image) from hack/cluster's build, unless on PATH.
need_cluster_tools() {
  if [[ ! -x $BIN_DIR/kubectl || ! -x $BIN_DIR/helm || ! -x $BIN_DIR/kubeadm ]]; then
    nice -n 10 "$ROOT/hack/cluster/build-binaries.sh"
  fi
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }
