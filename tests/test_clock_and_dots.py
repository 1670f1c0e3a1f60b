"""Two defects seen from outside a real mount (issue 20, item 6).

- Times never go backwards: a new file's times and the "now" of `utimensat(UTIME_NOW)`, which the
  kernel takes from its own clock and passes in, come from one clock (mountd/clock.py).
- `readdir` returns `.` and `..` as a disk does: once each, with the inode numbers of the
  directory and of its parent (the root's `..` is the root), in small and in large directories.

One mount serves the module: remote "main" at /data, local-only paths elsewhere.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MountedRepo, is_mounted
from tests.test_posix import AREAS, libc  # readdir(3), telldir, seekdir through ctypes

TRIES = 200
_counter = itertools.count()
BIG = 1000  # entries: several readdir replies of the kernel's 4 KiB buffer (libc asks for 32 KiB)


@pytest.fixture(scope="module")
def mount() -> Iterator[MountedRepo]:
    root = Path(tempfile.mkdtemp(prefix="mountd-clock-dots-"))
    repo = MountedRepo(root / "repo")
    repo.start()
    (repo.mp / "work").mkdir()
    yield repo
    repo.cleanup()
    bad = repo.unexpected_log_errors()
    if not is_mounted(repo.mp) and not bad:
        shutil.rmtree(root, ignore_errors=True)
    assert not bad, "daemon logged errors:\n" + "\n".join(bad[:20])


@pytest.fixture(params=list(AREAS))
def area(request, mount) -> Path:
    d = mount.mp / AREAS[request.param] / f"t{next(_counter)}"
    d.mkdir()
    return d


# ---------------------------------------------------------------------------------------------
# one clock
# ---------------------------------------------------------------------------------------------
def _went_back(back: list[tuple[str, int]], step: str, before: os.stat_result, after: os.stat_result,
               fields: tuple[str, ...] = ("mtime", "ctime")) -> None:
    """Note in `back` each time of `fields` that is earlier after `step` than before it."""
    for field in fields:
        t0, t1 = getattr(before, f"st_{field}_ns"), getattr(after, f"st_{field}_ns")
        if t1 < t0:
            back.append((f"{step} {field}", t0 - t1))


def _then_utime_now(back: list[tuple[str, int]], what: str, p: Path) -> os.stat_result:
    """utime(p, None) (UTIME_NOW: the kernel's "now") after the daemon stamped `p`."""
    stamped = os.stat(p)
    os.utime(p, None)
    now = os.stat(p)
    _went_back(back, f"{what}->utime", stamped, now, ("mtime", "ctime", "atime"))
    if now.st_ctime_ns < now.st_mtime_ns:
        back.append((f"{what}->utime ctime<mtime", now.st_mtime_ns - now.st_ctime_ns))
    return now


def test_utime_now_never_goes_back(area):
    """Each call that stamps times (mkdir, create, write, rename) followed by utime(path, None), and
    utime(path, None) followed by a write: no time is ever earlier than the one before it. With the
    daemon stamping from a finer clock than the kernel's, create then utime(None) moved mtime back
    in 194 of 200 tries here."""
    back: list[tuple[str, int]] = []
    for i in range(TRIES):
        d = area / f"d{i}"
        d.mkdir()
        _then_utime_now(back, "mkdir", d)
        f = d / "f"
        os.close(os.open(f, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
        touched = _then_utime_now(back, "create", f)
        _then_utime_now(back, "create (parent)", d)
        with open(f, "ab") as fh:
            fh.write(b"x")
        _went_back(back, "utime->write", touched, os.stat(f))
        _then_utime_now(back, "write", f)
        os.rename(f, d / "g")
        _then_utime_now(back, "rename (parent)", d)
    summary = {what: (n, max(ns for w, ns in back if w == what))
               for what, n in Counter(w for w, _ in back).items()}
    assert not back, f"backward steps in {TRIES} tries (how many, by up to ns): {summary}"


# ---------------------------------------------------------------------------------------------
# `.` and `..`
# ---------------------------------------------------------------------------------------------
DT_DIR = 4


def _entries(d: Path, n: int | None = None, dirp: int | None = None) -> list[tuple[str, int, int]]:
    """(name, d_ino, d_type) of readdir(3) as it returns them, `.` and `..` included."""
    own = dirp is None
    if own:
        dirp = libc.opendir(os.fsencode(d))
        assert dirp, os.strerror(ctypes.get_errno())
    out: list[tuple[str, int, int]] = []
    try:
        while n is None or len(out) < n:
            ent = libc.readdir(dirp)
            if not ent:
                break
            out.append((ent.contents.d_name.decode(), ent.contents.d_ino, ent.contents.d_type))
    finally:
        if own:
            libc.closedir(dirp)
    return out


def _ls_af(d: Path) -> list[str]:
    out = subprocess.run(["ls", "-af", str(d)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("size", [0, 3, BIG])
def test_readdir_has_dot_and_dotdot_once(area, size):
    d = area / f"d{size}"
    d.mkdir()
    names = [f"entry-{i:05d}" for i in range(size)]
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = _ls_af(d)
    assert sorted(listed) == sorted([".", "..", *names]), "ls -af: a name missing, extra or twice"
    got = _entries(d)
    assert sorted(name for name, _, _ in got) == sorted([".", "..", *names])
    kinds = {name: (ino, kind) for name, ino, kind in got}
    assert kinds["."] == (os.stat(d).st_ino, DT_DIR)
    assert kinds[".."] == (os.stat(area).st_ino, DT_DIR)
    for n in names[:50]:
        assert kinds[n][0] == os.lstat(d / n).st_ino, n
    assert os.listdir(d) == [n for n, _, _ in got if n not in (".", "..")]  # same order, dots hidden


def test_root_dotdot_is_the_root(mount):
    got = {name: ino for name, ino, _ in _entries(mount.mp)}
    root_ino = os.stat(mount.mp).st_ino
    assert got["."] == got[".."] == root_ino
    assert {"data", "work"} <= set(got)
    assert _ls_af(mount.mp).count("..") == 1


def test_seekdir_back_to_before_and_between_the_dots(area):
    """The dots have offsets of their own: telldir/seekdir at the start, between `.` and `..`,
    and after them returns the same entries again."""
    d = area / "seek"
    d.mkdir()
    for i in range(20):
        (d / f"e{i:02d}").write_bytes(b"")
    dirp = libc.opendir(os.fsencode(d))
    assert dirp
    try:
        start = libc.telldir(dirp)
        whole = _entries(d, None, dirp)
        assert [n for n, _, _ in whole[:2]] == [".", ".."]
        for skip in range(4):
            libc.seekdir(dirp, start)
            _entries(d, skip, dirp)
            pos = libc.telldir(dirp)
            rest = _entries(d, None, dirp)
            libc.seekdir(dirp, pos)
            assert _entries(d, None, dirp) == rest == whole[skip:], skip
    finally:
        libc.closedir(dirp)
