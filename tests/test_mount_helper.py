"""`mount -t mountd` and fstab: mount(8) runs /sbin/mount.mountd, which returns once the mount answers.

The helper is the installed entry point (`.venv/bin/mount.mountd`), linked where mount(8) looks
for helpers; the test makes that link when it is missing and removes what it made.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, is_mounted

HELPER = Path(PYTHON).parent / "mount.mountd"
SBIN_HELPER = Path("/sbin/mount.mountd")


@pytest.fixture(scope="module")
def helper_installed() -> Iterator[Path]:
    assert HELPER.exists(), "the mount.mountd entry point is missing: run scripts/install.sh"
    if os.geteuid() != 0:
        pytest.fail("mount(8) with a helper needs root here (the CI machine runs as root)")
    previous = os.readlink(SBIN_HELPER) if SBIN_HELPER.is_symlink() else None
    if SBIN_HELPER.exists() and previous is None:
        pytest.fail(f"{SBIN_HELPER} exists and is not a link this test may replace")
    if previous != str(HELPER):
        SBIN_HELPER.unlink(missing_ok=True)
        SBIN_HELPER.symlink_to(HELPER)
    yield SBIN_HELPER
    if previous != str(HELPER):
        SBIN_HELPER.unlink()
        if previous is not None:
            SBIN_HELPER.symlink_to(previous)


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mp = root / "mnt"
        self.remote = root / "remote"
        self.local = root / "local"
        self.mp.mkdir(parents=True)
        self.remote.mkdir()
        self.config = root / "art.toml"
        self.config.write_text(f'[local]\npath = "{self.local}"\n[cache]\npath = "{root / "cache"}"\n'
                               f'[writeback]\ndelay = "1h"\n'
                               f'[[remote]]\nname = "main"\nurl = "file://{self.remote}"\n')

    def daemon_pid(self) -> int:
        return int((self.local / "lock").read_text().split()[0])

    def cleanup(self) -> None:
        if is_mounted(self.mp):
            subprocess.run(["umount", "-l", str(self.mp)], capture_output=True)


@pytest.fixture
def art(tmp_path) -> Iterator[Repo]:
    repo = Repo(tmp_path / "art")
    yield repo
    repo.cleanup()
    log = (repo.local / "mountd.log")
    text = log.read_text() if log.exists() else ""
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


def mount_line(mp: Path) -> tuple[str, str, str]:
    """(mount options, fstype, super options) of the mount at `mp`."""
    real = os.path.realpath(mp)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if left.split()[4] == real:
                fstype, _source, sopts = right.split()
                return left.split()[5], fstype, sopts
    raise AssertionError(f"{mp} is not mounted")


def wait_exit(pid: int, timeout: float = 60) -> None:
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"daemon {pid} still running after {timeout}s"
    finally:
        os.close(fd)


@pytest.mark.slow
def test_mount_t_mountd_with_fstab_options_then_umount_drains(helper_installed, art):
    (art.remote / "model.bin").write_bytes(b"weights" * 1000)
    r = subprocess.run(["mount", "-t", "mountd", str(art.config), str(art.mp),
                        "-o", "_netdev,x-systemd.automount,x-systemd.idle-timeout=5min,nofail,allow_other,"
                              "uid=1234,gid=2345,noatime"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # mount(8) returned: the filesystem answers now, no waiting
    opts, fstype, sopts = mount_line(art.mp)
    assert fstype == "fuse.mountd" and "noatime" in opts.split(",") and "allow_other" in sopts.split(",")
    st = (art.mp / "model.bin").stat()
    assert (st.st_uid, st.st_gid, st.st_size) == (1234, 2345, 7000)
    pid = art.daemon_pid()
    assert os.getsid(pid) != os.getsid(0), "the daemon must be detached from mount(8)'s session"

    (art.mp / "new.txt").write_text("written through the fstab mount\n")
    r = subprocess.run(["umount", str(art.mp)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(art.mp)
    wait_exit(pid)  # the daemon drains what is pending (the 1h delay is cut short) and exits
    assert (art.remote / "new.txt").read_text() == "written through the fstab mount\n"


@pytest.mark.slow
def test_fstab_entry_read_only(helper_installed, art, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{art.config} {art.mp} mountd ro,_netdev,noauto 0 0\n")
    r = subprocess.run(["mount", "--fstab", str(fstab), str(art.mp)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ro" in mount_line(art.mp)[0].split(",")
    with pytest.raises(OSError) as e:
        (art.mp / "nope.txt").write_text("x")
    assert e.value.errno == errno.EROFS
    pid = art.daemon_pid()
    assert subprocess.run(["umount", str(art.mp)], timeout=60).returncode == 0
    wait_exit(pid)


def test_bad_options_and_sources_are_one_line_errors(helper_installed, art):
    cases = [
        (["-o", "compress=zstd"], "unknown mount option 'compress=zstd'"),
        (["-o", "uid=no-such-user-here"], "uid=no-such-user-here: no such user"),
        (["-o", "log_level=chatty"], "log_level=chatty: use one of"),
    ]
    for extra, message in cases:
        r = subprocess.run(["mount", "-t", "mountd", str(art.config), str(art.mp), *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and message in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run(["mount", "-t", "mountd", str(art.root / "missing.toml"), str(art.mp)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no such config file" in r.stderr
    # a cloud option its client does not take fails here, in one line, not inside the daemon (issue 21)
    cloud = art.root / "cloud.toml"
    cloud.write_text(art.config.read_text().replace(
        f'url = "file://{art.remote}"', 'url = "s3://bucket"\noptions = { aws_access_key_id = "AKIAX" }'))
    r = subprocess.run(["mount", "-t", "mountd", str(cloud), str(art.mp)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "unknown option 'aws_access_key_id' for s3://" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "AKIAX" not in r.stderr
    # the daemon's own reason for not mounting comes back through the start-up handshake, as one line
    cloud.write_text(art.config.read_text().replace(
        f'url = "file://{art.remote}"',
        'url = "s3://bucket"\noptions = { endpoint_url = "http://127.0.0.1:9", anon = true }'))
    r = subprocess.run(["mount", "-t", "mountd", str(cloud), str(art.mp), "-o", "require_remotes"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 32 and r.stderr.startswith("mount.mountd: remote 'main'"), r.stderr
    assert "unreachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not is_mounted(art.mp)
    (art.mp / "stray").write_text("x")
    r = subprocess.run(["mount", "-t", "mountd", str(art.config), str(art.mp)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 32 and "is not empty" in r.stderr
    assert not is_mounted(art.mp)
    # -f (fake) checks everything and mounts nothing
    (art.mp / "stray").unlink()
    r = subprocess.run(["mount", "-f", "-v", "-t", "mountd", str(art.config), str(art.mp),
                        "-o", "ro,_netdev"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not is_mounted(art.mp), r.stderr


def test_option_classes():
    from mountd.mount_helper import parse_argv
    from mountd.mount_options import parse_options

    o = parse_options(["_netdev,x-systemd.requires=foo.service,ro,allow_other,uid=0,gid=0,noexec,"
                       "log_level=debug,require_remotes,comment=x"])
    assert o.fuse == ["ro", "noexec"]
    assert o.mount == {"allow_other": True, "uid": 0, "gid": 0}
    assert o.helper == {"log_level": "debug", "require_remotes": "1"}
    assert o.ignored == ["_netdev", "x-systemd.requires=foo.service", "comment=x"]
    assert o.forward == ["ro", "allow_other", "uid=0", "gid=0", "noexec"]
    assert parse_options(["whatever"], sloppy=True).ignored == ["whatever"]
    a = parse_argv(["/etc/mountd/a.toml", "/mnt/a", "-sfnv", "-o", "ro", "-t", "mountd"])
    assert (a.source, a.mountpoint, a.options, a.fake, a.sloppy, a.verbose) == \
        ("/etc/mountd/a.toml", "/mnt/a", ["ro"], True, True, True)


def test_mountd_mount_takes_the_same_options(tmp_path):
    """`mountd mount -o` shares the helper's option table: a bad option fails before any mount."""
    from tests.conftest import mountd_cmd

    mp = tmp_path / "mp"
    mp.mkdir()
    r = mountd_cmd("mount", "memory://bucket", str(mp), "-o", "bogus", check=False)
    assert r.returncode == 1 and "unknown mount option 'bogus'" in r.stderr
    assert shutil.which("mount"), "mount(8) is missing: scripts/install.sh --test installs it"
