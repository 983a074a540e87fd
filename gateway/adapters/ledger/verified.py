"""A ledger read while it is verified: each chain's lines go through the verifier (`core.verify.ChainCheck`) as
they are read, so a report can stream the records once and then say whether, and up to which heads, the
chains it read verified. `ledger verify` runs the same check on each chain alone."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.reader import Located, instance_dirs, live_segments, merged, read_instance
from gateway.core.verify import ChainCheck, Expected, Finding, Kind, TrustedKey, Where


def manifest_head(instance_dir: Path) -> list[Expected]:
    """The head the chain's manifest names: the chain must still reach it."""
    manifest = files.read_json(instance_dir / files.MANIFEST) or {}
    head = manifest.get("head") or {}
    if isinstance(head.get("seq"), int) and head["seq"] > 0 and isinstance(head.get("hash"), str):
        return [Expected(head["hash"], head["seq"], str(instance_dir / files.MANIFEST))]
    return []


def checked_lines(instance_dir: Path, check: ChainCheck, warnings: list[str]) -> Iterator[Located]:
    """One chain's lines (the prune anchor left out), each fed to `check` before it is passed on; `check` is
    finished when the chain ends. A torn, uncommitted last line ends it with a warning; a problem ends it early."""
    live = live_segments(instance_dir)
    newest = live[-1].name if live else None
    for loc in read_instance(instance_dir, with_anchor=True):
        if not loc.complete and loc.segment == newest:
            warnings.append(f"{instance_dir / loc.segment}:{loc.line}: torn last line (never committed) ignored")
            break
        check.feed(Where(loc.segment, loc.line), loc.record)
        if check.done:
            break
        if loc.segment != files.ANCHOR:
            yield loc
    check.finish()


def check_instance(instance_dir: Path, key: TrustedKey, expected: list[Expected]) -> tuple[ChainCheck, list[str]]:
    """Stream one chain through the verifier; also return warnings (a torn, uncommitted last line)."""
    check = ChainCheck(key, [*expected, *manifest_head(instance_dir)])
    warnings: list[str] = []
    for _ in checked_lines(instance_dir, check, warnings):
        pass
    return check, warnings


@dataclass(slots=True)
class Chain:
    """One chain as it was read: its directory, its check and its warnings."""

    name: str
    directory: Path
    check: ChainCheck
    warnings: list[str] = field(default_factory=list)

    def problem(self, root: Path) -> str | None:
        """`DIR/<instance>/<segment>:<line>: <kind>: <detail>`, as `ledger verify` prints it, or None."""
        found = self.check.finding
        if found is None:
            return None
        where = f"{root / self.name / found.where.segment}:{found.where.line}" if found.where.line else root / self.name
        return f"{where}: {found.kind}: {found.detail}"

    def head(self) -> dict[str, Any]:
        c = self.check
        signed = c.checkpoint[0] if c.checkpoint else c.start_seq
        return {
            "instance": self.name,
            "records": c.records,
            "checkpoints": c.checkpoints,
            "head_seq": c.seq,
            "head_hash": c.hash,
            "signed_through_seq": c.checkpoint[0] if c.checkpoint else None,
            "hash_chain_only": c.seq - signed,
            "from_prune_anchor_seq": c.start_seq or None,
        }


@dataclass(slots=True)
class VerifiedLedger:
    """Every chain of a ledger directory, merged by time while each is verified (consume `records()` once)."""

    root: Path
    key: TrustedKey
    expected: dict[str, list[Expected]] = field(default_factory=dict)
    chains: list[Chain] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def records(self) -> Iterator[dict[str, Any]]:
        dirs = {d.name: d for d in instance_dirs(self.root)}
        self.missing = [
            f"{self.root / name}: {Kind.MISSING_CHAIN}: {self.expected[name][0].source} names a chain not here"
            for name in sorted(set(self.expected) - set(dirs))
        ]
        self.chains = [
            Chain(name, d, ChainCheck(self.key, [*self.expected.get(name, []), *manifest_head(d)]))
            for name, d in sorted(dirs.items())
        ]
        starts = {c.name: checked_lines(c.directory, c.check, c.warnings) for c in self.chains}
        for _, _, record in merged(starts):
            yield record

    def problems(self) -> list[str]:
        """Each failed chain's first problem (after `records()` was consumed)."""
        found = [p for c in self.chains if (p := c.problem(self.root)) is not None]
        return [*self.missing, *found]

    def warnings(self) -> list[str]:
        return [w for c in self.chains for w in c.warnings]

    def statement(self) -> str:
        """What a report read: `from a ledger whose chains verified with key K up to heads H`."""
        heads = ", ".join(f"{c.name}@{c.check.seq}:{c.check.hash[:16]}" for c in self.chains) or "none (no chain)"
        return f"from a ledger whose chains verified with key {self.key.key_id} up to heads {heads}"


def first_and_last_ts(root: Path) -> tuple[float, float] | None:
    """The earliest and the latest `ts` among the chains' first and last committed records (None: no record)."""
    found: list[float] = []
    for d in instance_dirs(root):
        live = live_segments(d)
        if not live:
            continue
        for record in (files.parse(files.first_line(live[0])), files.last_record(live[-1])):
            ts = record.get("ts") if isinstance(record, dict) else None
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                found.append(float(ts))
    return (min(found), max(found)) if found else None


__all__ = ["Chain", "Finding", "VerifiedLedger", "check_instance", "checked_lines", "first_and_last_ts"]
