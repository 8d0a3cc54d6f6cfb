#!/usr/bin/env bash
# Smart Task Queue: run the product on this machine.
#
#   bash scripts/run.sh
#
# Runs scripts/setup.sh, then starts the API (uvicorn), TASKQ_WORKER_PROCESSES worker
# processes (each its own `dramatiq --processes 1`, so that one death does not take its
# siblings down) and the scheduler (periodiq). Their output is prefixed with [api],
# [worker-1] ... [worker-N] and [scheduler].
#
# Supervision: each service runs in its own process group under its own restart loop.
# When one exits while the product is not stopping (a crash, the OOM killer's SIGKILL, a
# dramatiq master shutting down after its worker process died), the others keep running
# and it is started again after 1 s, 2 s, 4 s ... up to TASKQ_RESTART_MAX_DELAY seconds
# (default 30); the delay goes back to 1 s once a run lasted TASKQ_RESTART_RESET_SECONDS
# (default 60). Every exit is logged with its status or signal and the next delay.
#
# Ctrl-C (SIGINT) or SIGTERM stops everything: no more restarts, SIGTERM to each service's
# main process, then SIGKILL to whatever is left in its process group after
# TASKQ_STOP_TIMEOUT seconds (default 15); a second Ctrl-C kills at once.
#
# API keys: TASKQ_API_KEYS (comma-separated scope:secret, scopes read, submit, admin) is
# used as given. When it is unset or empty, one admin key is generated on the first run into
# .taskq/api-key (directory mode 700, file mode 600, git-ignored), reused on later runs, and
# exported as TASKQ_API_KEYS=admin:<that key>. The key itself is never printed: use it as
#   curl -H "Authorization: Bearer $(cat .taskq/api-key)" http://127.0.0.1:8000/stats
#
# Environment (besides everything scripts/setup.sh and the product read):
#   TASKQ_API_HOST (127.0.0.1)  TASKQ_API_PORT (8000)
#   TASKQ_WORKER_PROCESSES (2)  TASKQ_WORKER_THREADS (8)  TASKQ_WORKER_PREFETCH (4 x threads)
#   TASKQ_STOP_TIMEOUT (15)  TASKQ_RESTART_MAX_DELAY (30)  TASKQ_RESTART_RESET_SECONDS (60)
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
RESTART_MAX_DELAY="${TASKQ_RESTART_MAX_DELAY:-30}"
RESTART_RESET_SECONDS="${TASKQ_RESTART_RESET_SECONDS:-60}"
BIN="$ROOT/.venv/bin"

# The first admin key, made once and kept private (never echoed, never in git).
KEY_FILE="$ROOT/.taskq/api-key"
if [ -z "${TASKQ_API_KEYS:-}" ]; then
    if [ ! -s "$KEY_FILE" ]; then
        ( umask 077 && mkdir -p "$(dirname "$KEY_FILE")" && \
            "$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$KEY_FILE" ) \
            || die "cannot write $KEY_FILE"
        log "generated an admin API key in $KEY_FILE (mode 600)"
    fi
    chmod 700 "$(dirname "$KEY_FILE")" && chmod 600 "$KEY_FILE"
    TASKQ_API_KEYS="admin:$(tr -d '[:space:]' < "$KEY_FILE")"
    export TASKQ_API_KEYS
    KEY_NOTE="admin key in $KEY_FILE"
else
    KEY_NOTE="keys from TASKQ_API_KEYS"
fi

for tool in python uvicorn dramatiq periodiq setsid; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$BIN/$tool" ] ||
        die "$tool not found: is it in requirements.txt (or util-linux installed)?"
done

# One file per service holding the process group id of its current run, and a flag file
# that tells the restart loops to stop restarting.
STATE="$(mktemp -d "${TMPDIR:-/tmp}/taskq-run.XXXXXX")"
STOPPING="$STATE/stopping"
MAIN_PID=$$
FORCE=0
exec 3>&1 # the restart loops log here, unprefixed

# describe STATUS: "status N" or "killed by SIGNAME" for a shell exit status.
describe() {
    local name
    if [ "$1" -gt 128 ] && name="$(kill -l "$(($1 - 128))" 2>/dev/null)"; then
        printf 'killed by SIG%s' "$name"
    else
        printf 'status %s' "$1"
    fi
}

stopping() { [ -e "$STOPPING" ] || ! kill -0 "$MAIN_PID" 2>/dev/null; }

# pause SECONDS: sleep, but wake up early when the product is stopping.
pause() {
    local until=$((SECONDS + $1))
    while [ "$SECONDS" -lt "$until" ] && ! stopping; do sleep 0.2; done
}

