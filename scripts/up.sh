#!/usr/bin/env bash
# up.sh up|down|env — `make up` / `make down`: the whole product on a local cluster.
#   up    LocalStack (bound to all addresses, so pods reach it), a cluster, the three images,
#         the chart (operator, API server on localhost:8000, sample pool qwp-sample at zero)
#   down  undo what `up` did: only what it started (a LocalStack or hack/cluster node that was
#         already running is left running)
#   env   print the exports `make smoke` uses (KUBECONFIG, PATH)
# The cluster: QWP_UP_CLUSTER=kind (Docker or Podman: hack/kind) or local (hack/cluster's
# single node, root on Linux); default kind where a provider is usable, else local.
# Each step prints its time; a failure names the step and its log (.cache/up/<step>.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.cache/up"
mkdir -p "$STATE"
NAMESPACE=qwp-system

say() { printf '%s\n' "$*" >&2; }
# step <n/total> <name> <cmd...>: runs cmd with its output in .cache/up/<name>.log (the last
# lines echoed as it goes), prints the time it took, or names the failed step and exits.
step() {
  local num=$1 name=$2; shift 2
  local log="$STATE/$name.log" t0=$SECONDS rc
  say "==> [$num] $name"
  set +e
  ( set -e; "$@" ) 2>&1 | tee "$log" | sed -u 's/^/    /' >&2
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc != 0)); then
    say "FAILED: step '$name' ($num) after $((SECONDS - t0))s, exit $rc; full log: $log"
    exit "$rc"
  fi
  say "    done: $name in $((SECONDS - t0))s"
  TIMES+=("$name $((SECONDS - t0))s")
}

choose_cluster() {
  case "${QWP_UP_CLUSTER:-auto}" in
    kind | local) echo "${QWP_UP_CLUSTER}" ;;
    auto)
      # shellcheck source=../hack/kind/lib.sh
      if (source hack/kind/lib.sh && provider_available); then echo kind; else echo local; fi ;;
    *) say "QWP_UP_CLUSTER=${QWP_UP_CLUSTER}: use kind, local or auto"; exit 2 ;;
  esac
}

localstack_healthy() { hack/localstack/localstack.sh status >/dev/null 2>&1; }

localstack_up() {
  export LOCALSTACK_LISTEN="${LOCALSTACK_LISTEN:-0.0.0.0:4566}"
  hack/localstack/localstack.sh up
}

# --- the local (hack/cluster) variant -------------------------------------------------------
local_cluster_up() { hack/cluster/up.sh; }
local_images() {
  cargo build --bins -p qwp-operator -p qwp-worker -p qwp-api-server
  QWP_RELEASE_DIR="$ROOT/target/debug" hack/cluster/images.sh build
  hack/cluster/images.sh load
}
local_install() {
  # shellcheck source=/dev/null
  source hack/cluster/env.sh
  helm upgrade --install qwp charts/qwp --namespace "$NAMESPACE" --create-namespace --wait --timeout 180s \
    --set aws.endpoint="http://$QWP_HOST_ADDR:4566" \
    --set aws.credentials.create=true,aws.credentials.accessKeyId=test,aws.credentials.secretAccessKey=test \
    --set apiServer.enabled=true \
    --set samplePool.enabled=true,samplePool.scaleDownStabilizationSeconds="${QWP_SAMPLE_SCALE_DOWN_SECONDS:-15}"
}
local_port_forward() { # the API server Service on localhost:8000 (the node's ports are on its bridge)
  # shellcheck source=/dev/null
  source hack/cluster/env.sh
  if [[ -f $STATE/port-forward.pid ]] && kill -0 "$(cat "$STATE/port-forward.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/port-forward.pid")"
  fi
  setsid kubectl -n "$NAMESPACE" port-forward svc/qwp-api-server 8000:8000 --address 127.0.0.1 \
    > "$STATE/port-forward.out" 2>&1 < /dev/null &
  echo $! > "$STATE/port-forward.pid"
  local _
  for _ in $(seq 1 60); do
    curl -fsS --max-time 2 http://localhost:8000/health >/dev/null 2>&1 && { echo "API server: http://localhost:8000"; return 0; }
    kill -0 "$(cat "$STATE/port-forward.pid")" 2>/dev/null || { cat "$STATE/port-forward.out"; return 1; }
    sleep 1
  done
  echo "the API server does not answer on http://localhost:8000/health"; return 1
}

