"""JSON text as UTF-8 bytes for every string a JSON parser accepts, lone UTF-16 surrogates included."""


def json_utf8(text: str) -> bytes:
    """`text` (JSON written with `ensure_ascii=False`) as UTF-8; valid Unicode keeps its usual bytes.

    A JSON parser accepts the escape of a lone UTF-16 surrogate (`"\\ud800"`) and returns a string that
    UTF-8 cannot encode. Such a code point (it only ever stands inside a JSON string) is written back as
    the escape it came from, so the bytes are valid UTF-8 and parse back to the same string. Surrogate
    halves that stand next to each other are first joined into the one character a parser reads them as,
    so that parsing the bytes and writing them again gives the same bytes (ledger hashes verify).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return joined.encode("utf-8", "backslashreplace")
