#!/usr/bin/env bash
# LocalStack dev stack for qwp (S3 + SQS), run on the host without Docker.
#
# Usage: hack/localstack/localstack.sh {install|up|down|status|init}
#
#   install  create the git-ignored virtualenv $ROOT/.cache/localstack-venv
#            (skipped when the marker says the pinned version is installed)
#   up       install if needed, start LocalStack in the background, wait until
#            S3 and SQS are healthy, then run init
#   down     stop the LocalStack process recorded in the pid file
#   status   print whether LocalStack is running and healthy
#   init     create buckets and queues (idempotent)
#
# Environment (defaults in brackets):
#   LOCALSTACK_LISTEN [127.0.0.1:4566]   address LocalStack binds to; use
#                                        0.0.0.0:4566 so pods on this host reach it
#   AWS_ENDPOINT_URL [http://127.0.0.1:4566]  endpoint used by init
#   AWS_REGION [us-east-1], AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [test]
#   S3_IN_BUCKET [input-bucket], S3_OUT_BUCKET [output-bucket]
#   SQS_REQ_QUEUE_NAME [request-queue]   (DLQ is "<name>-dlq")
#   SQS_VISIBILITY_TIMEOUT_SECONDS [60], SQS_MAX_RECEIVE_COUNT [5]
#   SQS_ENDPOINT_STRATEGY [dynamic]      queue URLs use the host the client used,
#                                        e.g. http://127.0.0.1:4566/queue/us-east-1/000000000000/request-queue
#   LOCALSTACK_HEALTH_TIMEOUT [90]       seconds up waits for s3+sqs to be healthy
#   LOCALSTACK_PYTHON [python3]          interpreter used to create the venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.cache/localstack-venv"
STATE_DIR="$ROOT/.cache/localstack"
LOG_FILE="$STATE_DIR/localstack.log"
PID_FILE="$STATE_DIR/localstack.pid"
DATA_DIR="$STATE_DIR/data"

LOCALSTACK_VERSION="4.13.1"
PIP_PACKAGES=(
  "localstack-core[runtime]==${LOCALSTACK_VERSION}"
  "cbor2<5.7"
  "pyopenssl==24.3.0"
  "cryptography==44.0.3"
  "service_identity<25"
  "boto3"
)
# The marker records exactly what was installed; changing the pins reinstalls.
MARKER_CONTENT="localstack-core==${LOCALSTACK_VERSION} ${PIP_PACKAGES[*]}"
MARKER="$VENV/.qwp-localstack-installed"

LISTEN="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
# Health checks always go through loopback, whatever address we bind to.
HEALTH_PORT="${LISTEN##*:}"
HEALTH_URL="http://127.0.0.1:${HEALTH_PORT}/_localstack/health"
HEALTH_TIMEOUT="${LOCALSTACK_HEALTH_TIMEOUT:-90}"

log() { echo "[localstack] $*"; }
die() { echo "[localstack] ERROR: $*" >&2; exit 1; }

is_installed() {
  [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$MARKER_CONTENT" ]]
}

cmd_install() {
  if is_installed; then
    log "already installed (localstack-core ${LOCALSTACK_VERSION}) in $VENV"
    return 0
  fi
  local py="${LOCALSTACK_PYTHON:-python3}"
  command -v "$py" >/dev/null || die "$py not found"
  log "creating virtualenv $VENV with $($py --version 2>&1)"
  mkdir -p "$ROOT/.cache"
  rm -f "$MARKER"
  "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  log "installing ${PIP_PACKAGES[*]} (this takes a while)"
  "$VENV/bin/python" -m pip install --quiet "${PIP_PACKAGES[@]}"
  "$VENV/bin/python" -c "import localstack, boto3" || die "install check failed"
  printf '%s' "$MARKER_CONTENT" >"$MARKER"
  log "installed"
}

# Prints the recorded PID if it belongs to a live LocalStack python process.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *python* && "$cmdline" == *localstack.runtime.main* ]] || return 1
  echo "$pid"
}

