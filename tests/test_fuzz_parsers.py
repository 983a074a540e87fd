"""Seeded fuzzing of the job-body parsers: every mutated body is priced or refused, never an exception.

A seeded generator (not hypothesis: no new dependency, and the mutations that matter are
structural ones over real sample bodies) mutates values, types, nesting, keys, unicode, bytes
and encodings of the sample submissions and updates the adapter tests use. The same seed gives
the same cases, so a failure names a case that can be replayed.
"""

import copy
import gzip
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.gpus import load_gpus
from gateway.config.located import Problem
from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.pricing import GpuCatalogue, price
from gateway.core.routes import RouteMatch, match_route
from gateway.schedulers import (
    GenericAdapter,
    GenericOptions,
    KubernetesAdapter,
    KubernetesOptions,
    RayAdapter,
    RayOptions,
    SchedulerAdapter,
    SlurmAdapter,
    SlurmOptions,
)
from tests.harness import Stack
from tests.recorder import Recorder, recorded_stack

PACK_GPUS = BUNDLED_POLICIES / "ai-diffusion-2025" / "gpus.yaml"
SEED = 20240917
CASES_PER_SAMPLE = 600

# fmt: off
SLURM_JOB: dict[str, Any] = {
    "name": "train-7b", "partition": "gpu", "account": "team-a", "time_limit": 120,
    "environment": {"PATH": "/usr/bin:/bin", "EXPORTGATE_LINEAGE": "acme-7b"},
    "current_working_directory": "/home/u", "gpus": "h100:8", "nodes": 2, "tasks_per_node": 4,
}
SLURM_SAMPLES: list[Any] = [
    {"job": SLURM_JOB, "script": "#!/bin/bash\nsrun python train.py"},
    {"job": {**SLURM_JOB, "gpus": None, "tres_per_node": "gres/gpu:h100=4", "array": "0-99%10",
             "time_limit": {"set": True, "infinite": False, "number": 60}}, "script": "x"},
    {"jobs": [{**SLURM_JOB, "gres": "gpu:a100:2", "comment": "exportgate:lineage=x,purpose=inference"},
              {**SLURM_JOB, "gpus_per_task": 1, "tasks": 8, "nodes": [1, 4], "time_limit": "1-00:00:00"}],
     "script": "x"},
    {"job": {**SLURM_JOB, "gpus_per_socket": "h100:2", "sockets_per_node": 2, "required_nodes": "gpu[01-04]"}},
]
SLURM_UPDATES: list[Any] = [
    {"job": {"time_limit": 240}},
    {"job": {"gpus": "h100:4", "nodes": 1, "time_limit": 60}},
    {"name": "renamed", "comment": "x"},
]
RAY_SAMPLES: list[Any] = [
    {
        "entrypoint": "python train.py", "submission_id": "optional-unique-id", "entrypoint_num_gpus": 2,
        "entrypoint_num_cpus": 0, "entrypoint_resources": {"accelerator_type:H100": 2}, "entrypoint_memory": 0,
        "runtime_env": {"env_vars": {"K": "V"}}, "metadata": {"user": "alice", "time_limit_min": "120"},
    },
]
K8S_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "train-7b", "labels": {"exportgate.io/model-lineage": "acme-7b"}},
    "spec": {
        "parallelism": 4, "completions": 8, "activeDeadlineSeconds": 7200,
        "template": {"spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}]}}},
            "initContainers": [{"name": "i", "image": "i", "resources": {"limits": {"amd.com/gpu": 1}}}],
            "containers": [{"name": "t", "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": "8"}, "requests": {"nvidia.com/gpu": 8}}}],
            "restartPolicy": "Never"}},
    },
}
K8S_POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": K8S_JOB["spec"]["template"]["spec"],
}
K8S_PATCHES: list[Any] = [
    {"spec": {"parallelism": 8}},
    {"metadata": {"labels": {"a": "b"}}},
]
K8S_JSON_PATCHES: list[Any] = [
    [{"op": "replace", "path": "/spec/parallelism", "value": 2}],
    [{"op": "add", "path": "/metadata/labels/x", "value": "y"}],
]
GENERIC_OPTIONS = GenericOptions(
    submit_path="/v1/jobs", gpus_field="resources.gpus", job_id_field="job.id", job_path="/v1/jobs/{job_id}",
    model_field="resources.gpu_type", walltime_field="limits.hours", walltime_unit="h",
    concurrency_field="replicas", lineage_field="labels.lineage", purpose_field="labels.purpose", name_field="name",
)
GENERIC_SAMPLES: list[Any] = [
    {"name": "train-7b", "resources": {"gpus": 8, "gpu_type": "H100"}, "limits": {"hours": 2}, "replicas": 3,
     "labels": {"lineage": "acme-7b", "purpose": "training"}},
    {"name": "x", "resources": {"gpus": [1, 2], "gpu_type": "A100"}, "limits": {"hours": 0.5}},
]
# fmt: on

