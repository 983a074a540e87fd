"""deploy/kubernetes builds and would run: the base and the production overlay render as kustomize renders them
(tests/deploy_kit.py), every object passes strict schema validation, every reference resolves, and the pod
as rendered (its ConfigMaps and Secrets laid out where it mounts them) passes `exportgate check`, starts on
a real Redis reached through the Secret's URL, writes signed checkpoints and stops within its grace period."""

import copy
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters.ledger.signing import generate
from gateway.cli.preflight import preflight
from gateway.cli.workers import STOP_MARGIN_S
from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.located import load_text
from gateway.config.pack import content_hash
from gateway.config.settings import Settings, parse_settings
from gateway.core.routes import RouteKind
from gateway.schedulers import KubernetesAdapter, KubernetesOptions
from tests.deploy_kit import (
    InvalidObject,
    Obj,
    RenderError,
    config_map_hash,
    promtool,
    render,
    strategic_merge,
    validate_object,
)
from tests.redis_server import RedisProcess, free_port, start_redis
from tests.webhook_kit import tls_files

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
COMPONENT = KUBERNETES / "components" / "admission-webhook"
PRODUCTION = KUBERNETES / "overlays" / "production"
NAMESPACE = "exportgate"  # the production overlay's; the webhook component spells it out

# The Secrets the operator creates (base/kustomization.yaml's header lists them): name -> keys the pod reads.
OPERATOR_SECRETS = {
    "exportgate-redis": {"url"},
    "exportgate-ledger-signing": {"ledger-signing.pem"},
    "exportgate-admin-tokens": {"admin-tokens.yaml"},
    "exportgate-slurm-jwt": {"slurm-jwt.key"},
}
RENDERS = {"base": BASE, "production": PRODUCTION}
_CACHE: dict[str, list[Obj]] = {}


def rendered(name: str) -> list[Obj]:
    """A fresh copy of a render (built once per session)."""
    if name not in _CACHE:
        _CACHE[name] = render(RENDERS[name])
    return copy.deepcopy(_CACHE[name])


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(objs: list[Obj]) -> Obj:
    spec: Obj = one(objs, "StatefulSet", "exportgate")["spec"]["template"]["spec"]
    return spec


def container(objs: list[Obj]) -> Obj:
    (only,) = pod_spec(objs)["containers"]
    found: Obj = only
    return found


