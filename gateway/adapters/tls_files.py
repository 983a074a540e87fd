"""TLS contexts from certificate, key and CA files, reloaded when the files change.

cert-manager renews a certificate by rewriting the Secret, and the kubelet updates the mounted
files (an atomic symlink swap) without restarting the pod. Each watcher looks at the files' times
every interval and builds a whole new context from them; a pair that fails to load (the key of
another certificate, a half-written file) keeps the last good context and is tried again when the
files change next.

A listener's context is fixed when it starts listening, so a server hands each new connection
the newest context from its `sni_callback` (OpenSSL calls it on every handshake, with or without
a server name): new handshakes use the renewed certificate, open connections keep theirs, and no
handshake ever sees a half-loaded context. Every context requires TLS 1.2 or later.
"""

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

log = logging.getLogger(__name__)

Stamp = tuple[tuple[float, int, int], ...]


class TlsFilesError(Exception):
    """The files cannot be read, are not what they should be, or the key is not the certificate's."""


def _load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFilesError(f"cannot load {cert} with {key}: {exc}") from exc


def _trust(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFilesError(f"cannot load the CA bundle {ca_file}: {exc}") from exc


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context serving the pair; with `client_ca`, clients must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key)
    if client_ca is not None:
        _trust(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context verifying servers against `ca_file` (default: the system's trust store, or
    SSL_CERT_FILE) and presenting the `cert`/`key` pair when given (mutual TLS)."""
    context = ssl.create_default_context()
    if ca_file is not None:  # only this bundle: a private CA does not add to the public ones
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _trust(context, ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _load(context, cert, key)
    return context


def check_pair(cert: Path, key: Path) -> None:
    """Raise TlsFilesError unless the pair loads as a server certificate and its key."""
    server_context(cert, key)


def check_ca(ca_file: Path) -> None:
    """Raise TlsFilesError unless the file holds at least one CA certificate."""
    _trust(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca_file)


def _stamp(paths: tuple[Path, ...]) -> Stamp | None:
    try:  # stat follows the kubelet's ..data symlink to the current files
        stats = [path.stat() for path in paths]
    except OSError:
        return None
    return tuple((s.st_mtime, s.st_ino, s.st_size) for s in stats)


class _Watched:
    """Files looked at every interval; `_rebuild` runs when any of them changed."""

    def __init__(self, label: str, paths: tuple[Path, ...]) -> None:
        self.label = label
        self._paths = paths
        self._stamp = _stamp(paths)
        self._refused: Stamp | None = None  # the files' stamp that last failed to load: logged once
        self._task: asyncio.Task[None] | None = None

    def _rebuild(self) -> None:
        raise NotImplementedError

    def reload_if_changed(self) -> bool:
        """Load the files again when any changed; True when the new ones are in use."""
        stamp = _stamp(self._paths)
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return False
        try:
            self._rebuild()
        except TlsFilesError as exc:
            self._refused = stamp
            log.error("%s TLS: %s; keeping the previous certificate", self.label, exc)
            return False
        self._stamp = stamp
        log.info("%s TLS: loaded the renewed certificate %s", self.label, self._paths[0])
        return True

    def watch(self, every_s: float) -> None:
        async def forever() -> None:
            while True:
                await asyncio.sleep(every_s)
                self.reload_if_changed()

        if self._task is None:
            self._task = asyncio.create_task(forever(), name=f"{self.label}-tls-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:  # (not background.cancel_and_wait: that module imports the upstream, which imports this)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ServerTls(_Watched):
    """The context a listener serves (TLS 1.2 or later), handing each handshake the newest pair."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None, *, label: str = "listener") -> None:
        paths = (cert, key) if client_ca is None else (cert, key, client_ca)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.context = server_context(cert, key, client_ca)  # raises TlsFilesError: nothing to serve
        self.context.sni_callback = self._choose
        self._current = self.context
        super().__init__(label, paths)

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not self.context:
            sock.context = self._current

    def _rebuild(self) -> None:
        self._current = server_context(self.cert, self.key, self.client_ca)


class ClientTls(_Watched):
    """The context an upstream's connections use; a renewed client certificate is used by new connections.

    aiohttp's connector holds the context, so a renewed pair is loaded into it, once it has loaded
    into a fresh context (so a mismatched pair never reaches the one in use)."""

    def __init__(self, ca_file: Path | None, cert: Path | None, key: Path | None, *, label: str) -> None:
        self.ca_file, self.cert, self.key = ca_file, cert, key
        self.context = client_context(ca_file, cert, key)
        super().__init__(label, (cert, key) if cert is not None and key is not None else ())

    def _rebuild(self) -> None:
        assert self.cert is not None and self.key is not None
        client_context(self.ca_file, self.cert, self.key)
        _load(self.context, self.cert, self.key)
