"""The `reconcile:` section of gateway.yaml: how often, and how many jobs per round, to ask schedulers."""

from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """`interval_s` 0 turns reconciliation off; `batch` bounds the status requests of one round."""

    interval_s: float = 60.0
    batch: int = 100


def load_reconcile_settings(node: Node | None, problems: list[Problem]) -> ReconcileSettings:
    """The `reconcile:` section (defaults when absent); interval 0 or more, batch at least 1."""
    if node is None or node.raw is None:
        return ReconcileSettings()
    f = Fields(node, problems, ("interval_s", "batch"))
    interval: float = f.number("interval_s", 60.0)
    batch: int = f.integer("batch", 100)
    if interval < 0:
        problems.append((f.child("interval_s") or node).problem("must be 0 (off) or a positive number of seconds"))
    if batch < 1:
        problems.append((f.child("batch") or node).problem("must be at least 1"))
    return ReconcileSettings(interval, batch)
