"""The report kinds, and one call that computes any of them from records in time order."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.core.caps import CapSettings
from gateway.core.policy import Pack
from gateway.core.reports.access import KycRecord, RefusalsAccess
from gateway.core.reports.aia import AIA_TRIGGER_TPP, AiaTrigger
from gateway.core.reports.compute_held import ComputeHeld
from gateway.core.reports.fold import Folding, run
from gateway.core.reports.model import Period, Report, buckets, step_for
from gateway.core.reports.training import LargeTraining, Threshold
from gateway.core.reports.veu import VeuReport

KINDS = ("compute-held", "aia-trigger", "veu", "large-training", "refusals-access")


@dataclass(frozen=True, slots=True)
class Options:
    """What a report reads besides the records: the pack's caps and each kind's own settings."""

    caps: CapSettings | None
    pack_hash: str = ""  # the content hash of the pack the caps come from
    trigger_tpp: float = AIA_TRIGGER_TPP
    extra_thresholds: tuple[float, ...] = ()  # --threshold: counting every job
    near: float = 0.5
    thresholds: tuple[Threshold, ...] = ()  # the pack's training thresholds (see pack_thresholds)
    registry: Mapping[str, KycRecord] | None = None
    registry_name: str = ""


def pack_thresholds(pack: Pack) -> tuple[Threshold, ...]:
    """The training thresholds a pack sets: caps.yaml's training.threshold_ops, and weights.yaml's (when the pack
    has one) training and biological-sequence thresholds, each once."""
    found: list[Threshold] = []
    if pack.caps is not None:
        found.append(Threshold("training.threshold_ops", pack.caps.training_threshold_ops))
    weights: Any = getattr(pack, "weights", None)  # weights.yaml, in packs that have one
    if weights is not None:
        ops, bio = getattr(weights, "training_ops", None), getattr(weights, "bio_training_ops", None)
        if isinstance(ops, int | float) and all(t.ops != ops or t.domains for t in found):
            found.append(Threshold("weights.training_ops", float(ops)))
        if isinstance(bio, int | float):
            domains = frozenset(str(d) for d in getattr(weights, "bio_data_domains", ()) or ())
            found.append(Threshold("weights.bio_training_ops", float(bio), domains))
    return tuple(found)


def folding_for(kind: str, period: Period, options: Options) -> tuple[Folding, list[float], float]:
    """The fold for `kind`, the times it is sampled at, and its bucket length."""
    step = step_for(period.end - period.start)
    starts = buckets(period, step)
    if kind == "compute-held":
        return ComputeHeld(period, step, options.caps), starts, step
    if kind == "aia-trigger":
        return AiaTrigger(period, step, options.trigger_tpp), starts, step
    if kind == "veu":
        veu = VeuReport(period, step, options.caps)
        return veu, veu.starts, step
    if kind == "large-training":
        thresholds = [*options.thresholds, *(Threshold("given", ops) for ops in options.extra_thresholds)]
        return LargeTraining(period, step, thresholds, options.near), starts, step
    if kind == "refusals-access":
        return RefusalsAccess(period, step, options.registry, options.registry_name), starts, step
    raise ValueError(f"unknown report kind {kind!r}")


def compute(
    kind: str,
    records: Iterable[Mapping[str, Any]],
    period: Period,
    options: Options,
    *,
    window_s: float,
    ownership_ttl_s: float,
) -> Report:
    """The report of `kind` over `period` from records in time order (every chain merged by `ts`)."""
    folding, starts, _ = folding_for(kind, period, options)
    report, fold = run(records, period, starts, folding, window_s=window_s, ownership_ttl_s=ownership_ttl_s)
    decided = ", ".join(f"{name} {version} ({digest[:12]}): {n:,}" for (name, version, digest), n in
                        sorted(fold.policies.items()))  # fmt: skip
    notes = [f"records decided under packs: {decided or 'none'}"]
    if options.pack_hash and fold.policies and all(d != options.pack_hash for _, _, d in fold.policies):
        notes.append("the pack the caps come from decided none of these records: give --policy the pack they name")
    return replace(report, notes=(*report.notes, *notes))
