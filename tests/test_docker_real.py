"""The Docker volume plugin under a real dockerd (Debian's docker.io, from scripts/install.sh --test).

One containerd and one dockerd per test session, started by hand with private roots and sockets
(no systemd, no network: `--bridge=none`, containers run with `--network none`), an image made
here from busybox-static (`docker import`), and `mountd docker-plugin` on a socket of its own in
/run/docker/plugins, whose stem is the driver name (unique per session). Remotes are file://
directories. The tests skip, saying why, only when dockerd cannot start or run a container here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, is_mounted, wait_until

pytestmark = pytest.mark.slow

IMAGE = "mini:latest"
# short waits for the plugin (defaults: grace 30 s, linger 5 s, tick 10 s); a linger of 3 s still
# covers the gap between the copy-up Unmount and the next Mount on a busy machine
TIMING = "grace=3,linger=3,tick=0.5"


def _docker_client() -> str | None:
    """The client that came with dockerd (another client on PATH may be much newer)."""
    daemon = shutil.which("dockerd")
    if daemon is None:
        return None
    for d in (os.path.dirname(daemon), "/usr/bin"):
        if os.access(os.path.join(d, "docker"), os.X_OK):
            return os.path.join(d, "docker")
    return shutil.which("docker")


@dataclass
class Plugin:
    root: Path
    socket: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "plugin.log"

    def log(self) -> str:
        return self.log_path.read_text()

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "mountd", "docker-plugin", "--socket", str(self.socket), "--config-dir",
                 str(self.root / "etc"), "--state-dir", str(self.root / "state"), "--log-level", "DEBUG"],
                stdout=logf, stderr=logf, pass_fds=(write_fd,), cwd=REPO, start_new_session=True,
                env={**os.environ, **self.env, "MOUNTD_READY_FD": str(write_fd)})
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            assert r.readline() == b"READY\n", self.log()[-3000:]

    def kill(self) -> None:
        """As a crash or `kill -9` would: the socket file stays, nobody answers on it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    def mountpoint(self, repo: str) -> Path:
        return self.root / "state" / "mounts" / repo


