#!/usr/bin/env bash
# Runs the Python client's tests (clients/python/tests) against a real Syncline server, then the
# READMEs' Python snippets verbatim from a fresh virtual environment, as a new user would.
#
# Usage: TEST_DATABASE_ADMIN_URL=postgres://postgres@127.0.0.1:55433/postgres scripts/test-python.sh
#   TEST_DATABASE_ADMIN_URL  a throwaway cluster where this script may CREATE DATABASE (required)
#   SYNCLINE_BIN             the server binary (default target/debug/syncline)
# Extra arguments go to pytest (e.g. -k subscribe).
#
# 1. pytest: installs clients/python[dev] (a real, non-editable install: the build hook
#    generates the stubs) into target/python-venv, creates a fresh database, starts
#    `syncline serve` on a free port with collections `tasks`, `notes`, `purged`, `counters`
#    (crdt), `overwritten` (last-write-wins, keep_overwritten) and `selective` (filter_fields)
#    (no auth) and a
#    second one with JWT auth (see clients/python/tests/conftest.py), runs pytest with
#    SYNCLINE_ADDR, SYNCLINE_AUTH_ADDR and SYNCLINE_AUTH_SECRET set.
# 2. The READMEs' snippets (markers `<!-- ci: python-... -->`): in a fresh venv in a temp dir
#    outside the repository, `pip install <repo>/clients/python`, then each snippet verbatim
#    against `syncline serve --config config/syncline.toml` (the development configuration of
#    scripts/serve.sh) on 127.0.0.1:50051, which must be free. Also builds an sdist and, from
#    it alone, a wheel (`python -m build`), and imports the client from that wheel.
# Stops the servers and drops the databases at the end. Exits non-zero when either part failed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [ -z "${TEST_DATABASE_ADMIN_URL:-}" ]; then
    echo "test-python.sh: set TEST_DATABASE_ADMIN_URL (e.g. postgres://postgres@127.0.0.1:55433/postgres)" >&2
    exit 2
fi
SYNCLINE_BIN=${SYNCLINE_BIN:-target/debug/syncline}
if [ ! -x "$SYNCLINE_BIN" ]; then
    echo "test-python.sh: $SYNCLINE_BIN not found; run 'cargo build --bin syncline' or set SYNCLINE_BIN" >&2
    exit 2
fi
SYNCLINE_BIN=$(cd "$(dirname "$SYNCLINE_BIN")" && pwd)/$(basename "$SYNCLINE_BIN")

