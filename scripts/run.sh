#!/usr/bin/env bash
# Sets up (once) and runs the service without Docker: the model server and the gateway.
# Configuration comes from the environment (README, "Configuration"); e.g. SD_MODEL=tiny for an
# offline demo with a tiny random-weight model. Ctrl-C stops both processes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/setup-venv.sh requirements/model.txt requirements/gateway.txt

export MODEL_SERVER_BIND=${MODEL_SERVER_BIND:-tcp://127.0.0.1:5555}
export MODEL_SERVER_ADDRESS=${MODEL_SERVER_ADDRESS:-$MODEL_SERVER_BIND}
export GATEWAY_BIND=${GATEWAY_BIND:-127.0.0.1:8000}

"$VENV/bin/python" -m model_server &
model_pid=$!
"$VENV/bin/gunicorn" -c gunicorn.conf.py &
gateway_pid=$!
trap 'kill -TERM $model_pid $gateway_pid 2>/dev/null || true; wait' EXIT INT TERM
echo "sd-cpu: open http://$GATEWAY_BIND/ (the model loads in the background; GET /health shows progress)"
# Stop everything when either process ends.
wait -n $model_pid $gateway_pid
