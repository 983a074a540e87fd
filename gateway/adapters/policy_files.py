"""The live policy pack and tenant registry, reloaded on change; the last good pair stays."""

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.background import cancel_and_wait
from gateway.config.located import ConfigError, Problem
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.tenants import Registry

log = logging.getLogger(__name__)


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
        self.pack, self.registry = pack, registry
        log.info("reloaded pack %s %s and registry %s", pack.name, pack.version, registry.version)
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
