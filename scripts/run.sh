#!/usr/bin/env bash
# Smart Task Queue: run the product on this machine.
#
#   bash scripts/run.sh
#
# Runs scripts/setup.sh, then starts the API (uvicorn), the workers (dramatiq) and the
# scheduler (periodiq), each in its own process group, their output prefixed with
# [api], [worker] and [scheduler]. Ctrl-C (SIGINT) or SIGTERM stops all three: SIGTERM to
# each service's main process, then SIGKILL to whatever is left in its process group after
# TASKQ_STOP_TIMEOUT seconds (default 15); a second Ctrl-C kills at once. When any of the
# three exits, the others are stopped the same way and the script exits non-zero.
#
# Environment (besides everything scripts/setup.sh and the product read):
#   TASKQ_API_HOST (127.0.0.1)  TASKQ_API_PORT (8000)
#   TASKQ_WORKER_PROCESSES (2)  TASKQ_WORKER_THREADS (8)
#   TASKQ_STOP_TIMEOUT (15)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Never fails: after a hang-up the terminal may be gone, and stopping must go on.
log() { printf 'run: %s\n' "$*" 2>/dev/null || true; }
die() { printf 'run: ERROR: %s\n' "$*" >&2; exit 1; }

bash "$ROOT/scripts/setup.sh"

export TASKQ_API_HOST="${TASKQ_API_HOST:-127.0.0.1}"
export TASKQ_API_PORT="${TASKQ_API_PORT:-8000}"
export TASKQ_WORKER_PROCESSES="${TASKQ_WORKER_PROCESSES:-2}"
export TASKQ_WORKER_THREADS="${TASKQ_WORKER_THREADS:-8}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
STOP_TIMEOUT="${TASKQ_STOP_TIMEOUT:-15}"
BIN="$ROOT/.venv/bin"

for tool in python uvicorn dramatiq periodiq; do
    [ -x "$BIN/$tool" ] || die "$BIN/$tool not found: is it in requirements.txt?"
done

NAMES=()
PGIDS=()
FORCE=0

# start NAME COMMAND...: COMMAND in a new process group (its pid is the group id), its
# stdout and stderr prefixed with [NAME]. The prefixer ignores SIGINT/SIGTERM so that it
# keeps printing the service's shutdown logs and ends at end of file.
start() {
    local name="$1"
    shift
    set -m
    ( exec "$@" ) </dev/null 2>&1 | ( trap '' INT TERM HUP; exec sed -u "s/^/[$name] /" ) &
    PGIDS+=("$(jobs -p %%)")
    set +m
    NAMES+=("$name")
    log "started $name (process group ${PGIDS[-1]}): $*"
}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_all() {
    local i deadline left
    trap 'FORCE=1' INT TERM HUP
    for i in "${!PGIDS[@]}"; do
        if kill -0 "${PGIDS[i]}" 2>/dev/null; then
            log "stopping ${NAMES[i]} (SIGTERM)"
            kill -TERM "${PGIDS[i]}" 2>/dev/null || true
        elif group_alive "${PGIDS[i]}"; then
            kill -TERM -- "-${PGIDS[i]}" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for i in "${!PGIDS[@]}"; do
            if group_alive "${PGIDS[i]}"; then left+=("$i"); fi
        done
        [ "${#left[@]}" -gt 0 ] || break
        if [ "$FORCE" -eq 1 ] || [ "$SECONDS" -ge "$deadline" ]; then
            for i in "${left[@]}"; do
                log "${NAMES[i]} still running: SIGKILL"
                kill -KILL -- "-${PGIDS[i]}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    wait 2>/dev/null || true
    log "all stopped"
}

# shellcheck disable=SC2317  # called from the traps below
on_signal() {
    log "received SIG$1: stopping"
    stop_all
    case "$1" in
        INT) exit 130 ;;
        HUP) exit 129 ;;
        *) exit 143 ;;
    esac
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# Prometheus multiprocess mode: api and workers write their counters here, and the api's
# /metrics merges them. Emptied at every start: counters begin at zero with the processes.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$ROOT/.run/metrics}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

start api "$BIN/uvicorn" api.main:app --host "$TASKQ_API_HOST" --port "$TASKQ_API_PORT" \
    --log-config "$ROOT/api/log_config.json"
start worker env dramatiq_queue_prefetch="$TASKQ_WORKER_THREADS" \
    "$BIN/python" -m actors.cli actors.worker \
    --processes "$TASKQ_WORKER_PROCESSES" --threads "$TASKQ_WORKER_THREADS"
start scheduler env TZ=UTC "$BIN/periodiq" actors.scheduler

BROWSE_HOST="$TASKQ_API_HOST"
case "$BROWSE_HOST" in
    0.0.0.0 | "") BROWSE_HOST=127.0.0.1 ;;
    ::) BROWSE_HOST="[::1]" ;;
    *:*) BROWSE_HOST="[$BROWSE_HOST]" ;;
esac
BASE="http://$BROWSE_HOST:$TASKQ_API_PORT"
MGMT_URL="${TASKQ_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
MGMT_LOGIN="guest/guest"
if [[ "${TASKQ_BROKER_URL:-}" =~ ^amqps?://([^:@/]+):([^@/]*)@ ]]; then
    MGMT_LOGIN="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
fi
cat <<EOF
run: Smart Task Queue is running (Ctrl-C stops it)
run:   API docs             $BASE/docs
run:   admin page           $BASE/
run:   metrics              $BASE/metrics
run:   RabbitMQ management  ${MGMT_URL%/} ($MGMT_LOGIN)
EOF

rc=0
wait -n || rc=$?
for i in "${!PGIDS[@]}"; do
    if ! kill -0 "${PGIDS[i]}" 2>/dev/null; then
        log "${NAMES[i]} exited (status $rc): stopping the others"
    fi
done
stop_all
[ "$rc" -ne 0 ] || rc=1
exit "$rc"
