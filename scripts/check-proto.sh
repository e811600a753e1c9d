#!/usr/bin/env bash
# Checks the public API contract in proto/ with buf (npm @bufbuild/buf, pinned in
# clients/typescript's devDependencies):
#   buf lint      the STANDARD and COMMENTS rules (proto/buf.yaml)
#   buf breaking  proto/ against proto/released/ (a copy of the last released proto), FILE
#                 rules: anything that would break generated clients (renumbered, removed,
#                 renamed or retyped fields, messages, RPCs, packages) fails.
# Then it proves the breaking check bites: a copy with one field renumbered must fail it.
#
# After a release, refresh the copy: cp proto/syncline/v1/*.proto proto/released/syncline/v1/
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=$PWD/clients/typescript/node_modules/.bin/buf
if [ ! -x "$BUF" ]; then
    echo "== npm ci (clients/typescript, for buf)"
    (cd clients/typescript && npm ci --no-audit --no-fund)
fi
echo "== buf $("$BUF" --version)"

echo "== buf lint proto"
"$BUF" lint proto

echo "== buf breaking proto --against proto/released"
"$BUF" breaking proto --against proto/released

echo "== self-check: a renumbered field must fail buf breaking"
TMP=$(mktemp -d /tmp/syncline-proto-check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp -r proto "$TMP/proto"
sed -i 's/^\(  uint32 limit = \)3;/\19;/' "$TMP/proto/syncline/v1/replication.proto"
if cmp -s proto/syncline/v1/replication.proto "$TMP/proto/syncline/v1/replication.proto"; then
    echo "check-proto.sh: self-check could not edit PullRequest.limit (proto changed?)" >&2
    exit 1
fi
if (cd "$TMP" && "$BUF" breaking proto --against proto/released >"$TMP/out" 2>&1); then
    echo "check-proto.sh: buf breaking accepted a renumbered field; the check is not working" >&2
    exit 1
fi
sed 's/^/    /' "$TMP/out"
echo "== proto checks passed"
