"""Model weights end to end: a real S3 server (moto) behind the gateway, real clients (boto3, the aws CLI).

Tenants reach the store with their bearer token or SigV4 with their own access key; the gateway
decides on the lineage an object holds and re-signs to the store with its own credentials.
"""

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from gateway.config.pack import load_pack
from gateway.core.replay import replay
from tests.harness import SUBMIT, Stack, call, ledger_records, running_stack, slurm_job, wait_for_record, wait_until
from tests.s3_kit import (
    KeyPair,
    MotoServer,
    aws_cli,
    bearer_client,
    in_thread,
    moto_fixture,
    registry,
    s3_options,
    sigv4_client,
    store_tenant,
    weights_pack,
)

WEIGHTS = """
models:
  - lineage: frontier
    objects: ["models/frontier/*"]
    declared_ops: {ops: 2.0e+26, as_of: 2025-01-01, note: trained on another cloud}
  - lineage: open-big
    objects: ["models/open-big/*"]
    declared_ops: {ops: 3.0e+26}
    published: {since: 2025-01-01}
storage:
  - {bucket: secure-weights, since: 2025-11-01, facility: "fra-2 vault (Supp. 10 to part 748 paras 14, 15, 18)"}
"""
BUCKETS = ("models", "secure-weights", "scratch")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from moto_fixture()


@pytest.fixture
async def world(tmp_path: Path, moto: MotoServer) -> AsyncIterator[tuple[Stack, dict[str, KeyPair]]]:
    moto.reset()
    operator = moto.client()
    for bucket in BUCKETS:
        operator.create_bucket(Bucket=bucket)
    operator.put_object(Bucket="models", Key="frontier/w.bin", Body=b"frontier weights")
    operator.put_object(Bucket="models", Key="open-big/w.bin", Body=b"open weights")
    operator.put_object(Bucket="models", Key="readme.txt", Body=b"hello")
    acme, acme_key = store_tenant(tmp_path, "acme-us", "US/US/US", "models, secure-weights, scratch")
    falcon, falcon_key = store_tenant(tmp_path, "falcon-ae", "AE/AE/AE", "models, scratch")
    licensed, licensed_key = store_tenant(
        tmp_path, "licensed-ae", "AE/AE/AE", "models",
        "\n    licences: [{id: D-W1, lifts: [weights], lineage: frontier}]",
    )  # fmt: skip
    config: dict[str, Any] = {
        "registry": registry(acme, falcon, licensed),
        "upstream_url": moto.url,
        "scheduler": "s3",
        "headers": "",
        "upstream_extra": s3_options(tmp_path),
        "pack": weights_pack(tmp_path, WEIGHTS),
        "timeout_s": 10.0,
    }
    async with running_stack(tmp_path, **config) as stack:
        yield stack, {"acme-us": acme_key, "falcon-ae": falcon_key, "licensed-ae": licensed_key}


