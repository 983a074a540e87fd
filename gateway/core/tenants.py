"""Tenant records and the registry that maps (issuer, subject) identities to them."""

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum


class KycStatus(StrEnum):
    VERIFIED = "verified"
    PENDING = "pending"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Veu(StrEnum):
    NONE = "none"
    NATIONAL = "national"
    UNIVERSAL = "universal"


@dataclass(frozen=True, slots=True)
class Kyc:
    """The outcome of the provider's customer identification program for one tenant."""

    status: KycStatus
    verified_at: date | None = None
    expires_at: date | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """One authenticated principal: the token's issuer and its subject claim."""

    issuer: str
    subject: str


class LicenceScope(StrEnum):
    TENANT_CAP = "tenant_cap"
    COUNTRY_CAP = "country_cap"
    TRAINING_THRESHOLD = "training_threshold"
    # Reading and holding a controlled lineage's weights, and running jobs that declare its model over the
    # parameter threshold (needs `lineage`).
    WEIGHTS = "weights"


@dataclass(frozen=True, slots=True)
class Licence:
    """A BIS licence held by the tenant: what it lifts, how much, until when."""

    id: str
    lifts: frozenset[LicenceScope]
    tpp: float | None = None
    lineage: str | None = None
    training_ops: float | None = None
    expires: date | None = None


@dataclass(frozen=True, slots=True)
class AccessKey:
    """A tenant's S3 access key: the id clients sign with, and its secret (read from a file, never the registry)."""

    id: str
    secret: str = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ObjectStoreAccess:
    """What a tenant may reach of an object store behind the gateway: bucket name patterns, and its access keys."""

    buckets: tuple[str, ...] = ()
    access_keys: tuple[AccessKey, ...] = ()

    def may_use(self, bucket: str) -> bool:
        return any(fnmatch.fnmatchcase(bucket, pattern) for pattern in self.buckets)


class BudgetPeriod(StrEnum):
    MONTH = "month"
    YEAR = "year"


@dataclass(frozen=True, slots=True)
class Budget:
    """An optional period budget: TPP-hours per calendar month or year."""

    period: BudgetPeriod
    tpp_hours: float


@dataclass(frozen=True, slots=True)
class Tenant:
    """A registered customer: countries, KYC, VEU status, licences; never names or addresses."""

    id: str
    display_name: str
    identities: tuple[Identity, ...]
    location: str | None
    headquarters: str | None
    parent_headquarters: str | None
    kyc: Kyc
    parent_entity: str | None = None
    veu: Veu = Veu.NONE
    licences: tuple[Licence, ...] = ()
    tpp_cap: float | None = None
    budget: Budget | None = None
    upstream_identity: Mapping[str, str] = field(default_factory=dict)
    declared_training_ops: Mapping[str, float] = field(default_factory=dict)
    object_store: ObjectStoreAccess | None = None

    def countries(self) -> dict[str, str | None]:
        """The three countries that decide the tenant's tier, by role."""
        return {
            "location": self.location,
            "headquarters": self.headquarters,
            "parent": self.parent_headquarters,
        }


@dataclass(frozen=True, slots=True)
class Registry:
    """All tenants, indexed by id and by identity."""

    tenants: Mapping[str, Tenant]
    by_identity: Mapping[Identity, str]
    version: str = ""
    by_access_key: Mapping[str, str] = field(default_factory=dict)  # S3 access key id -> tenant id

    def access_key(self, key_id: str) -> tuple[Tenant, AccessKey] | None:
        """The tenant an S3 access key id belongs to, and the key, if any."""
        tenant = self.tenants.get(self.by_access_key.get(key_id, ""))
        if tenant is None or tenant.object_store is None:
            return None
        key = next((k for k in tenant.object_store.access_keys if k.id == key_id), None)
        return (tenant, key) if key is not None else None

    def lookup(self, identity: Identity) -> Tenant | None:
        """The tenant an authenticated identity maps to, if any."""
        tenant_id = self.by_identity.get(identity)
        return None if tenant_id is None else self.tenants.get(tenant_id)


def build_registry(tenants: list[Tenant], version: str = "") -> Registry:
    """Index tenants; identities must be unique (the loader reports duplicates first)."""
    by_identity: dict[Identity, str] = {}
    by_key: dict[str, str] = {}
    for tenant in tenants:
        for identity in tenant.identities:
            by_identity[identity] = tenant.id
        for key in tenant.object_store.access_keys if tenant.object_store else ():
            by_key[key.id] = tenant.id
    return Registry({t.id: t for t in tenants}, by_identity, version, by_key)
