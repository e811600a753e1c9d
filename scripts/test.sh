#!/usr/bin/env bash
# Runs every check and test. Sets up everything itself on a fresh Debian machine: PostgreSQL
# (installed with apt-get when missing) in a throwaway cluster owned by an unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PG_TEST_PORT:-55439}
DIR=$(mktemp -d /tmp/syncline-test-pg.XXXXXX)
chmod 755 "$DIR"
MOTO_PID=""
cleanup() {
    scripts/pg-cluster.sh stop "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR"
    if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

echo "== PostgreSQL test cluster (port $PORT)"
TEST_DATABASE_ADMIN_URL=$(scripts/pg-cluster.sh start "$DIR" "$PORT" fast)
export TEST_DATABASE_ADMIN_URL

# The attachment tests run their suite on S3 too: a real S3-compatible server (moto, from
# PyPI), never a mock in code. Under CI they fail when these variables are missing.
echo "== S3-compatible server (moto_server) for the attachment tests"
MOTO_VENV=target/moto-venv
mkdir -p target
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]'
fi
MOTO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >target/moto.log 2>&1 &
MOTO_PID=$!
export TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT" TEST_S3_BUCKET=syncline-test
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
# Create the bucket once the server answers (bounded wait).
python3 - "$TEST_S3_ENDPOINT/$TEST_S3_BUCKET" <<'PY'
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("moto_server did not answer: see target/moto.log")
PY

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
# Every test drops its databases when it ends (tests/replication/common.rs).
LEFT=$(psql "$TEST_DATABASE_ADMIN_URL" -XAtc "SELECT count(*) FROM pg_database WHERE datname LIKE 'syncline\_t\_%'")
[ "$LEFT" = 0 ] || { echo "cargo test left $LEFT test databases behind" >&2; exit 1; }
cargo build --locked --bin syncline
echo "== Python client against the real server"
SYNCLINE_BIN=target/debug/syncline scripts/test-python.sh
echo "== TypeScript client (RxDB) against the real server, native gRPC and gRPC-Web"
SYNCLINE_BIN=target/debug/syncline scripts/test-typescript.sh
echo "== README: the first command from a private clone, and the example session verbatim"
scripts/test-readme.sh
echo "== proto lint and breaking-change check"
scripts/check-proto.sh
echo "== deployment manifests"
scripts/validate-deploy.sh
echo "== fuzz targets (10 s each)"
scripts/fuzz.sh 10
echo "== all checks passed"