async def fetch(client: Any, bucket: str, key: str) -> bytes:
    """GetObject and its body, both read off the event loop (the gateway streams the body on it)."""
    return await in_thread(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[no-any-return]


def weights_record(stack: Stack, decision_id: str) -> dict[str, Any]:
    return next(r for r in ledger_records(stack) if r.get("decision_id") == decision_id)


# -- bearer clients ----------------------------------------------------------------------------------


async def test_bearer_reads_follow_the_lineage(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """A controlled lineage's weights: Tier 1 reads them, Tier 2 is refused in problem+json, a licence lets it read."""
    stack, _ = world
    status, body, headers = await call(stack, "GET", "/models/frontier/w.bin", "acme-us")
    assert (status, body) == (200, "frontier weights")
    status, body, headers = await call(stack, "GET", "/models/frontier/w.bin", "falcon-ae")
    assert (status, body["code"]) == (403, "weights_controlled")
    assert headers["Content-Type"] == "application/problem+json"
    assert "4E091" in body["citation"] and "Tier 1" in body["detail"]
    record = await wait_for_record(stack, "decision", decision_id=body["decision_id"])
    assert record["weights"]["lineage"]["controlled"] is True
    assert record["weights"]["lineage"]["declared_ops"] == 2e26
    assert record["weights"]["basis"] == "weights_controlled" and record["issuer"] == "https://idp.example.com"
    status, body, _ = await call(stack, "GET", "/models/frontier/w.bin", "licensed-ae")
    assert (status, body) == (200, "frontier weights")
    # Published weights and objects of no lineage are anyone's.
    assert (await call(stack, "GET", "/models/open-big/w.bin", "falcon-ae"))[:2] == (200, "open weights")
    assert (await call(stack, "GET", "/models/readme.txt", "falcon-ae"))[:2] == (200, "hello")
    # HEAD is a read too.
    assert (await call(stack, "HEAD", "/models/frontier/w.bin", "falcon-ae"))[0] == 403


async def test_bearer_writes_need_compliant_storage(world: tuple[Stack, dict[str, KeyPair]], moto: MotoServer) -> None:
    """Controlled weights go only into buckets declared to meet the storage conditions; the gateway writes metadata."""
    stack, _ = world
    lineage = {"x-amz-meta-exportgate-lineage": "frontier", "x-amz-meta-exportgate-params": "4.05e11"}
    status, body, _ = await call(stack, "PUT", "/scratch/frontier/w.bin", "acme-us", data=b"w" * 100, headers=lineage)
    assert (status, body["code"]) == (403, "storage_not_compliant")
    assert "740.27(a)(3)" in body["citation"]
    spoof = {**lineage, "x-amz-meta-exportgate-tenant": "someone-else"}
    status, _, headers = await call(stack, "PUT", "/secure-weights/frontier/w.bin", "acme-us", data=b"w" * 100,
                                    headers=spoof)  # fmt: skip
    assert status == 200
    head = moto.client().head_object(Bucket="secure-weights", Key="frontier/w.bin")
    assert head["Metadata"]["exportgate-lineage"] == "frontier"
    assert head["Metadata"]["exportgate-tenant"] == "acme-us"
    assert head["Metadata"]["exportgate-params"] == "4.05e+11"
    assert head["Metadata"]["exportgate-decision-id"] == headers["X-Exportgate-Decision-Id"]
    record = weights_record(stack, headers["X-Exportgate-Decision-Id"])
    assert record["kind"] == "decision" and record["weights"]["storage_compliant"] is True
    # A Tier 2 tenant may not hold them at all.
    status, body, _ = await call(stack, "PUT", "/scratch/frontier/w.bin", "falcon-ae", data=b"w", headers=lineage)
    assert (status, body["code"]) == (403, "weights_controlled")
    # Anything else goes anywhere the tenant may write.
    assert (await call(stack, "PUT", "/scratch/notes.txt", "falcon-ae", data=b"n"))[0] == 200


async def test_buckets_routes_and_auth(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """Only the tenant's buckets, only the allowed operations; no token is 401."""
    stack, _ = world
    assert (await call(stack, "GET", "/secure-weights/frontier/w.bin", "falcon-ae"))[1]["code"] == "route_not_allowed"
    for method, path in [("GET", "/"), ("PUT", "/newbucket"), ("GET", "/models?acl"), ("POST", "/models?delete"),
                         ("GET", "/models/x?tagging"), ("DELETE", "/models")]:  # fmt: skip
        status, body, _ = await call(stack, method, path, "acme-us")
        assert (status, body["code"]) == (404, "route_not_allowed"), (method, path)
    copy = {"x-amz-copy-source": "/models/frontier/w.bin"}
    status, body, _ = await call(stack, "PUT", "/scratch/stolen.bin", "falcon-ae", headers=copy)
    assert (status, body["code"]) == (404, "route_not_allowed")
    status, body, _ = await call(stack, "GET", "/models/frontier/w.bin")
    assert (status, body["code"]) == (401, "auth_missing")


# -- SigV4 clients: boto3 ------------------------------------------------------------------------------


async def test_boto3_sigv4_reads_writes_and_multipart(world: tuple[Stack, dict[str, KeyPair]], moto: MotoServer,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """boto3 with the tenant's access key: reads, single and multipart uploads, deletes; refusals in S3's dialect."""
    stack, keys = world
    acme = sigv4_client(stack.url, keys["acme-us"])
    falcon = sigv4_client(stack.url, keys["falcon-ae"])
    assert await fetch(acme, "models", "frontier/w.bin") == b"frontier weights"
    with pytest.raises(ClientError) as refused:
        await in_thread(falcon.get_object, Bucket="models", Key="frontier/w.bin")
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert error["Message"].startswith("exportgate weights_controlled: ") and "4E091" in error["Message"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    await in_thread(acme.put_object, Bucket="secure-weights", Key="frontier/b.bin", Body=b"b" * 1000,
                    Metadata={"exportgate-lineage": "frontier"})  # fmt: skip
    assert moto.client().get_object(Bucket="secure-weights", Key="frontier/b.bin")["Body"].read() == b"b" * 1000
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB: three 5 MiB parts
    transfer = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    await in_thread(acme.upload_file, str(big), "secure-weights", "frontier/big.bin", Config=transfer,
                    ExtraArgs={"Metadata": {"exportgate-lineage": "frontier"}})  # fmt: skip
    stored = moto.client().head_object(Bucket="secure-weights", Key="frontier/big.bin")
    assert stored["ContentLength"] == big.stat().st_size and stored["Metadata"]["exportgate-tenant"] == "acme-us"
    assert "-" in stored["ETag"]  # a multipart upload's ETag
    # A multipart upload of controlled weights into a bucket without the storage conditions is refused at create.
    with pytest.raises(S3UploadFailedError) as failed:
        await in_thread(acme.upload_file, str(big), "scratch", "frontier/big.bin", Config=transfer,
                        ExtraArgs={"Metadata": {"exportgate-lineage": "frontier"}})  # fmt: skip
    assert "CreateMultipartUpload operation: exportgate storage_not_compliant" in str(failed.value)
    await in_thread(acme.delete_object, Bucket="secure-weights", Key="frontier/b.bin")
    assert "Contents" not in moto.client().list_objects_v2(Bucket="secure-weights", Prefix="frontier/b.bin")
    sigv4 = [r for r in ledger_records(stack) if r.get("issuer") == "sigv4"]
    assert {r["tenant"] for r in sigv4} == {"acme-us", "falcon-ae"}
    assert {r["weights"]["s3_op"] for r in sigv4} >= {"get_object", "put_object", "create_multipart_upload",
                                                       "upload_part", "complete_multipart_upload", "delete_object"}


async def test_sigv4_signatures_are_checked(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """A wrong secret, an unknown key or another region is refused before anything reaches the store."""
    stack, keys = world
    wrong = sigv4_client(stack.url, KeyPair(keys["acme-us"].key_id, "not-the-secret-0123456789"))
    with pytest.raises(ClientError) as refused:
        await in_thread(wrong.get_object, Bucket="models", Key="readme.txt")
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    unknown = sigv4_client(stack.url, KeyPair("EGNOBODY00001", "whatever-secret-0123456789"))
    with pytest.raises(ClientError) as refused:
        await in_thread(unknown.get_object, Bucket="models", Key="readme.txt")
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    import boto3

    elsewhere = boto3.client("s3", endpoint_url=stack.url, aws_access_key_id=keys["acme-us"].key_id,
                             aws_secret_access_key=keys["acme-us"].secret, region_name="eu-west-1")  # fmt: skip
    with pytest.raises(ClientError) as refused:
        await in_thread(elsewhere.get_object, Bucket="models", Key="readme.txt")
    assert refused.value.response["Error"]["Code"] == "AuthorizationHeaderMalformed"
    # A tampered body: the store checks it against the signed payload hash the gateway passes on.
    acme = sigv4_client(stack.url, keys["acme-us"])
    assert await fetch(acme, "models", "readme.txt") == b"hello"


async def test_bearer_boto3_client(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """boto3 can carry a bearer token instead of signing; refusals are then problem+json (botocore reads the status)."""
    stack, _ = world
    acme = bearer_client(stack.url, lambda: stack.idp.token("acme-us"))
    assert await fetch(acme, "models", "frontier/w.bin") == b"frontier weights"
    falcon = bearer_client(stack.url, lambda: stack.idp.token("falcon-ae"))
    with pytest.raises(ClientError) as refused:
        await in_thread(falcon.get_object, Bucket="models", Key="frontier/w.bin")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# -- listings -------------------------------------------------------------------------------------------


async def test_listings_hide_what_the_tenant_may_not_read(world: tuple[Stack, dict[str, KeyPair]],
                                                          moto: MotoServer) -> None:  # fmt: skip
    """ListObjectsV2 and ListObjects leave out controlled objects, by catalogue pattern or by the gateway's metadata."""
    stack, keys = world
    # An object whose lineage only its metadata names (written through the gateway by a Tier 1 tenant).
    acme = sigv4_client(stack.url, keys["acme-us"])
    moto.client().put_object(Bucket="models", Key="misc/ft.bin", Body=b"f",
                             Metadata={"exportgate-lineage": "frontier"})  # fmt: skip
    falcon = sigv4_client(stack.url, keys["falcon-ae"])
    seen = await in_thread(falcon.list_objects_v2, Bucket="models")
    assert sorted(o["Key"] for o in seen["Contents"]) == ["open-big/w.bin", "readme.txt"]
    assert seen["KeyCount"] == 2
    seen = await in_thread(falcon.list_objects, Bucket="models", Prefix="")
    assert sorted(o["Key"] for o in seen["Contents"]) == ["open-big/w.bin", "readme.txt"]
    everything = await in_thread(acme.list_objects_v2, Bucket="models")
    assert sorted(o["Key"] for o in everything["Contents"]) == ["frontier/w.bin", "misc/ft.bin", "open-big/w.bin",
                                                                 "readme.txt"]  # fmt: skip
    records = [r for r in ledger_records(stack) if r.get("weights", {}).get("op") == "list"]
    falcon_lists = [r for r in records if r["tenant"] == "falcon-ae"]
    assert falcon_lists[0]["weights"]["hidden"] == 2
    assert falcon_lists[0]["weights"]["lineages"]["frontier"]["code"] == "weights_controlled"
    # Bearer listings too, with keys URL-encoded or not.
    status, body, _ = await call(stack, "GET", "/models?list-type=2&encoding-type=url", "falcon-ae")
    assert status == 200 and "frontier" not in body and "readme.txt" in body


# -- presigned URLs ---------------------------------------------------------------------------------------


async def test_presigned_urls(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """The gateway mints short-lived presigned GETs for allowed reads only, and decides again when one is used."""
    stack, keys = world
    status, body, _ = await call(stack, "POST", "/_exportgate/presign", "acme-us",
                                 payload={"bucket": "models", "key": "frontier/w.bin", "expires_s": 60})  # fmt: skip
    assert status == 200, body
    url = body["url"]
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    async with aiohttp.ClientSession() as client, client.get(url) as got:
        assert (got.status, await got.read()) == (200, b"frontier weights")
    status, body, _ = await call(stack, "POST", "/_exportgate/presign", "falcon-ae",
                                 payload={"bucket": "models", "key": "frontier/w.bin"})  # fmt: skip
    assert (status, body["code"]) == (403, "weights_controlled")
    status, body, _ = await call(stack, "POST", "/_exportgate/presign", "acme-us",
                                 payload={"bucket": "models", "key": "readme.txt", "expires_s": 3600})  # fmt: skip
    assert (status, body["code"]) == (400, "request_malformed")  # above presign_max_s
    # A tampered URL (another key) does not verify.
    tampered = url.replace("frontier/w.bin", "open-big/w.bin")
    async with aiohttp.ClientSession() as client, client.get(tampered) as got:
        assert got.status == 401 and b"SignatureDoesNotMatch" in await got.read()
    # A URL a client presigned with its own access key works as any SigV4 request (SigV2 is refused).
    v2 = await in_thread(sigv4_client(stack.url, keys["acme-us"], signature_version="s3").generate_presigned_url,
                         "get_object", Params={"Bucket": "models", "Key": "readme.txt"}, ExpiresIn=60)  # fmt: skip
    async with aiohttp.ClientSession() as client, client.get(v2) as got:
        assert got.status == 401 and b"<Code>InvalidRequest</Code>" in await got.read()
    acme = sigv4_client(stack.url, keys["acme-us"], signature_version="s3v4")
    own = await in_thread(acme.generate_presigned_url, "get_object", Params={"Bucket": "models", "Key": "readme.txt"},
                          ExpiresIn=60)  # fmt: skip
    async with aiohttp.ClientSession() as client, client.get(own) as got:
        assert (got.status, await got.read()) == (200, b"hello")
    falcon = sigv4_client(stack.url, keys["falcon-ae"], signature_version="s3v4")
    theirs = await in_thread(falcon.generate_presigned_url, "get_object",
                             Params={"Bucket": "models", "Key": "frontier/w.bin"}, ExpiresIn=60)  # fmt: skip
    async with aiohttp.ClientSession() as client, client.get(theirs) as got:
        assert got.status == 403 and b"weights_controlled" in await got.read()


async def test_presigned_url_expires(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    stack, _ = world
    status, body, _ = await call(stack, "POST", "/_exportgate/presign", "acme-us",
                                 payload={"bucket": "models", "key": "readme.txt", "expires_s": 1})  # fmt: skip
    assert status == 200
    await asyncio.sleep(2.1)
    async with aiohttp.ClientSession() as client, client.get(body["url"]) as got:
        text = await got.read()
        assert got.status == 401 and b"Request has expired" in text


# -- the aws CLI ------------------------------------------------------------------------------------------


async def test_aws_cli_uploads_downloads_and_lists(world: tuple[Stack, dict[str, KeyPair]], tmp_path: Path,
                                                   moto: MotoServer) -> None:  # fmt: skip
    """`aws s3 cp` (single and multipart) and `aws s3 ls` with --endpoint-url, as allowed and refused tenants."""
    stack, keys = world
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"s" * 1000)
    big.write_bytes(b"B" * (11 * 1024 * 1024))  # over multipart_threshold: three parts
    code, out, err = await aws_cli(["s3", "cp", str(big), "s3://secure-weights/frontier/cli.bin", "--metadata",
                                    "exportgate-lineage=frontier"], stack.url, keys["acme-us"], tmp_path)  # fmt: skip
    assert code == 0, err
    head = moto.client().head_object(Bucket="secure-weights", Key="frontier/cli.bin")
    assert head["ContentLength"] == big.stat().st_size and "-" in head["ETag"]
    code, out, err = await aws_cli(["s3", "cp", str(small), "s3://scratch/frontier/cli.bin", "--metadata",
                                    "exportgate-lineage=frontier"], stack.url, keys["acme-us"], tmp_path)  # fmt: skip
    assert code != 0 and "storage_not_compliant" in err
    code, out, err = await aws_cli(["s3", "cp", "s3://models/frontier/w.bin", str(tmp_path / "got.bin")],
                                   stack.url, keys["acme-us"], tmp_path)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "got.bin").read_bytes() == b"frontier weights"
    code, out, err = await aws_cli(["s3", "cp", "s3://models/frontier/w.bin", str(tmp_path / "no.bin")],
                                   stack.url, keys["falcon-ae"], tmp_path)  # fmt: skip
    assert code != 0 and "403" in err and not (tmp_path / "no.bin").exists()
    code, out, err = await aws_cli(["s3", "ls", "s3://models/", "--recursive"], stack.url, keys["falcon-ae"], tmp_path)
    assert code == 0, err
    assert "readme.txt" in out and "open-big/w.bin" in out and "frontier" not in out
    code, out, err = await aws_cli(["s3", "ls", "s3://models/", "--recursive"], stack.url, keys["acme-us"], tmp_path)
    assert code == 0 and "frontier/w.bin" in out


# -- a lineage crossing the threshold through jobs the gateway admitted -----------------------------------

# 2,048 H100 for 460,000 minutes: 5.6e25 operations; two such jobs take the lineage past 1e26.
HALF = {"gpus": "h100:2048", "time_limit": 460000}


async def test_lineage_crossing_1e26_through_admitted_jobs(tmp_path: Path, moto: MotoServer) -> None:
    """Jobs a Tier 1 tenant runs through the gateway declaring a lineage take it past 1e26 operations: its weights
    become unreadable for a Tier 2 tenant without a licence, with no operator action (no catalogue entry at all)."""
    moto.reset()
    moto.client().create_bucket(Bucket="models")
    acme, _ = store_tenant(tmp_path, "acme-us", "US/US/US", "models")
    falcon, _ = store_tenant(tmp_path, "falcon-ae", "AE/AE/AE", "models")
    s3_upstream = f"  - name: weights\n    url: {moto.url}\n    scheduler: s3\n" + s3_options(tmp_path)
    config: dict[str, Any] = {
        "registry": registry(acme, falcon),
        "upstream_extra": "    prefix: /slurm/\n" + s3_upstream,
        "pack": weights_pack(tmp_path, "models: []\nstorage: []\n"),
    }
    async with running_stack(tmp_path, **config) as stack:
        status, _, _ = await call(stack, "PUT", "/models/frontier2/w.bin", "acme-us", data=b"frontier2 weights",
                                  headers={"x-amz-meta-exportgate-lineage": "frontier2"})  # fmt: skip
        assert status == 200
        env = {"PATH": "/usr/bin", "EXPORTGATE_LINEAGE": "frontier2"}
        job = {"job": {"name": "pretrain", "partition": "gpu", **HALF, "environment": env}, "script": "#!/bin/bash"}
        status, body, _ = await call(stack, "POST", "/slurm/v0.0.38/job/submit", "acme-us", payload=job)
        assert status == 200, body
        assert (await call(stack, "GET", "/models/frontier2/w.bin", "falcon-ae"))[:2] == (200, "frontier2 weights")
        status, body, _ = await call(stack, "POST", "/slurm/v0.0.38/job/submit", "acme-us", payload=job)
        assert status == 200, body
        status, body, _ = await call(stack, "GET", "/models/frontier2/w.bin", "falcon-ae")
        assert (status, body["code"]) == (403, "weights_controlled")
        record = await wait_for_record(stack, "decision", decision_id=body["decision_id"])
        lineage = record["weights"]["lineage"]
        assert lineage["counted_ops"] > 1e26 and lineage["declared_ops"] == 0.0
        assert record["weights"]["lineage_source"] == "metadata"
        # The Tier 1 tenant still reads them; the lineage's meter is in each admitted job's lease.
        assert (await call(stack, "GET", "/models/frontier2/w.bin", "acme-us"))[0] == 200
        submits = [r for r in ledger_records(stack) if r.get("route_kind") == "submit" and r["decision"] == "allow"]
        assert all(any(c["key"] == "lineage_ops:frontier2" for c in r["lease"]["counters"]) for r in submits)


async def test_jobs_declaring_over_1e23_parameters(tmp_path: Path, moto: MotoServer) -> None:
    """A job declaring 1e24 parameters (EXPORTGATE_PARAMS): a Tier 2 tenant without a licence is refused
    licence_required (rule weights_parameters) and meters nothing; a Tier 1 tenant's is admitted, and the lineage's
    weights become unreadable for the Tier 2 tenant, with no operator action; a weights licence naming the lineage
    admits the job and reads them."""
    moto.reset()
    moto.client().create_bucket(Bucket="models")
    acme, _ = store_tenant(tmp_path, "acme-us", "US/US/US", "models")
    falcon, falcon_key = store_tenant(tmp_path, "falcon-ae", "AE/AE/AE", "models")
    licensed, _ = store_tenant(tmp_path, "licensed-ae", "AE/AE/AE", "models",
                               "\n    licences: [{id: D-W7, lifts: [weights], lineage: giant}]")  # fmt: skip
    s3_upstream = f"  - name: weights\n    url: {moto.url}\n    scheduler: s3\n" + s3_options(tmp_path)
    config: dict[str, Any] = {
        "registry": registry(acme, falcon, licensed),
        "upstream_extra": "    prefix: /slurm/\n" + s3_upstream,
        "pack": weights_pack(tmp_path, "models: []\nstorage: []\n"),
    }
    async with running_stack(tmp_path, **config) as stack:
        status, _, _ = await call(stack, "PUT", "/models/giant/w.bin", "acme-us", data=b"giant weights",
                                  headers={"x-amz-meta-exportgate-lineage": "giant"})  # fmt: skip
        assert status == 200
        assert (await call(stack, "GET", "/models/giant/w.bin", "falcon-ae"))[:2] == (200, "giant weights")
        job = slurm_job("h100:1", name="giant-ft", lineage="giant", params="1e24")
        status, body, _ = await call(stack, "POST", SUBMIT, "falcon-ae", payload=job)
        assert (status, body["code"]) == (403, "licence_required"), body
        assert "mission statement" in body["citation"] and "1e+24 parameters" in body["detail"]
        refused = await wait_for_record(stack, "decision", decision_id=body["decision_id"])
        assert refused["job"]["parameters"] == 1e24 and refused["job"]["lineage"] == "giant"
        assert [(r["code"], r["rule"], r["enforced"]) for r in refused["reasons"]] == [
            ("licence_required", "weights_parameters", True)]  # fmt: skip
        assert stack.standin.jobs == {}  # nothing reached the scheduler
        # A malformed declaration is refused as such, naming the field.
        status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=slurm_job(lineage="giant",
                                                                                         params="huge"))  # fmt: skip
        assert (status, body["code"]) == (400, "job_spec_invalid")
        assert "job.environment.EXPORTGATE_PARAMS" in body["detail"]
        # The refused job metered nothing: the weights are still readable.
        assert (await call(stack, "GET", "/models/giant/w.bin", "falcon-ae"))[0] == 200
        status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=job)
        assert status == 200, body
        status, body, _ = await call(stack, "GET", "/models/giant/w.bin", "falcon-ae")
        assert (status, body["code"]) == (403, "weights_controlled")
        record = await wait_for_record(stack, "decision", decision_id=body["decision_id"])
        lineage = record["weights"]["lineage"]
        assert lineage["counted_param_jobs"] == 1.0 and lineage["parameters"] is None
        assert [c["rule"] for c in lineage["controls"]] == ["weights_parameters"]
        falcon_s3 = sigv4_client(stack.url, falcon_key)
        with pytest.raises(ClientError) as denied:
            await in_thread(falcon_s3.get_object, Bucket="models", Key="giant/w.bin")
        assert denied.value.response["Error"]["Message"].startswith("exportgate weights_controlled: lineage giant "
                                                                    "was declared over 1e+23 parameters")  # fmt: skip
        # Tier 1 still reads them; a weights licence naming the lineage admits the job and the read.
        assert (await call(stack, "GET", "/models/giant/w.bin", "acme-us"))[0] == 200
        status, body, headers = await call(stack, "POST", SUBMIT, "licensed-ae", payload=job)
        assert status == 200, body
        admitted = await wait_for_record(stack, "decision", decision_id=headers["X-Exportgate-Decision-Id"])
        assert "D-W7" in admitted["licences"]
        assert (await call(stack, "GET", "/models/giant/w.bin", "licensed-ae"))[0] == 200
        submits = [r for r in ledger_records(stack) if r.get("route_kind") == "submit" and r["decision"] == "allow"]
        meters = [c for r in submits for c in r["lease"]["counters"] if c["key"] == "lineage_params_declared:giant"]
        assert len(submits) == 2 and len(meters) == 2
        # replay remakes the job decisions from the recorded declaration: the same pack changes nothing (but for the
        # licensed tenant, whose licence the ledger names but does not describe: reported as incomplete facts); with
        # the parameter threshold switched off the refusal goes, and so does the read it made controlled.
        records = ledger_records(stack)
        same = replay(records, load_pack(stack.settings.pack_dir))
        assert [c.tenant for c in same.changes] == ["licensed-ae"] and same.incomplete_facts == ("licensed-ae",)
        (tmp_path / "off").mkdir()
        off = weights_pack(tmp_path / "off", "thresholds: {parameters: null}\nmodels: []\nstorage: []\n")
        assert replay(records, load_pack(off)).transitions() == {"licence_required -> allow": 1,
                                                                  "weights_controlled -> allow": 2}  # fmt: skip


# -- replay and explain ------------------------------------------------------------------------------------


async def test_replay_and_explain_cover_weights_decisions(world: tuple[Stack, dict[str, KeyPair]],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """Recorded weights decisions are remade by replay under another pack; explain shows the lineage's status."""
    stack, _ = world
    await call(stack, "GET", "/models/frontier/w.bin", "falcon-ae")
    await call(stack, "GET", "/models/frontier/w.bin", "acme-us")
    await call(stack, "PUT", "/scratch/frontier/x.bin", "acme-us", data=b"x",
               headers={"x-amz-meta-exportgate-lineage": "frontier"})  # fmt: skip
    await wait_for_record(stack, "decision", tenant="acme-us", code="storage_not_compliant")
    records = ledger_records(stack)
    same = replay(records, load_pack(stack.settings.pack_dir))
    assert same.decided >= 3 and same.changes == ()
    # Under a pack where the lineage is published and the scratch bucket meets the conditions, both refusals go.
    published = WEIGHTS.replace("as_of: 2025-01-01, note: trained on another cloud}",
                                "as_of: 2025-01-01}\n    published: {since: 2025-02-01}")  # fmt: skip
    (tmp_path / "other").mkdir()
    compliant = published.replace("storage:\n", "storage:\n  - {bucket: scratch, since: 2025-01-01, facility: f}\n")
    other = weights_pack(tmp_path / "other", compliant)
    report = replay(records, load_pack(other))
    assert report.transitions() == {"storage_not_compliant -> allow": 1, "weights_controlled -> allow": 1}
    # explain, offline, from gateway.yaml and the ledger: the catalogue's lineage and its status.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "explain", "--config", str(stack.workdir / "gateway.yaml"),
        "--tenant", "falcon-ae", "--method", "GET", "--path", "/models/frontier/w.bin", "--format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    x = json.loads(out)
    assert (x["decision"], x["code"], x["status"]) == ("deny", "weights_controlled", 403)
    assert x["weights"]["lineage"]["lineage"] == "frontier" and x["weights"]["lineage"]["controlled"] is True
    assert {r["rule"] for r in x["rules"]} >= {"weights_ops", "weights_storage"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "explain", "--config", str(stack.workdir / "gateway.yaml"),
        "--tenant", "acme-us", "--method", "PUT", "--path", "/scratch/frontier/w.bin",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "decision: allow" in text and "holds no lineage the catalogue names" in text


async def test_a_body_that_does_not_match_its_signed_hash_never_lands(world: tuple[Stack, dict[str, KeyPair]],
                                                                       moto: MotoServer) -> None:  # fmt: skip
    """The gateway checks a signed payload hash itself (a store may not): the upload is cut short and refused."""
    stack, keys = world
    import hashlib

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{stack.url}/scratch/tampered.bin"
    signed = AWSRequest(method="PUT", url=url, data=b"A" * 200_000,
                        headers={"x-amz-content-sha256": hashlib.sha256(b"A" * 200_000).hexdigest()})  # fmt: skip
    S3SigV4Auth(Credentials(keys["falcon-ae"].key_id, keys["falcon-ae"].secret), "s3", "us-east-1").add_auth(signed)
    headers = dict(signed.headers.items())
    async with aiohttp.ClientSession() as client:
        async with client.put(url, data=b"B" * 200_000, headers=headers) as got:
            text = await got.read()
            assert got.status == 400 and b"XAmzContentSHA256Mismatch" in text, text
        listed = moto.client().list_objects_v2(Bucket="scratch", Prefix="tampered.bin")
        assert "Contents" not in listed  # the store never got the whole (wrong) body
        async with client.put(url, data=b"A" * 200_000, headers=headers) as got:
            assert got.status == 200, await got.read()
    assert moto.client().get_object(Bucket="scratch", Key="tampered.bin")["Body"].read() == b"A" * 200_000


async def test_the_catalogue_reloads_with_the_pack(world: tuple[Stack, dict[str, KeyPair]]) -> None:
    """The catalogue is pack data: publishing a lineage in weights.yaml takes effect on the next reload."""
    stack, _ = world
    assert (await call(stack, "GET", "/models/frontier/w.bin", "falcon-ae"))[0] == 403
    weights = stack.settings.pack_dir / "weights.yaml"
    note = "note: trained on another cloud}"
    weights.write_text(weights.read_text().replace(note, note + "\n    published: {since: 2025-02-01}"))

    async def readable() -> bool:
        return (await call(stack, "GET", "/models/frontier/w.bin", "falcon-ae"))[0] == 200

    await wait_until(readable, 5.0, every=0.1, message="the published lineage never became readable")

    def weights_records() -> list[dict[str, Any]]:
        return [
            r for r in ledger_records(stack, committed_only=True) if r.get("tenant") == "falcon-ae" and r.get("weights")
        ]

    # The allowed read's record is written after its answer: wait for it rather than read the tail at once.
    await wait_until(lambda: weights_records()[-1]["weights"]["lineage"]["published"] is True, 5.0, every=0.05)
    records = weights_records()
    assert records[-1]["policy"]["hash"] != records[0]["policy"]["hash"]
