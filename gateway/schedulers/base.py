"""The scheduler adapter port, and the strict body decoding every adapter shares."""

import json
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid
from gateway.core.jsontext import json_utf8
from gateway.core.routes import Route, RouteMatch

# Counts above this are refused as absurd (no cluster holds a million GPUs for one job).
MAX_COUNT = 1_000_000
# A gzip body may expand to at most this many bytes before it is refused.
MAX_DECODED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JobView:
    """What reconciliation reads from a status answer: over (True), alive (False) or unknown (None), and its times.

    `walltime_s` is the scheduler's time limit for the job (None: unknown or unlimited) and
    `started` when it began running (epoch seconds; None while pending or when unknown).
    """

    over: bool | None
    pending: bool = False
    walltime_s: float | None = None
    started: float | None = None
    # The GPUs the job's running records hold now, by model as the scheduler names it (None: not
    # known); `settled` when no record waits to start, so nothing more can be allocated to it.
    allocated: tuple[JobPart, ...] | None = None
    settled: bool = False


@dataclass(frozen=True, slots=True)
class LiveJob:
    """A live GPU job in a scheduler's listing, as the sweep for jobs the gateway never admitted reads it.

    `job_id` is the id ownership knows it by (the one a submission returned: an array task's or
    heterogeneous component's record maps to its parent job); `records` the scheduler's own ids
    of its live records; `cancel` the (method, path) that cancels it (None: the API cannot).
    """

    job_id: str
    records: tuple[str, ...]
    cancel: tuple[str, str] | None


class SchedulerAdapter(Protocol):
    """What the proxy needs from one scheduler API: routes, pricing facts, dialect."""

    @property
    def name(self) -> str: ...

    @property
    def default_gpu_model(self) -> str | None:
        """The model to price GPUs at when a request names none (pass to `price`)."""
        ...

    def routes(self) -> tuple[Route, ...]:
        """Every (method, path) this scheduler allows; anything else is refused."""
        ...

    def parse_submission(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec:
        """Extract what a job submission asks for; raises JobSpecInvalid."""
        ...

    def parse_update(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec | None:
        """The new total of a resource-changing update, or None if it changes no resources.

        Raises JobUpdateNotAllowed when resources change but cannot be priced, and
        JobSpecInvalid when the body cannot be read.
        """
        ...

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        """The id of the job a successful submission created, as `job_id_of` spells it."""
        ...

    def job_id_of(self, match: RouteMatch) -> str | None:
        """The id of the job a job-naming route refers to (the ownership key)."""
        ...

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        """Whether the upstream refused the submission in its own dialect (refund is safe)."""
        ...

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        """A listing body reduced to the jobs `owned` accepts; unreadable bodies list nothing."""
        ...

    def status_path(self, job_id: str) -> str | None:
        """The GET path that reports the state of job `job_id` (as `job_id_of` spells it); None: cannot ask."""
        ...

    def finished(self, status: int, body: bytes) -> bool | None:
        """Whether a `status_path` answer says the job is over; None when unsure (then the lease is held)."""
        ...

    def job_view(self, status: int, body: bytes) -> JobView:
        """`finished`, with what the answer says of the job's walltime, start and whether it still waits."""
        ...

    def cancel_target(self, raw_path: str) -> str:
        """The path and query a tenant's cancel is forwarded with, so that it ends the job's work.

        Raises JobSpecInvalid for a cancel that would leave work running while the gateway gives its
        capacity back (a Slurm signal that does not kill, Kubernetes pods orphaned, a dry run).
        """
        ...

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        """(method, path) that cancels job `job_id` (as `job_id_of` spells it) for the gateway; None: it cannot."""
        ...

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        """(method, path) that stops a job running past its walltime, for schedulers that do not stop it themselves."""
        ...

    def shares_cluster_lease(self) -> bool:
        """Whether a tenant's live jobs here share one lease of the cluster's capacity (each job is priced at the
        whole cluster, any of its jobs may claim any GPU of it: Ray with `pricing: cluster`), rather than one each."""
        ...

    def live_jobs_path(self) -> str | None:
        """The GET path listing the scheduler's live jobs as a tenant sees them; None: it cannot be listed."""
        ...

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        """The live GPU jobs of a `live_jobs_path` answer that belong to scheduler user `user` (None: the
        identity is not known; schedulers that name users then list none); None when the answer is unreadable."""
        ...

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        """(content type, body) of a refusal in the scheduler's dialect; None: problem+json."""
        ...


def shown(value: Any) -> str:
    """A value as echoed in a refusal: its repr, cut short (bodies are attacker-sized)."""
    text = repr(value)
    return text if len(text) <= 64 else text[:60] + "...'"


def key_name(key: str) -> str:
    """A client-chosen key as it appears in a field path, cut short."""
    return key if len(key) <= 64 else key[:60] + "..."


def decode_content(content_encoding: str | None, body: bytes) -> bytes:
    """The body with its Content-Encoding removed: identity, or one bounded gzip member."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise JobSpecInvalid("content-encoding", f"{shown(content_encoding)} is not supported; send identity or gzip")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_DECODED_BYTES + 1)
    except zlib.error as exc:
        raise JobSpecInvalid("content-encoding", f"gzip body cannot be decoded: {exc}") from None
    if len(out) > MAX_DECODED_BYTES or inflater.unconsumed_tail:
        raise JobSpecInvalid("content-encoding", "gzip body expands beyond the size limit")
    if not inflater.eof or inflater.unused_data:
        # A second member would be decoded by some servers and not by us: refuse.
        raise JobSpecInvalid("content-encoding", "gzip body must be exactly one complete member")
    return out


def media_type(content_type: str | None) -> str | None:
    """The lower-cased media type of a Content-Type; a non-UTF-8 charset is refused."""
    if content_type is None or not content_type.strip():
        return None
    kind, _, params = content_type.partition(";")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise JobSpecInvalid("content-type", f"charset {shown(value.strip())} is not supported; send UTF-8")
    return kind.strip().lower()


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(f"duplicate key {shown(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


# The escape of a UTF-16 surrogate half; a body is valid UTF-8, so only an escape can produce one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (a parser joins escaped pairs, so any left is lone)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(value: Any) -> str | None:
    """The field path of the first key or string holding a lone surrogate, or None (iterative: no depth limit)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str) and not _is_text(item):
            return path or "body"
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key_name(key)}" if path else key_name(key)
                if not _is_text(key):
                    return where
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def load_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no overflowing numbers, no lone surrogates.

    A lone surrogate escape (`"\\ud800"`) is valid JSON but not text: schedulers cannot be relied on to
    keep it, and a lineage holding one would name quota keys. It is refused before anything is reserved.
    """
    value = _parse(body)
    where = _lone_surrogate(value) if _SURROGATE_ESCAPE.search(body) else None
    if where is not None:
        # The path itself may hold the surrogate: shown escaped, as the client wrote it.
        field = json_utf8(where[:200]).decode("utf-8")
        raise JobSpecInvalid(field, "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not text")
    return value


def _parse(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_finite)
    except _Duplicate as exc:
        raise JobSpecInvalid("body", str(exc)) from None
    except RecursionError:
        raise JobSpecInvalid("body", "JSON nested too deeply") from None
    except ValueError as exc:
        raise JobSpecInvalid("body", f"not valid JSON: {exc}") from None


def load_object(content_encoding: str | None, body: bytes) -> dict[str, Any]:
    """Decode and parse a body that must be one JSON object."""
    value = load_json(decode_content(content_encoding, body))
    if not isinstance(value, dict):
        raise JobSpecInvalid("body", "the top level must be a JSON object")
    return value


def try_json(body: bytes) -> Any:
    """A response body parsed leniently enough to read (lone surrogates kept), or None when it is not JSON."""
    try:
        return _parse(body)
    except JobSpecInvalid:
        return None


def dump_json(value: Any) -> bytes:
    """Compact JSON as UTF-8; a lone surrogate a scheduler's answer held is written back as its escape."""
    return json_utf8(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def count(value: Any, field: str, *, strings: bool = True) -> int:
    """A non-negative integer count: int (not bool) or, if allowed, a string of digits."""
    if isinstance(value, bool):
        raise JobSpecInvalid(field, "must be a count, not true/false")
    if isinstance(value, int):
        number = value
    elif strings and isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,12}\s*", value):
        number = int(value)
    else:
        raise JobSpecInvalid(field, f"must be a non-negative integer, not {shown(value)}")
    if number < 0:
        raise JobSpecInvalid(field, "must not be negative")
    if number > MAX_COUNT:
        raise JobSpecInvalid(field, f"{number} is beyond any real allocation")
    return number


