"""Monitoring files stay true to the code: every metric an alert or a dashboard panel queries is one the gateway
exports, promtool accepts the alerting rules, and the dashboard parses. (deploy/kubernetes: test_deploy_kustomize.py;
deploy/compose: test_deploy_compose.py; deploy/envoy: test_deploy_envoy.py.)"""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters.metrics import Metrics
from tests.deploy_kit import promtool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "exportgate.json"

# PromQL words that are neither metrics nor followed by "(": binary operators, modifiers, literals.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label matchers, ranges and
    grouping clauses are removed, that are not functions or aggregations (followed by "(") nor keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


# The series names of each metric type (a labelled family has no samples until its first observation).
SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
          "gauge": ("",), "info": ("_info",), "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
          "unknown": ("",)}  # fmt: skip


def exported_names() -> set[str]:
    """Every series name the gateway's registry exports, by each family's type (counters' _total, histograms'
    _bucket, _sum and _count), and the samples it holds now (the process and platform collectors')."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in SERIES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def panel_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{panel['title']} [{target['refId']}]": target["expr"] for panel in dashboard["panels"]
            for target in panel["targets"]}  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(exportgate_ledger_commit_seconds_bucket{job="x"}[5m])) > 0.05',
         {"exportgate_ledger_commit_seconds_bucket"}),
        ("(sum by (instance) (increase(a_total[15m])) > 0) unless on (instance) (min by (instance) (time() - b) < 900)",
         {"a_total", "b"}),
        ("process_resident_memory_bytes and on (instance, job) exportgate_ready", {"process_resident_memory_bytes",
                                                                                   "exportgate_ready"}),
        ('exportgate_ready_part{part="quota"} == 0', {"exportgate_ready_part"}),
    ],
)  # fmt: skip
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    """An alert or panel on a metric the gateway does not export would never fire or draw."""
    exported = exported_names()
    used = {where: metric_names(expr) for where, expr in {**rule_expressions(), **panel_expressions()}.items()}
    missing = {where: sorted(names - exported) for where, names in used.items() if names - exported}
    assert missing == {}
    assert all(used.values())  # each expression queries something
    assert len(set().union(*used.values())) >= 15


def test_promtool_accepts_the_rules() -> None:
    """promtool parses every expression and template, as Prometheus does when it loads the file."""
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in done.stdout


def test_rules_are_well_formed() -> None:
    """Each alerting rule has a name, an expression, a severity the runbooks know and a summary."""
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
        assert rule["labels"]["severity"] in {"page", "ticket"}


def test_dashboard_is_valid_json_with_panels() -> None:
    """The Grafana dashboard parses, every panel queries something through the dashboard's datasource variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    assert dashboard["panels"] and all(panel["targets"] for panel in dashboard["panels"])
    assert all(panel["datasource"]["uid"] == "${" + variable["name"] + "}" for panel in dashboard["panels"])


def test_the_unsigned_ledger_alert_fires_only_without_checkpoints(tmp_path: Path) -> None:
    """promtool's rule unit test of ExportgateLedgerUnsigned: a gateway writing records with no signed checkpoint
    (no ledger.signing_key_file) alerts after 15 minutes; one whose checkpoints keep up (a key, as the shipped
    Kubernetes and Compose configurations set) does not."""
    series = [
        {"series": 'exportgate_ledger_records_total{instance="unsigned:9180", job="exportgate"}', "values": "0+10x40"},
        {"series": 'exportgate_ledger_records_total{instance="signed:9180", job="exportgate"}', "values": "0+10x40"},
        {"series": 'exportgate_ledger_checkpoint_timestamp_seconds{instance="signed:9180", job="exportgate", '
                   'ledger_instance="signed"}', "values": "0+60x40"},  # a checkpoint each minute: time() - t = 0
    ]  # fmt: skip
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "ExportgateLedgerUnsigned", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "ExportgateLedgerUnsigned", "exp_alerts": [{
                    "exp_labels": {"instance": "unsigned:9180", "severity": "ticket"},
                    "exp_annotations": {"summary": "unsigned:9180 writes ledger records but no signed checkpoint for "
                                                   "15m (no or bad signing key)"},
                }]},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
