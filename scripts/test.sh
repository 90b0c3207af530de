#!/usr/bin/env bash
# Sets up (once) and runs the whole test suite; CI runs it so. Extra arguments go to pytest
# (e.g. -k cancel). --fast runs only the fast tier (not marked slow: no processes, no model
# loads), the check to run on every change.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above is the usage
  sed -n '2,/^set -/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0
fi
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/setup-venv.sh requirements/test.txt
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
exec "$VENV/bin/python" -m pytest ${args[@]+"${args[@]}"}
