#!/usr/bin/env bash
# Validates the Kubernetes manifests under deploy/ offline.
#
#   scripts/validate-deploy.sh [DEPLOY_DIR]
#
# What it checks, with no cluster and no network (besides installing the PyPI
# package kubernetes-validate when it is missing):
#   1. every kustomization.yaml: known fields, and every file it names exists;
#      every YAML file under DEPLOY_DIR is named by some kustomization;
#   2. every full resource (a kustomization's `resources:` files) against the
#      Kubernetes JSON schemas of kubernetes-validate in strict mode (unknown
#      fields are errors, exactly as `kubernetes-validate --strict -k VERSION`);
#      a kind with no schema is an ERROR (the kubernetes-validate CLI only warns);
#      the ServiceMonitor CRD (which it does not know) against a small JSON schema
#      kept below;
#   3. patch files (partial resources): apiVersion/kind/name present and the
#      patched resource exists;
#   4. when `kustomize` or `kubectl kustomize` is on PATH: every kustomization is
#      rendered and the output validated again (patches applied); otherwise the
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
# Exits 0 when everything passes, 1 otherwise.
# Environment: K8S_VERSION (default 1.32.0), PYTHON (default python3),
#   SYNCLINE_BIN (default $ROOT/target/debug/syncline; build it with cargo build).
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

# --- render every kustomization, when a renderer is available -------------------
RENDER_DIR="$(mktemp -d)"
trap 'rm -rf "$RENDER_DIR"' EXIT
renderer=""
if command -v kustomize >/dev/null 2>&1; then
  renderer="kustomize build"
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  renderer="kubectl kustomize"
fi

render_failed=0
rendered_args=()
if [[ -n "$renderer" ]]; then
  while IFS= read -r -d '' kfile; do
    kdir="$(dirname "$kfile")"
    rel="${kdir#"$DEPLOY_DIR"/}"
    out="$RENDER_DIR/$(echo "$rel" | tr '/' '_').yaml"
    if $renderer "$kdir" >"$out" 2>"$out.err"; then
      rendered_args+=("$rel=$out")
    else
      echo "ERROR $rel: '$renderer' failed:" >&2
      sed 's/^/    /' "$out.err" >&2
      render_failed=1
    fi
  done < <(find "$DEPLOY_DIR" -name kustomization.yaml -print0 | sort -z)
fi

# --- validation ----------------------------------------------------------------
set +e
"$PYTHON" - "$DEPLOY_DIR" "$K8S_VERSION" "${renderer:-none}" "$SYNCLINE_BIN" "${rendered_args[@]}" <<'PY'
import base64
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml
import kubernetes_validate as kv

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

DEPLOY_DIR, K8S_VERSION, RENDERER, SYNCLINE_BIN = sys.argv[1:5]
RENDERED = dict(arg.split("=", 1) for arg in sys.argv[5:])

errors = 0


def err(where, msg):
    global errors
    errors += 1
    print(f"ERROR {where}: {msg}")


def info(where, msg):
    print(f"ok    {where}: {msg}")


def rel(path):
    return os.path.relpath(path, DEPLOY_DIR)


def load_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        err(rel(path), f"cannot parse YAML: {e}")
        return []


# ---------------------------------------------------------------------------
# syncline.toml is validated by the server (`syncline check-config`), not here.
# The database URLs must NOT be in the file (a ConfigMap is no place for
# credentials): they come from the Secret, as environment variables.
# ---------------------------------------------------------------------------
URL_KEYS = {"database_url": "DATABASE_URL", "listen_database_url": "SYNCLINE_LISTEN_DATABASE_URL"}
# Likewise the HS256 secret: Secret key hs256-secret, env SYNCLINE_AUTH__HS256_SECRET.
SECRET_AUTH_KEYS = {"hs256_secret": "SYNCLINE_AUTH__HS256_SECRET"}
# Env vars that carry credentials: from a Secret (valueFrom), never a literal value.
SECRET_ENV = set(URL_KEYS.values()) | set(SECRET_AUTH_KEYS.values())

