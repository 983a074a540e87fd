"""Random quota histories written by the real LedgerWriter: several instance chains whose records interleave in time.

The records are the kinds the rebuild folds (decisions with leases, settles, refunds, releases,
extends, updates that replace a job, idempotency keys, shadow denials, refusals) among access
records and checkpoints, with follow-ups often written by another instance than their decision.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.ledger.signing import Signer
from gateway.adapters.ledger.writer import LedgerWriter

TENANTS = ("acme", "falcon", "kiwi", "zeta")
UPSTREAMS = ("slurm", "ray")


class Clock:
    """A settable clock for writers (their checkpoints' ts) and records."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class History:
    """What has been written so far, so that later records refer to it."""

    rng: random.Random
    leases: list[tuple[str, str]] = field(default_factory=list)  # (decision id, tenant)
    jobs: list[tuple[str, str, str]] = field(default_factory=list)  # (upstream, job id, decision id)
    serial: int = 0

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:06d}"


def _lease(h: History, tenant: str, ts: float, replaces: str | None) -> dict[str, Any]:
    rng = h.rng
    counters = [
        {"key": f"tenant:{tenant}", "kind": "held", "amount": rng.choice([0.0, 15832.0, 4992.5, 31664.0])},
        {"key": f"ops:{tenant}:{rng.choice(['llm-a', 'llm-b'])}", "kind": "cumulative",
         "amount": rng.choice([0.0, 989e12 * 5400, 1.0e17 / 3, 7.25e18])},
        {"key": f"budget:{tenant}:2025-01", "kind": "cumulative", "amount": rng.uniform(0, 5000)},
    ]  # fmt: skip
    if rng.random() < 0.3:
        counters.append({"key": f"group:{tenant}-group", "kind": "held", "amount": rng.uniform(1, 1e5)})
    return {
        "hash_tag": rng.choice(["quota", "AE", "US"]),
        "lease_end": ts + rng.choice([5.0, 60.0, 3600.0, 86_400.0 * 3]),
        "idempotency_key": f"idem-{tenant}-{rng.randrange(40)}" if rng.random() < 0.3 else None,
        "replaces_job": replaces,
        "counters": counters,
    }


def record(h: History, ts: float) -> dict[str, Any]:
    """One random record at `ts`, referring to what came before."""
    rng = h.rng
    roll = rng.random()
    if roll < 0.25 or not h.leases:
        tenant = rng.choice(TENANTS)
        decision_id = h.next_id("d")
        replaces = None
        route_kind = rng.choice(["submit", "submit", "submit", "true_up"])
        if h.jobs and rng.random() < 0.15:
            route_kind, replaces = "update", rng.choice(h.jobs)[1]
        decision = rng.choices(["allow", "shadow_deny", "deny"], [8, 1, 1])[0]
        body = {"kind": "decision", "route_kind": route_kind, "decision": decision, "decision_id": decision_id,
                "tenant": tenant, "ts": ts, "lease": _lease(h, tenant, ts, replaces)}  # fmt: skip
        if decision != "deny":
            h.leases.append((decision_id, tenant))
        return body
    if roll < 0.45:
        decision_id, tenant = rng.choice(h.leases[-50:])
        upstream = rng.choice(UPSTREAMS)
        job_id = str(rng.randrange(1, 60))
        h.jobs.append((upstream, job_id, decision_id))
        named = {"replaced_lease": rng.choice(h.leases)[0]} if rng.random() < 0.1 else {}
        return {"kind": "settle", "decision_id": decision_id, "ts": ts, "upstream": upstream, "job_id": job_id,
                "status": rng.choice([200, 200, 201, 500]), "tenant": tenant, **named}  # fmt: skip
    if roll < 0.52:
        decision_id, tenant = rng.choice(h.leases)
        return {"kind": "refund", "decision_id": decision_id, "ts": ts, "tenant": tenant}
    if roll < 0.60 and h.jobs:
        upstream, job_id, decision_id = rng.choice(h.jobs)
        extra: dict[str, Any] = {}
        if rng.random() < 0.2:
            extra["whole_job"] = False
        if rng.random() < 0.1:
            extra["held_for"] = ["other"]
        return {"kind": "release", "decision_id": decision_id, "ts": ts, "upstream": upstream, "job_id": job_id,
                **extra}  # fmt: skip
    if roll < 0.68 and h.jobs:
        upstream, job_id, decision_id = rng.choice(h.jobs)
        return {"kind": "extend", "decision_id": decision_id, "ts": ts, "upstream": upstream, "job_id": job_id,
                "end": ts + rng.choice([30.0, 600.0, 7200.0])}  # fmt: skip
    return {"kind": "access", "decision_id": h.next_id("a"), "ts": ts, "tenant": rng.choice(TENANTS),
            "path": "/slurm/v0.0.40/jobs", "decision": "allow"}  # fmt: skip


async def write_history(
    root: Path,
    h: History,
    instances: list[str],
    count: int,
    clock: Clock,
    *,
    signer: Signer | None,
    step: Callable[[random.Random], float] = lambda rng: rng.uniform(0.0, 2.0),
    jitter: float = 0.0,
    **options: Any,
) -> None:
    """Append `count` random records, each to a random instance's chain, the clock moving on between them.

    With `jitter`, a record's ts may lie up to that much before the clock (chains are then not strictly
    in time order, as in a gateway where a request's ts is taken before its record is queued).
    """
    writers = {}
    for name in instances:
        writer = LedgerWriter(root, name, batch_window_s=0, signer=signer, clock=clock,
                              checkpoint_every_records=7, **options)  # fmt: skip
        await writer.open()
        writers[name] = writer
    try:
        for _ in range(count):
            clock.now += step(h.rng)
            ts = clock.now - (h.rng.uniform(0, jitter) if jitter else 0.0)
            await writers[h.rng.choice(instances)].append(record(h, ts), wait=True)
    finally:
        for writer in writers.values():
            await writer.close()
