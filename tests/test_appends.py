"""Appends to a large remote file send only the new bytes, and reopening it downloads nothing.

A training log, a metrics file or a TensorBoard event file grows by appends, closed after each.
On S3 and Azure an append fetches nothing (the file holds only what was written: vfs/partial.py),
and the upload is a patch of the object (S3 `UploadPartCopy`, Azure: the blob's committed blocks
again). On GCS, whose `compose` joins whole objects, the file is fetched whole at the first
write, from the cache (after an upload the file's local copy is handed to the cache), and the
upload composes the old object with the new bytes. Either way only what was appended is sent.
Bytes are counted at a proxy in front of the server. `rclone serve s3` takes an `UploadPartCopy`
for an empty part upload: mountd sees that the answer has no copy result and sends the file
whole, never a wrong object.
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
    store = stats["stores"]["main"]
    if kind == "s3-rclone":  # its UploadPartCopy is not a copy: every append went whole
        assert sent > 3 * 24 * MiB and store.get("appends", 0) + store.get("patches", 0) == 0
    else:
        assert sent < 3.5 * MiB, sent  # 3 MiB appended (not 3 x 25 MiB), plus requests
    if kind.startswith("gcs"):  # (compose joins whole objects: the file is fetched whole, from the cache)
        assert store["appends"] == 3 and stats["vfs"]["materialized_from_cache"] == 3
    elif kind != "s3-rclone":  # the file held only the appended bytes: a patch of the object
        assert store["patches"] == 3 and stats["vfs"]["materialized_from_cache"] == 0
    # an edit in the middle: where the store patches, only the part it is in is sent; the object
    # is right everywhere
    up = proxy.bytes_up
    with open(log, "r+b") as f:
        f.seek(10 * MiB)
        f.write(b"edited")
    want = want[:10 * MiB] + b"edited" + want[10 * MiB + 6:]
    repo.sync()
    assert server.objects(bucket)["events.log"] == want
    assert log.read_bytes() == want
    if kind in ("s3", "s3-seaweedfs", "azure"):
        assert proxy.bytes_up - up < 16.5 * MiB, proxy.bytes_up - up  # the first part of 27 MiB


# (not Azure: a blob that another tool wrote in one Put Blob has no committed blocks to reuse,
# so an append to it is sent whole; Put Block From URL would be needed)
@pytest.mark.parametrize(("kind", "read_first"), [("s3-seaweedfs", False), ("s3-seaweedfs", True),
                                                  ("gcs-fake", False)])
def test_an_append_to_an_object_another_tool_wrote_sends_the_new_bytes(make_repo, request, counting_proxy,
                                                                       kind, read_first):
    """An object with no sha256 in its metadata (written by another tool) and appended to
    through the mount sends the appended bytes only (the issue's log started by one program and
    extended through the mount). On S3 nothing is fetched, read before or not, and the upload is a
    patch of the object. On GCS it is fetched whole at the first write (from the cache when read
    before), and the bytes give its sha256, which makes the upload an append."""
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
    if kind.startswith("s3") or read_first:  # (else GCS downloads it to learn its sha256)
        assert proxy.bytes_down - down < MiB, proxy.bytes_down - down
    if kind.startswith("s3"):
        # the file held only what was appended, and the upload copied the object's bytes as a
        # patch (vfs/partial.py) without fetching any
        assert stats["stores"]["main"]["patches"] == 1
        assert stats["vfs"]["materialized_from_cache"] == 0
    else:  # fetched whole (from the cache when read before), and its sha256 learnt
        assert stats["stores"]["main"]["appends"] == 1
        assert stats["vfs"]["materialized_from_cache"] == int(read_first)