@dataclass
class Docker:
    root: Path
    client: str
    host: str
    driver: str
    plugin: Plugin
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([self.client, "-H", self.host, *args], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
        return r

    def daemon_log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")

    def add_repo(self, name: str, remote: Path | None = None, writeback: str = "") -> Path:
        remote = remote or self.root / f"remote-{name}"
        if remote.parent.is_dir():  # (not where a test wants a remote that cannot exist)
            remote.mkdir(exist_ok=True)
        (self.root / "etc" / f"{name}.toml").write_text(
            f'[local]\npath = "{self.root}/local-{name}"\n[cache]\npath = "{self.root}/cache-{name}"\n'
            f'[writeback]\ndelay = "0s"\n{writeback}\n[[remote]]\nname = "main"\nurl = "file://{remote}"\n')
        return remote

    def volume(self, name: str, **opts: str) -> subprocess.CompletedProcess[str]:
        return self("volume", "create", "-d", self.driver, *[f"-o{k}={v}" for k, v in opts.items()], name)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self("run", "--network", "none", *args, check=check, timeout=timeout)

    def inspect(self, *args: str) -> list[dict]:
        return json.loads(self("inspect", *args).stdout)


def _wait_for(what: str, predicate, proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 60) -> str | None:
    """None once `predicate()` holds; the reason (for a skip) if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
            how = f"exited {proc.returncode}" if proc.poll() is not None else "timeout"
            return f"{what} did not start ({how}): {' | '.join(tail)[-400:]}"
        time.sleep(0.1)
    return None


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(root) + "/")]


def _build_image(docker: Docker) -> None:
    """A root file system of busybox-static and its applets, imported as IMAGE."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is not installed (scripts/install.sh --test installs it)"
    rootfs = docker.root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("tmp", "data", "proc", "sys", "dev", "etc"):
        (rootfs / d).mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run([docker.client, "-H", docker.host, "import", "-", IMAGE], stdin=tar.stdout,
                       capture_output=True, text=True, timeout=120)
    assert tar.wait() == 0 and r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def docker(tmp_path_factory) -> Iterator[Docker]:
    client = _docker_client()
    missing = [p for p in ("containerd", "dockerd", "runc") if shutil.which(p) is None]
    if missing or client is None:
        pytest.skip(f"no {', '.join(missing) or 'docker client'}: "
                    "scripts/install.sh --test installs docker.io")
    root = tmp_path_factory.mktemp("dockerd")
    host = f"unix://{root}/docker.sock"
    driver = f"mountd-test-{os.getpid()}"
    plugin = Plugin(root, Path(f"/run/docker/plugins/{driver}.sock"),
                    env={"DOCKER_HOST": host, "MOUNTD_DOCKER_PLUGIN_TIMING": TIMING})
    docker = Docker(root, client, host, driver, plugin)
    (root / "etc").mkdir()
    (root / "containerd.toml").write_text(
        f'version = 2\nroot = "{root}/containerd"\nstate = "{root}/containerd-state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{root}/containerd.sock"\n'
        f'[ttrpc]\n  address = "{root}/containerd.sock.ttrpc"\n')
    (root / "daemon.json").write_text("{}")
    try:
        with open(root / "containerd.log", "ab") as logf:
            ctd = subprocess.Popen(["containerd", "--config", str(root / "containerd.toml")], stdout=logf,
                                   stderr=logf, stdin=subprocess.DEVNULL)
        docker.procs.append(ctd)
        why = _wait_for("containerd", (root / "containerd.sock").exists, ctd, root / "containerd.log")
        if why is None:
            with open(root / "dockerd.log", "ab") as logf:
                dockerd = subprocess.Popen(
                    ["dockerd", "--containerd", f"{root}/containerd.sock", "--data-root", f"{root}/data",
                     "--exec-root", f"{root}/exec", "-H", host, "--pidfile", f"{root}/dockerd.pid",
                     "--config-file", f"{root}/daemon.json", "--iptables=false", "--bridge=none"],
                    stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
            docker.procs.append(dockerd)
            why = _wait_for("dockerd", lambda: docker("version", check=False).returncode == 0, dockerd,
                            root / "dockerd.log")
        if why is not None:
            pytest.skip(why)
        _build_image(docker)
        r = docker.run("--rm", IMAGE, "true", check=False)
        if r.returncode:
            pytest.skip(f"dockerd runs no container here: {r.stderr.strip()[-400:]}")
        plugin.start()
        yield docker
    finally:
        _teardown(docker)


def _teardown(docker: Docker) -> None:
    if docker.procs and docker.procs[-1].poll() is None and docker("version", check=False).returncode == 0:
        ids = docker("ps", "-aq", check=False).stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)
    docker.plugin.stop()
    for mp in (docker.root / "state" / "mounts").glob("*"):
        if is_mounted(mp):
            subprocess.run([PYTHON, "-m", "mountd", "umount", str(mp), "--timeout", "10"],
                           capture_output=True, timeout=60, cwd=REPO)
    for proc in reversed(docker.procs):
        _stop(proc)
    for mp in sorted(_mounts_below(docker.root), reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    docker.plugin.socket.unlink(missing_ok=True)
    log = docker.plugin.log_path.read_text() if docker.plugin.log_path.exists() else ""
    assert "Traceback" not in log, log[-3000:]


def _remote_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------


def test_a_container_writes_through_a_volume_and_the_bytes_reach_the_remote(docker):
    remote = docker.add_repo("art")
    docker.volume("data1", repo="art", path="out")
    [vol] = json.loads(docker("volume", "inspect", "data1").stdout)
    assert vol["Driver"] == docker.driver
    assert vol["Status"]["repo"] == "art" and vol["Status"]["path"] == "/out"
    r = docker.run("--rm", "-v", "data1:/data", IMAGE, "sh", "-c",
                   "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && md5sum /data/blob")
    digest = r.stdout.split()[0]
    wait_until(lambda: (remote / "out" / "blob").exists()
               and subprocess.run(["md5sum", str(remote / "out" / "blob")], capture_output=True,
                                  text=True).stdout.split()[0] == digest, timeout=60)
    # the repository is unmounted once the container is gone and nothing is left to upload
    wait_until(lambda: not is_mounted(docker.plugin.mountpoint("art")), timeout=30)
    docker("volume", "rm", "data1")
    assert (remote / "out" / "blob").stat().st_size == 8 << 20, "removing a volume never deletes data"


def test_two_containers_share_a_volume_which_cannot_be_removed_while_in_use(docker):
    remote = docker.add_repo("shared")
    docker.volume("shared1", repo="shared")
    # the plugin has Docker refresh its copy of a new volume, whose path containers then show as Source
    wait_until(lambda: "volume shared1: Docker's copy refreshed" in docker.plugin.log(), timeout=10)
    docker.run("-d", "--name", "reader", "-v", "shared1:/data", IMAGE, "sleep", "600")
    docker.run("--rm", "-v", "shared1:/data", IMAGE, "sh", "-c", "echo from the writer > /data/note")
    assert docker("exec", "reader", "cat", "/data/note").stdout == "from the writer\n"
    r = docker("volume", "rm", "shared1", check=False)
    assert r.returncode != 0 and "volume is in use" in r.stderr, r.stderr
    # the plugin names the container behind the mount ID Docker gave it
    [vol] = json.loads(docker("volume", "inspect", "shared1").stdout)
    [reader] = docker.inspect("reader")
    assert [f"container reader ({reader['Id'][:12]})"] == vol["Status"]["in_use_by"], vol["Status"]
    [mount] = reader["Mounts"]
    assert mount["Source"] == str(docker.plugin.mountpoint("shared")) and mount["Driver"] == docker.driver
    docker("stop", "-t", "0", "reader")
    # a stopped container still shows where its volume lives
    assert docker.inspect("reader")[0]["Mounts"][0]["Source"] == str(docker.plugin.mountpoint("shared"))
    docker("rm", "reader")
    docker("volume", "rm", "shared1")
    wait_until(lambda: _remote_file(remote / "note") == b"from the writer\n", timeout=60)


def test_a_plugin_down_while_a_container_stops_strands_nothing(docker):
    """Docker gives up an Unmount after ~15 s of a plugin that does not answer; the restarted
    plugin finds the reference stale, so `docker rm` and `docker volume rm` work."""
    docker.add_repo("restart")
    docker.volume("restart1", repo="restart")
    docker.run("-d", "--name", "victim", "-v", "restart1:/data", IMAGE, "sleep", "600")
    mp = docker.plugin.mountpoint("restart")
    assert is_mounted(mp)
    gave_up = "Failed to umount volumes: error while unmounting volumes for container "
    failed_before = docker.daemon_log().count(gave_up)
    docker.plugin.kill()
    try:
        docker("stop", "-t", "0", "victim")
        # Docker retries for about 15 s (its Get before the Unmount), then gives up and logs it
        wait_until(lambda: docker.daemon_log().count(gave_up) > failed_before, timeout=60)
    finally:
        docker.plugin.start()
    assert is_mounted(mp), "the repository daemon outlives the plugin"
    docker("rm", "victim")
    t0 = time.monotonic()
    docker("volume", "rm", "restart1")
    assert time.monotonic() - t0 < 10
    assert "volume restart1: reconciled: dropped mount ID" in docker.plugin.log()
    wait_until(lambda: not is_mounted(mp), timeout=30)


def test_docker_run_rm_returns_at_once_while_the_remote_refuses_uploads(docker):
    """Unmount answers at once (Docker waits 60 s at most); the repository stays mounted, its
    uploads pending and shown by `docker volume inspect`, until the remote takes them."""
    remote = docker.add_repo("stuck", writeback='retry_initial = "0.2s"\nretry_max = "1s"\n')
    docker.volume("stuck1", repo="stuck")
    mp = docker.plugin.mountpoint("stuck")
    # the remote refuses once the repository is mounted (the mount checks that it can write there)
    run = subprocess.Popen([docker.client, "-H", docker.host, "run", "--rm", "--network", "none", "-v",
                            "stuck1:/data", IMAGE, "sh", "-c",
                            "while [ ! -e /data/go ]; do sleep 0.05; done; "
                            "echo refused for now > /data/late"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: is_mounted(mp) and "/VolumeDriver.Mount HTTP/1.1\" 200" in docker.plugin.log(),
                   timeout=60)
        subprocess.run(["chattr", "+i", str(remote)], check=True)
        (mp / "go").write_text("")
        t0 = time.monotonic()
        out, err = run.communicate(timeout=120)
        took = time.monotonic() - t0
        assert run.returncode == 0, err
        assert took < 20, f"docker run --rm took {took:.1f}s after the container's last write"
        wait_until(lambda: "repository stuck: no container uses it, 2 uploads pending" in docker.plugin.log(),
                   timeout=30)
        [vol] = json.loads(docker("volume", "inspect", "stuck1").stdout)
        assert vol["Status"]["mounted"] and vol["Status"]["pending_uploads"] == 2, vol["Status"]
        assert is_mounted(mp)
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(["chattr", "-i", str(remote)], check=True)
    wait_until(lambda: not is_mounted(mp), timeout=60)
    assert (remote / "late").read_text() == "refused for now\n"
    docker("volume", "rm", "stuck1")
    print(f"docker run --rm with a remote refusing uploads: {took:.2f}s")


def test_copy_up_mounts_twice_and_nocopy_once(docker):
    """Where the image has the target directory, Docker Mounts the volume once to copy the image's
    files into it, Unmounts, then Mounts again for the container: the plugin keeps one repository
    mount across both. `volume-nocopy` skips the first."""
    docker.add_repo("copy")
    docker.volume("copy1", repo="copy")
    mp = docker.plugin.mountpoint("copy")
    times = {}
    for label, spec in (("copy", "type=volume,src=copy1,dst=/tmp"),
                        ("nocopy", "type=volume,src=copy1,dst=/tmp,volume-nocopy")):
        wait_until(lambda: not is_mounted(mp), timeout=30)
        before = docker.plugin.log().count("POST /VolumeDriver.Mount ")
        mounted_before = docker.plugin.log().count("mounting repository copy ")
        t0 = time.monotonic()
        docker.run("--rm", "--mount", spec, IMAGE, "true")
        times[label] = time.monotonic() - t0
        assert docker.plugin.log().count("mounting repository copy ") == mounted_before + 1
        calls = docker.plugin.log().count("POST /VolumeDriver.Mount ") - before
        assert calls == (2 if label == "copy" else 1), (label, calls)
    docker("volume", "rm", "copy1")
    print(f"cold docker run: {times['copy']:.2f}s with copy-up, {times['nocopy']:.2f}s with volume-nocopy")


def test_errors_reach_the_docker_command_as_one_line(docker):
    docker.add_repo("errs")
    r = docker("volume", "create", "-d", docker.driver, "-o", "repo=errs", "-o", "compression=zstd", "bad1",
               check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown option 'compression'" in r.stderr and "-o repo=NAME" in r.stderr, r.stderr
    # an option the remote's client does not take is refused when the config loads
    (docker.root / "etc" / "cloudopt.toml").write_text(
        f'[local]\npath = "{docker.root}/local-cloudopt"\n[[remote]]\nname = "main"\n'
        'url = "s3://bucket/x"\noptions = { aws_access_key_id = "k" }\n')
    r = docker("volume", "create", "-d", docker.driver, "-o", "repo=cloudopt", "bad2", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "aws_access_key_id" in r.stderr, r.stderr
    # a remote that cannot be used at mount time fails `docker run` with its reason (--require-remotes)
    (docker.root / "plainfile").write_text("x")
    docker.add_repo("broken", remote=docker.root / "plainfile" / "bucket")
    docker.volume("broken1", repo="broken")
    r = docker.run("--rm", "-v", "broken1:/data", IMAGE, "true", check=False)
    assert r.returncode != 0 and "remote 'main'" in r.stderr, r.stderr
    docker("volume", "rm", "broken1")
    # Docker answers a create of an existing name itself: other options are ignored, the old ones stay
    docker.volume("same", repo="errs", path="a")
    docker.volume("same", repo="errs", path="b")
    [vol] = json.loads(docker("volume", "inspect", "same").stdout)
    assert vol["Status"]["path"] == "/a" and vol["Options"] == {"repo": "errs", "path": "a"}, vol
    docker("volume", "rm", "same")
