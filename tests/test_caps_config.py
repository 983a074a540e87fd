"""caps.yaml loads strictly: the bundled file is clean, and each mistake is named by file, line and field."""

from pathlib import Path

import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.caps import CLOSED, load_caps
from gateway.config.located import Problem

BUNDLED = BUNDLED_POLICIES / "ai-diffusion-2025" / "caps.yaml"


def test_bundled_caps_load_clean() -> None:
    """The ai-diffusion-2025 caps carry the domain figures (LPP, country allocation, NVEU schedule, 1e26)."""
    problems: list[Problem] = []
    caps = load_caps(BUNDLED, problems)
    assert problems == []
    assert (caps.lpp_tpp, caps.country_tpp, caps.training_threshold_ops) == (26_900_000, 790_000_000, 1e26)
    assert len(caps.national_veu_schedule) == 9
    assert caps.tier1_cap_tpp is None and caps.universal_veu_cap_tpp is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("  count: held", "  count: weekly"), ":29: lpp.count: 'weekly' is not one of held, calendar_year"),
        (("  tpp: 26900000", "  tpp: -1"), ":27: lpp.tpp: must not be negative"),
        (("  overrides: {}", '  overrides: {"XX": 1}'), ":41: country_allocation.overrides.XX: 'XX' is not an ISO"),
        (("    - {from: 2025-04-01", "    - {from: 2024-04-01"), ":48: national_veu.schedule[1]: steps must be in"),
        (("  per_tenant_total: true", "  per_tenant_total: yes please"), ":69: training.per_tenant_total: must be"),
        (("  cap_tpp: null\n\nlpp:", "  cap_tpp: null\n  cap: 1\n\nlpp:"), ":22: tier1.cap: unknown key"),
        (("leases:\n", "lease:\n"), ":13: leases: required"),
    ],
    ids=["lpp-count-choice", "negative-cap", "override-not-iso", "schedule-order", "flag-type", "unknown-key",
         "misspelt-section"],
)  # fmt: skip
def test_bad_caps_are_located(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    """A broken caps.yaml yields located problems and all-closed settings."""
    text = BUNDLED.read_text()
    assert edit[0] in text
    path = tmp_path / "caps.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    problems: list[Problem] = []
    caps = load_caps(path, problems)
    assert caps == CLOSED
    assert any(message in str(p) for p in problems), [str(p) for p in problems]
