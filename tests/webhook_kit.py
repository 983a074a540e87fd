"""Admission webhook test kit: a CA and serving certificate made at test time, AdmissionReview fixtures, a stack.

The fixtures under tests/data/k8s-admission are AdmissionReviews as the API server sends them;
`review()` gives a copy with fresh request and object uids and the changes a case needs.
"""

import copy
import datetime
import ipaddress
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.demo.standin_k8s import k8s_app
from tests.harness import ISSUER, Clock, Stack, running_stack
from tests.redis_server import free_port

DATA = Path(__file__).resolve().parent / "data" / "k8s-admission"
K8S_ISSUER = "kubernetes"
UPSTREAM = "kubernetes"  # the harness names an upstream after its scheduler
OWNED = UPSTREAM + "#admission"
JOB_CONTROLLER = "system:serviceaccount:kube-system:job-controller"
KUBERAY = "system:serviceaccount:ray-system:kuberay-operator"
GATEWAY_USER = "system:serviceaccount:exportgate:exportgate"  # what the proxy's own token authenticates as
H100 = 15832.0


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, tls.crt, tls.key) as cert-manager writes them: a CA-signed serving certificate for
    127.0.0.1 and localhost, with an EC key, in PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("exportgate-test-ca")).issuer_name(_name("exportgate-test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder().subject_name(_name("exportgate-webhook")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths[2].write_bytes(pem)
    return paths


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text())
    return doc


def review(name: str = "create-job.json", *, namespace: str | None = None, user: str | None = None,
           job: str | None = None, gpus: int | None = None, parallelism: int | None = None,
           dry_run: bool | None = None, no_deadline: bool = False) -> dict[str, Any]:  # fmt: skip
    """A fixture with a fresh request uid and object uid, changed as asked (the same change to object and oldObject,
    but `parallelism`, which only the object takes)."""
    doc = copy.deepcopy(fixture(name))
    request = doc["request"]
    request["uid"] = str(uuid.uuid4())
    object_uid = str(uuid.uuid4())
    if namespace is not None:
        request["namespace"] = namespace
    if user is not None:
        request["userInfo"]["username"] = user
    if dry_run is not None:
        request["dryRun"] = dry_run
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if obj is None:
            continue
        meta = obj["metadata"]
        meta["uid"] = object_uid
        meta["namespace"] = request["namespace"]
        if job is not None:
            meta["name"] = job
            request["name"] = job if request["name"] else ""
        spec = obj["spec"]
        pod = spec["template"]["spec"] if "template" in spec else spec
        if gpus is not None:
            for section in ("limits", "requests"):
                pod["containers"][0]["resources"][section]["nvidia.com/gpu"] = str(gpus)
        if no_deadline:
            spec.pop("activeDeadlineSeconds", None)
        if parallelism is not None and key == "object":
            spec["parallelism"] = spec["completions"] = parallelism
    return doc


def object_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The object a review asks about, as the API server would store it."""
    obj: dict[str, Any] = copy.deepcopy(doc["request"]["object"] or doc["request"]["oldObject"])
    return obj


def admitted_id(doc: dict[str, Any], resource: str = "jobs.batch") -> str:
    obj = object_of(doc)
    return f"{obj['metadata']['namespace']}/{resource}/{obj['metadata']['name']}/{obj['metadata']['uid']}"


def k8s_tenant(tenant_id: str, countries: str, kyc: str = "verified", extra: str = "") -> str:
    """A tenant with a token identity and a Kubernetes user (`alice@<id>.example`), owning namespace `<id>`."""
    location, headquarters, parent = countries.split("/")
    status = "{status: verified, verified_at: 2025-01-01, expires_at: 2035-01-01}" if kyc == "verified" else (
        f"{{status: {kyc}}}")  # fmt: skip
    return f"""
  - id: {tenant_id}
    identities:
      - {{issuer: "{ISSUER}", subject: {tenant_id}}}
      - {{issuer: {K8S_ISSUER}, subject: "alice@{tenant_id}.example"}}
      - {{issuer: {K8S_ISSUER}, subject: "system:serviceaccount:{tenant_id}:trainer"}}
    location: {location}
    headquarters: {headquarters}
    parent_headquarters: {parent}
    kyc: {status}
    upstream_identity: {{k8s_namespace: {tenant_id}}}{extra}"""


TENANTS = "tenants:" + "".join([
    k8s_tenant("us-one", "US/US/US"),
    k8s_tenant("capped-ae", "AE/AE/AE", extra="\n    tpp_cap: 31664  # 2 x H100"),
    k8s_tenant("fjord-se-cn", "SE/SE/CN"),
    k8s_tenant("pending-br", "BR/BR/BR", kyc="pending"),
]) + "\n"  # fmt: skip


def webhook_yaml(tmp: Path, port: int, *, grace_s: float = 120.0, extra: str = "") -> str:
    _, cert, key = tmp / "ca.crt", tmp / "tls.crt", tmp / "tls.key"
    return f"""
admission_webhook:
  host: 127.0.0.1
  port: {port}
  cert_file: {cert}
  key_file: {key}
  upstream: {UPSTREAM}
  issuer: {K8S_ISSUER}
  controllers: ["{JOB_CONTROLLER}", "{KUBERAY}"]
  proxy_users: ["{GATEWAY_USER}"]
  unpersisted_grace_s: {grace_s}
{extra}"""


@asynccontextmanager
async def webhook_stack(tmp: Path, *, clock: Clock | None = None, options: str = "") -> AsyncIterator[Stack]:
    """The proxy in front of the stand-in API server, with the admission webhook on its own HTTPS port."""
    tls_files(tmp)
    headers = f"""
    headers:
      Authorization: {{file: {tmp / "slurm.token"}, prefix: "Bearer "}}
"""
    extra = f"    scheduler_options: {{{options}}}" if options else ""
    async with running_stack(
        tmp, clock=clock or Clock(), registry=TENANTS, standin=k8s_app, scheduler="kubernetes", headers=headers,
        upstream_extra=extra, extra=webhook_yaml(tmp, free_port()),
    ) as stack:  # fmt: skip
        yield stack


def webhook_url(stack: Stack) -> str:
    hook = stack.settings.admission_webhook
    assert hook is not None
    return f"https://127.0.0.1:{hook.port}{hook.path}"


async def ask(stack: Stack, doc: dict[str, Any], *, url: str | None = None) -> dict[str, Any]:
    """POST a review as the API server does (HTTPS, verifying the webhook's certificate against the CA bundle)."""
    context = ssl.create_default_context(cafile=stack.workdir / "ca.crt")
    async with aiohttp.ClientSession() as client, client.post(
        (url or webhook_url(stack)) + "?timeout=10s", json=doc, ssl=context
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == doc["request"]["uid"]
    reviewed: dict[str, Any] = answer["response"]
    return reviewed
