"""The `reconcile:` section of gateway.yaml: how often, and how many jobs per round, to ask schedulers."""

from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """`interval_s` 0 turns reconciliation off; `batch` bounds the status requests of one round.

    A job the scheduler reports alive, or cannot report on, has its lease held for at least
    `hold_s` more (and three passes over every owned job, when a pass takes longer), so only
    the scheduler saying a job is over releases it. `walltime_grace_s` is how long past its
    walltime a job may run on a scheduler that does not enforce walltime (Ray) before the
    gateway stops it.
    """

    interval_s: float = 60.0
    batch: int = 100
    hold_s: float = 900.0
    walltime_grace_s: float = 300.0


def load_reconcile_settings(node: Node | None, problems: list[Problem]) -> ReconcileSettings:
    """The `reconcile:` section (defaults when absent); interval 0 or more, batch at least 1."""
    if node is None or node.raw is None:
        return ReconcileSettings()
    d = ReconcileSettings()
    f = Fields(node, problems, ("interval_s", "batch", "hold_s", "walltime_grace_s"))
    interval: float = f.number("interval_s", d.interval_s)
    batch: int = f.integer("batch", d.batch)
    hold: float = f.number("hold_s", d.hold_s)
    grace: float = f.number("walltime_grace_s", d.walltime_grace_s)
    if interval < 0:
        problems.append((f.child("interval_s") or node).problem("must be 0 (off) or a positive number of seconds"))
    if batch < 1:
        problems.append((f.child("batch") or node).problem("must be at least 1"))
    if hold < 2 * interval:
        message = "must be at least twice interval_s, or leases lapse between rounds"
        problems.append((f.child("hold_s") or node).problem(message))
    if grace < 0:
        problems.append((f.child("walltime_grace_s") or node).problem("must be 0 or a positive number of seconds"))
    return ReconcileSettings(interval, batch, hold, grace)
