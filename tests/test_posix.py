"""POSIX conformance of the mount, as root and as other users.

One mount (`allow_other` + `default_permissions`) serves the module: remote "main" at /data,
remote "other" at /other, local-only paths elsewhere. Tests that apply to both kinds of path
run on /data ("remote") and on /work ("local"). Other users are real: a forked child drops to
the uid/gid before it makes the call, so the kernel and the daemon see that caller.
The last test keeps docs/semantics.md honest: its errno table is parsed and replayed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import json
import mmap
import os
import pickle
import re
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, MountedRepo, is_mounted

ALICE, BOB, STAFF = 2001, 2002, 2100  # two users sharing the group STAFF
AREAS = {"remote": "data", "local": "work"}
_counter = itertools.count()

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def errno_of(fn: Callable[[], object]) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def run_as(uid: int, gid: int, fn: Callable[[], object], groups: tuple[int, ...] = ()) -> object:
    """Run fn in a forked child with these credentials; re-raise its OSError here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                res: tuple[str, object] = ("ok", fn())
            except OSError as e:
                res = ("errno", e.errno)
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                res = ("exception", repr(e))
            os.write(w, pickle.dumps(res))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "errno":
        raise OSError(value, os.strerror(value))
    if kind == "exception":
        raise AssertionError(f"child failed: {value}")
    return value


def as_alice(fn: Callable[[], object]) -> object:
    return run_as(ALICE, STAFF, fn)


def as_bob(fn: Callable[[], object]) -> object:
    return run_as(BOB, STAFF, fn)


def tick() -> None:
    """File times have the kernel clock's granularity (a few ms): let one pass so a change shows."""
    time.sleep(0.02)


SEEDED_MTIME = "1500000000.000000001"
BIG = 5000  # entries of the large directories


def seed_remote(remote: Path) -> None:
    """Objects written by another client before the mount: a directory marker and a file, with metadata."""
    d = remote / "seeded" / "dir"
    d.mkdir(parents=True)
    (d / "f").write_bytes(b"x")
    (remote / "seeded" / "file").write_bytes(b"seeded")
    meta = {"uid": str(ALICE), "gid": str(STAFF), "mtime": SEEDED_MTIME}
    os.setxattr(d, "user.mountd.meta", json.dumps({**meta, "mode": str(stat.S_IFDIR | 0o700)}).encode())
    os.setxattr(remote / "seeded" / "file", "user.mountd.meta",
                json.dumps({**meta, "mode": str(stat.S_IFREG | 0o600)}).encode())
    (remote / "big").mkdir()
    for i in range(BIG):
        (remote / "big" / f"entry-{i:05d}").write_bytes(b"")


@pytest.fixture(scope="module")
def posix_repo():
    # other users must reach the mountpoint: pytest's own tmp dirs are 0700, so not below them
    root = Path(tempfile.mkdtemp(prefix="mountd-posix-"))
    os.chmod(root, 0o755)
    remotes = textwrap.dedent(f"""
        [[remote]]
        name = "main"
        url = "file://{root / 'repo' / 'remote'}"
        at = "/data"
        [[remote]]
        name = "other"
        url = "file://{root / 'repo' / 'remote2'}"
        at = "/other"
        """)
    repo = MountedRepo(root / "repo", extra_toml="allow_other = true\ndefault_permissions = true\n",
                       remote_toml=remotes)
    for p in (root / "repo", repo.mp):
        os.chmod(p, 0o755)
    seed_remote(repo.remote_dir)
    (root / "repo" / "remote2").mkdir()
    repo.start()
    (repo.mp / "work").mkdir()
    yield repo
    repo.cleanup()
    bad = repo.unexpected_log_errors()
    if not is_mounted(repo.mp) and not bad and not os.environ.get("MOUNTD_KEEP_TEST_DIRS"):  # post-mortems
        shutil.rmtree(root, ignore_errors=True)
    assert not bad, "daemon logged errors:\n" + "\n".join(bad[:20])


@pytest.fixture(params=list(AREAS))
def area(request, posix_repo) -> Path:
    """A fresh, world-writable directory on a remote path or on a local-only path."""
    d = posix_repo.mp / AREAS[request.param] / f"t{next(_counter)}"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


# ---------------------------------------------------------------------------------------------
# permissions of other users
# ---------------------------------------------------------------------------------------------
def test_permissions_are_honoured_for_other_users(area):
    private = area / "private"
    private.write_text("root only")
    os.chmod(private, 0o600)
    public = area / "public"
    public.write_text("everyone reads")
    os.chmod(public, 0o644)
    closed = area / "closed"
    closed.mkdir(mode=0o700)
    (closed / "inner").write_text("x")
    ro_dir = area / "ro-dir"
    ro_dir.mkdir(mode=0o755)

    with pytest.raises(PermissionError):
        as_alice(private.read_bytes)
    assert as_alice(public.read_bytes) == b"everyone reads"
    with pytest.raises(PermissionError):
        as_alice(lambda: open(public, "ab").close())
    with pytest.raises(PermissionError):
        as_alice(lambda: os.truncate(public, 0))
    with pytest.raises(PermissionError):
        as_alice(lambda: os.stat(closed / "inner"))  # no search permission
    with pytest.raises(PermissionError):
        as_alice(lambda: os.listdir(closed))
    with pytest.raises(PermissionError):
        as_alice(lambda: (ro_dir / "new").write_text("x"))
    with pytest.raises(PermissionError):
        as_alice(lambda: os.mkdir(ro_dir / "sub"))
    (ro_dir / "kept").write_text("k")
    os.chmod(ro_dir / "kept", 0o666)
    for denied in (lambda: os.unlink(ro_dir / "kept"), lambda: os.rename(ro_dir / "kept", area / "stolen")):
        with pytest.raises(PermissionError) as e:
            as_alice(denied)
        assert e.value.errno == errno.EACCES
    # not the owner: no chmod, no chown, no explicit times; "touch" needs write permission
    with pytest.raises(PermissionError) as e:
        as_alice(lambda: os.chmod(public, 0o666))
    assert e.value.errno == errno.EPERM
    with pytest.raises(PermissionError) as e:
        as_alice(lambda: os.chown(public, ALICE, STAFF))
    assert e.value.errno == errno.EPERM
    with pytest.raises(PermissionError) as e:
        as_alice(lambda: os.utime(public, ns=(0, 0)))
    assert e.value.errno == errno.EPERM
    with pytest.raises(PermissionError) as e:
        as_alice(lambda: os.utime(public))
    assert e.value.errno == errno.EACCES
    # root still may do everything
    assert private.read_bytes() == b"root only"


