"""The Docker volume plugin, driven over its unix socket with the HTTP+JSON requests dockerd sends.

The plugin runs as `mountd docker-plugin` in a subprocess; each repository it mounts is a real
mountd daemon on a real FUSE mount. Containers are stood in for by the mount IDs Docker would send
and, where the plugin checks a reference against what is true, by a process in a mount namespace
of its own with the volume bound in (what a container is to the plugin when Docker's state cannot
be read: these tests point DOCKER_HOST at a socket where nothing listens). A real dockerd drives
the plugin in tests/test_docker_real.py.
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

from tests.conftest import PYTHON, REPO, is_mounted, wait_until
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
        self.standins: list[StandIn] = []

    def container(self, source: str, name: str) -> StandIn:
        standin = StandIn(source, self.root, name)
        self.standins.append(standin)
        return standin

    def log(self) -> str:
        return self.log_path.read_text()

    def add_repo(self, name: str) -> Path:
        remote = self.root / f"remote-{name}"
        remote.mkdir()
        (self.config_dir / f"{name}.toml").write_text(
            f'[local]\npath = "{self.root}/local-{name}"\n[cache]\npath = "{self.root}/cache-{name}"\n'
            f'[writeback]\ndelay = "0s"\n[[remote]]\nname = "main"\nurl = "file://{remote}"\n')
        return remote

    def start(self, env: dict[str, str] | None = None) -> None:
        # no Docker to read; a reference nobody backs is dropped 1 s after its Mount
        env = {"DOCKER_HOST": f"unix://{self.root}/no-docker.sock",
               "MOUNTD_DOCKER_PLUGIN_TIMING": "grace=1,linger=0.3,tick=0.2", **(env or {})}
        read_fd, write_fd = os.pipe()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "mountd", "docker-plugin", "--socket", str(self.socket), "--config-dir",
                 str(self.config_dir), "--state-dir", str(self.state_dir), "--log-level", "DEBUG"],
                stdout=logf, stderr=logf, pass_fds=(write_fd,), cwd=REPO,
                env={**os.environ, **env, "MOUNTD_READY_FD": str(write_fd)})
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
                subprocess.run([PYTHON, "-m", "mountd", "umount", str(mp), "--timeout", "5"],
                               capture_output=True,
                               timeout=60)
            if is_mounted(mp):
                subprocess.run(["umount", "-l", str(mp)], capture_output=True)


class StandIn:
    """A container as the plugin sees one: a process in a mount namespace of its own that has the
    volume's directory bound in."""

    def __init__(self, source: str, root: Path, name: str) -> None:
        target = root / f"standin-{name}"
        target.mkdir()
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$2" && echo ready && exec sleep 600', "sh", source, str(target)],
            stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def plugin(tmp_path) -> Iterator[Plugin]:
    p = Plugin(tmp_path)
    yield p
    for standin in p.standins:
        standin.stop()
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
    # idempotent
    plugin.ok("VolumeDriver.Create", {"Name": "models", "Opts": {"repo": "art", "path": "models"}})
    plugin.ok("VolumeDriver.Create", {"Name": "whole", "Opts": {"repo": "art"}})
    repo_mp = str(plugin.state_dir / "mounts" / "art")
    # the path a volume has when mounted, also before (`docker inspect` of a stopped container shows it)
    assert plugin.ok("VolumeDriver.List")["Volumes"] == [
        {"Name": "models", "Mountpoint": repo_mp + "/models"}, {"Name": "whole", "Mountpoint": repo_mp}]
    assert plugin.ok("VolumeDriver.Path", {"Name": "models"})["Mountpoint"] == repo_mp + "/models"

    first = plugin.ok("VolumeDriver.Mount", {"Name": "models", "ID": "c1"})["Mountpoint"]
    assert first == repo_mp + "/models" and is_mounted(Path(repo_mp))
    assert Path(first, "bert.bin").read_bytes() == b"bert" * 1000
    second = plugin.ok("VolumeDriver.Mount", {"Name": "models", "ID": "c2"})["Mountpoint"]
    whole = plugin.ok("VolumeDriver.Mount", {"Name": "whole", "ID": "c3"})["Mountpoint"]
    assert second == first and whole == repo_mp
    assert mounts_at(repo_mp) == 1, "one repository, one mount, however many containers"
    c1, c2, c3 = (plugin.container(path, name)
                  for path, name in ((first, "c1"), (second, "c2"), (whole, "c3")))
    got = plugin.ok("VolumeDriver.Get", {"Name": "models"})["Volume"]
    assert got == {"Name": "models", "Mountpoint": first,
                   "Status": {"repo": "art", "path": "/models", "in_use_by": ["mount ID c1", "mount ID c2"],
                              "mount_ids": ["c1", "c2"], "mounted": True, "pending_uploads": 0}}
    assert "in use by 2 mount(s): mount ID c1, mount ID c2" in plugin.err("VolumeDriver.Remove",
                                                                          {"Name": "models"})

    Path(first, "out.txt").write_text("from container c1\n")
    c1.stop()
    c3.stop()
    plugin.ok("VolumeDriver.Unmount", {"Name": "models", "ID": "c1"})
    plugin.ok("VolumeDriver.Unmount", {"Name": "whole", "ID": "c3"})
    assert Path(second, "out.txt").read_text() == "from container c1\n"
    notify.wait_for(lambda f: f == ["STATUS=2 volumes, 1 repositories in use"])
    # the repository daemon the plugin started must not have spoken to the plugin's systemd socket
    assert notify.senders == {plugin.proc.pid}, notify.senders
    notify.close()

    # the plugin restarts (an upgrade) while c2 runs: it remembers volumes and references, and c2's
    # reference, older than the grace, stays: a namespace still has the volume bound in
    plugin.stop()
    assert is_mounted(Path(repo_mp))
    plugin.start()
    # (Remove checks the references at once, as the janitor does every tick)
    assert "in use by 1 mount(s): mount ID c2" in plugin.err("VolumeDriver.Remove", {"Name": "models"})
    assert is_mounted(Path(repo_mp))

    c2.stop()
    plugin.ok("VolumeDriver.Unmount", {"Name": "models", "ID": "c2"})
    # Unmount answers at once; the janitor unmounts an unused repository once nothing is pending
    wait_unmounted(Path(repo_mp))
    assert (remote / "models" / "out.txt").read_text() == "from container c1\n"
    assert "reconciled" not in plugin.log(), "every reference here was given back by Unmount"

    plugin.ok("VolumeDriver.Remove", {"Name": "models"})
    plugin.ok("VolumeDriver.Remove", {"Name": "whole"})
    assert plugin.ok("VolumeDriver.List")["Volumes"] == []
    assert (remote / "models" / "bert.bin").exists(), "removing a volume never deletes data"


