"""Objects the admission webhook allowed, as reconciliation reads them back.

Their leases are owned under `<upstream>#admission` by `<ns>/<resource>/<name>/<uid>` (see
schedulers/kubernetes_review.py), never under the ids the proxy owns objects by: an object the
webhook admitted may not exist (a later webhook or the API server's validation refused it, a
create lost a name race, the request timed out), and a create of a name the proxy or the webhook
already holds must not take that lease's ownership away.

Reconciliation reads each at its own path. An object of that uid holds its lease while it lives
(a Job until Complete or Failed, a Pod until Succeeded or Failed, custom resources as the proxy's);
NotFound, or another object under the name, is an object that was never stored or is gone: its
lease is released once that has been seen for `unpersisted_grace_s` (the API server persists an
object within its request timeout of the review, so a read racing the store does not release it).
The first sighting is kept in memory: a restart starts the grace again (held longer, never shorter).
"""

from gateway.schedulers.base import JobView
from gateway.schedulers.kubernetes_review import read_path, seen

OWNED_SUFFIX = "#admission"


def owned_upstream(upstream: str) -> str:
    """The ownership scope of the objects the webhook admitted for `upstream`."""
    return upstream + OWNED_SUFFIX


class AdmittedObjects:
    """Paths and readings of webhook-admitted objects, and how long each has been missing."""

    def __init__(self, upstream: str, grace_s: float) -> None:
        self.upstream = upstream  # the Kubernetes upstream the objects are read from
        self.owned = owned_upstream(upstream)  # where their leases are owned
        self.grace_s = grace_s
        self._missing: dict[str, float] = {}  # job id -> when a read first found no object of its uid

    def path(self, job_id: str) -> str | None:
        found = read_path(job_id)
        return found[0] if found is not None else None

    def view(self, job_id: str, status: int, body: bytes, now: float) -> tuple[JobView, bool]:
        """What reconciliation acts on, and True when it ends the lease because the object is not there."""
        found = read_path(job_id)
        if found is None:
            return JobView(None), False
        reading = seen(job_id.split("/")[1], found[1], status, body)
        if not reading.absent:
            self._missing.pop(job_id, None)
            return JobView(reading.over), False
        first = self._missing.setdefault(job_id, now)
        if now - first >= self.grace_s:
            return JobView(True), True
        return JobView(None), False

    def forget(self, owned: set[tuple[str, str]]) -> None:
        """Drop what is remembered of objects no longer owned."""
        self._missing = {job: at for job, at in self._missing.items() if (self.owned, job) in owned}
