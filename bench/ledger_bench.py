"""Durable ledger records per second with group commit against one fsync per record, and verify throughput."""

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from gateway.adapters.ledger.signing import generate, load_public_key, load_signer
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.cli.ledger import check_instance
from gateway.core.verify import TrustedKey

BODY = {
    "kind": "decision",
    "decision": "allow",
    "tenant": "acme-us",
    "countries": {"location": "US", "headquarters": "US", "parent": "US"},
    "cost": {"tpp": 31664.0, "tpp_hours": 31664.0, "training_ops": 0.0},
    "policy": {"name": "ai-diffusion-2025", "version": "1", "hash": "0" * 64},
    "reasons": [],
}


async def durable_rate(directory: Path, records: int, concurrency: int, **options: object) -> tuple[float, int]:
    """Records per second when `concurrency` requests each wait for their record's fsync; and fsyncs made."""
    batches: list[int] = []
    writer = LedgerWriter(directory, "bench", on_commit=lambda n, s: batches.append(n), **options)  # type: ignore[arg-type]
    await writer.open()
    remaining = records

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await writer.append({**BODY, "ts": time.time()}, wait=True)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await writer.close()
    return records / elapsed, len(batches)


def verify_rate(directory: Path, public: Path) -> tuple[float, int]:
    key = load_public_key(public)
    started = time.perf_counter()
    check, _ = check_instance(directory / "bench", TrustedKey(key.key_id, key.verify), [])
    elapsed = time.perf_counter() - started
    assert check.finding is None, check.finding
    return check.records / elapsed, check.records


async def run(work: Path, records: int, baseline_records: int, concurrency: int, verify_records: int) -> None:
    generate(work / "key.pem", work / "key.pub.pem")
    signer = load_signer(work / "key.pem")
    group, group_fsyncs = await durable_rate(work / "group", records, concurrency, signer=signer)
    windowed, windowed_fsyncs = await durable_rate(
        work / "windowed", records, concurrency, signer=signer, batch_window_s=0.002
    )
    single, single_fsyncs = await durable_rate(
        work / "single", baseline_records, concurrency, signer=signer, batch_window_s=0, max_batch=1
    )
    print(f"{'':34}{'records/s':>12}{'records':>10}{'batches':>10}")
    print(f"{'group commit (default: no window)':34}{group:>12.0f}{records:>10}{group_fsyncs:>10}")
    print(f"{'group commit (2 ms window)':34}{windowed:>12.0f}{records:>10}{windowed_fsyncs:>10}")
    print(f"{'one fsync per record (baseline)':34}{single:>12.0f}{baseline_records:>10}{single_fsyncs:>10}")
    print(f"ratio group/baseline: {group / single:.1f}x  ({concurrency} requests waiting at once)")
    await durable_rate(work / "verify", verify_records, 256, signer=signer, segment_max_bytes=4 << 20)
    rate, checked = verify_rate(work / "verify", work / "key.pub.pem")
    print(f"verify: {rate:.0f} records/s ({checked} records with checkpoints every 1000, signatures checked)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000, help="records written with group commit")
    parser.add_argument("--baseline-records", type=int, default=1_000, help="records written one fsync each")
    parser.add_argument("--concurrency", type=int, default=64, help="requests waiting for the ledger at once")
    parser.add_argument("--verify-records", type=int, default=100_000, help="records in the ledger verified")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk: fsync matters)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=".ledger-bench-", dir=args.dir))
    try:
        asyncio.run(run(work, args.records, args.baseline_records, args.concurrency, args.verify_records))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
