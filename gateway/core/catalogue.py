"""The model catalogue and the weights rules' settings: a pack's `weights.yaml` as values (see core/weights.py)."""

import fnmatch
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class Window:
    """A dated span `[since, until)`; None at either end is open."""

    since: date | None = None
    until: date | None = None

    def holds(self, day: date) -> bool:
        return (self.since is None or self.since <= day) and (self.until is None or day < self.until)


@dataclass(frozen=True, slots=True)
class Exemption:
    """The operator's judgement that a lineage is below the most capable published model, and why."""

    window: Window
    justification: str


@dataclass(frozen=True, slots=True)
class DeclaredOps:
    """Training operations spent on a lineage outside the gateway (another cloud, on premises), as of a date."""

    ops: float
    as_of: date | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One lineage of the catalogue: the objects holding its weights and what is known of it."""

    lineage: str
    objects: tuple[str, ...] = ()  # "bucket/key" patterns; `*` matches any characters, `/` included
    declared: DeclaredOps | None = None
    parameters: float | None = None
    data_domain: str | None = None
    published: Window | None = None  # open weights from `since`
    exempt: Exemption | None = None

    def holds(self, bucket: str, key: str) -> bool:
        target = f"{bucket}/{key}"
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in self.objects)


@dataclass(frozen=True, slots=True)
class StorageBucket:
    """Buckets (a name pattern) declared to meet the storage conditions, from when, and where that is attested."""

    pattern: str
    window: Window
    facility: str = ""

    def covers(self, bucket: str, day: date) -> bool:
        return fnmatch.fnmatchcase(bucket, self.pattern) and self.window.holds(day)


@dataclass(frozen=True, slots=True)
class WeightsSettings:
    """A pack's `weights.yaml`. A threshold set to None is switched off; each rule's dates are in pack.yaml."""

    training_ops: float | None = 1e26
    bio_training_ops: float | None = 1e23
    bio_data_domains: frozenset[str] = frozenset({"biological_sequences"})
    parameters: float | None = 1e23
    models: tuple[ModelEntry, ...] = ()
    storage: tuple[StorageBucket, ...] = ()

    def entry(self, lineage: str) -> ModelEntry | None:
        return next((m for m in self.models if m.lineage == lineage), None)

    def lineage_of(self, bucket: str, key: str) -> str | None:
        """The catalogue's lineage for an object (the first entry whose patterns hold it), or None."""
        return next((m.lineage for m in self.models if m.holds(bucket, key)), None)

    def storage_compliant(self, bucket: str, day: date) -> StorageBucket | None:
        return next((s for s in self.storage if s.covers(bucket, day)), None)