# Keys the parsers look for, so that added keys reach their code and not only "unknown field" paths.
_KEY_TEXT = (
    "job jobs gpus gpus_per_node gpus_per_task gpus_per_socket gres tres_per_job tres_per_node tres_per_task "
    "tres_per_socket tres_per_gpu ntasks_per_gpu ntasks_per_tres nodes minimum_nodes maximum_nodes required_nodes "
    "tasks ntasks tasks_per_node tasks_per_socket tasks_per_core sockets_per_node time_limit array partition "
    "comment environment name cpus_per_gpu set infinite number entrypoint_num_gpus entrypoint_resources metadata "
    "time_limit_min submission_id accelerator_type:A100 spec template containers initContainers resources limits "
    "requests nvidia.com/gpu amd.com/gpu nvidia.com/mig-1g.5gb parallelism activeDeadlineSeconds nodeSelector "
    "affinity nodeAffinity requiredDuringSchedulingIgnoredDuringExecution nodeSelectorTerms matchExpressions key "
    "operator values labels annotations exportgate.io/purpose exportgate.io/model-lineage op path value replicas "
    "gpu_type hours resourceClaims ephemeralContainers overhead"
)
KEYS = tuple(_KEY_TEXT.split())

# fmt: off
STRINGS = [
    "", " ", "8", "-1", "0", "1.5", "1e3", "\uff10\uff18", "\u0663", "h100:8", "gpu:h100:8", "gres/gpu:h100=4",
    "gres/gpu:8", "gpu:mps:1", "shard:2", "cpu=4,gres/gpu:2", "0-99%10", "1-0", "0-99:0", "5-3", "1,3,5", "%",
    "0-999999999", "99999999999999999999", "infinite", "UNLIMITED", "1-00:00:00", "00:00:00", "-5:00", "60:60:60",
    "NaN", "Infinity", "gpu[01-04]", "gpu[04-01]", "n[1-99999999]", "H100", "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu",
    "In", "NotIn", "Exists", "replace", "add", "remove", "/spec/template/spec/containers/0/resources",
    "/spec/parallelism", "exportgate:lineage=x,purpose=training", "\u0000", "\u202e", "é", "🚀", "\ud800",
    "a" * 300, "8" * 40,
]
# fmt: on


def random_text(rng: random.Random) -> str:
    """A short string of code points from ASCII, Latin, CJK, emoji and the surrogate range."""
    pools = [(0x20, 0x7E), (0x80, 0x2FF), (0x4E00, 0x4E40), (0x1F300, 0x1F340), (0xD800, 0xDFFF), (0x0, 0x1F)]
    return "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(0, 8)))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any type, biased towards ones the parsers treat specially."""
    pick = rng.randrange(12)
    if pick == 0:
        return rng.choice([0, 1, 2, 8, -1, -8, 2**31, 2**63, 10**30, -(10**30), rng.randint(-3, 4096)])
    if pick == 1:
        return rng.choice([0.0, -0.0, 0.5, 1.5, 2.0, 8.0, 1e308, -1e308, 1e-300, 123456789.0])
    if pick in (2, 3, 4):
        return rng.choice(STRINGS)
    if pick == 5:
        return random_text(rng)
    if pick == 6:
        return rng.choice([True, False, None])
    if pick == 7 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if pick == 8 and depth < 3:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if pick == 9:
        return {"set": rng.choice([True, False, None, 1]), "infinite": rng.choice([True, False, "x"]),
                "number": rng.choice([0, 4, -1, "8", None, 1.5])}  # fmt: skip
    if pick == 10:
        nested: Any = rng.choice([1, "gpu:1", {}])
        for _ in range(rng.randint(5, 60)):
            nested = [nested] if rng.random() < 0.5 else {"x": nested}
        return nested
    return rng.choice(KEYS)


Path_ = tuple[Any, ...]


