"""Checks of the monitoring files under deploy/: the PrometheusRule's groups as a plain rule
file (for `promtool check rules` / `promtool test rules`), the Grafana dashboard's shape, and
that every metric a panel or an alert queries is one the server exports.

    python -m deploy_check.monitoring rules DEPLOY_DIR OUT_DIR
        writes OUT_DIR/syncline-rules.yaml and copies DEPLOY_DIR/tests/*.yaml next to it
    python -m deploy_check.monitoring dashboard DEPLOY_DIR
    python -m deploy_check.monitoring names DEPLOY_DIR METRICS_FILE
        METRICS_FILE: /metrics of a running server (Prometheus text format)

Each exits 0 when its check passes, 1 otherwise.
"""

import glob
import json
import os
import re
import shutil
import sys

import yaml

RULE_FILE = os.path.join("base", "prometheusrule.yaml")
DASHBOARD_FILE = os.path.join("grafana", "syncline.json")
RULES_OUT = "syncline-rules.yaml"
TESTS_DIR = "tests"

# PromQL words that look like metric names but are not.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def extract_rules(path):
    """{"groups": [...]} of the PrometheusRule in path: a plain Prometheus rule file."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    rules = [d for d in docs if isinstance(d, dict) and d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise ValueError(f"{path}: expected one PrometheusRule, found {len(rules)}")
    groups = (rules[0].get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{path}: PrometheusRule has no spec.groups")
    return {"groups": groups}


def metric_names(expr):
    """The metric names a PromQL expression selects (by name or as __name__="...")."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)         # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)        # Grafana variables
    for m in _IDENT.finditer(text):
        word = m.group(0)
        before = text[:m.start()]
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # part of a number such as 1e3 or 0.5
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", text[m.end():]):
            continue  # a keyword, or a function call
        names.add(word)
    return names