@pytest.mark.slow
def test_a_reference_nothing_backs_is_reconciled(plugin):
    """A Mount whose Unmount never came (the plugin was down when the container stopped): once no
    namespace has the volume bound in, the janitor drops it with a log line and unmounts; Remove
    does not wait for the janitor."""
    plugin.add_repo("art")
    plugin.start()
    plugin.ok("VolumeDriver.Create", {"Name": "v", "Opts": {"repo": "art", "path": "d"}})
    mp = plugin.ok("VolumeDriver.Mount", {"Name": "v", "ID": "lost"})["Mountpoint"]
    standin = plugin.container(mp, "lost")
    assert "in use by 1 mount(s)" in plugin.err("VolumeDriver.Remove", {"Name": "v"})
    standin.stop()
    wait_until(lambda: "reconciled: dropped mount ID lost" in plugin.log(), timeout=20)
    assert "no container has /d mounted" in plugin.log()
    wait_unmounted(plugin.state_dir / "mounts" / "art")

    # at Remove, Docker has no container on the volume: a reference nobody backs goes at once
    plugin.ok("VolumeDriver.Mount", {"Name": "v", "ID": "lost2"})
    plugin.ok("VolumeDriver.Remove", {"Name": "v"})
    assert "dropped mount ID lost2" in plugin.log()


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
    assert plugin.ok("VolumeDriver.Get", {"Name": "busyvol"})["Volume"]["Status"]["mount_ids"] == []
