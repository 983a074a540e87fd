"""Strict loading of a pack's weights.yaml (the model catalogue and the weights rules' settings)."""

from datetime import date
from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.core.catalogue import DeclaredOps, Exemption, ModelEntry, StorageBucket, WeightsSettings, Window

_TOP_KEYS = ("thresholds", "models", "storage")
_THRESHOLD_KEYS = ("training_ops", "bio_training_ops", "bio_data_domains", "parameters")
_MODEL_KEYS = ("lineage", "objects", "declared_ops", "parameters", "data_domain", "published", "exempt")
_LINEAGE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+@")


def load_weights(path: Path, problems: list[Problem]) -> WeightsSettings:
    """Read `path`; problems are appended (file:line: field: problem), never raised."""
    try:
        root = load_file(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return WeightsSettings()
    return weights_from_node(root, problems)


def _threshold(fields: Fields, key: str, default: float) -> float | None:
    """A positive number; `null` switches the threshold off; absent keeps the rule's own figure."""
    child = fields.child(key)
    if child is None:
        return default
    if child.raw is None:
        return None
    value: float | None = fields.number(key)
    if value is not None and value <= 0:
        problems = fields.problems
        problems.append(child.problem("must be positive (or null to switch the threshold off)"))
        return default
    return value


def _window(node: Node | None, problems: list[Problem], extra: tuple[str, ...] = ()) -> tuple[Window, Fields] | None:
    if node is None or node.raw is None:
        return None
    fields = Fields(node, problems, ("since", "until", *extra))
    since: date | None = fields.day("since")
    until: date | None = fields.day("until")
    if since is not None and until is not None and until <= since:
        fields.problem("until", "must be after since")
    return Window(since, until), fields


def _pattern(node: Node, problems: list[Problem]) -> str | None:
    raw = node.raw
    if not isinstance(raw, str) or "/" not in raw.strip("/") or raw.startswith("/"):
        problems.append(node.problem('must be "bucket/key-pattern", e.g. "models/llama-x/*"'))
        return None
    return raw


def _model(item: Node, problems: list[Problem]) -> ModelEntry | None:
    fields = Fields(item, problems, _MODEL_KEYS)
    if not fields.ok:
        return None
    lineage: str = fields.text("lineage", "", required=True)
    if lineage and (len(lineage) > 128 or not set(lineage) <= _LINEAGE_CHARS):
        fields.problem("lineage", "must be at most 128 letters, digits or - _ . : / + @")
    objects: list[str] = []
    objects_node = fields.child("objects")
    if objects_node is not None and objects_node.raw is not None:
        if not isinstance(objects_node.raw, list):
            problems.append(objects_node.problem("must be a list of bucket/key patterns"))
        else:
            objects = [p for p in (_pattern(n, problems) for n in objects_node.elements()) if p]
    declared = None
    declared_node = fields.child("declared_ops")
    if declared_node is not None and declared_node.raw is not None:
        d = Fields(declared_node, problems, ("ops", "as_of", "note"))
        ops = d.number("ops", 0.0, required=True)
        if ops < 0:
            d.problem("ops", "must not be negative")
        declared = DeclaredOps(ops, d.day("as_of"), d.text("note", ""))
    parameters = fields.number("parameters")
    if parameters is not None and parameters <= 0:
        fields.problem("parameters", "must be positive")
    published = _window(fields.child("published"), problems)
    exempt = None
    exempt_read = _window(fields.child("exempt"), problems, ("justification",))
    if exempt_read is not None:
        window, e = exempt_read
        justification: str = e.text("justification", "", required=True)
        if e.ok and e.child("since") is None:
            e.missing("since")
        if e.ok and not justification.strip() and e.child("justification") is not None:
            e.problem("justification", "must say why the lineage is below the most capable published model")
        exempt = Exemption(window, justification)
    return ModelEntry(
        lineage=lineage,
        objects=tuple(objects),
        declared=declared,
        parameters=parameters,
        data_domain=fields.text("data_domain"),
        published=published[0] if published is not None else None,
        exempt=exempt,
    )


def _storage(node: Node | None, problems: list[Problem]) -> tuple[StorageBucket, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list of {bucket, since, until, facility}"))
        return ()
    out = []
    for item in node.elements():
        read = _window(item, problems, ("bucket", "facility"))
        if read is None:
            continue
        window, fields = read
        bucket: str = fields.text("bucket", "", required=True)
        if fields.ok and fields.child("since") is None:
            fields.missing("since")
        facility: str = fields.text("facility", "", required=True)
        if bucket and "/" in bucket:
            fields.problem("bucket", "names a bucket (a pattern such as secure-*), not an object")
        out.append(StorageBucket(bucket, window, facility))
    return tuple(out)


def weights_from_node(root: Node, problems: list[Problem]) -> WeightsSettings:
    """Build the settings from an already parsed weights.yaml tree."""
    top = Fields(root, problems, _TOP_KEYS)
    defaults = WeightsSettings()
    thresholds = top.child("thresholds")
    t = Fields(thresholds if thresholds is not None else Node({}, root.file, root.line, "thresholds"), problems,
               _THRESHOLD_KEYS)  # fmt: skip
    domains: list[str] = t.texts("bio_data_domains", sorted(defaults.bio_data_domains))
    models: list[ModelEntry] = []
    models_node = top.child("models")
    if models_node is not None and models_node.raw is not None:
        if not isinstance(models_node.raw, list):
            problems.append(models_node.problem("must be a list of models"))
        else:
            seen: set[str] = set()
            for item in models_node.elements():
                model = _model(item, problems)
                if model is None:
                    continue
                if model.lineage in seen:
                    problems.append(item.problem(f"lineage {model.lineage!r} is listed twice"))
                seen.add(model.lineage)
                models.append(model)
    storage = _storage(top.child("storage"), problems)
    return WeightsSettings(
        training_ops=_threshold(t, "training_ops", 1e26),
        bio_training_ops=_threshold(t, "bio_training_ops", 1e23),
        bio_data_domains=frozenset(domains),
        parameters=_threshold(t, "parameters", 1e23),
        models=tuple(models),
        storage=storage,
    )