# supervise NAME COMMAND...: run COMMAND in its own process group (setsid: its pid is the
# group id) again and again until the product stops, with exponential backoff.
supervise() {
    local name="$1" delay=1 failures=0 pid status started ran
    shift
    while ! stopping; do
        started=$SECONDS
        setsid "$@" </dev/null &
        pid=$!
        echo "$pid" >"$STATE/$name.pgid"
        log "$(date +%T) started $name (process group $pid): $*" >&3
        # stop_all may have read the pgid files just before this one was written
        if stopping; then kill -TERM "$pid" 2>/dev/null || true; fi
        status=0
        wait "$pid" || status=$?
        while kill -0 "$pid" 2>/dev/null; do # that wait was interrupted by a signal
            status=0
            wait "$pid" || status=$?
        done
        stopping && break
        ran=$((SECONDS - started))
        if [ "$ran" -ge "$RESTART_RESET_SECONDS" ]; then
            delay=1
            failures=0
        fi
        failures=$((failures + 1))
        log "$(date +%T) $name exited ($(describe "$status")) after ${ran} s:" \
            "restarting in ${delay} s (exit $failures in a row)" >&3
        pause "$delay"
        delay=$((delay * 2 > RESTART_MAX_DELAY ? RESTART_MAX_DELAY : delay * 2))
    done
}

# start NAME COMMAND...: supervise COMMAND, its output prefixed with [NAME]. The prefixer
# ignores SIGINT/SIGTERM so that it keeps printing the service's shutdown logs and ends
# at end of file.
start() {
    local name="$1"
    supervise "$@" 2>&1 | ( trap '' INT TERM HUP; exec sed -u "s/^/[$name] /" ) &
}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_all() {
    local file name pgid deadline left entry
    local -A signalled=()
    touch "$STOPPING"
    trap 'FORCE=1' INT TERM HUP
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for file in "$STATE"/*.pgid; do
            [ -e "$file" ] || continue
            name="$(basename "$file" .pgid)"
            pgid="$(<"$file")"
            group_alive "$pgid" || continue
            left+=("$name:$pgid")
            [ -z "${signalled[$pgid]:-}" ] || continue
            signalled[$pgid]=1
            if kill -0 "$pgid" 2>/dev/null; then
                log "stopping $name (SIGTERM)"
                kill -TERM "$pgid" 2>/dev/null || true
            else
                kill -TERM -- "-$pgid" 2>/dev/null || true
            fi
        done
        [ "${#left[@]}" -gt 0 ] || break
        if [ "$FORCE" -eq 1 ] || [ "$SECONDS" -ge "$deadline" ]; then
            for entry in "${left[@]}"; do
                log "${entry%%:*} still running: SIGKILL"
                kill -KILL -- "-${entry##*:}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    wait 2>/dev/null || true
    rm -rf "$STATE"
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
for ((i = 1; i <= TASKQ_WORKER_PROCESSES; i++)); do
    # One supervised dramatiq master per worker process: one death takes no sibling down.
    # By default a process holds four messages per thread (TASKQ_WORKER_PREFETCH) and
    # claims each as it is delivered (TASKQ_CLAIM_ON_DELIVERY): a finished thread finds
    # its next message claimed already. Set it to the threads for strict order among long
    # jobs: a process then takes a message only when a thread is free.
    start "worker-$i" "$BIN/python" -m actors.cli actors.worker \
        --processes 1 --threads "$TASKQ_WORKER_THREADS"
done
start scheduler env TZ=UTC "$BIN/python" -m actors.scheduler_cli actors.scheduler

BROWSE_HOST="$TASKQ_API_HOST"
case "$BROWSE_HOST" in
    0.0.0.0 | "") BROWSE_HOST=127.0.0.1 ;;
    ::) BROWSE_HOST="[::1]" ;;
    *:*) BROWSE_HOST="[$BROWSE_HOST]" ;;
esac
BASE="http://$BROWSE_HOST:$TASKQ_API_PORT"
MGMT_URL="${TASKQ_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
# The console login is the broker URL's user; its password is never printed.
MGMT_LOGIN="user guest"
if [[ "${TASKQ_BROKER_URL:-}" =~ ^amqps?://([^:@/]+)(:[^@/]*)?@ ]]; then
    MGMT_LOGIN="user ${BASH_REMATCH[1]}, password from TASKQ_BROKER_URL"
fi
KEY_HINT="<a secret from TASKQ_API_KEYS>"
[ "$KEY_NOTE" = "keys from TASKQ_API_KEYS" ] || KEY_HINT="\$(cat $KEY_FILE)"
cat <<EOF
run: Smart Task Queue is running (Ctrl-C stops it)
run:   API docs             $BASE/docs
run:   admin page           $BASE/  (asks for an API key)
run:   metrics              $BASE/metrics
run:   API key              $KEY_NOTE
run:                        e.g. curl -H "Authorization: Bearer $KEY_HINT" $BASE/stats
run:   RabbitMQ management  ${MGMT_URL%/} ($MGMT_LOGIN)
EOF

# The restart loops end only when stopping: one that ended otherwise is a bug of this
# script, and the product is stopped rather than left half supervised.
rc=0
wait -n || rc=$?
log "a restart loop ended (status $rc): stopping everything"
stop_all
[ "$rc" -ne 0 ] || rc=1
exit "$rc"
