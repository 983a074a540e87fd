"""Start-up cost against ledger size: the quota rebuild from the whole ledger and from a quota snapshot.

Writes a ledger of gateway-shaped records with the real LedgerWriter (signed checkpoints; per
submission a decision with its lease and a settle, plus reads as access records, cancels and
reconciliation extends), growing it to each size asked. At each size, each step runs in its own
child process and is timed, with the child's peak RSS (wait4):

    rebuild (whole ledger)    exportgate quota rebuild --ledger L              (what start-up did before)
    snapshot (first)          exportgate quota snapshot ...                    (folds every record, writes one)
    rebuild (snapshot+tail)   exportgate quota rebuild --public-key ...        (what start-up does now)
    snapshot (incremental)    exportgate quota snapshot ...                    (the gateway's periodic run)
    ledger verify             exportgate ledger verify L --public-key ...
    serve to ready            exportgate serve (memory store) until /readyz is 200, with and without a snapshot

Each row gives wall time, the child's CPU time (user + system: steadier than wall time on a shared
machine) and records per CPU second, and its peak RSS (VmHWM for the served gateway).

`--tail` records are appended after the snapshot, as a gateway writes between its last
snapshot and a restart.

    python -m bench.startup_bench [--records 100000 1000000] [--tail 10000] [--dir DIR] [--no-serve]
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import ISSUER, POLICIES, ROOT, _token, free_port
from gateway.adapters.ledger import snapshot_files
from gateway.adapters.ledger.signing import generate, load_signer
from gateway.adapters.ledger.writer import LedgerWriter

INSTANCE = "bench"
STEP_S = 0.5  # the ledger's clock moves this much per record: 1,000,000 records span about six days
TENANTS = [f"tenant-{i:03d}" for i in range(400)]


@dataclass
class Run:
    """One child process: wall time, CPU time (user + system), peak RSS and what it said."""

    seconds: float
    cpu: float
    rss_mb: float
    out: str


def child(argv: list[str], env: dict[str, str] | None = None) -> Run:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{out}")
    lines = out.strip().splitlines()
    said = [line for line in lines if line.startswith(("read ", "wrote ", "ok: "))] or lines[-1:]
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, said[0] if said else "")


def exportgate(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "gateway", *map(str, args)]


# -- the ledger ---------------------------------------------------------------------------------


class Gen:
    """Gateway-shaped record bodies: 3 reads per submission, every 10th job cancelled, every 4th extended."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.jobs: list[tuple[str, str]] = []

    def _common(self, tenant: str, ts: float) -> dict[str, Any]:
        return {
            "ts": ts, "tenant": tenant, "issuer": ISSUER, "client_ip": "10.1.2.3", "entry": "proxy",
            "countries": {"location": "US", "headquarters": "US", "parent": "US"}, "tier": 2, "kyc": "verified",
            "method": "POST", "upstream": "slurm", "basis": "lpp", "licences": [], "exemptions": [],
            "policy": {"name": "ai-diffusion-2025", "version": "2025.1", "hash": "9de4eb76" * 8},
            "registry": "021a5ba61477506f", "code": None, "reasons": [],
        }  # fmt: skip

    def submission(self, ts: float) -> list[dict[str, Any]]:
        self.n += 1
        rng, tenant = self.rng, self.rng.choice(TENANTS)
        decision_id = f"{self.n:032x}"
        tpp = 15832.0 * rng.choice([1, 1, 2, 4, 8])
        counters = [{"key": f"tenant:{tenant}", "kind": "held", "amount": tpp},
                    {"key": "country:US", "kind": "held", "amount": tpp}]  # fmt: skip
        if rng.random() < 0.3:
            counters.append({"key": f"ops:{tenant}:llm-{rng.randrange(3)}", "kind": "cumulative",
                             "amount": 3.5604e18 * tpp / 15832.0})  # fmt: skip
        if rng.random() < 0.3:
            counters.append({"key": f"budget:{tenant}:2025-10", "kind": "cumulative", "amount": tpp})
        walltime = rng.choice([3600.0, 7200.0, 86400.0])
        lease = {"hash_tag": "quota", "lease_end": ts + walltime + 600, "replaces_job": None, "counters": counters,
                 "idempotency_key": f"idem-{self.n}" if rng.random() < 0.2 else None}  # fmt: skip
        decision = self._common(tenant, ts) | {
            "kind": "decision", "decision_id": decision_id, "route": "slurm.job.submit", "route_kind": "submit",
            "path": "/slurm/v0.0.38/job/submit", "decision": "allow", "lease": lease,
            "job": {"lineage": None, "purpose": None, "walltime_s": walltime,
                    "parts": [{"concurrency": 1, "gpus": int(tpp // 15832), "model": "h100"}]},
            "cost": {"tpp": tpp, "tpp_hours": tpp * walltime / 3600, "training_ops": 0.0, "walltime_s": walltime,
                     "gpus": int(tpp // 15832), "chip_tpp_max": 15832.0, "chip_tpp_min": 15832.0},
            "quota_before": {c["key"]: 0.0 for c in counters}, "quota_after": {c["key"]: c["amount"] for c in counters},
        }  # fmt: skip
        job_id = str(self.n)
        self.jobs.append((job_id, decision_id))
        settle = {"kind": "settle", "decision_id": decision_id, "ts": ts, "tenant": tenant, "upstream": "slurm",
                  "job_id": job_id, "status": 200, "settled": True}  # fmt: skip
        out = [decision, settle]
        if self.n % 10 == 0:
            job_id, lease_id = self.rng.choice(self.jobs[-50:])
            out.append({"kind": "release", "decision_id": lease_id, "ts": ts, "upstream": "slurm",
                        "job_id": job_id, "released": True, "whole_job": True, "tenant": tenant})  # fmt: skip
        if self.n % 4 == 0:
            job_id, lease_id = self.rng.choice(self.jobs[-50:])
            out.append({"kind": "extend", "decision_id": lease_id, "ts": ts, "upstream": "slurm", "job_id": job_id,
                        "end": ts + 7200.0, "reason": "running", "tenant": tenant})  # fmt: skip
        for _ in range(3):
            out.append(self._common(self.rng.choice(TENANTS), ts) | {
                "kind": "access", "decision_id": f"a{self.rng.getrandbits(96):024x}", "route": "slurm.jobs",
                "route_kind": "read", "method": "GET", "path": "/slurm/v0.0.38/jobs", "decision": "allow",
                "lease": None, "job": None, "cost": None, "quota_before": None, "quota_after": None,
            })  # fmt: skip
        return out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def grow(root: Path, key: Path, gen: Gen, clock: Clock, records: int) -> None:
    """Append about `records` records (whole submissions) to the bench chain."""
    writer = LedgerWriter(root, INSTANCE, signer=load_signer(key), clock=clock, queue_limit=1 << 20,
                          max_batch=4096, checkpoint_every_s=1e9)  # fmt: skip
    await writer.open()
    written = 0
    while written < records:
        for body in gen.submission(clock.now):
            clock.now += STEP_S
            await writer.append(body, wait=False)
            written += 1
        if gen.n % 2000 == 0:
            await writer.append({"kind": "note", "ts": clock.now}, wait=True)  # let the queue drain
            written += 1
    await writer.close()


def count(root: Path) -> int:
    manifest = json.loads((root / INSTANCE / "manifest.json").read_text())
    return int(manifest["head"]["seq"])


# -- a served gateway ---------------------------------------------------------------------------


def serve_to_ready(work: Path, root: Path, key: Path, snapshot_dir: Path) -> Run:
    """Start `exportgate serve` on this ledger (memory store, signed) and time it until /readyz answers 200."""
    token, jwks = _token()
    del token
    (work / "jwks.json").write_text(json.dumps(jwks))
    port, admin = free_port(), free_port()
    config = work / "gateway.yaml"
    config.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
instance_id: {INSTANCE}
policy: {{pack: {POLICIES / "ai-diffusion-2025"}, registry: {POLICIES / "tenants.example.yaml"}}}
ledger: {{dir: {root}, signing_key_file: {key}, snapshot_dir: {snapshot_dir}, snapshot_every_s: 0}}
quota: {{store: memory}}
shutdown: {{drain_s: 0}}
auth:
  issuers: [{{issuer: "{ISSUER}", audiences: [exportgate], algorithms: [RS256], jwks_file: {work / "jwks.json"}}}]
upstreams:
  - name: slurm
    url: http://127.0.0.1:{free_port()}
    scheduler: slurm
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    started = time.perf_counter()
    proc = subprocess.Popen(exportgate("serve", "--config", config), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                tail = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")[-3000:]
                raise SystemExit(f"exportgate serve exited {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
        elapsed = time.perf_counter() - started
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        rss = int(hwm.split()[1]) / 1024
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    rebuilt = [_message(line) for line in err.decode(errors="replace").splitlines() if "quota: rebuilt" in line]
    return Run(elapsed, cpu, rss, rebuilt[-1] if rebuilt else "")


def _message(line: str) -> str:
    try:
        return str(json.loads(line).get("message", line))
    except (ValueError, AttributeError):
        return line


# -- the run ------------------------------------------------------------------------------------


def row(label: str, records: int, run: Run) -> None:
    rate = f"{records / run.cpu:>14,.0f}" if run.cpu else f"{'':>14}"
    print(f"{label:<34}{records:>12,}{run.seconds:>9.2f}{run.cpu:>9.2f}{rate}{run.rss_mb:>9.0f}   {run.out[:100]}",
          flush=True)  # fmt: skip


def run(work: Path, sizes: list[int], tail: int, serve: bool) -> None:
    key, public = work / "key.pem", work / "key.pub.pem"
    generate(key, public)
    root, snaps = work / "ledger", work / "snapshots"
    # The ledger ends about now, so that a served gateway (on the real clock) finds recent leases live.
    gen, clock = Gen(), Clock(time.time() - (max(sizes) + tail * len(sizes)) * STEP_S - 600)
    print(f"{'step':<34}{'records':>12}{'wall s':>9}{'cpu s':>9}{'records/cpu s':>14}{'peak MB':>9}   output")
    for size in sorted(sizes):
        started = time.perf_counter()
        asyncio.run(grow(root, key, gen, clock, size - tail - (count(root) if (root / INSTANCE).exists() else 0)))
        megabytes = sum(p.stat().st_size for p in (root / INSTANCE).glob("*.jsonl")) / 1e6
        took = time.perf_counter() - started
        print(f"-- wrote the ledger to {count(root):,} records in {took:.1f} s ({megabytes:,.0f} MB)", flush=True)
        total = count(root)
        now = str(clock.now + 1)
        row(
            "quota rebuild (whole ledger)", total, child(exportgate("quota", "rebuild", "--ledger", root, "--now", now))
        )
        shutil.rmtree(snaps, ignore_errors=True)
        snap = exportgate("quota", "snapshot", "--ledger", root, "--signing-key", key, "--snapshot-dir", snaps,
                          "--now", now, "--until", now)  # fmt: skip
        first = child(snap)
        row("quota snapshot (first, all)", total, first)
        size_mb = snapshot_files.listing(snaps)[0].stat().st_size / 1e6
        asyncio.run(grow(root, key, gen, clock, tail))
        total, now = count(root), str(clock.now + 1)
        rebuilt = child(exportgate("quota", "rebuild", "--ledger", root, "--now", now, "--public-key", public,
                                   "--snapshot-dir", snaps))  # fmt: skip
        row(f"quota rebuild (snapshot {size_mb:.0f} MB+tail)", total, rebuilt)
        snap[-3:] = [now, "--until", now]
        row("quota snapshot (incremental)", total, child(snap))
        row("ledger verify", total, child(exportgate("ledger", "verify", root, "--public-key", public)))
        if serve:
            row("serve to /readyz (snapshot)", total, serve_to_ready(work, root, key, snaps))
            shutil.rmtree(work / "none", ignore_errors=True)  # the last run's shutdown may have written one
            row("serve to /readyz (no snapshot)", total, serve_to_ready(work, root, key, work / "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000], help="ledger sizes")
    parser.add_argument("--tail", type=int, default=10_000, help="records written after the snapshot")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk)")
    parser.add_argument("--no-serve", dest="serve", action="store_false", help="skip the served gateway rows")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=".startup-bench-", dir=args.dir))
    try:
        run(work, args.records, args.tail, args.serve)
    finally:
        if not args.keep:
            shutil.rmtree(work)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
