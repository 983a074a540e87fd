"""A kustomize build in Python, for the subset of kustomize that deploy/kubernetes uses (no kustomize binary here).

Supported, as kustomize v5 does them: `resources` (files and kustomization directories), `components`
(Component directories: resources, generators and patches applied to what the including kustomization has
accumulated), `configMapGenerator` (files, `key=path`, behavior create/replace/merge, per-generator
`options.disableNameSuffixHash`), `patches` with a `path` only (a strategic-merge patch whose kind and name
select its target), `namespace` and `labels` (`pairs` on metadata.labels only). Generated ConfigMaps get
kustomize's content hash suffix at the end of the build and the pod specs' references to them follow.

Anything else in a kustomization, a list a patch would merge without a known merge key, a file outside
the kustomization's directory (kustomize's default load restrictor) or a namespace reference kustomize
would rewrite is refused with RenderError, so this renderer never silently builds something kustomize
would build differently.
"""

import copy
import hashlib
import importlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from referencing import Registry, Resource

Obj = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "Kustomization": {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator", "patches",
                      "labels"},
    "Component": {"apiVersion", "kind", "resources", "configMapGenerator", "patches"},
}  # fmt: skip
API_VERSIONS = {"Kustomization": "kustomize.config.k8s.io/v1beta1", "Component": "kustomize.config.k8s.io/v1alpha1"}

# Kinds kustomize knows to be cluster-scoped, of those a deployment like this one could hold.
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "CustomResourceDefinition", "PersistentVolume", "StorageClass",
    "PriorityClass", "IngressClass", "ClusterIssuer",
}  # fmt: skip

# Strategic merge: the merge key of each list a patch may merge (Kubernetes' patchMergeKey), by field name.
# `ports` is a Service's (key `port`) or a container's (key `containerPort`).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "volumeMounts": "mountPath",
              "env": "name"}  # fmt: skip
REPLACED_LISTS = {"args", "command"}  # lists without a merge strategy: the patch's list replaces the target's

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class RenderError(Exception):
    pass


@dataclass
class _Generated:
    hashed: bool


@dataclass
class Build:
    """What a kustomization accumulates: objects, and which ConfigMaps its generators made."""

    objects: list[Obj] = field(default_factory=list)
    generated: dict[str, _Generated] = field(default_factory=dict)  # ConfigMap name -> options

    def find(self, kind: str, name: str) -> Obj | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(found) > 1:
            raise RenderError(f"{kind}/{name} is defined {len(found)} times")
        return found[0] if found else None


def _load_kustomization(directory: Path, kind: str) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    loaded: Obj = yaml.safe_load(path.read_text())
    if loaded.get("kind") != kind or loaded.get("apiVersion") != API_VERSIONS[kind]:
        raise RenderError(f"{path}: a {kind} ({API_VERSIONS[kind]}) was expected here")
    unsupported = set(loaded) - KUSTOMIZATION_KEYS[kind]
    if unsupported:
        raise RenderError(f"{path}: {sorted(unsupported)}: not supported by this renderer")
    return loaded


def _inside(directory: Path, relative: str) -> Path:
    """kustomize's default load restrictor: a file must lie in or below the kustomization's directory."""
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise RenderError(f"{directory}: {relative}: outside the kustomization's directory")
    return path


def _documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _add_resources(directory: Path, entries: list[str], build: Build) -> None:
    for entry in entries:
        target = (directory / entry).resolve()
        if target.is_dir():
            inner = _accumulate(target, "Kustomization")
            for obj in inner.objects:
                _add(build, obj)
            build.generated.update(inner.generated)
        else:
            for obj in _documents(_inside(directory, entry)):
                _add(build, obj)


def _add(build: Build, obj: Obj) -> None:
    if build.find(obj["kind"], obj["metadata"]["name"]) is not None:
        raise RenderError(f"{obj['kind']}/{obj['metadata']['name']}: defined twice")
    build.objects.append(obj)


