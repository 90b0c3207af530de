#!/usr/bin/env bash
# Creates (once) the virtualenv at $VENV (default .venv) and installs the given requirement files.
# Re-running is fast: nothing is installed when the requirement files have not changed.
# torch is pinned to 2.13.0 CPU: where pip has no local CPU wheel, it comes from the PyTorch CPU
# index (TORCH_INDEX_URL), never from a bare PyPI "torch" (a multi-GB CUDA build).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above is the usage
  sed -n '2,/^set -/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0
fi
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ $# -gt 0 ] || { echo "usage: $0 REQUIREMENTS_FILE..." >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# A requirement file that pulls in model.txt also installs model-nodeps.txt, without dependencies (why: there).
nodeps=()
if grep -qh '^torch==' "$@" 2>/dev/null || grep -qh 'model.txt' "$@"; then nodeps=(requirements/model-nodeps.txt); fi
stamp="$VENV/.installed-$(cat "$@" ${nodeps[@]+"${nodeps[@]}"} | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

log=$(mktemp)
args=()
if grep -qh '^torch==' "$@" && ! "$VENV/bin/pip" install --dry-run --no-index --no-deps -q torch==2.13.0 >/dev/null 2>&1; then
  args+=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi
echo "installing $* into $VENV (log: $log)"
for req in "$@"; do args+=(-r "$req"); done
if ! "$VENV/bin/pip" install --disable-pip-version-check "${args[@]}" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -40 >&2
  echo "pip install failed; full log in $log" >&2
  exit 1
fi
if [ ${#nodeps[@]} -gt 0 ] && ! "$VENV/bin/pip" install --disable-pip-version-check --no-deps \
    -r "${nodeps[0]}" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -40 >&2
  echo "pip install --no-deps failed; full log in $log" >&2
  exit 1
fi
rm -f "$log"  # kept only when the install failed
touch "$stamp"