def test_new_files_belong_to_the_caller(area):
    def make() -> tuple[os.stat_result, os.stat_result]:
        os.umask(0o022)
        (area / "alice.txt").write_text("mine")
        os.mkdir(area / "alice-dir", 0o777)
        return os.stat(area / "alice.txt"), os.stat(area / "alice-dir")

    f, d = as_alice(make)  # type: ignore[misc]
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (ALICE, STAFF, 0o644)
    assert (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode)) == (ALICE, STAFF, 0o755)
    # the owner may chmod and chgrp to a group she is in, but not give the file away
    as_alice(lambda: os.chmod(area / "alice.txt", 0o600))
    with pytest.raises(PermissionError):
        as_bob(lambda: (area / "alice.txt").read_text())
    with pytest.raises(PermissionError):
        as_alice(lambda: os.chown(area / "alice.txt", BOB, -1))
    with pytest.raises(PermissionError):
        as_alice(lambda: os.chown(area / "alice.txt", -1, 0))  # root's group: she is not in it
    # group permissions apply to members of the file's group
    as_alice(lambda: os.chmod(area / "alice.txt", 0o640))
    assert as_bob(lambda: (area / "alice.txt").read_text()) == "mine"
    with pytest.raises(PermissionError):
        run_as(3000, 3000, lambda: (area / "alice.txt").read_text())


def test_setgid_directory_passes_its_group_on(area):
    d = area / "shared"
    d.mkdir()
    os.chown(d, 0, STAFF)
    os.chmod(d, 0o2777)
    f, sub = as_alice(lambda: ((d / "f").write_text("x"), os.mkdir(d / "sub"), os.stat(d / "f"),
                               os.stat(d / "sub"))[2:])  # type: ignore[misc]
    assert f.st_gid == STAFF and sub.st_gid == STAFF
    assert sub.st_mode & stat.S_ISGID
    assert not f.st_mode & stat.S_ISGID


def test_sticky_directory(area):
    tmp = area / "sticky"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    as_alice(lambda: (tmp / "alice.txt").write_text("a"))
    as_bob(lambda: (tmp / "bob.txt").write_text("b"))
    for attempt in (lambda: os.unlink(tmp / "alice.txt"), lambda: os.rename(tmp / "alice.txt", tmp / "taken"),
                    lambda: os.rename(tmp / "bob.txt", tmp / "alice.txt")):
        with pytest.raises(PermissionError) as e:
            as_bob(attempt)
        assert e.value.errno == errno.EPERM
    as_alice(lambda: os.rename(tmp / "alice.txt", tmp / "alice2.txt"))  # her own file
    as_alice(lambda: os.unlink(tmp / "alice2.txt"))
    os.unlink(tmp / "bob.txt")  # root may
    assert os.listdir(tmp) == []


# ---------------------------------------------------------------------------------------------
# setuid / setgid bits
# ---------------------------------------------------------------------------------------------
def test_setuid_setgid_cleared_on_write_by_another_user(area):
    f = area / "tool"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o6777)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777

    def append() -> None:
        with open(f, "ab") as out:
            out.write(b"echo hi\n")

    as_alice(append)
    mode = stat.S_IMODE(os.stat(f).st_mode)
    assert mode & (stat.S_ISUID | stat.S_ISGID) == 0, oct(mode)
    assert mode == 0o777
    assert f.read_bytes() == b"#!/bin/sh\necho hi\n"


PRIVILEGE_MODES = (0o2666, 0o4666, 0o6666, 0o2676, 0o6766, 0o6777)


def _privilege_bits_after(d: Path, mode: int, group: int, change: Callable[[Path], object], who: int) -> int:
    f = d / f"p{next(_counter)}"
    f.write_bytes(b"x")
    os.chown(f, 0, group)
    os.chmod(f, mode)
    run_as(who, STAFF, lambda: change(f)) if who else change(f)
    return stat.S_IMODE(os.stat(f).st_mode)


def _append(f: Path) -> None:
    with open(f, "ab") as out:
        out.write(b"more")


@pytest.mark.parametrize("change", ["write", "truncate", "chown", "chgrp"])
def test_privilege_bits_match_the_local_kernel(area, change):
    """setuid/setgid after a write, truncate or chown: the same as on a local disk of this kernel."""
    plain = Path(tempfile.mkdtemp(prefix="mountd-ref-"))
    os.chmod(plain, 0o777)
    try:
        calls = {"write": (_append, ALICE), "truncate": (lambda f: os.truncate(f, 1), ALICE),
                 "chown": (lambda f: os.chown(f, BOB, -1), 0), "chgrp": (lambda f: os.chown(f, -1, 0), 0)}
        fn, who = calls[change]
        got, want = {}, {}
        for mode in PRIVILEGE_MODES:
            for group in (0, STAFF):
                got[(oct(mode), group)] = _privilege_bits_after(area, mode, group, fn, who)
                want[(oct(mode), group)] = _privilege_bits_after(plain, mode, group, fn, who)
        for (mode, group), bits in list(got.items()):
            if who and group != STAFF and not int(mode, 8) & stat.S_IXGRP:
                # setgid without group-execute, written by a non-member: Linux 6.2+ drops it on a
                # local disk, earlier kernels and the kernel's FUSE code keep it; POSIX allows both
                assert bits | stat.S_ISGID == want[(mode, group)] | stat.S_ISGID
                del got[(mode, group)], want[(mode, group)]
        assert {k: oct(v) for k, v in got.items()} == {k: oct(v) for k, v in want.items()}
    finally:
        shutil.rmtree(plain)


