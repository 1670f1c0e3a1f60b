"""Write-back faults against real S3 servers on 127.0.0.1: kill -9 mid-upload, a server outage,
and deduplication measured in bytes that reached the server."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import mountd_cmd, wait_until
from tests.servers import CountingProxy, S3Server

pytestmark = pytest.mark.slow


def object_keys(server: S3Server, bucket: str) -> list[str]:
    c = server.client()
    keys: list[str] = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@contextmanager
def repo_behind_proxy(make_repo, server: S3Server, bucket_name: str, **repo_kw) -> Iterator[tuple]:
    """A started repo whose remote is a new bucket of `server` reached through a byte-counting
    proxy: (repo, proxy, bucket). The repo is stopped when the block ends normally."""
    bucket = server.new_bucket(bucket_name)
    proxy = CountingProxy(server.port)
    try:
        repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data",
                                                        endpoint_url=proxy.endpoint_url), **repo_kw)
        repo.start()
        yield repo, proxy, bucket
        repo.stop()
    finally:
        proxy.close()


def test_kill9_mid_upload_of_200_files_loses_and_duplicates_nothing(make_repo, s3_server: S3Server):
    bucket = s3_server.new_bucket("crash")
    repo = make_repo(delay="1h", remote_toml=s3_server.remote_toml("main", bucket, "/data"),
                     writeback_toml='concurrency = 4\nmultipart_threshold = "6M"\nmultipart_chunk = "5M"')
    repo.start()
    payloads: dict[str, bytes] = {}
    for i in range(200):
        size = 7 << 20 if i % 25 == 0 else 1000 + (i * 7919) % 150_000  # 8 multipart-sized files
        payloads[f"run{i % 5}/f{i:03d}.bin"] = os.urandom(size)
    for name, data in payloads.items():
        p = repo.data / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    mountd_cmd("sync", str(repo.data))  # all due now
    wait_until(lambda: len(object_keys(s3_server, bucket)) >= 20, interval=0.01)
    repo.kill9()
    before = len([k for k in object_keys(s3_server, bucket) if not k.endswith("/")])
    assert before < len(payloads), "the kill came too late to interrupt the uploads"
    repo.start()
    repo.sync()
    objects = {k: v for k, v in s3_server.objects(bucket).items() if not k.endswith("/")}
    assert sorted(objects) == sorted(payloads)  # none lost, none extra
    assert all(objects[k] == payloads[k] for k in payloads)
    c = s3_server.client()
    for key in list(payloads)[::10]:
        head = c.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["sha256"] == hashlib.sha256(payloads[key]).hexdigest()
    repo.stop()


OUTAGE = 25.0  # seconds: more than ten retry periods at the tests' retry_max of 2 s


def test_writes_never_fail_while_the_server_is_down(make_repo, s3_persistent_server: S3Server):
    """100 files written and closed while the server is down for OUTAGE seconds: no write fails
    or waits, and every one is on the server after it comes back (it was 60 s until the suite
    neared its 15 minutes: the uploads' retries reach their cap within 4 s either way)."""
    server = s3_persistent_server
    bucket = server.new_bucket("outage")
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data"))
    repo.expected_log_errors.append("write-back of")
    repo.start()
    (repo.data / "before.txt").write_text("uploaded before the outage")
    repo.sync()
    payloads = {f"during{i:03d}.bin": os.urandom(2000 + i * 100) for i in range(100)}
    server.stop()
    down_at = time.monotonic()
    try:
        for name, data in payloads.items():
            (repo.data / name).write_bytes(data)  # must not fail, nor wait for the server
        assert (repo.data / "during050.bin").read_bytes() == payloads["during050.bin"]
        assert repo.status()["pending_uploads"] >= len(payloads)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage itself
    finally:
        server.start()
    repo.sync(timeout=180)
    objects = server.objects(bucket)
    assert {k: objects[k] for k in payloads} == payloads
    assert repo.status()["pending_uploads"] == 0
    repo.stop()


def test_same_64mib_under_10_paths_is_sent_once(make_repo, s3_server: S3Server):
    with repo_behind_proxy(make_repo, s3_server, "dedup", delay="1h") as (repo, proxy, bucket):
        content = os.urandom(64 << 20)
        for i in range(10):
            (repo.data / f"copy{i}.safetensors").write_bytes(content)
        proxy.reset_counts()
        repo.sync()
        sent = proxy.bytes_up
        assert sent <= 1.05 * len(content), f"{sent} bytes reached the server for {len(content)} of content"
        for i in range(10):
            obj = s3_server.client().get_object(Bucket=bucket, Key=f"copy{i}.safetensors")["Body"].read()
            assert obj == content
        stats = repo.status()["statistics"]["reconciler"]
        assert stats["uploads"] == 1 and stats["dedup_copied"] == 9


def test_copies_written_one_after_another_upload_once(make_repo, s3_persistent_server: S3Server):
    """No write-back delay: each copy is hashed while the first one is still uploading."""
    server = s3_persistent_server
    with repo_behind_proxy(make_repo, server, "dedup0") as (repo, proxy, bucket):
        content = os.urandom(64 << 20)
        proxy.reset_counts()
        for i in range(10):
            (repo.data / f"copy{i}.bin").write_bytes(content)
        repo.sync()
        assert proxy.bytes_up <= 1.05 * len(content)
        stats = repo.status()["statistics"]["reconciler"]
        assert stats["uploads"] == 1 and stats["dedup_copied"] == 9
        assert all(server.objects(bucket)[f"copy{i}.bin"] == content for i in (0, 9))


def test_rewriting_or_renaming_a_file_stops_its_upload_in_flight(make_repo, s3_persistent_server: S3Server):
    """The rewrite requeues the key and stops the transfer of the old bytes (multipart here),
    so the server receives a part of the first version and all of the second, not both whole."""
    server = s3_persistent_server
    with repo_behind_proxy(make_repo, server, "cancel") as (repo, proxy, bucket):
        size = 256 << 20
        first, second = os.urandom(size), os.urandom(size)
        proxy.reset_counts()
        path = repo.data / "ckpt.bin"
        path.write_bytes(first)
        wait_until(lambda: proxy.bytes_up > 16 << 20, 60, interval=0.005)  # the first version is on its way
        path.write_bytes(second)
        repo.sync()
        assert server.objects(bucket)["ckpt.bin"] == second
        assert repo.status()["statistics"]["reconciler"]["uploads_cancelled"] == 1
        assert proxy.bytes_up < 1.9 * size, f"{proxy.bytes_up / size:.2f} x the file reached the server"
        # a rename in the middle of an upload stops it too; the object goes up under the new name
        proxy.reset_counts()
        moved = repo.data / "moved.bin"
        moved.write_bytes(first)
        wait_until(lambda: proxy.bytes_up > 16 << 20, 60, interval=0.005)
        moved.rename(repo.data / "final.bin")
        repo.sync()
        objects = server.objects(bucket)
        assert objects["final.bin"] == first and "moved.bin" not in objects
        assert repo.status()["statistics"]["reconciler"]["uploads_cancelled"] == 2
