"""Deployment files stay true to the code: metric names exist, the shipped gateway.yaml loads."""

import json
import re
from pathlib import Path

import yaml

from gateway.adapters.metrics import Metrics
from gateway.config.located import load_text
from gateway.config.settings import parse_settings

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
