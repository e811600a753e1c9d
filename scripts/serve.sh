#!/usr/bin/env bash
# Runs Syncline with config/syncline.toml (or $SYNCLINE_CONFIG). Without DATABASE_URL it starts
# a local PostgreSQL cluster on 127.0.0.1:55432 (installing PostgreSQL with apt-get if needed)
# and keeps its data between runs, in .data/pg inside the clone, or, when the cluster's
# unprivileged owner cannot reach the clone (run as root from a private directory such as
# /root), in /var/tmp/syncline-dev-<hash of the clone's path>. $SYNCLINE_DEV_PG_DIR overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${SYNCLINE_CONFIG:-config/syncline.toml}

# Where the development cluster lives: printed, and the same on every run from this clone.
dev_pg_dir() {
  if [ -n "${SYNCLINE_DEV_PG_DIR:-}" ]; then echo "$SYNCLINE_DEV_PG_DIR"; return; fi
  if [ "$(id -u)" != 0 ]; then echo "$PWD/.data/pg"; return; fi
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  # `postgres` must be able to walk every folder down to the clone.
  if runuser -u postgres -- test -x "$PWD"; then echo "$PWD/.data/pg"; return; fi
  echo "/var/tmp/syncline-dev-$(printf '%s' "$PWD" | sha256sum | cut -c1-12)/pg"
}

if [ -z "${DATABASE_URL:-}" ]; then
  pgdir=$(dev_pg_dir)
  mkdir -p "$(dirname "$pgdir")"
  chmod 755 "$(dirname "$pgdir")"
  admin=$(scripts/pg-cluster.sh start "$pgdir" "${PG_DEV_PORT:-55432}")
  if ! psql "$admin" -Atc "SELECT 1 FROM pg_database WHERE datname = 'syncline'" | grep -q 1; then
    psql "$admin" -qc "CREATE DATABASE syncline"
  fi
  export DATABASE_URL="${admin%/postgres}/syncline"
  echo "serve: development PostgreSQL data in $pgdir, at $DATABASE_URL" >&2
  echo "serve: stop it with: scripts/pg-cluster.sh stop $pgdir   (remove it with: rm -rf $pgdir)" >&2
fi
# A debug build starts sooner on a new machine; SYNCLINE_PROFILE=release for measurements.
exec cargo run --profile "${SYNCLINE_PROFILE:-dev}" --locked --bin syncline -- serve --config "$config"
