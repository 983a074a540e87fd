"""The `admission_webhook:` section: strict loading with `file:line: field: problem`, preflight of its TLS pair,
the pair reloaded when cert-manager renews it, and the review reading the webhook decides on."""

import json
from pathlib import Path

import pytest

from gateway.adapters.tls_files import ServerTls, TlsFilesError
from gateway.cli.preflight import preflight
from gateway.config.located import ConfigError, load_text
from gateway.config.settings import Settings, parse_settings
from gateway.schedulers.kubernetes_review import ReviewInvalid, parse_review, read_path, seen
from tests.webhook_kit import fixture, tls_files

BASE = """\
listen: {host: 127.0.0.1, port: 8080}
auth:
  issuers:
    - {issuer: "https://idp.example.com", audiences: [exportgate], jwks_file: /dev/null}
upstreams:
  - {name: k8s, url: "https://kubernetes.default.svc", scheduler: kubernetes}
  - {name: slurm, url: "http://slurmrestd:6820", scheduler: slurm, prefix: /slurm/}
admission_webhook:
  cert_file: /run/secrets/webhook/tls.crt
  key_file: /run/secrets/webhook/tls.key
  upstream: k8s
"""


def settings(extra: str = "", base: str = BASE) -> Settings:
    return parse_settings(load_text(base + extra, "gateway.yaml"), Path("/etc/exportgate"), {})


