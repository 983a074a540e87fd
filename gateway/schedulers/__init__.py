"""Scheduler adapters: one per scheduler API, chosen by an upstream's `scheduler` kind."""

from gateway.schedulers.base import SchedulerAdapter
from gateway.schedulers.generic import GenericAdapter, GenericOptions
from gateway.schedulers.kubernetes import KubernetesAdapter, KubernetesOptions
from gateway.schedulers.ray import RayAdapter, RayOptions
from gateway.schedulers.slurm import SlurmAdapter, SlurmOptions

SchedulerOptions = SlurmOptions | KubernetesOptions | RayOptions | GenericOptions
KINDS = ("slurm", "kubernetes", "ray", "generic")


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
    "SchedulerAdapter",
    "SchedulerOptions",
    "SlurmAdapter",
    "SlurmOptions",
    "build_adapter",
]