def _generate(directory: Path, generators: list[Obj], build: Build) -> None:
    for gen in generators:
        unknown = set(gen) - {"name", "files", "behavior", "options"}
        if unknown or set(gen.get("options", {})) - {"disableNameSuffixHash"}:
            raise RenderError(f"{directory}: configMapGenerator {gen.get('name')}: not supported: {sorted(unknown)}")
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, relative = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = _inside(directory, relative).read_text()
        name = gen["name"]
        behavior = gen.get("behavior", "create")
        existing = build.find("ConfigMap", name)
        if behavior == "create":
            if existing is not None:
                raise RenderError(f"ConfigMap {name}: exists already (use behavior: merge or replace)")
            build.objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                                  "data": dict(sorted(data.items()))})  # fmt: skip
            build.generated[name] = _Generated(hashed=not gen.get("options", {}).get("disableNameSuffixHash", False))
        elif behavior in ("replace", "merge"):
            if existing is None or name not in build.generated:
                raise RenderError(f"ConfigMap {name}: behavior {behavior} needs a generated ConfigMap of that name")
            merged = {**existing["data"], **data} if behavior == "merge" else data
            existing["data"] = dict(sorted(merged.items()))
            if "options" in gen:
                build.generated[name] = _Generated(hashed=not gen["options"].get("disableNameSuffixHash", False))
        else:
            raise RenderError(f"ConfigMap {name}: behavior {behavior!r}")


def strategic_merge(target: Any, patch: Any, kind: str, path: str = "") -> Any:
    """Kubernetes' strategic merge for the lists MERGE_KEYS names; other lists must be REPLACED_LISTS."""
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for key, value in patch.items():
            if key.startswith("$"):
                raise RenderError(f"{path}.{key}: patch directives are not supported")
            out[key] = strategic_merge(target[key], value, kind, f"{path}.{key}") if key in target else value
        return out
    if isinstance(patch, list) and isinstance(target, list):
        name = path.rsplit(".", 1)[-1]
        if name in REPLACED_LISTS:
            return patch
        merge_key = ("port" if kind == "Service" else "containerPort") if name == "ports" else MERGE_KEYS.get(name)
        if merge_key is None:
            raise RenderError(f"{path}: no merge key known for this list")
        out_list = [dict(item) for item in target]
        added = []
        for item in patch:
            match = [i for i, old in enumerate(out_list) if old.get(merge_key) == item.get(merge_key)]
            if match:
                out_list[match[0]] = strategic_merge(out_list[match[0]], item, kind, f"{path}[{item[merge_key]}]")
            else:
                added.append(item)
        return added + out_list  # kustomize puts the patch's new items first, in the patch's order
    return patch


def _patch(directory: Path, entries: list[Obj], build: Build) -> None:
    for entry in entries:
        if set(entry) != {"path"}:
            raise RenderError(f"{directory}: patches: only {{path: FILE}} is supported, not {sorted(entry)}")
        (patch,) = _documents(_inside(directory, entry["path"]))
        kind, name = patch["kind"], patch["metadata"]["name"]
        target = build.find(kind, name)
        if target is None:
            raise RenderError(f"{directory / entry['path']}: no {kind}/{name} to patch")
        if target["apiVersion"] != patch["apiVersion"]:
            raise RenderError(f"{directory / entry['path']}: {kind}/{name} is {target['apiVersion']}")
        merged = strategic_merge(target, patch, kind)
        target.clear()
        target.update(merged)


def _namespace(namespace: str, build: Build) -> None:
    for obj in build.objects:
        kind = obj["kind"]
        if kind == "Namespace":
            if obj["metadata"]["name"] != namespace:
                raise RenderError(f"Namespace {obj['metadata']['name']}: kustomize would rename it to {namespace}")
            continue
        # References kustomize's namespace transformer rewrites: this renderer asks that they already agree.
        for ref in _namespace_references(obj):
            if ref != namespace:
                raise RenderError(f"{kind}/{obj['metadata']['name']}: names namespace {ref!r}, not {namespace!r}")
        if kind not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def _namespace_references(obj: Obj) -> Iterator[str]:
    if obj["kind"] in ("ClusterRoleBinding", "RoleBinding"):
        yield from (s["namespace"] for s in obj.get("subjects", []) if s.get("kind") == "ServiceAccount")
    if obj["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        for hook in obj.get("webhooks", []):
            service = hook.get("clientConfig", {}).get("service")
            if service is not None:
                yield service["namespace"]


def _labels(entries: list[Obj], build: Build) -> None:
    for entry in entries:
        if (
            set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
            or entry.get("includeSelectors")
            or entry.get("includeTemplates")
        ):
            raise RenderError(f"labels: only pairs on metadata.labels are supported, not {entry}")
        for obj in build.objects:
            obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), **entry["pairs"]}


