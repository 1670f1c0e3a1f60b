"""The things benchmarked: a plain local directory, mountd, `rclone mount` and s3fs-fuse.

Each target owns its mountpoint, daemon process, cache directory and bucket under the bench work
directory, and nothing else. All mounts reach the same S3 server (or the counting proxy in front of
it); each has a bucket of its own, seeded with the same files. Write-back delays are 0 for mountd
and rclone so that "time until the object is on the server" measures the upload, not a timer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.server import ACCESS_KEY, CLIENT_ENV, SECRET_KEY, S3Server, free_port
from bench.system import fusermount_lazy, is_mounted, wait_until

REPO = Path(__file__).resolve().parent.parent


class Target:
    name = ""
    is_mount = True

    def __init__(self, work: Path, server: S3Server) -> None:
        self.work = work
        self.server = server
        self.bucket = f"bench-{self.name}"
        self.root = work / "mnt" / self.name
        self.state = work / "state" / self.name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "logs" / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, endpoint_url: str | None = None) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def clean(self) -> None:
        """Forget everything cached (called while stopped), so the next read comes from the server."""
        shutil.rmtree(self.state, ignore_errors=True)

    def wait_drained(self, timeout: float = 900) -> None:
        """Return once every write made through the mount is on the server."""

    def wait_settled(self) -> None:
        """Return once the work a read left behind in the background is done (mountd: chunk writes
        and merges of the cache); the peers do theirs while they read."""

    def remount_clean(self, endpoint_url: str | None = None) -> None:
        self.stop()
        self.clean()
        self.start(endpoint_url)

    def _spawn(self, argv: list[str], extra_env: dict[str, str] | None = None,
               **kw) -> subprocess.Popen[bytes]:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env={**os.environ, **CLIENT_ENV, **(extra_env or {})}, **kw)

    def _wait_mounted(self) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before mounting; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            return is_mounted(self.root)

        wait_until(up, 60, f"{self.name} mount")

    def _unmount(self, cmd: list[str]) -> None:
        for _ in range(50):
            if not is_mounted(self.root) or subprocess.run(cmd, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)  # EBUSY right after a program closed its last file
        else:
            fusermount_lazy(self.root)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class LocalTarget(Target):
    """A plain directory on the same disk: the limit every mount is compared with."""

    name = "local"
    is_mount = False

    def __init__(self, work: Path, server: S3Server) -> None:
        super().__init__(work, server)
        self.root = work / "local"

    def start(self, endpoint_url: str | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        pass

    def clean(self) -> None:
        pass


class MountdTarget(Target):
    name = "mountd"

    def __init__(self, work: Path, server: S3Server, src: Path = REPO) -> None:
        super().__init__(work, server)
        self.python = sys.executable
        self.config = work / "state" / "mountd.toml"
        self.src = src.resolve()  # the directory holding the `mountd` package to run (an exported commit)
        self.env = {"PYTHONPATH": str(self.src)} if self.src != REPO else {}

    def _write_config(self, endpoint_url: str) -> None:
        opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in self.server.mount_options(endpoint_url).items())
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""\
name = "bench"
[local]
path = "{self.state}/local"
[cache]
path = "{self.state}/cache"
{os.environ.get("BENCH_MOUNTD_CACHE", "")}
[writeback]
delay = "0s"
drain_timeout = "15m"
[[remote]]
name = "s3"
url = "s3://{self.bucket}"
at = "/"
read_whole = ["*.safetensors"]
options = {{ {opts} }}
""")

    def start(self, endpoint_url: str | None = None) -> None:
        self._write_config(endpoint_url or self.server.endpoint_url)
        read_fd, write_fd = os.pipe()
        try:
            self.proc = self._spawn([self.python, "-m", "mountd", "mount", str(self.config), str(self.root),
                                     "--foreground", "--log-level", "INFO"],
                                    extra_env={"MOUNTD_READY_FD": str(write_fd), **self.env},
                                    pass_fds=(write_fd,), cwd=self.src)
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            line = r.readline().decode(errors="replace").strip()
        if line != "READY":
            raise RuntimeError(f"mountd did not mount ({line or 'exited'}); "
                               f"see {self.log_path}:\n{self.log_tail()}")

    def _mountd(self, *args: str, timeout: float = 900) -> None:
        r = subprocess.run([self.python, "-m", "mountd", *args], capture_output=True, text=True,
                           timeout=timeout + 60, cwd=self.src, env={**os.environ, **CLIENT_ENV, **self.env})
        if r.returncode:
            raise RuntimeError(f"mountd {' '.join(args)} failed: {r.stderr.strip()[-2000:]}")

    def wait_drained(self, timeout: float = 900) -> None:
        self._mountd("sync", str(self.root), "--wait", "--timeout", f"{timeout:.0f}s", timeout=timeout)

    def wait_settled(self) -> None:
        self._mountd("cache", "stats", str(self.root), "--wait", timeout=600)

    def stop(self) -> None:
        if self.proc is None:
            return
        if is_mounted(self.root):
            self._mountd("umount", str(self.root), "--timeout", "900s")
        self._unmount(["fusermount3", "-u", str(self.root)])


