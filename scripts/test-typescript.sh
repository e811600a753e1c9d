#!/usr/bin/env bash
# Runs the TypeScript client's tests (clients/typescript: syncline-rxdb) against a real Syncline
# server: two RxDB databases replicating through it, once over native gRPC and once over gRPC-Web.
#
# Usage: TEST_DATABASE_ADMIN_URL=postgres://postgres@127.0.0.1:55433/postgres scripts/test-typescript.sh
#   TEST_DATABASE_ADMIN_URL  a throwaway cluster where the tests may CREATE DATABASE (required)
#   SYNCLINE_BIN             the server binary (default target/debug/syncline)
# Extra arguments go to `node --test` (e.g. --test-name-pattern=restart) and skip the README check.
#
# Installs clients/typescript's packages from package-lock.json (`npm ci`, skipped while
# node_modules matches the lock), checks that the committed stubs (src/gen) match a fresh
# generation from proto/, compiles (tsc), then runs the suites: the interop suite and the
# client-behaviour suite (auth failures, token expiry, owners, compression) over both
# transports, a server without gRPC-Web, and the conflict-resolution suite over both
# transports (field-merge and crdt collections, idempotent retries, ListOverwritten; its
# counter test runs the Python client from target/python-venv, installed here, or from
# $TEST_PYTHON), the attachments suite over both transports (RxDB attachments byte-identical
# across databases, dedup, an upload cut by a restart), the selective-sync suite over both
# transports (replications with a `selector`, removals, a changed selector), and a smoke run of
# the Node benchmark (bench/, tiny sizes). Finally
# scripts/test-typescript-readme.sh runs
# the README's TypeScript snippet from the packed tarball in a fresh project. Each suite starts its own server on a free port against a fresh database
# (syncline_ts_<run>_<transport>), kills and restarts it mid-test, and drops the database at
# the end. This script drops leftover databases and stops leftover servers on exit, prints the
# server logs when a test failed, and exits with the test runner's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${TEST_DATABASE_ADMIN_URL:-}" ]; then
    echo "test-typescript.sh: set TEST_DATABASE_ADMIN_URL (e.g. postgres://postgres@127.0.0.1:55433/postgres)" >&2
    exit 2
fi
SYNCLINE_BIN=${SYNCLINE_BIN:-target/debug/syncline}
if [ ! -x "$SYNCLINE_BIN" ]; then
    echo "test-typescript.sh: $SYNCLINE_BIN not found; run 'cargo build --bin syncline' or set SYNCLINE_BIN" >&2
    exit 2
fi
SYNCLINE_BIN=$(cd "$(dirname "$SYNCLINE_BIN")" && pwd)/$(basename "$SYNCLINE_BIN")
for tool in node npm psql; do
    if ! command -v "$tool" >/dev/null; then
        echo "test-typescript.sh: '$tool' is not installed" >&2
        exit 2
    fi
done

# The resolution suite runs the Python client beside an RxDB app (test/resolution-suite.ts):
# install it into the venv scripts/test-python.sh uses (same stamp: reinstalled when the
# package or the proto changed), unless TEST_PYTHON names another interpreter.
if [ -z "${TEST_PYTHON:-}" ]; then
    VENV=target/python-venv
    PY_STAMP=$VENV/.syncline-client-installed
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating $VENV (for the Python side of the resolution suite)"
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$PY_STAMP" ] || [ -n "$(find clients/python/pyproject.toml clients/python/setup.py \
        clients/python/generate.py clients/python/syncline_client proto/syncline \
        -newer "$PY_STAMP" -not -path '*/_gen/*' -not -name '*.pyc' -print -quit)" ]; then
        echo "== installing clients/python[dev] into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall './clients/python[dev]'
        touch "$PY_STAMP"
    fi
    export TEST_PYTHON=$ROOT/$VENV/bin/python
fi

cd clients/typescript
STAMP=node_modules/.syncline-npm-ci
if [ ! -f "$STAMP" ] || [ package-lock.json -nt "$STAMP" ] || [ package.json -nt "$STAMP" ]; then
    echo "== npm ci (clients/typescript)"
    npm ci --no-audit --no-fund
    touch "$STAMP"
fi
echo "== checking that the committed stubs (src/gen) match proto/"
GEN=$(mktemp -d /tmp/syncline-ts-gen.XXXXXX)
if ! npx --no-install buf generate --output "$GEN" || ! diff -r "$GEN/src/gen" src/gen; then
    rm -rf "$GEN"
    echo "test-typescript.sh: clients/typescript/src/gen is stale: run 'npm run generate' in clients/typescript and commit it" >&2
    exit 1
fi
rm -rf "$GEN"
echo "== compiling"
npm run --silent build:test

WORK=$(mktemp -d /tmp/syncline-ts-test.XXXXXX)
RUN_ID="r$$_$(date +%s)"
cleanup() {
    status=$?
    # Servers the suites started and could not stop (a crashed or killed test process).
    for pidfile in "$WORK"/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for db in $(psql "$TEST_DATABASE_ADMIN_URL" -At -c \
        "SELECT datname FROM pg_database WHERE datname LIKE 'syncline\_ts\_${RUN_ID,,}\_%'" 2>/dev/null); do
        psql "$TEST_DATABASE_ADMIN_URL" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "== server log ($(basename "$log"))" >&2
            tail -n 200 "$log" >&2
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== node --test (gRPC and gRPC-Web against $(basename "$SYNCLINE_BIN"))"
set +e
SYNCLINE_BIN="$SYNCLINE_BIN" SYNCLINE_TEST_LOG_DIR="$WORK" SYNCLINE_TEST_RUN_ID="$RUN_ID" \
    node --test --test-concurrency=1 "$@" \
    build/test/convert.test.js build/test/errors.test.js build/test/reconcile.test.js build/test/push-keys.test.js build/test/attachments-convert.test.js build/test/pull-page.test.js build/test/pull-ahead.test.js build/test/sha256.test.js build/test/grpc-unary-node.test.js build/test/response-compression.test.js build/test/interop-grpc.test.js build/test/interop-grpc-web.test.js \
    build/test/client-grpc.test.js build/test/client-grpc-web.test.js build/test/grpc-web-off.test.js \
    build/test/resolution-grpc.test.js build/test/resolution-grpc-web.test.js \
    build/test/attachments-grpc.test.js build/test/attachments-grpc-web.test.js \
    build/test/selector.test.js build/test/selective-grpc.test.js build/test/selective-grpc-web.test.js \
    build/test/bench-smoke.test.js
status=$?
set -e
cd "$ROOT"
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
    echo "== the README's TypeScript snippet from the packed tarball"
    SYNCLINE_BIN="$SYNCLINE_BIN" scripts/test-typescript-readme.sh || status=$?
fi
exit "$status"