VENV=target/python-venv
PY=$VENV/bin/python
STAMP=$VENV/.syncline-client-installed
if [ ! -x "$PY" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
# Reinstall (the build hook regenerates the stubs) when the package or the proto changed.
if [ ! -f "$STAMP" ] || [ -n "$(find clients/python/pyproject.toml clients/python/setup.py \
    clients/python/generate.py clients/python/syncline_client proto/syncline \
    -newer "$STAMP" -not -path '*/_gen/*' -not -name '*.pyc' -print -quit)" ]; then
    echo "== installing clients/python[dev]"
    "$PY" -m pip install -q --disable-pip-version-check --force-reinstall './clients/python[dev]'
    touch "$STAMP"
fi

WORK=$(mktemp -d /tmp/syncline-python-test.XXXXXX)
SERVER_PIDS=()
DATABASES=()
failed=""
cleanup() {
    status=$?
    for pid in "${SERVER_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ "$status" -ne 0 ]; then
        for log in "$WORK"/server-*.log; do
            [ -f "$log" ] || continue
            echo "== server log ($log)" >&2
            cat "$log" >&2
        done
    fi
    for db in "${DATABASES[@]}"; do
        psql "$TEST_DATABASE_ADMIN_URL" -q -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# create_database NAME: creates it (dropped at exit).
create_database() {
    DATABASES+=("$1")
    psql "$TEST_DATABASE_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$1\"" >/dev/null
}

# database_url NAME: the admin URL with NAME as its database.
database_url() {
    python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
' "$TEST_DATABASE_ADMIN_URL" "$1"
}

port_open() {
    python3 -c '
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
except OSError:
    sys.exit(1)
' "$1"
}

free_port() {
    python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
'
}

# start_server NAME CONFIG DATABASE_URL PORT [VAR=VALUE...]: starts it and waits until it listens.
start_server() {
    local name=$1 config=$2 db_url=$3 port=$4
    shift 4
    echo "== starting $SYNCLINE_BIN ($name) on 127.0.0.1:$port"
    # The server reads SYNCLINE_* variables as configuration keys (unknown keys are an error),
    # so start it without ours (SYNCLINE_BIN, SYNCLINE_ADDR, ...), only with the given ones.
    local unset=() var
    while IFS= read -r var; do unset+=(-u "$var"); done < <(compgen -e | grep '^SYNCLINE_' || true)
    env "${unset[@]}" NO_COLOR=1 DATABASE_URL="$db_url" RUST_LOG="${RUST_LOG:-info}" "$@" \
        "$SYNCLINE_BIN" serve --config "$config" >"$WORK/server-$name.log" 2>&1 &
    local pid=$!
    SERVER_PIDS+=("$pid")
    for _ in $(seq 300); do # 30 s
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "test-python.sh: the $name server exited before accepting connections" >&2
            return 1
        fi
        if port_open "$port"; then return 0; fi
        sleep 0.1
    done
    echo "test-python.sh: the $name server did not accept connections on port $port within 30 s" >&2
    return 1
}

# --- 1. pytest against a server on a free port ------------------------------------------------
DB="syncline_py_$(date +%s)_$$"
create_database "$DB"
DB_URL=$(database_url "$DB")
PORT=$(free_port)
# Metrics on: the attachment tests read the server's transfer counters (dedup, resume).
METRICS_PORT=$(free_port)
cat >"$WORK/syncline.toml" <<TOML
listen = "127.0.0.1:$PORT"
heartbeat_seconds = 2
metrics_enabled = true
metrics_listen = "127.0.0.1:$METRICS_PORT"
purge_interval_seconds = 1

[auth]
mode = "none"

[[collections]]
name = "tasks"

[[collections]]
name = "notes"

[[collections]]
name = "purged"
tombstone_retention = "1s"

# Conflict resolution and idempotent pushes (tests/test_resolution.py).
[[collections]]
name = "counters"
conflict = "crdt"
crdt_fields = { count = "counter" }

[[collections]]
name = "overwritten"
conflict = "last-write-wins"
keep_overwritten = "1h"

# Selective sync: filtered pulls and streams (tests/test_selective.py).
[[collections]]
name = "selective"
filter_fields = { done = "boolean", team = "string", priority = "number" }
TOML
start_server tests "$WORK/syncline.toml" "$DB_URL" "$PORT"

# A second server on the same database with JWT authentication and small limits, for the tests
# of owners, tokens and error details (see clients/python/tests/conftest.py).
AUTH_PORT=$(free_port)
AUTH_SECRET="python-suite-$(date +%s%N)-secret-at-least-32-bytes"
cat >"$WORK/checked.json" <<JSON
{"title": "checked", "version": 0, "primaryKey": "id", "type": "object",
 "properties": {"id": {"type": "string", "maxLength": 100}, "title": {"type": "string"}}}
JSON
cat >"$WORK/auth.toml" <<TOML
listen = "127.0.0.1:$AUTH_PORT"
heartbeat_seconds = 2
metrics_enabled = false
push_rows_max = 50
streams_per_principal_max = 2

[auth]
mode = "jwt"
hs256_secret = "$AUTH_SECRET"
leeway_seconds = 0

[[collections]]
name = "tasks"

[[collections]]
name = "checked"
schema = "checked.json"

[[collections]]
name = "guarded"
write_scopes = ["writer"]

[[collections]]
name = "overwritten"
conflict = "last-write-wins"
keep_overwritten = "1h"

[[collections]]
name = "teams"
filter_fields = { team = "string" }
access = "claims"
read_filter = { team = { "\$claim" = "team" } }
write_filter = { team = { "\$claim" = "team" } }
TOML
start_server auth "$WORK/auth.toml" "$DB_URL" "$AUTH_PORT"

# The installed package, not the source tree: pytest (unlike `python -m pytest`) does not put
# the working directory on sys.path, so `syncline_client` resolves to the venv's copy.
echo "== pytest (client: $(cd / && "$REPO/$PY" -c 'import syncline_client.client as c; print(c.__file__)'))"
set +e
(cd clients/python && SYNCLINE_ADDR="127.0.0.1:$PORT" SYNCLINE_AUTH_ADDR="127.0.0.1:$AUTH_PORT" \
    SYNCLINE_AUTH_SECRET="$AUTH_SECRET" SYNCLINE_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
    "$REPO/$VENV/bin/pytest" -q "$@")
status=$?
set -e
[ "$status" -eq 0 ] || failed="pytest"

# --- 2. the READMEs' snippets, verbatim, from a fresh venv outside the repository -------------
echo "== README: pip install $REPO/clients/python in a fresh venv ($WORK/user)"
mkdir "$WORK/user"
cd "$WORK/user"
python3 -m venv venv
venv/bin/pip install -q --disable-pip-version-check "$REPO/clients/python"

if port_open 50051; then
    echo "test-python.sh: 127.0.0.1:50051 (the README's address) is in use; stop that server" >&2
    exit 1
fi
# The development configuration as scripts/serve.sh runs it (no metrics listener: not needed).
README_DB="syncline_pyreadme_$(date +%s)_$$"
create_database "$README_DB"
start_server readme "$REPO/config/syncline.toml" "$(database_url "$README_DB")" 50051 \
    SYNCLINE_METRICS_ENABLED=false

# run_snippet FILE MARKER EXPECTED: runs the block twice (it must not depend on a fresh
# database) and checks that its output has EXPECTED (an extended regex).
run_snippet() {
    local readme=$1 marker=$2 expected=$3 round out
    "$REPO/$PY" "$REPO/scripts/readme_snippet.py" "$readme" "$marker" >"$marker.py"
    for round in 1 2; do
        echo "== README: $marker ($readme), run $round"
        if ! out=$(timeout 60 venv/bin/python "$marker.py" 2>&1); then
            echo "$out"
            echo "test-python.sh: the README snippet $marker failed" >&2
            return 1
        fi
        echo "$out"
        if ! grep -Eq "$expected" <<<"$out"; then
            echo "test-python.sh: the README snippet $marker did not print /$expected/" >&2
            return 1
        fi
    done
}
run_snippet "$REPO/README.md" python-quickstart "^\['t-[0-9a-f]{8}'\]" || failed="$failed readme"
run_snippet "$REPO/clients/python/README.md" python-client-example "^t-[0-9a-f]{8} deleted " \
    || failed="$failed client-readme"
run_snippet "$REPO/clients/python/README.md" python-selective-example "^t-[0-9a-f]{8} deleted left_scope" \
    || failed="$failed client-readme-selective"
run_snippet "$REPO/clients/python/README.md" python-attachments-example \
    "^t-[0-9a-f]{8} [0-9a-f]{12} True$" || failed="$failed client-readme-attachments"

echo "== README: python -m build (sdist, then a wheel from the sdist alone)"
venv/bin/pip install -q --disable-pip-version-check build
venv/bin/python -m build -q --outdir "$WORK/user/dist" "$REPO/clients/python" >build.log 2>&1 \
    || { cat build.log; failed="$failed build"; }
if [ -z "$(ls dist/*.whl 2>/dev/null)" ] || [ -z "$(ls dist/*.tar.gz 2>/dev/null)" ]; then
    failed="$failed build"
else
    python3 -m venv wheel-venv
    wheel-venv/bin/pip install -q --disable-pip-version-check dist/*.whl
    wheel-venv/bin/python -c 'from syncline_client.client import pb, pb_grpc; print("wheel ok:", pb.DESCRIPTOR.name)' \
        || failed="$failed wheel"
fi

if [ -n "$failed" ]; then
    echo "test-python.sh: failed:$failed" >&2
    exit 1
fi
echo "== python: all passed"
