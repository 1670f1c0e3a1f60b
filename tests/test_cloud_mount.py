"""End-to-end mounts of real object-store servers on 127.0.0.1 (moto, rclone serve s3, Azurite, GCS emulator).

Each test mounts a repository whose remotes are buckets on servers started by the test suite,
drives it with syscalls, and checks the buckets directly through the SDKs.
"""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import REMOTE_KIND_FIXTURE, S3Server


def test_s3_mount_write_upload_read_back_list(make_repo, s3_server: S3Server):
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "models/seeded.bin", b"seeded by the SDK")
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    assert sorted(os.listdir(repo.data)) == ["models"]
    assert (repo.data / "models" / "seeded.bin").read_bytes() == b"seeded by the SDK"
    blob = os.urandom(3 << 20)
    (repo.data / "models" / "ckpt.pt").write_bytes(blob)
    (repo.data / "empty-dir").mkdir()
    repo.sync()
    objects = s3_server.objects(bucket)
    assert objects["models/ckpt.pt"] == blob
    assert objects["empty-dir/"] == b""
    head = s3_server.client().head_object(Bucket=bucket, Key="models/ckpt.pt")
    assert head["Metadata"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert sorted(os.listdir(repo.data / "models")) == ["ckpt.pt", "seeded.bin"]
    repo.stop()
    # a fresh local tier: everything comes back from the bucket
    import shutil

    shutil.rmtree(repo.local)
    shutil.rmtree(repo.cache, ignore_errors=True)
    repo.start()
    assert sorted(os.listdir(repo.data)) == ["empty-dir", "models"]
    with open(repo.data / "models" / "ckpt.pt", "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == blob[1 << 20 : (1 << 20) + 4096]
    assert hashlib.sha256((repo.data / "models" / "ckpt.pt").read_bytes()).digest() == hashlib.sha256(blob).digest()


AWKWARD = {
    "a": b"file a",  # and a/b below: the directory wins, the file is skipped
    "a/b": b"below a",
    "//x": b"empty segments",
    "../x": b"dot-dot",
    "n" * 300: b"name over 255 bytes",
    "ok/./y": b"dot segment",
    "fine.txt": b"fine",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_awkward_keys_and_a_large_directory(make_repo, request, kind):
    """Keys that cannot be POSIX names are skipped with a warning; 2,500 keys list across pages."""
    server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    big = [f"big/k{i:05d}" for i in range(2_500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: server.put(bucket, k, b"x"), big))
    refused = []
    for key, data in AWKWARD.items():  # seeded where the backend allows it (Azure refuses some names)
        try:
            server.put(bucket, key, data)
        except Exception:
            refused.append(key)
    assert set(refused) <= {"//x", "../x", "ok/./y"}, refused
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data"))
    repo.start()
    top = ["a", "big", "fine.txt", *(["ok"] if "ok/./y" not in refused else [])]
    assert sorted(os.listdir(repo.data)) == top
    assert (repo.data / "a" / "b").read_bytes() == b"below a"
    assert (repo.data / "fine.txt").read_bytes() == b"fine"
    if "ok/./y" not in refused:
        assert os.listdir(repo.data / "ok") == []
    names = os.listdir(repo.data / "big")
    assert len(names) == 2_500 and sorted(names) == [k.split("/")[1] for k in big]
    log = repo.log()
    assert "skipping key" in log
    assert "n" * 300 in log
    assert repo.proc is not None and repo.proc.poll() is None  # never crashed
    assert sorted(os.listdir(repo.data)) == top  # a second listing agrees


def test_several_clouds_in_one_mount_with_a_read_only_remote(make_repo, s3_server, azurite_server, gcs_server):
    s3_bucket, az_bucket, gcs_bucket = s3_server.new_bucket(), azurite_server.new_bucket(), gcs_server.new_bucket()
    gcs_server.put(gcs_bucket, "datasets/val.csv", b"id,label\n1,cat\n")
    remotes = (s3_server.remote_toml("models", s3_bucket, "/models")
               + azurite_server.remote_toml("runs", az_bucket, "/runs", prefix="team")
               + gcs_server.remote_toml("data", gcs_bucket, "/datasets", prefix="datasets", read_only=True))
    repo = make_repo(remote_toml=remotes)
    repo.start()
    assert sorted(os.listdir(repo.mp)) == ["datasets", "models", "runs"]
    (repo.mp / "models" / "m.pt").write_bytes(b"weights")
    (repo.mp / "runs" / "r1.log").write_bytes(b"loss=0.1")
    assert (repo.mp / "datasets" / "val.csv").read_bytes() == b"id,label\n1,cat\n"
    for attempt in (lambda: (repo.mp / "datasets" / "new.csv").write_bytes(b"x"),
                    lambda: (repo.mp / "datasets" / "val.csv").unlink(),
                    lambda: os.mkdir(repo.mp / "datasets" / "d"),
                    lambda: open(repo.mp / "datasets" / "val.csv", "r+b")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    repo.sync()
    assert s3_server.objects(s3_bucket) == {"m.pt": b"weights"}
    assert azurite_server.objects(az_bucket) == {"team/r1.log": b"loss=0.1"}
    assert gcs_server.objects(gcs_bucket) == {"datasets/val.csv": b"id,label\n1,cat\n"}
    st = repo.status()
    assert {r["name"]: r["read_only"] for r in st["remotes"]} == {"models": False, "runs": False, "data": True}
