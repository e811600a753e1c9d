"""Offline checks of the Kubernetes manifests under deploy/ (see scripts/validate-deploy.sh).

    python -m deploy_check.manifests DEPLOY_DIR --syncline-bin BIN [--k8s-version V] [--renderer R]

Exits 0 when every check passes, 1 otherwise; prints one line per check (`ok` / `ERROR`).
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml
import kubernetes_validate as kv

from deploy_check.monitoring import TESTS_DIR, dashboard_problems

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


# ---------------------------------------------------------------------------
# syncline.toml is validated by the server (`syncline check-config`), not here.
# The database URLs must NOT be in the file (a ConfigMap is no place for
# credentials): they come from the Secret, as environment variables.
# ---------------------------------------------------------------------------
URL_KEYS = {"database_url": "DATABASE_URL", "listen_database_url": "SYNCLINE_LISTEN_DATABASE_URL"}
# Likewise the HS256 secret: Secret key hs256-secret, env SYNCLINE_AUTH__HS256_SECRET.
SECRET_AUTH_KEYS = {"hs256_secret": "SYNCLINE_AUTH__HS256_SECRET"}
# Env vars that carry credentials: from a Secret (valueFrom), never a literal value (the
# object storage's too: [attachments] store = "s3").
SECRET_ENV = (
    set(URL_KEYS.values())
    | set(SECRET_AUTH_KEYS.values())
    | {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
)

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


# ---------------------------------------------------------------------------
# 1. kustomizations: structure, referenced files, reachable resources
# ---------------------------------------------------------------------------
# Components (kind Component) are checked like kustomizations but rendered only inside
# the kustomizations that use them.
KUSTOMIZATION_KINDS = {("kustomize.config.k8s.io/v1beta1", "Kustomization"),
                       ("kustomize.config.k8s.io/v1alpha1", "Component")}
# The label by which Grafana's dashboard sidecar finds dashboard ConfigMaps.
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "metadata", "namespace", "namePrefix", "nameSuffix",
    "resources", "components", "patches", "patchesStrategicMerge", "patchesJson6902",
    "images", "labels", "commonLabels", "commonAnnotations", "configMapGenerator",
    "secretGenerator", "generatorOptions", "replicas", "replacements", "crds",
    "transformers", "generators", "validators", "buildMetadata", "openapi",
    "sortOptions", "helmCharts", "vars",
}


# ---------------------------------------------------------------------------
# 4./5. helpers of the cross-reference checks (Validator.cross_check)
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


class Validator:
    """One run of the manifest checks over a deploy/ directory; counts the errors it prints."""

    def __init__(self, deploy_dir, k8s_version, syncline_bin, renderer=None, out=print):
        self.deploy_dir = os.path.abspath(deploy_dir)
        self.k8s_version = k8s_version
        self.syncline_bin = syncline_bin
        # A command that renders a kustomization directory (["kustomize", "build"]), or None.
        self.renderer = renderer
        self.out = out
        self.errors = 0
        self.messages = []

    def err(self, where, msg):
        self.errors += 1
        self.messages.append(("ERROR", where, msg))
        self.out(f"ERROR {where}: {msg}")

    def info(self, where, msg):
        self.messages.append(("ok", where, msg))
        self.out(f"ok    {where}: {msg}")

    def rel(self, path):
        return os.path.relpath(path, self.deploy_dir)

    def load_docs(self, path):
        try:
            with open(path) as f:
                return [d for d in yaml.safe_load_all(f) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            self.err(self.rel(path), f"cannot parse YAML: {e}")
            return []


    def check_config(self, where, text, jwks=None):
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
                    self.err(where, "syncline.toml: cannot point auth.jwks_file at the extracted JWKS for "
                        "check-config (write it as `jwks_file = \"...\"` inside the [auth] table)")
                    return
                text = rewritten
                replacements.append((jwks_path, pod_path))
                note = f" (auth.jwks_file {pod_path} = {origin})"
            replacements.insert(0, (path, "syncline.toml"))
            with open(path, "w") as f:
                f.write(text)
            try:
                r = subprocess.run([self.syncline_bin, "check-config", "--config", path], env=env,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.err(where, f"syncline.toml: could not run {self.syncline_bin} check-config: {e}")
                return
        out = (r.stdout.strip() + "\n" + r.stderr.strip()).strip()
        for tmp_path, shown in replacements:
            out = out.replace(tmp_path, shown)
        if r.returncode != 0:
            self.err(where, f"syncline.toml rejected by `syncline check-config`{note} (exit {r.returncode}): {out}")
        else:
            self.info(where, f"syncline.toml: syncline check-config{note}: {out}")


    def validate_resource(self, where, doc):
        """2. Schema-validate one full resource; returns True when it passed."""
        if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind", "metadata")):
            self.err(where, "not a Kubernetes resource (apiVersion, kind and metadata are required)")
            return False
        if not (doc.get("metadata") or {}).get("name"):
            self.err(where, f"{doc['kind']} has no metadata.name")
            return False
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            problems = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(doc),
                              key=lambda e: list(e.path))
            for e in problems:
                self.err(where, f"{kind_name(doc)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
            if not problems:
                self.info(where, f"{kind_name(doc)} (CRD {doc['apiVersion']}, built-in minimal schema)")
            return not problems
        try:
            v = kv.validate(doc, self.k8s_version, strict=True)
        except kv.ValidationError as e:
            self.err(where, f"{kind_name(doc)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
            return False
        except kv.SchemaNotFoundError as e:
            self.err(where, f"{kind_name(doc)}: {e.message} (wrong apiVersion/kind, or a CRD this script does not know)")
            return False
        except Exception as e:  # noqa: BLE001 - report anything else as a failure
            self.err(where, f"{kind_name(doc)}: could not be validated: {e}")
            return False
        self.info(where, f"{kind_name(doc)} (Kubernetes {v} schema, strict)")
        return True


    def cross_check(self, label, docs):
        """5. cross-references schemas cannot see, over one kustomization's resources."""
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
            self.err(label, "ConfigMap/syncline-config is missing")
        elif tomllib is None:
            self.err(label, "cannot parse syncline.toml: needs Python >= 3.11 (tomllib) or the tomli package")
        else:
            try:
                config = tomllib.loads((cm.get("data") or {}).get("syncline.toml", ""))
            except Exception as e:  # noqa: BLE001
                self.err(where(cm), f"syncline.toml does not parse: {e}")
        if config is not None:
            for key, var in URL_KEYS.items():
                if key in config:
                    self.err(where(cm), f"syncline.toml: {key} must not be in the ConfigMap "
                        f"(set it from the Secret, as the {var} env var)")
            for key, var in SECRET_AUTH_KEYS.items():
                if key in (config.get("auth") if isinstance(config.get("auth"), dict) else {}):
                    self.err(where(cm), f"syncline.toml: auth.{key} must not be in the ConfigMap "
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
                self.err(where(w), "spec.selector does not match the pod template labels")
            sa = ps.get("serviceAccountName")
            if sa and sa != "default" and ("ServiceAccount", sa) not in objects:
                self.err(where(w), f"ServiceAccount {sa} is not defined")
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
                            self.err(where(w), f"volume {v.get('name')}: {kind} {ref.get('name')} is not defined")
                        continue
                    for it in ref.get("items") or []:
                        if it.get("key") not in keys_of(obj):
                            self.err(where(w), f"volume {v.get('name')}: {kind} {ref.get('name')} has no key {it.get('key')!r}")
            for c in ps.get("containers") or []:
                cw = f"{where(w)} container {c.get('name')}"
                for vm in c.get("volumeMounts") or []:
                    if vm.get("name") not in volumes:
                        self.err(cw, f"volumeMount {vm.get('name')} has no volume")
                for e in c.get("env") or []:
                    if e.get("name") in SECRET_ENV and "value" in e:
                        self.err(cw, f"env {e.get('name')}: a credential as a literal value: use valueFrom.secretKeyRef")
                    vf = e.get("valueFrom") or {}
                    for kind, refkey in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                        ref = vf.get(refkey)
                        if not ref:
                            continue
                        obj = objects.get((kind, ref.get("name")))
                        if ref.get("optional"):
                            continue
                        if obj is None:
                            self.err(cw, f"env {e.get('name')}: {kind} {ref.get('name')} is not defined")
                        elif ref.get("key") not in keys_of(obj):
                            self.err(cw, f"env {e.get('name')}: {kind} {ref.get('name')} has no key {ref.get('key')!r}")
                ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
                for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = c.get(probe_name) or {}
                    for handler in ("grpc", "httpGet", "tcpSocket"):
                        if handler in probe:
                            port = probe[handler].get("port")
                            if port not in ports.values() and port not in ports:
                                self.err(cw, f"{probe_name}.{handler}.port {port} is not a container port")
                files = mounted_sources(c, volumes, objects)
                args = list(c.get("command") or []) + list(c.get("args") or [])
                for i, a in enumerate(args[:-1]):
                    if a == "--config" and os.path.normpath(args[i + 1]) not in files:
                        self.err(cw, f"--config {args[i + 1]} is not mounted")
                    if a == "--config" and isinstance(jwks_file, str) and jwks_file:
                        # Relative paths start at the config file's folder (as in the server).
                        pod_path = os.path.normpath(os.path.join(os.path.dirname(args[i + 1]), jwks_file))
                        source = files.get(pod_path)
                        if source is None:
                            shown = jwks_file if pod_path == os.path.normpath(jwks_file) else f"{jwks_file} ({pod_path})"
                            self.err(cw, f"auth.jwks_file {shown} is not mounted")
                        elif source[0] == "subPath":
                            self.err(cw, f"auth.jwks_file {pod_path} is a subPath mount, which never receives "
                                "ConfigMap updates (keys would not rotate): mount the volume as a directory")
                        jwks_mounts.append((cw, "serve" in args, source, pod_path))
                if config is not None and any(a == "--config" for a in args):
                    if "serve" in args:
                        for key, pname in (("listen", "grpc"), ("metrics_listen", "metrics")):
                            if key not in config:
                                self.err(cw, f"syncline.toml: set {key} explicitly, so that its port can be "
                                    f"checked against container port {pname}")
                            elif port_of(config.get(key)) != ports.get(pname):
                                self.err(cw, f"syncline.toml {key} port {port_of(config.get(key))} != container port {pname} {ports.get(pname)}")
                        drain = config.get("drain_seconds") or 0
                        pre = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds") or 0)
                        grace = ps.get("terminationGracePeriodSeconds", 30)
                        if grace <= drain + pre:
                            self.err(cw, f"terminationGracePeriodSeconds {grace} <= preStop {pre}s + drain_seconds {drain}")

        # The JWKS every config-loading container mounts must be the same; check-config
        # gets the one of the server (`serve`), else of any other such container.
        if len({src for _, _, src, _ in jwks_mounts if src is not None}) > 1:
            self.err(label, "auth.jwks_file comes from different sources in different containers: "
                + "; ".join(f"{cw}: {src[0]}/{src[1]} key {src[2]}" for cw, _, src, _ in jwks_mounts if src))
        jwks = None
        for cw, _, src, pod_path in sorted(jwks_mounts, key=lambda m: not m[1]):
            obj = objects.get(src[:2]) if src and src[0] in ("ConfigMap", "Secret") else None
            content = object_value(obj, src[2]) if obj is not None else None
            if content is not None:
                jwks = (pod_path, content, f"{src[0]}/{src[1]} key {src[2]}")
                break
        if isinstance(jwks_file, str) and jwks_file and jwks is None:
            self.err(label, f"auth.jwks_file {jwks_file}: no container mounts it from a ConfigMap/Secret "
                "defined here, so check-config cannot see it")
        if cm is not None:
            self.check_config(where(cm), (cm.get("data") or {}).get("syncline.toml", ""), jwks)

        for s in services:
            sel = (s.get("spec") or {}).get("selector") or {}
            targets = [w for w in workloads
                       if sel and all(((pod_spec(w).get("metadata") or {}).get("labels") or {}).get(k) == v
                                      for k, v in sel.items())]
            if not targets:
                self.err(where(s), "selector matches no pod template")
                continue
            for w in targets:
                cports = [p for c in (pod_spec(w).get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
                for p in (s.get("spec") or {}).get("ports") or []:
                    tp = p.get("targetPort", p.get("port"))
                    if not any(tp in (cp.get("name"), cp.get("containerPort")) for cp in cports):
                        self.err(where(s), f"port {p.get('name')}: targetPort {tp} is not a port of {kind_name(w)}")

        for d in docs:
            if not isinstance(d, dict):
                continue
            spec = d.get("spec") or {}
            if d.get("kind") == "HorizontalPodAutoscaler":
                ref = spec.get("scaleTargetRef") or {}
                target = objects.get((ref.get("kind"), ref.get("name")))
                if target is None:
                    self.err(where(d), f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not defined")
                elif (target.get("spec") or {}).get("replicas", 1) != spec.get("minReplicas", 1):
                    self.err(where(d), f"minReplicas {spec.get('minReplicas', 1)} != {kind_name(target)} replicas "
                        f"{(target.get('spec') or {}).get('replicas', 1)} (each apply would fight the autoscaler)")
                if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
                    self.err(where(d), "minReplicas > maxReplicas")
            elif d.get("kind") == "PodDisruptionBudget":
                matched = [w for w in workloads if w["kind"] != "Job"
                           and selects(spec.get("selector"), (pod_spec(w).get("metadata") or {}).get("labels") or {})]
                if not matched:
                    self.err(where(d), "selector matches no Deployment/StatefulSet pods")
                for w in matched:
                    if isinstance(spec.get("minAvailable"), int) and \
                            isinstance((w.get("spec") or {}).get("replicas", 1), int) and \
                            spec["minAvailable"] >= (w.get("spec") or {}).get("replicas", 1):
                        self.err(where(d), f"minAvailable {spec['minAvailable']} >= replicas of {kind_name(w)}: no node could ever be drained")
            elif d.get("kind") == "ConfigMap" and \
                    ((d.get("metadata") or {}).get("labels") or {}).get(GRAFANA_DASHBOARD_LABEL):
                # The Grafana sidecar loads every data value as a dashboard.
                for key, value in (d.get("data") or {}).items():
                    try:
                        problems = dashboard_problems(json.loads(value))
                    except ValueError as e:
                        problems = [f"not valid JSON: {e}"]
                    for p in problems:
                        self.err(where(d), f"dashboard {key}: {p}")
            elif d.get("kind") == "ServiceMonitor":
                for ep in spec.get("endpoints") or []:
                    if "port" in ep and not any(
                            selects(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})
                            and any(p.get("name") == ep["port"] for p in (s.get("spec") or {}).get("ports") or [])
                            for s in services):
                        self.err(where(d), f"no selected Service has a port named {ep['port']!r}")


    def resources_of(self, kdir, seen=()):
        """The resource files a kustomization reaches (directories followed recursively)."""
        if kdir in self.reachable:
            return self.reachable[kdir]
        if kdir in seen or kdir not in self.kustomizations:
            return []
        out = []
        for entry in self.kustomizations[kdir][1].get("resources") or []:
            path = os.path.normpath(os.path.join(kdir, entry))
            if os.path.isdir(path):
                out += self.resources_of(path, seen + (kdir,))
            elif os.path.isfile(path):
                out.append(path)
        self.reachable[kdir] = out
        return out

    def check_kustomizations(self):
        """1. kustomizations: structure, referenced files, reachable resources."""
        self.kustomizations = {}  # dir -> (file, parsed kustomization)
        self.resource_files = set()   # full resources
        self.patch_files = {}         # patch file -> kustomization dir
        self.referenced = set()       # every file a kustomization names
        self.reachable = {}           # kustomization dir -> list of resource files (recursive)
        for dirpath, dirnames, filenames in os.walk(self.deploy_dir):
            dirnames.sort()
            for fn in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
                if fn in filenames:
                    docs = self.load_docs(os.path.join(dirpath, fn))
                    if len(docs) != 1 or not isinstance(docs[0], dict):
                        self.err(self.rel(os.path.join(dirpath, fn)), "must hold exactly one YAML mapping")
                        continue
                    self.kustomizations[dirpath] = (os.path.join(dirpath, fn), docs[0])
        if not self.kustomizations:
            self.err(self.rel(self.deploy_dir), "no kustomization.yaml found")

        for kdir, (kfile, k) in sorted(self.kustomizations.items()):
            where = self.rel(kfile)
            self.referenced.add(kfile)
            if (k.get("apiVersion"), k.get("kind")) not in KUSTOMIZATION_KINDS:
                self.err(where, "apiVersion must be kustomize.config.k8s.io/v1beta1 and kind Kustomization "
                         "(or v1alpha1 and Component)")
            for entry in k.get("components") or []:
                path = os.path.normpath(os.path.join(kdir, entry))
                if (self.kustomizations.get(path) or (None, {}))[1].get("kind") != "Component":
                    self.err(where, f"component {entry} is not a directory with a kind: Component kustomization")
            for field in sorted(set(k) - KUSTOMIZATION_FIELDS):
                self.err(where, f"unknown field {field!r}")
            for entry in k.get("resources") or []:
                path = os.path.normpath(os.path.join(kdir, entry))
                if os.path.isdir(path):
                    if path not in self.kustomizations:
                        self.err(where, f"resource directory {entry} has no kustomization.yaml")
                elif os.path.isfile(path):
                    self.resource_files.add(path)
                    self.referenced.add(path)
                else:
                    self.err(where, f"resource {entry} does not exist")
            patch_entries = [p.get("path") for p in (k.get("patches") or []) if isinstance(p, dict)]
            patch_entries += list(k.get("patchesStrategicMerge") or [])
            patch_entries += [p.get("path") for p in (k.get("patchesJson6902") or []) if isinstance(p, dict)]
            for entry in patch_entries:
                if not entry:
                    continue  # inline patch: checked through the rendered output
                path = os.path.normpath(os.path.join(kdir, entry))
                if os.path.isfile(path):
                    self.patch_files[path] = kdir
                    self.referenced.add(path)
                else:
                    self.err(where, f"patch {entry} does not exist")
            for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
                for entry in (gen.get("files") or []) + (gen.get("envs") or []):
                    src = entry.split("=", 1)[-1]
                    path = os.path.normpath(os.path.join(kdir, src))
                    self.referenced.add(path)
                    if not os.path.isfile(path):
                        self.err(where, f"generator {gen.get('name')}: file {src} does not exist")

        for dirpath, dirnames, filenames in os.walk(self.deploy_dir):
            if os.path.normpath(dirpath) == os.path.join(self.deploy_dir, TESTS_DIR):
                dirnames[:] = []  # promtool test files, not manifests
                continue
            for fn in filenames:
                path = os.path.join(dirpath, fn)
                if fn.endswith((".yaml", ".yml")) and path not in self.referenced:
                    self.err(self.rel(path), "not named by any kustomization (add it, or move it out of deploy/)")

    def check_resources(self):
        """2. full resources, file by file."""
        self.out(f"== resources (Kubernetes {self.k8s_version}, strict)")
        self.docs_by_file = {}
        for path in sorted(self.resource_files):
            docs = self.docs_by_file[path] = self.load_docs(path)
            if not docs:
                self.err(self.rel(path), "no resource in file")
            for i, doc in enumerate(docs):
                self.validate_resource(self.rel(path) + (f"#{i}" if len(docs) > 1 else ""), doc)

    def check_patches(self):
        """3. patches (partial resources: not schema-validated on their own)."""
        self.out("== patches (partial resources)")
        for path, kdir in sorted(self.patch_files.items()):
            targets = {(d.get("kind"), (d.get("metadata") or {}).get("name"))
                       for f in self.resources_of(kdir) for d in self.docs_by_file.get(f) or self.load_docs(f)
                       if isinstance(d, dict)}
            docs = self.load_docs(path)
            if not docs:
                self.err(self.rel(path), "empty patch")
            for doc in docs:
                if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                        or not (doc.get("metadata") or {}).get("name"):
                    self.err(self.rel(path), "a strategic-merge patch needs apiVersion, kind and metadata.name")
                elif (doc["kind"], doc["metadata"]["name"]) not in targets:
                    self.err(self.rel(path), f"patches {kind_name(doc)}, which no resource of {self.rel(kdir)} defines")
                else:
                    self.info(self.rel(path), f"patches {kind_name(doc)}")

    def render(self, kdir):
        """The rendered resources of one kustomization, or None (error reported) when the
        renderer fails."""
        r = subprocess.run(list(self.renderer) + [kdir], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            self.err(self.rel(kdir), f"'{' '.join(self.renderer)}' failed:\n    "
                     + r.stderr.strip().replace("\n", "\n    "))
            return None
        try:
            return [d for d in yaml.safe_load_all(r.stdout) if d is not None]
        except yaml.YAMLError as e:
            self.err(self.rel(kdir), f"rendered output does not parse: {e}")
            return None

    def check_rendered(self):
        """4./5. rendered output (when a renderer is available) and cross-references."""
        self.rendered = 0
        if self.renderer:
            for kdir in sorted(self.kustomizations):
                if self.kustomizations[kdir][1].get("kind") == "Component":
                    continue  # rendered as part of the kustomizations that use it
                label = self.rel(kdir)
                self.out(f"== rendered: {label} ({' '.join(self.renderer)})")
                docs = self.render(kdir)
                if docs is None:
                    continue
                self.rendered += 1
                before = self.errors
                for doc in docs:
                    self.validate_resource(f"{label} (rendered)", doc)
                self.cross_check(f"{label} (rendered)", docs)
                if self.errors == before:
                    self.info(label, f"{len(docs)} rendered resources valid, cross-references consistent")
        else:
            self.out("== cross-references (no kustomize renderer: unpatched resources)")
            for kdir in sorted(self.kustomizations):
                if self.kustomizations[kdir][1].get("kind") == "Component":
                    continue
                before = self.errors
                self.cross_check(self.rel(kdir), [d for f in self.resources_of(kdir)
                                                  for d in self.docs_by_file.get(f) or []])
                if self.errors == before:
                    self.info(self.rel(kdir), "cross-references consistent")

    def run(self):
        """Runs every check; returns the number of errors."""
        self.check_kustomizations()
        self.check_resources()
        self.check_patches()
        self.check_rendered()
        self.out("")
        if self.errors:
            self.out(f"FAILED: {self.errors} error(s) in {self.deploy_dir}")
        else:
            self.out(f"PASSED: {len(self.resource_files)} resource files, {len(self.patch_files)} patch files, "
                     f"{self.rendered} rendered kustomizations (Kubernetes {self.k8s_version}, strict)")
        return self.errors


def find_renderer():
    """`kustomize build`, else `kubectl kustomize`, else None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", "--help"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        if r.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Offline checks of the Kubernetes manifests under deploy/.")
    parser.add_argument("deploy_dir")
    parser.add_argument("--syncline-bin", required=True, help="server binary for `check-config`")
    parser.add_argument("--k8s-version", default="1.32.0")
    parser.add_argument("--renderer", default="auto",
                        help="'auto' (kustomize, else kubectl kustomize), 'none', or a command")
    args = parser.parse_args(argv)
    if args.renderer == "auto":
        renderer = find_renderer()
    elif args.renderer == "none":
        renderer = None
    else:
        renderer = args.renderer.split()
    errors = Validator(args.deploy_dir, args.k8s_version, args.syncline_bin, renderer).run()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
