#!/usr/bin/env bash
# Sets up (once) and runs the service without Docker: the model server and the gateway.
# Configuration comes from the environment (README, "Configuration"); e.g. SD_MODEL=tiny for an
# offline demo with a tiny random-weight model. Ctrl-C stops both processes. A model server that
# crashes is restarted with backoff (1 s doubling to 30 s); the gateway reconnects by itself.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above is the usage
  sed -n '2,/^set -/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--help]  (settings come from the environment)" >&2; exit 2; }
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/setup-venv.sh requirements/model.txt requirements/gateway.txt

# Unset, both sides meet on a Unix socket in a private runtime directory (protocol/transport.py):
# no other local user can reach the unauthenticated ZMQ socket.
if [ -n "${MODEL_SERVER_BIND:-}" ]; then export MODEL_SERVER_ADDRESS=${MODEL_SERVER_ADDRESS:-$MODEL_SERVER_BIND}; fi
export GATEWAY_BIND=${GATEWAY_BIND:-127.0.0.1:8000}

supervise_model_server() {
  local delay=1 child code started
  trap 'kill -TERM $child 2>/dev/null; wait $child; exit 0' TERM INT
  while true; do
    started=$SECONDS
    "$VENV/bin/python" -m model_server &
    child=$!
    code=0; wait $child || code=$?
    if [ "$code" = 0 ] || [ "$code" = 2 ]; then exit "$code"; fi  # stopped, or bad configuration
    [ $((SECONDS - started)) -ge 60 ] && delay=1  # it ran for a while: a fresh crash, not a loop
    echo "sd-cpu: the model server exited with status $code; restarting it in ${delay} s" >&2
    sleep "$delay"
    delay=$((delay < 16 ? delay * 2 : 30))
  done
}

supervise_model_server &
model_pid=$!
"$VENV/bin/gunicorn" -c gunicorn.conf.py &
gateway_pid=$!
trap 'kill -TERM $model_pid $gateway_pid 2>/dev/null || true; wait' EXIT INT TERM
echo "sd-cpu: open http://$GATEWAY_BIND/ (the model loads in the background; GET /health shows progress)"
# Stop everything when the gateway ends, or when the model server stops for good.
wait -n $model_pid $gateway_pid
