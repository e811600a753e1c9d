#!/usr/bin/env bash
# Validates the Kubernetes manifests, alerting rules and dashboard under deploy/ (offline),
# and the /metrics of a running server.
#
#   scripts/validate-deploy.sh [DEPLOY_DIR]
#
# What it checks, with no cluster and no network (besides installing the PyPI
# package kubernetes-validate and Debian's prometheus package when they are missing):
#   1. every kustomization.yaml: known fields, and every file it names exists;
#      every YAML file under DEPLOY_DIR is named by some kustomization (but tests/);
#   2. every full resource (a kustomization's `resources:` files) against the
#      Kubernetes JSON schemas of kubernetes-validate in strict mode (unknown
#      fields are errors, exactly as `kubernetes-validate --strict -k VERSION`);
#      a kind with no schema is an ERROR (the kubernetes-validate CLI only warns);
#      the ServiceMonitor and PrometheusRule CRDs (which it does not know) against a small JSON schema
#      kept in deploy_check/manifests.py;
#   3. patch files (partial resources): apiVersion/kind/name present and the
#      patched resource exists;
#   4. when `kustomize` or `kubectl kustomize` is on PATH: every kustomization (but
#      components, rendered inside the kustomizations using them) is rendered and the output validated again (patches applied); otherwise the
#      cross-checks below run on the unpatched resources;
#   5. cross-references schemas cannot see: selectors match pod labels, Service
#      target ports and probe ports exist, referenced ConfigMaps/Secrets/keys
#      exist, the --config file and auth.jwks_file are mounted (the same JWKS
#      source in every container that loads the config), the listen/metrics_listen
#      ports match the container ports, syncline.toml holds no database URL and no
#      auth.hs256_secret, the grace period covers preStop + drain, HPA/PDB agree
#      with the replica count;
#   6. the ConfigMap's syncline.toml (base, and every rendered kustomization) is
#      extracted to a temp file and checked by the server itself:
#      `$SYNCLINE_BIN check-config --config FILE`, run without any SYNCLINE_* or
#      DATABASE_URL variable in its environment. The config contract (keys, types,
#      values) is the server's: this script does not duplicate it. auth.jwks_file
#      names a path inside the pod (/etc/syncline/keys/jwks.json), which does not
#      exist here: the file the Deployment mounts there (ConfigMap syncline-jwks,
#      as rendered) is written to the temp dir and jwks_file in the temp copy of
#      syncline.toml is rewritten to point at it, so the server checks the JWKS the
#      pods will actually see.
#
#   7. monitoring: the PrometheusRule's groups, extracted to a plain rule file, pass
#      `promtool check rules` and the unit tests of DEPLOY_DIR/tests/ (`promtool test
#      rules`: every alert fires on series that should fire it and stays quiet on others);
#      the Grafana dashboard (grafana/syncline.json) is JSON of the expected shape;
#   8. with TEST_DATABASE_ADMIN_URL set: the server binary runs on a fresh database
#      (127.0.0.1, free ports) with a little traffic; its /metrics passes
#      `promtool check metrics`, and every metric name a dashboard panel or an alert uses
#      is in it. Then the server stops and the database is dropped. Without the
#      variable this step is skipped (under CI=true it is an error).
#
# The checks are the Python package scripts/deploy_check (its unit tests run first:
# `python -m unittest discover -s scripts/deploy_check/tests`). promtool comes from
# Debian's `prometheus` package: when it is not on PATH, the package is fetched with
# `apt-get download` and only promtool is unpacked into a cache folder (no service is
# installed or started).
#
# Exits 0 when everything passes, 1 otherwise.
# Environment: K8S_VERSION (default 1.32.0), PYTHON (default python3),
#   SYNCLINE_BIN (default $ROOT/target/debug/syncline; build it with cargo build),
#   TEST_DATABASE_ADMIN_URL (a cluster where CREATE DATABASE is allowed), PROMTOOL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_DIR="$(cd "${1:-$ROOT/deploy}" && pwd)"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
PYTHON="${PYTHON:-python3}"
SYNCLINE_BIN="${SYNCLINE_BIN:-$ROOT/target/debug/syncline}"

if [[ ! -x "$SYNCLINE_BIN" ]]; then
  echo "FATAL: $SYNCLINE_BIN does not exist or is not executable:" \
       "build it first with cargo build (or set SYNCLINE_BIN to a syncline binary)" >&2
  exit 1