def bounded(total: int, field: str) -> int:
    """Refuse a multiplied-out GPU total beyond any real allocation."""
    if total > MAX_COUNT:
        raise JobSpecInvalid(field, f"{total} GPUs is beyond any real allocation")
    return total


def text(value: Any) -> str | None:
    """A non-empty string value, else None (for names, lineage and purpose)."""
    return value if isinstance(value, str) and value.strip() else None


# A declared parameter count as text: digits with an optional fraction and exponent ("1e23", "175000000000").
_PARAMETERS = re.compile(r"\s*(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def parameters(value: Any, field: str) -> float | None:
    """A declared model parameter count: absent (None) is None; else a positive, finite number, as a JSON
    number or a string of one ("1e23", "1.75e11", "175000000000"). Anything else is JobSpecInvalid naming `field`."""
    if value is None:
        return None
    number = math.nan
    if isinstance(value, str):
        number = float(value) if _PARAMETERS.fullmatch(value) else math.nan
    elif isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**300):
        number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise JobSpecInvalid(field, f"a model's parameter count must be a positive number such as 1e23 or "
                                    f"175000000000, not {shown(value)}")  # fmt: skip
    return number


def mapping(value: Any, field: str) -> Mapping[str, Any]:
    """An optional JSON object: absent/null is empty, anything else but an object is invalid."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobSpecInvalid(field, "must be a JSON object")
    return value


def status_ok(status: int) -> bool:
    return 200 <= status < 300


def query_pairs(raw_path: str) -> tuple[str, list[tuple[str, str]]]:
    """A raw path and its query's (name, value) pairs, percent-decoded, blanks kept."""
    path, _, query = raw_path.partition("?")
    return path, parse_qsl(query, keep_blank_values=True)
