"""Metrics as Prometheus scrapes them over HTTP: the default process and platform collectors, OpenMetrics on
request, no `instance` label of the gateway's own, and one series per ledger chain for its signed head."""

from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.ledger.signing import generate
from gateway.adapters.metrics import Metrics
from tests.harness import SUBMIT, Stack, call, ledger_records, running_stack, slurm_job, wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


async def scrape(stack: Stack, accept: str | None = None) -> tuple[str, str]:
    """GET /metrics on the admin listener: the body and its Content-Type."""
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{stack.admin_url}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.text(), resp.headers["Content-Type"]


def samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_no_metric_declares_an_instance_label() -> None:
    """`instance` is Prometheus' own (the scrape target); no metric of the gateway's declares it."""
    metrics = Metrics()
    declared = {
        wrapper._name: wrapper._labelnames
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    assert len(declared) >= 20
    assert [name for name, labels in declared.items() if "instance" in labels] == []
    assert declared["exportgate_ledger_head_seq"] == ("ledger_instance",)


async def test_a_real_scrape_over_http(tmp_path: Path) -> None:
    """After submissions and signed checkpoints: process and platform collectors, the ledger head as one
    gauge per chain whose value is the checkpoint's seq (no seq or hash label), and no `instance` label."""
    generate(tmp_path / "ledger.pem", tmp_path / "ledger.pub.pem")
    async with running_stack(
        tmp_path, signing_key_file=tmp_path / "ledger.pem", ledger_options="checkpoint_every_records: 2"
    ) as stack:
        for _ in range(3):
            assert (await call(stack, "POST", SUBMIT, "acme-us", payload=slurm_job()))[0] == 200

        def checkpoints() -> list[dict[str, Any]]:
            return [r for r in ledger_records(stack) if r["kind"] == "checkpoint"]

        await wait_until(lambda: len(checkpoints()) >= 2, 5)
        scraped: list[tuple[str, str, dict[str, Any]]] = []

        async def settled() -> bool:  # a checkpoint is published (manifest, anchor, metric) after it is durable
            text, content_type = await scrape(stack)
            latest = checkpoints()[-1]
            scraped.append((text, content_type, latest))
            return f'exportgate_ledger_head_seq{{ledger_instance="test-gw"}} {latest["seq"]}.0' in text

        await wait_until(settled, 5)
        text, content_type, latest = scraped[-1]
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    names = {s.name for s in found}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= names
    assert "python_info" in names and "python_gc_collections_total" in names
    assert [s for s in found if "instance" in s.labels] == []
    heads = [s for s in found if s.name == "exportgate_ledger_head_seq"]
    assert [h.labels for h in heads] == [{"ledger_instance": "test-gw"}]
    assert heads[0].value == latest["seq"]
    times = [s for s in found if s.name == "exportgate_ledger_checkpoint_timestamp_seconds"]
    assert [(t.labels, t.value) for t in times] == [({"ledger_instance": "test-gw"}, latest["ts"])]
    # No ledger series is labelled by what changes at each checkpoint (its seq or hash); `le` is the commit-time
    # histogram's buckets.
    assert {k for s in found if s.name.startswith("exportgate_ledger") for k in s.labels} == {"ledger_instance", "le"}
    assert not any(latest["hash"] in v or v == str(latest["seq"]) for s in found for v in s.labels.values())


async def test_openmetrics_when_the_scraper_asks(tmp_path: Path) -> None:
    """Prometheus' Accept for OpenMetrics gets OpenMetrics (parsed by its own parser, ending `# EOF`);
    no Accept gets the classic text format."""
    async with running_stack(tmp_path) as stack:
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=slurm_job()))[0] == 200
        text, content_type = await scrape(stack, OPENMETRICS)
        classic, classic_type = await scrape(stack)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n") and not classic.endswith("# EOF\n")
    assert classic_type.startswith("text/plain")
    families = {f.name: f for f in openmetrics_families(text)}  # type: ignore[no-untyped-call]
    requests = families["exportgate_requests"]
    assert requests.type == "counter"
    submitted = [s for s in requests.samples if s.labels == {"route_kind": "submit", "status_class": "2xx"}]
    assert [s.value for s in submitted if s.name == "exportgate_requests_total"] == [1.0]
    assert "process_resident_memory_bytes" in families and "python_info" in families
