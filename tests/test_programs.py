"""End-to-end with real programs (cp, tar, rsync, sqlite3, git, zipfile, fallocate, tempfile) on a real mount.

Each test drives one program on a remote path (`mp/data/...`) and on a local-only path
(`mp/work/...`), checks what the mount shows against the same program run on a plain
directory, then unmounts and checks that the remote directory holds exactly the files written
under `mp/data` (same names, same bytes, no temporary leftovers) and nothing from `mp/work`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

from mountd.vfs.namespace import FEED_DIR

AREAS = ("data", "work")  # mp/data is the remote "main"; mp/work is a local-only path


def tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """(relative file path -> bytes, relative directory paths) of everything under root."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            dirs.add(os.path.relpath(os.path.join(dirpath, d), root))
        for f in filenames:
            p = os.path.join(dirpath, f)
            files[os.path.relpath(p, root)] = Path(p).read_bytes()
    return files, dirs


def make_source_tree(root: Path) -> None:
    """A small tree with nested dirs, an empty dir, an empty file, odd modes, a symlink, old mtimes."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "top.txt").write_text("top level\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "a" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (root / "a" / "b" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "a" / "b" / "script.sh", 0o755)
    (root / "a" / "b" / "c" / "secret").write_text("s")
    os.chmod(root / "a" / "b" / "c" / "secret", 0o600)
    os.symlink("../top.txt", root / "a" / "link")
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_500_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 1_000_003),
                 follow_symlinks=False)


def remote_view(repo) -> tuple[dict[str, bytes], set[str]]:
    files, dirs = tree(repo.remote_dir)
    # the hosts' change log is no one's file
    files = {k: v for k, v in files.items() if not k.startswith(FEED_DIR + "/")}
    dirs.discard(FEED_DIR)
    assert not [f for f in files if ".mountd-tmp-" in f], f"temporary objects left: {files.keys()}"
    return files, dirs


def snapshot_data(repo) -> tuple[dict[str, bytes], set[str]]:
    """What the mount shows under the remote path; symlinks are stored as objects (their target)."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(repo.data):
        for d in dirnames:
            dirs.add(os.path.relpath(os.path.join(dirpath, d), repo.data))
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, repo.data)
            files[rel] = os.fsencode(os.readlink(p)) if os.path.islink(p) else Path(p).read_bytes()
    return files, dirs


def unmount_and_compare(repo) -> tuple[dict[str, bytes], set[str]]:
    """Unmount (draining uploads); the remote directory must hold exactly what the mount showed."""
    shown = snapshot_data(repo)
    repo.stop()
    held = remote_view(repo)
    assert held[0].keys() == shown[0].keys()
    for name, data in shown[0].items():
        assert held[0][name] == data, f"{name}: remote bytes differ"
    assert held[1] == shown[1]
    return held