def gateway_yaml(objs: list[Obj]) -> str:
    """The gateway.yaml the pod reads: the file its --config names, in the ConfigMap mounted there."""
    args = container(objs)["args"]
    config = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in container(objs)["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    volume = next(v for v in pod_spec(objs)["volumes"] if v["name"] == mount["name"])
    text: str = one(objs, "ConfigMap", volume["configMap"]["name"])["data"][config.name]
    return text


def settings_of(text: str, env: dict[str, str] | None = None) -> Settings:
    """gateway.yaml's form (paths not followed: the files exist only in the pod)."""
    env = {"EXPORTGATE_REDIS_URL": "redis://redis:6379/0"} if env is None else env
    return parse_settings(load_text(_without_key_check(text), "gateway.yaml"), Path("/"), env)


def _without_key_check(text: str) -> str:
    """The loader wants ledger.signing_key_file to exist: the form alone is read here (test_the_pod_passes_check
    reads it with the file in place)."""
    return re.sub(r"^(\s*)signing_key_file: .*$", r"\1# signing key checked with the pod's files", text, flags=re.M)


# --- The renderer ------------------------------------------------------------------------------------------


def test_the_renderer_hashes_config_maps_as_kustomize_does() -> None:
    """Suffixes kustomize v5.5 (kubectl 1.32's) printed for these ConfigMaps, HTML escaping and all."""
    assert config_map_hash({"a": "b"}) == "4h2mbtbbt6"
    assert config_map_hash({"f.txt": 'a & <b> é \u2028 "q"\n', "renamed.yaml": "x: 1\n"}) == "mmbc79b674"


def test_strategic_merge_follows_merge_keys() -> None:
    """Containers, volumes and mounts merge by their keys (new items first, as kustomize puts them); args are
    replaced; a list without a known merge key is refused rather than guessed."""
    target = {"spec": {"containers": [{"name": "a", "args": ["x"], "volumeMounts": [{"mountPath": "/m", "name": "v"}]}],
                       "volumes": [{"name": "v"}]}}  # fmt: skip
    patch = {"spec": {"containers": [{"name": "a", "args": ["y"], "volumeMounts": [{"mountPath": "/n", "name": "w"}]}],
                      "volumes": [{"name": "w"}]}}  # fmt: skip
    merged = strategic_merge(target, patch, "StatefulSet")
    (merged_container,) = merged["spec"]["containers"]
    assert merged_container["args"] == ["y"]
    assert merged_container["volumeMounts"] == [{"mountPath": "/n", "name": "w"}, {"mountPath": "/m", "name": "v"}]
    assert merged["spec"]["volumes"] == [{"name": "w"}, {"name": "v"}]
    with pytest.raises(RenderError, match="no merge key"):
        strategic_merge({"spec": {"ingress": [{"a": 1}]}}, {"spec": {"ingress": [{"b": 2}]}}, "NetworkPolicy")


UNSUPPORTED = {
    "a kustomization field it does not implement": ("images: [{name: exportgate, newTag: '1'}]\n", "not supported"),
    "a file outside the kustomization": (
        "configMapGenerator: [{name: c, files: [../outside.yaml]}]\n",
        "outside the kustomization",
    ),
    "a patch naming nothing": ("resources: [sa.yaml]\npatches: [{path: patch.yaml}]\n", "no ServiceAccount/other"),
    "a namespace kustomize would rewrite": ("namespace: elsewhere\nresources: [binding.yaml]\n", "names namespace"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path, case: str) -> None:
    body, message = UNSUPPORTED[case]
    directory = tmp_path / "k"
    directory.mkdir()
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    (directory / "sa.yaml").write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n")
    (directory / "patch.yaml").write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: other}\n")
    (directory / "binding.yaml").write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n"
        "subjects: [{kind: ServiceAccount, name: sa, namespace: exportgate}]\n"
    )
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + body
    )
    with pytest.raises(RenderError, match=message):
        render(directory)


def test_there_is_one_truth() -> None:
    """The single-file manifests are gone: deploy/kubernetes is the base, its component and its overlays."""
    assert sorted(p.name for p in KUBERNETES.iterdir()) == ["base", "components", "overlays"]
    assert sorted(p.name for p in (KUBERNETES / "overlays").iterdir()) == ["production"]


# --- Schemas ------------------------------------------------------------------------------------------------

OBJECTS = [(name, i) for name in RENDERS for i in range(len(rendered(name)))]


@pytest.mark.parametrize(
    ("name", "index"),
    OBJECTS,
    ids=[f"{n}-{rendered(n)[i]['kind']}-{rendered(n)[i]['metadata']['name']}" for n, i in OBJECTS],
)
def test_every_object_validates_strictly(name: str, index: int) -> None:
    validate_object(rendered(name)[index])


def _rename(node: Obj, old: str, new: str) -> None:
    node[new] = node.pop(old)


TYPOS: dict[str, Callable[[Obj], None]] = {
    "StatefulSet": lambda o: _rename(o["spec"]["template"]["spec"], "terminationGracePeriodSeconds",
                                     "terminationGracePeriodSecond"),
    "Service": lambda o: o["spec"]["ports"][0].update(port="eighty"),
    "ServiceMonitor": lambda o: _rename(o["spec"]["endpoints"][0], "interval", "intervall"),
    "PrometheusRule": lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "two minutes"}),
    "Certificate": lambda o: _rename(o["spec"], "secretName", "secretname"),
    "Issuer": lambda o: o["spec"].update(selfsigned={}),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(TYPOS))
def test_a_slip_fails_validation(kind: str) -> None:
    """The validation is not vacuous: a misspelt field, a wrong type or a bad pattern is refused, for Kubernetes'
    own kinds and for each custom resource kind."""
    obj = next(o for o in rendered("production") if o["kind"] == kind)
    validate_object(obj)
    TYPOS[kind](obj)
    with pytest.raises(InvalidObject):
        validate_object(obj)


