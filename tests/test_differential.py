"""Differential test: random POSIX call sequences on the mount and on a plain directory agree.

A hypothesis state machine applies the same create/write/truncate/rename/unlink/mkdir/rmdir/chmod/
link/mkfifo/setxattr calls to a subtree of a remote path of the mount and to a plain temporary
directory, and moves entries between a local-only directory of the mount and that subtree, both
ways (and between a second plain directory and the plain one). After every step the outcomes (value or errno)
must be equal and both trees must hold the same names, types, modes, sizes, link counts, user
extended attributes and bytes. At the end of each example the write-back is drained and the
remote directory must hold exactly the files (one object per name of a hard-linked file), FIFOs
and directories of the plain one. One mount serves all examples; the subtrees are emptied between
them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from mountd.backend.files import XATTR_META
from tests.conftest import MountedRepo

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
payloads = st.binary(max_size=3000) | st.sampled_from([b"", b"x" * 70000])
offsets = st.sampled_from([0, 1, 100, 4095, 4096, 65536, 70001])
modes = st.sampled_from([0o644, 0o600, 0o755, 0o000, 0o777, 0o4755, 0o2750, 0o1777])


libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except OSError as e:
        return "errno", os.strerror(e.errno or 0)


def snapshot(root: Path) -> dict[str, tuple]:
    """relative path -> (type, mode, size, bytes) for everything below root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            data = Path(p).read_bytes() if stat.S_ISREG(st_.st_mode) else None
            xattrs = {} if stat.S_ISLNK(st_.st_mode) else {
                n: os.getxattr(p, n) for n in os.listxattr(p) if n.startswith("user.")}
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode),
                                             st_.st_size if data is not None else None, data,
                                             st_.st_nlink if not stat.S_ISDIR(st_.st_mode) else None, xattrs)
    return out


