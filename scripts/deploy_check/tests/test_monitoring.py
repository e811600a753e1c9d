"""deploy_check.monitoring: metric names read from PromQL, the dashboard's shape, the rule
extraction, and the cross-check against /metrics, each on a good and a broken input."""

import contextlib
import copy
import io
import os
import shutil
import tempfile
import unittest

import yaml

from deploy_check import monitoring as m
from deploy_check.traffic import push_request, pull_request, _frames, grpc_status

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEPLOY = os.path.join(ROOT, "deploy")

METRICS = """# HELP grpc_server_handled_total RPCs completed
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_service="s",grpc_method="Pull",grpc_code="OK"} 1
# TYPE syncline_stream_lag_seconds histogram
syncline_stream_lag_seconds_bucket{le="+Inf"} 2
syncline_stream_lag_seconds_sum 0.1
syncline_stream_lag_seconds_count 2
syncline_listener_connected 1
"""


def quiet_main(argv):
    with contextlib.redirect_stdout(io.StringIO()):
        return m.main(argv)


class MetricNames(unittest.TestCase):
    def test_names_functions_labels_and_keywords(self):
        expr = ('sum by (namespace, grpc_method) (rate(grpc_server_handled_total{grpc_code=~"Internal|x_total"}[5m]))'
                ' / ignoring (le) sum without (pod) (rate(b_total[$__rate_interval] offset 1h)) > 0.05'
                ' or on (pod) histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m]))) > 1e3'
                ' and {__name__="d_total"} unless e_seconds * bool 2')
        self.assertEqual(m.metric_names(expr),
                         {"grpc_server_handled_total", "b_total", "c_bucket", "d_total", "e_seconds"})

    def test_grafana_variables_are_not_names(self):
        self.assertEqual(m.metric_names('sum(x_total{namespace=~"$namespace"}) / ${total}'), {"x_total"})

    def test_exposed_names_include_histogram_series(self):
        self.assertEqual(m.exposed_names(METRICS), {
            "grpc_server_handled_total", "syncline_stream_lag_seconds_bucket",
            "syncline_stream_lag_seconds_sum", "syncline_stream_lag_seconds_count",
            "syncline_listener_connected"})

    def test_unknown_metrics(self):
        exposed = m.exposed_names(METRICS)
        exprs = [("a", "rate(syncline_stream_lag_seconds_bucket[5m])"),
                 ("b", "syncline_listener_conected == 0"),
                 ("c", "rate(syncline_stream_lag_seconds[5m])")]
        self.assertEqual(m.unknown_metrics(exprs, exposed),
                         [("b", "syncline_listener_conected"), ("c", "syncline_stream_lag_seconds")])


class Dashboard(unittest.TestCase):
    def setUp(self):
        self.dash = m.load_dashboard(os.path.join(DEPLOY, m.DASHBOARD_FILE))

    def test_real_dashboard_has_the_expected_shape(self):
        self.assertEqual(m.dashboard_problems(self.dash), [])
        self.assertEqual(self.dash["uid"], "syncline")

    def test_every_query_is_seen(self):
        exprs = m.dashboard_exprs(self.dash)
        targets = sum(len(p.get("targets") or []) for p in m.dashboard_panels(self.dash))
        self.assertEqual(len(exprs), targets + 1)  # + the namespace variable
        self.assertIn(("variable namespace", "syncline_build_info"), exprs)

    def broken(self, change):
        dash = copy.deepcopy(self.dash)
        change(dash)
        return m.dashboard_problems(dash)

    def test_each_broken_shape_is_caught(self):
        graph = next(i for i, p in enumerate(self.dash["panels"]) if p["type"] != "row")
        cases = {
            "uid must be": lambda d: d.pop("uid"),
            "uid 'a b'": lambda d: d.update(uid="a b"),
            "title must be": lambda d: d.update(title=""),
            "schemaVersion": lambda d: d.pop("schemaVersion"),
            "panels must be a non-empty list": lambda d: d.update(panels=[]),
            "no targets": lambda d: d["panels"][graph].pop("targets"),
            "a target without an expr": lambda d: d["panels"][graph]["targets"][0].update(expr=" "),
            "a target without a refId": lambda d: d["panels"][graph]["targets"][0].pop("refId"),
            "is used twice": lambda d: d["panels"][graph].update(id=d["panels"][0]["id"]),
            "gridPos": lambda d: d["panels"][graph].pop("gridPos"),
            "needs a title and a type": lambda d: d["panels"][graph].pop("type"),
            "no panel other than rows": lambda d: d.update(panels=[p for p in d["panels"] if p["type"] == "row"]),
            "not a JSON object": lambda d: d["panels"].append([]),
            "variable $namespace is used but not defined": lambda d: d["templating"]["list"].pop(),
        }
        for fragment, change in cases.items():
            with self.subTest(fragment):
                problems = self.broken(change)
                self.assertTrue(any(fragment in p for p in problems), problems)

    def test_not_an_object(self):
        self.assertEqual(m.dashboard_problems([]), ["the dashboard is not a JSON object"])


