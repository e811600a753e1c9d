#!/usr/bin/env bash
# Runs the Python client's tests (clients/python/tests) against a real Syncline server.
#
# Usage: TEST_DATABASE_ADMIN_URL=postgres://postgres@127.0.0.1:55433/postgres scripts/test-python.sh
#   TEST_DATABASE_ADMIN_URL  a throwaway cluster where this script may CREATE DATABASE (required)
#   SYNCLINE_BIN             the server binary (default target/debug/syncline)
# Extra arguments go to pytest (e.g. -k subscribe).
#
# Creates target/python-venv (once), installs clients/python[dev] into it, generates the stubs,
# creates a fresh database, starts `syncline serve` on a free port, runs pytest with
# SYNCLINE_ADDR set, then stops the server and drops the database. Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TEST_DATABASE_ADMIN_URL:-}" ]; then
    echo "test-python.sh: set TEST_DATABASE_ADMIN_URL (e.g. postgres://postgres@127.0.0.1:55433/postgres)" >&2
    exit 2
fi
SYNCLINE_BIN=${SYNCLINE_BIN:-target/debug/syncline}
if [ ! -x "$SYNCLINE_BIN" ]; then
    echo "test-python.sh: $SYNCLINE_BIN not found; run 'cargo build --bin syncline' or set SYNCLINE_BIN" >&2
    exit 2
fi

VENV=target/python-venv
PY=$VENV/bin/python
STAMP=$VENV/.syncline-client-installed
if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ clients/python/pyproject.toml -nt "$STAMP" ]; then
    echo "== installing clients/python[dev]"
    "$PY" -m pip install -q --disable-pip-version-check -e 'clients/python[dev]'
    touch "$STAMP"
fi

echo "== generating stubs"
"$PY" clients/python/generate.py

WORK=$(mktemp -d /tmp/syncline-python-test.XXXXXX)
DB="syncline_py_$(date +%s)_$$"
SERVER_PID=""
DB_CREATED=""
cleanup() {
    status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$WORK/server.log" ]; then
        echo "== server log ($WORK/server.log)" >&2
        cat "$WORK/server.log" >&2
    fi
    if [ -n "$DB_CREATED" ]; then
        psql "$TEST_DATABASE_ADMIN_URL" -q -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== creating database $DB"
psql "$TEST_DATABASE_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" >/dev/null
DB_CREATED=1
DB_URL=$("$PY" -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
' "$TEST_DATABASE_ADMIN_URL" "$DB")

PORT=$("$PY" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
')
ADDR="127.0.0.1:$PORT"
cat >"$WORK/syncline.toml" <<EOF
listen = "$ADDR"
heartbeat_seconds = 2
metrics_enabled = false

[auth]
mode = "none"

[[collections]]
name = "tasks"

[[collections]]
name = "notes"
EOF

echo "== starting $SYNCLINE_BIN on $ADDR"
# The server reads SYNCLINE_* variables as configuration keys (unknown keys are an error), so
# start it without ours (SYNCLINE_BIN, SYNCLINE_ADDR, ...): the file says everything.
UNSET=()
while IFS= read -r name; do UNSET+=(-u "$name"); done < <(compgen -e | grep '^SYNCLINE_' || true)
env "${UNSET[@]}" NO_COLOR=1 DATABASE_URL="$DB_URL" RUST_LOG="${RUST_LOG:-info}" \
    "$SYNCLINE_BIN" serve --config "$WORK/syncline.toml" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 300); do # 30 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "test-python.sh: the server exited before accepting connections" >&2
        exit 1
    fi
    if "$PY" -c '
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)
' "$PORT"; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "test-python.sh: the server did not accept connections on $ADDR within 30 s" >&2
    exit 1
fi

echo "== pytest"
set +e
(cd clients/python && SYNCLINE_ADDR="$ADDR" "../../$PY" -m pytest -q "$@")
status=$?
set -e
exit "$status"
