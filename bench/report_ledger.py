"""A large synthetic ledger (a year of a cloud's decisions, signed and hash-chained like the writer's) and the time
and peak memory each `exportgate report` takes on it.

    python -m bench.report_ledger --records 1000000 --out /tmp/big-ledger     # write it, then run every report
    python -m bench.report_ledger --records 1000000 --out /tmp/big-ledger --reuse

The ledger has two chains (two gateways), checkpoints signed every 1,000 records and segments of 100,000
records. Tenants: Tier 1 (US and allies), Tier 2 with and without parent groups (the LPP allowance refuses
some of their jobs), National and Universal VEU tenants, Tier 3 and KYC refusals; jobs are settled, some
released early or refunded; reads are `access` records from a few client IPs per tenant. The generator
keeps its own held totals, so `quota_after` and the refusals are consistent with the caps.
"""

import argparse
import heapq
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.sealing import Checkpoints
from gateway.adapters.ledger.signing import Signer, generate, load_signer
from gateway.core.ledger import GENESIS, line_of, sealed_line

H100_TPP = 15_832.0
H100_FLOPS = 989e12
LPP_TPP = 26_900_000.0
THRESHOLD_OPS = 1e26
START = datetime(2025, 7, 1, tzinfo=UTC).timestamp()
SPAN_S = 365 * 86_400.0
POLICY = {"name": "ai-diffusion-2025", "version": "2025.1", "hash": "0" * 64}
KINDS = ("compute-held", "aia-trigger", "veu", "large-training", "refusals-access")


class ChainWriter:
    """Appends records to one instance's chain as the ledger writer lays them out: sealed lines in numbered
    segments, a signed checkpoint after every `every` records and at close, and the manifest."""

    def __init__(self, root: Path, instance: str, signer: Signer, every: int = 1000, per_segment: int = 100_000):
        self.dir = root / instance
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = Checkpoints(instance, signer, every, 1e9)
        self.instance, self.every, self.per_segment = instance, every, per_segment
        self.seq, self.head, self.since, self.in_segment, self.number = 0, GENESIS, 0, 0, 1
        self.fh = (self.dir / files.segment_name(1)).open("wb")
        self.last_ts = 0.0
        self.last_checkpoint: dict[str, Any] | None = None

    def _line(self, line: bytes, record: Mapping[str, Any]) -> None:
        if self.in_segment >= self.per_segment:
            self.fh.close()
            self.number += 1
            self.fh = (self.dir / files.segment_name(self.number)).open("wb")
            self.in_segment = 0
        self.fh.write(line)
        self.in_segment += 1
        self.seq, self.head = record["seq"], record["hash"]

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        record, line = sealed_line(body, instance=self.instance, seq=self.seq + 1, prev_hash=self.head)
        self._line(line, record)
        self.last_ts = float(body["ts"])
        self.since += 1
        if self.since >= self.every:
            self.checkpoint("records")
        return record

    def checkpoint(self, reason: str) -> None:
        if self.since == 0:
            return
        record = self.checkpoints.make(self.seq, self.head, self.last_ts, reason)
        self._line(line_of(record), record)
        self.since, self.last_checkpoint = 0, record

    def close(self) -> None:
        self.checkpoint("close")
        self.fh.close()
        head = {"seq": self.seq, "hash": self.head}
        manifest = {"v": 1, "instance": self.instance, "updated": self.last_ts, "head": head,
                    "checkpoint": self.last_checkpoint, "segments": []}  # fmt: skip
        files.write_json(self.dir / files.MANIFEST, manifest)


@dataclass
class Tenant:
    id: str
    location: str
    headquarters: str
    parent: str
    tier: int
    kyc: str = "verified"
    group: str | None = None
    veu: str | None = None
    weight: float = 1.0
    gpus: tuple[int, ...] = (8,)
    lineages: tuple[str, ...] = ("default",)
    ips: tuple[str, ...] = ()

    def countries(self) -> dict[str, str]:
        return {"location": self.location, "headquarters": self.headquarters, "parent": self.parent}