# Succeeds when the health endpoint reports both s3 and sqs usable.
is_healthy() {
  local py="python3"
  [[ -x "$VENV/bin/python" ]] && py="$VENV/bin/python"
  "$py" - "$HEALTH_URL" <<'EOF' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        services = json.load(r).get("services", {})
except Exception:
    sys.exit(1)
ok = all(services.get(s) in ("available", "running") for s in ("s3", "sqs"))
sys.exit(0 if ok else 1)
EOF
}

cmd_up() {
  cmd_install
  mkdir -p "$STATE_DIR" "$DATA_DIR"
  local pid
  if pid="$(running_pid)"; then
    if is_healthy; then
      log "already running (pid $pid) and healthy"
      cmd_init
      return 0
    fi
    log "process $pid is running but not healthy yet; waiting"
  elif is_healthy; then
    # Another checkout's LocalStack already owns the port: use it rather than start one
    # that cannot bind (and would never be stopped by `down`, which only stops its own).
    log "a LocalStack this checkout did not start is already healthy at $HEALTH_URL; using it"
    cmd_init
    return 0
  else
    rm -f "$PID_FILE"
    log "starting LocalStack ${LOCALSTACK_VERSION} on $LISTEN (log: $LOG_FILE)"
    (
      cd "$STATE_DIR"
      # No descriptor of the caller's beyond stdio, or LocalStack would hold the caller's locks
      # (`flock /tmp/qwp-e2e.lock make e2e`) as long as it runs.
      for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-"; fi; done
      # setsid: own session, so it outlives the caller's shell/terminal.
      GATEWAY_LISTEN="$LISTEN" \
      SERVICES="s3,sqs,sts" \
      FILESYSTEM_ROOT="$DATA_DIR" \
      LOCALSTACK_VOLUME_DIR="$DATA_DIR/volume" \
      PERSISTENCE=0 \
      DISABLE_EVENTS=1 \
      SKIP_SSL_CERT_DOWNLOAD=1 \
      DNS_ADDRESS=0 \
      SQS_ENDPOINT_STRATEGY="${SQS_ENDPOINT_STRATEGY:-dynamic}" \
      LOCALSTACK_AUTH_TOKEN= \
        setsid "$VENV/bin/python" -m localstack.runtime.main \
        </dev/null >"$LOG_FILE" 2>&1 &
      echo $! >"$PID_FILE"
    )
    pid="$(cat "$PID_FILE")"
    log "started pid $pid"
  fi

  local start=$SECONDS
  until is_healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "----- tail of $LOG_FILE -----" >&2
      tail -n 40 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      die "LocalStack (pid $pid) exited before becoming healthy; see $LOG_FILE"
    fi
    if (( SECONDS - start >= HEALTH_TIMEOUT )); then
      echo "----- tail of $LOG_FILE -----" >&2
      tail -n 40 "$LOG_FILE" >&2 || true
      die "LocalStack did not become healthy within ${HEALTH_TIMEOUT}s: s3/sqs not available at $HEALTH_URL (pid $pid still running; see $LOG_FILE, stop it with: $0 down)"
    fi
    sleep 1
  done
  log "healthy after $((SECONDS - start))s (pid $pid)"
  cmd_init
}

cmd_down() {
  local pid
  if ! pid="$(running_pid)"; then
    if [[ -f "$PID_FILE" ]]; then
      log "not running (stale pid file $(cat "$PID_FILE") removed)"
      rm -f "$PID_FILE"
    else
      log "not running"
    fi
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 10s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if is_healthy; then
      log "running (pid $pid), healthy: s3 and sqs available at $HEALTH_URL"
    else
      log "running (pid $pid), NOT healthy yet at $HEALTH_URL"
      return 1
    fi
  else
    log "not running"
    return 1
  fi
}

cmd_init() {
  is_installed || die "not installed; run: $0 install"
  "$VENV/bin/python" "$ROOT/hack/localstack/init_resources.py"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  init) cmd_init ;;
  *)
    echo "usage: $0 {install|up|down|status|init}" >&2
    exit 2
    ;;
esac
