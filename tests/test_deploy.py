"""Deployment files stay true to the code: metric names exist, the shipped gateway.yaml loads."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.adapters.metrics import Metrics
from gateway.config.located import load_text
from gateway.config.settings import parse_settings
from gateway.core.routes import RouteKind
from gateway.schedulers import KubernetesAdapter, KubernetesOptions

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bexportgate_[a-z_]+")


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def used_names() -> set[str]:
    text = (DEPLOY / "prometheus" / "rules.yaml").read_text() + (DEPLOY / "grafana" / "exportgate.json").read_text()
    return set(METRIC.findall(text))


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    """An alert or panel on a metric the gateway does not export would never fire or draw."""
    exported = exported_names()
    # histograms are collected before any observation too, so _bucket/_sum/_count are known
    exported |= {f"{n}{suffix}" for n in exported for suffix in ("_bucket", "_sum", "_count", "_total")}
    missing = sorted(used_names() - exported)
    assert missing == []
    assert len(used_names()) >= 8


def test_rules_are_well_formed() -> None:
    """Each alerting rule has a name, an expression and a severity."""
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["alert"] and rule["expr"] and rule["labels"]["severity"] for rule in rules)


def test_dashboard_is_valid_json_with_panels() -> None:
    """The Grafana dashboard parses and every panel queries something."""
    dashboard = json.loads((DEPLOY / "grafana" / "exportgate.json").read_text())
    assert dashboard["panels"] and all(panel["targets"] for panel in dashboard["panels"])


def test_kubernetes_configmap_holds_a_valid_gateway_yaml() -> None:
    """The gateway.yaml shipped in the Kubernetes manifest passes the strict loader."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "exportgate.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    settings = parse_settings(load_text(config_map["data"]["gateway.yaml"], "configmap"), Path("/"), {})
    assert settings.quota.store == "redis"
    assert settings.upstreams[0].headers["X-SLURM-USER-TOKEN"].slurm_jwt_key_file is not None
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def _priced_resources() -> set[tuple[str, str, str]]:
    """(group, version, plural) of every object the Kubernetes adapter prices on create."""
    found = set()
    for route in KubernetesAdapter(KubernetesOptions()).routes():
        if route.kind is RouteKind.SUBMIT:
            parts = route.pattern.strip("/").split("/")  # api/v1/namespaces/{ns}/pods, apis/<g>/<v>/namespaces/...
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            found.add((group, version, parts[-1]))
    return found


def test_the_admission_webhook_manifest_matches_the_gateway() -> None:
    """The ValidatingWebhookConfiguration asks the listener the ConfigMap's gateway.yaml opens, about exactly the
    resources the adapter prices, fails closed, and trusts the CA cert-manager injects for the Secret the pods serve."""
    gateway = _docs("exportgate.yaml")
    config_map = next(d for d in gateway if d["kind"] == "ConfigMap")
    settings = parse_settings(load_text(config_map["data"]["gateway.yaml"], "configmap"), Path("/"), {})
    hook = settings.admission_webhook
    assert hook is not None and hook.upstream == "k8s" and hook.issuer == "kubernetes"
    assert "system:serviceaccount:kube-system:job-controller" in hook.controllers
    webhook = _docs("admission-webhook.yaml")
    config = next(d for d in webhook if d["kind"] == "ValidatingWebhookConfiguration")
    assert config["apiVersion"] == "admissionregistration.k8s.io/v1"
    (entry,) = config["webhooks"]
    assert (entry["failurePolicy"], entry["sideEffects"], entry["admissionReviewVersions"]) == (
        "Fail", "NoneOnDryRun", ["v1"]
    )  # fmt: skip
    asked = {(g, v, r) for rule in entry["rules"] for g in rule["apiGroups"] for v in rule["apiVersions"]
             for r in rule["resources"]}  # fmt: skip
    assert asked == _priced_resources()
    for rule in entry["rules"]:
        expected = ["CREATE"] if rule["resources"] == ["pods"] else ["CREATE", "UPDATE"]
        assert (rule["operations"], rule["scope"]) == (expected, "Namespaced")

    service_ref = entry["clientConfig"]["service"]
    assert service_ref["path"] == hook.path and "caBundle" not in entry["clientConfig"]
    service = next(d for d in gateway if d["kind"] == "Service")
    assert service["metadata"]["name"] == service_ref["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == service_ref["port"]]
    pod = next(d for d in gateway if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == hook.port

    namespace, certificate_name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert namespace == service_ref["namespace"]
    certificate = next(d for d in webhook if d["kind"] == "Certificate" and d["metadata"]["name"] == certificate_name)
    assert f"{service_ref['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    issuer = next(d for d in webhook if d["kind"] == "Issuer" and d["metadata"]["name"] == certificate["spec"]
                  ["issuerRef"]["name"])  # fmt: skip
    assert "ca" in issuer["spec"] or "selfSigned" in issuer["spec"]
    secret = certificate["spec"]["secretName"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret)
    mounted = Path(next(m for m in container["volumeMounts"] if m["name"] == volume["name"])["mountPath"])
    assert (hook.cert_file, hook.key_file) == (mounted / "tls.crt", mounted / "tls.key")


def test_the_gateway_may_read_what_it_reconciles() -> None:
    """Reconciliation reads every priced resource back with the mounted long-lived token of a bound service account."""
    webhook = _docs("admission-webhook.yaml")
    role = next(d for d in webhook if d["kind"] == "ClusterRole")
    readable = {(g, r) for rule in role["rules"] if "get" in rule["verbs"] for g in rule["apiGroups"]
                for r in rule["resources"]}  # fmt: skip
    assert {(g, r) for g, _, r in _priced_resources()} <= readable
    binding = next(d for d in webhook if d["kind"] == "ClusterRoleBinding")
    token = next(d for d in webhook if d["kind"] == "Secret")
    account = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert binding["subjects"][0]["name"] == account and binding["roleRef"]["name"] == role["metadata"]["name"]
    gateway = _docs("exportgate.yaml")
    config_map = next(d for d in gateway if d["kind"] == "ConfigMap")
    settings = parse_settings(load_text(config_map["data"]["gateway.yaml"], "configmap"), Path("/"), {})
    k8s = next(u for u in settings.upstreams if u.name == "k8s")
    token_file = k8s.headers["Authorization"].file
    pod = next(d for d in gateway if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == token["metadata"]["name"])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert token_file == Path(mount["mountPath"]) / "token"
    # What the proxy sends the API server with that token, the proxy priced: the webhook must not price it again.
    hook = settings.admission_webhook
    assert hook is not None
    assert hook.proxy_users == (f"system:serviceaccount:{token['metadata']['namespace']}:{account}",)