def attrs(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (mode, mtime_ns) of everything below root, symlinks not followed."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def mounted(repo):
    (repo.mp / "work").mkdir()
    return repo


def test_cp_r_tree(mounted, tmp_path):
    repo = mounted
    src = tmp_path / "src"
    make_source_tree(src)
    for area in AREAS:
        subprocess.run(["cp", "-r", str(src), str(repo.mp / area / "copy")], check=True)
        got_files, got_dirs = tree(repo.mp / area / "copy")
        want_files, want_dirs = tree(src)
        assert got_files == want_files and got_dirs == want_dirs
        assert os.readlink(repo.mp / area / "copy" / "a" / "link") == "../top.txt"
        assert stat.S_IMODE(os.stat(repo.mp / area / "copy" / "a" / "b" / "script.sh").st_mode) == 0o755
    held_files, held_dirs = unmount_and_compare(repo)
    assert {"copy/empty-dir", "copy/a/b/c"} <= held_dirs
    assert held_files["copy/a/big.bin"] == (src / "a" / "big.bin").read_bytes()
    assert held_files["copy/a/link"] == b"../top.txt"  # a symlink is an object holding its target


def test_tar_create_and_extract(mounted, tmp_path):
    repo = mounted
    src = tmp_path / "src"
    make_source_tree(src)
    for area in AREAS:
        base = repo.mp / area
        subprocess.run(["tar", "--format=posix", "-cf", str(base / "t.tar"), "-C", str(src), "."], check=True)
        reference = tmp_path / f"ref-{area}.tar"
        subprocess.run(["tar", "--format=posix", "-cf", str(reference), "-C", str(src), "."], check=True)
        listing = subprocess.run(["tar", "-tvf", str(base / "t.tar")], check=True, capture_output=True,
                                 text=True)
        assert listing.stdout == subprocess.run(["tar", "-tvf", str(reference)], check=True,
                                                capture_output=True, text=True).stdout
        (base / "x").mkdir()
        subprocess.run(["tar", "-xpf", str(base / "t.tar"), "-C", str(base / "x")], check=True)
        assert tree(base / "x") == tree(src)
        want = attrs(src)
        got = attrs(base / "x")
        assert got == want, "tar -x must restore modes and mtimes"
    unmount_and_compare(repo)


def test_rsync_archive_keeps_modes_and_mtimes(mounted, tmp_path):
    repo = mounted
    src = tmp_path / "src"
    make_source_tree(src)
    for area in AREAS:
        dest = repo.mp / area / "rs"
        subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)
        assert tree(dest) == tree(src)
        assert attrs(dest) == attrs(src)
        # a second run finds nothing to transfer: sizes and mtimes match exactly
        out = subprocess.run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{dest}/"], check=True,
                             capture_output=True, text=True).stdout
        assert out.strip() == ""
        # change one file and sync again: only it is sent, the rest keeps its attributes
        (src / "top.txt").write_text("changed\n")
        os.utime(src / "top.txt", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        out = subprocess.run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{dest}/"], check=True,
                             capture_output=True, text=True).stdout
        assert [line.split()[-1] for line in out.splitlines()] == ["top.txt"]
        assert attrs(dest) == attrs(src)
        (src / "top.txt").write_text("top level\n")
        os.utime(src / "top.txt", ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))
        subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)
        assert attrs(dest) == attrs(src)
    unmount_and_compare(repo)
    # the attributes travel in object metadata: a fresh mount with no local state shows them
    shutil.rmtree(repo.local)
    shutil.rmtree(repo.cache, ignore_errors=True)
    repo.start()
    want = {k: v for k, v in attrs(src).items()}
    got = attrs(repo.data / "rs")
    assert got == want