def test_setuid_kept_on_write_by_root(area):
    f = area / "roottool"
    f.write_bytes(b"x")
    os.chmod(f, 0o4755)
    with open(f, "ab") as out:
        out.write(b"y")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4755  # CAP_FSETID


def test_setuid_setgid_cleared_on_chown(area):
    f = area / "prog"
    f.write_bytes(b"x")
    os.chmod(f, 0o6755)
    os.chown(f, ALICE, STAFF)
    st_ = os.stat(f)
    assert (st_.st_uid, st_.st_gid) == (ALICE, STAFF)
    assert stat.S_IMODE(st_.st_mode) == 0o755
    # setgid without group-execute is mandatory locking, not a privilege: it stays
    g = area / "locking"
    g.write_bytes(b"x")
    os.chmod(g, 0o2644)
    os.chown(g, ALICE, -1)
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o2644
    # directories keep their bits
    d = area / "dir"
    d.mkdir()
    os.chmod(d, 0o2755)
    os.chown(d, ALICE, STAFF)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2755


def test_non_member_cannot_set_setgid(area):
    f = area / "sg"
    as_alice(lambda: (f.write_text("x"), os.chmod(f, 0o2755)))
    # alice is in STAFF (the file's group): setgid stays
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o2755
    os.chown(f, ALICE, 0)
    # the file's group is root's now; alice is not in it: chmod silently drops setgid
    as_alice(lambda: os.chmod(f, 0o2755))
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755


# ---------------------------------------------------------------------------------------------
# times
# ---------------------------------------------------------------------------------------------
OLD = 1_000_000_000_000_000_000  # 2001-09-09: any update moves a time far from it


def _age(*paths: Path) -> None:
    for p in paths:
        os.utime(p, ns=(OLD, OLD), follow_symlinks=False)


def test_times_of_files_and_parents(area):
    d1, d2 = area / "d1", area / "d2"
    d1.mkdir()
    d2.mkdir()
    f = d1 / "f"

    # create: the parent's mtime and ctime change
    _age(d1)
    c0 = os.stat(d1).st_ctime_ns
    tick()
    f.write_bytes(b"1")
    s = os.stat(d1)
    assert s.st_mtime_ns > OLD and s.st_ctime_ns > c0

    # write: the file's mtime and ctime change, the parent's do not
    _age(f, d1)
    fc, dc = os.stat(f).st_ctime_ns, os.stat(d1).st_ctime_ns
    tick()
    with open(f, "r+b") as fh:
        fh.write(b"22")
    s = os.stat(f)
    assert s.st_mtime_ns > OLD and s.st_ctime_ns > fc
    assert os.stat(d1).st_mtime_ns == OLD and os.stat(d1).st_ctime_ns == dc

    # truncate: mtime and ctime
    _age(f)
    fc = os.stat(f).st_ctime_ns
    tick()
    os.truncate(f, 1)
    s = os.stat(f)
    assert s.st_mtime_ns > OLD and s.st_ctime_ns > fc and s.st_size == 1

    # chmod, chown, utime: ctime only
    for change in (lambda: os.chmod(f, 0o600), lambda: os.chown(f, ALICE, -1),
                   lambda: os.utime(f, ns=(OLD, OLD))):
        _age(f)
        fc = os.stat(f).st_ctime_ns
        tick()
        change()
        s = os.stat(f)
        assert s.st_mtime_ns == OLD and s.st_ctime_ns > fc

    # rename to another directory: both parents' mtime and ctime, the file's ctime
    _age(f, d1, d2)
    fc, c1, c2 = os.stat(f).st_ctime_ns, os.stat(d1).st_ctime_ns, os.stat(d2).st_ctime_ns
    tick()
    os.rename(f, d2 / "g")
    g = d2 / "g"
    s1, s2, sg = os.stat(d1), os.stat(d2), os.stat(g)
    assert s1.st_mtime_ns > OLD and s1.st_ctime_ns > c1
    assert s2.st_mtime_ns > OLD and s2.st_ctime_ns > c2
    assert sg.st_mtime_ns == OLD and sg.st_ctime_ns > fc

    # mkdir / rmdir / symlink / unlink: the parent's mtime and ctime
    for change in (lambda: os.mkdir(d2 / "sub"), lambda: os.rmdir(d2 / "sub"),
                   lambda: os.symlink("g", d2 / "ln"), lambda: os.unlink(d2 / "ln"), lambda: os.unlink(g)):
        _age(d2)
        c2 = os.stat(d2).st_ctime_ns
        tick()
        change()
        s2 = os.stat(d2)
        assert s2.st_mtime_ns > OLD and s2.st_ctime_ns > c2


def test_o_trunc_updates_times_without_a_write(area):
    f = area / "trunc"
    for content in (b"something", b""):  # POSIX: also when the file was empty already
        f.write_bytes(content)
        _age(f)
        c0 = os.stat(f).st_ctime_ns
        tick()
        os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        s = os.stat(f)
        assert s.st_size == 0 and s.st_mtime_ns > OLD and s.st_ctime_ns > c0


def test_hard_link_times(posix_repo):
    base = posix_repo.mp / "work" / f"lt{next(_counter)}"
    base.mkdir()
    f = base / "f"
    f.write_bytes(b"x")
    _age(f, base)
    fc, dc = os.stat(f).st_ctime_ns, os.stat(base).st_ctime_ns
    tick()
    os.link(f, base / "g")
    s, d = os.stat(f), os.stat(base)
    assert s.st_mtime_ns == OLD and s.st_ctime_ns > fc  # the file: ctime only
    assert d.st_mtime_ns > OLD and d.st_ctime_ns > dc  # the directory: both
    _age(f)
    fc = os.stat(f).st_ctime_ns
    tick()
    os.unlink(base / "g")
    s = os.stat(f)
    assert s.st_nlink == 1 and s.st_ctime_ns > fc and s.st_mtime_ns == OLD


