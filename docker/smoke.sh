#!/usr/bin/env bash
# End-to-end smoke test of docker/docker-compose.yml on a machine with a Docker engine:
# build -> up -> healthy -> LS project with SST-2 tasks -> connect the backend -> Retrieve predictions ->
# one scored prediction per task -> restart the backend -> nothing lost or duplicated -> down.
# Exits non-zero on any failure; prints a summary table at the end.
#
#   docker/smoke.sh
#
# Environment (all optional):
#   N_TASKS=20              tasks imported (rows of icm_backend/samples/sst2_sample.tsv, text only)
#   SMOKE_PROJECT=icm-smoke compose project name: its own containers and volumes, removed at the end
#   KEEP_STACK=1            leave the stack running at the end (e.g. to look at it in LS); `down -v` later
#   UP_TIMEOUT_S=1800       how long the first start may take (it converts the model)
#   JOB_TIMEOUT_S=1800      how long the labelling job may take
#   NO_BUILD=1              use the images already built
#   BASE_IMAGE, TORCH_INDEX_URL, PIP_INDEX_URL, PIP_TRUSTED_HOST, EXTRA_CA_CERTS: build args, passed
#                           through docker-compose.yml (see docker/Dockerfile); unset = the defaults
#                           (official python image, PyTorch CPU index, PyPI)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPOSE_FILE="$HERE/docker-compose.yml"
PROJECT="${SMOKE_PROJECT:-icm-smoke}"
UP_TIMEOUT_S="${UP_TIMEOUT_S:-1800}"
export N_TASKS="${N_TASKS:-20}" JOB_TIMEOUT_S="${JOB_TIMEOUT_S:-1800}"

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    echo "smoke: neither 'docker compose' nor 'docker-compose' found" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "smoke: python3 is needed on the host (docker/smoke_api.py)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "smoke: no Docker engine answers 'docker info'" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Fresh secrets per run: LS creates its admin user with this token on the first start of its volume, and
# the backend is given the same token, so no token is copied by hand.
export LABEL_STUDIO_API_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(20))')"
export LABEL_STUDIO_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')"
export BASIC_AUTH_USER=labelstudio BASIC_AUTH_PASS="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
export LS_PORT="${LS_PORT:-$(free_port)}" BACKEND_PORT="${BACKEND_PORT:-$(free_port)}"
export LS_URL="http://127.0.0.1:$LS_PORT" LS_TOKEN="$LABEL_STUDIO_API_KEY"
export BACKEND_URL="http://127.0.0.1:$BACKEND_PORT" BACKEND_URL_FROM_LS="http://icm-backend:9090"

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
STATE="$(mktemp)"
ROWS=()
row() { ROWS+=("$(printf '%-38s %-8s %s' "$1" "$2" "$3")"); }
summary() {
    echo
    echo "== docker smoke summary ($(date -u +%FT%TZ), $(nproc) CPUs, compose: ${COMPOSE[*]}) =="
    printf '%-38s %-8s %s\n' "step" "result" "measured"
    printf '%s\n' "${ROWS[@]}"
    if [ "$1" -eq 0 ]; then echo "docker smoke PASSED"; else echo "docker smoke FAILED (exit $1)"; fi
}
STEP="start"
finish() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        row "$STEP" "FAILED" "exit $rc"
        echo "--- last backend / Label Studio logs ---"
        dc logs --tail 60 icm-backend label-studio 2>&1 || true
    fi
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        echo "KEEP_STACK=1: left running; LS $LS_URL (user ${LABEL_STUDIO_USERNAME:-admin@example.com}," \
             "password $LABEL_STUDIO_PASSWORD); stop with: ${COMPOSE[*]} -p $PROJECT -f $COMPOSE_FILE down -v"
    else
        dc down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -f "$STATE" "$STATE.out"
    summary "$rc"
    exit "$rc"
}
trap finish EXIT

# seconds since $1 (date +%s)
since() { echo $(( $(date +%s) - $1 )); }

# wait until a service's container reports healthy; fails at once if it exits or turns unhealthy
wait_healthy() {
    local service="$1" timeout="$2" t0 cid status
    t0=$(date +%s)
    while :; do
        cid="$(dc ps -q "$service")"
        status="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" 2>/dev/null || echo "missing")"
        case "$status" in
            "running healthy") return 0 ;;
            *unhealthy*|exited*|dead*|missing)
                echo "smoke: $service is $status" >&2
                docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$cid" 2>/dev/null | tail -3 >&2 || true
                return 1 ;;
        esac
        if [ "$(since "$t0")" -ge "$timeout" ]; then
            echo "smoke: $service not healthy after $timeout s ($status)" >&2
            return 1
        fi
        sleep 5
    done
}

# leftovers of an earlier, interrupted run would make this one a warm start
dc down -v --remove-orphans >/dev/null 2>&1 || true

if [ "${NO_BUILD:-0}" != 1 ]; then
    STEP="build"
    echo "== build =="
    t0=$(date +%s)
    dc build
    row "build (both images)" "ok" "$(since "$t0") s"
fi
for image in icm-backend:latest icm-label-studio:1.23.2; do
    size=$(docker image inspect -f '{{.Size}}' "$image")
    row "image $image" "ok" "$((size / 1000000)) MB"
done

STEP="up -> Label Studio healthy"
echo "== up =="
t0=$(date +%s)
dc up -d label-studio
wait_healthy label-studio "$UP_TIMEOUT_S"
row "$STEP" "ok" "$(since "$t0") s"
STEP="up -> backend healthy (model loaded)"
dc up -d icm-backend
wait_healthy icm-backend "$UP_TIMEOUT_S"
row "$STEP" "ok" "$(since "$t0") s (first start: converts the model)"

STEP="label (Retrieve predictions)"
echo "== label $N_TASKS tasks =="
t0=$(date +%s)
python3 "$HERE/smoke_api.py" label "$STATE" | tee "$STATE.out"
row "$STEP" "ok" "$(grep -E '^predictions:' "$STATE.out" | cut -d' ' -f2) predictions for $N_TASKS tasks, $(since "$t0") s"
row "  labels" "" "$(grep -E '^labels:' "$STATE.out" | cut -d' ' -f2-)"
row "  agreement with SST-2 gold (info)" "" "$(grep -E '^gold_agreement:' "$STATE.out" | cut -d' ' -f2-)"
rm -f "$STATE.out"

STEP="restart backend -> healthy"
echo "== restart the backend =="
t0=$(date +%s)
dc restart icm-backend
wait_healthy icm-backend "$UP_TIMEOUT_S"
row "$STEP" "ok" "$(since "$t0") s (model from the cache volume)"

STEP="after restart: nothing lost/doubled"
python3 "$HERE/smoke_api.py" recheck "$STATE"
row "$STEP" "ok" "same $N_TASKS predictions, second Retrieve added none"
STEP="done"
