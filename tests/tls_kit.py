"""Certificates made at test time: a CA, server certificates for 127.0.0.1 and localhost, client certificates."""

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    plain = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, plain)


@dataclass(frozen=True)
class Issued:
    """A certificate and key written as PEM files, and the certificate's serial number."""

    cert: Path
    key: Path
    serial: int


class Ca:
    """A self-signed CA (EC P-256) whose certificate is written to `<directory>/<name>.crt`."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.path = directory / f"{name}.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, client: bool = False, directory: Path | None = None) -> Issued:
        """A leaf certificate `name`: a server's for 127.0.0.1 and localhost, or (`client`) a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )  # fmt: skip
        if not client:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        leaf = builder.sign(self.key, hashes.SHA256())
        where = directory or self.directory
        where.mkdir(parents=True, exist_ok=True)
        cert, key_path = where / f"{name}.crt", where / f"{name}.key"
        cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return Issued(cert, key_path, leaf.serial_number)


def replace_file(path: Path, data: bytes) -> None:
    """Swap a file's content in one step (a new inode renamed over it), as the kubelet swaps a Secret."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def client_context(
    ca: Path, cert: Issued | None = None, *, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client trusting `ca`, presenting `cert` when given, and speaking only `version` when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old protocol versions at all
        context.minimum_version = context.maximum_version = version
    return context


async def peer_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a TLS listener on 127.0.0.1 presents to a new connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
