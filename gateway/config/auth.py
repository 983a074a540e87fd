"""The `auth:` section of gateway.yaml: the token issuers the gateway trusts and where their keys live."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem
from gateway.config.secrets import SecretError, load_secret, read_secret

ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA", "HS256")
SUPPORTED_ALGORITHMS = frozenset(ALGORITHMS)


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted token issuer: its audiences, pinned algorithms and where its keys live."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    hs256_secret_file: Path | None = None
    subject_claim: str = "sub"
    leeway_s: float = 30.0
    refetch_cooldown_s: float = 30.0
    refresh_interval_s: float = 300.0
    # `hs256_secret: {env: NAME}`: the variable, and its value as read when the configuration loaded.
    hs256_secret_env: str | None = None
    hs256_secret: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _config_problem(self)
        if problem is not None:
            raise ValueError(f"issuer {self.issuer!r}: {problem}")


def _config_problem(c: IssuerConfig) -> str | None:
    """What is wrong with an issuer's configuration, if anything."""
    asymmetric = set(c.algorithms) - {"HS256"}
    if not c.issuer:
        return "issuer must not be empty"
    if not c.audiences or not all(c.audiences):
        return "audiences must be non-empty strings"
    if not c.algorithms or not set(c.algorithms) <= SUPPORTED_ALGORITHMS:
        return f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}"
    if c.hs256_secret_file is not None and c.hs256_secret is not None:
        return "set hs256_secret_file or hs256_secret, not both"
    if ("HS256" in c.algorithms) != (c.hs256_secret_file is not None or c.hs256_secret is not None):
        return "HS256 must be pinned if and only if an HS256 secret (hs256_secret_file or hs256_secret) is set"
    if c.jwks_file is not None and c.jwks_url is not None:
        return "set jwks_file or jwks_url, not both"
    if bool(asymmetric) != (c.jwks_file is not None or c.jwks_url is not None):
        return "asymmetric algorithms need a jwks_file or jwks_url, and only they use one"
    if c.jwks_url is not None and not c.jwks_url.startswith(("https://", "http://")):
        return "jwks_url must be an http(s) URL"
    if not c.subject_claim:
        return "subject_claim must not be empty"
    if c.leeway_s < 0 or c.refetch_cooldown_s < 0 or c.refresh_interval_s <= 0:
        return "leeway_s and refetch_cooldown_s must be >= 0, refresh_interval_s > 0"
    return None


def _hs256(fields: Fields, base: Path, env: Mapping[str, str]) -> tuple[Path | None, str | None, bytes | None]:
    """(hs256_secret_file, the variable, its value): `hs256_secret_file: PATH`, or `hs256_secret:` with
    `{file: PATH}` (the same: the file is read again at each refresh) or `{env: NAME}` (read now)."""
    secret_file = resolve_path(base, fields.text("hs256_secret_file"))
    node = fields.child("hs256_secret")
    ref = load_secret(node, base, fields.problems)
    if node is None or node.raw is None:
        return secret_file, None, None
    if isinstance(ref, str):
        fields.problem("hs256_secret", "write the secret in a file or a variable: {file: PATH} or {env: NAME}")
        return secret_file, None, None
    if ref is None:
        return secret_file, None, None
    if secret_file is not None:
        fields.problem("hs256_secret", "set hs256_secret_file or hs256_secret, not both")
        return secret_file, None, None
    if ref.file is not None:
        return ref.file, None, None
    assert ref.env is not None and isinstance(node.raw, dict)
    try:
        value = read_secret(ref, env)
    except SecretError as exc:
        fields.problems.append(node.raw["env"].problem(str(exc)))
        return None, ref.env, None
    return None, ref.env, value.encode()


def load_issuers(
    node: Node | None, base: Path, problems: list[Problem], env: Mapping[str, str] | None = None
) -> tuple[IssuerConfig, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list of issuers"))
        return ()
    out = []
    seen: set[str] = set()
    for item in node.elements():
        before = len(problems)
        fields = Fields(
            item,
            problems,
            (
                "issuer",
                "audiences",
                "algorithms",
                "jwks_file",
                "jwks_url",
                "hs256_secret_file",
                "hs256_secret",
                "subject_claim",
                "leeway_s",
                "refetch_cooldown_s",
                "refresh_interval_s",
            ),
        )
        secret, secret_env, secret_value = _hs256(fields, base, {} if env is None else env)
        # (a written-out or unreadable hs256_secret is its own problem, not a missing one)
        has_secret = secret is not None or secret_env is not None or fields.child("hs256_secret") is not None
        default_algs = (
            ["HS256"]
            if has_secret and fields.child("jwks_file") is None and fields.child("jwks_url") is None
            else ["RS256", "PS256", "ES256", "EdDSA"]
        )
        algorithms: list[str] = fields.texts("algorithms", default_algs)
        for alg in algorithms:
            if alg not in ALGORITHMS:
                fields.problem("algorithms", f"{alg!r} is not one of {', '.join(ALGORITHMS)}")
        if "HS256" in algorithms and not has_secret:
            fields.problem("algorithms", "HS256 needs hs256_secret_file (or hs256_secret)")
        jwks_file = resolve_path(base, fields.text("jwks_file"))
        jwks_url = fields.text("jwks_url")
        if jwks_file is None and jwks_url is None and not has_secret:
            problems.append(item.problem("one of jwks_file, jwks_url, hs256_secret_file, hs256_secret is required"))
        audiences: list[str] = fields.texts("audiences", [], required=True)
        issuer: str = fields.text("issuer", "", required=True)
        if issuer and issuer in seen:  # the authenticator keeps one key set per issuer
            fields.problem("issuer", f"{issuer!r} is configured twice")
        seen.add(issuer)
        if len(problems) > before:
            continue
        try:
            out.append(
                IssuerConfig(
                    issuer=issuer,
                    audiences=tuple(audiences),
                    algorithms=tuple(algorithms),
                    jwks_file=jwks_file,
                    jwks_url=jwks_url,
                    hs256_secret_file=secret,
                    subject_claim=fields.text("subject_claim", "sub"),
                    leeway_s=fields.number("leeway_s", 30.0),
                    refetch_cooldown_s=fields.number("refetch_cooldown_s", 30.0),
                    refresh_interval_s=fields.number("refresh_interval_s", 300.0),
                    hs256_secret_env=secret_env,
                    hs256_secret=secret_value,
                )
            )
        except ValueError as exc:
            problems.append(item.problem(str(exc)))
    return tuple(out)
