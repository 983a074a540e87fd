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
        return self.listing(country, day)[0]

    def listing(self, country: str, day: date) -> tuple[Tier, Membership | None]:
        """The tier of one ISO country on `day` and the dated list entry that made it (None: Tier 2, unlisted)."""
        country = self.aliases.get(country, country)
        for tier, members in ((Tier.THREE, self.tier3), (Tier.ONE, self.tier1)):
            found = next((m for m in members if m.country == country and m.holds_on(day)), None)
            if found is not None:
                return tier, found
        return Tier.TWO, None


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


# How a tenant's country roles read in explanations and refusals.
ROLE_NAMES = {"location": "location", "headquarters": "headquarters", "parent": "parent headquarters"}


@dataclass(frozen=True, slots=True)
class CountryTier:
    """One of the countries that decide a tenant's tier, and how it was tiered.

    `counted_as` is the country after aliases (Hong Kong is counted as China); `tier` is None for
    a country missing or not ISO 3166-1; `listed` is the dated Tier 1 or Tier 3 list entry that
    placed it (None: not listed, so Tier 2).
    """

    role: str
    country: str | None
    counted_as: str | None
    tier: Tier | None
    listed: Membership | None = None

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, self.role)

    def shown(self) -> str:
        """`parent headquarters CN`, `location HK (counted as CN)`, `headquarters (missing)`."""
        if self.country is None:
            return f"{self.role_name} (missing)"
        alias = f" (counted as {self.counted_as})" if self.counted_as != self.country else ""
        return f"{self.role_name} {self.country}{alias}"


@dataclass(frozen=True, slots=True)
class TierPath:
    """A tenant's tier with every country it was resolved from; `deciding` are those at that tier."""

    tier: Tier | None
    countries: tuple[CountryTier, ...]

    @property
    def deciding(self) -> tuple[CountryTier, ...]:
        """The countries that made the tier (for an unknown tier: the unknown ones)."""
        return tuple(c for c in self.countries if c.tier is self.tier)


def tier_path(countries: Mapping[str, str | None], table: TierTable, known: frozenset[str], day: date) -> TierPath:
    """resolve_tier with its working shown: each role's country, its alias, tier and dated list entry."""
    tier, _ = resolve_tier(countries, table, known, day)
    rows = []
    for role, country in countries.items():
        if not is_iso_country(country, known):
            rows.append(CountryTier(role, country, None, None))
            continue
        assert country is not None
        found, entry = table.listing(country, day)
        rows.append(CountryTier(role, country, table.aliases.get(country, country), found, entry))
    return TierPath(tier, tuple(rows))


def deciding_detail(path: TierPath) -> str:
    """Which countries made the tier, e.g. `parent headquarters CN is Tier 3`."""
    deciding = path.deciding
    if path.tier is None or not deciding:
        return "no tier"
    names = [c.shown() for c in deciding]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(names) == 1 else "are"
    return f"{joined} {verb} Tier {int(path.tier)}"
