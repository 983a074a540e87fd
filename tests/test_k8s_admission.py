"""The Kubernetes admission webhook end to end: AdmissionReviews over HTTPS on loopback to a running gateway.

The API server's side is played by the test (it posts the fixtures' reviews, and stores or deletes the
objects in the stand-in API server as the real one would after the webhook answered); the gateway's
side is all real: TLS from a cert-manager-style pair, the registry, the adapter's pricing, the quota
store, the ledger and reconciliation reading the stand-in back.
"""

import copy
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.core.leases import QUOTA_SLOT
from gateway.core.rebuild import rebuild_state
from tests.harness import Clock, Stack, call, ledger_records, wait_for_record
from tests.webhook_kit import (
    GATEWAY_USER,
    H100,
    JOB_CONTROLLER,
    KUBERAY,
    OWNED,
    admitted_id,
    ask,
    fixture,
    object_of,
    review,
    webhook_stack,
)

JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with webhook_stack(tmp_path) as s:
        yield s


async def held(stack: Stack, key: str) -> float:
    return await stack.server.store.counter_value(QUOTA_SLOT, key, stack.server.clock())


def record_of(stack: Stack, decision_id: str, kind: str = "decision") -> dict[str, Any]:
    found = [r for r in ledger_records(stack) if r.get("decision_id") == decision_id and r.get("kind") == kind]
    assert len(found) == 1, found
    return found[0]


def refusal(response: dict[str, Any]) -> tuple[int, str, str]:
    """(status code, exportgate code, reason) of a refused review, checking the Status's shape on the way."""
    assert response["allowed"] is False
    status = response["status"]
    assert status["status"] == "Failure" and status["kind"] == "Status"
    code = status["details"]["causes"][0]["reason"]
    assert status["message"].startswith(f"exportgate {code}: ")
    assert response["auditAnnotations"]["code"] == code
    return status["code"], code, status["reason"]


async def test_a_tier1_gpu_job_is_allowed_and_its_quota_held(stack: Stack) -> None:
    """kubectl create of a 2 x H100 Job: allowed, 2 H100 held under the object's uid, recorded as k8s_admission."""
    doc = review()
    response = await ask(stack, doc)
    assert response["allowed"] is True and "status" not in response
    decision_id = response["auditAnnotations"]["decision-id"]
    assert await held(stack, "tenant:us-one") == 2 * H100
    job_id = admitted_id(doc)
    store = stack.server.store
    assert await store.held_amounts(OWNED, job_id) == {"tenant:us-one": 2 * H100}
    owner = await store.owner_of(OWNED, job_id)
    assert owner is not None and owner.tenant_id == "us-one" and owner.lease.lease_id == decision_id
    record = record_of(stack, decision_id)
    assert (record["entry"], record["route"], record["route_kind"], record["method"], record["decision"]) == (
        "k8s_admission", "k8s.jobs.create", "submit", "POST", "allow"
    )  # fmt: skip
    assert record["path"] == JOBS.format(ns="us-one") and record["issuer"] == "kubernetes"
    assert record["cost"]["tpp"] == 2 * H100 and record["job"]["lineage"] == "llama-x" and record["lease"]
    settle = await wait_for_record(stack, "settle", decision_id=decision_id)
    assert (settle["upstream"], settle["job_id"], settle["settled"]) == (OWNED, job_id, True)
    assert stack.standin.requests == []  # a user's create needs nothing from the API server

    again = await ask(stack, doc)  # the API server retries a call whose answer it lost: the same answer
    assert again == response
    assert await held(stack, "tenant:us-one") == 2 * H100


async def test_a_tier3_tenant_is_refused_451_in_the_status(stack: Stack) -> None:
    """A Job in the namespace of a tenant with a Chinese parent: refused 451, the code in the message, nothing held."""
    doc = review(namespace="fjord-se-cn", user="alice@fjord-se-cn.example")
    response = await ask(stack, doc)
    assert refusal(response) == (451, "tier3_embargoed", "Forbidden")
    assert "Tier 3" in response["status"]["message"]
    record = record_of(stack, response["auditAnnotations"]["decision-id"])
    assert (record["decision"], record["code"], record["entry"], record["tenant"]) == (
        "deny", "tier3_embargoed", "k8s_admission", "fjord-se-cn"
    )  # fmt: skip
    assert await held(stack, "tenant:fjord-se-cn") == 0.0


