"""An update the admission webhook sees: does it change what the object holds, and does it hold more?

The review carries the whole object before and after, so the change is read as the proxy reads a
merge patch of the spec fields that differ (the adapter's rule for which fields hold resources),
and, when resources change, both objects are priced as the proxy prices a PUT. An update that
holds no more on any count (GPUs, held TPP, TPP-hours, training operations) is allowed and its
lease stays as admitted: a reduction is credited only when the object ends, since the API server
may still refuse the update after this review. One that holds more, or resumes a suspended object
(its deadline starts again), is refused: the gateway prices an object when it is created.
"""

from dataclasses import dataclass

from gateway.core.codes import Code
from gateway.core.jobs import Cost, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.policy import Pack
from gateway.core.pricing import price
from gateway.core.routes import Route, RouteMatch, match_route
from gateway.schedulers import SchedulerAdapter
from gateway.schedulers.base import dump_json
from gateway.schedulers.kubernetes_review import Review, resumes, spec_changes, suspend_path

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class UpdateCheck:
    """A resource-changing update: the refusal (code, detail) when it holds more, else its new cost."""

    refusal: tuple[Code, str] | None = None
    cost: Cost | None = None


def check_update(
    adapter: SchedulerAdapter, routes: tuple[Route, ...], pack: Pack, review: Review, match: RouteMatch
) -> UpdateCheck | None:
    """None when the update changes nothing the object holds; else the verdict on what it changes."""
    if review.resource.key == "pods":
        return None  # a pod's containers and their resources are immutable (resizing is a subresource)
    changes = spec_changes(review.old, review.obj)
    if not changes:
        return None  # labels, annotations, finalizers, owners: the spec is as it was
    patch = match_route(routes, "PATCH", review.item_path())
    if patch is not None:
        try:
            if adapter.parse_update(patch, MERGE_PATCH, None, dump_json({"spec": changes})) is None:
                return None  # no field that holds resources (or it suspends the object)
        except JobUpdateNotAllowed:
            pass  # resources change: priced below
        except JobSpecInvalid as exc:
            return UpdateCheck((Code.JOB_SPEC_INVALID, str(exc)))
    kind = str((review.obj or {}).get("kind") or review.resource.resource)
    if resumes(suspend_path(review.resource.key), review.old, review.obj):
        detail = f"the update resumes a suspended {kind}, whose deadline then starts again; create a new one instead"
        return UpdateCheck((Code.JOB_UPDATE_NOT_ALLOWED, detail))
    if pack.gpus is None:
        return UpdateCheck((Code.BACKEND_UNAVAILABLE, f"policy pack {pack.name} has no GPU catalogue"))
    try:
        new = _cost(adapter, pack, match, review.obj)
    except (JobSpecInvalid, JobUpdateNotAllowed) as exc:
        return UpdateCheck((Code.JOB_SPEC_INVALID, str(exc)))
    try:
        old = _cost(adapter, pack, match, review.old)
    except (JobSpecInvalid, JobUpdateNotAllowed):
        old = None  # the object as it was could not be priced (made before the gateway): it held nothing priced
    raised = _raised(old, new)
    if raised is not None:
        detail = (f"the update raises what the {kind} holds ({raised}); the gateway prices an object when it is "
                  f"created: delete the {kind} and create it again")  # fmt: skip
        return UpdateCheck((Code.JOB_UPDATE_NOT_ALLOWED, detail))
    return UpdateCheck(None, new)


def _cost(adapter: SchedulerAdapter, pack: Pack, match: RouteMatch, doc: object) -> Cost | None:
    """The object priced as the proxy prices a PUT of it (None: it holds nothing the adapter prices)."""
    assert pack.gpus is not None
    if not isinstance(doc, dict):
        raise JobSpecInvalid("object", "missing")
    spec = adapter.parse_update(match, JSON, None, dump_json(doc))
    return None if spec is None else price(spec, pack.gpus, adapter.default_gpu_model, pack.gpus.utilisation)


def _more(new: float, old: float) -> bool:
    return new > old * (1 + 1e-9) + 1e-9  # a float sum priced twice must not read as a raise


def _raised(old: Cost | None, new: Cost | None) -> str | None:
    """What the new object holds more of than the old, or None."""
    if new is None:
        return None
    before = old or Cost(0.0, 0.0, 0.0, new.walltime_s, 0)
    for name, a, b in (
        ("GPUs", before.gpus, new.gpus),
        ("held TPP", before.held_tpp, new.held_tpp),
        ("TPP-hours", before.tpp_hours, new.tpp_hours),
        ("training operations", before.training_ops, new.training_ops),
    ):
        if _more(float(b), float(a)):
            return f"{name} {a:g} -> {b:g}"
    return None
