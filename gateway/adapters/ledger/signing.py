"""Ed25519 ledger signing keys: generate a pair, load the private key to sign, the public key to verify."""

import base64
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core.ledger import key_id

log = logging.getLogger(__name__)


class KeyFileError(Exception):
    """A key file that is missing, unreadable or not an Ed25519 key; the message names the file."""


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Signer:
    """The private half: signs checkpoint and prune payloads."""

    key_id: str
    key: Ed25519PrivateKey

    def sign(self, payload: bytes) -> str:
        """The base64 Ed25519 signature over `payload`."""
        return base64.b64encode(self.key.sign(payload)).decode()

    def public(self) -> "PublicKey":
        """The public half of this key, to check what it signed."""
        return PublicKey(self.key_id, self.key.public_key())


@dataclass(frozen=True, slots=True)
class PublicKey:
    """The public half, kept outside the ledger: checks signatures."""

    key_id: str
    key: Ed25519PublicKey

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self.key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None


def load_signer(path: Path) -> Signer:
    """The Ed25519 private key in a PEM (PKCS#8) file; warns when others may read it."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    if path.stat().st_mode & 0o077:
        log.warning("ledger signing key %s is readable by group or others; chmod 600 it", path)
    return Signer(key_id(_raw(key.public_key())), key)


def load_public_key(path: Path) -> PublicKey:
    """The Ed25519 public key in a PEM (SubjectPublicKeyInfo) file."""
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return PublicKey(key_id(_raw(key)), key)


def generate(private: Path, public: Path) -> str:
    """Write a new key pair (private file mode 0600, never overwriting) and return its key id."""
    for path in (private, public):
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_new(private, pem, 0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(public, pub, 0o644)
    return key_id(_raw(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask cannot widen it, but make the mode exact
        os.fsync(fd)
    finally:
        os.close(fd)
