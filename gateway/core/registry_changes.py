"""What a registry reload changed: tenants added, removed and changed, by id."""

from dataclasses import dataclass

from gateway.core.tenants import Registry


@dataclass(frozen=True, slots=True)
class RegistryChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # any field differs: countries, KYC, identities, licences, caps...

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def registry_changes(old: Registry, new: Registry) -> RegistryChanges:
    """Tenant ids in sorted order, so a log line or a test reads the same for the same change."""
    added = sorted(new.tenants.keys() - old.tenants.keys())
    removed = sorted(old.tenants.keys() - new.tenants.keys())
    changed = sorted(t for t in old.tenants.keys() & new.tenants.keys() if old.tenants[t] != new.tenants[t])
    return RegistryChanges(tuple(added), tuple(removed), tuple(changed))
