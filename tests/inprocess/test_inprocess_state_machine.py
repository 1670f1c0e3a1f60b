"""Differential state machine, in process: the vfs against a plain directory, thousands of examples.

The same random sequences of creates, writes, truncates, renames (over existing files and
directories too, and RENAME_EXCHANGE), unlinks, mkdir/rmdir, chmods, reads, listings and calls on
open handles (write, read, fsync, close; an unlinked file stays open) go to the vfs, through the
in-process driver, and to a plain directory. Each rule picks the area it works in: the remote
path `/data` or the local-only path `/scratch`. After every step the outcomes (value or errno)
must be equal and the two trees must hold the same names, types, permission bits, sizes and
bytes; at the end of each example the journal is drained and the remote must hold exactly the
files and directories of the plain `/data`. Uploads run in the background during the steps
(write-back delay 0), so renames and rewrites race with uploads in flight.

One stack serves every example; each example works in fresh directories `e<N>`. The number of
examples is INPROCESS_EXAMPLES (default 800); the FUSE version of this test
(tests/test_differential.py) proves the same through the kernel, with fewer examples.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from tests.inprocess.harness import RENAME_EXCHANGE, UMASK, InProcessMount, repo_config
from tests.test_differential import outcome, remote_tree, renameat2
from tests.test_differential import snapshot as plain_tree

EXAMPLES = int(os.environ.get("INPROCESS_EXAMPLES", "800"))
STEPS = int(os.environ.get("INPROCESS_STEPS", "12"))
AREAS = ("data", "scratch")  # a remote path, a local-only path
NAMES = ("a", "b", "c")

areas = st.sampled_from(AREAS)
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
payloads = st.binary(max_size=200) | st.sampled_from([b"", b"y" * 9000])
offsets = st.sampled_from([0, 1, 100, 4096, 9001])
dir_modes = st.sampled_from([0o755, 0o700, 0o750])
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o640])
chmod_modes = st.sampled_from([0o700, 0o755, 0o750, 0o777])  # the owner keeps rwx: the tests run unprivileged


def _plain_write(path: Path, offset: int, data: bytes, flags: int, mode: int = 0o644) -> int:
    fd = os.open(path, flags, mode)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("inprocess-differential")
    m = InProcessMount(repo_config(root / "repo")).start()
    m.mkdir("/scratch")
    old_umask = os.umask(UMASK)
    yield m, root
    os.umask(old_umask)
    m.stop()


def test_vfs_matches_plain_directory(shared):
    m, root = shared
    remote = root / "repo" / "remote"
    plain = root / "plain"
    counter = itertools.count()

    class VfsVersusPlain(RuleBasedStateMachine):
        @initialize()
        def fresh_roots(self) -> None:
            n = next(counter)
            self.roots = {area: f"/{area}/e{n}" for area in AREAS}
            self.plain = {area: plain / area / f"e{n}" for area in AREAS}
            self.remote = remote / f"e{n}"
            self.handles: list[tuple[int, int, str]] = []  # (vfs fh, plain fd, area)
            for area in AREAS:
                m.mkdir(self.roots[area])
                self.plain[area].mkdir(parents=True)

        def both(self, area: str, vfs: Callable[[str], object], real: Callable[[Path], object]) -> None:
            got = outcome(lambda: vfs(self.roots[area]))
            want = outcome(lambda: real(self.plain[area]))
            assert got == want
            self.same_trees(area)

        def same_trees(self, area: str) -> None:
            """After each step, in the area it worked in (the other one did not change)."""
            assert m.tree(self.roots[area]) == {k: v[:4] for k, v in plain_tree(self.plain[area]).items()}

        @rule(area=areas, path=paths, data=payloads, mode=file_modes)
        def create(self, area: str, path: str, data: bytes, mode: int) -> None:
            self.both(area, lambda r: m.create(f"{r}/{path}", data, mode),
                      lambda r: _plain_write(r / path, 0, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))

        @rule(area=areas, path=paths, offset=offsets, data=payloads)
        def write(self, area: str, path: str, offset: int, data: bytes) -> None:
            self.both(area, lambda r: m.write_at(f"{r}/{path}", offset, data),
                      lambda r: _plain_write(r / path, offset, data, os.O_WRONLY))

        @rule(area=areas, path=paths, size=offsets)
        def truncate(self, area: str, path: str, size: int) -> None:
            self.both(area, lambda r: m.truncate(f"{r}/{path}", size), lambda r: os.truncate(r / path, size))

        @rule(area=areas, src=paths, dst=paths)
        def rename(self, area: str, src: str, dst: str) -> None:
            self.both(area, lambda r: m.rename(f"{r}/{src}", f"{r}/{dst}"),
                      lambda r: os.rename(r / src, r / dst))

        @rule(area=areas, src=paths, dst=paths)
        def exchange(self, area: str, src: str, dst: str) -> None:
            self.both(area, lambda r: m.rename(f"{r}/{src}", f"{r}/{dst}", RENAME_EXCHANGE),
                      lambda r: renameat2(r / src, r / dst, RENAME_EXCHANGE))

        @rule(area=areas, path=paths)
        def unlink(self, area: str, path: str) -> None:
            self.both(area, lambda r: m.unlink(f"{r}/{path}"), lambda r: os.unlink(r / path))

        @rule(area=areas, path=paths, mode=dir_modes)
        def mkdir(self, area: str, path: str, mode: int) -> None:
            self.both(area, lambda r: m.mkdir(f"{r}/{path}", mode), lambda r: os.mkdir(r / path, mode))

        @rule(area=areas, path=paths)
        def rmdir(self, area: str, path: str) -> None:
            self.both(area, lambda r: m.rmdir(f"{r}/{path}"), lambda r: os.rmdir(r / path))

        @rule(area=areas, path=paths, mode=chmod_modes)
        def chmod(self, area: str, path: str, mode: int) -> None:
            self.both(area, lambda r: m.chmod(f"{r}/{path}", mode), lambda r: os.chmod(r / path, mode))

        @rule(area=areas, path=paths)
        def read(self, area: str, path: str) -> None:
            self.both(area, lambda r: m.read_file(f"{r}/{path}"), lambda r: (r / path).read_bytes())

        @rule(area=areas, path=st.sampled_from(("", *NAMES)))
        def listdir(self, area: str, path: str) -> None:
            self.both(area, lambda r: m.readdir(f"{r}/{path}"), lambda r: sorted(os.listdir(r / path)))

        @rule(area=areas, path=paths, trunc=st.booleans())
        def open_handle(self, area: str, path: str, trunc: bool) -> None:
            flags = os.O_RDWR | (os.O_TRUNC if trunc else 0)
            got = outcome(lambda: m.open(f"{self.roots[area]}/{path}", flags))
            want = outcome(lambda: os.open(self.plain[area] / path, flags))
            if got[0] == "ok" and want[0] == "ok":
                self.handles.append((got[1], want[1], area))  # type: ignore[arg-type]
            for side, close in ((got, m.close), (want, os.close)):
                if side[0] == "ok" and not (got[0] == want[0] == "ok"):
                    close(side[1])
            assert got[0] == want[0] and (got[0] == "ok" or got == want)
            self.same_trees(area)

        @rule(which=st.integers(0, 3), offset=offsets, data=payloads)
        def write_handle(self, which: int, offset: int, data: bytes) -> None:
            if self.handles:
                fh, fd, area = self.handles[which % len(self.handles)]
                got = outcome(lambda: m.write(fh, offset, data))
                assert got == outcome(lambda: os.pwrite(fd, data, offset))
                self.same_trees(area)

        @rule(which=st.integers(0, 3), offset=offsets)
        def read_handle(self, which: int, offset: int) -> None:
            if self.handles:
                fh, fd, _ = self.handles[which % len(self.handles)]
                assert m.read(fh, offset, 20000) == os.pread(fd, 20000, offset)

        @rule(which=st.integers(0, 3))
        def fsync_handle(self, which: int) -> None:
            if self.handles:
                fh, fd, _ = self.handles[which % len(self.handles)]
                m.fsync(fh)
                os.fsync(fd)
                assert m.read(fh, 0, 20000) == os.pread(fd, 20000, 0)

        @rule(which=st.integers(0, 3))
        def close_handle(self, which: int) -> None:
            if self.handles:
                fh, fd, area = self.handles.pop(which % len(self.handles))
                m.close(fh)
                os.close(fd)
                self.same_trees(area)

        def teardown(self) -> None:
            if not hasattr(self, "roots"):
                return
            for fh, fd, _ in self.handles:
                m.close(fh)
                os.close(fd)
            # what the vfs shows under the remote path reaches the remote: same files, bytes, directories
            m.drain()
            files, dirs = remote_tree(self.remote)
            want = plain_tree(self.plain["data"])
            assert files == {k: v[3] for k, v in want.items() if v[0] == stat.S_IFREG}
            assert dirs == {k for k, v in want.items() if v[0] == stat.S_IFDIR}

    run_state_machine_as_test(VfsVersusPlain, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, database=None, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