async def test_over_the_tenant_cap_is_refused_429(stack: Stack) -> None:
    """capped-ae holds at most 2 H100: 3 are refused; 2 fit; one more is refused with when to retry."""
    capped: dict[str, Any] = {"namespace": "capped-ae", "user": "system:serviceaccount:capped-ae:trainer"}
    response = await ask(stack, review(gpus=3, parallelism=1, **capped))
    assert refusal(response) == (429, "quota_tenant_tpp", "TooManyRequests")
    assert await held(stack, "tenant:capped-ae") == 0.0
    assert (await ask(stack, review(job="fits", **capped)))["allowed"] is True
    assert await held(stack, "tenant:capped-ae") == 2 * H100
    response = await ask(stack, review(job="more", gpus=1, parallelism=1, **capped))
    assert refusal(response)[:2] == (429, "quota_tenant_tpp")
    assert 3600 <= response["status"]["details"]["retryAfterSeconds"] <= 2 * 3600  # when the held lease ends
    assert await held(stack, "tenant:capped-ae") == 2 * H100


async def test_a_dry_run_is_decided_and_holds_nothing(stack: Stack) -> None:
    """`kubectl create --dry-run=server`: priced and answered as a create would be, nothing held or owned."""
    doc = fixture("dry-run-job.json")
    response = await ask(stack, doc)
    assert response["allowed"] is True
    assert await held(stack, "tenant:us-one") == 0.0
    assert await stack.server.store.owner_of(OWNED, admitted_id(doc)) is None
    decision_id = response["auditAnnotations"]["decision-id"]
    record = record_of(stack, decision_id, "dry_run")
    assert (record["entry"], record["decision"], record["lease"], record["cost"]["tpp"]) == (
        "k8s_admission", "allow", None, 2 * H100
    )  # fmt: skip
    assert not [r for r in ledger_records(stack) if r.get("decision_id") == decision_id and r["kind"] != "dry_run"]

    capped: dict[str, Any] = {"namespace": "capped-ae", "user": "alice@capped-ae.example", "dry_run": True}
    assert refusal(await ask(stack, review(gpus=3, parallelism=1, **capped)))[:2] == (429, "quota_tenant_tpp")
    assert (await ask(stack, review(**capped)))["allowed"] is True  # 2 H100 fit: still nothing held
    assert await held(stack, "tenant:capped-ae") == 0.0
    await ask(stack, review(namespace="capped-ae", user="alice@capped-ae.example"))  # now they are held
    assert refusal(await ask(stack, review(job="b", gpus=1, parallelism=1, **capped)))[:2] == (429, "quota_tenant_tpp")
    assert await held(stack, "tenant:capped-ae") == 2 * H100