class RcloneTarget(Target):
    name = "rclone"

    def __init__(self, work: Path, server: S3Server) -> None:
        super().__init__(work, server)
        self.rc_port = free_port()
        self.conf = work / "state" / "rclone.conf"

    def start(self, endpoint_url: str | None = None) -> None:
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"[srv]\ntype = s3\nprovider = Other\n"
                             f"endpoint = {endpoint_url or self.server.endpoint_url}\n"
                             f"access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n"
                             f"region = us-east-1\n")
        self.proc = self._spawn([
            self.server.rclone, "mount", f"srv:{self.bucket}", str(self.root), "--config", str(self.conf),
            "--vfs-cache-mode", "full", "--vfs-cache-max-size", "20G", "--vfs-write-back", "0s",
            "--cache-dir", str(self.state / "cache"), "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}",
            "--rc-no-auth", "--log-level", "NOTICE"])
        self._wait_mounted()

    def _pending_uploads(self) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.rc_port}/vfs/stats", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            st = json.load(r)["diskCache"]
        return int(st["uploadsInProgress"]) + int(st["uploadsQueued"])

    def wait_drained(self, timeout: float = 900) -> None:
        wait_until(lambda: self._pending_uploads() == 0, timeout, "rclone uploads", interval=0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self._unmount(["fusermount3", "-u", str(self.root)])


class S3fsTarget(Target):
    """s3fs-fuse with its defaults (no local data cache; uploads happen inside close), plus libfuse's
    `hard_remove`: the kernel sends RELEASE after `close` returns, and an unlink that came before
    s3fs-fuse saw it was turned into a rename to `.fuse_hidden…`, which s3fs-fuse does by uploading
    the file again; in a quick run that upload failed and the harness's own cleanup got EIO."""

    name = "s3fs"

    def start(self, endpoint_url: str | None = None) -> None:
        passwd = self.work / "state" / "s3fs.passwd"
        passwd.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, f"{ACCESS_KEY}:{SECRET_KEY}\n".encode())
        os.close(fd)
        self.proc = self._spawn(["s3fs", self.bucket, str(self.root), "-f",
                                 "-o", f"url={endpoint_url or self.server.endpoint_url}",
                                 "-o", "use_path_request_style", "-o", "hard_remove",
                                 "-o", f"passwd_file={passwd}", "-o", "dbglevel=warn"])
        self._wait_mounted()

    def stop(self) -> None:
        if self.proc is not None:
            self._unmount(["fusermount3", "-u", str(self.root)])


TARGETS = {t.name: t for t in (LocalTarget, MountdTarget, RcloneTarget, S3fsTarget)}
