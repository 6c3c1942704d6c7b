#!/usr/bin/env bash
# `make up-local` / `make down-local`: the API server and one worker as local processes against LocalStack.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$ROOT/.cache/run"
PROFILE_DIR="${PROFILE_DIR:-debug}"
mkdir -p "$RUN"

export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export MAX_WAIT_SECONDS="${MAX_WAIT_SECONDS:-30}"

start() {
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "$name started (pid $!, log $RUN/$name.log)"
}

stop() {
  local name=$1 pid
  [ -f "$RUN/$name.pid" ] || { echo "$name not running"; return; }
  pid=$(cat "$RUN/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$RUN/$name.pid"
  echo "$name stopped"
}

case "${1:-}" in
  up)
    start api-server env PORT="${PORT:-8000}" "$ROOT/target/$PROFILE_DIR/qwp-api-server"
    start worker env WORKER_PROCESSOR="${WORKER_PROCESSOR:-checksum}" WORKER_ADMIN_PORT="${WORKER_ADMIN_PORT:-9090}" \
      WORKER_FACE_MODEL_DIR="${WORKER_FACE_MODEL_DIR:-$ROOT/.cache/face/models}" \
      "$ROOT/target/$PROFILE_DIR/qwp-worker"
    for _ in $(seq 1 30); do
      curl -fsS "http://localhost:${PORT:-8000}/health" >/dev/null 2>&1 && { echo "API server ready on http://localhost:${PORT:-8000}"; exit 0; }
      sleep 1
    done
    echo "API server did not answer /health within 30 s; see $RUN/api-server.log" >&2
    tail -n 20 "$RUN/api-server.log" >&2
    exit 1
    ;;
  down)
    stop worker
    stop api-server
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