def test_unlink_of_open_file_updates_its_ctime(area):
    f = area / "open"
    f.write_bytes(b"data")
    with open(f, "rb") as fh:
        c0 = os.fstat(fh.fileno()).st_ctime_ns
        tick()
        os.unlink(f)
        s = os.fstat(fh.fileno())
        assert s.st_nlink == 0 and s.st_ctime_ns > c0
        assert fh.read() == b"data"  # still readable while open


def test_utime_nanoseconds_and_omit(area):
    f = area / "t"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_234_567_890_123_456_789, 1_111_111_111_987_654_321))
    s = os.stat(f)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_234_567_890_123_456_789, 1_111_111_111_987_654_321)
    # UTIME_OMIT for atime: only mtime changes
    UTIME_OMIT = (1 << 30) - 2

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    times = (Timespec * 2)(Timespec(0, UTIME_OMIT), Timespec(1_500_000_000, 5))
    assert libc.utimensat(AT_FDCWD, os.fsencode(f), times, 0) == 0
    s = os.stat(f)
    assert s.st_atime_ns == 1_234_567_890_123_456_789 and s.st_mtime_ns == 1_500_000_000_000_000_005


# ---------------------------------------------------------------------------------------------
# names and errnos
# ---------------------------------------------------------------------------------------------
def test_name_max(area):
    ok = "n" * 255
    too_long = "n" * 256
    (area / ok).write_text("x")
    assert os.listdir(area) == [ok]
    assert os.statvfs(area).f_namemax == 255
    for call in (lambda: (area / too_long).write_text("x"), lambda: os.mkdir(area / too_long),
                 lambda: os.symlink("x", area / too_long), lambda: os.rename(area / ok, area / too_long),
                 lambda: os.stat(area / too_long)):
        assert errno_of(call) == errno.ENAMETOOLONG
    # a multi-byte name counts bytes, not characters: 128 x 2 bytes = 256
    assert errno_of(lambda: (area / ("é" * 128)).write_text("x")) == errno.ENAMETOOLONG
    (area / ("é" * 127)).write_text("x")


def test_errnos(area, posix_repo):
    f = area / "file"
    f.write_text("x")
    d = area / "dir"
    d.mkdir()
    (d / "child").write_text("c")
    empty = area / "empty"
    empty.mkdir()
    os.symlink("loop2", area / "loop1")
    os.symlink("loop1", area / "loop2")
    os.symlink("file", area / "ln")

    expect = [
        (lambda: os.mkdir(d), errno.EEXIST),
        (lambda: os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST),
        (lambda: os.symlink("x", f), errno.EEXIST),
        (lambda: os.open(area / "file" / "below", os.O_RDONLY), errno.ENOTDIR),
        (lambda: os.mkdir(area / "file" / "below"), errno.ENOTDIR),
        (lambda: os.rmdir(f), errno.ENOTDIR),
        (lambda: os.rename(d, f), errno.ENOTDIR),
        (lambda: os.listdir(f), errno.ENOTDIR),
        (lambda: os.open(d, os.O_WRONLY), errno.EISDIR),
        (lambda: os.rename(f, d), errno.EISDIR),
        (lambda: os.unlink(d), errno.EISDIR),
        (lambda: os.rmdir(d), errno.ENOTEMPTY),
        (lambda: os.rename(empty, d), errno.ENOTEMPTY),
        (lambda: os.open(area / "loop1", os.O_RDONLY), errno.ELOOP),
        (lambda: os.open(area / "ln", os.O_RDONLY | os.O_NOFOLLOW), errno.ELOOP),
        (lambda: os.rename(d, d / "inside"), errno.EINVAL),
        (lambda: os.rmdir(area / "missing"), errno.ENOENT),
        (lambda: os.unlink(area / "missing"), errno.ENOENT),
        (lambda: os.readlink(f), errno.EINVAL),
        (lambda: os.rmdir(posix_repo.data), errno.EBUSY),  # a remote is attached there
    ]
    if area.parent.name == "data":  # an exchange with another kind of path (a move is a rename)
        other = posix_repo.mp / "work" / f"x-{area.name}"
        other.write_bytes(b"x")
        expect.append((lambda: renameat2(f, other, RENAME_EXCHANGE), errno.EXDEV))
    got = [errno_of(call) for call, _ in expect]
    assert [errno.errorcode.get(g, g) for g in got] == [errno.errorcode[e] for _, e in expect]
    # nothing changed
    assert sorted(os.listdir(area)) == ["dir", "empty", "file", "ln", "loop1", "loop2"]
    # rename of a directory over an empty one replaces it
    os.rename(d, empty)
    assert os.listdir(empty) == ["child"] and not d.exists()


def test_renameat2_noreplace_and_exchange(area):
    a, b = area / "a", area / "b"
    a.write_bytes(b"AAA")
    b.write_bytes(b"BB")
    with pytest.raises(FileExistsError):
        renameat2(a, b, RENAME_NOREPLACE)
    renameat2(a, area / "c", RENAME_NOREPLACE)
    assert (area / "c").read_bytes() == b"AAA" and not a.exists()
    renameat2(area / "c", b, RENAME_EXCHANGE)
    assert (area / "c").read_bytes() == b"BB" and b.read_bytes() == b"AAA"
    with pytest.raises(FileNotFoundError):
        renameat2(b, area / "missing", RENAME_EXCHANGE)
    assert errno_of(lambda: renameat2(b, area / "c", RENAME_EXCHANGE | RENAME_NOREPLACE)) == errno.EINVAL
    # a file and a directory (with content) trade places
    d = area / "d"
    d.mkdir()
    (d / "inner").write_bytes(b"in")
    renameat2(b, d, RENAME_EXCHANGE)
    assert b.is_dir() and (b / "inner").read_bytes() == b"in" and d.read_bytes() == b"AAA"


