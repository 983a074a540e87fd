"""The `limits:` and `shutdown:` sections: each bad value is reported on its own line, defaults are sane."""

from pathlib import Path

import pytest

from gateway.config.limits import Limits, Shutdown
from gateway.config.located import ConfigError
from gateway.config.settings import load_settings

UPSTREAM = "upstreams: [{url: 'http://127.0.0.1:6820', scheduler: slurm}]\n"

BAD = [
    ("head-timeout-negative", "limits", "head_timeout_s: -1", "head_timeout_s: must be positive"),
    ("idle-timeout-zero", "limits", "idle_timeout_s: 0", "idle_timeout_s: must be positive"),
    ("max-connections-text", "limits", "max_connections: many", "max_connections: must be an integer"),
    ("min-rate-negative", "limits", "body_min_rate_bytes_s: -5", "body_min_rate_bytes_s: must be positive"),
    ("body-bytes-zero", "limits", "max_body_bytes: 0", "max_body_bytes: must be positive"),
    ("limits-unknown-key", "limits", "header_timeout: 3", "header_timeout: unknown key"),
    ("drain-negative", "shutdown", "drain_s: -1", "drain_s: must be 0 or more"),
    ("grace-zero", "shutdown", "grace_s: 0", "grace_s: must be positive"),
]


@pytest.mark.parametrize(("case", "section", "line", "problem"), BAD, ids=[c[0] for c in BAD])
def test_bad_limit_is_located(tmp_path: Path, case: str, section: str, line: str, problem: str) -> None:
    """A bad limit or shutdown value names its file, its own line (2, not the section's) and its field."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"{section}:\n  {line}\n" + UPSTREAM)
    with pytest.raises(ConfigError) as raised:
        load_settings(config, env={})
    assert f"{tmp_path}/gateway.yaml:2: {section}.{problem}" in [str(p) for p in raised.value.problems]


def test_defaults_bound_every_client(tmp_path: Path) -> None:
    """Without the sections, every timeout and the connection cap are finite, and a drain is configured."""
    config = tmp_path / "gateway.yaml"
    config.write_text(UPSTREAM)
    settings = load_settings(config, env={})
    assert settings.limits == Limits() and settings.shutdown == Shutdown()
    assert 0 < settings.limits.head_timeout_s <= 30 and 0 < settings.limits.idle_timeout_s <= 300
    assert 0 < settings.limits.body_timeout_s <= 60 and settings.limits.max_connections < 100_000
    assert settings.shutdown.drain_s > 0 and settings.shutdown.grace_s > 0
