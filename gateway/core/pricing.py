"""GPU catalogue and job pricing: TPP held at once, TPP-hours and training operations."""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.core.jobs import Cost, JobSpec, JobSpecInvalid

# A JobPart.model may name several candidate labels joined by this separator (Kubernetes
# node affinity `In [a, b]`): the job may land on any of them, so it is priced at the worst.
CANDIDATE_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One accelerator: TPP per chip, dense BF16 FLOP/s, whether 3A090.a controls it."""

    name: str
    tpp: float
    dense_flops: float
    controlled: bool = True
    aliases: tuple[str, ...] = ()


def _shown(label: str) -> str:
    return repr(label) if len(label) <= 64 else repr(label[:60] + "...")


def _key(label: str) -> str:
    return label.strip().casefold()


@dataclass(frozen=True, slots=True)
class GpuCatalogue:
    """The accelerators a pack knows, resolvable by name or alias, case-insensitively."""

    models: tuple[GpuModel, ...]
    utilisation: float = 1.0
    _index: Mapping[str, GpuModel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, GpuModel] = {}
        for model in self.models:
            for label in (model.name, *model.aliases):
                key = _key(label)
                if not key:
                    raise ValueError(f"{model.name}: empty label")
                other = index.get(key)
                if other is not None and other is not model:
                    raise ValueError(f"label {label!r} names both {other.name} and {model.name}")
                index[key] = model
        object.__setattr__(self, "_index", index)

    @classmethod
    def of(cls, models: Iterable[GpuModel], utilisation: float = 1.0) -> "GpuCatalogue":
        return cls(tuple(models), utilisation)

    def knows(self, label: str) -> bool:
        """Whether `label` (a name or alias, any case) resolves to a model."""
        return _key(label) in self._index

    def lookup(self, label: str) -> GpuModel | None:
        return self._index.get(_key(label))

    def resolve(self, label: str | None, default: str | None = None) -> GpuModel:
        """The model to price `label` at; None falls back to `default`.

        A label of several candidates (`a|b`) resolves to a worst-case model: the highest
        TPP among the controlled candidates and the highest FLOP/s among all of them. An
        unknown label is refused even when a default exists: the request named hardware
        we cannot price, and pricing it as the default could undercount.
        """
        if label is None:
            if default is None:
                raise JobSpecInvalid("gpu model", "the request names no GPU model and no default is configured")
            found = self.lookup(default)
            if found is None:
                raise JobSpecInvalid("gpu model", f"default model {default!r} is not in the catalogue")
            return found
        models: list[GpuModel] = []
        for name in label.split(CANDIDATE_SEPARATOR):
            found = self.lookup(name) if name.strip() else None
            if found is None:
                raise JobSpecInvalid("gpu model", f"unknown GPU model {_shown(name.strip())}")
            models.append(found)
        if len(models) == 1:
            return models[0]
        controlled = [m for m in models if m.controlled]
        return GpuModel(
            name=CANDIDATE_SEPARATOR.join(m.name for m in models),
            tpp=max(m.tpp for m in controlled or models),
            dense_flops=max(m.dense_flops for m in models),
            controlled=bool(controlled),
        )


def price(spec: JobSpec, catalogue: GpuCatalogue, default_model: str | None, utilisation: float) -> Cost:
    """Price a job: held TPP over controlled chips, TPP-hours, and training ops over all chips.

    held_tpp = sum(gpus x concurrency x TPP) over controlled models;
    tpp_hours = held_tpp x walltime in hours;
    training_ops = sum(gpus x concurrency x dense FLOP/s) x walltime_s x utilisation.
    """
    if not 0 < utilisation <= 1 or math.isnan(utilisation):
        raise ValueError(f"utilisation must be in (0, 1], not {utilisation!r}")
    walltime = spec.walltime_s
    if walltime is None:
        raise JobSpecInvalid("walltime", "the request sets no walltime and no default applies")
    if not math.isfinite(walltime) or walltime <= 0:
        raise JobSpecInvalid("walltime", f"walltime must be a positive number of seconds, not {walltime!r}")
    held_tpp = 0.0
    flops = 0.0
    chips: list[float] = []  # TPP per controlled chip model the job holds
    for part in spec.parts:
        if part.gpus < 0 or part.concurrency < 0:
            raise JobSpecInvalid("gpus", "GPU counts must not be negative")
        count = part.gpus * part.concurrency
        if count == 0:
            continue
        model = catalogue.resolve(part.model, default_model)
        if model.controlled:
            held_tpp += count * model.tpp
            if model.tpp > 0:
                chips.append(model.tpp)
        flops += count * model.dense_flops
    return Cost(
        held_tpp=held_tpp,
        tpp_hours=held_tpp * walltime / 3600.0,
        training_ops=flops * walltime * utilisation,
        walltime_s=walltime,
        gpus=spec.total_gpus,
        chip_tpp_max=max(chips, default=0.0),
        chip_tpp_min=min(chips, default=0.0),
    )
