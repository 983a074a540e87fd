"""Strict loading of a pack's caps.yaml into CapSettings."""

from datetime import date
from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.core.caps import CapSettings, LppCount, VeuStep
from gateway.core.iso import country_problem

_TOP_KEYS = ("leases", "tier1", "lpp", "country_allocation", "national_veu", "universal_veu", "training")
_TRAINING_KEYS = ("threshold_ops", "per_tenant_total", "exempt_lineages", "exempt_purposes")

# What a file with problems yields: every cap closed. Callers must check `problems` first.
CLOSED = CapSettings(
    pending_allowance_s=0.0,
    tier1_cap_tpp=0.0,
    lpp_tpp=0.0,
    lpp_count=LppCount.HELD,
    country_tpp=0.0,
    country_overrides={},
    national_veu_schedule=(),
    universal_veu_cap_tpp=0.0,
    training_threshold_ops=0.0,
    per_tenant_total=True,
    exempt_lineages=frozenset(),
    exempt_purposes=frozenset(),
)


def load_caps(path: Path, problems: list[Problem]) -> CapSettings:
    """Read `path`; problems are appended (file:line: field: problem), never raised."""
    try:
        root = load_file(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return CLOSED
    return caps_from_node(root, problems)


def caps_from_node(root: Node, problems: list[Problem]) -> CapSettings:
    """Build cap settings from an already parsed caps.yaml tree; every section is required."""
    before = len(problems)
    top = Fields(root, problems, _TOP_KEYS)
    leases = _section(top, "leases", ("pending_allowance_s",), problems)
    tier1 = _section(top, "tier1", ("cap_tpp",), problems)
    lpp = _section(top, "lpp", ("tpp", "count"), problems)
    country = _section(top, "country_allocation", ("tpp", "overrides"), problems)
    nveu = _section(top, "national_veu", ("schedule",), problems)
    uveu = _section(top, "universal_veu", ("cap_tpp",), problems)
    training = _section(top, "training", _TRAINING_KEYS, problems)
    settings = CapSettings(
        pending_allowance_s=_amount(leases, "pending_allowance_s", problems, required=True) or 0.0,
        tier1_cap_tpp=_amount(tier1, "cap_tpp", problems),
        lpp_tpp=_amount(lpp, "tpp", problems, required=True) or 0.0,
        lpp_count=LppCount(lpp.choice("count", [c.value for c in LppCount], default=LppCount.HELD.value)),
        country_tpp=_amount(country, "tpp", problems, required=True) or 0.0,
        country_overrides=_overrides(country.child("overrides"), problems),
        national_veu_schedule=_schedule(nveu, problems),
        universal_veu_cap_tpp=_amount(uveu, "cap_tpp", problems),
        training_threshold_ops=_amount(training, "threshold_ops", problems, required=True) or 0.0,
        per_tenant_total=training.flag("per_tenant_total", default=True),
        exempt_lineages=frozenset(training.texts("exempt_lineages", default=[])),
        exempt_purposes=frozenset(training.texts("exempt_purposes", default=[])),
    )
    return settings if len(problems) == before else CLOSED


def _section(top: Fields, key: str, allowed: tuple[str, ...], problems: list[Problem]) -> Fields:
    node = top.child(key)
    if node is None:
        if top.ok:
            top.missing(key)
        # One problem for the missing section, not one per field it would have held.
        return Fields(Node({}, top.node.file, top.node.line, key), [], allowed)
    return Fields(node, problems, allowed)


def _amount(fields: Fields, key: str, problems: list[Problem], required: bool = False) -> float | None:
    """A non-negative number; null (or absent, when optional) means no cap."""
    value: float | None = fields.number(key, required=required)
    child = fields.child(key)
    if value is not None and value < 0 and child is not None:
        problems.append(child.problem("must not be negative"))
        return None
    return value


def _overrides(node: Node | None, problems: list[Problem]) -> dict[str, float]:
    if node is None or node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of ISO 3166-1 country code to TPP"))
        return {}
    out: dict[str, float] = {}
    fields = Fields(node, problems, [k for k, _ in node.items()])
    for code, child in node.items():
        problem = country_problem(code)
        if problem is not None:
            problems.append(child.problem(problem))
            continue
        value = _amount(fields, code, problems, required=True)
        if value is not None:
            out[code] = value
    return out


def _schedule(fields: Fields, problems: list[Problem]) -> tuple[VeuStep, ...]:
    node = fields.child("schedule")
    if node is None:
        if fields.ok:
            fields.missing("schedule")
        return ()
    if not isinstance(node.raw, list) or not node.raw:
        problems.append(node.problem("must be a non-empty list of {from, tpp} steps"))
        return ()
    steps: list[VeuStep] = []
    last: date | None = None
    for item in node.elements():
        step = Fields(item, problems, ("from", "tpp"))
        since: date | None = step.day("from", required=True)
        tpp = _amount(step, "tpp", problems, required=True)
        if since is None or tpp is None:
            continue
        if last is not None and since <= last:
            problems.append(item.problem("steps must be in increasing date order"))
            continue
        last = since
        steps.append(VeuStep(since, tpp))
    return tuple(steps)