def tenants(rng: random.Random, count: int) -> list[Tenant]:
    """A mix of every kind of tenant the reports tell apart."""
    out: list[Tenant] = []
    tier1 = ["US", "US", "US", "SE", "JP", "DE", "GB", "FR"]
    tier2 = ["IN", "AE", "SG", "BR", "MX", "SA", "IL", "PL", "MY", "TR"]
    for i in range(count):
        roll = i % 20
        ips = tuple(f"10.{i // 250}.{i % 250}.{k + 1}" for k in range(1 + i % 4))
        sizes = (8, 16, 64) if i % 7 else (256, 1024, 4096)
        lineages = tuple(f"model-{i}-{k}" for k in range(1 + i % 3))
        if roll < 7:
            c = tier1[i % len(tier1)]
            t = Tenant(f"t1-{c.lower()}-{i}", c, c, c, 1, weight=2.0, gpus=sizes, lineages=lineages)
        elif roll < 15:
            c = tier2[i % len(tier2)]
            group = f"group-{i // 3}" if roll in (9, 10, 11) else None
            t = Tenant(f"t2-{c.lower()}-{i}", c, c, c, 2, group=group, gpus=sizes, lineages=lineages)
        elif roll == 15:
            c = tier2[(i // 20) % len(tier2)]
            t = Tenant(f"nveu-{c.lower()}-{i}", c, c, c, 2, veu="national", weight=3.0, gpus=(256, 1024))
            t.lineages = lineages
        elif roll == 16:
            c = tier2[(i // 20 + 3) % len(tier2)]
            t = Tenant(f"uveu-us-{i}", c, "US", "US", 2, veu="universal", weight=2.0, gpus=(512,), lineages=lineages)
        elif roll == 17:
            t = Tenant(f"t3-cn-{i}", "CN", "CN", "CN", 3, weight=0.3)
        elif roll == 18:
            c = tier2[i % len(tier2)]
            t = Tenant(f"kyc-{c.lower()}-{i}", c, c, c, 2, kyc="pending" if i % 2 else "expired", weight=0.3)
        else:  # a National VEU training frontier models: the training threshold refuses it in the end
            c = tier2[(i // 20 + 1) % len(tier2)]
            t = Tenant(f"nveu-big-{c.lower()}-{i}", c, c, c, 2, veu="national", weight=4.0, gpus=(2048, 8192))
            t.lineages = (f"frontier-{i}",)
        t.ips = ips
        out.append(t)
    return out


def nveu_cap(ts: float) -> float:
    steps = [("2025-01-01", 633e6), ("2025-04-01", 949.5e6), ("2025-07-01", 1266e6), ("2025-10-01", 1582.5e6),
             ("2026-01-01", 1899e6), ("2026-04-01", 2690.25e6), ("2026-07-01", 3481.5e6)]  # fmt: skip
    day = datetime.fromtimestamp(ts, UTC).date().isoformat()
    return max((tpp for since, tpp in steps if since <= day), default=0.0)


@dataclass
class World:
    """The generator's own quota state: held counters, cumulative training operations, live leases by end."""

    held: dict[str, float] = field(default_factory=dict)
    ops: dict[str, float] = field(default_factory=dict)
    ends: list[tuple[float, str]] = field(default_factory=list)
    leases: dict[str, tuple[list[tuple[str, float]], bool]] = field(default_factory=dict)  # id -> (held debits, live)

    def expire(self, ts: float) -> None:
        while self.ends and self.ends[0][0] <= ts:
            _, lease_id = heapq.heappop(self.ends)
            self.free(lease_id)

    def free(self, lease_id: str) -> None:
        debits, live = self.leases.get(lease_id, ([], False))
        if live:
            for key, amount in debits:
                self.held[key] -= amount
            self.leases[lease_id] = (debits, False)

    def forget(self, ts: float) -> None:
        if len(self.leases) > 200_000:
            self.leases = {k: v for k, v in self.leases.items() if v[1]}


def _decision(t: Tenant, ts: float, n: int, kind: str = "decision") -> dict[str, Any]:
    return {"kind": kind, "entry": "proxy", "decision_id": f"d{n:09d}", "ts": ts, "tenant": t.id,
            "issuer": "https://idp.example.com", "client_ip": t.ips[n % len(t.ips)], "countries": t.countries(),
            "tier": t.tier, "kyc": t.kyc, "upstream": "slurm", "licences": [], "exemptions": [],
            "policy": POLICY, "registry": "synthetic", "reasons": [], "code": None, "decision": "allow",
            "job": None, "cost": None, "lease": None, "quota_before": None, "quota_after": None}  # fmt: skip


def submission(t: Tenant, ts: float, n: int, rng: random.Random, world: World) -> tuple[dict[str, Any], bool]:
    """A submission decided as the gateway would: refused for tier 3 or KYC, else priced, planned and judged."""
    body = _decision(t, ts, n)
    body.update(route="slurm.job.submit", route_kind="submit", method="POST", path="/slurm/v0.0.38/job/submit")
    if t.tier == 3:
        reason = {"code": "tier3_embargoed", "rule": "tier3", "enforced": True, "detail": f"{t.location} is Tier 3"}
        body.update(decision="deny", code="tier3_embargoed", basis="tier_default", reasons=[reason])
        return body, False
    if t.kyc != "verified":
        code = "kyc_expired" if t.kyc == "expired" else "kyc_not_verified"
        body.update(decision="deny", code=code, basis="tier_default", reasons=[
            {"code": code, "rule": "kyc", "enforced": True, "detail": f"KYC status is {t.kyc}"}])  # fmt: skip
        return body, False
    gpus = rng.choice(t.gpus)
    walltime = rng.choice((3600.0, 4 * 3600.0, 12 * 3600.0, 48 * 3600.0))
    tpp, ops = gpus * H100_TPP, gpus * H100_FLOPS * walltime
    lineage = rng.choice(t.lineages)
    purpose = "inference" if n % 11 == 0 else None
    body["job"] = {"parts": [{"gpus": gpus, "model": "h100", "concurrency": 1}], "walltime_s": walltime,
                   "purpose": purpose, "lineage": lineage}  # fmt: skip
    body["cost"] = {"tpp": tpp, "tpp_hours": tpp * walltime / 3600, "training_ops": ops, "walltime_s": walltime,
                    "gpus": gpus, "chip_tpp_max": H100_TPP, "chip_tpp_min": H100_TPP}  # fmt: skip
    if t.tier == 1:
        basis, key, cap = "tier1_uncapped", f"tenant:{t.id}", None
    elif t.veu == "national":
        basis, key, cap = "veu_national", f"veu:{t.id}", nveu_cap(ts)
    elif t.veu == "universal":
        basis, key, cap = "veu_universal", f"veu:{t.id}", None
    else:
        basis, key, cap = "lpp", f"group:{t.group}" if t.group else f"tenant:{t.id}", LPP_TPP
    counters = [(key, "held", tpp, cap, "quota_tenant_tpp", "tenant_cap")]
    if t.tier != 1 and purpose is None:
        for key in (f"ops:{t.id}:{lineage}", f"ops:{t.id}:*"):
            counters.append((key, "cumulative", ops, THRESHOLD_OPS, "licence_required", "training_threshold"))
    elif purpose is not None and t.tier != 1:
        body["exemptions"] = [f"purpose:{purpose}"]
    before = {k: (world.held if kind == "held" else world.ops).get(k, 0.0) for k, kind, *_ in counters}
    failing = next((c for c in counters if c[3] is not None and before[c[0]] + c[2] > c[3]), None)
    end = ts + walltime + 3600.0
    body["basis"] = basis
    body["lease"] = {"hash_tag": "quota", "lease_end": end, "idempotency_key": None, "replaces_job": None,
                     "counters": [{"key": k, "kind": kind, "amount": a} for k, kind, a, *_ in counters]}  # fmt: skip
    body["quota_before"] = before
    if failing is not None:
        k, _, amount, cap, code, rule = failing
        detail = (f"training operations for lineage {lineage!r} would be {before[k] + amount:.4g}, against a cap of "
                  f"{cap:.4g}, without a licence" if code == "licence_required" else
                  f"TPP held at once would be {before[k] + amount:,.0f}, over the cap of {cap:,.0f}")  # fmt: skip
        body.update(decision="deny", code=code, quota_after=before,
                    reasons=[{"code": code, "rule": rule, "enforced": True, "detail": detail}])  # fmt: skip
        return body, False
    held_debits = []
    for k, kind, amount, *_ in counters:
        store = world.held if kind == "held" else world.ops
        store[k] = store.get(k, 0.0) + amount
        if kind == "held":
            held_debits.append((k, amount))
    body["quota_after"] = {k: (world.held if kind == "held" else world.ops)[k] for k, kind, *_ in counters}
    world.leases[body["decision_id"]] = (held_debits, True)
    heapq.heappush(world.ends, (end, body["decision_id"]))
    return body, True


def bodies(records: int, seed: int = 15, tenant_count: int = 200) -> Iterator[tuple[int, dict[str, Any]]]:
    """(chain index, record body) in time order, about `records` of them over a year."""
    rng = random.Random(seed)
    people = tenants(rng, tenant_count)
    weights = [t.weight for t in people]
    world = World()
    pending: list[tuple[float, int, int, dict[str, Any]]] = []  # (ts, order, chain, body)
    gap = SPAN_S / (records / 2.2)  # each arrival makes about 2.2 records
    ts, n, written = START, 0, 0
    while written < records:
        ts += rng.expovariate(1.0 / gap)
        while pending and pending[0][0] <= ts and written < records:
            due, _, chain, body = heapq.heappop(pending)
            world.expire(due)
            if body["kind"] == "release":
                world.free(body["decision_id"])
            elif body["kind"] == "refund":
                world.free(body["decision_id"])
                for k, kind, amount in (
                    (c["key"], c["kind"], c["amount"]) for c in body.pop("_counters")
                ):  # cumulative debits are given back on a refund
                    if kind == "cumulative":
                        world.ops[k] -= amount
            written += 1
            yield chain, body
        if written >= records:
            break
        world.expire(ts)
        n += 1
        t = rng.choices(people, weights)[0]
        chain = n % 2
        if rng.random() < 0.3:
            access = _decision(t, ts, n, "access")
            access.update(route="slurm.jobs", route_kind="list", method="GET", path="/slurm/v0.0.38/jobs",
                          basis="tier_default")  # fmt: skip
            if t.tier == 3 or t.kyc == "pending":
                code = "tier3_embargoed" if t.tier == 3 else "kyc_not_verified"
                access.update(decision="deny", code=code, reasons=[{"code": code, "rule": "kyc", "enforced": True,
                                                                     "detail": "refused"}])  # fmt: skip
            written += 1
            yield chain, access
            continue
        body, admitted = submission(t, ts, n, rng, world)
        written += 1
        yield chain, body
        if not admitted:
            continue
        decision_id = body["decision_id"]
        if rng.random() < 0.03:
            refund = {"kind": "refund", "decision_id": decision_id, "ts": ts + 0.5, "tenant": t.id,
                      "upstream": "slurm", "reason": "upstream_status_502", "refunded": True,
                      "_counters": body["lease"]["counters"]}  # fmt: skip
            heapq.heappush(pending, (ts + 0.5, n, chain, refund))
            continue
        job_id = str(n)
        settle = {"kind": "settle", "decision_id": decision_id, "ts": ts + 0.05, "tenant": t.id, "upstream": "slurm",
                  "job_id": job_id, "status": 200, "settled": True}  # fmt: skip
        heapq.heappush(pending, (ts + 0.05, n, chain, settle))
        if rng.random() < 0.4:
            walltime = body["cost"]["walltime_s"]
            at = ts + walltime * rng.uniform(0.1, 0.9)
            release = {"kind": "release", "decision_id": decision_id, "ts": at, "tenant": t.id, "upstream": "slurm",
                       "job_id": job_id, "released": True, "whole_job": True, "reason": "reconciled"}  # fmt: skip
            heapq.heappush(pending, (at, n, chain, release))
        world.forget(ts)


def write_ledger(root: Path, records: int, signer: Signer, seed: int = 15) -> int:
    writers = [ChainWriter(root, f"gw-{i + 1}", signer) for i in range(2)]
    count = 0
    for chain, body in bodies(records, seed):
        writers[chain].append(body)
        count += 1
    for writer in writers:
        writer.close()
    return count


def _run_report(kind: str, root: Path, public: Path, out: Path, fmt: str) -> tuple[float, float, str]:
    """Wall time and peak RSS (MB) of one `exportgate report` process, and its last line."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "gateway", "report", kind, "--ledger", str(root), "--public-key", str(public),
           "--out", str(out), "--format", fmt]  # fmt: skip
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    peak_kb = float(proc.stderr.strip().splitlines()[-1])
    return elapsed, peak_kb / 1024, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True, help="directory for the ledger, its keys and the reports")
    parser.add_argument("--reuse", action="store_true", help="the ledger is already there: only run the reports")
    parser.add_argument("--format", choices=("html", "csv", "json"), default="html")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    args = parser.parse_args()
    root, keys = args.out / "ledger", args.out / "keys"
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
        keys.mkdir(parents=True)
        generate(keys / "ledger.pem", keys / "ledger.pub.pem")
        started = time.perf_counter()
        count = write_ledger(root, args.records, load_signer(keys / "ledger.pem"))
        size = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
        print(f"wrote {count:,} records ({size / 1e6:,.0f} MB, 2 chains) in {time.perf_counter() - started:.1f} s")
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'report':<16} {'seconds':>8} {'peak RSS MB':>12}  output")
    for kind in args.kinds:
        out = args.out / f"{kind}.{args.format}"
        elapsed, peak, _ = _run_report(kind, root, keys / "ledger.pub.pem", out, args.format)
        print(f"{kind:<16} {elapsed:>8.1f} {peak:>12.0f}  {out} ({out.stat().st_size / 1e3:,.0f} kB)")
    print(json.dumps({"generator_peak_rss_mb": round(peak_self)}))


if __name__ == "__main__":
    main()