def test_renameat2_exchange_reaches_the_remote(posix_repo):
    base = posix_repo.data / f"x{next(_counter)}"
    base.mkdir()
    (base / "one").write_bytes(b"1" * 10)
    (base / "two").write_bytes(b"2" * 20)
    posix_repo.sync(base)
    renameat2(base / "one", base / "two", RENAME_EXCHANGE)
    posix_repo.sync(base)
    remote = posix_repo.remote_dir / base.name
    assert (remote / "one").read_bytes() == b"2" * 20
    assert (remote / "two").read_bytes() == b"1" * 10


@pytest.mark.parametrize("settle", [True, False], ids=["uploaded-first", "pending"])
def test_renames_that_trade_keys_keep_every_files_bytes(posix_repo, settle):
    """Log rotation and exchanges make a key's old object the only copy of another file's bytes."""
    base = posix_repo.data / f"rot{next(_counter)}"
    base.mkdir()
    for round_ in range(4):
        for i in (3, 2, 1):  # log.2 -> log.3, log.1 -> log.2, log -> log.1
            older = base / ("log" if i == 1 else f"log.{i - 1}")
            if older.exists():
                os.rename(older, base / f"log.{i}")
        (base / "log").write_bytes(f"round {round_}\n".encode() * (round_ + 1))
        if (base / "log.2").exists():
            renameat2(base / "log.1", base / "log.2", RENAME_EXCHANGE)
        if settle:
            posix_repo.sync(base)
    want = {p.name: p.read_bytes() for p in base.iterdir()}
    assert len(set(want.values())) == len(want) == 4, want
    posix_repo.sync(base)
    remote = posix_repo.remote_dir / base.name
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == want  # and no hidden copies are left
    assert {p.name: p.read_bytes() for p in base.iterdir()} == want  # the mount reads the same


# ---------------------------------------------------------------------------------------------
# hard links, special files, statfs
# ---------------------------------------------------------------------------------------------
def test_hard_links_are_one_file_with_several_names(area, posix_repo):
    sub = area / "sub"
    sub.mkdir()
    f = area / "f"
    f.write_bytes(b"one")
    os.link(f, sub / "g")
    sf, sg = os.stat(f), os.stat(sub / "g")
    assert sf.st_ino == sg.st_ino and sf.st_nlink == sg.st_nlink == 2
    with open(sub / "g", "ab") as out:
        out.write(b"+two")
    assert f.read_bytes() == b"one+two"
    if area.parent.name == "data":  # on a remote path each name is an object holding the file
        posix_repo.sync(area)
        remote = posix_repo.remote_dir / area.name
        assert (remote / "f").read_bytes() == (remote / "sub" / "g").read_bytes() == b"one+two"
    os.unlink(f)
    assert os.stat(sub / "g").st_nlink == 1 and (sub / "g").read_bytes() == b"one+two"
    if area.parent.name == "data":
        posix_repo.sync(area)
        assert not (remote / "f").exists() and (remote / "sub" / "g").read_bytes() == b"one+two"
    assert errno_of(lambda: os.link(area, area / "dirlink")) == errno.EPERM
    assert errno_of(lambda: os.link(sub / "g", sub / "g")) == errno.EEXIST


def test_hard_links_across_file_systems_fail_with_exdev(posix_repo):
    f = posix_repo.data / f"h{next(_counter)}"
    f.write_bytes(b"x")
    local = posix_repo.mp / "work" / f"h{next(_counter)}"
    local.write_bytes(b"x")
    assert errno_of(lambda: os.link(local, posix_repo.data / local.name)) == errno.EXDEV
    assert errno_of(lambda: os.link(f, posix_repo.mp / "work" / (f.name + "-in-work"))) == errno.EXDEV
    assert errno_of(lambda: os.link(f, posix_repo.mp / "other" / f.name)) == errno.EXDEV


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def _falloc(fd: int, mode: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


FALLOCATE_STEPS = [  # (mode, offset, length): each applied to the mount and to a file on a disk
    (0, 0, 1000),  # within the size: nothing a reader sees changes
    (FALLOC_FL_KEEP_SIZE, 0, 1 << 20),  # preallocated beyond the end, size kept
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192),
    (FALLOC_FL_ZERO_RANGE, 20000, 5000),
    (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 60000, 50000),  # past the end: size kept
    (0, 100000, 30000),  # grows the file with zeros
    (FALLOC_FL_ZERO_RANGE, 140000, 1000),  # grows it too
]


def test_fallocate_modes_leave_the_bytes_a_disk_leaves(area, posix_repo, tmp_path):
    data = bytes(range(256)) * 256  # 64 KiB, no zero run
    f, disk = area / "f", tmp_path / "f"
    f.write_bytes(data)
    disk.write_bytes(data)
    fd, dfd = os.open(f, os.O_RDWR), os.open(disk, os.O_RDWR)
    try:
        for mode, offset, length in FALLOCATE_STEPS:
            _falloc(fd, mode, offset, length)
            _falloc(dfd, mode, offset, length)
            assert os.fstat(fd).st_size == os.fstat(dfd).st_size, (mode, offset, length)
            assert os.pread(fd, 1 << 20, 0) == os.pread(dfd, 1 << 20, 0), (mode, offset, length)
        assert errno_of(lambda: _falloc(fd, 0, -1, 10)) == errno.EINVAL
    finally:
        os.close(fd)
        os.close(dfd)
    want = disk.read_bytes()
    assert f.read_bytes() == want and len(want) == 141000
    if area.parent.name == "data":
        posix_repo.sync(f)
        assert (posix_repo.remote_dir / area.name / "f").read_bytes() == want
    ro = os.open(f, os.O_RDONLY)
    try:
        assert errno_of(lambda: _falloc(ro, 0, 0, 10)) == errno.EBADF
    finally:
        os.close(ro)


