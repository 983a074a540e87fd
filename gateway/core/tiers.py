"""Country tiers with dated membership, and a tenant's tier as the most restrictive of three."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import IntEnum


class Tier(IntEnum):
    ONE = 1
    TWO = 2
    THREE = 3


@dataclass(frozen=True, slots=True)
class Membership:
    """A country's membership of a tier list, valid on [since, until)."""

    country: str
    since: date | None = None
    until: date | None = None

    def holds_on(self, day: date) -> bool:
        return (self.since is None or self.since <= day) and (self.until is None or day < self.until)


@dataclass(frozen=True, slots=True)
class TierTable:
    """Tier 1 and Tier 3 lists (everything else is Tier 2) plus country aliases (HK -> CN)."""

    tier1: tuple[Membership, ...]
    tier3: tuple[Membership, ...]
    aliases: Mapping[str, str]

    def tier_of(self, country: str, day: date) -> Tier:
        """The tier of one ISO country on `day`; Tier 3 wins over Tier 1 if listed in both."""
        country = self.aliases.get(country, country)
        if any(m.country == country and m.holds_on(day) for m in self.tier3):
            return Tier.THREE
        if any(m.country == country and m.holds_on(day) for m in self.tier1):
            return Tier.ONE
        return Tier.TWO


def is_iso_country(code: str | None, known: frozenset[str]) -> bool:
    """True if `code` is an assigned ISO 3166-1 alpha-2 code."""
    return code is not None and code in known


def resolve_tier(
    countries: Mapping[str, str | None], table: TierTable, known: frozenset[str], day: date
) -> tuple[Tier | None, tuple[str, ...]]:
    """The most restrictive tier over the countries, or None with the roles that are unknown."""
    unknown = tuple(role for role, c in countries.items() if not is_iso_country(c, known))
    if unknown:
        return None, unknown
    tiers = [table.tier_of(c, day) for c in countries.values() if c is not None]
    return max(tiers), ()