def all_paths(doc: Any, path: Path_ = ()) -> list[Path_]:
    """Every node's path (keys and list indexes), the root included."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(all_paths(value, (*path, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(all_paths(value, (*path, i)))
    return out


def get_at(doc: Any, path: Path_) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def set_at(doc: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    get_at(doc, path[:-1])[path[-1]] = value
    return doc


def mutate(doc: Any, rng: random.Random) -> Any:
    """One structural mutation: a value, a type, a key, or the nesting around a node."""
    path = rng.choice(all_paths(doc))
    node = get_at(doc, path)
    op = rng.randrange(8)
    if op == 0:
        return set_at(doc, path, random_value(rng))
    if op == 1 and path:  # delete the node
        parent = get_at(doc, path[:-1])
        del parent[path[-1]]
        return doc
    if op == 2 and isinstance(node, dict):  # add a key the parsers know
        node[rng.choice(KEYS)] = random_value(rng)
        return doc
    if op == 3:  # wrap the node one level deeper
        return set_at(doc, path, [node] if rng.random() < 0.5 else {rng.choice(KEYS): node})
    if op == 4 and isinstance(node, dict):  # an object becomes the list of its values
        return set_at(doc, path, list(node.values()))
    if op == 5 and isinstance(node, list):  # a list becomes an object
        return set_at(doc, path, {str(i): v for i, v in enumerate(node)})
    if op == 6:  # a subtree copied somewhere else
        other = rng.choice(all_paths(doc))
        return set_at(doc, path, copy.deepcopy(get_at(doc, other)))
    if op == 7 and isinstance(node, str | int | float) and not isinstance(node, bool):
        flipped: Any = str(node) if not isinstance(node, str) else (int(node) if node.isdigit() else node.upper())
        return set_at(doc, path, flipped)
    return set_at(doc, path, random_value(rng))


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    """Damage the serialized text: truncate, splice, duplicate a key, break UTF-8, or nest absurdly."""
    op = rng.randrange(6)
    cut = rng.randrange(len(data) + 1)
    if op == 0:
        return data[:cut]
    if op == 1:
        return data[:cut] + rng.choice([b"\xff", b"\xc3", b"\x00", b'"', b"}", b"]", b",", b"\\u"]) + data[cut:]
    if op == 2 and data.startswith(b"{"):
        first_key = data[1 : data.find(b":") + 1]
        return b"{" + first_key + b"1," + data[1:]  # the first key twice
    if op == 3:
        return b"[" * 100_000 + b"]" * 100_000
    if op == 4:
        return data.replace(b'"', b"'", 1)
    return data + data


RAY_ENTRYPOINT_ADAPTER = RayAdapter(RayOptions(default_walltime_s=3600, pricing="entrypoint"))


@dataclass(frozen=True)
class Target:
    """One parser entry point: an adapter, a route, a content type and the sample bodies to mutate."""

    name: str
    adapter: SchedulerAdapter
    method: str
    path: str
    content_type: str
    samples: list[Any]
    update: bool = False

    def match(self) -> RouteMatch:
        found = match_route(self.adapter.routes(), self.method, self.path)
        assert found is not None, (self.method, self.path)
        return found


SLURM = SlurmAdapter(SlurmOptions(partition_time_limits={"gpu": 2880}, default_time_limit_min=720))
KUBE = KubernetesAdapter(KubernetesOptions(default_walltime_s=3600))
MERGE = "application/merge-patch+json"
TARGETS = [
    Target("slurm-submit", SLURM, "POST", "/slurm/v0.0.38/job/submit", "application/json", SLURM_SAMPLES),
    Target("slurm-update", SLURM, "POST", "/slurm/v0.0.40/job/17", "application/json", SLURM_UPDATES, update=True),
    Target("ray-submit", RAY_ENTRYPOINT_ADAPTER, "POST", "/api/jobs/", "application/json",
           RAY_SAMPLES),
    Target("k8s-job", KUBE, "POST", "/apis/batch/v1/namespaces/a/jobs", "application/json", [K8S_JOB]),
    Target("k8s-pod", KUBE, "POST", "/api/v1/namespaces/a/pods", "application/json", [K8S_POD]),
    Target("k8s-put", KUBE, "PUT", "/apis/batch/v1/namespaces/a/jobs/j", "application/json", [K8S_JOB],
           update=True),
    Target("k8s-merge-patch", KUBE, "PATCH", "/apis/batch/v1/namespaces/a/jobs/j", MERGE,
           [*K8S_PATCHES, K8S_JOB], update=True),
    Target("k8s-json-patch", KUBE, "PATCH", "/apis/batch/v1/namespaces/a/jobs/j", "application/json-patch+json",
           K8S_JSON_PATCHES, update=True),
    Target("generic-submit", GenericAdapter(GENERIC_OPTIONS), "POST", "/v1/jobs", "application/json",
           GENERIC_SAMPLES),
]  # fmt: skip
CONTENT_TYPES = [None, "text/plain", "application/json; charset=latin-1", "application/yaml", MERGE, "application/json"]


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str | None
    encoding: str | None


def cases(target: Target, rng: random.Random, n: int) -> list[Case]:
    """`n` mutated bodies per sample: mostly structural, some byte-level, some re-encoded."""
    out: list[Case] = []
    for sample in target.samples:
        for _ in range(n):
            doc = copy.deepcopy(sample)
            for _ in range(rng.randint(1, 4)):
                doc = mutate(doc, rng)
            data = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
            if rng.random() < 0.1:
                data = byte_mutation(data, rng)
            content_type: str | None = target.content_type
            if rng.random() < 0.05:
                content_type = rng.choice(CONTENT_TYPES)
            encoding: str | None = None
            roll = rng.random()
            if roll < 0.08:
                data, encoding = gzip.compress(data), "gzip"
            elif roll < 0.1:
                data, encoding = gzip.compress(gzip.compress(data)), "gzip"  # twice: must be refused
            elif roll < 0.11:
                encoding = rng.choice(["br", "deflate", "gzip, gzip", "identity"])
            out.append(Case(data, content_type, encoding))
    return out


@pytest.fixture(scope="module")
def catalogue() -> GpuCatalogue:
    """The bundled pack's GPU catalogue, as the gateway prices with it."""
    problems: list[Problem] = []
    loaded = load_gpus(PACK_GPUS, problems)
    assert problems == []
    return loaded