def _accumulate(directory: Path, kind: str) -> Build:
    k = _load_kustomization(directory, kind)
    build = Build()
    _add_resources(directory, k.get("resources", []), build)
    for component in k.get("components", []):
        _apply_component((directory / component).resolve(), build)
    _generate(directory, k.get("configMapGenerator", []), build)
    _patch(directory, k.get("patches", []), build)
    if "namespace" in k:
        _namespace(k["namespace"], build)
    _labels(k.get("labels", []), build)
    return build


def _apply_component(directory: Path, build: Build) -> None:
    k = _load_kustomization(directory, "Component")
    _add_resources(directory, k.get("resources", []), build)
    _generate(directory, k.get("configMapGenerator", []), build)
    _patch(directory, k.get("patches", []), build)


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix: SHA-256 of Go's json.Marshal of {data, kind, name}, 10 hex digits re-lettered.

    The name is always "": kustomize v5 looks it up as one key named "metadata/name" (api/hasher), finds
    nothing and hashes the empty string, so the suffix depends on the data alone."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False)  # fmt: skip
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):  # fmt: skip
        encoded = encoded.replace(char, escape)  # Go's json.Marshal escapes HTML
    hexed = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return hexed.translate(str.maketrans("013ae", "ghkmt"))


def pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["spec"]


def _config_map_references(spec: Obj) -> Iterator[Obj]:
    """Each dict of a pod spec whose `name` names a ConfigMap."""
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                yield source["configMap"]
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                yield env_from["configMapRef"]
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                yield ref


def _suffix_hashes(build: Build) -> None:
    renamed: dict[str, str] = {}
    for name, generated in build.generated.items():
        if generated.hashed:
            config_map = build.find("ConfigMap", name)
            assert config_map is not None
            renamed[name] = f"{name}-{config_map_hash(config_map['data'])}"
            config_map["metadata"]["name"] = renamed[name]
    for obj in build.objects:
        for spec in pod_specs(obj):
            for ref in _config_map_references(spec):
                ref["name"] = renamed.get(ref["name"], ref["name"])


def render(directory: Path) -> list[Obj]:
    """What `kubectl kustomize DIRECTORY` prints, as objects (in kustomize's order of accumulation)."""
    build = _accumulate(directory, "Kustomization")
    _suffix_hashes(build)
    return copy.deepcopy(build.objects)


# --- Validation -------------------------------------------------------------------------------------------

K8S_VERSIONS = ("1.31", "1.32")  # kubernetes-validate's schemas: the oldest supported release and a current one

# Custom resources have no schema in kubernetes-validate. These are their CRDs' OpenAPI schemas (Prometheus
# Operator's monitoring.coreos.com/v1, cert-manager's cert-manager.io/v1) cut down to the fields deploy/ uses,
# each field transcribed with its upstream type, pattern, enum and required list; every object closed
# (additionalProperties: false), so a field outside that subset is refused rather than passed unchecked.
# metadata is Kubernetes' ObjectMeta from kubernetes-validate's own definitions.
DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRINGS = {"type": "array", "items": {"type": "string"}}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


