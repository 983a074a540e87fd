"""A TLS server context from a certificate and key file pair, reloaded when the files change.

cert-manager renews a certificate by rewriting the Secret, and the kubelet updates the mounted
files (an atomic symlink swap) without restarting the pod: the context loads the new pair into
itself, so new handshakes use it while connections already open keep theirs. A pair that fails
to load (the key of another certificate, a half-written file) keeps the last good one and is
tried again at the next look.
"""

import asyncio
import logging
import ssl
from pathlib import Path

from gateway.adapters.background import cancel_and_wait

log = logging.getLogger(__name__)


class TlsFilesError(Exception):
    """The pair cannot be read or does not match."""


def _load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFilesError(f"cannot load {cert} with {key}: {exc}") from exc


def check_pair(cert: Path, key: Path) -> None:
    """Raise TlsFilesError unless the pair loads as a server certificate and its key."""
    _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)


def _stamp(cert: Path, key: Path) -> tuple[float, float, int, int] | None:
    try:
        a, b = cert.stat(), key.stat()  # follows the kubelet's ..data symlink to the current files
    except OSError:
        return None
    return a.st_mtime, b.st_mtime, a.st_ino, b.st_ino


class ServerTls:
    """An SSLContext (TLS 1.2 or later) serving the pair, and a watcher that reloads it."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load(self.context, cert, key)
        self._stamp = _stamp(cert, key)
        self._task: asyncio.Task[None] | None = None

    def reload_if_changed(self) -> bool:
        """Load the pair again when either file changed; True when a new pair is in use."""
        stamp = _stamp(self.cert, self.key)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            _load(self.context, self.cert, self.key)
        except TlsFilesError as exc:
            log.error("admission webhook TLS: %s; serving the previous certificate", exc)
            return False
        self._stamp = stamp
        log.info("admission webhook TLS: loaded the renewed certificate %s", self.cert)
        return True

    def watch(self, every_s: float) -> None:
        async def forever() -> None:
            while True:
                await asyncio.sleep(every_s)
                self.reload_if_changed()

        if self._task is None:
            self._task = asyncio.create_task(forever(), name="webhook-tls-reload")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