def remote_tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """The keys of a file:// remote as a bucket holds them: its files, and its directories that
    are markers or hold a key (an empty directory that is no marker is no key; the store writes
    over one: backend/files.py `_drop_empty_prefix`)."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            files[os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
        for d in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, d), root)
            holds = any(k.startswith(rel + "/") for k in (*files, *dirs))
            if holds or _is_marker(Path(dirpath, d)):
                dirs.add(rel)
    return files, dirs


def _is_marker(p: Path) -> bool:
    try:
        os.getxattr(p, XATTR_META, follow_symlinks=False)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory):
    repo = MountedRepo(tmp_path_factory.mktemp("differential"))
    repo.start()
    yield repo
    repo.cleanup()
    bad = repo.unexpected_log_errors()
    assert not bad, "daemon logged errors:\n" + "\n".join(bad[:20])


def _write_at(path: Path, offset: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # (a FIFO without a reader: ENXIO, not a hang)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _create(path: Path, data: bytes, mode: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO: no writer, nothing to read)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_mount_matches_plain_directory(shared_repo, tmp_path):
    repo = shared_repo
    mount_root = repo.data / "diff"
    plain_root = tmp_path / "plain"
    remote_root = repo.remote_dir / "diff"
    staging = {mount_root: repo.mp / "diff-local", plain_root: tmp_path / "plain-local"}  # local-only

    class MountVersusPlain(RuleBasedStateMachine):
        @initialize()
        def empty_both(self) -> None:
            for root in (mount_root, plain_root, *staging.values()):
                if root.exists():
                    for p in root.rglob("*"):  # 0o000 directories must still be removable
                        if p.is_dir() and not p.is_symlink():
                            os.chmod(p, 0o755)
                    shutil.rmtree(root)
                root.mkdir()
            os.umask(0o022)

        def both(self, fn: Callable[[Path], object]) -> tuple[object, object]:
            got = outcome(lambda: fn(mount_root))
            want = outcome(lambda: fn(plain_root))
            assert got == want
            return got[1], want[1]

        def open_fds(self) -> list[tuple[int, int]]:
            if not hasattr(self, "_fds"):
                self._fds: list[tuple[int, int]] = []
            return self._fds

        @rule(path=paths, trunc=st.booleans())
        def open_handle(self, path: str, trunc: bool) -> None:
            flags = os.O_RDWR | os.O_NONBLOCK | (os.O_TRUNC if trunc else 0)
            got = outcome(lambda: os.open(mount_root / path, flags))
            want = outcome(lambda: os.open(plain_root / path, flags))
            if got[0] == "ok":
                self.open_fds().append((got[1], want[1]))  # type: ignore[arg-type]
            elif want[0] == "ok":
                os.close(want[1])  # type: ignore[arg-type]
            assert got[0] == want[0] and (got[0] == "ok" or got == want)

        @rule(which=st.integers(0, 3), offset=offsets, data=payloads)
        def write_handle(self, which: int, offset: int, data: bytes) -> None:
            fds = self.open_fds()
            if fds:
                pair = fds[which % len(fds)]
                assert outcome(lambda: os.pwrite(pair[0], data, offset)) == outcome(
                    lambda: os.pwrite(pair[1], data, offset))

        @rule(which=st.integers(0, 3), offset=offsets)
        def read_handle(self, which: int, offset: int) -> None:
            fds = self.open_fds()
            if fds:
                pair = fds[which % len(fds)]
                assert outcome(lambda: os.pread(pair[0], 100000, offset)) == outcome(
                    lambda: os.pread(pair[1], 100000, offset))
                assert os.fstat(pair[0]).st_size == os.fstat(pair[1]).st_size

        @rule(which=st.integers(0, 3))
        def close_handle(self, which: int) -> None:
            fds = self.open_fds()
            if fds:
                for fd in fds.pop(which % len(fds)):
                    os.close(fd)

        @rule(path=paths, link_to=st.sampled_from(["a", "../b", "/nowhere", "c/a"]))
        def symlink(self, path: str, link_to: str) -> None:
            self.both(lambda root: os.symlink(link_to, root / path))

        @rule(path=paths)
        def readlink(self, path: str) -> None:
            self.both(lambda root: os.readlink(root / path))

        @rule(path=paths, data=payloads, mode=modes)
        def create(self, path: str, data: bytes, mode: int) -> None:
            self.both(lambda root: _create(root / path, data, mode))

        @rule(path=paths, offset=offsets, data=payloads)
        def write(self, path: str, offset: int, data: bytes) -> None:
            self.both(lambda root: _write_at(root / path, offset, data))

        @rule(path=paths, size=offsets)
        def truncate(self, path: str, size: int) -> None:
            self.both(lambda root: os.truncate(root / path, size))

        @rule(src=paths, dst=paths)
        def rename(self, src: str, dst: str) -> None:
            self.both(lambda root: os.rename(root / src, root / dst))

        @rule(src=paths, dst=paths)
        def exchange(self, src: str, dst: str) -> None:
            self.both(lambda root: renameat2(root / src, root / dst, RENAME_EXCHANGE))

        @rule(path=paths)
        def unlink(self, path: str) -> None:
            self.both(lambda root: os.unlink(root / path))

        @rule(path=paths, mode=modes)
        def mkdir(self, path: str, mode: int) -> None:
            self.both(lambda root: os.mkdir(root / path, mode & 0o777 | 0o700))

        @rule(path=paths)
        def rmdir(self, path: str) -> None:
            self.both(lambda root: os.rmdir(root / path))

        @rule(path=paths, mode=modes)
        def chmod(self, path: str, mode: int) -> None:
            self.both(lambda root: os.chmod(root / path, mode))

        @rule(path=paths)
        def read(self, path: str) -> None:
            self.both(lambda root: _read(root / path))

        @rule(src=paths, dst=paths)
        def link(self, src: str, dst: str) -> None:
            self.both(lambda root: os.link(root / src, root / dst))

        @rule(path=paths)
        def mkfifo(self, path: str) -> None:
            self.both(lambda root: os.mkfifo(root / path, 0o640))

        @rule(path=paths, value=st.sampled_from([b"", b"v", b"x" * 300]))
        def setxattr(self, path: str, value: bytes) -> None:
            self.both(lambda root: os.setxattr(root / path, "user.k", value))

        @rule(path=paths, data=payloads)
        def create_local(self, path: str, data: bytes) -> None:
            """A file in the local-only staging directory (its missing parents made there)."""
            def make(root: Path) -> None:
                (staging[root] / path).parent.mkdir(parents=True, exist_ok=True)
                _create(staging[root] / path, data, 0o644)
            self.both(make)

        @rule(src=paths, dst=paths)
        def move_in(self, src: str, dst: str) -> None:
            """rename(2) from the local-only directory into the remote path (or the plain twin)."""
            self.both(lambda root: os.rename(staging[root] / src, root / dst))

        @rule(src=paths, dst=paths)
        def move_out(self, src: str, dst: str) -> None:
            """rename(2) from the remote path out to the local-only directory (its bytes fetched after)."""
            self.both(lambda root: os.rename(root / src, staging[root] / dst))

        @invariant()
        def trees_equal(self) -> None:
            if mount_root.exists():
                assert snapshot(mount_root) == snapshot(plain_root)
                assert snapshot(staging[mount_root]) == snapshot(staging[plain_root])

        def teardown(self) -> None:
            for pair in self.open_fds():
                for fd in pair:
                    os.close(fd)
            # what the mount shows must reach the remote: same files, same bytes, same directories
            repo.sync()
            files, dirs = remote_tree(remote_root)
            want = snapshot(plain_root)
            links = {k: os.fsencode(os.readlink(plain_root / k))
                     for k, v in want.items() if v[0] == stat.S_IFLNK}
            fifos = {k: b"" for k, v in want.items() if v[0] == stat.S_IFIFO}
            assert files == {k: v[3] for k, v in want.items() if v[0] == stat.S_IFREG} | links | fifos
            assert dirs == {k for k, v in want.items() if v[0] == stat.S_IFDIR}

    run_state_machine_as_test(MountVersusPlain, settings=settings(
        max_examples=int(os.environ.get("DIFF_EXAMPLES", "25")), stateful_step_count=30, deadline=None,
        derandomize=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