up() {
  TIMES=()
  local t0=$SECONDS cluster
  cluster=$(choose_cluster)
  : > "$STATE/state"
  if localstack_healthy; then echo "localstack_started=0" >> "$STATE/state"; else echo "localstack_started=1" >> "$STATE/state"; fi
  if [[ $cluster == kind ]]; then
    say "make up: LocalStack + kind cluster + chart (set QWP_UP_CLUSTER=local for hack/cluster's node)"
    echo "cluster=kind" >> "$STATE/state"
    step 1/6 localstack localstack_up
    step 2/6 tools hack/kind/kind.sh tools
    step 3/6 node-image hack/kind/kind.sh image
    step 4/6 cluster hack/kind/kind.sh create
    step 5/6 images hack/kind/kind.sh images
    step 6/6 chart hack/kind/kind.sh install
  else
    say "make up: LocalStack + hack/cluster node + chart"
    if hack/cluster/status.sh >/dev/null 2>&1; then
      echo "cluster=local local_started=0" | tr ' ' '\n' >> "$STATE/state"
    else
      echo "cluster=local local_started=1" | tr ' ' '\n' >> "$STATE/state"
    fi
    step 1/5 localstack localstack_up
    step 2/5 cluster local_cluster_up
    step 3/5 images local_images
    step 4/5 chart local_install
    step 5/5 api-server local_port_forward
  fi
  say "make up: ready in $((SECONDS - t0))s (${TIMES[*]})"
  say "  API server  http://localhost:8000    (curl -F inputFile=@README.md localhost:8000/)"
  say "  cluster     $(env_exports | sed -n 's/^export KUBECONFIG=//p')   (eval \"\$(scripts/up.sh env)\"; kubectl get qwp -A)"
  say "  next        make smoke   ·   make down"
}

env_exports() {
  [[ -f $STATE/state ]] || { say "nothing is up: make up"; return 1; }
  # shellcheck source=/dev/null
  source "$STATE/state"
  if [[ $cluster == kind ]]; then
    (source hack/kind/lib.sh; echo "export KUBECONFIG=$KUBECONFIG"; echo "export PATH=$BIN_DIR:\$PATH")
  else
    (source hack/cluster/lib.sh; echo "export KUBECONFIG=$KUBECONFIG_PATH"; echo "export PATH=$BIN_DIR:\$PATH")
  fi
}

down() {
  if [[ ! -f $STATE/state ]]; then say "make down: nothing recorded by make up (for make up-local use make down-local)"; return 0; fi
  # shellcheck source=/dev/null
  source "$STATE/state"
  if [[ $cluster == kind ]]; then
    hack/kind/kind.sh down
  else
    if [[ -f $STATE/port-forward.pid ]]; then kill "$(cat "$STATE/port-forward.pid")" 2>/dev/null || true; rm -f "$STATE/port-forward.pid"; fi
    if [[ ${local_started:-0} == 1 ]]; then
      hack/cluster/down.sh
    else
      say "hack/cluster node was running before make up: uninstalling the chart only"
      (source hack/cluster/env.sh; helm uninstall qwp -n "$NAMESPACE" --wait 2>/dev/null || true)
    fi
  fi
  if [[ ${localstack_started:-0} == 1 ]]; then
    hack/localstack/localstack.sh down
  else
    say "LocalStack was running before make up: left running"
  fi
  rm -f "$STATE/state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_exports ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
