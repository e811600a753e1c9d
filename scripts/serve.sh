#!/usr/bin/env bash
# Runs Syncline with config/syncline.toml (or $SYNCLINE_CONFIG). Without DATABASE_URL it starts
# a local PostgreSQL cluster in .data/pg on 127.0.0.1:55432 (installing PostgreSQL with apt-get
# if needed) and keeps its data between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${SYNCLINE_CONFIG:-config/syncline.toml}
if [ -z "${DATABASE_URL:-}" ]; then
  mkdir -p .data
  chmod 755 .data
  admin=$(scripts/pg-cluster.sh start .data/pg "${PG_DEV_PORT:-55432}")
  if ! psql "$admin" -Atc "SELECT 1 FROM pg_database WHERE datname = 'syncline'" | grep -q 1; then
    psql "$admin" -qc "CREATE DATABASE syncline"
  fi
  export DATABASE_URL="${admin%/postgres}/syncline"
  echo "serve: using the local cluster at $DATABASE_URL (stop it with scripts/pg-cluster.sh stop .data/pg)" >&2
fi
exec cargo run --release --locked --bin syncline -- serve --config "$config"
