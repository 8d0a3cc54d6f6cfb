#!/usr/bin/env bash
# Smart Task Queue: run the whole test suite.
#
#   bash scripts/test.sh [pytest arguments...]
#
# Tests never touch the development database or vhost: they run against
#   TASKQ_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/taskq_test
#   TASKQ_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/taskq_test
# (override with TASKQ_TEST_DATABASE_URL / TASKQ_TEST_BROKER_URL). scripts/setup.sh makes
# the venv and the services ready and creates that database and that vhost (with all
# permissions for the URL's user) when missing; the schema of the test database is the
# tests' own business (no migration is applied here). Then pytest runs with the
# configuration in pyproject.toml.
#
# Tests run in three pytest-xdist workers (TASKQ_TEST_WORKERS, 0 = one process).
# The chaos tests (marker `chaos`, tests/chaos: about 5 minutes) are left out unless a
# marker expression is given: run them with `bash scripts/test.sh -m chaos`. They start
# their own PostgreSQL and RabbitMQ on free ports and never touch the services above.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export TASKQ_DATABASE_URL="${TASKQ_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/taskq_test}"
export TASKQ_BROKER_URL="${TASKQ_TEST_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/taskq_test}"

TASKQ_SKIP_MIGRATIONS=1 bash "$ROOT/scripts/setup.sh"

# The browser tests (tests/browser) drive Debian's chromium headless through Playwright;
# Playwright's own browser download is never used.
if [ ! -x /usr/bin/chromium ]; then
    printf 'test: installing chromium for the browser tests\n'
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
        || printf 'test: WARNING: could not install chromium; the browser tests will fail\n' >&2
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# URLs without their passwords: logs and CI output never show a secret.
redact() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#'; }
printf 'test: pytest with TASKQ_DATABASE_URL=%s TASKQ_BROKER_URL=%s\n' \
    "$(redact "$TASKQ_DATABASE_URL")" "$(redact "$TASKQ_BROKER_URL")"
MARKERS=(-m "not chaos")
# Three pytest-xdist workers, one test file each at a time, each with its own database and
# vhost (tests/conftest.py): most tests wait on real processes, so three fit 2 cores and
# the suite takes about half the time. TASKQ_TEST_WORKERS=0 (or an -n of your own) runs
# it in one process.
PARALLEL=(-n "${TASKQ_TEST_WORKERS:-3}" --dist loadfile)
for arg in "$@"; do
    case "$arg" in
        -m | -m*) MARKERS=() ;;
        *chaos*) PARALLEL=() ;; # fault injection with timings: one at a time
        -n | -n* | --numprocesses*) PARALLEL=() ;;
    esac
done
[ "${TASKQ_TEST_WORKERS:-3}" != "0" ] || PARALLEL=()
exec "$ROOT/.venv/bin/pytest" "${MARKERS[@]}" "${PARALLEL[@]}" "$@"
