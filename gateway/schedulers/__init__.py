"""Scheduler adapters: one per scheduler API, chosen by an upstream's `scheduler` kind."""

from gateway.schedulers.base import SchedulerAdapter
from gateway.schedulers.generic import GenericAdapter, GenericOptions
from gateway.schedulers.kubernetes import KubernetesAdapter, KubernetesOptions
from gateway.schedulers.ray import RayAdapter, RayOptions
from gateway.schedulers.s3 import S3Adapter, S3Options
from gateway.schedulers.slurm import SlurmAdapter, SlurmOptions

SchedulerOptions = SlurmOptions | KubernetesOptions | RayOptions | GenericOptions | S3Options
KINDS = ("slurm", "kubernetes", "ray", "generic", "s3")


def build_adapter(kind: str, options: SchedulerOptions) -> SchedulerAdapter:
    """The adapter for `kind`, configured with options of the matching type."""
    if kind == "slurm" and isinstance(options, SlurmOptions):
        return SlurmAdapter(options)
    if kind == "kubernetes" and isinstance(options, KubernetesOptions):
        return KubernetesAdapter(options)
    if kind == "ray" and isinstance(options, RayOptions):
        return RayAdapter(options)
    if kind == "generic" and isinstance(options, GenericOptions):
        return GenericAdapter(options)
    if kind == "s3" and isinstance(options, S3Options):
        return S3Adapter(options)
    if kind not in KINDS:
        raise ValueError(f"unknown scheduler {kind!r}; known: {', '.join(KINDS)}")
    raise ValueError(f"scheduler {kind!r} needs its own options, not {type(options).__name__}")


__all__ = [
    "KINDS",
    "GenericAdapter",
    "GenericOptions",
    "KubernetesAdapter",
    "KubernetesOptions",
    "RayAdapter",
    "RayOptions",
    "S3Adapter",
    "S3Options",
    "SchedulerAdapter",
    "SchedulerOptions",
    "SlurmAdapter",
    "SlurmOptions",
    "build_adapter",
]