def test_a_minimal_section_loads_with_its_defaults() -> None:
    hook = settings().admission_webhook
    assert hook is not None
    assert (hook.host, hook.port, hook.path, hook.issuer, hook.controllers, hook.unpersisted_grace_s) == (
        "0.0.0.0", 8443, "/k8s/validate", "kubernetes", (), 120.0
    )  # fmt: skip
    assert hook.cert_file == Path("/run/secrets/webhook/tls.crt")
    assert settings(base=BASE.split("admission_webhook:")[0]).admission_webhook is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("  port: 8080\n", "gateway.yaml:12: admission_webhook.port: the proxy and the admission webhook both use"),
        ("  issuer: https://idp.example.com\n",
         "gateway.yaml:12: admission_webhook.issuer: 'https://idp.example.com' is also a token issuer"),
        ("  unpersisted_grace_s: 5\n", "gateway.yaml:12: admission_webhook.unpersisted_grace_s: must be at least 60"),
        ("  controllers: [a, '']\n", "gateway.yaml:12: admission_webhook.controllers[1]: must not be empty"),
        ("  path: /k8s/../validate\n", "gateway.yaml:12: admission_webhook.path: '/k8s/../validate': an absolute path"),
        ("  upstreams: k8s\n", "gateway.yaml:12: admission_webhook.upstreams: unknown key"),
        ("  controllers: [a]\n  proxy_users: [a]\n",
         "gateway.yaml:13: admission_webhook.proxy_users: 'a' is also a controller"),
    ],
)  # fmt: skip
def test_bad_sections_name_file_line_and_field(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(extra)
    assert any(str(p).startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("upstream", "problem"),
    [
        ("slurm", "gateway.yaml:11: admission_webhook.upstream: 'slurm' is a slurm upstream; the webhook needs "
                  "scheduler: kubernetes"),
        ("k3s", "gateway.yaml:11: admission_webhook.upstream: 'k3s' names no upstream (upstreams: k8s, slurm)"),
    ],
)  # fmt: skip
def test_the_upstream_must_be_a_kubernetes_one(upstream: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(base=BASE.replace("upstream: k8s", f"upstream: {upstream}"))
    assert [str(p) for p in caught.value.problems] == [problem]


def test_cert_and_key_are_required() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(base=BASE.replace("  key_file: /run/secrets/webhook/tls.key\n", ""))
    assert [str(p) for p in caught.value.problems] == ["gateway.yaml:9: admission_webhook.key_file: required"]


def test_preflight_reads_the_pair(tmp_path: Path) -> None:
    """`check` fails on a key that is not the certificate's, naming the field; a matching pair passes."""
    ca, cert, key = tls_files(tmp_path)
    base = BASE.replace("/run/secrets/webhook/tls.crt", str(cert)).replace("/run/secrets/webhook/tls.key", str(key))
    assert not [p for p in preflight(settings(base=base), {}).problems if "admission_webhook" in p.field]
    (tmp_path / "other").mkdir()
    wrong = base.replace(str(key), str(tls_files(tmp_path / "other")[2]))  # another certificate's key
    found = [p for p in preflight(settings(base=wrong), {}).problems if p.field == "admission_webhook.cert_file"]
    assert len(found) == 1 and "cannot load" in found[0].message and ca.exists()


def test_a_renewed_pair_is_loaded_and_a_broken_one_is_not(tmp_path: Path) -> None:
    """cert-manager rewrites the files: the context loads the new pair; a mismatched pair keeps the last good one."""
    _, cert, key = tls_files(tmp_path)
    tls = ServerTls(cert, key)
    assert tls.reload_if_changed() is False  # nothing changed
    (tmp_path / "next").mkdir()
    _, new_cert, new_key = tls_files(tmp_path / "next")
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert tls.reload_if_changed() is True
    (tmp_path / "bad").mkdir()
    cert.write_bytes(tls_files(tmp_path / "bad")[1].read_bytes())  # a certificate without its key
    assert tls.reload_if_changed() is False
    with pytest.raises(TlsFilesError):
        ServerTls(cert, key)


def test_reviews_are_read_strictly() -> None:
    """The fixtures parse; a v1beta1 review, a missing uid or an odd name are refused with the field."""
    doc = fixture("create-job.json")
    review = parse_review(doc)
    assert (review.operation, review.resource.key, review.namespace, review.name, review.username) == (
        "CREATE", "jobs.batch", "us-one", "train-7b", "alice@us-one.example"
    )  # fmt: skip
    assert review.api_route() == ("POST", "/apis/batch/v1/namespaces/us-one/jobs")
    pod = parse_review(fixture("create-pod-by-job-controller.json"))
    assert pod.name == "train-7b-x7k2q" and pod.api_route() == ("POST", "/api/v1/namespaces/us-one/pods")
    with pytest.raises(ReviewInvalid, match="apiVersion"):
        parse_review({**doc, "apiVersion": "admission.k8s.io/v1beta1"})
    with pytest.raises(ReviewInvalid, match=r"request\.uid"):
        parse_review({**doc, "request": {**doc["request"], "uid": ""}})
    with pytest.raises(ReviewInvalid, match=r"request\.name") as caught:
        parse_review({**doc, "request": {**doc["request"], "name": "../x"}})
    assert caught.value.uid == doc["request"]["uid"]


def test_an_admitted_object_is_read_back_by_uid() -> None:
    """The read path of an admitted id; NotFound and another object under the name are both `absent`."""
    uid = "6f0b4a8e-3c55-4c2e-9d0a-5f1d2c7b8e01"
    assert read_path(f"team/pods/p/{uid}") == ("/api/v1/namespaces/team/pods/p", uid)
    assert read_path(f"team/rayjobs.ray.io/t/{uid}") == ("/apis/ray.io/v1/namespaces/team/rayjobs/t", uid)
    assert read_path("team/train-7b") is None and read_path(f"team/configmaps/c/{uid}") is None
    missing = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}'
    assert seen("jobs.batch", uid, 404, missing).absent
    other = b'{"kind":"Job","metadata":{"uid":"another"},"spec":{}}'
    assert seen("jobs.batch", uid, 200, other).absent
    running = b'{"kind":"Pod","metadata":{"uid":"%s"},"status":{"phase":"Running"}}' % uid.encode()
    assert seen("pods", uid, 200, running).over is False
    assert seen("pods", uid, 200, running.replace(b"Running", b"Succeeded")).over is True
    assert seen("jobs.batch", uid, 404, b"404: Not Found").absent is False  # not the API server's NotFound: hold


@pytest.mark.parametrize("username", ["u" * 1025, "alice\nINFO forged"])
def test_a_review_naming_an_unbounded_or_unprintable_user_is_invalid(username: str) -> None:
    """The user name reaches the ledger and the logs: over 1,024 characters or unprintable, the review is refused."""
    doc = json.loads((Path(__file__).parent / "data" / "k8s-admission" / "create-job.json").read_text())
    doc["request"]["userInfo"]["username"] = username
    with pytest.raises(ReviewInvalid, match=r"request\.userInfo\.username"):
        parse_review(doc)
