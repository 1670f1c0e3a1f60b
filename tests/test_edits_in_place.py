"""An edit in place of a large object through the mount, on real S3 servers: only the chunk the
write reaches is downloaded, and only that chunk is sent (the rest of the new object is copied
server-side with UploadPartCopy, pinned to the version edited). Bytes are counted at a proxy in
front of the server. `rclone serve s3` takes an UploadPartCopy for an empty part upload, and a blob
another tool wrote in one Put Blob has no blocks for Azure to reuse: there the file's missing
chunks are fetched and it is sent whole, never a wrong object. (Azure blobs mountd wrote are
patched: tests/test_appends.py.)"""

from __future__ import annotations

import os

import pytest

from tests.test_appends import repo_behind_proxy

MiB = 1 << 20


@pytest.mark.parametrize("kind", ["s3", "s3-seaweedfs", "s3-rclone", "azure"])
def test_an_edit_in_the_middle_of_a_large_object_moves_one_part_each_way(make_repo, request, counting_proxy,
                                                                         kind):
    want = bytearray(os.urandom(40 * MiB))  # parts of 16 MiB: [0, 16), [16, 32), [32, 40)
    server, bucket, proxy, repo = repo_behind_proxy(make_repo, request, counting_proxy, kind,
                                                    {"weights.bin": bytes(want)})
    path = repo.data / "weights.bin"
    down = proxy.bytes_down
    with open(path, "r+b") as f:
        f.seek(20 * MiB)
        f.write(b"E" * 4096)
    received = proxy.bytes_down - down
    want[20 * MiB:20 * MiB + 4096] = b"E" * 4096
    with open(path, "rb") as f:  # the written chunk from this host, the others from the object
        assert f.read(4096) == want[:4096]
        f.seek(20 * MiB - 2048)
        assert f.read(4096) == want[20 * MiB - 2048:20 * MiB + 2048]
    up = proxy.bytes_up
    repo.sync()
    assert server.objects(bucket)["weights.bin"] == want
    sent = proxy.bytes_up - up
    stats = repo.status()["statistics"]["stores"]["main"]
    if kind in ("s3-rclone", "azure"):
        # no part copies on rclone serve s3; another tool's blob (one Put Blob) has no blocks to
        # commit again: the missing parts fetched, and the file sent whole
        assert stats.get("patches", 0) == 0 and sent > 40 * MiB
    else:
        assert stats["patches"] == 1
        assert received < 16.5 * MiB, received  # the chunk the write reached
        assert sent < 16.5 * MiB, sent  # that chunk again; the other 24 MiB copied by the server
    assert path.read_bytes() == want
