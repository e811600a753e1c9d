"""Every check of deploy_check.manifests catches a broken copy of the real deploy/ tree.

Each test copies deploy/, breaks one thing, runs the validator (no renderer, a stand-in
`syncline check-config` that accepts, unless a test says otherwise) and expects an error
naming the problem. The untouched copy must pass, so each failure is the broken thing's.
"""

import os
import shutil
import stat
import tempfile
import unittest

import yaml

from deploy_check.manifests import Validator, find_renderer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEPLOY = os.path.join(ROOT, "deploy")


class Case(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="deploy-check-test.")
        self.dir = os.path.join(self.tmp, "deploy")
        shutil.copytree(DEPLOY, self.dir)
        self.bin = self.fake_bin(0, "configuration OK")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def fake_bin(self, status, output):
        path = os.path.join(self.tmp, f"syncline-{status}")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
        return path

    def path(self, rel):
        return os.path.join(self.dir, rel)

    def edit(self, rel, change, kind=None):
        """Applies change(doc) to every document of a YAML file (or the ones of a kind)."""
        with open(self.path(rel)) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            if kind is None or doc.get("kind") == kind:
                change(doc)
        with open(self.path(rel), "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)

    def edit_text(self, rel, old, new):
        with open(self.path(rel)) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(self.path(rel), "w") as f:
            f.write(text.replace(old, new))

    def validate(self, renderer=None, syncline_bin=None):
        v = Validator(self.dir, "1.32.0", syncline_bin or self.bin, renderer, out=lambda _: None)
        v.run()
        return v

    def assertCaught(self, *fragments, renderer=None, syncline_bin=None):
        v = self.validate(renderer, syncline_bin)
        errors = [f"{where}: {msg}" for level, where, msg in v.messages if level == "ERROR"]
        self.assertTrue(errors, "the broken manifest passed")
        for fragment in fragments:
            self.assertTrue(any(fragment in e for e in errors),
                            f"no error mentions {fragment!r}; errors: {errors}")


def deployment(doc):
    return doc["spec"]["template"]["spec"]


def container(doc):
    return deployment(doc)["containers"][0]


def toml_edit(old, new):
    def change(doc):
        if doc["metadata"]["name"] == "syncline-config":
            text = doc["data"]["syncline.toml"]
            assert old in text, old
            doc["data"]["syncline.toml"] = text.replace(old, new)
    return change


class UntouchedTree(Case):
    def test_the_real_tree_passes(self):
        v = self.validate()
        self.assertEqual(v.errors, 0, [m for m in v.messages if m[0] == "ERROR"])

    @unittest.skipUnless(find_renderer(), "no kustomize renderer")
    def test_the_real_tree_passes_rendered(self):
        v = self.validate(renderer=find_renderer())
        self.assertEqual(v.errors, 0, [m for m in v.messages if m[0] == "ERROR"])
        self.assertEqual(v.rendered, 2)  # base and overlays/example; the component is not alone

    @unittest.skipUnless(os.access(os.environ.get("SYNCLINE_BIN", ""), os.X_OK), "SYNCLINE_BIN not set")
    def test_the_real_server_accepts_the_config(self):
        v = self.validate(syncline_bin=os.environ["SYNCLINE_BIN"])
        self.assertEqual(v.errors, 0, [m for m in v.messages if m[0] == "ERROR"])


class Kustomizations(Case):
    def test_unknown_field(self):
        self.edit("base/kustomization.yaml", lambda k: k.update(resourcez=["x.yaml"]))
        self.assertCaught("unknown field 'resourcez'")

    def test_wrong_kind(self):
        self.edit("base/kustomization.yaml", lambda k: k.update(kind="Kustomisation"))
        self.assertCaught("apiVersion must be kustomize.config.k8s.io/v1beta1")

    def test_missing_resource_file(self):
        os.remove(self.path("base/hpa.yaml"))
        self.assertCaught("resource hpa.yaml does not exist")

    def test_resource_directory_without_kustomization(self):
        os.makedirs(self.path("extra"))
        self.edit("base/kustomization.yaml", lambda k: k["resources"].append("../extra"))
        self.assertCaught("resource directory ../extra has no kustomization.yaml")

    def test_missing_patch_file(self):
        os.remove(self.path("overlays/example/hpa-patch.yaml"))
        self.assertCaught("patch hpa-patch.yaml does not exist")

    def test_missing_generator_file(self):
        os.remove(self.path("grafana/syncline.json"))
        self.assertCaught("generator syncline-grafana-dashboard: file syncline.json does not exist")

    def test_component_that_is_not_one(self):
        self.edit("overlays/example/kustomization.yaml", lambda k: k.update(components=["../../base"]))
        self.assertCaught("component ../../base is not a directory with a kind: Component")

    def test_yaml_file_named_by_no_kustomization(self):
        shutil.copy(self.path("base/hpa.yaml"), self.path("base/hpa-copy.yaml"))
        self.assertCaught("base/hpa-copy.yaml: not named by any kustomization")

    def test_promtool_tests_are_not_manifests(self):
        self.assertTrue(os.listdir(self.path("tests")))
        self.assertEqual(self.validate().errors, 0)

    def test_no_kustomization_at_all(self):
        for d in ("base", "overlays/example", "grafana"):
            os.remove(self.path(f"{d}/kustomization.yaml"))
        self.assertCaught("no kustomization.yaml found")


class Resources(Case):
    def test_unknown_field_is_strict_error(self):
        self.edit("base/deployment.yaml", lambda d: d["spec"].update(replica=3))
        self.assertCaught("Deployment/syncline", "replica")

    def test_wrong_type(self):
        self.edit("base/deployment.yaml", lambda d: d["spec"].update(replicas="two"))
        self.assertCaught("Deployment/syncline: spec.replicas")

    def test_unknown_kind(self):
        self.edit("base/hpa.yaml", lambda d: d.update(apiVersion="autoscaling/v9"))
        self.assertCaught("wrong apiVersion/kind")

    def test_missing_name(self):
        self.edit("base/pdb.yaml", lambda d: d["metadata"].pop("name"))
        self.assertCaught("PodDisruptionBudget has no metadata.name")

    def test_not_a_resource(self):
        self.edit("base/pdb.yaml", lambda d: d.pop("apiVersion"))
        self.assertCaught("not a Kubernetes resource")

    def test_unparsable_yaml(self):
        with open(self.path("base/pdb.yaml"), "a") as f:
            f.write("\n  : : [\n")
        self.assertCaught("cannot parse YAML")

    def test_empty_resource_file(self):
        open(self.path("base/pdb.yaml"), "w").close()
        self.assertCaught("no resource in file")

    def test_service_monitor_schema(self):
        self.edit("base/servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(intervall="30s"))
        self.assertCaught("ServiceMonitor/syncline", "intervall")

    def test_prometheus_rule_schema(self):
        self.edit("base/prometheusrule.yaml",
                  lambda d: d["spec"]["groups"][0]["rules"][0].update({"for": "two minutes"}))
        self.assertCaught("PrometheusRule/syncline: spec.groups.0.rules.0.for")


class Patches(Case):
    def test_patch_of_a_resource_that_does_not_exist(self):
        self.edit("overlays/example/hpa-patch.yaml", lambda d: d["metadata"].update(name="nope"))
        self.assertCaught("which no resource of overlays/example defines")

    def test_patch_without_kind(self):
        self.edit("overlays/example/hpa-patch.yaml", lambda d: d.pop("kind"))
        self.assertCaught("a strategic-merge patch needs apiVersion, kind and metadata.name")


class CrossReferences(Case):
    def test_selector_does_not_match_pod_labels(self):
        self.edit("base/deployment.yaml",
                  lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "x"}))
        self.assertCaught("spec.selector does not match the pod template labels")

    def test_undefined_service_account(self):
        self.edit("base/deployment.yaml", lambda d: deployment(d).update(serviceAccountName="ghost"))
        self.assertCaught("ServiceAccount ghost is not defined")

    def test_volume_config_map_not_defined(self):
        self.edit("base/deployment.yaml",
                  lambda d: deployment(d)["volumes"][0]["projected"]["sources"][1]["configMap"].update(name="ghost"))
        self.assertCaught("ConfigMap ghost is not defined")

    def test_volume_key_missing(self):
        self.edit("base/deployment.yaml",
                  lambda d: deployment(d)["volumes"][0]["projected"]["sources"][1]["configMap"]["items"][0]
                  .update(key="keys.json"))
        self.assertCaught("has no key 'keys.json'")

    def test_volume_mount_without_volume(self):
        self.edit("base/deployment.yaml", lambda d: container(d)["volumeMounts"][1].update(name="scratch"))
        self.assertCaught("volumeMount scratch has no volume")

    def test_credential_as_literal_env(self):
        self.edit("base/deployment.yaml",
                  lambda d: container(d)["env"].__setitem__(0, {"name": "DATABASE_URL", "value": "postgres://x"}))
        self.assertCaught("env DATABASE_URL: a credential as a literal value")

    def test_object_storage_secret_as_literal_env(self):
        self.edit("base/deployment.yaml",
                  lambda d: container(d)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}))
        self.assertCaught("env AWS_SECRET_ACCESS_KEY: a credential as a literal value")

    def test_env_secret_key_missing(self):
        self.edit("base/deployment.yaml",
                  lambda d: container(d)["env"][0]["valueFrom"]["secretKeyRef"].update(key="db-url"))
        self.assertCaught("env DATABASE_URL: Secret syncline-database has no key 'db-url'")

    def test_env_secret_not_defined(self):
        self.edit("base/deployment.yaml",
                  lambda d: container(d)["env"][0]["valueFrom"]["secretKeyRef"].update(name="ghost"))
        self.assertCaught("env DATABASE_URL: Secret ghost is not defined")

    def test_probe_port_not_a_container_port(self):
        self.edit("base/deployment.yaml", lambda d: container(d)["readinessProbe"]["grpc"].update(port=50052))
        self.assertCaught("readinessProbe.grpc.port 50052 is not a container port")

    def test_config_file_not_mounted(self):
        self.edit("base/deployment.yaml",
                  lambda d: container(d).update(args=["serve", "--config", "/etc/syncline/other.toml"]))
        self.assertCaught("--config /etc/syncline/other.toml is not mounted")

    def test_jwks_file_not_mounted(self):
        self.edit("base/configmap.yaml", toml_edit('jwks_file = "/etc/syncline/keys/jwks.json"',
                                                    'jwks_file = "/etc/syncline/keys/other.json"'))
        self.assertCaught("auth.jwks_file /etc/syncline/keys/other.json is not mounted")

    def test_jwks_file_as_sub_path(self):
        def change(d):
            sources = deployment(d)["volumes"][0]["projected"]["sources"]
            del sources[1]
            deployment(d)["volumes"].append({"name": "jwks", "configMap": {"name": "syncline-jwks"}})
            container(d)["volumeMounts"].append(
                {"name": "jwks", "mountPath": "/etc/syncline/keys/jwks.json", "subPath": "jwks.json"})
        self.edit("base/deployment.yaml", change)
        self.assertCaught("is a subPath mount, which never receives ConfigMap updates")

    def test_jwks_from_different_sources(self):
        with open(self.path("base/configmap.yaml")) as f:
            docs = list(yaml.safe_load_all(f))
        copy = [d for d in docs if d["metadata"]["name"] == "syncline-jwks"][0]
        copy = dict(copy, metadata=dict(copy["metadata"], name="syncline-jwks-2"))
        with open(self.path("base/configmap.yaml"), "w") as f:
            yaml.safe_dump_all(docs + [copy], f, sort_keys=False)
        self.edit("base/migration-job.yaml",
                  lambda d: deployment(d)["volumes"][0]["projected"]["sources"][1]["configMap"]
                  .update(name="syncline-jwks-2"))
        self.assertCaught("auth.jwks_file comes from different sources in different containers")

    def test_listen_port_differs_from_container_port(self):
        self.edit("base/deployment.yaml", lambda d: container(d)["ports"][1].update(containerPort=9465))
        self.assertCaught("metrics_listen port 9464 != container port metrics 9465")

    def test_listen_not_set(self):
        def change(doc):
            if doc["metadata"]["name"] == "syncline-config":
                lines = doc["data"]["syncline.toml"].splitlines()
                doc["data"]["syncline.toml"] = "\n".join(l for l in lines if not l.startswith("listen ")) + "\n"
        self.edit("base/configmap.yaml", change)
        self.assertCaught("set listen explicitly")

    def test_grace_period_shorter_than_drain(self):
        self.edit("base/deployment.yaml", lambda d: deployment(d).update(terminationGracePeriodSeconds=20))
        self.assertCaught("terminationGracePeriodSeconds 20 <= preStop 5s + drain_seconds")

    def test_database_url_in_config_map(self):
        self.edit("base/configmap.yaml", toml_edit('listen = "0.0.0.0:50051"', 'database_url = "postgres://x"\nlisten = "0.0.0.0:50051"'))
        self.assertCaught("database_url must not be in the ConfigMap")

    def test_hs256_secret_in_config_map(self):
        self.edit("base/configmap.yaml", toml_edit("\n[auth]\n", '\n[auth]\nhs256_secret = "' + "x" * 40 + '"\n'))
        self.assertCaught("auth.hs256_secret must not be in the ConfigMap")

    def test_config_map_missing(self):
        self.edit("base/configmap.yaml", lambda d: d["metadata"].update(name="syncline-conf"),
                  kind="ConfigMap")
        self.assertCaught("ConfigMap/syncline-config is missing")

    def test_config_that_does_not_parse(self):
        self.edit("base/configmap.yaml", toml_edit("\n[auth]\n", "\n[auth\n"))
        self.assertCaught("syncline.toml does not parse")

    def test_config_rejected_by_the_server(self):
        self.assertCaught("rejected by `syncline check-config`", "unknown key",
                          syncline_bin=self.fake_bin(1, "unknown key x"))

    def test_service_selects_no_pod(self):
        self.edit("base/service.yaml", lambda d: d["spec"]["selector"].update({"app.kubernetes.io/name": "x"}))
        self.assertCaught("Service/syncline: selector matches no pod template")

    def test_service_target_port_missing(self):
        self.edit("base/service.yaml", lambda d: d["spec"]["ports"][0].update(targetPort="grcp"))
        self.assertCaught("targetPort grcp is not a port of Deployment/syncline")

    def test_hpa_target_missing(self):
        self.edit("base/hpa.yaml", lambda d: d["spec"]["scaleTargetRef"].update(name="ghost"))
        self.assertCaught("scaleTargetRef Deployment/ghost is not defined")

    def test_hpa_floor_differs_from_replicas(self):
        self.edit("base/hpa.yaml", lambda d: d["spec"].update(minReplicas=3))
        self.assertCaught("minReplicas 3 != Deployment/syncline replicas 2")

    def test_hpa_min_above_max(self):
        self.edit("base/hpa.yaml", lambda d: d["spec"].update(minReplicas=2, maxReplicas=1))
        self.assertCaught("minReplicas > maxReplicas")

    def test_pdb_selects_nothing(self):
        self.edit("base/pdb.yaml",
                  lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}))
        self.assertCaught("selector matches no Deployment/StatefulSet pods")

    def test_pdb_blocks_every_drain(self):
        self.edit("base/pdb.yaml", lambda d: d["spec"].update(minAvailable=2))
        self.assertCaught("no node could ever be drained")

    def test_service_monitor_port_name(self):
        self.edit("base/servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(port="metric"))
        self.assertCaught("no selected Service has a port named 'metric'")


@unittest.skipUnless(find_renderer(), "no kustomize renderer")
class Rendered(Case):
    def test_inline_patch_breaking_the_job_is_caught_rendered(self):
        # The inline JSON patch is only visible in the rendered output.
        self.edit_text("overlays/example/kustomization.yaml", "value: listen-database-url", "value: no-such-key")
        self.assertCaught("overlays/example (rendered)", "has no key 'no-such-key'", renderer=find_renderer())

    def test_render_failure(self):
        self.edit_text("overlays/example/kustomization.yaml", "  - ../../base\n", "  - ../../base\n  - ../../nowhere\n")
        self.assertCaught("failed", renderer=find_renderer())

    def test_broken_dashboard_in_the_component(self):
        with open(self.path("grafana/syncline.json"), "w") as f:
            f.write('{"uid": "syncline", "title": "Syncline", "panels": []}')
        self.assertCaught("ConfigMap/syncline-grafana-dashboard: dashboard syncline.json: panels must be",
                          renderer=find_renderer())

    def test_dashboard_that_is_not_json(self):
        with open(self.path("grafana/syncline.json"), "a") as f:
            f.write(",")
        self.assertCaught("dashboard syncline.json: not valid JSON", renderer=find_renderer())


if __name__ == "__main__":
    unittest.main()
