"""Golden decisions for the weights rules (gateway/core/weights.py), one row per case, and for the parameter
threshold on jobs (gateway/core/quota.py), one row per case.

Columns: the tenant's countries (location / headquarters / parent headquarters), a licence naming
the lineage, the lineage's facts (operations counted and declared, parameters, domain, published,
exempt), the operation, the bucket (declared compliant with the storage conditions or not), the
date (before or after the storage rule's 2026-01-15), and the expected outcome and code.
"""

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypedDict

import pytest

from gateway.config.located import ConfigError, load_text
from gateway.config.pack import load_pack
from gateway.config.weights import weights_from_node
from gateway.core.catalogue import DeclaredOps, Exemption, ModelEntry, StorageBucket, WeightsSettings, Window
from gateway.core.decide import Decision, Facts, Outcome, decide
from gateway.core.jobs import JobPart, JobSpec
from gateway.core.leases import Plan
from gateway.core.policy import Pack, RuleId
from gateway.core.quota_book import QuotaBook
from gateway.core.routes import RouteKind
from gateway.core.submission import Job, judge, price_and_plan
from gateway.core.tenants import Kyc, KycStatus, Licence, LicenceScope, Tenant
from gateway.core.weights import (
    LineageFacts,
    WeightsOp,
    WeightsQuestion,
    catalogue_facts,
    decide_weights,
    facts_from_record,
    lineage_status,
    object_facts,
)
from tests.harness import POLICIES

PACK = load_pack(POLICIES / "ai-diffusion-2025")
SETTINGS = WeightsSettings(storage=(StorageBucket("secure-*", Window(date(2025, 11, 1)), "fra-2 vault"),))
BEFORE = datetime(2025, 12, 1, tzinfo=UTC)  # storage rule in shadow
AFTER = datetime(2026, 2, 1, tzinfo=UTC)  # storage rule enforced
BIG = 1.2e26  # past the 1e26-operation threshold
SMALL = 3e24
LICENCE = Licence("D-W1", frozenset({LicenceScope.WEIGHTS}), lineage="frontier")
OTHER_LICENCE = Licence("D-W2", frozenset({LicenceScope.WEIGHTS}), lineage="other")
EXPIRED = dataclasses.replace(LICENCE, expires=date(2026, 1, 1))
COMPUTE_LICENCE = Licence("D-T1", frozenset({LicenceScope.TRAINING_THRESHOLD}), lineage="frontier")


def tenant(countries: str, *licences: Licence) -> Tenant:
    location, headquarters, parent = countries.split("/")
    return Tenant("t", "t", (), location, headquarters, parent, Kyc(KycStatus.VERIFIED, date(2025, 1, 1)),
                  licences=licences)  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    countries: str
    facts: LineageFacts | None
    op: WeightsOp = WeightsOp.READ
    bucket: str = "models"
    when: datetime = AFTER
    licences: tuple[Licence, ...] = ()
    outcome: Outcome = Outcome.ALLOW
    code: str | None = None
    rule: RuleId | None = None


def ops(total: float, **more: object) -> LineageFacts:
    return LineageFacts("frontier", counted_ops=total, **more)  # type: ignore[arg-type]


