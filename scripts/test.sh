#!/usr/bin/env bash
# Runs every check and test. Sets up everything itself on a fresh Debian machine: PostgreSQL
# (installed with apt-get when missing) in a throwaway cluster owned by an unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PG_TEST_PORT:-55439}
DIR=$(mktemp -d /tmp/syncline-test-pg.XXXXXX)
chmod 755 "$DIR"
cleanup() { scripts/pg-cluster.sh stop "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT

echo "== PostgreSQL test cluster (port $PORT)"
TEST_DATABASE_ADMIN_URL=$(scripts/pg-cluster.sh start "$DIR" "$PORT" fast)
export TEST_DATABASE_ADMIN_URL

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
