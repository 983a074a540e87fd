"""Slurm value grammars: GPU specs, gres/TRES strings, node ranges, host lists, arrays, time."""

import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.core.jobs import JobSpecInvalid
from gateway.schedulers.base import MAX_COUNT, count, shown

# GPU label (None: the cluster's default type) -> GPUs.
GpuCounts = dict[str | None, int]

_TYPE = r"[A-Za-z0-9_.\-]+"
_GPU_ITEM = re.compile(rf"(?:(?P<type>{_TYPE}):)?(?P<count>[0-9]+)")
_GRES_REST = re.compile(rf"(?::(?P<type>{_TYPE}))?(?:[:=](?P<count>[0-9]+))?")
# gres names that share GPUs (MPS, sharding) or look like GPUs under another name: these
# hold GPU hardware we cannot count, so they are refused rather than ignored.
_GPU_LIKE = ("gpu", "mps", "shard", "mig")


def _add(into: GpuCounts, label: str | None, n: int, field: str) -> None:
    into[label] = into.get(label, 0) + n
    if into[label] > MAX_COUNT:
        raise JobSpecInvalid(field, "GPU count is beyond any real allocation")


def number_struct(value: Any, field: str) -> int | None:
    """A v0.0.40+ `{"set", "infinite", "number"}` struct or a plain count; None when unset."""
    if isinstance(value, dict):
        if value.get("infinite") is True:
            raise JobSpecInvalid(field, "must not be infinite")
        if value.get("set") is False:
            return None
        return count(value.get("number"), field)
    return count(value, field)


def gpu_spec(value: Any, field: str) -> GpuCounts:
    """`gpus` / `gpus_per_*` values: 2, "2", "h100:2", "gpu:h100:2", comma lists."""
    out: GpuCounts = {}
    if isinstance(value, dict):
        n = number_struct(value, field)
        return {None: n} if n else {}
    if not isinstance(value, str):
        n = count(value, field)
        return {None: n} if n else {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        lowered = item.lower()
        for prefix in ("gres/gpu:", "gres:gpu:", "gpu:"):
            if lowered.startswith(prefix):
                item = item[len(prefix) :]
                break
        found = _GPU_ITEM.fullmatch(item)
        if found is None:
            raise JobSpecInvalid(field, f"cannot read GPU request {shown(raw.strip())}")
        _add(out, found["type"], count(found["count"], field), field)
    return out


def gres_spec(value: Any, field: str) -> GpuCounts:
    """`gres` and `tres_per_*` strings: "gpu:h100:2", "gres/gpu:h100=8", "gres/gpu=8", lists.

    Non-GPU resources (cpu=4, mem=8G, license/x, nic:1) are ignored; GPU-sharing gres (mps,
    shard) and anything else naming a GPU are refused.
    """
    out: GpuCounts = {}
    if value is None:
        return out
    if not isinstance(value, str):
        raise JobSpecInvalid(field, "must be a string")
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        lowered = item.lower()
        for prefix in ("gres/", "gres:"):
            if lowered.startswith(prefix):
                item = item[len(prefix) :]
                lowered = lowered[len(prefix) :]
                break
        name = re.split(r"[:=]", item, maxsplit=1)[0]
        lname = name.lower()
        if lname != "gpu":
            if any(word in lname for word in _GPU_LIKE):
                raise JobSpecInvalid(field, f"cannot price GPU resource {shown(raw.strip())}")
            continue
        found = _GRES_REST.fullmatch(item[len(name) :])
        if found is None:
            raise JobSpecInvalid(field, f"cannot read GPU request {shown(raw.strip())}")
        label, n = found["type"], found["count"]
        if n is None and label is not None and label.isdigit():
            label, n = None, label  # "gpu:2": a lone number is a count, as Slurm reads it
        _add(out, label, count(n, field) if n is not None else 1, field)
    return out


def node_max(value: Any, field: str) -> int:
    """The most nodes a `nodes` value allows: 4, "4", "2-4", "1,3-5", [min, max], struct."""
    if isinstance(value, dict):
        n = number_struct(value, field)
        return n if n is not None else 1
    if isinstance(value, list):
        if not 1 <= len(value) <= 2:
            raise JobSpecInvalid(field, "a node range is [min, max]")
        return max(count(v, field) for v in value)
    if isinstance(value, str):
        numbers = re.split(r"[-,:]", value.strip())
        if not all(re.fullmatch(r"\s*[0-9]+\s*", n) for n in numbers):
            raise JobSpecInvalid(field, f"cannot read node count {shown(value)}")
        return max(count(n, field) for n in numbers)
    return count(value, field, strings=False)


_BRACKETS = r"\[([^\[\]]*)\]"


def host_count(value: Any, field: str) -> int:
    """How many hosts a node list names: "n1,n2", "gpu[01-04,07]", or a list of those."""
    if isinstance(value, list):
        return sum(host_count(v, field) for v in value)
    if not isinstance(value, str):
        raise JobSpecInvalid(field, "must be a host list string")
    total = 0
    for item in re.split(r",(?![^\[]*\])", value):
        item = item.strip()
        if not item:
            continue
        if re.search(r"[\[\]]", re.sub(_BRACKETS, "", item)):
            raise JobSpecInvalid(field, f"cannot read host list {shown(value)}")
        hosts = 1
        for group in re.findall(_BRACKETS, item):
            size = 0
            for span in group.split(","):
                found = re.fullmatch(r"\s*([0-9]{1,9})(?:-([0-9]{1,9}))?\s*", span)
                if found is None or (found[2] is not None and int(found[2]) < int(found[1])):
                    raise JobSpecInvalid(field, f"cannot read host list {shown(value)}")
                size += int(found[2]) - int(found[1]) + 1 if found[2] is not None else 1
            hosts *= size
        total += hosts
        if total > MAX_COUNT:
            raise JobSpecInvalid(field, "host list is beyond any real allocation")
    return total


_ARRAY_ITEM = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9})(?::([0-9]{1,9}))?)?")