# --- References ---------------------------------------------------------------------------------------------


def _secrets_defined(objs: list[Obj]) -> dict[str, set[str] | None]:
    """Secret name -> the keys it holds, for Secrets the render defines (None: filled by a controller)."""
    defined: dict[str, set[str] | None] = {n: set(keys) for n, keys in OPERATOR_SECRETS.items()}
    for obj in objs:
        if obj["kind"] == "Secret":
            token = obj.get("type") == "kubernetes.io/service-account-token"
            defined[obj["metadata"]["name"]] = {"token", "ca.crt", "namespace"} if token else set(obj.get("data", {}))
        if obj["kind"] == "Certificate":  # cert-manager writes the serving pair and its CA
            defined[obj["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
    return defined


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_reference_resolves(name: str) -> None:
    """Each ConfigMap, Secret (and key), ServiceAccount, Service, Issuer and role the objects name is in the render,
    or is one of the operator's documented Secrets; each selector selects the pods."""
    objs = rendered(name)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    secrets = _secrets_defined(objs)
    spec = pod_spec(objs)
    pod_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for volume in spec["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets, volume
    for env in container(objs)["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["key"] in (secrets.get(ref["name"]) or set()), ref
    assert container(objs).get("envFrom") is None
    assert ("ServiceAccount", spec["serviceAccountName"]) in names

    statefulset = one(objs, "StatefulSet")
    assert _matches(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    headless = one(objs, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and _matches(headless["spec"]["selector"], pod_labels)
    client = one(objs, "Service", "exportgate")
    assert client["spec"].get("clusterIP") != "None" and _matches(client["spec"]["selector"], pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    for service in (o for o in objs if o["kind"] == "Service"):
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(container_ports)
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        for obj in (o for o in objs if o["kind"] == kind):
            selector = obj["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]["matchLabels"]
            assert _matches(selector, pod_labels), obj["metadata"]["name"]

    monitor = one(objs, "ServiceMonitor")
    (scraped,) = [s for s in objs if s["kind"] == "Service" and _matches(monitor["spec"]["selector"]["matchLabels"],
                                                                         s["metadata"]["labels"])]  # fmt: skip
    assert scraped is headless  # every pod, ready or not, is a target
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in scraped["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert container_ports[port["targetPort"]] == settings_of(gateway_yaml(objs)).admin_port

    for certificate in (o for o in objs if o["kind"] == "Certificate"):
        assert ("Issuer", certificate["spec"]["issuerRef"]["name"]) in names
    for issuer in (o for o in objs if o["kind"] == "Issuer" and "ca" in o["spec"]):
        assert issuer["spec"]["ca"]["secretName"] in secrets
    for binding in (o for o in objs if o["kind"] == "ClusterRoleBinding"):
        assert ("ClusterRole", binding["roleRef"]["name"]) in names
        assert all(("ServiceAccount", s["name"]) in names for s in binding["subjects"])
    for hook_config in (o for o in objs if o["kind"] == "ValidatingWebhookConfiguration"):
        for hook in hook_config["webhooks"]:
            service = one(objs, "Service", hook["clientConfig"]["service"]["name"])
            assert hook["clientConfig"]["service"]["port"] in {p["port"] for p in service["spec"]["ports"]}


def _patches(directory: Path) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / p["path"] for p in kustomization.get("patches", [])]


@pytest.mark.parametrize("directory", [PRODUCTION, COMPONENT], ids=["production", "admission-webhook"])
def test_each_patch_names_an_object_of_the_base(directory: Path) -> None:
    """A patch whose target was renamed away would be an error in kustomize; here it is named plainly."""
    base = {(o["kind"], o["metadata"]["name"]) for o in rendered("base")}
    patches = _patches(directory)
    assert patches
    for path in patches:
        patch = yaml.safe_load(path.read_text())
        assert (patch["kind"], patch["metadata"]["name"]) in base, path


def test_the_operators_secrets_are_documented() -> None:
    """Each Secret the pods need and nothing creates is listed, with its key, where the operator reads first."""
    header = (BASE / "kustomization.yaml").read_text().split("apiVersion:")[0]
    for name, keys in OPERATOR_SECRETS.items():
        for key in keys:
            assert re.search(rf"^#\s+{re.escape(name)}\s+{re.escape(key)}\s", header, re.M), (name, key)
            assert f"create secret generic {name} " in header
    referenced = {v["secret"]["secretName"] for v in pod_spec(rendered("production"))["volumes"] if "secret" in v}
    referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container(rendered("production"))["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    created = {n for n, keys in _secrets_defined(rendered("production")).items() if n not in OPERATOR_SECRETS}
    assert referenced - created == set(OPERATOR_SECRETS)


# --- The pod as the kubelet would run it ----------------------------------------------------------------------


def operator_secrets(tmp: Path, redis_url: str) -> dict[str, dict[str, bytes]]:
    """What the operator puts in each Secret, made now."""
    keys = tmp / "operator-keys"
    generate(keys / "ledger-signing.pem", keys / "ledger-signing.pub.pem")
    digest = hashlib.sha256(b"operator token").hexdigest()
    tokens = f"tokens:\n  - {{name: ops, role: admin, sha256: {digest}}}\n"
    return {
        "exportgate-redis": {"url": redis_url.encode()},
        "exportgate-ledger-signing": {"ledger-signing.pem": (keys / "ledger-signing.pem").read_bytes()},
        "exportgate-admin-tokens": {"admin-tokens.yaml": tokens.encode()},
        "exportgate-slurm-jwt": {"slurm-jwt.key": os.urandom(32)},
    }


def _controller_secret(objs: list[Obj], name: str, tmp: Path) -> dict[str, bytes]:
    """What Kubernetes' token controller or cert-manager writes into a Secret the render defines."""
    pki = tmp / f"pki-{name}"
    pki.mkdir()
    ca, cert, key = tls_files(pki)
    if any(o["kind"] == "Certificate" and o["spec"]["secretName"] == name for o in objs):
        return {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes(), "ca.crt": ca.read_bytes()}
    secret = one(objs, "Secret", name)
    assert secret["type"] == "kubernetes.io/service-account-token"
    return {"token": os.urandom(24).hex().encode(), "ca.crt": ca.read_bytes(), "namespace": NAMESPACE.encode()}


def lay_out_pod(objs: list[Obj], root: Path, secrets: dict[str, dict[str, bytes]]) -> tuple[Path, dict[str, str]]:
    """The container's file system under `root` (each mount filled as the kubelet fills it) and its environment.

    Returns the gateway.yaml to load (the ConfigMap's, with each mount path moved under `root`) and the env."""
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in one(objs, "StatefulSet")["spec"]["volumeClaimTemplates"]}
    mounts = container(objs)["volumeMounts"]
    for mount in mounts:
        target = root / mount["mountPath"].lstrip("/")
        volume = volumes.get(mount["name"], {})
        if mount["name"] in claims or "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if "configMap" in volume:
            files = {k: v.encode() for k, v in one(objs, "ConfigMap", volume["configMap"]["name"])["data"].items()}
            mode = 0o644
        else:
            name = volume["secret"]["secretName"]
            files = secrets[name] if name in secrets else _controller_secret(objs, name, root.parent)
            mode = volume["secret"].get("defaultMode", 0o644)
        if "subPath" in mount:
            files = {target.name: files[mount["subPath"]]}
            target = target.parent
        target.mkdir(parents=True, exist_ok=True)
        for key, data in files.items():
            (target / key).write_bytes(data)
            (target / key).chmod(mode)
    env: dict[str, str] = {}
    for item in container(objs)["env"]:
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = "exportgate-0"
        elif "secretKeyRef" in source:
            env[item["name"]] = secrets[source["secretKeyRef"]["name"]][source["secretKeyRef"]["key"]].decode()
        else:
            env[item["name"]] = item["value"]
    text = gateway_yaml(objs)
    for path in re.findall(r"(?:_file|dir|pack|registry):\s*[\"']?(/[^\s,}\"']+)", text):
        assert any(Path(path).is_relative_to(m["mountPath"]) for m in mounts), f"{path}: not on any volume of the pod"
    paths = sorted((m["mountPath"] for m in mounts), key=len, reverse=True)
    mounted = re.compile(rf"(?<=[\s{{\[,\"'])({'|'.join(map(re.escape, paths))})(?=[/\s,}}\]\"']|$)", re.M)
    text = mounted.sub(lambda m: str(root) + m.group(1), text)
    config = root / "pod-gateway.yaml"
    config.write_text(text)
    return config, env


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_pod_passes_check(tmp_path: Path, name: str) -> None:
    """`exportgate check` of the pod as rendered finds nothing: the pack, registry, admin tokens, signing key,
    slurmrestd key (and the webhook's certificate and API server token) are where gateway.yaml says, the quota
    store's URL comes from the Secret, and the ledger is signed (the ExportgateLedgerUnsigned alert stays quiet)."""
    objs = rendered(name)
    secrets = operator_secrets(tmp_path, "redis://:pa55word@redis.exportgate.svc:6379/0")
    config, env = lay_out_pod(objs, tmp_path / "pod", secrets)
    settings = parse_settings(load_text(config.read_text(), str(config)), config.parent, env)
    found = preflight(settings, env)
    assert found.problems == []
    # The example registry's tenant without countries, kept there to show the refusal, is all check warns of.
    assert {w.field.split(".")[0] for w in found.warnings} <= {"tenants[9]"}
    assert {Path(w.file) for w in found.warnings} <= {settings.registry_file}
    assert settings.quota.store == "redis" and settings.quota.redis_url == secrets["exportgate-redis"]["url"].decode()
    assert not settings.quota.redis_url_inline  # no password in the ConfigMap: check would warn
    assert settings.ledger.signing_key_file is not None and settings.ledger.anchor_dir is not None
    assert settings.ledger.signing_key_file.read_bytes() == secrets["exportgate-ledger-signing"]["ledger-signing.pem"]
    assert settings.admin_tokens_file is not None and settings.admin_tokens_file.is_file()
    assert settings.instance_id == "exportgate-0"
    assert content_hash(settings.pack_dir) == content_hash(BUNDLED_POLICIES / "ai-diffusion-2025")


def _get(url: str | urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def redis_with_password() -> Iterator[RedisProcess]:
    server = start_redis(password="pa55word")
    yield server
    server.stop()


def test_the_pod_serves_signs_and_stops_in_time(tmp_path: Path, redis_with_password: RedisProcess) -> None:
    """The base's pod, started as the kubelet starts it (args, env from the Secrets, mounted files) on loopback
    ports: its quota store is the Redis the Secret's URL names (with its password), the admin token from its Secret
    is accepted, SIGTERM ends it cleanly well within the grace period, and the ledger it leaves verifies against
    the signing key's public half, closing checkpoint and anchors included (no ExportgateLedgerUnsigned)."""
    objs = rendered("base")
    secrets = operator_secrets(tmp_path, redis_with_password.url_with_password)
    root = tmp_path / "pod"
    config, env = lay_out_pod(objs, root, secrets)
    proxy, admin = free_port(), free_port()
    env |= {"EXPORTGATE_LISTEN_HOST": "127.0.0.1", "EXPORTGATE_LISTEN_PORT": str(proxy),
            "EXPORTGATE_ADMIN_HOST": "127.0.0.1", "EXPORTGATE_ADMIN_PORT": str(admin)}  # fmt: skip
    args = [str(config) if a.endswith("gateway.yaml") else a for a in container(objs)["args"]]
    outside = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], cwd=tmp_path,
                                env=outside | env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        parts: dict[str, Any] = {}
        while time.monotonic() < deadline and proc.poll() is None and not (parts.get("quota") and parts.get("ledger")):
            time.sleep(0.2)
            try:
                parts = json.loads(_get(f"http://127.0.0.1:{admin}/readyz")[1])["parts"]
            except (OSError, ValueError):
                parts = {}
        # The IdP's key set (https://idp.example.com) cannot be fetched here: only `keys` may be false.
        assert {k: v for k, v in parts.items() if k != "keys"} == {
            "config": True, "ledger": True, "quota": True, "serving": True
        }, log.read_text()  # fmt: skip
        release = urllib.request.Request(f"http://127.0.0.1:{admin}/admin/v1/jobs/slurm/4242/release", method="POST",
                                         headers={"Authorization": "Bearer operator token"})  # fmt: skip
        status, body = _get(release)
        assert (status, json.loads(body)) == (200, {"upstream": "slurm", "job_id": "4242", "released": False})
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    settings = settings_of(gateway_yaml(objs))
    grace = pod_spec(objs)["terminationGracePeriodSeconds"]
    pre_stop = container(objs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert code == 0, log.read_text()
    assert settings.shutdown.drain_s <= took < grace - pre_stop
    ledger, anchors = (root / str(p).lstrip("/") for p in (settings.ledger.dir, settings.ledger.anchor_dir))
    (segment,) = (ledger / "exportgate-0").glob("*.jsonl")  # the chain is named after the pod
    records = [json.loads(line) for line in segment.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["admin_release", "release", "checkpoint"]
    verified = subprocess.run(
        [sys.executable, "-m", "gateway", "ledger", "verify", str(ledger), "--public-key",
         str(tmp_path / "operator-keys" / "ledger-signing.pub.pem"), "--expect-heads-from", str(anchors)],
        capture_output=True, text=True, cwd=tmp_path, env=outside,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --- Shutdown, security, resources ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_stop_matches_shutdown_drain(name: str) -> None:
    """preStop sleeps shutdown.drain_s (the endpoint removal spreads while the pod still serves normally), then
    SIGTERM starts the gateway's own drain; the grace period covers the sleep, drain_s, grace_s and the ledger's
    close (the margin the worker supervisor allows), so the kubelet never kills a gateway mid-checkpoint."""
    objs = rendered(name)
    settings = settings_of(gateway_yaml(objs))
    pre_stop = container(objs)["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": settings.shutdown.drain_s}}
    grace = pod_spec(objs)["terminationGracePeriodSeconds"]
    assert grace == pre_stop["sleep"]["seconds"] + settings.shutdown.drain_s + settings.shutdown.grace_s + STOP_MARGIN_S


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_pod_is_locked_down(name: str) -> None:
    """Non-root, read-only root file system, no privilege escalation, no capabilities, RuntimeDefault seccomp (the
    restricted Pod Security Standard), requests and limits set, probes on the admin listener."""
    objs = rendered(name)
    spec, main = pod_spec(objs), container(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    assert set(main["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(main["resources"]["requests"]) and "memory" in main["resources"]["limits"]
    assert spec["automountServiceAccountToken"] is False
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
    settings = settings_of(gateway_yaml(objs))
    assert {str(settings.ledger.dir), str(settings.ledger.anchor_dir)} <= writable
    for volume in spec["volumes"]:
        assert set(volume) & {"configMap", "secret", "emptyDir"}, volume  # no hostPath
    if name == "production":
        labels = one(objs, "Namespace", NAMESPACE)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_network_policy_keeps_the_admin_port_internal() -> None:
    """The proxy port is open, the admin port only to the monitoring namespace, nothing else is admitted."""
    objs = rendered("production")
    settings = settings_of(gateway_yaml(objs))
    open_ports: set[int] = set()
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if "from" not in rule:
                open_ports |= ports
            else:
                assert ports == {settings.admin_port}
                assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}}}]  # fmt: skip
    assert settings.admission_webhook is not None
    assert open_ports == {settings.listen_port, settings.admission_webhook.port}


# --- Copies kept equal -------------------------------------------------------------------------------------------


def test_the_pack_and_registry_are_the_bundled_ones() -> None:
    """kustomize reads files only below the kustomization, so the base holds copies: byte for byte the bundled
    pack (the ledger cites its content hash; a pack newer than the image's code may not load) and example
    registry, every pack file listed in the generator."""
    pack = BASE / "pack" / "ai-diffusion-2025"
    bundled = BUNDLED_POLICIES / "ai-diffusion-2025"
    fix = f"copy gateway/policies/ai-diffusion-2025/*.yaml to {pack.relative_to(ROOT)}/, list each in the generator"
    assert sorted(p.name for p in pack.iterdir()) == sorted(p.name for p in bundled.glob("*.yaml")), fix
    for path in pack.iterdir():
        assert path.read_bytes() == (bundled / path.name).read_bytes(), f"{path.name} differs: {fix}"
    registry = BASE / "registry" / "tenants.yaml"
    assert registry.read_bytes() == (BUNDLED_POLICIES / "tenants.example.yaml").read_bytes(), f"{registry} differs"
    data = one(rendered("base"), "ConfigMap", "exportgate-pack")["data"]
    assert data == {p.name: p.read_text() for p in bundled.glob("*.yaml")}, fix


def test_the_prometheus_rule_carries_the_alert_rules(tmp_path: Path) -> None:
    """The PrometheusRule's groups are deploy/prometheus/rules.yaml's, and promtool accepts them as the operator
    hands them to Prometheus."""
    rule = one(rendered("production"), "PrometheusRule")
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run([promtool(), "check", "rules", str(extracted)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule['spec']['groups'])} rules found" in done.stdout


def test_the_webhook_gateway_yaml_is_the_base_one_plus_the_webhook() -> None:
    """components/admission-webhook replaces gateway.yaml: with the upstream k8s and admission_webhook added,
    and nothing else changed."""
    base = yaml.safe_load((BASE / "gateway.yaml").read_text())
    webhook = yaml.safe_load((COMPONENT / "gateway.yaml").read_text())
    assert webhook.pop("admission_webhook")["upstream"] == webhook["upstreams"][-1]["name"] == "k8s"
    webhook["upstreams"].pop()
    assert webhook == base
    assert gateway_yaml(rendered("production")) == (COMPONENT / "gateway.yaml").read_text()
    assert gateway_yaml(rendered("base")) == (BASE / "gateway.yaml").read_text()


def test_a_gateway_yaml_edit_rolls_the_pods() -> None:
    """gateway.yaml is read at start: its ConfigMap's name carries a content hash, so an edit changes the pod
    template. The registry and pack keep their names: the pods reload them live."""
    for name in RENDERS:
        objs = rendered(name)
        volumes = {v["name"]: v["configMap"]["name"] for v in pod_spec(objs)["volumes"] if "configMap" in v}
        assert re.fullmatch(r"exportgate-config-[a-z0-9]{10}", volumes["config"])
        assert (volumes["pack"], volumes["registry"]) == ("exportgate-pack", "exportgate-registry")
        text = json.dumps(objs)
        assert '"exportgate-config"' not in text  # nothing names the ConfigMap without its suffix
    assert rendered("base") != rendered("production")


# --- The admission webhook (components/admission-webhook, in production) ---------------------------------------


def _priced_resources() -> set[tuple[str, str, str]]:
    """(group, version, plural) of every object the Kubernetes adapter prices on create."""
    found = set()
    for route in KubernetesAdapter(KubernetesOptions()).routes():
        if route.kind is RouteKind.SUBMIT:
            parts = route.pattern.strip("/").split("/")  # api/v1/namespaces/{ns}/pods, apis/<g>/<v>/namespaces/...
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            found.add((group, version, parts[-1]))
    return found


def test_the_admission_webhook_matches_the_gateway() -> None:
    """The ValidatingWebhookConfiguration asks the listener the production gateway.yaml opens, about exactly the
    resources the adapter prices, fails closed, and trusts the CA cert-manager injects for the Secret the pods serve."""
    objs = rendered("production")
    settings = settings_of(gateway_yaml(objs))
    hook = settings.admission_webhook
    assert hook is not None and hook.upstream == "k8s" and hook.issuer == "kubernetes"
    assert "system:serviceaccount:kube-system:job-controller" in hook.controllers
    config = one(objs, "ValidatingWebhookConfiguration")
    (entry,) = config["webhooks"]
    assert (entry["failurePolicy"], entry["sideEffects"], entry["admissionReviewVersions"]) == (
        "Fail", "NoneOnDryRun", ["v1"]
    )  # fmt: skip
    asked = {(g, v, r) for rule in entry["rules"] for g in rule["apiGroups"] for v in rule["apiVersions"]
             for r in rule["resources"]}  # fmt: skip
    assert asked == _priced_resources()
    for rule in entry["rules"]:
        expected = ["CREATE"] if rule["resources"] == ["pods"] else ["CREATE", "UPDATE"]
        assert (rule["operations"], rule["scope"]) == (expected, "Namespaced")
    assert NAMESPACE in entry["namespaceSelector"]["matchExpressions"][0]["values"]  # never asks about itself

    service_ref = entry["clientConfig"]["service"]
    assert service_ref["path"] == hook.path and "caBundle" not in entry["clientConfig"]
    service = one(objs, "Service", service_ref["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == service_ref["port"]]
    assert {p["name"]: p["containerPort"] for p in container(objs)["ports"]}[port["targetPort"]] == hook.port

    namespace, certificate_name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert namespace == service_ref["namespace"] == NAMESPACE
    certificate = one(objs, "Certificate", certificate_name)
    assert f"{service_ref['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    issuer = one(objs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert "ca" in issuer["spec"] or "selfSigned" in issuer["spec"]
    volume = next(v for v in pod_spec(objs)["volumes"]
                  if v.get("secret", {}).get("secretName") == certificate["spec"]["secretName"])  # fmt: skip
    mounted = Path(next(m for m in container(objs)["volumeMounts"] if m["name"] == volume["name"])["mountPath"])
    assert (hook.cert_file, hook.key_file) == (mounted / "tls.crt", mounted / "tls.key")


def test_the_gateway_may_read_what_it_reconciles() -> None:
    """Reconciliation reads every priced resource back with the mounted long-lived token of a bound service account,
    over TLS verified against the cluster CA in that token's Secret."""
    objs = rendered("production")
    role = one(objs, "ClusterRole")
    readable = {(g, r) for rule in role["rules"] if "get" in rule["verbs"] for g in rule["apiGroups"]
                for r in rule["resources"]}  # fmt: skip
    assert {(g, r) for g, _, r in _priced_resources()} <= readable
    binding = one(objs, "ClusterRoleBinding")
    token = one(objs, "Secret", "exportgate-k8s-token")
    account = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    settings = settings_of(gateway_yaml(objs))
    k8s = next(u for u in settings.upstreams if u.name == "k8s")
    assert pod_spec(objs)["serviceAccountName"] == account
    volume = next(v for v in pod_spec(objs)["volumes"]
                  if v.get("secret", {}).get("secretName") == token["metadata"]["name"])  # fmt: skip
    mount = Path(next(m for m in container(objs)["volumeMounts"] if m["name"] == volume["name"])["mountPath"])
    assert k8s.headers["Authorization"].file == mount / "token"
    assert k8s.tls is not None and k8s.tls.ca_file == mount / "ca.crt"
    # What the proxy sends the API server with that token, the proxy priced: the webhook must not price it again.
    assert settings.admission_webhook is not None
    assert settings.admission_webhook.proxy_users == (f"system:serviceaccount:{NAMESPACE}:{account}",)


def test_everything_lives_in_one_namespace() -> None:
    """Every namespaced object is in the production namespace, and every name spelt out with it agrees."""
    objs = rendered("production")
    for obj in objs:
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "exportgate"
    certificate = one(objs, "Certificate", "exportgate-webhook")
    assert all(n.split(".")[1] == NAMESPACE for n in certificate["spec"]["dnsNames"])
    assert {o["metadata"].get("namespace") for o in rendered("base")} == {None}  # the base leaves it to overlays
