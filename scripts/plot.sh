#!/usr/bin/env bash
# Renders timeline CSVs to PNG with matplotlib from a git-ignored virtualenv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/plot-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'matplotlib>=3.8,<4'
fi
exec "$VENV/bin/python" "$ROOT/scripts/plot_timelines.py" "$@"