@pytest.mark.parametrize(
    ("case", "changes", "expected"),
    [
        ("unknown-user", {"user": "mallory@example.org"}, (403, "tenant_unknown", "Forbidden")),
        ("another-namespace", {"namespace": "capped-ae"}, (404, "route_not_allowed", "NotFound")),
        ("kyc-pending", {"namespace": "pending-br", "user": "alice@pending-br.example"},
         (403, "kyc_not_verified", "Forbidden")),
        ("no-deadline", {"no_deadline": True}, (400, "job_spec_invalid", "BadRequest")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
async def test_refusals_before_pricing(
    stack: Stack, case: str, changes: dict[str, Any], expected: tuple[int, str, str]
) -> None:
    """A user no registry identity names, a namespace not the tenant's, KYC pending, a Job without a deadline."""
    response = await ask(stack, review(**changes))
    assert refusal(response) == expected
    assert await held(stack, "tenant:us-one") == 0.0


async def test_a_create_never_stored_is_released_after_the_grace(tmp_path: Path) -> None:
    """Allowed, then refused further down the API server's chain: nothing is ever stored, and reconciliation
    releases the lease once the object has been missing for unpersisted_grace_s (never on the first miss)."""
    clock = Clock()
    async with webhook_stack(tmp_path, clock=clock) as stack:
        doc = review()
        assert (await ask(stack, doc))["allowed"] is True
        reconciler = stack.server.reconciler
        assert await reconciler.run_once() == {"unknown": 1}  # NotFound: perhaps not stored yet
        clock.advance(119)
        assert await reconciler.run_once() == {"unknown": 1}
        assert await held(stack, "tenant:us-one") == 2 * H100
        clock.advance(1)
        assert await reconciler.run_once() == {"released": 1}
        assert await held(stack, "tenant:us-one") == 0.0
        released = await wait_for_record(stack, "release", job_id=admitted_id(doc))
        assert (released["upstream"], released["reason"], released["released"]) == (OWNED, "not_found", True)
        assert [r["path"] for r in stack.standin.requests] == [
            "/apis/batch/v1/namespaces/us-one/jobs/train-7b" for _ in range(3)
        ]  # fmt: skip


async def test_deletion_and_completion_release_and_a_same_name_create_takes_nothing(tmp_path: Path) -> None:
    """A stored Job is held while it exists; a second create of its name (AlreadyExists at the API server) holds
    nothing of the first's; deleting the first releases it after the grace; a Complete Job is released at once."""
    clock = Clock()
    async with webhook_stack(tmp_path, clock=clock) as stack:
        first, clash = review(), review()
        assert (await ask(stack, first))["allowed"] is True
        stack.standin.jobs["us-one/train-7b"] = object_of(first)  # the API server stored it
        assert (await ask(stack, clash))["allowed"] is True  # the API server then refuses it: AlreadyExists
        assert await held(stack, "tenant:us-one") == 4 * H100
        reconciler = stack.server.reconciler
        assert await reconciler.run_once() == {"running": 1, "unknown": 1}
        clock.advance(120)
        assert await reconciler.run_once() == {"running": 1, "released": 1}  # the clash, not the stored Job
        assert await stack.server.store.held_amounts(OWNED, admitted_id(first)) == {"tenant:us-one": 2 * H100}

        deleted = await ask(stack, review("delete-job.json"))  # kubectl delete: allowed, nothing released yet
        assert deleted["allowed"] is True and "auditAnnotations" not in deleted
        assert await held(stack, "tenant:us-one") == 2 * H100
        del stack.standin.jobs["us-one/train-7b"]
        assert await reconciler.run_once() == {"unknown": 1}
        clock.advance(120)
        assert await reconciler.run_once() == {"released": 1}
        assert await held(stack, "tenant:us-one") == 0.0

        done = review(job="done")
        assert (await ask(stack, done))["allowed"] is True
        stored = object_of(done)
        stored["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        stack.standin.jobs["us-one/done"] = stored
        assert await reconciler.run_once() == {"released": 1}
        released = await wait_for_record(stack, "release", job_id=admitted_id(done))
        assert released["reason"] == "reconciled"
        assert await held(stack, "tenant:us-one") == 0.0


async def test_updates_may_not_raise_what_an_object_holds(stack: Stack) -> None:
    """kubectl edit to parallelism 4 is refused; down to 1 is allowed (its lease unchanged); labels pass unrecorded;
    resuming a suspended Job is refused."""
    assert (await ask(stack, review()))["allowed"] is True
    response = await ask(stack, review("update-job.json"))
    assert refusal(response) == (403, "job_update_not_allowed", "Forbidden")
    assert "GPUs 2 -> 4" in response["status"]["message"]
    lower = await ask(stack, review("update-job.json", parallelism=1))
    assert lower["allowed"] is True
    record = record_of(stack, lower["auditAnnotations"]["decision-id"])
    assert (record["route"], record["route_kind"], record["method"], record["job"], record["lease"]) == (
        "k8s.job.replace", "update", "PUT", None, None
    )  # fmt: skip
    assert await held(stack, "tenant:us-one") == 2 * H100
    relabel = review("update-job.json", parallelism=2)
    relabel["request"]["object"]["metadata"]["labels"]["team"] = "vision"
    seen = len(ledger_records(stack))
    assert (await ask(stack, relabel)) == {"uid": relabel["request"]["uid"], "allowed": True}
    assert len(ledger_records(stack)) == seen
    resume = review("update-job.json", parallelism=2)
    resume["request"]["oldObject"]["spec"]["suspend"] = True
    assert refusal(await ask(stack, resume))[1] == "job_update_not_allowed"


async def test_pods_of_a_leased_job_are_covered_and_others_are_priced(stack: Stack) -> None:
    """The Job controller's pods of an admitted Job cost nothing more; its GPU pod of a Job never admitted is priced
    for the namespace's tenant (a pod without a deadline: refused); a CPU pod passes."""
    job = review()
    assert (await ask(stack, job))["allowed"] is True
    pod = review("create-pod-by-job-controller.json")
    pod["request"]["object"]["metadata"]["ownerReferences"][0]["uid"] = object_of(job)["metadata"]["uid"]
    response = await ask(stack, pod)
    assert response["allowed"] is True
    access = await wait_for_record(stack, "access", decision_id=response["auditAnnotations"]["decision-id"])
    assert (access["job"], access["basis"], access["tenant"]) == ({"covered_by": admitted_id(job)},
                                                                  "covered_by_owner", "us-one")  # fmt: skip
    assert await held(stack, "tenant:us-one") == 2 * H100

    orphan = review("create-pod-by-job-controller.json")  # its owner's uid was never admitted
    assert refusal(await ask(stack, orphan))[:2] == (400, "job_spec_invalid")
    cpu = review("create-pod-by-job-controller.json", gpus=0)
    assert (await ask(stack, cpu))["allowed"] is True
    stranger = review("create-pod-by-job-controller.json", user="system:serviceaccount:kube-system:other")
    assert refusal(await ask(stack, stranger))[:2] == (403, "tenant_unknown")  # not a listed controller
    assert await held(stack, "tenant:us-one") == 2 * H100


async def test_a_bare_pod_is_priced_and_held_until_it_ends(tmp_path: Path) -> None:
    """A user's own GPU pod with a deadline is priced as the proxy prices a Pod, held while it runs, released once
    the API server reports it Succeeded."""
    clock = Clock()
    async with webhook_stack(tmp_path, clock=clock) as stack:
        doc = review("create-pod-by-job-controller.json", user="alice@us-one.example")
        obj = doc["request"]["object"]
        del obj["metadata"]["ownerReferences"]
        obj["spec"]["activeDeadlineSeconds"] = 600
        response = await ask(stack, doc)
        assert response["allowed"] is True
        assert record_of(stack, response["auditAnnotations"]["decision-id"])["route"] == "k8s.pods.create"
        assert await held(stack, "tenant:us-one") == H100
        stored = object_of(doc)
        stored["status"] = {"phase": "Running"}
        stack.standin.jobs["pods/us-one/train-7b-x7k2q"] = stored
        reconciler = stack.server.reconciler
        assert await reconciler.run_once() == {"running": 1}
        assert stack.standin.requests[-1]["path"] == "/api/v1/namespaces/us-one/pods/train-7b-x7k2q"
        stored["status"] = {"phase": "Succeeded"}
        assert await reconciler.run_once() == {"released": 1}
        assert await held(stack, "tenant:us-one") == 0.0


async def test_what_the_proxy_sends_is_not_priced_twice(stack: Stack) -> None:
    """A Job POSTed through the proxy reaches the API server as the gateway's own user: its review is allowed
    unpriced (the proxy holds its lease), and so is the proxy's update of it."""
    status, _, _ = await call(stack, "POST", JOBS.format(ns="us-one"), "us-one", payload=_proxy_job(review()))
    assert status == 201 and await held(stack, "tenant:us-one") == 2 * H100
    response = await ask(stack, review(user=GATEWAY_USER))
    assert response["allowed"] is True
    access = await wait_for_record(stack, "access", decision_id=response["auditAnnotations"]["decision-id"])
    assert (access["basis"], access["entry"], access["route"]) == ("through_proxy", "k8s_admission", "k8s.jobs.create")
    assert (await ask(stack, review("update-job.json", user=GATEWAY_USER)))["allowed"] is True
    assert await held(stack, "tenant:us-one") == 2 * H100


def _crd_review(obj: dict[str, Any], plural: str, user: str) -> dict[str, Any]:
    """A create review of a KubeRay object in us-one (the create-job fixture's envelope)."""
    doc = review()
    group, version = obj["apiVersion"].split("/")
    request = doc["request"]
    for key in ("kind", "requestKind"):
        request[key] = {"group": group, "version": version, "kind": obj["kind"]}
    for key in ("resource", "requestResource"):
        request[key] = {"group": group, "version": version, "resource": plural}
    obj["metadata"].update(namespace="us-one", uid=str(uuid.uuid4()))
    request.update(object=obj, name=obj["metadata"]["name"])
    request["userInfo"]["username"] = user
    return doc


def _pod_template(gpus: int) -> dict[str, Any]:
    container = {"name": "ray", "image": "rayproject/ray:2.9", "resources": {"limits": {"nvidia.com/gpu": gpus}}}
    return {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "containers": [container]}}


async def test_kuberay_children_are_covered_through_their_owners(stack: Stack) -> None:
    """A RayJob is priced whole (head + 2 workers); KubeRay's RayCluster for it, and that cluster's pods (read back
    through the cluster's own owner), cost nothing more."""
    rayjob = _crd_review({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "train"}, "spec": {
        "entrypoint": "python train.py", "shutdownAfterJobFinishes": True, "activeDeadlineSeconds": 3600,
        "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": _pod_template(1)}, "workerGroupSpecs": [
            {"groupName": "gpu", "replicas": 2, "maxReplicas": 2, "template": _pod_template(1)}]}}},
        "rayjobs", "alice@us-one.example")  # fmt: skip
    assert (await ask(stack, rayjob))["allowed"] is True
    assert await held(stack, "tenant:us-one") == 3 * H100
    job_uid = rayjob["request"]["object"]["metadata"]["uid"]
    owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "train", "uid": job_uid, "controller": True}
    cluster_obj = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": "train-raycluster-x2k9f", "ownerReferences": [owner]},
                   "spec": copy.deepcopy(rayjob["request"]["object"]["spec"]["rayClusterSpec"])}  # fmt: skip
    cluster = _crd_review(cluster_obj, "rayclusters", KUBERAY)
    assert (await ask(stack, cluster))["allowed"] is True
    stored = object_of(cluster)
    stack.standin.jobs["rayclusters.ray.io/us-one/train-raycluster-x2k9f"] = stored
    pod = review("create-pod-by-job-controller.json", user=KUBERAY)
    pod["request"]["object"]["metadata"]["ownerReferences"] = [{
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "name": "train-raycluster-x2k9f",
        "uid": stored["metadata"]["uid"], "controller": True}]  # fmt: skip
    response = await ask(stack, pod)
    assert response["allowed"] is True
    access = await wait_for_record(stack, "access", decision_id=response["auditAnnotations"]["decision-id"])
    assert access["job"] == {"covered_by": f"us-one/rayjobs.ray.io/train/{job_uid}"}
    assert stack.standin.requests[-1]["path"] == "/apis/ray.io/v1/namespaces/us-one/rayclusters/train-raycluster-x2k9f"
    assert await held(stack, "tenant:us-one") == 3 * H100
    assert JOB_CONTROLLER  # the Job controller is listed too (see webhook_kit)


