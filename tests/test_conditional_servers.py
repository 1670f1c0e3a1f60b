"""Which test server enforces which conditional request (issue 18): the conformance table as tests.

Each row sends one conditional request with the cloud's own client (boto3 for S3, the GCS JSON API
over plain HTTP, azure-storage-blob for Azure) to each server of tests/servers.py and asserts what
the server really does, enforced or ignored, so the table below is documented by the tests and a
server upgrade that changes behaviour fails here. Test ids read like the table:
`test_s3[moto-ignores-complete_multipart_if_match_wrong]`, `test_gcs[gcs-fake-enforces-...]`.

Expected outcomes: "412" / "409" / "404" the server refuses with that status and leaves the object
alone; "ignored" the server performs a request whose condition does not hold; "allows" the
condition holds and the request goes through (the control rows). docs/multihost.md ("Which server
proves which guarantee") carries the same table and what the clients mountd uses can send.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY, AzuriteServer, GcsServer, S3Server

WRONG_ETAG = '"0123456789abcdef0123456789abcdef"'
WRONG_AZURE_ETAG = '"0x8DEADBEEF000000"'
OK = "allows"
IGNORED = "ignored"

S3_FIXTURES = {"moto": "s3_server", "seaweedfs": "s3_seaweedfs_server", "rclone": "s3_persistent_server"}
GCS_FIXTURES = {"gcs-fake": "gcs_fake_server", "gcp-storage-emulator": "gcs_server"}

# condition -> {server: expected}
S3_TABLE: dict[str, dict[str, str]] = {
    "put_if_none_match_star_existing": {"moto": "412", "seaweedfs": "412", "rclone": IGNORED},
    "put_if_none_match_star_new": {"moto": OK, "seaweedfs": OK, "rclone": OK},
    "put_if_match_wrong": {"moto": "412", "seaweedfs": "412", "rclone": IGNORED},
    "put_if_match_right": {"moto": OK, "seaweedfs": OK, "rclone": OK},
    "put_if_match_missing_key": {"moto": "404", "seaweedfs": "412", "rclone": IGNORED},
    "complete_multipart_if_none_match_star_existing": {"moto": "412", "seaweedfs": "412", "rclone": IGNORED},
    "complete_multipart_if_match_wrong": {"moto": IGNORED, "seaweedfs": "412", "rclone": IGNORED},
    "complete_multipart_if_match_right": {"moto": OK, "seaweedfs": OK, "rclone": OK},
    "delete_if_match_wrong": {"moto": "412", "seaweedfs": "412", "rclone": IGNORED},
    "delete_if_match_right": {"moto": OK, "seaweedfs": OK, "rclone": OK},
    "copy_if_none_match_star_existing_destination": {"moto": IGNORED, "seaweedfs": "412", "rclone": IGNORED},
    "copy_if_match_wrong_destination": {"moto": IGNORED, "seaweedfs": "412", "rclone": IGNORED},
    "ranged_get_if_match_wrong": {"moto": "412", "seaweedfs": "412", "rclone": IGNORED},
    "ranged_get_if_match_right": {"moto": OK, "seaweedfs": OK, "rclone": OK},
}

GCS_TABLE: dict[str, dict[str, str]] = {
    "multipart_upload_if_generation_match_0_existing": {"gcs-fake": "412", "gcp-storage-emulator": IGNORED},
    "multipart_upload_if_generation_match_0_new": {"gcs-fake": OK, "gcp-storage-emulator": OK},
    "multipart_upload_if_generation_match_wrong": {"gcs-fake": "412", "gcp-storage-emulator": IGNORED},
    "multipart_upload_if_generation_match_right": {"gcs-fake": OK, "gcp-storage-emulator": OK},
    "media_upload_if_generation_match_0_existing": {"gcs-fake": IGNORED, "gcp-storage-emulator": IGNORED},
    "resumable_upload_if_generation_match_0_existing": {"gcs-fake": IGNORED, "gcp-storage-emulator": IGNORED},
    "resumable_upload_if_generation_match_wrong": {"gcs-fake": IGNORED, "gcp-storage-emulator": IGNORED},
    "delete_if_generation_match_wrong": {"gcs-fake": IGNORED, "gcp-storage-emulator": IGNORED},
    "ranged_get_if_generation_match_wrong": {"gcs-fake": IGNORED, "gcp-storage-emulator": IGNORED},
    "ranged_get_generation_replaced": {"gcs-fake": "404", "gcp-storage-emulator": IGNORED},
    "ranged_get_generation_current": {"gcs-fake": OK, "gcp-storage-emulator": OK},
    "rewrite_if_generation_match_0_existing_destination": {"gcs-fake": IGNORED,
                                                           "gcp-storage-emulator": IGNORED},
}

AZURE_TABLE: dict[str, str] = {  # Azurite only
    "put_if_none_match_star_existing": "409",
    "put_if_none_match_star_new": OK,
    "put_if_match_wrong": "412",
    "put_if_match_right": OK,
    "put_if_match_missing_blob": "412",
    "commit_block_list_if_match_wrong": "412",
    "commit_block_list_if_none_match_star_existing": "409",
    "commit_block_list_if_match_right": OK,
    "delete_if_match_wrong": "412",
    "delete_if_match_right": OK,
    "ranged_get_if_match_wrong": "412",
    "ranged_get_if_match_right": OK,
    "copy_if_none_match_star_existing_destination": "409",
}


def _verb(expected: str) -> str:
    return {OK: "allows", IGNORED: "ignores"}.get(expected, "enforces")


def _rows(table: dict[str, dict[str, str]]) -> list[Any]:
    return [pytest.param(server, cond, exp, id=f"{server}-{_verb(exp)}-{cond}" + (
        f"-{exp}" if exp not in (OK, IGNORED, "412") else ""))
        for cond, by_server in table.items() for server, exp in by_server.items()]


def check(expected: str, status: int, changed: bool | None) -> None:
    """`status` of the conditional request; `changed`: whether the object was written/deleted
    (None for reads, where only the status tells)."""
    if expected in (OK, IGNORED):
        assert 200 <= status < 300, f"expected the server to perform the request, got {status}"
        assert changed in (True, None), "the server answered 2xx but did not perform the request"
    else:
        assert status == int(expected), f"expected {expected}, got {status}"
        assert changed in (False, None), "the server refused but changed the object anyway"


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_buckets(request: pytest.FixtureRequest) -> dict[str, tuple[S3Server, str]]:
    return {}


def _s3(request: pytest.FixtureRequest, s3_buckets: dict[str, tuple[S3Server, str]],
        name: str) -> tuple[Any, str]:
    if name not in s3_buckets:
        server: S3Server = request.getfixturevalue(S3_FIXTURES[name])
        s3_buckets[name] = (server, server.new_bucket("cond"))
    server, bucket = s3_buckets[name]
    return server.client(), bucket


def _status(call: Callable[[], Any]) -> int:
    from botocore.exceptions import ClientError

    try:
        return call()["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def _s3_probe(c: Any, b: str, cond: str) -> tuple[int, bool | None]:
    key = f"{cond}-{uuid.uuid4().hex[:6]}"

    def body() -> bytes:
        try:
            return c.get_object(Bucket=b, Key=key)["Body"].read()
        except c.exceptions.NoSuchKey:
            return b"<missing>"

    def etag() -> str:
        return c.head_object(Bucket=b, Key=key)["ETag"]

    def complete(**cond_kw: str) -> int:
        upload = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
        part = c.upload_part(Bucket=b, Key=key, UploadId=upload, PartNumber=1, Body=b"multipart")
        return _status(lambda: c.complete_multipart_upload(
            Bucket=b, Key=key, UploadId=upload,
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]}, **cond_kw))

    if not cond.endswith(("_new", "_missing_key")):
        c.put_object(Bucket=b, Key=key, Body=b"old")
    if "if_none_match_star" in cond:
        kw = {"IfNoneMatch": "*"}
    else:
        kw = {"IfMatch": etag() if cond.endswith("_right") else WRONG_ETAG}
    if cond.startswith("put_"):
        return _status(lambda: c.put_object(Bucket=b, Key=key, Body=b"new", **kw)), body() == b"new"
    if cond.startswith("complete_multipart_"):
        return complete(**kw), body() == b"multipart"
    if cond.startswith("delete_"):
        return _status(lambda: c.delete_object(Bucket=b, Key=key, **kw)), body() == b"<missing>"
    if cond.startswith("copy_"):
        c.put_object(Bucket=b, Key=key + "-src", Body=b"copied")
        source = {"Bucket": b, "Key": key + "-src"}
        return _status(lambda: c.copy_object(Bucket=b, Key=key, CopySource=source, **kw)), body() == b"copied"
    if cond.startswith("ranged_get_"):
        return _status(lambda: c.get_object(Bucket=b, Key=key, Range="bytes=0-1", **kw)), None
    raise AssertionError(cond)


@pytest.mark.parametrize(("server", "cond", "expected"), _rows(S3_TABLE))
def test_s3(request: pytest.FixtureRequest, s3_buckets: dict, server: str, cond: str, expected: str) -> None:
    c, bucket = _s3(request, s3_buckets, server)
    check(expected, *_s3_probe(c, bucket, cond))


def _race(n: int, attempt: Callable[[int], bool]) -> int:
    """`n` threads call `attempt(i)` at once (behind a barrier); how many succeeded."""
    barrier = threading.Barrier(n)
    wins: list[int] = []

    def run(i: int) -> None:
        barrier.wait()
        if attempt(i):
            wins.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return len(wins)


def _s3_race(server: S3Server, bucket: str, key: str, size: int = 1000) -> tuple[int, bytes]:
    from botocore.exceptions import ClientError

    clients = [server._new_client(server.endpoint_url) for _ in range(8)]  # one connection pool each

    def put(i: int) -> bool:
        try:
            clients[i].put_object(Bucket=bucket, Key=key, Body=bytes([65 + i]) * size, IfNoneMatch="*")
            return True
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 412
            return False

    wins = _race(8, put)
    return wins, server.get(bucket, key)[:1]


def test_seaweedfs_create_only_put_is_atomic_under_race(s3_seaweedfs_server: S3Server) -> None:
    """8 racers, If-None-Match: *: one wins, seven get 412 (each loser waits ~1 s per writer ahead)."""
    bucket = s3_seaweedfs_server.new_bucket("race")
    wins, first = _s3_race(s3_seaweedfs_server, bucket, "k")
    assert wins == 1
    assert first in [bytes([65 + i]) for i in range(8)]


def test_rclone_ignores_if_none_match_so_every_racer_wins(s3_persistent_server: S3Server) -> None:
    bucket = s3_persistent_server.new_bucket("race")
    assert _s3_race(s3_persistent_server, bucket, "k")[0] == 8


def test_moto_create_only_put_is_not_atomic_under_race(s3_server: S3Server) -> None:
    """moto checks If-None-Match, then stores: bodies over its 5 MiB in-memory limit go to a temp
    file in between, so racers slip through (small bodies usually serialize by the GIL alone)."""
    bucket = s3_server.new_bucket("race")
    most = 0
    for round_ in range(15):
        most = max(most, _s3_race(s3_server, bucket, f"k{round_}", size=6 * 2**20)[0])
        if most > 1:
            break
    assert most > 1, "moto now looks atomic for create-only PutObject: update the table in docs/multihost.md"


# --- GCS (JSON API over plain HTTP, as gcsfs speaks it) --------------------------------------------


class Gcs:
    """One bucket of a GCS server, reached with the JSON API (one HTTP session per instance)."""

    def __init__(self, server: GcsServer, bucket: str | None = None) -> None:
        import requests

        self.base = server.endpoint_url
        self.http = requests.Session()
        self.bucket = bucket or f"cond-{uuid.uuid4().hex[:8]}"
        if bucket is None:
            self.http.post(f"{self.base}/storage/v1/b", params={"project": "test"},
                           json={"name": self.bucket}).raise_for_status()

    def media(self, key: str, data: bytes, **params: str) -> Any:
        return self.http.post(f"{self.base}/upload/storage/v1/b/{self.bucket}/o",
                              params={"uploadType": "media", "name": key, **params}, data=data)

    def multipart(self, key: str, data: bytes, **params: str) -> Any:
        body = (b"--XX\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                + json.dumps({"name": key}).encode()
                + b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XX--")
        return self.http.post(f"{self.base}/upload/storage/v1/b/{self.bucket}/o",
                              params={"uploadType": "multipart", **params}, data=body,
                              headers={"Content-Type": 'multipart/related; boundary="XX"'})

    def resumable(self, key: str, data: bytes, **params: str) -> Any:
        start = self.http.post(f"{self.base}/upload/storage/v1/b/{self.bucket}/o",
                               params={"uploadType": "resumable", "name": key, **params}, json={"name": key})
        if start.status_code != 200:
            return start
        return self.http.put(start.headers["Location"], data=data)

    def generation(self, key: str) -> int:
        r = self.http.get(f"{self.base}/storage/v1/b/{self.bucket}/o/{key}")
        r.raise_for_status()
        return int(r.json()["generation"])

    def body(self, key: str) -> bytes:
        r = self.http.get(f"{self.base}/download/storage/v1/b/{self.bucket}/o/{key}", params={"alt": "media"})
        return r.content if r.status_code == 200 else b"<missing>"

    def ranged_get(self, key: str, **params: str) -> Any:
        return self.http.get(f"{self.base}/download/storage/v1/b/{self.bucket}/o/{key}",
                             params={"alt": "media", **params}, headers={"Range": "bytes=0-1"})


@pytest.fixture(scope="module")
def gcs_buckets() -> dict[str, Gcs]:
    return {}


def _gcs_probe(g: Gcs, cond: str) -> tuple[int, bool | None]:
    key = f"{cond}-{uuid.uuid4().hex[:6]}"
    if not cond.endswith("_0_new"):
        g.media(key, b"old").raise_for_status()
    gen = g.generation(key) if not cond.endswith("_0_new") else 0
    match = "0" if "_match_0_" in cond else str(gen + 1000) if cond.endswith("_wrong") else str(gen)
    if "_upload_" in cond:
        upload = {"multipart": g.multipart, "media": g.media, "resumable": g.resumable}[cond.split("_")[0]]
        status = upload(key, b"new", ifGenerationMatch=match).status_code
        return status, g.body(key) == b"new"
    if cond.startswith("delete_"):
        status = g.http.delete(f"{g.base}/storage/v1/b/{g.bucket}/o/{key}",
                               params={"ifGenerationMatch": match}).status_code
        return status, g.body(key) == b"<missing>"
    if cond == "ranged_get_if_generation_match_wrong":
        return g.ranged_get(key, ifGenerationMatch=match).status_code, None
    if cond.startswith("ranged_get_generation_"):
        if cond.endswith("_replaced"):
            g.media(key, b"newer").raise_for_status()  # the generation we pin to is gone now
        return g.ranged_get(key, generation=str(gen)).status_code, None
    if cond.startswith("rewrite_"):
        g.media(key + "-src", b"copied").raise_for_status()
        status = g.http.post(f"{g.base}/storage/v1/b/{g.bucket}/o/{key}-src/rewriteTo/b/{g.bucket}/o/{key}",
                             params={"ifGenerationMatch": "0"}, json={}).status_code
        return status, g.body(key) == b"copied"
    raise AssertionError(cond)


@pytest.mark.parametrize(("server", "cond", "expected"), _rows(GCS_TABLE))
def test_gcs(request: pytest.FixtureRequest, gcs_buckets: dict[str, Gcs], server: str, cond: str,
             expected: str) -> None:
    if server not in gcs_buckets:
        gcs_buckets[server] = Gcs(request.getfixturevalue(GCS_FIXTURES[server]))
    check(expected, *_gcs_probe(gcs_buckets[server], cond))


@pytest.mark.parametrize(("server", "winners"), [("gcs-fake", 1), ("gcp-storage-emulator", 8)])
def test_gcs_create_only_multipart_upload_race(request: pytest.FixtureRequest, server: str,
                                               winners: int) -> None:
    """8 racers, multipart upload ifGenerationMatch=0: fake-gcs-server lets exactly one through;
    gcp-storage-emulator ignores the condition."""
    gcs: GcsServer = request.getfixturevalue(GCS_FIXTURES[server])
    bucket = Gcs(gcs).bucket
    racers = [Gcs(gcs, bucket) for _ in range(8)]
    assert _race(8, lambda i: racers[i].multipart("k", bytes([65 + i]) * 1000,
                                                  ifGenerationMatch="0").ok) == winners


# --- Azure (azure-storage-blob against Azurite) --------------------------------------------------


@pytest.fixture(scope="module")
def azure_container(azurite_server: AzuriteServer) -> Any:
    from azure.storage.blob import BlobServiceClient

    cs = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
          f"BlobEndpoint={azurite_server.blob_endpoint};")
    return BlobServiceClient.from_connection_string(cs).create_container(f"cond-{uuid.uuid4().hex[:8]}")


def _azure_probe(cc: Any, cond: str) -> tuple[int, bool | None]:
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError

    key = f"{cond}-{uuid.uuid4().hex[:6]}"
    blob = cc.get_blob_client(key)

    def status(call: Callable[[], Any]) -> int:
        try:
            call()
            return 200
        except HttpResponseError as e:
            return int(e.status_code)

    def body() -> bytes:
        return blob.download_blob().readall() if blob.exists() else b"<missing>"

    if not cond.endswith("_new") and not cond.endswith("_missing_blob"):
        blob.upload_blob(b"old")
    etag = blob.get_blob_properties().etag if blob.exists() else None
    if_missing = {"match_condition": MatchConditions.IfMissing}  # sends If-None-Match: *
    if_match = {"etag": etag if cond.endswith("_right") else WRONG_AZURE_ETAG,
                "match_condition": MatchConditions.IfNotModified}  # sends If-Match: <etag>
    kw = if_missing if "if_none_match_star" in cond else if_match
    if cond.startswith("put_"):
        return status(lambda: blob.upload_blob(b"new", overwrite=True, **kw)), body() == b"new"
    if cond.startswith("commit_block_list_"):
        from azure.storage.blob import BlobBlock

        block_id = base64.b64encode(uuid.uuid4().bytes).decode()
        blob.stage_block(block_id, b"blocks")
        return (status(lambda: blob.commit_block_list([BlobBlock(block_id=block_id)], **kw)),
                body() == b"blocks")
    if cond.startswith("delete_"):
        return status(lambda: blob.delete_blob(**kw)), body() == b"<missing>"
    if cond.startswith("ranged_get_"):
        return status(lambda: blob.download_blob(offset=0, length=2, **kw).readall()), None
    if cond.startswith("copy_"):
        src = cc.get_blob_client(key + "-src")
        src.upload_blob(b"copied")
        return (status(lambda: blob.start_copy_from_url(src.url, requires_sync=True, **kw)),
                body() == b"copied")
    raise AssertionError(cond)


@pytest.mark.parametrize(("cond", "expected"), [
    pytest.param(cond, exp,
                 id=f"azurite-{_verb(exp)}-{cond}" + (f"-{exp}" if exp not in (OK, IGNORED, "412") else ""))
    for cond, exp in AZURE_TABLE.items()])
def test_azure(azure_container: Any, cond: str, expected: str) -> None:
    check(expected, *_azure_probe(azure_container, cond))


def test_azurite_create_only_put_is_atomic_under_race(azure_container: Any,
                                                      azurite_server: AzuriteServer) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    clients = [BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={azurite_server.blob_endpoint};"
    ).get_blob_client(azure_container.container_name, "race")
        for _ in range(8)]

    def put(i: int) -> bool:
        try:
            clients[i].upload_blob(bytes([65 + i]) * 1000, overwrite=False)  # If-None-Match: *
            return True
        except ResourceExistsError:
            return False

    assert _race(8, put) == 1
