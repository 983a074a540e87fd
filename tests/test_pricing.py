"""Pricing against hand-computed values, and the gpus.yaml catalogue and its loader."""

from pathlib import Path

import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.gpus import load_gpus
from gateway.config.located import Problem
from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid
from gateway.core.pricing import GpuCatalogue, GpuModel, price

PACK_GPUS = BUNDLED_POLICIES / "ai-diffusion-2025" / "gpus.yaml"


@pytest.fixture(scope="module")
def catalogue() -> GpuCatalogue:
    """The bundled ai-diffusion-2025 GPU catalogue, loaded without problems."""
    problems: list[Problem] = []
    loaded = load_gpus(PACK_GPUS, problems)
    assert problems == []
    return loaded


def spec(*parts: tuple[int, str | None, int], walltime_s: float | None = 7200.0) -> JobSpec:
    return JobSpec(tuple(JobPart(g, m, c) for g, m, c in parts), walltime_s)


PRICES = [
    pytest.param(
        spec((8, "NVIDIA-H100-80GB-HBM3", 1)), None, 1.0, 126_656.0, 253_312.0, 8 * 989e12 * 7200,
        id="8xH100-SXM-2h",
    ),
    pytest.param(
        spec((8, "h20", 1), walltime_s=3600.0), None, 1.0, 0.0, 0.0, 8 * 148e12 * 3600,
        id="h20-holds-zero-tpp-but-counts-ops",
    ),
    pytest.param(
        spec((4, "a100", 2), (2, "H20", 1), walltime_s=3600.0), None, 1.0,
        8 * 4992.0, 8 * 4992.0, (8 * 312e12 + 2 * 148e12) * 3600,
        id="mixed-parts-with-concurrency",
    ),
    pytest.param(
        spec((8, "H100", 1)), None, 0.4, 126_656.0, 253_312.0, 8 * 989e12 * 7200 * 0.4,
        id="utilisation-scales-ops-only",
    ),
    pytest.param(
        spec((2, None, 1), walltime_s=1800.0), "B200", 1.0, 72_000.0, 36_000.0, 2 * 2250e12 * 1800,
        id="default-model-for-unlabelled-gpus",
    ),
    pytest.param(
        spec((1, "NVIDIA-A100-SXM4-80GB|NVIDIA-H100-80GB-HBM3", 4), walltime_s=3600.0), None, 1.0,
        4 * 15_832.0, 4 * 15_832.0, 4 * 989e12 * 3600,
        id="affinity-candidates-priced-at-worst",
    ),
    pytest.param(
        spec((1, "h20|a100", 1), walltime_s=3600.0), None, 1.0, 4992.0, 4992.0, 312e12 * 3600,
        id="candidates-mixing-controlled-and-not",
    ),
    pytest.param(
        spec((8, "nVidia-H100-80gb-hbm3", 1)), None, 1.0, 126_656.0, 253_312.0, 8 * 989e12 * 7200,
        id="alias-case-insensitive",
    ),
    pytest.param(spec((0, None, 1)), None, 1.0, 0.0, 0.0, 0.0, id="zero-gpus-need-no-model"),
    pytest.param(spec(), None, 1.0, 0.0, 0.0, 0.0, id="cpu-only-job"),
]


@pytest.mark.parametrize(("job", "default", "utilisation", "held", "tpp_hours", "ops"), PRICES)
def test_price(
    catalogue: GpuCatalogue, job: JobSpec, default: str | None, utilisation: float,
    held: float, tpp_hours: float, ops: float,
) -> None:
    """Held TPP, TPP-hours and training ops equal the hand-computed values."""
    cost = price(job, catalogue, default, utilisation)
    assert cost.held_tpp == pytest.approx(held)
    assert cost.tpp_hours == pytest.approx(tpp_hours)
    assert cost.training_ops == pytest.approx(ops)
    assert cost.walltime_s == job.walltime_s
    assert cost.gpus == job.total_gpus


CHIPS = [
    pytest.param(spec((8, "h100", 1)), (15_832.0, 15_832.0), id="one-model"),
    pytest.param(spec((4, "a100", 2), (2, "h100", 1), (2, "h20", 1)), (15_832.0, 4992.0), id="mixed-h20-left-out"),
    pytest.param(spec((1, "h20|a100", 1)), (4992.0, 4992.0), id="candidates-at-the-worst"),
    pytest.param(spec((8, "h20", 1)), (0.0, 0.0), id="no-controlled-chip"),
]