def _proxy_job(doc: dict[str, Any]) -> dict[str, Any]:
    """The object as kubectl POSTs it: what the review's object was before the API server filled it in."""
    obj = object_of(doc)
    obj.pop("status", None)
    obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k in ("name", "labels")}
    return obj


TABLE = [
    ("tier1-allowed", "us-one", {}),
    ("tier3", "fjord-se-cn", {}),
    ("over-cap", "capped-ae", {"gpus": 3, "parallelism": 1}),
    ("no-deadline", "us-one", {"no_deadline": True}),
    ("kyc-pending", "pending-br", {}),
]


@pytest.mark.parametrize(("case", "tenant", "changes"), TABLE, ids=[t[0] for t in TABLE])
async def test_the_webhook_decides_as_the_proxy_does(stack: Stack, case: str, tenant: str,
                                                     changes: dict[str, Any]) -> None:  # fmt: skip
    """The same Job POSTed through the proxy and reviewed by the webhook: the same outcome, code and priced TPP."""
    doc = review(namespace=tenant, user=f"alice@{tenant}.example", job=f"{case}-job", **changes)
    status, _, headers = await call(stack, "POST", JOBS.format(ns=tenant), tenant, payload=_proxy_job(doc))
    proxied = record_of(stack, headers["X-Exportgate-Decision-Id"])
    response = await ask(stack, doc)
    reviewed = record_of(stack, response["auditAnnotations"]["decision-id"])
    assert (proxied["entry"], reviewed["entry"]) == ("proxy", "k8s_admission")
    for field in ("decision", "code", "tier", "tenant", "route_kind", "basis"):
        assert proxied[field] == reviewed[field], field
    assert (proxied["cost"] or {}).get("tpp") == (reviewed["cost"] or {}).get("tpp")
    assert response["allowed"] == (proxied["decision"] != "deny") == (status == 201)
    if not response["allowed"]:
        assert response["status"]["code"] == status


