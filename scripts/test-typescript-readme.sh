#!/usr/bin/env bash
# Runs the README's TypeScript path as a new user would: packs clients/typescript (`npm pack`),
# creates a fresh npm project in a temporary folder, installs the tarball with rxdb and rxjs
# (the peer dependencies, at the versions the README names), writes each README TypeScript
# snippet (README.md and clients/typescript/README.md, the ```ts block after the marker
# `<!-- readme-typescript-snippet -->`) verbatim into it, type-checks it with tsc and runs it
# twice against a real server (JWT auth, a token from `syncline token`): the second run must
# succeed too and see the first run's document through the server.
#
# Usage: TEST_DATABASE_ADMIN_URL=postgres://postgres@127.0.0.1:55433/postgres \
#          SYNCLINE_BIN=target/debug/syncline scripts/test-typescript-readme.sh
# scripts/test-typescript.sh calls it after the interop suites.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${TEST_DATABASE_ADMIN_URL:-}" ]; then
    echo "test-typescript-readme.sh: set TEST_DATABASE_ADMIN_URL" >&2
    exit 2
fi
SYNCLINE_BIN=${SYNCLINE_BIN:-target/debug/syncline}
if [ ! -x "$SYNCLINE_BIN" ]; then
    echo "test-typescript-readme.sh: $SYNCLINE_BIN not found; run 'cargo build --bin syncline' or set SYNCLINE_BIN" >&2
    exit 2
fi
SYNCLINE_BIN=$(cd "$(dirname "$SYNCLINE_BIN")" && pwd)/$(basename "$SYNCLINE_BIN")

work=$(mktemp -d /tmp/syncline-ts-readme.XXXXXX)
database="syncline_ts_readme_$$"
server_pid=
cleanup() {
    status=$?
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    psql "$TEST_DATABASE_ADMIN_URL" -q -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ] && [ -f "$work/server.log" ]; then
        echo "== server log" >&2
        tail -n 60 "$work/server.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== ts-readme: npm pack (clients/typescript)"
pkg=$ROOT/clients/typescript
if [ ! -d "$pkg/node_modules" ]; then
    (cd "$pkg" && npm ci --no-audit --no-fund)
fi
tarball=$(cd "$pkg" && npm pack --silent --pack-destination "$work" | tail -n 1)
tarball=$work/$tarball
listing=$(tar -tzf "$tarball")
for needed in package/dist/index.js package/dist/browser.js package/dist/index.d.ts \
    package/dist/gen/syncline/v1/replication_pb.js package/README.md; do
    grep -qx "$needed" <<<"$listing" || { echo "ts-readme: $needed is missing from the tarball" >&2; exit 1; }
done

echo "== ts-readme: a fresh project installing the tarball and the peer dependencies"
app=$work/app
mkdir -p "$app"
cat >"$app/package.json" <<'JSON'
{ "name": "syncline-readme-app", "version": "1.0.0", "private": true, "type": "module" }
JSON
cat >"$app/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext",
    "strict": true, "skipLibCheck": true, "types": ["node"], "outDir": "out"
  },
  "include": ["*.ts"]
}
JSON
peer() { node -p "require('$pkg/package.json').peerDependencies['$1']"; }
dev() { node -p "require('$pkg/package.json').devDependencies['$1']"; }
(cd "$app" && npm install --no-audit --no-fund --prefer-offline --loglevel=error \
    "$tarball" "rxdb@$(peer rxdb)" "rxjs@$(peer rxjs)" "typescript@$(dev typescript)" "@types/node@$(dev @types/node)")
# One copy of rxdb (a second one, e.g. from a symlinked folder install, breaks RxDB's plugins).
copies=$(cd "$app" && find -L node_modules -path '*node_modules/rxdb/package.json' | wc -l)
if [ "$copies" -ne 1 ] || [ -L "$app/node_modules/syncline-rxdb" ]; then
    echo "ts-readme: expected one rxdb and a real (not symlinked) syncline-rxdb, found $copies rxdb" >&2
    exit 1
fi

echo "== ts-readme: a server with JWT authentication on a fresh database"
psql "$TEST_DATABASE_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$database\""
database_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
    "$TEST_DATABASE_ADMIN_URL" "$database")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
cat >"$work/syncline.toml" <<TOML
listen = "127.0.0.1:$port"
metrics_enabled = false
[auth]
mode = "jwt"
hs256_secret = "$secret"
[[collections]]
name = "tasks"
TOML
# The server reads every SYNCLINE_* variable as configuration: run it without ours (env execs
# the server, so $! is the server itself).
read -r -a unset_ours <<<"$(env | sed -n 's/^\(SYNCLINE_[A-Za-z0-9_]*\)=.*/-u \1/p' | tr '\n' ' ')"
syncline=(env "${unset_ours[@]}" "$SYNCLINE_BIN")
DATABASE_URL=$database_url "${syncline[@]}" serve --config "$work/syncline.toml" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "ts-readme: the server exited" >&2; exit 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
token=$("${syncline[@]}" token --config "$work/syncline.toml" --sub alice --ttl 10m)

extract() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
marker = "<!-- readme-typescript-snippet -->"
if marker not in text:
    sys.exit(f"{sys.argv[1]}: no '{marker}' marker")
block = re.match(r"\s*```ts\n(.*?)```", text.split(marker, 1)[1], re.S)
if not block:
    sys.exit(f"{sys.argv[1]}: no ```ts block right after the marker")
sys.stdout.write(block.group(1))
PY
}

n=0
for readme in README.md clients/typescript/README.md; do
    n=$((n + 1))
    extract "$ROOT/$readme" >"$app/snippet$n.ts"
    echo "== ts-readme: the snippet of $readme, verbatim (tsc, then twice against the server)"
    (cd "$app" && npx tsc -p tsconfig.json)
    expected=$((2 * n - 1))
    for run in 1 2; do
        out=$(cd "$app" && SYNCLINE_URL="http://127.0.0.1:$port" SYNCLINE_TOKEN="$token" \
            timeout 60 node "out/snippet$n.js" 2>&1) || { echo "$out" >&2; echo "ts-readme: run $run of $readme failed" >&2; exit 1; }
        echo "$out" | sed 's/^/    /'
        # Each run adds one document and sees every earlier run's through the server.
        if ! grep -qx "tasks on this replica: $expected" <<<"$out"; then
            echo "ts-readme: run $run of $readme: expected 'tasks on this replica: $expected'" >&2
            exit 1
        fi
        expected=$((expected + 1))
    done
done
echo "== ts-readme: ok"
