"""Cap settings: the numbers a pack's caps.yaml gives the quota mapping (the compute caps of 90 FR 4544)."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class LppCount(StrEnum):
    """How the LPP allowance is counted: TPP held at once, or cumulatively per calendar year."""

    HELD = "held"
    CALENDAR_YEAR = "calendar_year"


@dataclass(frozen=True, slots=True)
class VeuStep:
    """One step of the national VEU schedule: the cumulative cap in force from `since`."""

    since: date
    tpp: float


@dataclass(frozen=True, slots=True)
class CapSettings:
    """A pack's `caps.yaml`: every number the cap mapping uses (docs/schedulers.md, "Caps")."""

    pending_allowance_s: float
    tier1_cap_tpp: float | None
    lpp_tpp: float
    lpp_count: LppCount
    country_tpp: float
    country_overrides: Mapping[str, float]
    national_veu_schedule: tuple[VeuStep, ...]
    universal_veu_cap_tpp: float | None
    training_threshold_ops: float
    per_tenant_total: bool
    exempt_lineages: frozenset[str]
    exempt_purposes: frozenset[str]

    def country_cap(self, country: str) -> float:
        return self.country_overrides.get(country, self.country_tpp)

    def national_veu_cap(self, day: date) -> float:
        """The schedule step in force on `day`; zero before the first (fail closed)."""
        in_force = [step for step in self.national_veu_schedule if step.since <= day]
        return max(in_force, key=lambda step: step.since).tpp if in_force else 0.0
