"""Strict loading of a pack's gpus.yaml into a GpuCatalogue."""

from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.core.pricing import GpuCatalogue, GpuModel

_TOP_KEYS = ("utilisation", "models")
_MODEL_KEYS = ("tpp", "dense_bf16_flops", "controlled", "aliases")


def load_gpus(path: Path, problems: list[Problem]) -> GpuCatalogue:
    """Read `path`; problems are appended (file:line: field: problem), never raised.

    On problems the returned catalogue holds the models that loaded cleanly; callers must
    check `problems` before using it.
    """
    try:
        root = load_file(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return GpuCatalogue(())
    return gpus_from_node(root, problems)


def gpus_from_node(root: Node, problems: list[Problem]) -> GpuCatalogue:
    """Build a catalogue from an already parsed gpus.yaml tree."""
    top = Fields(root, problems, _TOP_KEYS)
    utilisation = top.number("utilisation", default=1.0)
    util_node = top.child("utilisation")
    if util_node is not None and not 0 < utilisation <= 1:
        problems.append(util_node.problem("must be greater than 0 and at most 1"))
        utilisation = 1.0
    models_node = top.child("models")
    if models_node is None:
        if top.ok:
            top.missing("models")
        return GpuCatalogue((), utilisation)
    if not isinstance(models_node.raw, dict) or not models_node.raw:
        problems.append(models_node.problem("must be a non-empty mapping of model name to model"))
        return GpuCatalogue((), utilisation)
    models: list[GpuModel] = []
    seen: dict[str, str] = {}
    for name, node in models_node.items():
        model = _model(name, node, problems)
        if model is None:
            continue
        clash = False
        for label, where in _labels(model, node):
            key = label.strip().casefold()
            if seen.get(key) == model.name:
                continue  # a model may repeat its own name among its aliases
            if key in seen:
                problems.append(where.problem(f"label {label!r} already names {seen[key]}"))
                clash = True
            else:
                seen[key] = model.name
        if not clash:
            models.append(model)
    return GpuCatalogue(tuple(models), utilisation)


def _model(name: str, node: Node, problems: list[Problem]) -> GpuModel | None:
    before = len(problems)
    fields = Fields(node, problems, _MODEL_KEYS)
    tpp = fields.number("tpp", required=True)
    flops = fields.number("dense_bf16_flops", required=True)
    controlled = fields.flag("controlled", required=True)
    aliases = fields.texts("aliases", default=[])
    for key, value in (("tpp", tpp), ("dense_bf16_flops", flops)):
        child = fields.child(key)
        if child is not None and value is not None and value <= 0:
            problems.append(child.problem("must be a positive number"))
    alias_node = fields.child("aliases")
    if alias_node is not None and isinstance(aliases, list):
        for i, alias in enumerate(aliases):
            if not alias.strip():
                problems.append(alias_node.raw[i].problem("must not be empty"))
    if len(problems) > before:
        return None
    return GpuModel(name, float(tpp), float(flops), bool(controlled), tuple(aliases))


def _labels(model: GpuModel, node: Node) -> list[tuple[str, Node]]:
    """Every label of a model with the node to blame for a clash (the alias's own line)."""
    out: list[tuple[str, Node]] = [(model.name, node)]
    raw = node.raw
    alias_node = raw.get("aliases") if isinstance(raw, dict) else None
    elements = list(alias_node.elements()) if alias_node is not None else []
    for i, alias in enumerate(model.aliases):
        out.append((alias, elements[i] if i < len(elements) else node))
    return out
