#!/usr/bin/env bash
# Smart Task Queue: make everything ready to run. Idempotent: a second run changes nothing.
#
#   bash scripts/setup.sh
#
#   (a) Python venv in .venv; `pip install -r requirements.txt` only when that file changed,
#       then the project itself, editable (`pip install -e . --no-deps`: the `taskq` command)
#   (b) PostgreSQL of TASKQ_DATABASE_URL: used as is if it answers, else started, else installed
#   (c) the database named in TASKQ_DATABASE_URL, created if missing
#   (d) RabbitMQ of TASKQ_BROKER_URL: same; management plugin enabled and its API answering;
#       the vhost named in the URL (other than "/") created if missing
#   (e) `alembic upgrade head` from the repo root (skipped when there is no alembic.ini)
#
# Environment:
#   TASKQ_DATABASE_URL             default postgresql+psycopg://postgres@127.0.0.1:5432/taskq
#   TASKQ_BROKER_URL               default amqp://guest:guest@127.0.0.1:5672/%2F
#   TASKQ_RABBITMQ_MANAGEMENT_URL  default http://127.0.0.1:15672
#   TASKQ_SKIP_SERVICES=1          skip (b)-(d): services are managed elsewhere (Docker)
#   TASKQ_SKIP_MIGRATIONS=1        skip (e)
#   TASKQ_PYTHON                   interpreter for the venv, default python3 (3.11 or newer)
#   TASKQ_SERVICE_WAIT             seconds to wait for a service to answer, default 120
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATABASE_URL="${TASKQ_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/taskq}"
BROKER_URL="${TASKQ_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
MGMT_URL="${TASKQ_RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
MGMT_URL="${MGMT_URL%/}"
PYTHON="${TASKQ_PYTHON:-python3}"
SERVICE_WAIT="${TASKQ_SERVICE_WAIT:-120}"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
RUN_DIR="$ROOT/.run"

log() { printf 'setup: %s\n' "$*"; }
# A URL without its password, for messages.
redact() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo -n "$@"
    else
        die "root is needed to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    have apt-get || die "cannot install $* here (no apt-get): install it by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    log "installing $* (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >/dev/null
}

# wait_until SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

# shellcheck disable=SC2016  # $1 and $2 expand in the inner bash
tcp_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

is_local() {
    case "$1" in
        "" | localhost | 127.* | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# parse_url URL: prints scheme, user, password, host, port, path (unquoted, without the
# leading "/"), one a line.
parse_url() {
    "$VENV_PY" - "$1" <<'EOF'
import sys
from urllib.parse import unquote, urlsplit

u = urlsplit(sys.argv[1])
try:
    port = u.port
except ValueError:
    sys.exit(f"bad port in {sys.argv[1]!r}")
path = u.path[1:] if u.path.startswith("/") else u.path
for value in (u.scheme, unquote(u.username or ""), unquote(u.password or ""),
              u.hostname or "", "" if port is None else str(port), unquote(path)):
    print(value.replace("\n", " "))
EOF
}

# ---------------------------------------------------------------------------------------
# (a) Python virtual environment
# ---------------------------------------------------------------------------------------
setup_venv() {
    [ -f requirements.txt ] || die "requirements.txt not found in $ROOT"
    if [ -e "$VENV" ] && ! "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
        log "venv: .venv is broken, recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV_PY" ]; then
        have "$PYTHON" || die "$PYTHON not found: install Python 3.11"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
            die "$PYTHON is $("$PYTHON" -V 2>&1): Python 3.11 or newer is needed (set TASKQ_PYTHON)"
        log "venv: creating .venv with $("$PYTHON" -V 2>&1)"
        "$PYTHON" -m venv "$VENV" ||
            die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    local want have_stamp=""
    want="$({ sha256sum requirements.txt pyproject.toml; "$VENV_PY" -V; } 2>&1 | sha256sum | cut -d' ' -f1)"
    [ -f "$STAMP" ] && have_stamp="$(cat "$STAMP")"
    if [ "$want" = "$have_stamp" ] && [ -x "$VENV/bin/taskq" ]; then
        log "venv: .venv up to date (requirements.txt and pyproject.toml unchanged)"
    else
        log "venv: pip install -r requirements.txt"
        "$VENV_PY" -m pip install -q --disable-pip-version-check -r requirements.txt
        log "venv: pip install --no-deps -e . (the project, with the taskq command)"
        "$VENV_PY" -m pip install -q --disable-pip-version-check --no-deps -e .
        printf '%s\n' "$want" >"$STAMP"
        log "venv: requirements installed"
    fi
}

