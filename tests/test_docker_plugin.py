"""The Docker volume plugin, driven over its unix socket with the HTTP+JSON requests dockerd sends.

The plugin runs as `mountd docker-plugin` in a subprocess; each repository it mounts is a real
mountd daemon on a real FUSE mount, and containers are stood in for by the IDs Docker would send.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, is_mounted
from tests.test_systemd import NotifyListener


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=120)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Plugin:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "run/docker/plugins/mountd.sock"
        self.config_dir = root / "etc/mountd"
        self.state_dir = root / "state"
        self.config_dir.mkdir(parents=True)
        self.log_path = root / "plugin.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def add_repo(self, name: str) -> Path:
        remote = self.root / f"remote-{name}"
        remote.mkdir()
        (self.config_dir / f"{name}.toml").write_text(
            f'[local]\npath = "{self.root}/local-{name}"\n[cache]\npath = "{self.root}/cache-{name}"\n'
            f'[writeback]\ndelay = "0s"\n[[remote]]\nname = "main"\nurl = "file://{remote}"\n')
        return remote

    def start(self, env: dict[str, str] | None = None) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "mountd", "docker-plugin", "--socket", str(self.socket), "--config-dir",
                 str(self.config_dir), "--state-dir", str(self.state_dir), "--log-level", "DEBUG"],
                stdout=logf, stderr=logf, pass_fds=(write_fd,), cwd=REPO,
                env={**os.environ, **(env or {}), "MOUNTD_READY_FD": str(write_fd)})
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            assert r.readline() == b"READY\n", self.log_path.read_text()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0
        self.proc = None

    def call(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        conn = UnixHTTPConnection(self.socket)
        try:
            data = json.dumps(body or {}).encode()
            conn.request("POST", f"/{method}", body=data,
                         headers={"Accept": "application/vnd.docker.plugins.v1.2+json",
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.getheader("Content-Type") == "application/vnd.docker.plugins.v1+json"
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def ok(self, method: str, body: dict | None = None) -> dict:
        status, answer = self.call(method, body)
        assert status == 200 and not answer.get("Err"), (method, status, answer)
        return answer

    def err(self, method: str, body: dict | None = None) -> str:
        status, answer = self.call(method, body)
        assert status != 200 and answer.get("Err"), (method, status, answer)
        return answer["Err"]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        mounts = self.state_dir / "mounts"
        for mp in mounts.iterdir() if mounts.exists() else ():
            if is_mounted(mp):
                subprocess.run([PYTHON, "-m", "mountd", "umount", str(mp), "--timeout", "5"], capture_output=True,
                               timeout=60)
            if is_mounted(mp):
                subprocess.run(["umount", "-l", str(mp)], capture_output=True)


@pytest.fixture
def plugin(tmp_path) -> Iterator[Plugin]:
    p = Plugin(tmp_path)
    yield p
    p.cleanup()
    logs = [p.log_path, *tmp_path.glob("local-*/mountd.log")]
    for log in logs:
        text = log.read_text() if log.exists() else ""
        assert "Traceback" not in text and " ERROR " not in text, f"{log}:\n{text[-3000:]}"


def mounts_at(path: str) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == path)


def wait_unmounted(path: Path, timeout: float = 30) -> None:
    """`mountd umount` returns once the kernel mount is gone; this only guards against a slow kernel."""
    deadline = time.monotonic() + timeout
    while is_mounted(path):
        assert time.monotonic() < deadline, f"{path} still mounted"
        time.sleep(0.05)


@pytest.mark.slow
def test_volume_lifecycle_two_containers(plugin):
    remote = plugin.add_repo("art")
    (remote / "models").mkdir()
    (remote / "models" / "bert.bin").write_bytes(b"bert" * 1000)
    # as under mountd-docker-plugin.service (Type=notify)
    notify = NotifyListener(plugin.root / "notify.sock")
    plugin.start(env={"NOTIFY_SOCKET": str(notify.path)})
    notify.wait_for(lambda f: "READY=1" in f, timeout=5)

    assert plugin.ok("Plugin.Activate") == {"Implements": ["VolumeDriver"]}
    assert plugin.ok("VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}
    plugin.ok("VolumeDriver.Create", {"Name": "models", "Opts": {"repo": "art", "path": "models"}})
    plugin.ok("VolumeDriver.Create", {"Name": "models", "Opts": {"repo": "art", "path": "models"}})  # idempotent
    plugin.ok("VolumeDriver.Create", {"Name": "whole", "Opts": {"repo": "art"}})
    assert plugin.ok("VolumeDriver.List")["Volumes"] == [{"Name": "models", "Mountpoint": ""},
                                                        {"Name": "whole", "Mountpoint": ""}]
    assert plugin.ok("VolumeDriver.Path", {"Name": "models"})["Mountpoint"] == ""

    first = plugin.ok("VolumeDriver.Mount", {"Name": "models", "ID": "c1"})["Mountpoint"]
    repo_mp = str(plugin.state_dir / "mounts" / "art")
    assert first == repo_mp + "/models" and is_mounted(Path(repo_mp))
    assert Path(first, "bert.bin").read_bytes() == b"bert" * 1000
    second = plugin.ok("VolumeDriver.Mount", {"Name": "models", "ID": "c2"})["Mountpoint"]
    whole = plugin.ok("VolumeDriver.Mount", {"Name": "whole", "ID": "c3"})["Mountpoint"]
    assert second == first and whole == repo_mp
    assert mounts_at(repo_mp) == 1, "one repository, one mount, however many containers"
    got = plugin.ok("VolumeDriver.Get", {"Name": "models"})["Volume"]
    assert got == {"Name": "models", "Mountpoint": first,
                   "Status": {"repo": "art", "path": "/models", "containers": ["c1", "c2"], "mounted": True}}
    assert "in use by 2 container(s)" in plugin.err("VolumeDriver.Remove", {"Name": "models"})

    Path(first, "out.txt").write_text("from container c1\n")
    plugin.ok("VolumeDriver.Unmount", {"Name": "models", "ID": "c1"})
    plugin.ok("VolumeDriver.Unmount", {"Name": "whole", "ID": "c3"})
    assert is_mounted(Path(repo_mp)), "c2 still uses it"
    assert Path(second, "out.txt").read_text() == "from container c1\n"
    notify.wait_for(lambda f: f == ["STATUS=2 volumes, 1 repositories mounted"])
    # the repository daemon the plugin started must not have spoken to the plugin's systemd socket
    assert notify.senders == {plugin.proc.pid}, notify.senders
    notify.close()

    # the plugin restarts (an upgrade) while c2 runs: it remembers volumes and references
    plugin.stop()
    assert is_mounted(Path(repo_mp))
    plugin.start()
    assert plugin.ok("VolumeDriver.Path", {"Name": "models"})["Mountpoint"] == first

    plugin.ok("VolumeDriver.Unmount", {"Name": "models", "ID": "c2"})
    wait_unmounted(Path(repo_mp))
    # unmounting drained the write-back: the file is in the repository's remote
    assert (remote / "models" / "out.txt").read_text() == "from container c1\n"
    assert plugin.ok("VolumeDriver.Path", {"Name": "models"})["Mountpoint"] == ""

    plugin.ok("VolumeDriver.Remove", {"Name": "models"})
    plugin.ok("VolumeDriver.Remove", {"Name": "whole"})
    assert plugin.ok("VolumeDriver.List")["Volumes"] == []
    assert (remote / "models" / "bert.bin").exists(), "removing a volume never deletes data"


def test_errors_for_unknown_volumes_and_bad_options(plugin):
    plugin.add_repo("art")
    plugin.start()
    for method in ("VolumeDriver.Mount", "VolumeDriver.Unmount", "VolumeDriver.Path", "VolumeDriver.Get",
                   "VolumeDriver.Remove"):
        assert "no such mountd volume: 'ghost'" in plugin.err(method, {"Name": "ghost", "ID": "c1"}), method
    assert "unknown option 'compression'" in plugin.err(
        "VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "art", "compression": "zstd"}})
    assert "needs -o repo=NAME" in plugin.err("VolumeDriver.Create", {"Name": "v", "Opts": None})
    assert "no such config file" in plugin.err("VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "nope"}})
    assert "invalid path '../etc'" in plugin.err("VolumeDriver.Create",
                                                 {"Name": "v", "Opts": {"repo": "art", "path": "../etc"}})
    assert "invalid repo name" in plugin.err("VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "../x"}})
    plugin.ok("VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "art", "path": "a"}})
    assert "already exists with repo=art path=a" in plugin.err(
        "VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "art", "path": "b"}})
    assert plugin.call("VolumeDriver.Frobnicate")[0] == 404
    (plugin.config_dir / "broken.toml").write_text("[[remote]]\nname = 'x'\n")
    assert "remote[0].url" in plugin.err("VolumeDriver.Create", {"Name": "b", "Opts": {"repo": "broken"}})
    # a repository that cannot mount: the daemon's one-line reason comes back to Docker
    plugin.add_repo("busy")
    plugin.ok("VolumeDriver.Create", {"Name": "busyvol", "Opts": {"repo": "busy"}})
    (plugin.state_dir / "mounts" / "busy").mkdir(parents=True)
    (plugin.state_dir / "mounts" / "busy" / "stray").write_text("x")
    assert "is not empty" in plugin.err("VolumeDriver.Mount", {"Name": "busyvol", "ID": "c1"})
    assert plugin.ok("VolumeDriver.Get", {"Name": "busyvol"})["Volume"]["Status"]["containers"] == []
