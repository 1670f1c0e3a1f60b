"""Shared fixtures: a real mountd daemon in a subprocess, mounted on a temporary directory.

`MountedRepo` starts `python -m mountd mount CONFIG MP --foreground` and waits for the daemon to
say READY on a pipe (the same mechanism the background mode uses), so no test sleeps. After each
test its daemon log is checked: a traceback or an unexpected ERROR line fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mountd.vfs.namespace import HIDDEN_AT_ROOT
from tests.servers import (  # noqa: F401
    azurite_server,
    cloud_remote,
    counting_proxy,
    gcs_fake_server,
    gcs_server,
    parametrize_remote_kinds,
    remote_kind,
    s3_persistent_server,
    s3_seaweedfs_server,
    s3_server,
)

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def mountd_cmd(*args: str, check: bool = True, timeout: float = 120,
               **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([PYTHON, "-m", "mountd", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"mountd {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def remote_files(root) -> dict[str, bytes]:
    """Every file under a remote, by relative path: a file:// remote's directory, or a bucket view
    with `files()`. Upload temporaries cut by a kill -9 are left out: they are invisible, like an
    open multipart upload; so are the change log of the hosts and the directory indexes
    (`.mountd-log/`, `.mountd-attrs/`)."""
    if hasattr(root, "files"):
        hidden = tuple(d + "/" for d in HIDDEN_AT_ROOT)
        return {k: v for k, v in root.files().items() if not k.startswith(hidden)}
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if os.path.samefile(dirpath, root):  # the hosts' change log and directory indexes: not files
            dirs[:] = [d for d in dirs if d not in HIDDEN_AT_ROOT]  # anyone wrote (docs/multihost.md)
        for f in files:
            if f.startswith(".mountd-tmp-"):
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fp:
                out[os.path.relpath(p, root)] = fp.read()
    return out


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.05) -> None:
    """Poll a condition that no event announces (objects appearing in a remote)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


class MountedRepo:
    def __init__(self, root: Path, *, remote_url: str | None = None, extra_toml: str = "", delay: str = "0s",
                 remote_toml: str | None = None, writeback_toml: str = "", local_toml: str = "",
                 local_path: Path | None = None, listing_ttl: str = "1h") -> None:
        self.root = root
        self.mp = root / "mnt"
        self.remote_dir = root / "remote"
        self.local = local_path or root / "local"
        self.cache = root / "cache"
        self.log_path = root / "daemon.log"
        for p in (self.mp, self.remote_dir):
            p.mkdir(parents=True, exist_ok=True)
        self.remote_url = remote_url or f"file://{self.remote_dir}"
        self.config = root / "repo.toml"
        remotes = remote_toml or textwrap.dedent(f"""
            [[remote]]
            name = "main"
            url = "{self.remote_url}"
            at = "/data"
            """)
        self.config.write_text(textwrap.dedent(f"""
            name = "test"
            [local]
            path = "{self.local}"
            {local_toml}
            [cache]
            path = "{self.cache}"
            [writeback]
            delay = "{delay}"
            retry_initial = "0.2s"
            retry_max = "2s"
            drain_timeout = "60s"
            {writeback_toml}
            [mount]
            listing_ttl = "{listing_ttl}"
            """) + textwrap.dedent(extra_toml) + remotes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_log_errors: list[str] = []

    @property
    def data(self) -> Path:
        return self.mp / "data"

    def start(self, *extra: str, timeout: float = 60) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "MOUNTD_READY_FD": str(write_fd)}
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mountd", "mount", str(self.config), str(self.mp), "--foreground",
             "--log-level", "DEBUG", *extra],
            stdout=logf, stderr=logf, pass_fds=(write_fd,), env=env, cwd=REPO)
        logf.close()
        os.close(write_fd)
        deadline = time.monotonic() + timeout
        with os.fdopen(read_fd, "rb") as r:
            os.set_blocking(r.fileno(), True)
            line = r.readline().decode().strip()
        if line != "READY":
            self.proc.wait(timeout=max(1, deadline - time.monotonic()))
            raise AssertionError(f"mount did not become ready: {line!r}\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = mountd_cmd("umount", str(self.mp), timeout=timeout)
        assert self.proc is not None
        self.proc.wait(timeout=timeout)
        assert not is_mounted(self.mp)
        return r

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)
        self.proc = None

    def sync(self, path: Path | None = None, timeout: float = 120) -> None:
        mountd_cmd("sync", str(path or self.mp), "--wait", "--timeout", str(timeout), timeout=timeout + 30)

    def status(self) -> dict:
        import json

        return json.loads(mountd_cmd("status", str(self.mp), "--json").stdout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if is_mounted(self.mp):
                mountd_cmd("umount", str(self.mp), "--timeout", "5", check=False, timeout=60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)

    def unexpected_log_errors(self) -> list[str]:
        bad = []
        for line in self.log().splitlines():
            if "Traceback" in line or " ERROR " in line or "failed unexpectedly" in line:
                if not any(e in line for e in self.expected_log_errors):
                    bad.append(line)
        return bad


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers",
                            "remote_kinds(*kinds): run this repo test only on these kinds of remote")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The in-process tier (tests/inprocess: no kernel, no root) runs first; the order is kept otherwise."""
    inprocess = REPO / "tests" / "inprocess"
    items.sort(key=lambda item: inprocess not in item.path.parents)  # a stable sort


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_remote_kinds(metafunc)  # modules with REMOTE_KINDS run repo tests on S3, Azure, GCS too


@pytest.fixture
def make_repo(tmp_path: Path, request: pytest.FixtureRequest, remote_kind: str) -> Iterator:  # noqa: F811
    repos: list[MountedRepo] = []

    def make(name: str = "repo", **kw) -> MountedRepo:
        bucket = None
        if remote_kind != "file" and "remote_url" not in kw and "remote_toml" not in kw:
            kw["remote_toml"], bucket = cloud_remote(request, remote_kind)
        repo = MountedRepo(tmp_path / name, **kw)
        if bucket is not None:
            repo.remote_dir = bucket  # type: ignore[assignment]  # pathlib-like view of the bucket
        repos.append(repo)
        return repo

    yield make
    for repo in repos:
        repo.cleanup()
    for repo in repos:
        bad = repo.unexpected_log_errors()
        assert not bad, "daemon logged errors:\n" + "\n".join(bad[:20])


@pytest.fixture
def repo(make_repo) -> MountedRepo:
    r = make_repo()
    r.start()
    return r
