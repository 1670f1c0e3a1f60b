"""Appends to a large remote file send only the new bytes, and reopening it downloads nothing.

A training log, a metrics file or a TensorBoard event file grows by appends, closed after each.
After an upload the file's local copy is handed to the cache, so the next append takes the file
from there (no download); the upload that follows has the server reuse the object's old bytes
(S3 `UploadPartCopy`, GCS `compose`, Azure: the blob's committed blocks again) and sends only
what was appended. Bytes are counted at a proxy in front of the server. `rclone serve s3` takes
an `UploadPartCopy` for an empty part upload: mountd sees that the answer has no copy result and
sends the file whole, never a wrong object.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import wait_until
from tests.servers import REMOTE_KIND_FIXTURE

MiB = 1 << 20


def repo_behind_proxy(make_repo, request, counting_proxy, kind: str, seed: dict[str, bytes] | None = None):
    """(server, bucket, proxy, started repo) with the remote "main" at /data, reached through a
    counting proxy; `seed`: objects put on the server first (as another tool would)."""
    server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    for key, data in (seed or {}).items():
        server.put(bucket, key, data)
    proxy = counting_proxy(server)
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data", endpoint_url=proxy.endpoint_url))
    repo.start()
    return server, bucket, proxy, repo


@pytest.mark.parametrize("kind", ["s3", "s3-seaweedfs", "s3-rclone", "gcs", "gcs-fake", "azure"])
def test_appends_send_the_new_bytes_and_download_nothing(make_repo, request, counting_proxy, kind):
    server, bucket, proxy, repo = repo_behind_proxy(make_repo, request, counting_proxy, kind)
    log = repo.data / "events.log"
    want = os.urandom(24 * MiB)
    log.write_bytes(want)
    repo.sync()
    up, down = proxy.bytes_up, proxy.bytes_down
    for _ in range(3):
        piece = os.urandom(MiB)
        with open(log, "ab") as f:
            f.write(piece)
        want += piece
        repo.sync()
        assert server.objects(bucket)["events.log"] == want
    sent, received = proxy.bytes_up - up, proxy.bytes_down - down
    assert received < MiB, received  # each append started from the cache's copy, not a download
    stats = repo.status()["statistics"]
    if kind == "s3-rclone":  # its UploadPartCopy is not a copy: every append went whole
        assert sent > 3 * 24 * MiB and stats["stores"]["main"].get("appends", 0) == 0
    else:
        assert sent < 3.5 * MiB, sent  # 3 MiB appended (not 3 x 25 MiB), plus requests
        assert stats["stores"]["main"]["appends"] == 3
    assert stats["vfs"]["materialized_from_cache"] == 3
    # an edit in place is not an append: the file goes whole, and the object is right
    with open(log, "r+b") as f:
        f.seek(10 * MiB)
        f.write(b"edited")
    want = want[:10 * MiB] + b"edited" + want[10 * MiB + 6:]
    repo.sync()
    assert server.objects(bucket)["events.log"] == want
    assert log.read_bytes() == want


# (not Azure: a blob that another tool wrote in one Put Blob has no committed blocks to reuse,
# so an append to it is sent whole; Put Block From URL would be needed)
@pytest.mark.parametrize(("kind", "read_first"), [("s3-seaweedfs", False), ("s3-seaweedfs", True),
                                                  ("gcs-fake", False)])
def test_an_append_to_an_object_another_tool_wrote_sends_the_new_bytes(make_repo, request, counting_proxy,
                                                                       kind, read_first):
    """An object with no sha256 in its metadata (written by another tool) and appended to
    through the mount sends the appended bytes only (the issue's log started by one program and
    extended through the mount). Read before, it is fetched whole from the cache at the first
    write, and the bytes give its sha256, which makes the upload an append; not read before, on
    S3 nothing is fetched, and the upload is a patch of the object."""
    want = os.urandom(24 * MiB)
    server, bucket, proxy, repo = repo_behind_proxy(make_repo, request, counting_proxy, kind,
                                                    {"foreign.log": want})
    log = repo.data / "foreign.log"
    if read_first:
        assert log.read_bytes() == want
        # the chunks read are admitted to the cache in the background: the append must find them all
        wait_until(lambda: os.getxattr(log, "user.mountd.cached_bytes") == str(len(want)).encode())
    up, down = proxy.bytes_up, proxy.bytes_down
    piece = os.urandom(MiB)
    with open(log, "ab") as f:
        f.write(piece)
    repo.sync()
    assert server.objects(bucket)["foreign.log"] == want + piece
    assert proxy.bytes_up - up < 1.5 * MiB, proxy.bytes_up - up  # not the 25 MiB file again
    stats = repo.status()["statistics"]
    if kind.startswith("s3") and not read_first:
        # nothing on this host: the file held only what was appended, and the upload copied the
        # object's bytes as a patch (vfs/partial.py) without fetching any
        assert proxy.bytes_down - down < MiB, proxy.bytes_down - down
        assert stats["stores"]["main"]["patches"] == 1
    else:  # fetched whole (from the cache when read before), and its sha256 learnt
        assert stats["stores"]["main"]["appends"] == 1
    assert stats["vfs"]["materialized_from_cache"] == int(read_first)
