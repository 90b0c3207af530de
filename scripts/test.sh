#!/usr/bin/env bash
# Sets up (once) and runs the whole test suite. Extra arguments go to pytest (e.g. -k cancel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/setup-venv.sh requirements/test.txt
exec "$VENV/bin/python" -m pytest "$@"