class Rules(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="deploy-check-test.")
        self.dir = os.path.join(self.tmp, "deploy")
        shutil.copytree(DEPLOY, self.dir)
        self.out = os.path.join(self.tmp, "out")
        os.makedirs(self.out)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_extract_gives_every_alert(self):
        rules = m.extract_rules(os.path.join(self.dir, m.RULE_FILE))
        alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
        self.assertEqual(alerts, {"SynclineHorizonStuck", "SynclineListenerDown", "SynclineHighErrorRate",
                                  "SynclineStreamLag", "SynclineDbPoolSaturated"})

    def test_rules_command_writes_the_rule_file_and_tests(self):
        self.assertEqual(quiet_main(["rules", self.dir, self.out]), 0)
        self.assertIn(m.RULES_OUT, os.listdir(self.out))
        self.assertIn("prometheusrule.test.yaml", os.listdir(self.out))

    def test_an_alert_without_a_firing_test_is_caught(self):
        path = os.path.join(self.dir, m.RULE_FILE)
        with open(path) as f:
            doc = yaml.safe_load(f)
        doc["spec"]["groups"][0]["rules"].append({"alert": "SynclineNew", "expr": "vector(1)"})
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        self.assertEqual(quiet_main(["rules", self.dir, self.out]), 1)

    def test_an_alert_without_a_quiet_test_is_caught(self):
        path = os.path.join(self.dir, m.TESTS_DIR, "prometheusrule.test.yaml")
        with open(path) as f:
            doc = yaml.safe_load(f)
        doc["tests"] = [t for t in doc["tests"] if not any(
            a["alertname"] == "SynclineStreamLag" and not a.get("exp_alerts") for a in t["alert_rule_test"])]
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(m.main(["rules", self.dir, self.out]), 1)
        self.assertIn("alert SynclineStreamLag has no promtool test in which it stays quiet", out.getvalue())

    def test_no_prometheus_rule(self):
        path = os.path.join(self.dir, m.RULE_FILE)
        with open(path, "w") as f:
            f.write("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        with self.assertRaises(ValueError):
            m.extract_rules(path)

    def test_names_command_catches_a_metric_the_server_lacks(self):
        metrics = os.path.join(self.tmp, "metrics.txt")
        with open(metrics, "w") as f:
            f.write(METRICS)
        self.assertEqual(quiet_main(["names", self.dir, metrics]), 1)


class Traffic(unittest.TestCase):
    def test_messages_encode_as_protobuf(self):
        # PullRequest{collection: "tasks", limit: 100}
        self.assertEqual(pull_request("tasks"), b"\x0a\x05tasks\x18\x64")
        body = push_request("t", [{"id": "a"}])
        self.assertTrue(body.startswith(b"\x0a\x01t\x12"))
        self.assertIn(b'{"id": "a"}', body)

    def test_frames_and_status(self):
        data = b"\x00\x00\x00\x00\x02hi" + b"\x80\x00\x00\x00\x10grpc-status: 5\r\n" + b"\x00\x00"
        frames = _frames(data)
        self.assertEqual(frames, [(0, b"hi"), (0x80, b"grpc-status: 5\r\n")])
        self.assertEqual(grpc_status(frames, {}), 5)
        self.assertEqual(grpc_status([], {"grpc-status": "3"}), 3)


if __name__ == "__main__":
    unittest.main()
