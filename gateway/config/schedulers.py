"""Strict loading of an upstream's `scheduler_options:` mapping into its adapter's options."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem, Where
from gateway.core.jobs import JobSpecInvalid
from gateway.core.routes import compile_pattern
from gateway.schedulers import (
    KINDS,
    GenericOptions,
    KubernetesOptions,
    RayOptions,
    S3Options,
    SchedulerOptions,
    SlurmOptions,
)
from gateway.schedulers.generic import WALLTIME_UNITS
from gateway.schedulers.s3 import SecretSource
from gateway.schedulers.slurm import VERSIONS as SLURM_VERSIONS
from gateway.schedulers.slurm_fields import gpu_spec


def load_scheduler_options(
    kind: str, node: Node | None, problems: list[Problem], parent: Node | None = None
) -> SchedulerOptions | None:
    """Options for `kind` from `node` (None: defaults); None when they cannot be built.

    Kind "none" (a plain proxy without an adapter) has no options and always gives None.

    `parent` (the upstream's mapping) locates problems about a missing `scheduler_options`.
    """
    if kind == "none":  # a plain proxy: operator routes only, nothing to price
        if node is not None and node.raw is not None:
            problems.append(node.problem("scheduler 'none' takes no scheduler_options"))
        return None
    if kind not in KINDS:
        problems.append(_beside(parent, "scheduler", f"unknown scheduler {kind!r}; known: {', '.join(KINDS)}"))
        return None
    if node is None or node.raw is None:
        if kind == "slurm":
            return SlurmOptions()
        if kind == "kubernetes":
            return KubernetesOptions()
        if kind == "ray":
            return RayOptions()
        message = (
            "the generic scheduler needs scheduler_options (paths and fields)"
            if kind == "generic"
            else "the s3 upstream needs scheduler_options (access_key_id, secret_access_key)"
        )
        problems.append(_beside(parent, "scheduler_options", message))
        return None
    before = len(problems)
    loaders: dict[str, Callable[[Node, list[Problem]], SchedulerOptions | None]] = {
        "slurm": _slurm,
        "kubernetes": _kubernetes,
        "ray": _ray,
        "generic": _generic,
        "s3": _s3,
    }
    options = loaders[kind](node, problems)
    return options if len(problems) == before else None


def _beside(parent: Node | None, key: str, message: str) -> Problem:
    """A problem about `key` of the upstream mapping `parent` (which may be unknown)."""
    if parent is None:
        return Problem("(config)", 1, key, message)
    return Problem(parent.file, parent.line, f"{parent.path}.{key}" if parent.path else key, message)


def _positive(fields: Fields, key: str, value: float | None) -> None:
    child = fields.child(key)
    if value is not None and value <= 0 and child is not None:
        fields.problems.append(child.problem("must be positive"))


def _slurm(node: Node, problems: list[Problem]) -> SlurmOptions:
    keys = (
        "partition_time_limits",
        "default_time_limit_min",
        "default_gpu_model",
        "lineage_env",
        "purpose_env",
        "params_env",
        "status_version",
        *_SLURM_FACTS_KEYS,
    )
    f = Fields(node, problems, keys)
    limits: dict[str, int] = {}
    limits_node = f.child("partition_time_limits")
    if limits_node is not None and limits_node.raw is not None:
        if not isinstance(limits_node.raw, dict):
            problems.append(limits_node.problem("must be a mapping of partition name to minutes"))
        else:
            for name, child in limits_node.items():
                raw = child.raw
                if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
                    problems.append(child.problem("must be a positive whole number of minutes"))
                else:
                    limits[name] = raw
    default = f.integer("default_time_limit_min")
    _positive(f, "default_time_limit_min", default)
    return SlurmOptions(
        partition_time_limits=limits,
        default_time_limit_min=default,
        default_gpu_model=f.text("default_gpu_model"),
        lineage_env=f.text("lineage_env", default="EXPORTGATE_LINEAGE"),
        purpose_env=f.text("purpose_env", default="EXPORTGATE_PURPOSE"),
        params_env=f.text("params_env", default="EXPORTGATE_PARAMS"),
        status_version=f.choice("status_version", SLURM_VERSIONS, default="v0.0.38"),
        **_slurm_facts(f, problems),
    )


_SLURM_FACTS_KEYS = (
    "facts_user",
    "facts_version",
    "facts_refresh_s",
    "exclusive_partitions",
    "partition_node_gpus",
    "partition_nodes",
)


def _slurm_facts(f: Fields, problems: list[Problem]) -> dict[str, Any]:
    """Where the cluster's node and partition facts come from, and the operator's overrides of them."""
    refresh = f.number("facts_refresh_s", default=60.0)
    _positive(f, "facts_refresh_s", refresh)
    node_gpus: dict[str, dict[str | None, int]] = {}
    gpus_node = f.child("partition_node_gpus")
    if gpus_node is not None and gpus_node.raw is not None:
        if not isinstance(gpus_node.raw, dict):
            problems.append(gpus_node.problem('must map partition names to GPUs per node, e.g. {gpu: "h100:8"}'))
        else:
            for name, child in gpus_node.items():
                try:
                    counts = gpu_spec(child.raw, "partition_node_gpus") if not isinstance(child.raw, bool) else {}
                except JobSpecInvalid as exc:
                    counts, bad = {}, exc.detail
                else:
                    bad = "" if counts else 'must be GPUs per node such as 8 or "h100:8"'
                if bad:
                    problems.append(child.problem(bad))
                node_gpus[name] = counts
    nodes: dict[str, int] = {}
    nodes_node = f.child("partition_nodes")
    if nodes_node is not None and nodes_node.raw is not None:
        if not isinstance(nodes_node.raw, dict):
            problems.append(nodes_node.problem("must map partition names to node counts"))
        else:
            for name, child in nodes_node.items():
                if isinstance(child.raw, bool) or not isinstance(child.raw, int) or child.raw <= 0:
                    problems.append(child.problem("must be a positive whole number of nodes"))
                else:
                    nodes[name] = child.raw
    return {
        "facts_user": f.text("facts_user"),
        "facts_version": f.choice("facts_version", SLURM_VERSIONS),
        "facts_refresh_s": refresh if refresh is not None else 60.0,
        "exclusive_partitions": frozenset(f.texts("exclusive_partitions", default=[]) or []),
        "partition_node_gpus": node_gpus,
        "partition_nodes": nodes,
    }


def _kubernetes(node: Node, problems: list[Problem]) -> KubernetesOptions:
    keys = ("default_gpu_model", "default_walltime_s", "lineage_label", "purpose_label", "params_label")
    f = Fields(node, problems, keys)
    walltime = f.number("default_walltime_s")
    _positive(f, "default_walltime_s", walltime)
    return KubernetesOptions(
        default_gpu_model=f.text("default_gpu_model"),
        default_walltime_s=walltime,
        lineage_label=f.text("lineage_label", default="exportgate.io/model-lineage"),
        purpose_label=f.text("purpose_label", default="exportgate.io/purpose"),
        params_label=f.text("params_label", default="exportgate.io/model-params"),
    )


def _ray(node: Node, problems: list[Problem]) -> RayOptions:
    keys = ("walltime_metadata_key", "default_walltime_s", "default_gpu_model", "lineage_key", "purpose_key",
            "params_key", "pricing", "cluster_gpus", "capacity_refresh_s")  # fmt: skip
    f = Fields(node, problems, keys)
    walltime = f.number("default_walltime_s")
    _positive(f, "default_walltime_s", walltime)
    refresh = f.number("capacity_refresh_s", default=60.0)
    _positive(f, "capacity_refresh_s", refresh)
    pricing = f.choice("pricing", ["cluster", "entrypoint"], default="cluster") or "cluster"
    return RayOptions(
        pricing=pricing,
        cluster_gpus=_cluster_gpus(f.child("cluster_gpus"), problems),
        capacity_refresh_s=refresh if refresh is not None else 60.0,
        walltime_metadata_key=f.text("walltime_metadata_key", default="time_limit_min"),
        default_walltime_s=walltime,
        default_gpu_model=f.text("default_gpu_model"),
        lineage_key=f.text("lineage_key", default="model_lineage"),
        purpose_key=f.text("purpose_key", default="purpose"),
        params_key=f.text("params_key", default="model_params"),
    )


def _cluster_gpus(node: Node | None, problems: list[Problem]) -> dict[str, int]:
    """`cluster_gpus: {H100: 8, A100: 16}`: each GPU model of a Ray cluster and how many it has (at most)."""
    if node is None or node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must map GPU models to counts, e.g. {H100: 8}"))
        return {}
    out: dict[str, int] = {}
    for model, count in node.items():
        if isinstance(count.raw, bool) or not isinstance(count.raw, int) or count.raw < 0:
            problems.append(count.problem("must be a whole number of GPUs, 0 or more"))
        else:
            out[str(model)] = count.raw
    return out


_GENERIC_PATHS = ("submit_path", "job_path", "list_path", "cancel_path")
_GENERIC_FIELDS = (
    "gpus_field",
    "job_id_field",
    "model_field",
    "walltime_field",
    "concurrency_field",
    "lineage_field",
    "params_field",
    "purpose_field",
    "name_field",
    "list_items_field",
    "list_id_field",
    "state_field",
)


def _generic(node: Node, problems: list[Problem]) -> GenericOptions | None:
    keys = (
        *_GENERIC_PATHS,
        *_GENERIC_FIELDS,
        "plain_read_paths",
        "finished_states",
        "walltime_unit",
        "default_walltime_s",
        "default_gpu_model",
    )
    f = Fields(node, problems, keys)
    before = len(problems)
    paths = {k: f.text(k, required=k == "submit_path") for k in _GENERIC_PATHS}
    plain = f.texts("plain_read_paths", default=[])
    for key, value in paths.items():
        child = f.child(key)
        if value is None or child is None:
            continue
        try:
            compile_pattern(value)
        except ValueError as exc:
            problems.append(child.problem(str(exc)))
        if key in ("job_path", "cancel_path") and "{job_id}" not in value:
            problems.append(child.problem("must contain {job_id}"))
    plain_node = f.child("plain_read_paths")
    for i, value in enumerate(plain if isinstance(plain, list) else []):
        try:
            compile_pattern(value)
        except ValueError as exc:
            assert plain_node is not None
            problems.append(plain_node.raw[i].problem(str(exc)))
    values = {k: f.text(k, required=k == "gpus_field") for k in _GENERIC_FIELDS}
    for key, value in values.items():
        child = f.child(key)
        if value is not None and child is not None and any(not s for s in value.split(".")):
            problems.append(child.problem("must be a dot path like resources.gpus"))
    unit = f.choice("walltime_unit", WALLTIME_UNITS, default="s")
    walltime = f.number("default_walltime_s")
    _positive(f, "default_walltime_s", walltime)
    if values["walltime_field"] is None and walltime is None and f.ok:
        problems.append(node.problem("needs walltime_field or default_walltime_s"))
    finished: list[str] = f.texts("finished_states", default=[])
    if values["state_field"] is not None and not finished and f.ok:
        where = f.child("state_field") or node
        problems.append(where.problem("needs finished_states (the states of a job that is over)"))
    if len(problems) > before or paths["submit_path"] is None or values["gpus_field"] is None:
        return None
    return GenericOptions(
        submit_path=paths["submit_path"],
        gpus_field=values["gpus_field"],
        job_id_field=values["job_id_field"] or "id",
        job_path=paths["job_path"],
        list_path=paths["list_path"],
        cancel_path=paths["cancel_path"],
        plain_read_paths=tuple(plain),
        model_field=values["model_field"],
        walltime_field=values["walltime_field"],
        walltime_unit=unit,
        default_walltime_s=walltime,
        concurrency_field=values["concurrency_field"],
        lineage_field=values["lineage_field"],
        purpose_field=values["purpose_field"],
        params_field=values["params_field"],
        name_field=values["name_field"],
        list_items_field=values["list_items_field"],
        list_id_field=values["list_id_field"],
        default_gpu_model=f.text("default_gpu_model"),
        state_field=values["state_field"],
        finished_states=tuple(finished),
    )


def _secret_source(node: Node | None, problems: list[Problem], required: bool, where: Where) -> SecretSource | None:
    """`{file: PATH}` or `{env: NAME}` (exactly one): one of the gateway's own secrets, read at start."""
    if node is None or node.raw is None:
        if required:
            problems.append(where.problem("required: {file: PATH} or {env: NAME}"))
        return None
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be {file: PATH} or {env: NAME}, never the secret itself"))
        return None
    fields = Fields(node, problems, ("file", "env"))
    file, env = fields.text("file"), fields.text("env")
    if (file is None) == (env is None):
        problems.append(node.problem("exactly one of file, env"))
        return None
    base = Path(node.file).parent
    return SecretSource(resolve_path(base, file), env)


def _s3(node: Node, problems: list[Problem]) -> S3Options:
    keys = ("region", "access_key_id", "secret_access_key", "presign_secret", "presign_max_s", "clock_skew_s",
            "head_concurrency")  # fmt: skip
    f = Fields(node, problems, keys)
    region = f.text("region", default="us-east-1")
    if region is not None and not region.replace("-", "").isalnum():
        f.problem("region", f"{region!r} is not a region name")
    presign_max = f.integer("presign_max_s", default=900)
    if not 1 <= presign_max <= 604800:
        f.problem("presign_max_s", "must be 1..604800 (seven days, SigV4's limit)")
    skew = f.integer("clock_skew_s", default=900)
    if not 1 <= skew <= 3600:
        f.problem("clock_skew_s", "must be 1..3600")
    heads = f.integer("head_concurrency", default=16)
    if not 1 <= heads <= 256:
        f.problem("head_concurrency", "must be 1..256")
    key_id = _secret_source(f.child("access_key_id"), problems, True, f.where("access_key_id"))
    secret = _secret_source(f.child("secret_access_key"), problems, True, f.where("secret_access_key"))
    return S3Options(
        access_key_id=key_id or SecretSource(),
        secret_access_key=secret or SecretSource(),
        region=region or "us-east-1",
        presign_secret=_secret_source(f.child("presign_secret"), problems, False, f.where("presign_secret")),
        presign_max_s=presign_max,
        clock_skew_s=skew,
        head_concurrency=heads,
    )