def test_fallocate_keep_size_of_an_uploaded_file_sends_nothing_again(posix_repo):
    f = posix_repo.data / f"fa{next(_counter)}"
    f.write_bytes(b"uploaded")
    posix_repo.sync(f)
    version, mtime = os.getxattr(f, "user.mountd.version"), os.stat(f).st_mtime_ns
    fd = os.open(f, os.O_RDWR)
    try:
        _falloc(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
    finally:
        os.close(fd)
    assert os.stat(f).st_mtime_ns == mtime  # no byte changed: not a write, no upload
    assert os.getxattr(f, "user.mountd.state") == b"clean"
    assert os.getxattr(f, "user.mountd.version") == version and f.read_bytes() == b"uploaded"


def _link_fd(fd: int, path: Path) -> None:
    """linkat(2) of an open file by its /proc name with AT_SYMLINK_FOLLOW, as the man page shows
    (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; Python's os.link calls link(2), which does not follow)."""
    at_fdcwd, at_symlink_follow = -100, 0x400
    src = f"/proc/self/fd/{fd}".encode()
    if libc.linkat(at_fdcwd, src, at_fdcwd, os.fsencode(path), at_symlink_follow) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def test_o_tmpfile_is_unnamed_until_linked_then_an_ordinary_file(area, posix_repo):
    fd = os.open(area, os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"written unnamed")
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_nlink == 0
        assert st.st_size == 15 and os.listdir(area) == []
        os.fsync(fd)  # what was written is kept before it has a name...
        _link_fd(fd, area / "named")  # ...and is the named file's content, with no write after
        assert os.fstat(fd).st_nlink == 1
    finally:
        os.close(fd)
    assert os.listdir(area) == ["named"] and (area / "named").read_bytes() == b"written unnamed"
    assert os.stat(area / "named").st_ino == st.st_ino
    if area.parent.name == "data":
        posix_repo.sync(area / "named")
        assert (posix_repo.remote_dir / area.name / "named").read_bytes() == b"written unnamed"
    # one closed without a name is gone: nothing listed, nothing uploaded, its data freed
    fd = os.open(area, os.O_TMPFILE | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 100_000)
    ino = os.fstat(fd).st_ino
    os.close(fd)
    assert os.listdir(area) == ["named"]
    assert not (posix_repo.local / "data" / f"{ino:x}").exists()
    posix_repo.sync(area)
    if area.parent.name == "data":
        assert sorted(os.listdir(posix_repo.remote_dir / area.name)) == ["named"]
    assert errno_of(lambda: os.open(area / "named", os.O_TMPFILE | os.O_RDWR, 0o600)) == errno.ENOTDIR


def test_statfs(posix_repo):
    st_ = os.statvfs(posix_repo.mp)
    assert st_.f_namemax == 255
    assert st_.f_bsize > 0 and st_.f_blocks > 0 and 0 <= st_.f_bavail <= st_.f_blocks
    assert st_.f_files > 0
    assert os.statvfs(posix_repo.data).f_namemax == 255
    import subprocess

    out = subprocess.run(["df", "-P", str(posix_repo.mp)], check=True, capture_output=True, text=True).stdout
    assert "mountd" in out


# ---------------------------------------------------------------------------------------------
# large directories: paging, telldir/seekdir, changes while reading
# ---------------------------------------------------------------------------------------------
class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(_Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.closedir.argtypes = [ctypes.c_void_p]


def _read_names(dirp: int, n: int) -> list[str]:
    out = []
    while len(out) < n:
        ent = libc.readdir(dirp)
        if not ent:
            break
        name = ent.contents.d_name.decode()
        if name not in (".", ".."):
            out.append(name)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("where", list(AREAS))
def test_large_directory_paging_while_changing(posix_repo, where):
    names = [f"entry-{i:05d}" for i in range(BIG)]
    if where == "remote":
        d = posix_repo.data / "big"  # seeded in the remote before the mount: served from its listing
    else:
        d = posix_repo.mp / "work" / f"big{next(_counter)}"
        d.mkdir()
        for n in names:
            os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    # every entry that exists throughout is returned exactly once, even while others come and go
    seen: list[str] = []
    removed: set[str] = set()
    added = 0
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 500 == 0:
                (d / f"new-{i}").write_text("x")
                added += 1
                victim = names[(i * 7 + BIG - 1) % BIG]
                if victim not in seen:
                    os.unlink(d / victim)
                    removed.add(victim)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(names) - removed <= set(seen), "an entry that existed throughout was missed"
    assert removed  # (whether readdir still returns those is unspecified: libc reads ahead)
    # telldir/seekdir: going back to a saved position returns the same entries again
    dirp = libc.opendir(os.fsencode(d))
    assert dirp
    try:
        first = _read_names(dirp, 1200)
        pos = libc.telldir(dirp)
        chunk = _read_names(dirp, 300)
        libc.seekdir(dirp, pos)
        again = _read_names(dirp, 300)
        assert chunk == again and len(chunk) == 300
        assert not set(first) & set(chunk)
    finally:
        libc.closedir(dirp)
    assert len(os.listdir(d)) == BIG - len(removed) + added


def _lookups_and_getattrs(repo) -> int:
    calls = repo.status()["statistics"]["fuse"]["calls"]
    return calls.get("lookup", 0) + calls.get("getattr", 0)


def test_readdirplus_hands_the_kernel_every_attribute(posix_repo, area):
    """scandir and ls -l get each entry's attributes in the readdir reply (built from plain rows
    by the patched pyfuse3): the stats that follow reach no handler, and every field is right,
    an open file's unflushed size included."""
    want = {}
    for i in range(150):
        p = area / f"f{i:03d}"
        p.write_bytes(b"x" * (i * 37))
        os.chmod(p, 0o600 + i % 0o100)
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_000_000_001 + i * 1_000_000_007))
        want[p.name] = (stat.S_IFREG | 0o600 + i % 0o100, i * 37, (i * 37 + 511) // 512,
                        1_600_000_000_123_456_789 + i, 1_500_000_000_000_000_001 + i * 1_000_000_007)
    (area / "sub").mkdir(mode=0o750)
    os.symlink("f000", area / "ln")
    held = open(area / "open", "wb")  # noqa: SIM115 (kept open through the listing)
    try:
        held.write(b"y" * 4321)
        held.flush()
        inos = {name: os.lstat(area / name).st_ino for name in os.listdir(area)}
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")  # the kernel forgets dentries and inodes: only readdirplus can refill them
        before = _lookups_and_getattrs(posix_repo)
        with os.scandir(area) as it:
            got = {e.name: e.stat(follow_symlinks=False) for e in it}
        asked = _lookups_and_getattrs(posix_repo) - before
    finally:
        held.close()
    assert asked <= 5, f"{asked} lookups/getattrs for {len(got)} entries: readdirplus attributes unused"
    assert set(got) == set(want) | {"sub", "ln", "open"}
    for name, (mode, size, blocks, atime, mtime) in want.items():
        st_ = got[name]
        assert (st_.st_mode, st_.st_size, st_.st_blocks, st_.st_atime_ns, st_.st_mtime_ns) == \
            (mode, size, blocks, atime, mtime), name
        assert (st_.st_ino, st_.st_nlink, st_.st_uid, st_.st_gid, st_.st_blksize) == \
            (inos[name], 1, os.getuid(), os.getgid(), 1 << 20), name
    assert stat.S_ISDIR(got["sub"].st_mode) and stat.S_IMODE(got["sub"].st_mode) == 0o750 & ~0o022
    assert stat.S_ISLNK(got["ln"].st_mode) and got["ln"].st_size == len("f000")
    assert got["open"].st_size == 4321 and got["open"].st_ino == inos["open"]