def array_concurrency(value: Any, field: str = "array") -> int:
    """Copies of an array job running at once: "0-99%10" -> 10, "1,3,5" -> 3, "0-99:2" -> 50."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise JobSpecInvalid(field, "must be an array index string")
    spec = str(value).strip()
    if not spec:
        return 1
    spec, cap_sep, cap_text = spec.partition("%")
    total = 0
    for item in spec.split(","):
        found = _ARRAY_ITEM.fullmatch(item.strip())
        if found is None:
            raise JobSpecInvalid(field, f"cannot read array index {shown(item.strip())}")
        first = int(found[1])
        last = int(found[2]) if found[2] is not None else first
        step = int(found[3]) if found[3] is not None else 1
        if last < first or step < 1:
            raise JobSpecInvalid(field, f"empty array range {shown(item.strip())}")
        total += (last - first) // step + 1
        if total > MAX_COUNT:
            raise JobSpecInvalid(field, "array is beyond any real allocation")
    if cap_sep:
        if not re.fullmatch(r"\s*[0-9]{1,9}\s*", cap_text) or int(cap_text) < 1:
            raise JobSpecInvalid(field, f"cannot read array throttle {shown(cap_text)}")
        return min(total, int(cap_text))
    return total


_N = "([0-9]{1,7})"
_DAYS = re.compile(rf"{_N}-{_N}(?::{_N}(?::{_N})?)?")
_CLOCK = re.compile(rf"{_N}(?::{_N}(?::{_N})?)?")


def time_limit_s(value: Any, field: str = "time_limit") -> float | None:
    """A time limit in seconds, or None when unset or unlimited (the partition's limit applies).

    Minutes as an int; a `{"set","infinite","number"}` struct; or Slurm's time strings
    ("90", "1:30:00", "2-12", "2-12:30:00", "UNLIMITED"). Zero means no limit in Slurm.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("infinite") is True or value.get("set") is False:
            return None
        value = value.get("number")
    if isinstance(value, bool):
        raise JobSpecInvalid(field, "must be minutes, not true/false")
    if isinstance(value, int):
        minutes = count(value, field)
        return minutes * 60.0 if minutes else None
    if not isinstance(value, str):
        raise JobSpecInvalid(field, f"cannot read time limit {shown(value)}")
    spec = value.strip()
    if spec.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days = _DAYS.fullmatch(spec)
    if days:
        d, h, m, s = (int(g) if g else 0 for g in days.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    else:
        clock = _CLOCK.fullmatch(spec)
        if clock is None:
            raise JobSpecInvalid(field, f"cannot read time limit {shown(value)}")
        parts = [int(g) for g in clock.groups() if g is not None]
        if len(parts) == 1:
            seconds = parts[0] * 60
        elif len(parts) == 2:
            seconds = parts[0] * 60 + parts[1]
        else:
            seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    if seconds == 0:
        return None
    # Slurm rounds seconds up to whole minutes.
    return math.ceil(seconds / 60) * 60.0


def environment(value: Any) -> Mapping[str, str]:
    """A job environment as a dict, from {"K": "V"} or ["K=V", ...]; unreadable -> empty."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(v, str)}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for item in value:
            if isinstance(item, str) and "=" in item:
                key, _, val = item.partition("=")
                out[key] = val
        return out
    return {}


def environment_value(value: Any, name: str) -> Any:
    """One variable of a job environment as sent ({"K": V} or ["K=V", ...]): any JSON value; None when absent."""
    if isinstance(value, dict):
        return value.get(name)
    found = None
    if isinstance(value, list):
        for item in value:  # the last one wins, as in `environment`
            key, sep, val = item.partition("=") if isinstance(item, str) else ("", "", "")
            if sep and key == name:
                found = val
    return found


def comment_tags(value: Any) -> Mapping[str, str]:
    """`exportgate:lineage=X,purpose=Y,params=N` in a job comment, as {"lineage": X, "purpose": Y, "params": N}."""
    if not isinstance(value, str):
        return {}
    found = re.search(r"exportgate:(\S+)", value)
    if found is None:
        return {}
    out: dict[str, str] = {}
    for pair in found[1].split(","):
        key, sep, val = pair.partition("=")
        if sep and val:
            out[key.strip().lower()] = val.strip()
    return out
