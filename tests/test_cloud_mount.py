"""End-to-end mounts of real object-store servers on 127.0.0.1 (moto, rclone serve s3, Azurite, GCS emulator).

Each test mounts a repository whose remotes are buckets on servers started by the test suite,
drives it with syscalls, and checks the buckets directly through the SDKs.
"""

from __future__ import annotations

import hashlib
import os

from tests.servers import S3Server


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