# `jwks_file = "..."` (in [auth], or `auth.jwks_file` before any table), with a basic
# or literal string value.
JWKS_FILE_RE = re.compile(
    r"""(?m)^([ \t]*(?:auth[ \t]*\.[ \t]*)?jwks_file[ \t]*=[ \t]*)("(?:[^"\\\n]|\\.)*"|'[^'\n]*')""")


def with_jwks_file(text, new_path):
    """syncline.toml with auth.jwks_file replaced by new_path, or None when the text
    cannot be rewritten safely (checked by parsing both versions: only that value
    may differ)."""
    if tomllib is None:
        return None
    new_text, n = JWKS_FILE_RE.subn(lambda m: m.group(1) + json.dumps(new_path), text)
    try:
        before, after = tomllib.loads(text), tomllib.loads(new_text)
    except Exception:  # noqa: BLE001
        return None
    if n != 1 or not isinstance(after.get("auth"), dict) or after["auth"].get("jwks_file") != new_path:
        return None
    after["auth"]["jwks_file"] = (before.get("auth") or {}).get("jwks_file")
    return new_text if after == before else None


def check_config(where, text, jwks=None):
    """Runs `syncline check-config` on syncline.toml, with no SYNCLINE_*/DATABASE_URL
    variable in the environment (they would override or add keys).

    jwks: None, or (pod path of auth.jwks_file, file content as bytes, where it comes
    from): the content is written to the temp dir and jwks_file is pointed at it."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("SYNCLINE_") and k.upper() != "DATABASE_URL"}
    replacements = []
    note = ""
    with tempfile.TemporaryDirectory(prefix="syncline-check-config.") as tmp:
        path = os.path.join(tmp, "syncline.toml")
        if jwks is not None:
            pod_path, content, origin = jwks
            jwks_path = os.path.join(tmp, "keys", "jwks.json")
            os.makedirs(os.path.dirname(jwks_path))
            with open(jwks_path, "wb") as f:
                f.write(content)
            rewritten = with_jwks_file(text, jwks_path)
            if rewritten is None:
                err(where, "syncline.toml: cannot point auth.jwks_file at the extracted JWKS for "
                    "check-config (write it as `jwks_file = \"...\"` inside the [auth] table)")
                return
            text = rewritten
            replacements.append((jwks_path, pod_path))
            note = f" (auth.jwks_file {pod_path} = {origin})"
        replacements.insert(0, (path, "syncline.toml"))
        with open(path, "w") as f:
            f.write(text)
        try:
            r = subprocess.run([SYNCLINE_BIN, "check-config", "--config", path], env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            err(where, f"syncline.toml: could not run {SYNCLINE_BIN} check-config: {e}")
            return
    out = (r.stdout.strip() + "\n" + r.stderr.strip()).strip()
    for tmp_path, shown in replacements:
        out = out.replace(tmp_path, shown)
    if r.returncode != 0:
        err(where, f"syncline.toml rejected by `syncline check-config`{note} (exit {r.returncode}): {out}")
    else:
        info(where, f"syncline.toml: syncline check-config{note}: {out}")


# ---------------------------------------------------------------------------
# CRDs kubernetes-validate has no schema for: a small schema of the fields we
# may use (unknown fields are rejected, like --strict). Extend it when needed.
# ---------------------------------------------------------------------------
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                           "namespace": {"type": "string"},
                           "labels": STRING_MAP, "annotations": STRING_MAP},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "labelLimit": {"type": "integer", "minimum": 0},
                "labelNameLengthLimit": {"type": "integer", "minimum": 0},
                "labelValueLengthLimit": {"type": "integer", "minimum": 0},
                "keepDroppedTargets": {"type": "integer", "minimum": 0},
                "attachMetadata": {"type": "object"},
                "scrapeClass": {"type": "string"},
                "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                    "properties": {
                        "port": {"type": "string", "minLength": 1},
                        "targetPort": {"type": ["integer", "string"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "params": {"type": "object"},
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "trackTimestampsStaleness": {"type": "boolean"},
                        "followRedirects": {"type": "boolean"},
                        "enableHttp2": {"type": "boolean"},
                        "filterRunning": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": {"type": "object"}},
                        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        "tlsConfig": {"type": "object"},
                        "authorization": {"type": "object"},
                        "basicAuth": {"type": "object"},
                        "oauth2": {"type": "object"},
                        "bearerTokenSecret": {"type": "object"},
                        "proxyUrl": {"type": "string"},
                    },
                }},
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": DURATION},
                            "keep_firing_for": {"type": "string", "pattern": DURATION},
                            "labels": STRING_MAP,
                            "annotations": STRING_MAP,
                        },
                    }},
                },
            }}},
        },
    },
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SCHEMA,
}


def kind_name(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def validate_resource(where, doc):
    """Schema-validate one full resource; returns True when it passed."""
    if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind", "metadata")):
        err(where, "not a Kubernetes resource (apiVersion, kind and metadata are required)")
        return False
    if not (doc.get("metadata") or {}).get("name"):
        err(where, f"{doc['kind']} has no metadata.name")
        return False
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        problems = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(doc),
                          key=lambda e: list(e.path))
        for e in problems:
            err(where, f"{kind_name(doc)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
        if not problems:
            info(where, f"{kind_name(doc)} (CRD {doc['apiVersion']}, built-in minimal schema)")
        return not problems
    try:
        v = kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        err(where, f"{kind_name(doc)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
        return False
    except kv.SchemaNotFoundError as e:
        err(where, f"{kind_name(doc)}: {e.message} (wrong apiVersion/kind, or a CRD this script does not know)")
        return False
    except Exception as e:  # noqa: BLE001 - report anything else as a failure
        err(where, f"{kind_name(doc)}: could not be validated: {e}")
        return False
    info(where, f"{kind_name(doc)} (Kubernetes {v} schema, strict)")
    return True


# ---------------------------------------------------------------------------
# 1. kustomizations: structure, referenced files, reachable resources
# ---------------------------------------------------------------------------
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "metadata", "namespace", "namePrefix", "nameSuffix",
    "resources", "components", "patches", "patchesStrategicMerge", "patchesJson6902",
    "images", "labels", "commonLabels", "commonAnnotations", "configMapGenerator",
    "secretGenerator", "generatorOptions", "replicas", "replacements", "crds",
    "transformers", "generators", "validators", "buildMetadata", "openapi",
    "sortOptions", "helmCharts", "vars",
}

kustomizations = {}  # dir -> parsed kustomization
for dirpath, dirnames, filenames in os.walk(DEPLOY_DIR):
    dirnames.sort()
    for fn in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if fn in filenames:
            docs = load_docs(os.path.join(dirpath, fn))
            if len(docs) != 1 or not isinstance(docs[0], dict):
                err(rel(os.path.join(dirpath, fn)), "must hold exactly one YAML mapping")
                continue
            kustomizations[dirpath] = (os.path.join(dirpath, fn), docs[0])

if not kustomizations:
    err(rel(DEPLOY_DIR), "no kustomization.yaml found")

resource_files = set()   # full resources
patch_files = {}         # patch file -> kustomization dir
referenced = set()       # every file a kustomization names
reachable = {}           # kustomization dir -> list of resource files (recursive)


def resources_of(kdir, seen=()):
    if kdir in reachable:
        return reachable[kdir]
    if kdir in seen or kdir not in kustomizations:
        return []
    out = []
    for entry in kustomizations[kdir][1].get("resources") or []:
        path = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isdir(path):
            out += resources_of(path, seen + (kdir,))
        elif os.path.isfile(path):
            out.append(path)
    reachable[kdir] = out
    return out


for kdir, (kfile, k) in sorted(kustomizations.items()):
    where = rel(kfile)
    referenced.add(kfile)
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        err(where, "apiVersion must be kustomize.config.k8s.io/v1beta1 and kind Kustomization")
    for field in sorted(set(k) - KUSTOMIZATION_FIELDS):
        err(where, f"unknown field {field!r}")
    for entry in k.get("resources") or []:
        path = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isdir(path):
            if path not in kustomizations:
                err(where, f"resource directory {entry} has no kustomization.yaml")
        elif os.path.isfile(path):
            resource_files.add(path)
            referenced.add(path)
        else:
            err(where, f"resource {entry} does not exist")
    patch_entries = [p.get("path") for p in (k.get("patches") or []) if isinstance(p, dict)]
    patch_entries += list(k.get("patchesStrategicMerge") or [])
    patch_entries += [p.get("path") for p in (k.get("patchesJson6902") or []) if isinstance(p, dict)]
    for entry in patch_entries:
        if not entry:
            continue  # inline patch: checked through the rendered output
        path = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isfile(path):
            patch_files[path] = kdir
            referenced.add(path)
        else:
            err(where, f"patch {entry} does not exist")
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in (gen.get("files") or []) + (gen.get("envs") or []):
            src = entry.split("=", 1)[-1]
            path = os.path.normpath(os.path.join(kdir, src))
            referenced.add(path)
            if not os.path.isfile(path):
                err(where, f"generator {gen.get('name')}: file {src} does not exist")

for dirpath, dirnames, filenames in os.walk(DEPLOY_DIR):
    for fn in filenames:
        path = os.path.join(dirpath, fn)
        if fn.endswith((".yaml", ".yml")) and path not in referenced:
            err(rel(path), "not named by any kustomization (add it, or move it out of deploy/)")

# ---------------------------------------------------------------------------
# 2. full resources, file by file
# ---------------------------------------------------------------------------
print(f"== resources (Kubernetes {K8S_VERSION}, strict)")
docs_by_file = {}
for path in sorted(resource_files):
    docs_by_file[path] = load_docs(path)
    if not docs_by_file[path]:
        err(rel(path), "no resource in file")
    for i, doc in enumerate(docs_by_file[path]):
        validate_resource(rel(path) + (f"#{i}" if len(docs_by_file[path]) > 1 else ""), doc)

# ---------------------------------------------------------------------------
# 3. patches (partial resources: not schema-validated on their own)
# ---------------------------------------------------------------------------
print("== patches (partial resources)")
for path, kdir in sorted(patch_files.items()):
    targets = {(d.get("kind"), (d.get("metadata") or {}).get("name"))
               for f in resources_of(kdir) for d in docs_by_file.get(f) or load_docs(f)
               if isinstance(d, dict)}
    docs = load_docs(path)
    if not docs:
        err(rel(path), "empty patch")
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                or not (doc.get("metadata") or {}).get("name"):
            err(rel(path), "a strategic-merge patch needs apiVersion, kind and metadata.name")
        elif (doc["kind"], doc["metadata"]["name"]) not in targets:
            err(rel(path), f"patches {kind_name(doc)}, which no resource of {rel(kdir)} defines")
        else:
            info(rel(path), f"patches {kind_name(doc)}")

# ---------------------------------------------------------------------------
# 4./5. rendered output and cross-reference checks
# ---------------------------------------------------------------------------


def selects(selector, labels):
    sel = selector or {}
    if sel.get("matchExpressions"):
        return None  # not evaluated here
    match = sel.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return spec.get("template") or {}
    if doc.get("kind") == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    return None


def mounted_sources(container, volumes, objects):
    """Files a container sees from ConfigMap/Secret volumes: {absolute path: (kind, name, key)}."""
    files = {}

    def add(mount, source, kind):
        obj = objects.get((kind, source.get("name")))
        items = source.get("items")
        if items:
            pairs = [(it.get("key"), it.get("path")) for it in items]
        elif obj is not None:
            pairs = [(k, k) for k in object_keys(obj)]
        else:
            pairs = []
        for key, p in pairs:
            if p:
                files[os.path.normpath(os.path.join(mount, p))] = (kind, source.get("name"), key)

    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm.get("name")) or {}
        mount = vm.get("mountPath", "")
        if vm.get("subPath"):
            files[os.path.normpath(mount)] = ("subPath", vm.get("name"), vm.get("subPath"))
            continue
        if "configMap" in vol:
            add(mount, vol["configMap"], "ConfigMap")
        if "secret" in vol:
            add(mount, {"name": vol["secret"].get("secretName"), "items": vol["secret"].get("items")}, "Secret")
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "configMap" in src:
                add(mount, src["configMap"], "ConfigMap")
            if "secret" in src:
                add(mount, src["secret"], "Secret")
    return files


def object_keys(obj):
    return (set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())
            | set((obj.get("binaryData") or {}).keys()))


def object_value(obj, key):
    """The bytes of a ConfigMap/Secret key as mounted in a pod, or None."""
    try:
        if key in (obj.get("stringData") or {}):
            return str(obj["stringData"][key]).encode()
        if key in (obj.get("binaryData") or {}):
            return base64.b64decode(obj["binaryData"][key], validate=True)
        if key in (obj.get("data") or {}):
            value = str(obj["data"][key])
            return base64.b64decode(value, validate=True) if obj.get("kind") == "Secret" else value.encode()
    except ValueError:  # binascii.Error: not base64
        return None
    return None


def port_of(address):
    m = re.fullmatch(r".*:(\d+)", address or "")
    return int(m.group(1)) if m else None


def cross_check(label, docs):
    objects = {}
    for d in docs:
        if isinstance(d, dict) and d.get("kind") and (d.get("metadata") or {}).get("name"):
            objects[(d["kind"], d["metadata"]["name"])] = d
    where = lambda d: f"{label}: {kind_name(d)}"  # noqa: E731
    keys_of = object_keys

    # syncline.toml
    config = None
    cm = objects.get(("ConfigMap", "syncline-config"))
    if cm is None:
        err(label, "ConfigMap/syncline-config is missing")
    elif tomllib is None:
        err(label, "cannot parse syncline.toml: needs Python >= 3.11 (tomllib) or the tomli package")
    else:
        try:
            config = tomllib.loads((cm.get("data") or {}).get("syncline.toml", ""))
        except Exception as e:  # noqa: BLE001
            err(where(cm), f"syncline.toml does not parse: {e}")
    if config is not None:
        for key, var in URL_KEYS.items():
            if key in config:
                err(where(cm), f"syncline.toml: {key} must not be in the ConfigMap "
                    f"(set it from the Secret, as the {var} env var)")
        for key, var in SECRET_AUTH_KEYS.items():
            if key in (config.get("auth") if isinstance(config.get("auth"), dict) else {}):
                err(where(cm), f"syncline.toml: auth.{key} must not be in the ConfigMap "
                    f"(set it from the Secret key hs256-secret, as the {var} env var)")
    jwks_file = None
    if config is not None and isinstance(config.get("auth"), dict):
        jwks_file = config["auth"].get("jwks_file")
    # Where each container that loads the config finds auth.jwks_file:
    # [(container label, runs `serve`, (kind, name, key) or None, pod path)].
    jwks_mounts = []

    services = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Service"]
    workloads = [d for d in docs if isinstance(d, dict) and pod_spec(d) is not None]

    for w in workloads:
        tmpl = pod_spec(w)
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        ps = tmpl.get("spec") or {}
        if w["kind"] != "Job" and selects((w.get("spec") or {}).get("selector"), labels) is False:
            err(where(w), "spec.selector does not match the pod template labels")
        sa = ps.get("serviceAccountName")
        if sa and sa != "default" and ("ServiceAccount", sa) not in objects:
            err(where(w), f"ServiceAccount {sa} is not defined")
        volumes = {v.get("name"): v for v in ps.get("volumes") or []}
        for v in volumes.values():
            srcs = [v] + list((v.get("projected") or {}).get("sources") or [])
            for s in srcs:
                if "configMap" in s:
                    ref, kind = s["configMap"], "ConfigMap"
                elif "secret" in s:
                    ref = dict(s["secret"], name=s["secret"].get("secretName", s["secret"].get("name")))
                    kind = "Secret"
                else:
                    continue
                obj = objects.get((kind, ref.get("name")))
                if obj is None:
                    if not ref.get("optional"):
                        err(where(w), f"volume {v.get('name')}: {kind} {ref.get('name')} is not defined")
                    continue
                for it in ref.get("items") or []:
                    if it.get("key") not in keys_of(obj):
                        err(where(w), f"volume {v.get('name')}: {kind} {ref.get('name')} has no key {it.get('key')!r}")
        for c in ps.get("containers") or []:
            cw = f"{where(w)} container {c.get('name')}"
            for vm in c.get("volumeMounts") or []:
                if vm.get("name") not in volumes:
                    err(cw, f"volumeMount {vm.get('name')} has no volume")
            for e in c.get("env") or []:
                if e.get("name") in SECRET_ENV and "value" in e:
                    err(cw, f"env {e.get('name')}: a credential as a literal value: use valueFrom.secretKeyRef")
                vf = e.get("valueFrom") or {}
                for kind, refkey in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    ref = vf.get(refkey)
                    if not ref:
                        continue
                    obj = objects.get((kind, ref.get("name")))
                    if ref.get("optional"):
                        continue
                    if obj is None:
                        err(cw, f"env {e.get('name')}: {kind} {ref.get('name')} is not defined")
                    elif ref.get("key") not in keys_of(obj):
                        err(cw, f"env {e.get('name')}: {kind} {ref.get('name')} has no key {ref.get('key')!r}")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name) or {}
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        port = probe[handler].get("port")
                        if port not in ports.values() and port not in ports:
                            err(cw, f"{probe_name}.{handler}.port {port} is not a container port")
            files = mounted_sources(c, volumes, objects)
            args = list(c.get("command") or []) + list(c.get("args") or [])
            for i, a in enumerate(args[:-1]):
                if a == "--config" and os.path.normpath(args[i + 1]) not in files:
                    err(cw, f"--config {args[i + 1]} is not mounted")
                if a == "--config" and isinstance(jwks_file, str) and jwks_file:
                    # Relative paths start at the config file's folder (as in the server).
                    pod_path = os.path.normpath(os.path.join(os.path.dirname(args[i + 1]), jwks_file))
                    source = files.get(pod_path)
                    if source is None:
                        shown = jwks_file if pod_path == os.path.normpath(jwks_file) else f"{jwks_file} ({pod_path})"
                        err(cw, f"auth.jwks_file {shown} is not mounted")
                    elif source[0] == "subPath":
                        err(cw, f"auth.jwks_file {pod_path} is a subPath mount, which never receives "
                            "ConfigMap updates (keys would not rotate): mount the volume as a directory")
                    jwks_mounts.append((cw, "serve" in args, source, pod_path))
            if config is not None and any(a == "--config" for a in args):
                if "serve" in args:
                    for key, pname in (("listen", "grpc"), ("metrics_listen", "metrics")):
                        if key not in config:
                            err(cw, f"syncline.toml: set {key} explicitly, so that its port can be "
                                f"checked against container port {pname}")
                        elif port_of(config.get(key)) != ports.get(pname):
                            err(cw, f"syncline.toml {key} port {port_of(config.get(key))} != container port {pname} {ports.get(pname)}")
                    drain = config.get("drain_seconds") or 0
                    pre = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds") or 0)
                    grace = ps.get("terminationGracePeriodSeconds", 30)
                    if grace <= drain + pre:
                        err(cw, f"terminationGracePeriodSeconds {grace} <= preStop {pre}s + drain_seconds {drain}")

    # The JWKS every config-loading container mounts must be the same; check-config
    # gets the one of the server (`serve`), else of any other such container.
    if len({src for _, _, src, _ in jwks_mounts if src is not None}) > 1:
        err(label, "auth.jwks_file comes from different sources in different containers: "
            + "; ".join(f"{cw}: {src[0]}/{src[1]} key {src[2]}" for cw, _, src, _ in jwks_mounts if src))
    jwks = None
    for cw, _, src, pod_path in sorted(jwks_mounts, key=lambda m: not m[1]):
        obj = objects.get(src[:2]) if src and src[0] in ("ConfigMap", "Secret") else None
        content = object_value(obj, src[2]) if obj is not None else None
        if content is not None:
            jwks = (pod_path, content, f"{src[0]}/{src[1]} key {src[2]}")
            break
    if isinstance(jwks_file, str) and jwks_file and jwks is None:
        err(label, f"auth.jwks_file {jwks_file}: no container mounts it from a ConfigMap/Secret "
            "defined here, so check-config cannot see it")
    if cm is not None:
        check_config(where(cm), (cm.get("data") or {}).get("syncline.toml", ""), jwks)

    for s in services:
        sel = (s.get("spec") or {}).get("selector") or {}
        targets = [w for w in workloads
                   if sel and all(((pod_spec(w).get("metadata") or {}).get("labels") or {}).get(k) == v
                                  for k, v in sel.items())]
        if not targets:
            err(where(s), "selector matches no pod template")
            continue
        for w in targets:
            cports = [p for c in (pod_spec(w).get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            for p in (s.get("spec") or {}).get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                if not any(tp in (cp.get("name"), cp.get("containerPort")) for cp in cports):
                    err(where(s), f"port {p.get('name')}: targetPort {tp} is not a port of {kind_name(w)}")

    for d in docs:
        if not isinstance(d, dict):
            continue
        spec = d.get("spec") or {}
        if d.get("kind") == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            target = objects.get((ref.get("kind"), ref.get("name")))
            if target is None:
                err(where(d), f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not defined")
            elif (target.get("spec") or {}).get("replicas", 1) != spec.get("minReplicas", 1):
                err(where(d), f"minReplicas {spec.get('minReplicas', 1)} != {kind_name(target)} replicas "
                    f"{(target.get('spec') or {}).get('replicas', 1)} (each apply would fight the autoscaler)")
            if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
                err(where(d), "minReplicas > maxReplicas")
        elif d.get("kind") == "PodDisruptionBudget":
            matched = [w for w in workloads if w["kind"] != "Job"
                       and selects(spec.get("selector"), (pod_spec(w).get("metadata") or {}).get("labels") or {})]
            if not matched:
                err(where(d), "selector matches no Deployment/StatefulSet pods")
            for w in matched:
                if isinstance(spec.get("minAvailable"), int) and \
                        spec["minAvailable"] >= (w.get("spec") or {}).get("replicas", 1):
                    err(where(d), f"minAvailable {spec['minAvailable']} >= replicas of {kind_name(w)}: no node could ever be drained")
        elif d.get("kind") == "ServiceMonitor":
            for ep in spec.get("endpoints") or []:
                if "port" in ep and not any(
                        selects(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})
                        and any(p.get("name") == ep["port"] for p in (s.get("spec") or {}).get("ports") or [])
                        for s in services):
                    err(where(d), f"no selected Service has a port named {ep['port']!r}")


if RENDERED:
    for kdir_rel, out in sorted(RENDERED.items()):
        print(f"== rendered: {kdir_rel} ({RENDERER})")
        docs = load_docs(out)
        before = errors
        for doc in docs:
            validate_resource(f"{kdir_rel} (rendered)", doc)
        cross_check(f"{kdir_rel} (rendered)", docs)
        if errors == before:
            info(kdir_rel, f"{len(docs)} rendered resources valid, cross-references consistent")
else:
    print("== cross-references (no kustomize renderer: unpatched resources)")
    for kdir in sorted(kustomizations):
        before = errors
        cross_check(rel(kdir), [d for f in resources_of(kdir) for d in docs_by_file.get(f) or []])
        if errors == before:
            info(rel(kdir), "cross-references consistent")

print()
if errors:
    print(f"FAILED: {errors} error(s) in {DEPLOY_DIR}")
    sys.exit(1)
print(f"PASSED: {len(resource_files)} resource files, {len(patch_files)} patch files, "
      f"{len(RENDERED)} rendered kustomizations (Kubernetes {K8S_VERSION}, strict)")
PY
rc=$?
set -e
if (( render_failed )); then
  echo "FAILED: a kustomization did not render" >&2
  exit 1
fi
exit "$rc"
