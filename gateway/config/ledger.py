"""The `ledger:` section of gateway.yaml: directory, group commit, segments, checkpoints, signing key, anchors,
quota snapshots."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    dir: Path = Path("exportgate-ledger")
    batch_window_s: float = 0.0
    max_batch: int = 512
    queue_limit: int = 10_000
    segment_max_bytes: int = 64 << 20
    segment_max_age_s: float = 86_400.0
    checkpoint_every_records: int = 1000
    checkpoint_every_s: float = 60.0
    signing_key_file: Path | None = None
    anchor_dir: Path | None = None
    stall_after_s: float = 5.0
    # Quota snapshots (memory store, with a signing key): where (None: the ledger directory itself),
    # how often (0: only at shutdown), and how many files to keep.
    snapshot_dir: Path | None = None
    snapshot_every_s: float = 300.0
    snapshot_keep: int = 3

    @property
    def snapshots(self) -> Path:
        """The directory quota snapshots are written to and read from."""
        return self.snapshot_dir if self.snapshot_dir is not None else self.dir


LEDGER_KEYS = (
    "dir",
    "batch_window_ms",
    "max_batch",
    "queue_limit",
    "segment_max_bytes",
    "segment_max_age_s",
    "checkpoint_every_records",
    "checkpoint_every_s",
    "signing_key_file",
    "anchor_dir",
    "stall_after_s",
    "snapshot_dir",
    "snapshot_every_s",
    "snapshot_keep",
)


def load_ledger_settings(node: Node, base: Path, env: Mapping[str, str], problems: list[Problem]) -> LedgerSettings:
    """The `ledger:` section; every size and interval must be positive, key file and anchor dir checked."""
    lf = Fields(node, problems, LEDGER_KEYS)
    ledger_dir = resolve_path(base, lf.text("dir")) or Path(env.get("EXPORTGATE_LEDGER_DIR", "exportgate-ledger"))
    positive = {
        key: (lf.integer(key, default) if isinstance(default, int) else lf.number(key, default))
        for key, default in (
            ("max_batch", 512),
            ("queue_limit", 10_000),
            ("segment_max_bytes", 64 << 20),
            ("segment_max_age_s", 86_400.0),
            ("checkpoint_every_records", 1000),
            ("checkpoint_every_s", 60.0),
            ("stall_after_s", 5.0),
        )
    }
    for key, value in positive.items():
        if value <= 0:
            child = lf.child(key)
            problems.append((child or node).problem("must be greater than 0"))
    key_file = resolve_path(base, lf.text("signing_key_file"))
    if key_file is not None and not key_file.is_file():
        child = lf.child("signing_key_file")
        problems.append(
            (child or node).problem(f"{key_file}: no such file (create one with `exportgate keys generate`)")
        )
    anchor_dir = resolve_path(base, lf.text("anchor_dir"))
    if anchor_dir is not None and anchor_dir.resolve().is_relative_to(ledger_dir.resolve()):
        child = lf.child("anchor_dir")
        problems.append((child or node).problem("must lie outside the ledger directory (it is the ledger's witness)"))
    snapshot_dir = resolve_path(base, lf.text("snapshot_dir"))
    if snapshot_dir is not None:
        where = lf.child("snapshot_dir") or node
        resolved = snapshot_dir.resolve()
        if resolved != ledger_dir.resolve() and resolved.is_relative_to(ledger_dir.resolve()):
            problems.append(where.problem("must be the ledger directory itself or lie outside it (a directory "
                                          "inside it would be read as an instance's chain)"))  # fmt: skip
        elif anchor_dir is not None and resolved == anchor_dir.resolve():
            problems.append(where.problem("must differ from anchor_dir (it holds only checkpoint copies)"))
    snapshot_every_s: float = lf.number("snapshot_every_s", 300.0)
    if snapshot_every_s < 0:
        problems.append((lf.child("snapshot_every_s") or node).problem("must be 0 (only at shutdown) or more"))
    snapshot_keep: int = lf.integer("snapshot_keep", 3)
    if snapshot_keep < 1:
        problems.append((lf.child("snapshot_keep") or node).problem("must be at least 1"))
    window_ms: float = lf.number("batch_window_ms", 0.0)
    if not 0 <= window_ms <= 1000:
        problems.append((lf.child("batch_window_ms") or node).problem("must be 0..1000"))
    return LedgerSettings(
        ledger_dir,
        window_ms / 1000,
        positive["max_batch"],
        positive["queue_limit"],
        positive["segment_max_bytes"],
        positive["segment_max_age_s"],
        positive["checkpoint_every_records"],
        positive["checkpoint_every_s"],
        key_file,
        anchor_dir,
        positive["stall_after_s"],
        snapshot_dir,
        snapshot_every_s,
        snapshot_keep,
    )
