"""What a Kubernetes patch changes under `spec`: the parsing Jobs and custom resources share.

Each caller names its suspend path (whose `true` holds fewer resources, so is no change) and
which spec fields count; the patch grammar (merge/apply objects, RFC 6902 operations with
RFC 6901 pointers) is read here once.
"""

from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.jobs import JobSpecInvalid


def _suspends(suspend: tuple[str, ...], key: str, value: Any) -> bool:
    if len(suspend) == 1:
        return key == suspend[0] and value is True
    return len(suspend) == 2 and key == suspend[0] and value == {suspend[1]: True}


def merge_touches(patch: Mapping[str, Any], suspend: tuple[str, ...], counts: Callable[[str], bool]) -> str | None:
    """What a merge or apply patch changes among the spec fields `counts` names (but suspending), or None."""
    if any(k.startswith("$") for k in patch):
        return "the whole object (a $patch directive)"
    if "spec" not in patch:
        return None
    spec = patch["spec"]
    if not isinstance(spec, dict):
        return "spec"
    for key, value in spec.items():
        if key.startswith("$"):
            return "spec (a $patch directive)"
        if _suspends(suspend, key, value):
            continue  # suspending holds fewer resources
        if counts(key):
            return f"spec.{key}"
    return None


def op_touches(op: Any, suspend: tuple[str, ...], field: Callable[[list[str]], str | None]) -> str | None:
    """What a JSON-patch operation changes: the whole object, spec, or what `field` says of a pointer under spec.

    `field` gets the decoded tokens of a `path` or `from` below spec (`["spec", ...]`) and names
    what it changes, or None when it changes nothing that counts. Adding or replacing the
    suspend path with `true` changes nothing.
    """
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise JobSpecInvalid("body", "each JSON patch operation needs an op")
    if op["op"] == "test":
        return None
    for key in ("path", "from"):
        pointer = op.get(key)
        if pointer is None and key == "from":
            continue
        if not isinstance(pointer, str):
            raise JobSpecInvalid("body", f"JSON patch {key} must be a string")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
        if not tokens or tokens == ["spec"]:
            return pointer or "the whole object"
        if tokens[0] != "spec":
            continue
        suspends = op["op"] in ("add", "replace") and op.get("value") is True
        if key == "path" and suspends and tokens == ["spec", *suspend]:
            continue
        touched = field(tokens)
        if touched is not None:
            return touched
    return None