@pytest.mark.parametrize(("job", "chips"), CHIPS)
def test_chip_sizes(catalogue: GpuCatalogue, job: JobSpec, chips: tuple[float, float]) -> None:
    """A priced job knows its dearest and cheapest controlled chip, so a split of its TPP can keep chips whole."""
    cost = price(job, catalogue, None, 1.0)
    assert (cost.chip_tpp_max, cost.chip_tpp_min) == chips
    assert (cost.as_record()["chip_tpp_max"], cost.as_record()["chip_tpp_min"]) == chips


REFUSED = [
    pytest.param(spec((8, "V100", 1)), None, "gpu model", id="unknown-model"),
    pytest.param(spec((8, "V100", 1)), "H100", "gpu model", id="unknown-model-not-priced-as-default"),
    pytest.param(spec((8, None, 1)), None, "gpu model", id="no-model-no-default"),
    pytest.param(spec((8, None, 1)), "V100", "gpu model", id="default-not-in-catalogue"),
    pytest.param(spec((8, "h100|V100", 1)), None, "gpu model", id="one-unknown-candidate"),
    pytest.param(spec((8, "h100", 1), walltime_s=None), None, "walltime", id="no-walltime"),
    pytest.param(spec((8, "h100", 1), walltime_s=0.0), None, "walltime", id="zero-walltime"),
    pytest.param(spec((8, "h100", 1), walltime_s=float("inf")), None, "walltime", id="infinite-walltime"),
    pytest.param(spec((-1, "h100", 1)), None, "gpus", id="negative-gpus"),
]


@pytest.mark.parametrize(("job", "default", "field"), REFUSED)
def test_price_refuses(catalogue: GpuCatalogue, job: JobSpec, default: str | None, field: str) -> None:
    """A job that cannot be priced with certainty raises JobSpecInvalid naming the field."""
    with pytest.raises(JobSpecInvalid) as raised:
        price(job, catalogue, default, 1.0)
    assert raised.value.field == field


@pytest.mark.parametrize("utilisation", [0.0, -0.5, 1.5, float("nan")], ids=["zero", "negative", "above-one", "nan"])
def test_utilisation_out_of_range(catalogue: GpuCatalogue, utilisation: float) -> None:
    """Utilisation outside (0, 1] is a programming error, not a tenant's fault."""
    with pytest.raises(ValueError, match="utilisation"):
        price(spec((1, "h100", 1)), catalogue, None, utilisation)


DOMAIN_TABLE = [
    ("A100", 4992, 312e12, True),
    ("H100-SXM", 15832, 989e12, True),
    ("H100-PCIe", 12104, 756e12, True),
    ("H200", 15832, 989e12, True),
    ("H20", 2368, 148e12, False),
    ("B200", 36000, 2250e12, True),
    ("GB200", 40000, 2500e12, True),
    ("L40S", 5864, 362e12, True),
    ("MI300X", 20919, 1307e12, True),
    ("Gaudi3", 29360, 1835e12, True),
]


@pytest.mark.parametrize(("name", "tpp", "flops", "controlled"), DOMAIN_TABLE, ids=[r[0] for r in DOMAIN_TABLE])
def test_pack_catalogue_matches_domain_table(
    catalogue: GpuCatalogue, name: str, tpp: float, flops: float, controlled: bool
) -> None:
    """Every accelerator of DOMAIN_TABLE (dense vendor peaks) is in the pack with its TPP, FLOP/s and control."""
    model = catalogue.lookup(name)
    assert model is not None
    assert (model.tpp, model.dense_flops, model.controlled) == (tpp, flops, controlled)