SQL_SETUP = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT, loss REAL);
INSERT INTO runs (name, loss) VALUES ('a', 0.5), ('b', 0.25), ('c', 0.125);
CREATE INDEX runs_loss ON runs(loss);
"""


def test_sqlite3_cli_and_python(mounted):
    repo = mounted
    for area in AREAS:
        base = repo.mp / area
        # the sqlite3 program, rollback journal
        cli_db = base / "cli.db"
        subprocess.run(["sqlite3", str(cli_db)], input=SQL_SETUP, check=True, text=True)
        out = subprocess.run(["sqlite3", str(cli_db),
                              "SELECT name FROM runs WHERE loss < 0.3 ORDER BY loss;"],
                             check=True, capture_output=True, text=True).stdout
        assert out.split() == ["c", "b"]
        out = subprocess.run(["sqlite3", str(cli_db), "PRAGMA integrity_check;"], check=True,
                             capture_output=True, text=True).stdout
        assert out.strip() == "ok"
        # Python's sqlite3, many transactions, then WAL mode (shared memory file, mmap)
        db = base / "py.db"
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB)")
        for i in range(200):
            with con:
                con.execute("INSERT INTO kv VALUES (?, ?)", (i, os.urandom(500)))
        with con:
            con.execute("DELETE FROM kv WHERE k % 3 = 0")
        con.execute("VACUUM")
        assert con.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 200 - 67
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        with con:
            con.execute("INSERT INTO kv VALUES (1000, x'00')")
        con.close()
        con = sqlite3.connect(db)
        assert con.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 200 - 67 + 1
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        assert not (base / "py.db-wal").exists()
    held, _ = unmount_and_compare(repo)
    assert set(held) == {"cli.db", "py.db"}
    # the uploaded database opens on its own, outside the mount
    con = sqlite3.connect(repo.remote_dir / "py.db")
    assert con.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 200 - 67 + 1
    con.close()
    # mounted again: both copies answer queries through the mount (remote: read back from the remote)
    repo.start()
    for area in AREAS:
        con = sqlite3.connect(f"file:{repo.mp / area / 'py.db'}?mode=ro", uri=True)
        assert con.execute("SELECT COUNT(*) FROM kv WHERE k >= 1000").fetchone()[0] == 1
        con.close()


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.mark.parametrize("area", AREAS)
def test_git_init_and_commit(mounted, tmp_path, area):
    repo = mounted
    wt = repo.mp / area / "proj"
    wt.mkdir()
    git(wt, "init", "-q", "-b", "main")
    (wt / "train.py").write_text("print('train')\n")
    (wt / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(wt / "run.sh", 0o755)
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "first")
    (wt / "train.py").write_text("print('train v2')\n")
    git(wt, "commit", "-q", "-am", "second")
    git(wt, "gc", "-q")
    assert git(wt, "log", "--format=%s").split() == ["second", "first"]
    assert git(wt, "status", "--porcelain") == ""
    assert git(wt, "fsck", "--strict").strip() == ""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(wt), str(clone)], check=True)
    assert (clone / "train.py").read_text() == "print('train v2')\n"
    assert os.stat(clone / "run.sh").st_mode & 0o111
    held, _ = unmount_and_compare(repo)
    if area == "work":
        assert held == {}
    else:
        assert "proj/.git/HEAD" in held
    # a remount keeps the repository whole, local-only or not
    repo.start()
    assert git(wt, "log", "--format=%s").split() == ["second", "first"]
    assert git(wt, "fsck", "--strict").strip() == "" and git(wt, "status", "--porcelain") == ""


def test_python_zipfile(mounted):
    repo = mounted
    members = {f"dir{i % 3}/m{i}.bin": os.urandom(i * 7919) for i in range(30)}
    for area in AREAS:
        z = repo.mp / area / "bundle.zip"
        with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        with zipfile.ZipFile(z, "a") as zf:  # append: seeks back over the central directory
            zf.writestr("appended.txt", b"late")
        with zipfile.ZipFile(z) as zf:
            assert zf.testzip() is None
            assert {n: zf.read(n) for n in zf.namelist()} == {**members, "appended.txt": b"late"}
        out = repo.mp / area / "unzipped"
        with zipfile.ZipFile(z) as zf:
            zf.extractall(out)
        assert tree(out)[0] == {**members, "appended.txt": b"late"}
    held, _ = unmount_and_compare(repo)
    with zipfile.ZipFile(repo.remote_dir / "bundle.zip") as zf:
        assert zf.read("appended.txt") == b"late"
    assert set(held) == {"bundle.zip"} | {f"unzipped/{n}" for n in [*members, "appended.txt"]}


def test_fallocate_rsync_preallocate_and_python_tempfile(mounted, tmp_path):
    """Tools that preallocate or make unnamed temporary files (O_TMPFILE) work on both kinds of
    path and leave what they leave on a disk."""
    repo = mounted
    src = tmp_path / "src"
    make_source_tree(src)
    for area in AREAS:
        d = repo.mp / area
        subprocess.run(["fallocate", "-l", "1MiB", str(d / "prealloc")], check=True)
        (d / "holey").write_bytes(b"\xab" * 65536)
        subprocess.run(["fallocate", "--punch-hole", "-o", "4096", "-l", "8192", str(d / "holey")],
                       check=True)
        subprocess.run(["fallocate", "--zero-range", "-o", "60000", "-l", "10000", str(d / "holey")],
                       check=True)
        subprocess.run(["rsync", "-a", "--preallocate", f"{src}/", f"{d / 'synced'}/"], check=True)
        assert tree(d / "synced") == tree(src)
        with tempfile.TemporaryFile(dir=d) as t:  # O_TMPFILE on Linux: no name at any time
            t.write(b"scratch" * 1000)
            t.seek(0)
            assert t.read() == b"scratch" * 1000
            assert os.fstat(t.fileno()).st_nlink == 0
    want_holey = b"\xab" * 4096 + b"\0" * 8192 + b"\xab" * (60000 - 12288) + b"\0" * 10000
    for area in AREAS:
        assert (repo.mp / area / "prealloc").read_bytes() == b"\0" * (1 << 20)
        assert (repo.mp / area / "holey").read_bytes() == want_holey
    held, _ = unmount_and_compare(repo)
    assert held["holey"] == want_holey and held["prealloc"] == b"\0" * (1 << 20)
    assert {k for k in held if not k.startswith("synced/")} == {"prealloc", "holey"}  # no tempfile


def test_hard_link_tools_round_trip(mounted, make_repo, tmp_path):
    """`cp -al` snapshots, `rsync -aHX`, `os.link` and `shutil.copy2` keep hard links and extended
    attributes on both kinds of path; on the remote each name is an object, and a mount from an
    empty local tier makes the names one file again."""
    repo = mounted
    src = tmp_path / "src"
    make_source_tree(src)
    os.link(src / "a" / "big.bin", src / "big-again.bin")
    os.setxattr(src / "top.txt", "user.note", b"kept by rsync -X")
    for area in AREAS:
        d = repo.mp / area
        subprocess.run(["rsync", "-aHX", f"{src}/", f"{d / 'synced'}/"], check=True)
        assert tree(d / "synced") == tree(src)
        big, again = os.stat(d / "synced" / "a" / "big.bin"), os.stat(d / "synced" / "big-again.bin")
        assert big.st_ino == again.st_ino
        assert os.getxattr(d / "synced" / "top.txt", "user.note") == b"kept by rsync -X"
        subprocess.run(["cp", "-al", str(d / "synced"), str(d / "snapshot")], check=True)
        for rel in ("top.txt", "a/b/script.sh", "a/big.bin"):
            orig, snap = os.stat(d / "synced" / rel), os.stat(d / "snapshot" / rel)
            assert orig.st_ino == snap.st_ino and snap.st_nlink == (4 if rel == "a/big.bin" else 2), rel
        os.link(d / "synced" / "top.txt", d / "linked.txt")
        shutil.copy2(d / "linked.txt", d / "copied.txt")  # a copy is a new file: its own inode
        assert os.stat(d / "copied.txt").st_nlink == 1 and os.stat(d / "linked.txt").st_nlink == 3
        assert os.getxattr(d / "copied.txt", "user.note") == b"kept by rsync -X"
        with open(d / "snapshot" / "top.txt", "a") as f:  # a write through one name shows in all
            f.write("appended\n")
        want = "top level\nappended\n"
        assert (d / "synced" / "top.txt").read_text() == (d / "linked.txt").read_text() == want
    held, _ = unmount_and_compare(repo)
    for name in ("synced/top.txt", "snapshot/top.txt", "linked.txt"):
        assert held[name] == b"top level\nappended\n", name
    fresh = make_repo("fresh", remote_url=repo.remote_url)
    fresh.start()
    names = ("synced/a/big.bin", "synced/big-again.bin", "snapshot/a/big.bin", "snapshot/big-again.bin")
    assert len({os.stat(fresh.data / n).st_ino for n in names}) == 1
    assert os.stat(fresh.data / names[0]).st_nlink == 4
    assert os.getxattr(fresh.data / "snapshot" / "top.txt", "user.note") == b"kept by rsync -X"