async def test_what_the_adapter_does_not_price_is_allowed_unrecorded(stack: Stack) -> None:
    """A ConfigMap (the configuration selects none, but a broader one might), a Job's status and a delete: allowed,
    nothing recorded or held, whoever asks."""
    config_map = review(user="mallory@example.org")
    request = config_map["request"]
    request["kind"] = request["requestKind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    request["resource"] = request["requestResource"] = {"group": "", "version": "v1", "resource": "configmaps"}
    request["object"] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    status = review("update-job.json", user="system:serviceaccount:kube-system:job-controller")
    status["request"]["subResource"] = "status"
    for doc in (config_map, status, review("delete-job.json", user="mallory@example.org")):
        assert await ask(stack, doc) == {"uid": doc["request"]["uid"], "allowed": True}
    assert not [r for r in ledger_records(stack) if r.get("entry") == "k8s_admission"]
    assert await held(stack, "tenant:us-one") == 0.0


async def test_the_listener_serves_tls_only(stack: Stack) -> None:
    """The API server calls webhooks over HTTPS: plain HTTP on the port gets no answer, an unknown CA no handshake."""
    hook = stack.settings.admission_webhook
    assert hook is not None
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientError):
            async with client.post(f"http://127.0.0.1:{hook.port}{hook.path}", json=review()) as response:
                await response.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with client.post(f"https://127.0.0.1:{hook.port}{hook.path}", json=review()) as response:
                await response.read()