ROWS = [
    # Not controlled: anyone admitted reads and writes anywhere.
    Row("small-lineage-tier2-reads", "AE/AE/AE", ops(SMALL)),
    Row("no-lineage-tier2-reads", "AE/AE/AE", None),
    Row("small-lineage-tier2-writes-anywhere", "AE/AE/AE", ops(SMALL), WeightsOp.WRITE),
    # Controlled by operations: headquarters and parent in Tier 1, location outside D:5 / Macau.
    Row("tier1-reads", "US/US/US", ops(BIG)),
    Row("tier1-hq-located-tier2-reads", "AE/US/US", ops(BIG)),
    Row("tier2-reads", "AE/AE/AE", ops(BIG), code="weights_controlled", outcome=Outcome.DENY, rule=RuleId.WEIGHTS_OPS),
    Row("tier1-hq-tier2-parent", "US/US/AE", ops(BIG), code="weights_controlled", outcome=Outcome.DENY),
    Row("tier2-hq-tier1-parent", "US/AE/US", ops(BIG), code="weights_controlled", outcome=Outcome.DENY),
    # Located in Macau (D:5 / Macau is the pack's Tier 3): admission refuses first; the weights rule objects too.
    Row("tier1-hq-located-d5", "MO/US/US", ops(BIG), code="tier3_embargoed", outcome=Outcome.DENY),
    Row("counted-plus-declared-cross", "AE/AE/AE", ops(6e25, declared_ops=5e25), code="weights_controlled",
        outcome=Outcome.DENY),
    Row("just-below", "AE/AE/AE", ops(9.99e25)),
    # A licence naming the lineage; one naming another lineage, or lifting the compute threshold, does not do.
    Row("tier2-licensed", "AE/AE/AE", ops(BIG), licences=(LICENCE,)),
    Row("tier2-other-lineage-licence", "AE/AE/AE", ops(BIG), licences=(OTHER_LICENCE,), code="weights_controlled",
        outcome=Outcome.DENY),
    Row("tier2-compute-licence", "AE/AE/AE", ops(BIG), licences=(COMPUTE_LICENCE,), code="weights_controlled",
        outcome=Outcome.DENY),
    Row("tier2-expired-licence", "AE/AE/AE", ops(BIG), licences=(EXPIRED,),
        code="weights_controlled", outcome=Outcome.DENY),
    # Published or exempt lineages are not controlled.
    Row("published", "AE/AE/AE", ops(BIG, published=True)),
    Row("exempt", "AE/AE/AE", ops(BIG, exempt="below the most capable published model (memo 7)")),
    # Before the weights_ops rule's date (2025-05-15) a refusal is in shadow.
    Row("before-4e091-date", "AE/AE/AE", ops(BIG), when=datetime(2025, 3, 1, tzinfo=UTC), outcome=Outcome.SHADOW_DENY,
        code="weights_controlled"),
    # The parameter threshold (mission statement): over 1e23 parameters, whatever the operations.
    Row("params-over", "AE/AE/AE", ops(SMALL, parameters=2e23), code="weights_controlled", outcome=Outcome.DENY,
        rule=RuleId.WEIGHTS_PARAMETERS),
    Row("params-at", "AE/AE/AE", ops(SMALL, parameters=1e23)),
    Row("params-tier1", "US/US/US", ops(SMALL, parameters=2e23)),
    # ...or declared over it by jobs the gateway admitted (lineage_params_declared:<lineage>, any tier).
    Row("params-declared-by-a-job", "AE/AE/AE", ops(SMALL, counted_param_jobs=1.0), code="weights_controlled",
        outcome=Outcome.DENY, rule=RuleId.WEIGHTS_PARAMETERS),
    Row("params-declared-by-a-job-licensed", "AE/AE/AE", ops(SMALL, counted_param_jobs=2.0), licences=(LICENCE,)),
    Row("params-declared-by-a-job-published", "AE/AE/AE", ops(SMALL, counted_param_jobs=1.0, published=True)),
    # Biological sequence models: 1e23 operations.
    Row("bio-declared", "AE/AE/AE", ops(2e23, data_domain="biological_sequences"), code="weights_controlled",
        outcome=Outcome.DENY, rule=RuleId.WEIGHTS_BIO),
    Row("bio-mostly-counted", "AE/AE/AE", ops(2e23, counted_bio_ops=1.5e23), code="weights_controlled",
        outcome=Outcome.DENY, rule=RuleId.WEIGHTS_BIO),
    Row("bio-minority-counted", "AE/AE/AE", ops(2e23, counted_bio_ops=0.5e23)),
    Row("general-domain-2e23", "AE/AE/AE", ops(2e23, data_domain="general")),
    # Writing controlled weights: an eligible holder, and a bucket declared compliant from 2026-01-15 on.
    Row("tier1-writes-compliant-after", "US/US/US", ops(BIG), WeightsOp.WRITE, "secure-a"),
    Row("tier1-writes-plain-after", "US/US/US", ops(BIG), WeightsOp.WRITE, "models", code="storage_not_compliant",
        outcome=Outcome.DENY, rule=RuleId.WEIGHTS_STORAGE),
    Row("tier1-writes-plain-before", "US/US/US", ops(BIG), WeightsOp.WRITE, "models", BEFORE,
        code="storage_not_compliant", outcome=Outcome.SHADOW_DENY),
    Row("tier1-writes-compliant-before-declared", "US/US/US", ops(BIG), WeightsOp.WRITE, "secure-a", BEFORE),
    Row("tier1-writes-bucket-not-yet-compliant", "US/US/US", ops(BIG), WeightsOp.WRITE, "secure-a",
        datetime(2025, 10, 1, tzinfo=UTC), code="storage_not_compliant", outcome=Outcome.SHADOW_DENY),
    Row("tier2-writes-compliant", "AE/AE/AE", ops(BIG), WeightsOp.WRITE, "secure-a", code="weights_controlled",
        outcome=Outcome.DENY),
    Row("tier2-licensed-writes-compliant", "AE/AE/AE", ops(BIG), WeightsOp.WRITE, "secure-a", licences=(LICENCE,)),
    Row("tier2-licensed-writes-plain", "AE/AE/AE", ops(BIG), WeightsOp.WRITE, "models", licences=(LICENCE,),
        code="storage_not_compliant", outcome=Outcome.DENY),
    Row("published-writes-plain", "AE/AE/AE", ops(BIG, published=True), WeightsOp.WRITE, "models"),
    # Deleting and listing need nothing more than admission (a listing leaves out what may not be read).
    Row("tier2-deletes-controlled", "AE/AE/AE", ops(BIG), WeightsOp.DELETE),
    # Admission comes first: a Tier 3 tenant is refused whatever the object.
    Row("tier3-small", "CN/CN/CN", ops(SMALL), code="tier3_embargoed", outcome=Outcome.DENY),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_weights_golden(row: Row) -> None:
    who = tenant(row.countries, *row.licences)
    admission = decide(Facts(row.when, who, RouteKind.PLAIN_READ), PACK)
    status = lineage_status(row.facts, SETTINGS, PACK, row.when) if row.facts is not None else None
    got = decide_weights(WeightsQuestion(row.op, who, status, row.bucket), admission, SETTINGS, PACK, row.when)
    decision = got.decision
    assert (decision.outcome, decision.code.value if decision.code else None) == (row.outcome, row.code)
    if row.rule is not None:
        assert decision.reasons[0].rule is row.rule
        assert decision.reasons[0].citation == PACK.rule(row.rule).citation != ""
    if row.code == "weights_controlled":
        assert "ECCN 4E091" in decision.reasons[0].detail
    if row.name == "tier1-hq-located-d5":
        assert [r.code.value for r in decision.reasons] == ["tier3_embargoed", "weights_controlled"]
        assert "location MO is in Country Group D:5 or Macau" in decision.reasons[1].detail


def test_status_names_each_threshold_and_release() -> None:
    """A lineage past several thresholds names each; published releases all of them."""
    facts = ops(2e26, parameters=5e23, data_domain="biological_sequences")
    status = lineage_status(facts, SETTINGS, PACK, AFTER)
    assert [c.rule for c in status.controls] == [RuleId.WEIGHTS_OPS, RuleId.WEIGHTS_BIO, RuleId.WEIGHTS_PARAMETERS]
    assert status.controlled and status.enforced
    released = lineage_status(dataclasses.replace(facts, published=True), SETTINGS, PACK, AFTER)
    assert not released.controlled and released.released_by == "published"
    assert released.as_record()["controls"][0]["rule"] == "weights_ops"


def test_switched_off_thresholds_control_nothing() -> None:
    """A threshold set to null in weights.yaml is off."""
    off = WeightsSettings(training_ops=None, bio_training_ops=None, parameters=None)
    assert not lineage_status(ops(5e27, parameters=9e23), off, PACK, AFTER).controlled


def test_catalogue_facts_are_dated() -> None:
    """Declared operations count from their date; published and exemptions hold within their windows."""
    entry = ModelEntry(
        "frontier", ("models/frontier/*",), DeclaredOps(9e25, date(2025, 6, 1)), 4e11, None,
        Window(date(2026, 3, 1)), Exemption(Window(date(2025, 1, 1), date(2025, 12, 1)), "memo 7"),
    )  # fmt: skip
    settings = WeightsSettings(models=(entry,))
    early = catalogue_facts(settings, "frontier", date(2025, 5, 1), counted_ops=2e25)
    assert (early.declared_ops, early.exempt, early.published) == (0.0, "memo 7", False)
    later = catalogue_facts(settings, "frontier", date(2026, 2, 1), counted_ops=2e25, parameters=5e11)
    assert (later.declared_ops, later.exempt, later.published, later.parameters) == (9e25, None, False, 5e11)
    assert lineage_status(later, settings, PACK, AFTER).controlled  # 1.1e26
    assert catalogue_facts(settings, "frontier", date(2026, 3, 1)).published


def test_object_lineage_catalogue_wins_over_metadata() -> None:
    """The catalogue's pattern names an object's lineage; its gateway-written metadata only where none matches."""
    settings = WeightsSettings(models=(ModelEntry("frontier", ("models/frontier/*",)),))
    meta = {"exportgate-lineage": "other", "exportgate-params": "4.05e11"}
    assert object_facts(settings, "models", "frontier/w.bin", meta).lineage == "frontier"
    found = object_facts(settings, "models", "x/w.bin", meta)
    assert (found.lineage, found.source, found.parameters) == ("other", "metadata", 4.05e11)
    assert object_facts(settings, "models", "x/w.bin", {"exportgate-params": "nan"}).parameters is None


def _load(text: str) -> tuple[WeightsSettings, list[str]]:
    problems: list = []  # type: ignore[type-arg]
    settings = weights_from_node(load_text(text, "weights.yaml"), problems)
    return settings, [str(p) for p in problems]


def test_weights_yaml_loads_strictly() -> None:
    """Every key is checked; problems are file:line: field: problem."""
    settings, problems = _load(
        "thresholds: {parameters: null}\n"
        "models:\n"
        "  - lineage: frontier\n"
        "    objects: [models/frontier/*]\n"
        "    declared_ops: {ops: 3.0e+25, as_of: 2025-06-01}\n"
        "    exempt: {since: 2025-08-01, justification: below the frontier}\n"
        "storage:\n"
        "  - {bucket: secure-*, since: 2025-11-01, facility: fra-2}\n"
    )
    assert problems == []
    assert settings.parameters is None and settings.training_ops == 1e26
    assert settings.lineage_of("models", "frontier/a/b.bin") == "frontier"
    assert settings.storage_compliant("secure-x", date(2025, 12, 1)) is not None
    _, problems = _load(
        "models:\n  - lineage: x\n    objects: [nobucket]\n    exempt: {since: 2025-08-01}\n    colour: red\n"
        "storage:\n  - {bucket: a/b, facility: f}\n"
    )
    assert any("weights.yaml:3: models[0].objects[0]" in p for p in problems), problems
    assert any("models[0].exempt.justification: required" in p for p in problems), problems
    assert any("models[0].colour: unknown key" in p for p in problems), problems
    assert any("storage[0].since: required" in p for p in problems), problems
    assert any("storage[0].bucket: names a bucket" in p for p in problems), problems


def test_bundled_pack_carries_the_thresholds_and_dates(tmp_path: Path) -> None:
    """The bundled pack: 1e26 operations, 1e23 for biological sequence models, the 1e23-parameter trigger from the
    mission statement, and the storage rule from 2026-01-15; a broken weights.yaml refuses the pack."""
    assert PACK.weights is not None
    w = PACK.weights
    assert (w.training_ops, w.bio_training_ops, w.parameters) == (1e26, 1e23, 1e23)
    assert PACK.rule(RuleId.WEIGHTS_STORAGE).enforced_from == date(2026, 1, 15)
    assert "mission statement" in PACK.rule(RuleId.WEIGHTS_PARAMETERS).citation
    assert "4E091" in PACK.rule(RuleId.WEIGHTS_OPS).citation
    pack = tmp_path / "pack"
    pack.mkdir()
    for f in (POLICIES / "ai-diffusion-2025").glob("*.yaml"):
        (pack / f.name).write_text(f.read_text())
    (pack / "weights.yaml").write_text("thresholds: {training_ops: -1}\n")
    with pytest.raises(ConfigError) as raised:
        load_pack(pack)
    assert "weights.yaml:1: thresholds.training_ops: must be positive" in str(raised.value)


def test_jobs_declaring_the_parameter_threshold_control_a_lineage() -> None:
    """A count of jobs admitted over the threshold controls the lineage; the detail says so; a switched-off
    threshold ignores it; records written before the count existed read as none."""
    status = lineage_status(ops(SMALL, counted_param_jobs=3.0), SETTINGS, PACK, AFTER)
    assert [c.rule for c in status.controls] == [RuleId.WEIGHTS_PARAMETERS]
    assert status.controls[0].detail == ("lineage frontier was declared over 1e+23 parameters by 3 admitted jobs "
                                         "(licence trigger: over 1e+23)")  # fmt: skip
    assert status.as_record()["counted_param_jobs"] == 3.0
    off = WeightsSettings(parameters=None)
    assert not lineage_status(ops(SMALL, counted_param_jobs=3.0), off, PACK, AFTER).controlled
    old = ops(SMALL, parameters=4e11).as_record()
    del old["counted_param_jobs"]
    assert facts_from_record(old).counted_param_jobs == 0.0
    assert facts_from_record(status.as_record()).counted_param_jobs == 3.0
    assert catalogue_facts(SETTINGS, "frontier", AFTER.date(), counted_param_jobs=2.0).counted_param_jobs == 2.0


# -- the parameter threshold on jobs --------------------------------------------------------------------------
#
# A job declaring its model's parameter count (Slurm EXPORTGATE_PARAMS, ...) over the pack's threshold (rule
# weights_parameters, enforced from 2025-05-15 in the bundled pack): a tenant outside Tier 1 (its resolved tier)
# needs a valid licence lifting `weights` that names the job's lineage, else licence_required (shadow before the
# rule's date). Every admitted such job meters lineage_params_declared:<lineage>.

JOB_BEFORE = datetime(2025, 3, 1, tzinfo=UTC)  # weights_parameters in shadow
JOB_AFTER = datetime(2025, 9, 1, tzinfo=UTC)  # enforced
PARAMS_KEY = "lineage_params_declared:frontier"
OPEN_PACK = dataclasses.replace(PACK, weights=WeightsSettings(
    models=(ModelEntry("frontier", published=Window(date(2025, 1, 1))),)))  # fmt: skip
SHADOW_TIER3 = dataclasses.replace(PACK, rules={**PACK.rules, RuleId.TIER3: dataclasses.replace(
    PACK.rule(RuleId.TIER3), enforced_from=date(2030, 1, 1))})  # fmt: skip
NO_PARAMS_PACK = dataclasses.replace(PACK, weights=WeightsSettings(parameters=None))


@dataclass(frozen=True)
class JobRow:
    name: str
    countries: str
    parameters: float | None = 1e24
    licences: tuple[Licence, ...] = ()
    when: datetime = JOB_AFTER
    lineage: str | None = "frontier"
    outcome: Outcome = Outcome.ALLOW
    code: str | None = None
    metered: bool = True  # the job debits lineage_params_declared:frontier (1)
    pack: Pack = PACK


class Verdict(TypedDict, total=False):
    outcome: Outcome
    code: str | None
    metered: bool


REFUSED: Verdict = {"outcome": Outcome.DENY, "code": "licence_required", "metered": False}
SHADOW: Verdict = {"outcome": Outcome.SHADOW_DENY, "code": "licence_required"}

JOB_ROWS = [
    # Tier 1: never refused, before or after the rule's date; the lineage is metered.
    JobRow("tier1-after", "US/US/US"),
    JobRow("tier1-before", "US/US/US", when=JOB_BEFORE),
    JobRow("tier1-no-lineage", "US/US/US", lineage=None, metered=False),
    # Tier 2 without a licence: refused after the date, shadow before (admitted and metered).
    JobRow("tier2-after", "AE/AE/AE", **REFUSED),
    JobRow("tier2-before", "AE/AE/AE", when=JOB_BEFORE, **SHADOW),
    # Resolved tier: headquarters in Tier 1 but located in Tier 2 is Tier 2 for jobs.
    JobRow("tier1-hq-located-tier2-after", "AE/US/US", **REFUSED),
    # A valid licence lifting `weights` that names the job's lineage lifts it, before and after.
    JobRow("tier2-licensed-after", "AE/AE/AE", licences=(LICENCE,)),
    JobRow("tier2-licensed-before", "AE/AE/AE", licences=(LICENCE,), when=JOB_BEFORE),
    JobRow("tier2-other-lineage-licence", "AE/AE/AE", licences=(OTHER_LICENCE,), **REFUSED),
    JobRow("tier2-compute-licence", "AE/AE/AE", licences=(COMPUTE_LICENCE,), **REFUSED),
    JobRow("tier2-expired-licence", "AE/AE/AE", licences=(dataclasses.replace(LICENCE, expires=date(2025, 8, 1)),),
           **REFUSED),
    JobRow("tier2-licensed-no-lineage", "AE/AE/AE", licences=(LICENCE,), lineage=None, **REFUSED),
    JobRow("tier2-no-lineage-before", "AE/AE/AE", lineage=None, when=JOB_BEFORE, outcome=Outcome.SHADOW_DENY,
           code="licence_required", metered=False),
    # At or below the threshold ("over 1e23"), or no declaration: nothing to decide, nothing metered.
    JobRow("tier2-at-threshold", "AE/AE/AE", parameters=1e23, metered=False),
    JobRow("tier2-small-model", "AE/AE/AE", parameters=4.05e11, metered=False),
    JobRow("tier2-undeclared", "AE/AE/AE", parameters=None, metered=False),
    # A lineage the catalogue has published is not controlled; a switched-off threshold decides nothing.
    JobRow("tier2-published-lineage", "AE/AE/AE", pack=OPEN_PACK),
    JobRow("tier2-threshold-off", "AE/AE/AE", pack=NO_PARAMS_PACK, metered=False),
    # Tier 3: admission refuses first; with the Tier 3 rule in shadow it is counted like Tier 2.
    JobRow("tier3-after", "CN/CN/CN", outcome=Outcome.DENY, code="tier3_embargoed", metered=False),
    JobRow("tier3-before", "CN/CN/CN", when=JOB_BEFORE, outcome=Outcome.DENY, code="tier3_embargoed", metered=False),
    JobRow("tier3-shadow-after", "CN/CN/CN", pack=SHADOW_TIER3, **REFUSED),
    JobRow("tier3-shadow-before", "CN/CN/CN", pack=SHADOW_TIER3, when=JOB_BEFORE, outcome=Outcome.SHADOW_DENY,
           code="tier3_embargoed"),  # both in shadow: admission's objection comes first
    JobRow("tier3-shadow-licensed", "CN/CN/CN", pack=SHADOW_TIER3, licences=(LICENCE,),
           outcome=Outcome.SHADOW_DENY, code="tier3_embargoed"),
]


def decide_job(row: JobRow) -> tuple[Decision, Plan | None]:
    """The proxy's job decision, pure: admission, price and plan, the store (an in-memory book), judge."""
    who = tenant(row.countries, *row.licences)
    admission = decide(Facts(row.when, who, RouteKind.SUBMIT), row.pack)
    if not admission.forwards:
        return admission, None
    spec = JobSpec((JobPart(1, "h100"),), 3600.0, "training", row.lineage, parameters=row.parameters)
    priced = price_and_plan(admission, who, Job(spec, "d1", "slurm"), row.pack, row.when)
    if isinstance(priced, Decision):
        return priced, None
    return judge(admission, priced, QuotaBook().reserve(priced.plan, row.when.timestamp()), row.when), priced.plan


@pytest.mark.parametrize("row", JOB_ROWS, ids=[r.name for r in JOB_ROWS])
def test_job_parameter_threshold_golden(row: JobRow) -> None:
    decision, plan = decide_job(row)
    assert (decision.outcome, decision.code.value if decision.code else None) == (row.outcome, row.code)
    metered = [c for c in plan.counters if c.key == PARAMS_KEY] if plan is not None else []
    assert [(c.amount, c.cap) for c in metered] == ([(1.0, None)] if row.metered else [])
    objections = [r for r in decision.reasons if r.rule is RuleId.WEIGHTS_PARAMETERS]
    if row.code == "licence_required":
        (objection,) = objections
        assert objection.code.value == "licence_required"
        assert objection.enforced is (row.outcome is Outcome.DENY)
        assert objection.citation == row.pack.rule(RuleId.WEIGHTS_PARAMETERS).citation != ""
        assert "1e+24 parameters" in objection.detail and "weights_parameters" in objection.detail
        assert decision.cost is not None  # refused or not, the job was priced
    elif row.code is None:
        assert objections == []
    if row.licences == (LICENCE,) and row.outcome is Outcome.ALLOW:
        assert plan is not None and plan.licence_ids == ("D-W1",)
    if row.name.startswith("tier3-shadow"):  # admission's shadow objection is kept beside the licence's
        codes = [(r.code.value, r.enforced) for r in decision.reasons]
        assert codes[0] == ("tier3_embargoed", False)
        licence = {"tier3-shadow-after": [("licence_required", True)],
                   "tier3-shadow-before": [("licence_required", False)]}  # fmt: skip
        assert codes[1:] == licence.get(row.name, [])


def test_a_refused_job_names_the_missing_lineage() -> None:
    """A job declaring no lineage cannot be covered by a licence: the refusal says to declare the licence's."""
    decision, _ = decide_job(JobRow("x", "AE/AE/AE", lineage=None, licences=(LICENCE,)))
    assert decision.reasons[-1].detail.endswith("declare the lineage the licence names")