ALIASES = [
    ("h100", "H100-SXM"), ("a100", "A100"), ("h200", "H200"), ("b200", "B200"), ("l40s", "L40S"),
    ("h100-pcie", "H100-PCIe"), ("mi300x", "MI300X"), ("gaudi3", "Gaudi3"), ("h20", "H20"),
    ("NVIDIA-H100-80GB-HBM3", "H100-SXM"), ("NVIDIA-A100-SXM4-80GB", "A100"),
    ("NVIDIA-A100-SXM4-40GB", "A100"), ("NVIDIA-H200", "H200"), ("NVIDIA-H100-PCIe", "H100-PCIe"),
    ("NVIDIA-B200", "B200"), ("AMD-Instinct-MI300X", "MI300X"), ("NVIDIA-H20", "H20"),
    ("H100", "H100-SXM"), ("A100", "A100"), ("A100-80G", "A100"), ("A100-40G", "A100"), ("H200", "H200"),
    ("B200", "B200"), ("L40S", "L40S"), ("MI300X", "MI300X"), ("AMD-Instinct-MI300X-OAM", "MI300X"),
    ("Intel-GAUDI", "Gaudi3"), ("GB200", "GB200"),
]


@pytest.mark.parametrize(("label", "name"), ALIASES, ids=[a[0] for a in ALIASES])
def test_pack_aliases_cover_scheduler_labels(catalogue: GpuCatalogue, label: str, name: str) -> None:
    """Slurm gres types, Kubernetes product labels and Ray accelerator types resolve to one model."""
    assert catalogue.resolve(label).name == name


def test_catalogue_rejects_label_naming_two_models() -> None:
    """A label shared by two models is a construction error, never a silent choice."""
    with pytest.raises(ValueError, match="names both"):
        GpuCatalogue.of([GpuModel("A", 1, 1, aliases=("x",)), GpuModel("B", 2, 2, aliases=("X",))])


BAD_FILES = [
    pytest.param(
        "models:\n  X:\n    tpp: -5\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n",
        "gpus.yaml:3: models.X.tpp: must be a positive number", id="negative-tpp",
    ),
    pytest.param(
        "models:\n  X:\n    tpp: 5\n    dense_bf16_flops: 1.0e+12\n",
        "gpus.yaml:3: models.X.controlled: required", id="missing-controlled",
    ),
    pytest.param(
        "models:\n  X:\n    tpp: 5\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n    colour: red\n",
        "gpus.yaml:6: models.X.colour: unknown key", id="unknown-key",
    ),
    pytest.param(
        "models:\n  X:\n    tpp: lots\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n",
        "gpus.yaml:3: models.X.tpp: must be a number", id="tpp-not-a-number",
    ),
    pytest.param(
        "models:\n  A:\n    tpp: 5\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n    aliases: [x]\n"
        "  B:\n    tpp: 6\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n    aliases: [y, X]\n",
        "gpus.yaml:11: models.B.aliases[1]: label 'X' already names A", id="alias-shared-across-models",
    ),
    pytest.param(
        "utilisation: 1.5\nmodels:\n  X:\n    tpp: 5\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n",
        "gpus.yaml:1: utilisation: must be greater than 0 and at most 1", id="utilisation-above-one",
    ),
    pytest.param("utilisation: 1.0\n", "gpus.yaml:1: models: required", id="no-models"),
    pytest.param(
        "models:\n  X:\n    tpp: 5\n    tpp: 6\n    dense_bf16_flops: 1.0e+12\n    controlled: true\n",
        "gpus.yaml:4: models.X.tpp: duplicate key", id="duplicate-yaml-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_loader_problems(tmp_path: Path, text: str, expected: str) -> None:
    """A bad gpus.yaml yields a problem printed as file:line: field: problem."""
    path = tmp_path / "gpus.yaml"
    path.write_text(text, encoding="utf-8")
    problems: list[Problem] = []
    load_gpus(path, problems)
    assert expected in [str(p).replace(str(tmp_path) + "/", "") for p in problems]


def test_loader_reads_utilisation(tmp_path: Path) -> None:
    """The top-level utilisation setting is carried on the catalogue."""
    path = tmp_path / "gpus.yaml"
    path.write_text("utilisation: 0.5\nmodels:\n  X:\n    tpp: 5\n    dense_bf16_flops: 7\n    controlled: false\n")
    problems: list[Problem] = []
    loaded = load_gpus(path, problems)
    assert problems == []
    assert loaded.utilisation == 0.5
    assert loaded.resolve("x") == GpuModel("X", 5.0, 7.0, False, ())
