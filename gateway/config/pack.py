"""Load a policy pack directory (pack.yaml, tiers.yaml and section files) into a Pack."""

import hashlib
from datetime import date
from pathlib import Path

from gateway.config.caps import load_caps
from gateway.config.fields import Fields, as_str
from gateway.config.gpus import load_gpus
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.config.weights import load_weights
from gateway.core.iso import country_problem
from gateway.core.policy import Action, Enforcement, KycSettings, Pack, ReadAccess, Rule, RuleId
from gateway.core.tiers import Membership, TierTable


def content_hash(directory: Path) -> str:
    """SHA-256 over every YAML file of the pack, by name, so the ledger can cite the exact pack."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _country(node: Node, problems: list[Problem]) -> str | None:
    try:
        code = as_str(node)
    except ValueError as exc:
        problems.append(node.problem(f'{exc} (quote codes such as "NO")'))
        return None
    problem = country_problem(code)
    if problem is not None:
        problems.append(node.problem(problem))
        return None
    return code


def _memberships(node: Node | None, problems: list[Problem]) -> tuple[Membership, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list of country codes"))
        return ()
    out: list[Membership] = []
    for item in node.elements():
        if isinstance(item.raw, dict):
            fields = Fields(item, problems, ("country", "since", "until"))
            child = fields.child("country")
            if child is None:
                fields.missing("country")
                continue
            code = _country(child, problems)
            since: date | None = fields.day("since")
            until: date | None = fields.day("until")
            if since and until and until <= since:
                problems.append(item.problem("until must be after since"))
            if code:
                out.append(Membership(code, since, until))
        else:
            code = _country(item, problems)
            if code:
                out.append(Membership(code))
    return tuple(out)


def _tiers(path: Path, problems: list[Problem]) -> TierTable:
    root = load_file(path)
    fields = Fields(root, problems, ("tier1", "tier3", "aliases"))
    aliases: dict[str, str] = {}
    alias_node = fields.child("aliases")
    if alias_node is not None and isinstance(alias_node.raw, dict):
        for key, value in alias_node.items():
            key_problem = country_problem(key)
            if key_problem is not None:
                problems.append(value.problem(key_problem))
            target = _country(value, problems)
            if target:
                aliases[key] = target
    elif alias_node is not None and alias_node.raw is not None:
        problems.append(alias_node.problem("must be a mapping of country to country"))
    return TierTable(
        _memberships(fields.child("tier1"), problems),
        _memberships(fields.child("tier3"), problems),
        aliases,
    )


def _rules(node: Node | None, problems: list[Problem]) -> dict[RuleId, Rule]:
    rules: dict[RuleId, Rule] = {}
    if node is None:
        return rules
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of rule id to rule"))
        return rules
    for key, child in node.items():
        try:
            rule_id = RuleId(key)
        except ValueError:
            problems.append(child.problem(f"unknown rule; known: {', '.join(r.value for r in RuleId)}"))
            continue
        fields = Fields(child, problems, ("enforced_from", "citation"))
        enforced = fields.child("enforced_from")
        if enforced is None:
            fields.missing("enforced_from")
        rules[rule_id] = Rule(rule_id, fields.day("enforced_from"), fields.text("citation", ""))
    return rules


def _kyc(node: Node | None, problems: list[Problem]) -> KycSettings:
    if node is None:
        return KycSettings()
    fields = Fields(node, problems, ("reads",))
    reads_node = fields.child("reads")
    reads = dict(KycSettings().reads)
    if reads_node is not None:
        read_fields = Fields(reads_node, problems, ("pending", "expired", "rejected"))
        for status in ("pending", "expired", "rejected"):
            value = read_fields.choice(status, [a.value for a in ReadAccess])
            if value is not None:
                reads[status] = ReadAccess(value)
    return KycSettings(reads)


def _enforcement(node: Node | None, problems: list[Problem]) -> Enforcement:
    if node is None or node.raw is None:
        return Enforcement()
    fields = Fields(node, problems, ("over_allocation", "unadmitted"))
    actions = [a.value for a in Action]
    over = fields.choice("over_allocation", actions, default=Enforcement().over_allocation.value)
    unadmitted = fields.choice("unadmitted", actions, default=Enforcement().unadmitted.value)
    return Enforcement(Action(over or Action.CANCEL), Action(unadmitted or Action.ALERT))


def load_pack(directory: Path) -> Pack:
    """Load and validate a pack directory; raise ConfigError listing every problem."""
    problems: list[Problem] = []
    manifest = directory / "pack.yaml"
    if not manifest.is_file():
        raise ConfigError([Problem(str(manifest), 1, "(file)", "pack.yaml not found")])
    try:
        root = load_file(manifest)
        fields = Fields(root, problems, ("name", "version", "description", "rules", "kyc", "enforcement"))
        name = fields.text("name", "", required=True)
        version = fields.text("version", "", required=True)
        fields.text("description")
        rules = _rules(fields.child("rules"), problems)
        kyc = _kyc(fields.child("kyc"), problems)
        enforcement = _enforcement(fields.child("enforcement"), problems)
        tiers = _tiers(directory / "tiers.yaml", problems)
        gpus = load_gpus(directory / "gpus.yaml", problems) if (directory / "gpus.yaml").is_file() else None
        caps = load_caps(directory / "caps.yaml", problems) if (directory / "caps.yaml").is_file() else None
        weights_file = directory / "weights.yaml"
        weights = load_weights(weights_file, problems) if weights_file.is_file() else None
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from exc
    if problems:
        raise ConfigError(problems)
    return Pack(name, version, content_hash(directory), tiers, rules, kyc, gpus, caps, enforcement, weights)