# ---------------------------------------------------------------------------------------------
# user.mountd.* extended attributes
# ---------------------------------------------------------------------------------------------
def test_ls_l_asks_the_daemon_for_xattrs_once_not_per_entry(posix_repo):
    d = posix_repo.mp / f"lsdir{next(_counter)}"
    d.mkdir()
    for i in range(300):
        (d / f"f{i}").write_bytes(b"x")
    before = posix_repo.status()["statistics"]["fuse"]["calls"].get("getxattr", 0)
    out = subprocess.run(["ls", "-l", str(d)], capture_output=True, text=True, check=True).stdout
    assert out.count("\n") == 301
    # ENOTSUP for security.selinux and system.posix_acl_access lets ls remember, per device, that
    # the file system has neither; ENODATA made it ask both for each of the 300 entries
    assert posix_repo.status()["statistics"]["fuse"]["calls"].get("getxattr", 0) - before <= 4


def test_mountd_xattrs_are_read_only(posix_repo):
    f = posix_repo.data / f"xa{next(_counter)}"
    f.write_bytes(b"12345")
    posix_repo.sync(f)
    assert [n for n in os.listxattr(f) if n.startswith("user.mountd.")] == []  # read by name, not listed
    assert os.getxattr(f, "user.mountd.state") == b"clean"
    assert os.getxattr(f, "user.mountd.size") == b"5"
    assert os.getxattr(f, "user.mountd.remote_url").decode() == f"file://{posix_repo.remote_dir}/{f.name}"
    for name in ("user.mountd.state", "user.mountd.size", "user.mountd.remote_url", "user.mountd.new"):
        assert errno_of(lambda n=name: os.setxattr(f, n, b"x")) == errno.EPERM
        assert errno_of(lambda n=name: os.removexattr(f, n)) == errno.EPERM
    assert errno_of(lambda: os.getxattr(f, "user.other")) == errno.ENODATA  # user.*: tests/test_xattrs.py
    assert errno_of(lambda: os.getxattr(f, "user.mountd.nope")) == errno.ENODATA
    # namespaces the mount does not store: "not supported", as ext4 without ACLs answers
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        assert errno_of(lambda n=name: os.getxattr(f, n)) == errno.ENOTSUP
    assert os.getxattr(f, "user.mountd.state") == b"clean"
    # other users may read them where they may read the file
    assert as_alice(lambda: os.getxattr(f, "user.mountd.size")) == b"5"
    # a local-only file says so and has no remote URL
    g = posix_repo.mp / "work" / f"xa{next(_counter)}"
    g.write_bytes(b"abc")
    assert os.getxattr(g, "user.mountd.state") == b"local"
    assert os.getxattr(g, "user.mountd.size") == b"3"
    assert errno_of(lambda: os.getxattr(g, "user.mountd.remote_url")) == errno.ENODATA
    # a directory has them too
    assert os.getxattr(posix_repo.data, "user.mountd.remote_url").decode().startswith("file://")


def test_dirty_state_before_upload(tmp_path):
    repo = MountedRepo(tmp_path / "r", delay="1h")
    repo.start()
    try:
        f = repo.data / "pending"
        f.write_bytes(b"x" * 10)
        assert os.getxattr(f, "user.mountd.state") == b"dirty"
        assert os.getxattr(f, "user.mountd.size") == b"10"
    finally:
        repo.cleanup()
    assert not repo.unexpected_log_errors()