def parse(target: Target, case: Case) -> JobSpec | None:
    match = target.match()
    if target.update:
        return target.adapter.parse_update(match, case.content_type, case.encoding, case.body)
    return target.adapter.parse_submission(match, case.content_type, case.encoding, case.body)


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_parsers_price_or_refuse_every_mutation(target: Target, catalogue: GpuCatalogue) -> None:
    """Thousands of mutated bodies each parse and price to a cost, or raise JobSpecInvalid / JobUpdateNotAllowed."""
    rng = random.Random(f"{SEED}-{target.name}")
    outcomes = {"priced": 0, "refused": 0, "unchanged": 0}
    for i, case in enumerate(cases(target, rng, CASES_PER_SAMPLE)):
        try:
            spec = parse(target, case)
            if spec is None:
                outcomes["unchanged"] += 1
                continue
            price(spec, catalogue, target.adapter.default_gpu_model, catalogue.utilisation)
            outcomes["priced"] += 1
        except (JobSpecInvalid, JobUpdateNotAllowed):  # 400 and 403
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure this test exists to find
            pytest.fail(f"case {i} of {target.name}: {type(exc).__name__}: {exc}; body={case.body[:400]!r} "
                        f"content_type={case.content_type!r} encoding={case.encoding!r}")  # fmt: skip
    # The mutations reach both sides: some still price (or change nothing), most are refused.
    assert outcomes["refused"] > 0 and outcomes["priced"] + outcomes["unchanged"] > 0, outcomes


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[tuple[Stack, Recorder]]:
    async with recorded_stack(tmp_path) as pair:
        yield pair


async def test_gateway_answers_every_mutation_with_2xx_or_4xx(
    recorded: tuple[Stack, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """Mutated Slurm submissions through a gateway get 200 (forwarded as sent) or a 4xx; then it still serves."""
    stack, recorder = recorded
    rng = random.Random(f"{SEED}-e2e")
    target = TARGETS[0]
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as client:
        for i, case in enumerate(cases(target, rng, 40)):
            headers = {**stack.auth("acme-us"), "Content-Type": case.content_type or ""}
            if case.encoding:
                headers["Content-Encoding"] = case.encoding
            forwarded = len(recorder.bodies)
            async with client.post(stack.url + target.path, data=case.body, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                assert resp.status == 200 or 400 <= resp.status < 500, (i, resp.status, case)
            if resp.status == 200:
                assert recorder.bodies[forwarded:] == [case.body], i  # exactly the bytes that were priced
            else:
                assert len(recorder.bodies) == forwarded, i
        assert statuses.get(200, 0) > 0 and sum(n for s, n in statuses.items() if s >= 400) > 0, statuses
        async with client.get(stack.admin_url + "/healthz") as health:
            assert health.status == 200
        good = json.dumps(SLURM_SAMPLES[0]).encode()
        headers = {**stack.auth("acme-us"), "Content-Type": "application/json"}
        async with client.post(stack.url + target.path, data=good, headers=headers) as resp:
            assert resp.status == 200
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
