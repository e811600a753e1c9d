#!/usr/bin/env bash
# A throwaway (or local development) PostgreSQL cluster owned by an unprivileged user.
#
#   scripts/pg-cluster.sh start <dir> <port> [fast]   initialise if needed, start, print the admin URL
#   scripts/pg-cluster.sh stop  <dir> [immediate]     stop it (the data stays in <dir>); `immediate`
#                                                     stops like a crash (tests of durability)
#
# Installs PostgreSQL with apt-get when no server binaries are found. `initdb` refuses to run as
# root, so as root the cluster belongs to the `postgres` user. `fast` turns off fsync: only for
# clusters whose data may be lost (tests, benchmarks).
set -euo pipefail

die() { echo "pg-cluster: $*" >&2; exit 1; }

find_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

ensure_postgres() {
  if ! BINDIR=$(find_bindir); then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    echo "pg-cluster: installing PostgreSQL with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BINDIR=$(find_bindir) || die "PostgreSQL binaries not found after installation"
  fi
}

# Runs a command as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start <dir> <port> [fast] | stop <dir> [fast|immediate]"
ensure_postgres
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ "$(id -u)" = 0 ] && as_owner true && chown -R postgres "$dir"

case "$cmd" in
  start)
    port=${3:?port}
    mode=${4:-}
    mkdir -p "$dir/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    opts="-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB"
    [ "$mode" = fast ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if ! as_owner "$BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      as_owner "$BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w -t 60 start >&2 \
        || { tail -n 30 "$dir/server.log" >&2; die "could not start PostgreSQL on port $port"; }
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_owner "$BINDIR/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >&2 || true
    ;;
  *) die "unknown command $cmd" ;;
esac