# ---------------------------------------------------------------------------------------------
# attributes of remote objects that were not written through the mount
# ---------------------------------------------------------------------------------------------
def test_attributes_of_objects_written_elsewhere(posix_repo):
    """Directory markers and objects seeded before the mount show their stored attributes at once,
    also through readdirplus (scandir), which hands the kernel attributes in bulk."""
    with os.scandir(posix_repo.data / "seeded") as it:
        got = {e.name: e.stat(follow_symlinks=False) for e in it}
    for name, kind, mode in (("dir", stat.S_IFDIR, 0o700), ("file", stat.S_IFREG, 0o600)):
        st_ = got[name]
        assert stat.S_IFMT(st_.st_mode) == kind and stat.S_IMODE(st_.st_mode) == mode, name
        assert (st_.st_uid, st_.st_gid) == (ALICE, STAFF), name
        assert st_.st_mtime_ns == 1_500_000_000_000_000_001, name
    with pytest.raises(PermissionError):
        as_bob(lambda: os.listdir(posix_repo.data / "seeded" / "dir"))
    assert as_alice(lambda: os.listdir(posix_repo.data / "seeded" / "dir")) == ["f"]
    with pytest.raises(PermissionError):
        as_bob(lambda: (posix_repo.data / "seeded" / "file").read_bytes())


# ---------------------------------------------------------------------------------------------
# docs/semantics.md keeps its promises
# ---------------------------------------------------------------------------------------------
def _semantics_table() -> list[tuple[str, str, str]]:
    text = (REPO / "docs" / "semantics.md").read_text()
    block = text.split("<!-- errno-table -->")[1].split("<!-- end errno-table -->")[0]
    rows = []
    for line in block.splitlines():
        m = re.match(r"^\|\s*`([a-z0-9_-]+)`[^|]*\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows.append((m.group(1), m.group(2).strip(), m.group(3).strip()))
    return rows


def _fresh(base: Path) -> Path:
    d = base / f"s{next(_counter)}"
    d.mkdir()
    return d


def _file(d: Path, name: str = "f", data: bytes = b"x") -> Path:
    (d / name).write_bytes(data)
    return d / name


def _other_area(d: Path, repo: MountedRepo) -> Path:
    return _fresh(repo.mp / ("work" if d.parent.name == "data" else "data"))


SEMANTICS_CASES: dict[str, Callable[[Path, MountedRepo], object]] = {
    "hard-link": lambda d, r: os.link(_file(d), d / "g"),
    "hard-link-across": lambda d, r: os.link(_file(d), _other_area(d, r) / "g"),
    "rename-across": lambda d, r: os.rename(_file(d), _other_area(d, r) / "g"),
    "rename-between-remotes": lambda d, r: os.rename(_file(d), _fresh(r.mp / "other") / "g"),
    "rename-noreplace": lambda d, r: renameat2(_file(d, "a"), d / "b", RENAME_NOREPLACE),
    "rename-exchange": lambda d, r: renameat2(_file(d, "a"), _file(d, "b"), RENAME_EXCHANGE),
    "symlink": lambda d, r: os.symlink("target", d / "ln"),
    "mkfifo": lambda d, r: os.mkfifo(d / "fifo"),
    "mknod-char": lambda d, r: os.mknod(d / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
    "chown": lambda d, r: os.chown(_file(d), ALICE, STAFF),
    "setxattr-mountd": lambda d, r: os.setxattr(_file(d), "user.mountd.state", b"x"),
    "setxattr-other": lambda d, r: os.setxattr(_file(d), "user.comment", b"x"),
    "setxattr-create-exists": lambda d, r: _setxattr_twice(_file(d), os.XATTR_CREATE),
    "setxattr-trusted": lambda d, r: os.setxattr(_file(d), "trusted.x", b"x"),
    "getxattr-security": lambda d, r: os.getxattr(_file(d), "security.selinux"),
    "rmdir-attach-point": lambda d, r: os.rmdir(r.mp / "other"),
    "name-256": lambda d, r: os.mkdir(d / ("n" * 256)),
    "name-not-utf8": lambda d, r: os.close(os.open(os.fsencode(d) + b"/bad-\xff",
                                                   os.O_CREAT | os.O_WRONLY, 0o644)),
    "open-o-direct": lambda d, r: os.close(os.open(_file(d), os.O_RDONLY | os.O_DIRECT)),
    "fallocate": lambda d, r: _fallocate(_file(d)),
    "o-tmpfile": lambda d, r: os.close(os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)),
    "flock": lambda d, r: _flock(_file(d)),
    "copy-file-range": lambda d, r: _copy_file_range(_file(d, data=b"abc" * 5000), d / "copy"),
    "mmap-shared-write": lambda d, r: _mmap_write(_file(d, data=b"\0" * 8192)),
}


def _setxattr_twice(p: Path, flags: int) -> None:
    os.setxattr(p, "user.comment", b"x")
    os.setxattr(p, "user.comment", b"y", flags)


def _copy_file_range(src: Path, dst: Path) -> None:
    with open(src, "rb") as a, open(dst, "wb") as b:
        assert os.copy_file_range(a.fileno(), b.fileno(), 15000) == 15000
    assert dst.read_bytes() == src.read_bytes()


def _mmap_write(p: Path) -> None:
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
        m[4096:4101] = b"hello"
        m.flush()
    assert p.read_bytes()[4096:4101] == b"hello"


def _fallocate(p: Path) -> None:
    fd = os.open(p, os.O_RDWR)
    try:
        if libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(1 << 20)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def _flock(p: Path) -> None:
    with open(p, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_semantics_doc_errno_table(posix_repo):
    rows = _semantics_table()
    assert {r[0] for r in rows} == set(SEMANTICS_CASES), "docs/semantics.md and the test list different cases"
    failures = []
    for case, remote_want, local_want in rows:
        for where, want in (("data", remote_want), ("work", local_want)):
            code = errno_of(lambda c=case, w=where: SEMANTICS_CASES[c](_fresh(posix_repo.mp / w), posix_repo))
            got = "ok" if code is None else errno.errorcode[code]
            if got != want:
                failures.append(f"{case} on {where}: doc says {want}, mount says {got}")
    assert not failures, "\n".join(failures)