LABEL_SELECTOR = _closed({
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": _closed(
        {"key": {"type": "string"}, "operator": {"type": "string"}, "values": STRINGS}, ("key", "operator"))},
})  # fmt: skip
CUSTOM_SPECS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _closed({
        "selector": LABEL_SELECTOR,
        "endpoints": {"type": "array", "items": _closed({
            "port": {"type": "string"}, "path": {"type": "string"}, "interval": DURATION, "scrapeTimeout": DURATION,
            "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]}})},
    }, ("endpoints", "selector")),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _closed({
        "groups": {"type": "array", "items": _closed({
            "name": {"type": "string", "minLength": 1}, "interval": DURATION,
            "rules": {"type": "array", "items": _closed({
                "alert": {"type": "string"}, "record": {"type": "string"},
                "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "for": DURATION,
                "keep_firing_for": DURATION, "labels": STRING_MAP, "annotations": STRING_MAP}, ("expr",))},
        }, ("name",))},
    }),
    ("cert-manager.io/v1", "Certificate"): _closed({
        "secretName": {"type": "string"}, "commonName": {"type": "string"}, "dnsNames": STRINGS,
        "duration": {"type": "string"}, "renewBefore": {"type": "string"}, "isCA": {"type": "boolean"},
        "issuerRef": _closed({"name": {"type": "string"}, "kind": {"type": "string"}, "group": {"type": "string"}},
                             ("name",)),
        "privateKey": _closed({
            "algorithm": {"type": "string", "enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
            "encoding": {"type": "string", "enum": ["PKCS1", "PKCS8"]},
            "rotationPolicy": {"type": "string", "enum": ["Never", "Always"]}}),
        "usages": {"type": "array", "items": {"type": "string", "enum": [
            "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
            "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
            "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
            "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
    }, ("issuerRef", "secretName")),
    ("cert-manager.io/v1", "Issuer"): {**_closed({
        "selfSigned": _closed({"crlDistributionPoints": STRINGS}),
        "ca": _closed({"secretName": {"type": "string"}, "crlDistributionPoints": STRINGS, "ocspServers": STRINGS,
                       "issuingCertificateURLs": STRINGS}, ("secretName",)),
    }), "minProperties": 1, "maxProperties": 1},  # one kind of issuer (acme, vault, venafi: not used here)
}  # fmt: skip


class InvalidObject(Exception):
    pass


def _custom_schema(obj: Obj) -> dict[str, Any]:
    key = (obj["apiVersion"], obj["kind"])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kubernetes.io/api/custom/{obj['kind'].lower()}",
        **_closed({
            "apiVersion": {"const": key[0]}, "kind": {"const": key[1]},
            "metadata": {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": CUSTOM_SPECS[key],
        }, ("apiVersion", "kind", "metadata", "spec")),
    }  # fmt: skip


def validate_object(obj: Obj) -> None:
    """Every object against its schema, strictly (no unknown field): kubernetes-validate for Kubernetes' own kinds,
    at each release of K8S_VERSIONS; CUSTOM_SPECS for custom resources. A kind neither knows is an error."""
    # Untyped packages (kubernetes-validate, and jsonschema, whose stubs the project does not install): as Any.
    jsonschema = importlib.import_module("jsonschema")
    kubernetes_validate = importlib.import_module("kubernetes_validate")
    schema_contents = importlib.import_module("kubernetes_validate.utils").schema_contents

    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if (obj["apiVersion"], obj["kind"]) in CUSTOM_SPECS:
        for version in K8S_VERSIONS:
            definitions = schema_contents(f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json",
                                          version)  # fmt: skip
            schema = _custom_schema(obj)
            registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
            errors = sorted(jsonschema.Draft202012Validator(schema, registry=registry).iter_errors(obj), key=str)
            if errors:
                where = ".".join(str(p) for p in errors[0].absolute_path)
                raise InvalidObject(f"{name}: {where}: {errors[0].message}")
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise InvalidObject(f"{name} ({version}): {where}: {exc.message}") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise InvalidObject(exc.message) from None


# --- promtool ---------------------------------------------------------------------------------------------


def promtool() -> str:
    """promtool (Debian's prometheus package), installed the way `make redis` installs redis-server."""
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"], check=True,
                       env=env, capture_output=True)  # fmt: skip
        found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool is required for the deploy tests: install it (apt-get install prometheus)")
    return found