def _label_values_metric(query):
    """The metric of a Grafana `label_values(metric, label)` variable query, if any."""
    m = re.fullmatch(r"\s*label_values\s*\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query or "")
    return m.group(1) if m else None


def rule_exprs(rules):
    """[(where, expr)] of every rule in a rule file's {"groups": ...}."""
    out = []
    for group in rules.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            out.append((f"rule {name}", str(rule.get("expr", ""))))
    return out


def dashboard_panels(dashboard):
    """Every panel, the ones inside collapsed rows included."""
    out = []
    for panel in dashboard.get("panels") or []:
        out.append(panel)
        if isinstance(panel, dict):
            out += [p for p in panel.get("panels") or []]
    return out


def dashboard_exprs(dashboard):
    """[(where, expr)] of every panel target and templating query of a dashboard."""
    out = []
    for panel in dashboard_panels(dashboard):
        if not isinstance(panel, dict):
            continue
        for target in panel.get("targets") or []:
            if isinstance(target, dict) and target.get("expr"):
                out.append((f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        metric = _label_values_metric(query)
        out.append((f"variable {var.get('name')}", metric if metric is not None else str(query or "")))
    return out


def dashboard_problems(dashboard):
    """What is wrong with a Grafana dashboard's shape (empty when nothing)."""
    if not isinstance(dashboard, dict):
        return ["the dashboard is not a JSON object"]
    problems = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard[key]:
            problems.append(f"{key} must be a non-empty string")
    if isinstance(dashboard.get("uid"), str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        problems.append(f"uid {dashboard['uid']!r}: at most 40 letters, digits, '-' or '_'")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append("schemaVersion must be an integer")
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        return problems + ["panels must be a non-empty list"]
    ids = set()
    graphs = 0
    for panel in dashboard_panels(dashboard):
        if not isinstance(panel, dict):
            problems.append("a panel is not a JSON object")
            continue
        where = f"panel {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int):
            problems.append(f"{where}: id must be an integer")
        elif panel["id"] in ids:
            problems.append(f"{where}: id {panel['id']} is used twice")
        else:
            ids.add(panel["id"])
        if not panel.get("title") or not panel.get("type"):
            problems.append(f"{where}: needs a title and a type")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: gridPos needs integers h, w, x, y")
        if panel.get("type") == "row":
            continue
        graphs += 1
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no targets")
            continue
        for target in targets:
            if not isinstance(target, dict) or not str(target.get("expr") or "").strip():
                problems.append(f"{where}: a target without an expr")
            elif not target.get("refId"):
                problems.append(f"{where}: a target without a refId")
    if not graphs:
        problems.append("no panel other than rows")
    variables = {v.get("name") for v in (dashboard.get("templating") or {}).get("list") or []
                 if isinstance(v, dict)}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard)))
    for name in sorted(used - variables):
        if not name.startswith("__"):  # Grafana's own, such as $__rate_interval
            problems.append(f"variable ${name} is used but not defined in templating.list")
    return problems


def exposed_names(metrics_text):
    """Sample names (histogram _bucket/_sum/_count included) in Prometheus text format."""
    names = set()
    for line in metrics_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            m = _IDENT.match(line)
            if m:
                names.add(m.group(0))
    return names


def unknown_metrics(exprs, exposed):
    """[(where, name)] of every metric name an expression uses that /metrics does not have."""
    return [(where, name) for where, expr in exprs for name in sorted(metric_names(expr))
            if name not in exposed]


def load_dashboard(path):
    with open(path) as f:
        return json.load(f)


def _cmd_rules(deploy_dir, out_dir):
    rules = extract_rules(os.path.join(deploy_dir, RULE_FILE))
    with open(os.path.join(out_dir, RULES_OUT), "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    tests = sorted(glob.glob(os.path.join(deploy_dir, TESTS_DIR, "*.yaml")))
    if not tests:
        print(f"ERROR {TESTS_DIR}/: no promtool test file")
        return 1
    for t in tests:
        shutil.copy(t, out_dir)
    alerts = {r.get("alert") for g in rules["groups"] for r in g.get("rules") or [] if r.get("alert")}
    fires, quiet = set(), set()
    for t in tests:
        with open(t) as f:
            for case in (yaml.safe_load(f) or {}).get("tests") or []:
                for a in case.get("alert_rule_test") or []:
                    (fires if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    problems = [f"alert {a} has no promtool test in which it fires" for a in sorted(alerts - fires)]
    problems += [f"alert {a} has no promtool test in which it stays quiet" for a in sorted(alerts - quiet)]
    for p in problems:
        print(f"ERROR {RULE_FILE}: {p}")
    print(f"ok    {RULE_FILE}: {len(alerts)} alerts extracted to {RULES_OUT}, {len(tests)} test file(s)")
    return 1 if problems else 0


def _cmd_dashboard(deploy_dir):
    path = os.path.join(deploy_dir, DASHBOARD_FILE)
    try:
        dashboard = load_dashboard(path)
    except (OSError, ValueError) as e:
        print(f"ERROR {DASHBOARD_FILE}: not valid JSON: {e}")
        return 1
    problems = dashboard_problems(dashboard)
    for p in problems:
        print(f"ERROR {DASHBOARD_FILE}: {p}")
    if not problems:
        print(f"ok    {DASHBOARD_FILE}: uid {dashboard['uid']}, {len(dashboard_panels(dashboard))} panels, "
              f"{len(dashboard_exprs(dashboard))} queries")
    return 1 if problems else 0


def _cmd_names(deploy_dir, metrics_file):
    with open(metrics_file) as f:
        exposed = exposed_names(f.read())
    exprs = [(f"{RULE_FILE} {w}", e) for w, e in rule_exprs(extract_rules(os.path.join(deploy_dir, RULE_FILE)))]
    exprs += [(f"{DASHBOARD_FILE} {w}", e) for w, e in dashboard_exprs(load_dashboard(os.path.join(deploy_dir, DASHBOARD_FILE)))]
    missing = unknown_metrics(exprs, exposed)
    for where, name in missing:
        print(f"ERROR {where}: metric {name} is not in the server's /metrics")
    used = {n for _, e in exprs for n in metric_names(e)}
    if not missing:
        print(f"ok    alerts and dashboard: all {len(used)} metric names they use are in /metrics")
    return 1 if missing else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {"rules": (_cmd_rules, 2), "dashboard": (_cmd_dashboard, 1), "names": (_cmd_names, 2)}
    if not argv or argv[0] not in commands or len(argv) != commands[argv[0]][1] + 1:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]][0](*argv[1:])


if __name__ == "__main__":
    sys.exit(main())