fi

# --- kubernetes-validate -----------------------------------------------------
if ! command -v kubernetes-validate >/dev/null 2>&1 \
   || ! "$PYTHON" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing kubernetes-validate (PyPI)..." >&2
  if ! "$PYTHON" -m pip install --quiet 'kubernetes-validate>=1.32,<2' 2>/dev/null; then
    # e.g. an "externally managed" system Python: use a private virtualenv.
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/syncline-validate-deploy-venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet 'kubernetes-validate>=1.32,<2'
    PYTHON="$venv/bin/python"
  fi
fi
"$PYTHON" -c 'import kubernetes_validate' \
  || { echo "FATAL: kubernetes-validate could not be imported by $PYTHON" >&2; exit 1; }

# --- promtool (Debian's prometheus package, unpacked: no service) ------------------
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/syncline-promtool"
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -z "$PROMTOOL" && -x "$CACHE/usr/bin/promtool" ]]; then
  PROMTOOL="$CACHE/usr/bin/promtool"
fi
if [[ -z "$PROMTOOL" ]]; then
  echo "fetching promtool (Debian package prometheus, unpacked into $CACHE)..." >&2
  dl="$(mktemp -d)"
  chmod 755 "$dl"   # apt's _apt user downloads into it
  if ! (cd "$dl" && apt-get download -q prometheus >/dev/null 2>&1); then
    if [[ "$(id -u)" == 0 ]]; then apt-get update -q >/dev/null; fi
    (cd "$dl" && apt-get download -q prometheus >/dev/null)
  fi
  mkdir -p "$CACHE"
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x"
  install -m 0755 "$dl/x/usr/bin/promtool" "$CACHE/promtool.tmp"
  mkdir -p "$CACHE/usr/bin" && mv "$CACHE/promtool.tmp" "$CACHE/usr/bin/promtool"
  rm -rf "$dl"
  PROMTOOL="$CACHE/usr/bin/promtool"
fi
"$PROMTOOL" --version >/dev/null \
  || { echo "FATAL: $PROMTOOL does not run" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
failed=0

echo "== unit tests of scripts/deploy_check"
if ! SYNCLINE_BIN="$SYNCLINE_BIN" "$PYTHON" -m unittest discover -s "$ROOT/scripts/deploy_check/tests" -t "$ROOT/scripts"; then
  failed=1
fi

echo "== manifests"
"$PYTHON" -m deploy_check.manifests "$DEPLOY_DIR" --syncline-bin "$SYNCLINE_BIN" \
  --k8s-version "$K8S_VERSION" || failed=1

echo "== alerting rules (promtool $("$PROMTOOL" --version 2>&1 | head -1 | awk '{print $3}'))"
mkdir -p "$WORK/rules"
if "$PYTHON" -m deploy_check.monitoring rules "$DEPLOY_DIR" "$WORK/rules"; then
  "$PROMTOOL" check rules "$WORK/rules/syncline-rules.yaml" || failed=1
  (cd "$WORK/rules" && for t in *.test.yaml; do "$PROMTOOL" test rules "$t" || exit 1; done) || failed=1
else
  failed=1
fi

echo "== Grafana dashboard"
"$PYTHON" -m deploy_check.monitoring dashboard "$DEPLOY_DIR" || failed=1

echo "== /metrics of a running server"
if [[ -n "${TEST_DATABASE_ADMIN_URL:-}" ]]; then
  if "$PYTHON" -m deploy_check.live --syncline-bin "$SYNCLINE_BIN" \
       --admin-url "$TEST_DATABASE_ADMIN_URL" --out "$WORK/metrics.txt"; then
    if "$PROMTOOL" check metrics <"$WORK/metrics.txt"; then
      echo "ok    promtool check metrics: clean"
    else
      failed=1
    fi
    "$PYTHON" -m deploy_check.monitoring names "$DEPLOY_DIR" "$WORK/metrics.txt" || failed=1
  else
    failed=1
  fi
elif [[ "${CI:-}" == "true" ]]; then
  echo "ERROR: TEST_DATABASE_ADMIN_URL is not set (needed to run the server)" >&2
  failed=1
else
  echo "SKIPPED: set TEST_DATABASE_ADMIN_URL to check /metrics of a running server" >&2
fi

if (( failed )); then
  echo "FAILED: scripts/validate-deploy.sh" >&2
  exit 1
fi
echo "validate-deploy: all checks passed"