async def test_malformed_reviews_are_refused(stack: Stack) -> None:
    """Not a v1 AdmissionReview: 400 problem+json (no uid to answer), or a refused review when its uid is known."""
    doc = review()
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    hook = stack.settings.admission_webhook
    assert hook is not None
    context = ssl.create_default_context(cafile=stack.workdir / "ca.crt")
    async with aiohttp.ClientSession() as client, client.post(
        f"https://127.0.0.1:{hook.port}{hook.path}", json=doc, ssl=context) as response:  # fmt: skip
        assert response.status == 400 and response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "request_malformed"
    doc = review()
    doc["request"]["userInfo"] = "alice"
    assert refusal(await ask(stack, doc))[:2] == (400, "request_malformed")


async def test_the_ledger_rebuilds_the_webhooks_leases(stack: Stack) -> None:
    """A memory store rebuilt from the ledger holds the admitted object's lease and owns it by its uid; a dry run
    and a refusal hold nothing."""
    doc = review()
    decision_id = (await ask(stack, doc))["auditAnnotations"]["decision-id"]
    await ask(stack, fixture("dry-run-job.json"))
    await ask(stack, review(namespace="fjord-se-cn", user="alice@fjord-se-cn.example"))
    await wait_for_record(stack, "settle", decision_id=decision_id)
    state = rebuild_state(ledger_records(stack), stack.server.clock(), idempotency_window_s=86400,
                          ownership_ttl_s=30 * 86400)  # fmt: skip
    assert [(o.upstream, o.job_id, o.owner.lease.lease_id) for o in state.owners] == [
        (OWNED, admitted_id(doc), decision_id)
    ]  # fmt: skip
    assert [lease.lease_id for lease in state.leases if not lease.released] == [decision_id]
