"""Request path normalisation: a path is routed only if it is already in normal form."""

import re
from urllib.parse import unquote


class PathRejected(ValueError):
    """The raw path cannot be normalised safely (bad encoding, NUL, traversal above root)."""


def normalise(raw: str) -> str:
    """Percent-decode, drop dot segments and collapse duplicate slashes; keep a trailing slash."""
    if not raw.startswith("/"):
        raise PathRejected("path must be absolute")
    if "\\" in raw or "%2f" in raw.lower() or "%5c" in raw.lower():
        raise PathRejected("encoded or back slashes are not allowed in paths")
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise PathRejected("path is not valid UTF-8") from exc
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
        raise PathRejected("control characters in path")
    out: list[str] = []
    for segment in decoded.split("/")[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise PathRejected("path climbs above the root")
            out.pop()
            continue
        out.append(segment)
    trailing = "/" if decoded.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing


# Segments of unreserved and sub-delim characters not starting with a dot: no percent-decoding, dot segment,
# empty segment, control or non-ASCII character can be in such a path, so it is in normal form as it stands.
_PLAIN = re.compile(r"(?:/[A-Za-z0-9_~:@!$&'()*+,;=-][A-Za-z0-9._~:@!$&'()*+,;=-]*)*/?")


def canonical_or_none(raw: str) -> str | None:
    """The path if it is already in normal form, else None (the caller refuses it)."""
    if raw and _PLAIN.fullmatch(raw):  # the common path, decided without normalising it
        return raw
    try:
        return raw if normalise(raw) == raw else None
    except PathRejected:
        return None
