"""What `serve` needs before it may start, checked offline: `check` prints it, `serve` refuses to start on it.

Loading gateway.yaml checks its form (and reads the secrets it names for itself: the Redis URL, an
HS256 secret in a variable); this reads what else it names (pack, registry, admin tokens, key sets,
signing key, upstream credentials, TLS certificates) the way the gateway will, so the two cannot disagree.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.adapters.jwks import JwksError, hs256_key_set, read_hs256_secret, read_jwks_file
from gateway.adapters.ledger.signing import KeyFileError, load_signer
from gateway.adapters.tls_files import TlsFilesError, check_ca, check_pair
from gateway.adapters.upstream import CredentialError, SlurmTokens, client_tls, read_key, read_static
from gateway.config.admin import load_admin_tokens
from gateway.config.located import ConfigError, Problem
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.config.secrets import url_password
from gateway.config.settings import Settings


@dataclass(slots=True)
class Preflight:
    """`problems` stop `serve` (or would leave it never ready); the rest only inform."""

    problems: list[Problem] = field(default_factory=list)
    # The gateway runs, but refuses some requests by design (a tenant whose country is not recorded).
    warnings: list[Problem] = field(default_factory=list)
    # What cannot be checked offline.
    notes: list[Problem] = field(default_factory=list)


def preflight(settings: Settings, env: Mapping[str, str]) -> Preflight:
    """Everything `serve` reads at start, read now; `env` is the environment it will run in."""
    out = Preflight()
    _policy(settings, out)
    _admin(settings, out)
    _issuers(settings, out)
    _ledger(settings, out)
    _upstreams(settings, env, out)
    _webhook(settings, out)
    _listeners(settings, out)
    _quota(settings, out)
    return out


def _policy(s: Settings, out: Preflight) -> None:
    if not s.pack_dir.is_dir():
        out.problems.append(s.where("policy.pack").problem(f"{s.pack_dir}: no such directory"))
    else:
        try:
            load_pack(s.pack_dir)
        except ConfigError as exc:
            out.problems.extend(exc.problems)
    if not s.registry_file.is_file():
        out.problems.append(s.where("policy.registry").problem(f"{s.registry_file}: no such file"))
        return
    try:
        load_registry(s.registry_file, out.warnings)
    except ConfigError as exc:
        out.problems.extend(exc.problems)


def _admin(s: Settings, out: Preflight) -> None:
    if s.admin_tokens_file is None:
        return
    if not s.admin_tokens_file.is_file():
        message = f"{s.admin_tokens_file}: no such file (make entries with `exportgate keys admin-token`)"
        out.problems.append(s.where("admin.tokens_file").problem(message))
        return
    try:
        load_admin_tokens(s.admin_tokens_file)
    except ConfigError as exc:
        out.problems.extend(exc.problems)


def _issuers(s: Settings, out: Preflight) -> None:
    if not s.issuers:
        out.warnings.append(
            Problem("", 0, "auth.issuers", "none configured: every request is refused 401 and /readyz answers 503")
        )
    for i, issuer in enumerate(s.issuers):
        where = f"auth.issuers[{i}]"
        secret_key = "hs256_secret.file" if f"{where}.hs256_secret.file" in s.origins else "hs256_secret_file"
        for key, path, read in (
            ("jwks_file", issuer.jwks_file, read_jwks_file),
            (secret_key, issuer.hs256_secret_file, read_hs256_secret),
        ):
            if path is None:
                continue
            try:
                read(path)
            except JwksError as exc:
                out.problems.append(s.where(f"{where}.{key}").problem(str(exc)))
        if issuer.hs256_secret is not None:  # read from its variable when gateway.yaml loaded
            try:
                hs256_key_set(issuer.hs256_secret, f"environment variable {issuer.hs256_secret_env}")
            except JwksError as exc:
                out.problems.append(s.where(f"{where}.hs256_secret.env").problem(str(exc)))
        if issuer.jwks_url is not None:
            message = "not fetched offline; serve fetches it at start and retries, not ready until it answers"
            out.notes.append(s.where(f"{where}.jwks_url").problem(message))


def _ledger(s: Settings, out: Preflight) -> None:
    for key, path in (("ledger.dir", s.ledger.dir), ("ledger.anchor_dir", s.ledger.anchor_dir)):
        if path is not None and path.exists() and not path.is_dir():
            out.problems.append(s.where(key).problem(f"{path}: not a directory"))
    if s.ledger.signing_key_file is not None:
        try:
            load_signer(s.ledger.signing_key_file)
        except KeyFileError as exc:
            out.problems.append(s.where("ledger.signing_key_file").problem(str(exc)))


def _upstreams(s: Settings, env: Mapping[str, str], out: Preflight) -> None:
    for i, upstream in enumerate(s.upstreams):
        for name, source in upstream.headers.items():
            where = f"upstreams[{i}].headers.{name}"
            try:
                if source.slurm_jwt_key_file is not None:
                    where += ".slurm_jwt_key_file"
                    SlurmTokens(read_key(name, source.slurm_jwt_key_file), source.lifespan_s)
                elif source.file is not None or source.env is not None:
                    where += ".file" if source.file is not None else ".env"
                    read_static(name, source, env)
            except CredentialError as exc:
                out.problems.append(s.where(where).problem(str(exc).removeprefix(f"header {name}: ")))
        if upstream.tls is not None:
            try:
                client_tls(upstream)
            except TlsFilesError as exc:
                out.problems.append(s.where(f"upstreams[{i}].tls").problem(str(exc)))


def _webhook(s: Settings, out: Preflight) -> None:
    """The admission webhook's certificate and key load as one pair (cert-manager's `tls.crt`, `tls.key`)."""
    if s.admission_webhook is None:
        return
    try:
        check_pair(s.admission_webhook.cert_file, s.admission_webhook.key_file)
    except TlsFilesError as exc:
        out.problems.append(s.where("admission_webhook.cert_file").problem(str(exc)))


def _listeners(s: Settings, out: Preflight) -> None:
    """Each listener's `tls` files load: the pair, and the client CA bundle when mutual TLS is asked for."""
    decision = s.decision.tls if s.decision is not None else None
    for key, tls in (("listen", s.listen_tls), ("admin", s.admin_tls), ("decision", decision)):
        if tls is None:
            continue
        try:
            check_pair(tls.cert_file, tls.key_file)
        except TlsFilesError as exc:
            out.problems.append(s.where(f"{key}.tls.cert_file").problem(str(exc)))
        if tls.client_ca_file is None:
            continue
        try:
            check_ca(tls.client_ca_file)
        except TlsFilesError as exc:
            out.problems.append(s.where(f"{key}.tls.client_ca_file").problem(str(exc)))


def _quota(s: Settings, out: Preflight) -> None:
    """A password written in gateway.yaml is readable by whoever reads the file (and its copies in git)."""
    if s.quota.redis_url_inline and s.quota.redis_url is not None and url_password(s.quota.redis_url):
        message = (
            "the URL holds a password in the configuration file: use {env: NAME}, {file: PATH} "
            "or EXPORTGATE_REDIS_URL instead"
        )
        out.warnings.append(s.where("quota.redis_url").problem(message))
