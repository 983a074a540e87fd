"""The live policy pack and tenant registry, reloaded on change; the last good pair stays."""

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.background import cancel_and_wait
from gateway.config.located import ConfigError, Problem
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.policy import Pack
from gateway.core.registry_changes import registry_changes
from gateway.core.tenants import Registry

log = logging.getLogger(__name__)
LISTED_MAX = 50  # tenant ids named per list in a reload's log event; the rest are counted


def _fingerprint(pack_dir: Path, registry_file: Path) -> tuple[tuple[str, int, int], ...]:
    paths = [*sorted(pack_dir.glob("*.yaml")), registry_file]
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


def _load_registry(path: Path) -> Registry:
    """The registry, logging each tenant whose requests will fail closed (a country not recorded)."""
    warnings: list[Problem] = []
    registry = load_registry(path, warnings)
    for warning in warnings:
        log.warning("registry: %s", warning)
    return registry


def _listed(ids: tuple[str, ...]) -> list[str]:
    return list(ids[:LISTED_MAX]) + ([f"... {len(ids) - LISTED_MAX} more"] if len(ids) > LISTED_MAX else [])


def _log_reload(old_pack: Pack, old_registry: Registry, pack: Pack, registry: Registry) -> None:
    """One event naming what the reload changed: tenants added, removed and changed, and the pack's version."""
    changes = registry_changes(old_registry, registry)
    fields = {
        "pack": pack.name,
        "pack_version": pack.version,
        "pack_hash": pack.content_hash,
        "pack_changed": pack.content_hash != old_pack.content_hash,
        "previous_pack_version": old_pack.version,
        "registry_version": registry.version,
        "tenants": len(registry.tenants),
        "tenants_added": _listed(changes.added),
        "tenants_removed": _listed(changes.removed),
        "tenants_changed": _listed(changes.changed),
    }
    log.info(
        "reloaded pack %s %s (was %s) and registry %s: %d tenants added, %d removed, %d changed",
        pack.name, pack.version, old_pack.version, registry.version,
        len(changes.added), len(changes.removed), len(changes.changed),
        extra=fields,
    )  # fmt: skip


class PolicyFiles:
    """Holds the current (pack, registry); `reload()` swaps both or neither."""

    def __init__(self, pack_dir: Path, registry_file: Path, on_reload: Callable[[str], None] = lambda r: None) -> None:
        self.pack_dir = pack_dir
        self.registry_file = registry_file
        self._on_reload = on_reload
        self.pack, self.registry = load_pack(pack_dir), _load_registry(registry_file)
        self._seen = _fingerprint(pack_dir, registry_file)
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Load both files again; on any problem log it, count it and keep the last good pair."""
        self._seen = _fingerprint(self.pack_dir, self.registry_file)
        try:
            pack, registry = load_pack(self.pack_dir), _load_registry(self.registry_file)
        except ConfigError as exc:  # the last good pair keeps serving: a warning, not a failure
            for problem in exc.problems:
                log.warning("reload refused, keeping the last good pack and registry: %s", problem)
            self._on_reload("error")
            return False
        old_pack, old_registry = self.pack, self.registry
        self.pack, self.registry = pack, registry
        _log_reload(old_pack, old_registry, pack, registry)
        self._on_reload("ok")
        return True

    def changed(self) -> bool:
        return _fingerprint(self.pack_dir, self.registry_file) != self._seen

    def start_watching(self, interval_s: float) -> None:
        self._task = asyncio.create_task(self._watch(interval_s), name="policy-watch")

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                self.reload()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
