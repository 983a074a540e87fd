"""The `auth:` section of gateway.yaml: the token issuers the gateway trusts and where their keys live."""

from dataclasses import dataclass
from pathlib import Path

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem

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
    if ("HS256" in c.algorithms) != (c.hs256_secret_file is not None):
        return "HS256 must be pinned if and only if hs256_secret_file is set"
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


def load_issuers(node: Node | None, base: Path, problems: list[Problem]) -> tuple[IssuerConfig, ...]:
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
                "subject_claim",
                "leeway_s",
                "refetch_cooldown_s",
                "refresh_interval_s",
            ),
        )
        secret = resolve_path(base, fields.text("hs256_secret_file"))
        default_algs = (
            ["HS256"]
            if secret is not None and fields.child("jwks_file") is None and fields.child("jwks_url") is None
            else ["RS256", "PS256", "ES256", "EdDSA"]
        )
        algorithms: list[str] = fields.texts("algorithms", default_algs)
        for alg in algorithms:
            if alg not in ALGORITHMS:
                fields.problem("algorithms", f"{alg!r} is not one of {', '.join(ALGORITHMS)}")
        if "HS256" in algorithms and secret is None:
            fields.problem("algorithms", "HS256 needs hs256_secret_file")
        jwks_file = resolve_path(base, fields.text("jwks_file"))
        jwks_url = fields.text("jwks_url")
        if jwks_file is None and jwks_url is None and secret is None:
            problems.append(item.problem("one of jwks_file, jwks_url, hs256_secret_file is required"))
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
                )
            )
        except ValueError as exc:
            problems.append(item.problem(str(exc)))
    return tuple(out)
