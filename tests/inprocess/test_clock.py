"""One clock for every stamp, and `.`/`..` in readdir, checked on the vfs with no kernel (issue 20,
item 6; tests/test_clock_and_dots.py checks the same through a real mount).

The test thread plays the kernel: a `utimensat(UTIME_NOW)` is a setattr carrying the kernel's
"now", which is its coarse real-time clock (raised to the latest fine-grained stamp a multigrain
file system handed out), exactly as the FUSE shim receives it.
"""

from __future__ import annotations

import os
import time

import pytest

from mountd.clock import CLOCK_REALTIME_COARSE
from mountd.meta.store import ROOT_INODE
from mountd.vfs.filesystem import READDIR_PAGE
from mountd.vfs.types import SetAttr

TRIES = 200
ROOTS = ["/data", "/scratch"]  # a remote path, a local-only path


@pytest.fixture
def m(make_mount):
    """A mount with a local-only directory /scratch; uploads only when drained."""
    mount = make_mount(delay="1h")
    mount.mkdir("/scratch")
    return mount


def _utime(m, path: str, t: int) -> None:
    m.run(m.stack.fs.setattr, m.ino(path), SetAttr(atime_ns=t, mtime_ns=t), m.ctx)


@pytest.mark.parametrize("root", ROOTS)
def test_utime_now_after_create_is_not_earlier(m, root):
    back = []
    for i in range(TRIES):
        path = f"{root}/f{i}"
        m.create(path)  # open(O_CREAT), close: no write
        for what in ("create", "write"):
            stamped = m.getattr(path)
            _utime(m, path, time.clock_gettime_ns(CLOCK_REALTIME_COARSE))  # the kernel's now
            now = m.getattr(path)
            if now.mtime_ns < stamped.mtime_ns or now.ctime_ns < stamped.ctime_ns:
                back.append(what)
            m.write_at(path, 0, b"x")
    assert not back, f"utime(UTIME_NOW) moved times back after {len(back)} of {2 * TRIES} stamps: {set(back)}"


@pytest.mark.parametrize("root", ROOTS)
def test_stamps_after_a_kernel_now_are_not_earlier(m, root):
    """A kernel "now" may be ahead of the coarse clock (a multigrain floor: a fine-grained time):
    the write, the create and the rename that follow stamp no earlier time."""
    m.mkdir(f"{root}/d")
    m.create(f"{root}/d/f", b"x")
    back = []
    for i in range(TRIES):
        now = time.time_ns()  # a now from the fine clock, as the kernel's floor can be
        _utime(m, f"{root}/d/f", now)
        _utime(m, f"{root}/d", now)
        m.write_at(f"{root}/d/f", 0, b"y")
        m.create(f"{root}/d/g{i}")
        f, d = m.getattr(f"{root}/d/f"), m.getattr(f"{root}/d")
        m.rename(f"{root}/d/g{i}", f"{root}/d/h{i}")
        renamed = m.getattr(f"{root}/d")
        stamps = (("write", f.mtime_ns), ("write ctime", f.ctime_ns), ("create", d.mtime_ns),
                  ("rename", renamed.mtime_ns))
        back += [what for what, t in stamps if t < now]
    assert not back, f"{len(back)} stamps earlier than the kernel's now before them: {sorted(set(back))}"


def _listing(m, ino: int, offset: int) -> list[tuple[int, str, int]]:
    def call() -> list[tuple[int, str, int]]:
        return [(row[0], os.fsdecode(row[1]), row[2]) for page in m.stack.fs.readdir(ino, offset)
                for row in page]
    return m.run_sync(call)


@pytest.mark.parametrize("root", ROOTS)
def test_readdir_dots_and_offsets(m, root):
    m.mkdir(f"{root}/d")
    names = [f"e{i:05d}" for i in range(READDIR_PAGE + 500)]  # two pages
    for n in names:
        m.create(f"{root}/d/{n}")
    ino, parent = m.ino(f"{root}/d"), m.ino(root)
    whole = _listing(m, ino, 0)
    assert [(name, i) for _, name, i in whole[:2]] == [(".", ino), ("..", parent)]
    assert sorted(name for _, name, _ in whole[2:]) == names
    offsets = [off for off, _, _ in whole]
    assert len(set(offsets)) == len(offsets) and 0 not in offsets
    # every offset, the dots' included, resumes right after its entry
    for k in (0, 1, 2, 3, READDIR_PAGE, READDIR_PAGE + 1, READDIR_PAGE + 2, len(whole) - 1):
        assert _listing(m, ino, offsets[k]) == whole[k + 1:], k
    # an entry removed or added meanwhile does not shift the others
    m.unlink(f"{root}/d/{names[0]}")
    m.create(f"{root}/d/new")
    rest = _listing(m, ino, offsets[5])
    assert rest[:-1] == whole[6:] and rest[-1][1] == "new"
    root_dots = _listing(m, ROOT_INODE, 0)[:2]
    assert [(name, i) for _, name, i in root_dots] == [(".", ROOT_INODE), ("..", ROOT_INODE)]
    assert m.readdir(f"{root}/d") == [*names[1:], "new"]  # the harness hides them, as os.listdir
