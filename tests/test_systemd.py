"""systemd integration: the sd_notify conversation of a real daemon, and the unit files themselves.

The daemon is started with `NOTIFY_SOCKET` pointing at a datagram socket this test owns, as
systemd would start `mountd@.service`; what it says there is read in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, is_mounted

UNITS = REPO / "systemd"


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting messages as lists of fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # as systemd does: who sent it
        self.sock.bind(str(path))
        self.messages: list[list[str]] = []
        self.senders: set[int] = set()

    def wait_for(self, predicate, timeout: float = 30) -> list[str]:
        """Receive until a message satisfies `predicate`; every message is kept in order."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                raise AssertionError(f"no matching sd_notify message; got {self.messages}") from None
            for level, kind, cred in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    self.senders.add(struct.unpack("3i", cred[:12])[0])
            fields = data.decode().split("\n")
            self.messages.append(fields)
            if predicate(fields):
                return fields

    def first_index(self, prefix: str) -> int:
        return next(i for i, m in enumerate(self.messages) if any(f.startswith(prefix) for f in m))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_notify_ready_status_watchdog_stopping_and_drain_on_sigterm(make_repo, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2s
    # uploads wait an hour unless something drains them: only SIGTERM's drain can send them
    repo = make_repo(delay="1h")
    repo.start()
    try:
        ready = listener.wait_for(lambda f: "READY=1" in f, timeout=5)
        assert any(f.startswith("STATUS=serving") and "0 pending uploads" in f for f in ready), ready

        for i in range(3):
            (repo.data / f"f{i}.bin").write_bytes(os.urandom(1000) * (i + 1))
        listener.wait_for(lambda f: "STATUS=" in "".join(f) and "3 pending uploads" in "".join(f))
        listener.wait_for(lambda f: f == ["WATCHDOG=1"])
        assert not list(repo.remote_dir.rglob("f*.bin")), "the delay should hold every upload back"

        repo.proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for(lambda f: "STOPPING=1" in f)
        assert any(f.startswith("STATUS=stopping") for f in stopping), stopping
        assert repo.proc.wait(timeout=60) == 0
        listener.wait_for(lambda f: any(x.startswith("STATUS=stopped") for x in f), timeout=1)
    finally:
        listener.close()

    order = [listener.first_index(p) for p in ("READY=1", "STATUS=", "WATCHDOG=1", "STOPPING=1")]
    assert order == sorted(order) and order[0] == 0, (order, listener.messages)
    last = listener.messages[-1]
    assert last == ["STATUS=stopped; 0 uploads left pending (they resume at the next mount)"], last
    assert not any("WATCHDOG=1" in m for m in listener.messages[: order[0]])
    assert listener.senders == {repo.proc.pid}, "NotifyAccess=main: only the main process may speak"
    for i in range(3):
        assert (repo.remote_dir / f"f{i}.bin").stat().st_size == 1000 * (i + 1)
    assert not is_mounted(repo.mp)
    assert "draining 3 pending write-back entries" in repo.log()


def test_notify_socket_absent_or_unreachable_does_not_matter(tmp_path):
    from mountd.sdnotify import SystemdNotifier

    SystemdNotifier({}).send("READY=1")  # no socket: nothing to do
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    gone.send("READY=1")
    assert gone.enabled and gone.sent == 0
    assert SystemdNotifier({"WATCHDOG_USEC": "3000000"}).watchdog_interval == 1.5
    assert SystemdNotifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    abstract = SystemdNotifier({"NOTIFY_SOCKET": "@mountd-test"})
    assert abstract.address == "\0mountd-test"


def _verify_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: the system's units, ours, and the binaries they name."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, units / unit.name)
    for exe in _executables():
        # the system tools the units run must exist here; mountd is where docs/operations.md links it
        assert exe == "/usr/local/bin/mountd" or os.access(exe, os.X_OK), f"{exe} named by a unit is missing"
        stub = root / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def _executables() -> set[str]:
    found = set()
    for unit in UNITS.iterdir():
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.startswith("Exec") and value:
                found.add(value.lstrip("-@:+!").split()[0])
    return found


def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/install.sh --test installs the systemd package"
    root = _verify_root(tmp_path)
    units = sorted(p.name for p in UNITS.iterdir())
    assert {"mountd@.service", "mountd-docker-plugin.service", "mnt-artifacts.mount",
            "mnt-artifacts.automount"} <= set(units)
    for unit in units:
        name = unit.replace("@.", "@art.")
        r = subprocess.run([analyze, "verify", f"--root={root}", name], capture_output=True, text=True,
                           timeout=60)
        # verify exits 0 on mere warnings (an unknown key, say): any output at all is a failure here
        assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), (unit, r.stdout, r.stderr)


def test_service_unit_is_notify_with_watchdog_and_drain_budget():
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(UNITS / "mountd@.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and "WatchdogSec" in svc
    assert "--foreground" in svc["ExecStart"] and "/etc/mountd/%i.toml" in svc["ExecStart"]
    # the drain (writeback.drain_timeout, 60s by default) must fit in the stop budget
    assert int(svc["TimeoutStopSec"].rstrip("s")) > 60


def test_install_system_links_entry_points_and_units(tmp_path):
    root = tmp_path / "root"
    r = subprocess.run(["bash", str(REPO / "scripts/install-system.sh")],
                       env={**os.environ, "ROOT": str(root)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    venv_bin = Path(os.environ.get("MOUNTD_VENV", REPO / ".venv")) / "bin"
    assert os.readlink(root / "usr/local/bin/mountd") == str(venv_bin / "mountd")
    assert os.readlink(root / "sbin/mount.mountd") == str(venv_bin / "mount.mountd")
    for unit in ("mountd@.service", "mountd-docker-plugin.service"):
        assert (root / "etc/systemd/system" / unit).read_text() == (UNITS / unit).read_text()
    assert (root / "etc/mountd").stat().st_mode & 0o777 == 0o700