# ---------------------------------------------------------------------------------------
# (b) + (c) PostgreSQL
# ---------------------------------------------------------------------------------------
PG_USER="" PG_PASS="" PG_HOST="" PG_PORT="" PG_DB=""
PG_FRESH=0

pg_ready() {
    if have pg_isready; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

# psql_admin ARGS...: psql on the maintenance database as the URL's user, no prompt.
psql_admin() {
    psql -X -w -q -A -t -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

# The local cluster listening on PG_PORT, as "VERSION NAME STATUS"; empty when none.
pg_local_cluster() {
    have pg_lsclusters || return 0
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

install_postgres() {
    apt_install postgresql
    PG_FRESH=1
    if [ -z "$(pg_local_cluster)" ]; then
        local version
        version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$version" ] || die "PostgreSQL installed but no server version found in /usr/lib/postgresql"
        log "PostgreSQL: creating cluster $version/main on port $PG_PORT"
        as_root pg_createcluster "$version" main -p "$PG_PORT" </dev/null >/dev/null
    fi
}

# For a server this run installed only: allow password-less TCP connections from the
# loopback when the URL has no password and connecting fails (Debian's default is
# scram-sha-256 for host connections).
pg_allow_loopback_trust() {
    [ "$PG_FRESH" -eq 1 ] || return 0
    [ -z "$PG_PASS" ] || return 0
    psql_admin -c 'SELECT 1' >/dev/null 2>&1 && return 0
    local version name status hba tmp
    read -r version name status <<<"$(pg_local_cluster)"
    hba="/etc/postgresql/$version/$name/pg_hba.conf"
    [ -f "$hba" ] || die "cannot find $hba to allow local connections"
    log "PostgreSQL: fresh install: allowing password-less connections from 127.0.0.1 and ::1 in $hba"
    tmp="$(mktemp)"
    {
        echo "# Added by Smart Task Queue scripts/setup.sh on a freshly installed server:"
        echo "# password-less TCP connections from the loopback only."
        echo "host    all             all             127.0.0.1/32            trust"
        echo "host    all             all             ::1/128                 trust"
        cat "$hba"
    } >"$tmp"
    # shellcheck disable=SC2016  # $1 and $2 expand in the inner sh
    as_root sh -c 'cat "$1" > "$2"' _ "$tmp" "$hba"
    rm -f "$tmp"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload </dev/null >/dev/null
    wait_until 10 psql_admin -c 'SELECT 1' >/dev/null 2>&1 ||
        die "still cannot connect as $PG_USER to $PG_HOST:$PG_PORT after allowing trust auth"
}

setup_postgres() {
    local fields
    mapfile -t fields < <(parse_url "$DATABASE_URL")
    [ "${#fields[@]}" -eq 6 ] || die "cannot parse TASKQ_DATABASE_URL=$(redact "$DATABASE_URL")"
    PG_USER="${fields[1]:-postgres}" PG_PASS="${fields[2]}" PG_HOST="${fields[3]:-127.0.0.1}"
    PG_PORT="${fields[4]:-5432}" PG_DB="${fields[5]:-taskq}"
    if [ -n "$PG_PASS" ]; then export PGPASSWORD="$PG_PASS"; fi
    export PGCONNECT_TIMEOUT=5

    if pg_ready; then
        log "PostgreSQL: answering at $PG_HOST:$PG_PORT"
    elif ! is_local "$PG_HOST"; then
        log "PostgreSQL: waiting for $PG_HOST:$PG_PORT (not a local server: not starting it)"
        wait_until "$SERVICE_WAIT" pg_ready || die "PostgreSQL at $PG_HOST:$PG_PORT does not answer"
    else
        if ! have pg_ctlcluster || [ -z "$(pg_local_cluster)" ]; then
            if have pg_ctlcluster && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
                die "no local PostgreSQL cluster on port $PG_PORT (pg_lsclusters lists others): fix TASKQ_DATABASE_URL"
            fi
            log "PostgreSQL: not installed"
            install_postgres
        fi
        local version name status
        read -r version name status <<<"$(pg_local_cluster)"
        if [ "$status" = online ]; then
            log "PostgreSQL: cluster $version/$name is starting, waiting"
        else
            log "PostgreSQL: starting cluster $version/$name"
            mkdir -p "$RUN_DIR"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start \
                </dev/null >"$RUN_DIR/postgresql-start.log" 2>&1 || {
                cat "$RUN_DIR/postgresql-start.log" >&2
                die "could not start PostgreSQL cluster $version/$name"
            }
        fi
        wait_until "$SERVICE_WAIT" pg_ready || die "PostgreSQL at $PG_HOST:$PG_PORT does not answer"
        log "PostgreSQL: answering at $PG_HOST:$PG_PORT"
    fi

    have psql || apt_install postgresql-client
    pg_allow_loopback_trust
    psql_admin -c 'SELECT 1' >/dev/null ||
        die "cannot connect to PostgreSQL as $PG_USER at $PG_HOST:$PG_PORT"

    local exists
    exists="$(psql_admin -v dbname="$PG_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'dbname'")"
    if [ "$exists" = 1 ]; then
        log "PostgreSQL: database $PG_DB exists"
    else
        log "PostgreSQL: creating database $PG_DB"
        createdb -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
    fi
}

# ---------------------------------------------------------------------------------------
# (d) RabbitMQ
# ---------------------------------------------------------------------------------------
MQ_USER="" MQ_PASS="" MQ_HOST="" MQ_PORT="" MQ_VHOST=""

mq_ready() { tcp_open "$MQ_HOST" "$MQ_PORT"; }
mq_node_running() { timeout 20 rabbitmqctl -q ping >/dev/null 2>&1; }
mgmt_ready() {
    curl -fsS -o /dev/null --max-time 5 -u "$MQ_USER:$MQ_PASS" "$MGMT_URL/api/overview" 2>/dev/null
}
urlencode() { "$VENV_PY" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

setup_vhost() {
    [ "$MQ_VHOST" != / ] || return 0
    if is_local "$MQ_HOST" && have rabbitmqctl; then
        if as_root rabbitmqctl -s list_vhosts name | grep -qxF -- "$MQ_VHOST"; then
            log "RabbitMQ: vhost $MQ_VHOST exists"
        else
            log "RabbitMQ: creating vhost $MQ_VHOST"
            as_root rabbitmqctl -q add_vhost "$MQ_VHOST" >/dev/null
        fi
        if ! as_root rabbitmqctl -s list_permissions -p "$MQ_VHOST" | awk '{ print $1 }' | grep -qxF -- "$MQ_USER"; then
            log "RabbitMQ: granting $MQ_USER all permissions on vhost $MQ_VHOST"
            as_root rabbitmqctl -q set_permissions -p "$MQ_VHOST" "$MQ_USER" ".*" ".*" ".*" >/dev/null
        fi
    else
        # No local node to run rabbitmqctl on: use the management HTTP API.
        local vhost_q user_q
        vhost_q="$(urlencode "$MQ_VHOST")" user_q="$(urlencode "$MQ_USER")"
        if curl -fsS -o /dev/null --max-time 10 -u "$MQ_USER:$MQ_PASS" "$MGMT_URL/api/vhosts/$vhost_q" 2>/dev/null; then
            log "RabbitMQ: vhost $MQ_VHOST exists"
        else
            log "RabbitMQ: creating vhost $MQ_VHOST (management API)"
            curl -fsS -o /dev/null --max-time 10 -u "$MQ_USER:$MQ_PASS" -X PUT "$MGMT_URL/api/vhosts/$vhost_q"
        fi
        if ! curl -fsS -o /dev/null --max-time 10 -u "$MQ_USER:$MQ_PASS" "$MGMT_URL/api/permissions/$vhost_q/$user_q" 2>/dev/null; then
            log "RabbitMQ: granting $MQ_USER all permissions on vhost $MQ_VHOST (management API)"
            curl -fsS -o /dev/null --max-time 10 -u "$MQ_USER:$MQ_PASS" -X PUT \
                -H 'content-type: application/json' \
                -d '{"configure": ".*", "write": ".*", "read": ".*"}' \
                "$MGMT_URL/api/permissions/$vhost_q/$user_q"
        fi
    fi
}

setup_rabbitmq() {
    local fields default_port=5672
    mapfile -t fields < <(parse_url "$BROKER_URL")
    [ "${#fields[@]}" -eq 6 ] || die "cannot parse TASKQ_BROKER_URL=$(redact "$BROKER_URL")"
    [ "${fields[0]}" = amqps ] && default_port=5671
    MQ_USER="${fields[1]:-guest}" MQ_PASS="${fields[2]:-guest}" MQ_HOST="${fields[3]:-127.0.0.1}"
    MQ_PORT="${fields[4]:-$default_port}" MQ_VHOST="${fields[5]:-/}"

    if mq_ready; then
        log "RabbitMQ: answering at $MQ_HOST:$MQ_PORT"
    elif ! is_local "$MQ_HOST"; then
        log "RabbitMQ: waiting for $MQ_HOST:$MQ_PORT (not a local server: not starting it)"
        wait_until "$SERVICE_WAIT" mq_ready || die "RabbitMQ at $MQ_HOST:$MQ_PORT does not answer"
    else
        if ! have rabbitmq-server || ! have rabbitmqctl; then
            log "RabbitMQ: not installed"
            apt_install rabbitmq-server
        fi
        if mq_node_running; then
            log "RabbitMQ: node is up, waiting for its listener"
        else
            log "RabbitMQ: starting (rabbitmq-server -detached)"
            mkdir -p "$RUN_DIR"
            as_root rabbitmq-server -detached </dev/null >"$RUN_DIR/rabbitmq-start.log" 2>&1 || {
                cat "$RUN_DIR/rabbitmq-start.log" >&2
                die "could not start RabbitMQ"
            }
        fi
        wait_until "$SERVICE_WAIT" mq_ready ||
            die "RabbitMQ does not answer at $MQ_HOST:$MQ_PORT (see /var/log/rabbitmq/)"
        as_root rabbitmqctl -q await_startup --timeout "$SERVICE_WAIT" >/dev/null 2>&1 || true
        log "RabbitMQ: answering at $MQ_HOST:$MQ_PORT"
    fi

    have curl || apt_install curl
    if mgmt_ready; then
        log "RabbitMQ: management API answering at $MGMT_URL"
    else
        if is_local "$MQ_HOST" && have rabbitmq-plugins; then
            log "RabbitMQ: enabling the management plugin"
            as_root rabbitmq-plugins -q enable rabbitmq_management </dev/null >/dev/null
        fi
        log "RabbitMQ: waiting for the management API at $MGMT_URL"
        wait_until "$SERVICE_WAIT" mgmt_ready ||
            die "RabbitMQ management API does not answer at $MGMT_URL/api/overview (user $MQ_USER)"
        log "RabbitMQ: management API answering at $MGMT_URL"
    fi

    setup_vhost
}

# ---------------------------------------------------------------------------------------
# (e) Schema migrations
# ---------------------------------------------------------------------------------------
setup_schema() {
    if [ "${TASKQ_SKIP_MIGRATIONS:-0}" = 1 ]; then
        log "migrations: skipped (TASKQ_SKIP_MIGRATIONS=1)"
    elif [ ! -f "$ROOT/alembic.ini" ]; then
        log "migrations: no alembic.ini at the repo root yet: skipping alembic upgrade head"
    else
        log "migrations: alembic upgrade head"
        TASKQ_DATABASE_URL="$DATABASE_URL" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
            "$VENV/bin/alembic" upgrade head
    fi
}

setup_venv
if [ "${TASKQ_SKIP_SERVICES:-0}" = 1 ]; then
    log "services: skipped (TASKQ_SKIP_SERVICES=1)"
else
    setup_postgres
    setup_rabbitmq
fi
setup_schema
log "ready"
