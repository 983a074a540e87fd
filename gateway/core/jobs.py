"""What a job submission asks for (JobSpec) and what it costs once priced (Cost)."""

import re
from dataclasses import dataclass

# An idempotency key, and a client-chosen job id (Ray's submission_id): it becomes the ownership key and
# reaches the ledger and logs, so it is held to a short, plain alphabet.
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class JobPart:
    """One homogeneous component of a job: GPUs per copy, model label, copies at once.

    `gpus` is the total GPUs one copy of this component holds (already multiplied out over
    nodes, tasks, sockets); `concurrency` is how many copies run at once (array throttle,
    Kubernetes parallelism). `model` is the label as the scheduler spelled it (catalogue
    aliases resolve it), or None when the request left it to the cluster default.
    """

    gpus: int
    model: str | None
    concurrency: int = 1


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job submission as extracted by a scheduler adapter, before pricing."""

    parts: tuple[JobPart, ...]
    walltime_s: float | None
    purpose: str | None = None
    lineage: str | None = None
    name: str | None = None
    idempotency_key: str | None = None
    # Code packages uploaded through the scheduler that the job runs (Ray's `gcs://` runtime_env URIs).
    packages: tuple[str, ...] = ()
    # The parameter count of the model the job trains or runs, as the submission declares it (Slurm
    # EXPORTGATE_PARAMS, Ray metadata model_params, ...): the pack's parameter threshold reads it.
    parameters: float | None = None

    @property
    def total_gpus(self) -> int:
        return sum(p.gpus * p.concurrency for p in self.parts)


@dataclass(frozen=True, slots=True)
class Cost:
    """A priced job: TPP held at once over controlled chips, TPP-hours and training ops.

    `chip_tpp_max` / `chip_tpp_min` are the TPP of the dearest and cheapest controlled chip
    in the job: chips are allocated whole, so a split of `held_tpp` between allowances is
    made in chips (see `Share.HEADROOM`). Zero when unknown (a cost rebuilt from an older
    record): the job is then split as one indivisible unit, the conservative reading.
    """

    held_tpp: float
    tpp_hours: float
    training_ops: float
    walltime_s: float
    gpus: int
    chip_tpp_max: float = 0.0
    chip_tpp_min: float = 0.0

    def as_record(self) -> dict[str, float | int]:
        return {
            "tpp": self.held_tpp,
            "tpp_hours": self.tpp_hours,
            "training_ops": self.training_ops,
            "walltime_s": self.walltime_s,
            "gpus": self.gpus,
            "chip_tpp_max": self.chip_tpp_max,
            "chip_tpp_min": self.chip_tpp_min,
        }


class JobSpecInvalid(ValueError):
    """The submission cannot be priced with certainty; `field` names where and why."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class JobUpdateNotAllowed(ValueError):
    """A request would change a live job's resources in a way that cannot be priced."""
