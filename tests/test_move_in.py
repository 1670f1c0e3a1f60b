"""Moving a local-only file or tree into a remote path (issue 20 item 5): `mv` is a rename in
the mount, instant, and the journal carries the uploads, so a `kill -9` between the rename and the
last upload loses nothing. What cannot become objects (a hard link to a file outside the tree,
names that are not UTF-8) and moves out of a remote keep EXDEV (where `mv` copies instead).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MountedRepo, mountd_cmd, remote_files, wait_until

REMOTE_KINDS = ("file", "s3")


def _local_tree(root: Path) -> dict[str, bytes]:
    """A tree with nested and empty directories, an executable, a symlink, a FIFO, a user xattr,
    a hard link and old mtimes; returns its files' bytes by relative path."""
    files = {"top.txt": b"top\n", "a/b/deep.bin": os.urandom(300_000), "a/run.sh": b"#!/bin/sh\n",
             "a/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "a" / "empty-dir").mkdir()
    os.chmod(root / "a" / "run.sh", 0o751)
    os.symlink("../top.txt", root / "a" / "link")
    os.mkfifo(root / "a" / "fifo", 0o640)
    os.setxattr(root / "top.txt", "user.origin", b"scratch")
    os.link(root / "top.txt", root / "a" / "hard")
    files["a/hard"] = files["top.txt"]
    os.utime(root / "a" / "b" / "deep.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return files


def _shape(root: Path) -> dict[str, tuple]:
    """What a program sees of each entry: type and permission bits, mtime of files, bytes, targets."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = (oct(st.st_mode), st.st_mtime_ns, p.read_bytes())
        else:
            out[rel] = (oct(st.st_mode),)
    return out


def _pending(repo: MountedRepo) -> int:
    return int(json.loads(mountd_cmd("status", str(repo.mp), "--json").stdout)["pending_uploads"])


def test_mv_of_a_local_tree_into_a_remote_is_a_rename_then_uploads_from_the_journal(make_repo):
    repo = make_repo(delay="1h")  # nothing is due before `sync`: what the rename itself sends shows
    repo.start()
    scratch = repo.mp / "scratch"
    scratch.mkdir()
    run = scratch / "run-7"
    run.mkdir()
    files = _local_tree(run)
    before = _shape(run)
    inodes = {p.name: p.stat().st_ino for p in run.iterdir()}
    subprocess.run(["mv", str(run), str(repo.data / "models")], check=True)  # a rename(2), not a copy
    moved = repo.data / "models"
    assert not run.exists() and _shape(moved) == before
    assert {p.name: p.stat().st_ino for p in moved.iterdir()} == inodes  # the same files, not copies
    assert os.getxattr(moved / "top.txt", "user.origin") == b"scratch"
    assert os.getxattr(moved / "a" / "b" / "deep.bin", "user.mountd.state") == b"dirty"
    assert remote_files(repo.remote_dir) == {}  # the rename sent nothing
    assert _pending(repo) >= len(files)
    repo.sync()
    assert _pending(repo) == 0
    assert remote_files(repo.remote_dir) == {f"models/{k}": v for k, v in files.items()} | {
        "models/a/link": b"../top.txt", "models/a/fifo": b""}
    repo.stop()
    # a mount from an empty local tier makes the same tree from the objects alone
    if not hasattr(repo.remote_dir, "files"):  # (a file:// remote: its directory is the remote)
        fresh = make_repo("fresh", remote_url=repo.remote_url)
        fresh.start()
        assert _shape(fresh.data / "models") == before
        assert os.getxattr(fresh.data / "models" / "top.txt", "user.origin") == b"scratch"
        top, hard = os.stat(fresh.data / "models" / "top.txt"), os.stat(fresh.data / "models" / "a" / "hard")
        assert top.st_ino == hard.st_ino and top.st_nlink == 2  # one file again, from the objects' link group


def test_a_move_in_survives_kill_9_before_any_upload(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    (repo.mp / "scratch").mkdir()
    src = repo.mp / "scratch" / "batch"
    src.mkdir()
    want = {f"s{i % 3}/{i}.bin": os.urandom(1000 + i) for i in range(60)}
    for rel, data in want.items():
        (src / rel).parent.mkdir(exist_ok=True)
        (src / rel).write_bytes(data)
    os.rename(src, repo.data / "batch")
    repo.kill9()  # the rename is committed; no upload has started (delay 1h)
    assert remote_files(repo.remote_dir) == {}
    repo.start()
    assert {str(p.relative_to(repo.data / "batch")): p.read_bytes()
            for p in (repo.data / "batch").rglob("*.bin")} == want
    repo.sync()
    assert remote_files(repo.remote_dir) == {f"batch/{k}": v for k, v in want.items()}
    repo.stop()


def test_what_cannot_become_objects_keeps_exdev(make_repo):
    repo = make_repo()
    repo.start()
    local = repo.mp / "scratch"
    local.mkdir()
    linked = local / "linked"
    linked.mkdir()
    (linked / "f").write_bytes(b"one")
    os.link(linked / "f", local / "g")  # a name outside the tree: it would be on both kinds of path
    bad = local / "badname"
    bad.mkdir()
    (Path(os.fsdecode(os.fsencode(bad) + b"/n-\xff"))).write_bytes(b"x")
    for src in (linked, bad):
        try:
            os.rename(src, repo.data / src.name)
        except OSError as e:
            assert e.errno == errno.EXDEV, e
        else:
            raise AssertionError(f"{src.name} moved into the remote")
    assert (local / "g").read_bytes() == b"one" and os.stat(linked / "f").st_nlink == 2  # left as it was


def test_mv_of_a_remote_tree_out_is_a_rename_then_fetches_and_survives_kill_9(make_repo):
    """The way out: `mv` returns with nothing fetched (the files read from their objects meanwhile),
    the bytes come to the local tier in the background, and the objects are deleted only after;
    a kill -9 in the middle resumes at the next start."""
    repo = make_repo()
    repo.start()
    run = repo.data / "run-7"
    run.mkdir()
    _local_tree(run)
    want = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*")
            if p.is_file() and not p.is_symlink() and not stat.S_ISFIFO(p.lstat().st_mode)}
    for i in range(40):
        want[f"shards/{i}.bin"] = os.urandom(256 * 1024)
        (run / "shards").mkdir(exist_ok=True)
        (run / "shards" / f"{i}.bin").write_bytes(want[f"shards/{i}.bin"])
    repo.sync()
    repo.stop()  # a new start: the files' bytes are in the remote only (the cache is not the local tier)
    repo.start()
    before = _shape(run)
    (repo.mp / "scratch").mkdir()
    subprocess.run(["mv", str(run), str(repo.mp / "scratch" / "run-7")], check=True)  # a rename(2)
    moved = repo.mp / "scratch" / "run-7"
    assert not run.exists() and _shape(moved) == before
    departures = repo.status()["statistics"]["departures"]
    assert departures["departing"] + departures["departed"] >= 40  # their bytes were in the remote only
    repo.kill9()  # some files fetched, maybe none; nothing deleted before its bytes were here
    repo.start()
    assert _shape(moved) == before
    repo.sync()
    assert {k: v for k, v in remote_files(repo.remote_dir).items() if k.startswith("run-7/")} == {}
    assert repo.status()["statistics"]["departures"]["departing"] == 0
    assert {str(p.relative_to(moved)): p.read_bytes() for p in moved.rglob("*")
            if p.is_file() and not p.is_symlink() and not stat.S_ISFIFO(p.lstat().st_mode)} == want
    assert os.getxattr(moved / "shards" / "7.bin", "user.mountd.local") == b"1"  # on the local tier
    assert os.stat(moved / "a" / "hard").st_ino == os.stat(moved / "top.txt").st_ino


@pytest.mark.slow
@pytest.mark.remote_kinds("s3")
def test_a_migration_killed_halfway_sends_every_byte_about_once(make_repo, s3_server, counting_proxy):
    """`mv` of a local-only tree of 2,000 files (ten of 50 MiB) into an S3 path, `kill -9` when half
    its bytes have gone up, a restart: every file arrives, and the bytes sent (counted at a proxy,
    headers included) are at most 1.05 times the data. The large files go in parts, and a part the
    server holds is not sent again (the open upload resumes: backend/resumable.py)."""
    bucket = s3_server.new_bucket()
    proxy = counting_proxy(s3_server)
    remote = s3_server.remote_toml("main", bucket, "/data", endpoint_url=proxy.endpoint_url)
    repo = make_repo(remote_toml=remote,
                     writeback_toml='concurrency = 2\nmultipart_threshold = "8M"\nmultipart_chunk = "8M"\n')
    repo.start()
    src = repo.mp / "scratch" / "migrate"
    want: dict[str, str] = {}
    sizes = [50 << 20] * 10 + [128 << 10] * 1990
    for i, size in enumerate(sizes):
        rel = f"s{i % 10}/{i:04d}.bin"
        data = os.urandom(size)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        want[rel] = hashlib.sha256(data).hexdigest()
    total = sum(sizes)
    base = proxy.bytes_up
    os.rename(src, repo.data / "migrate")
    wait_until(lambda: proxy.bytes_up - base >= total // 2, timeout=300, interval=0.05)
    repo.kill9()
    assert not src.exists()
    repo.start()
    repo.sync(timeout=600)
    sent = proxy.bytes_up - base
    held = s3_server.objects(bucket, "migrate/")
    assert {k: hashlib.sha256(v).hexdigest() for k, v in held.items() if k and not k.endswith("/")} == want
    assert sent <= 1.05 * total, f"sent {sent / total:.3f} times the data"
    assert repo.status()["statistics"]["stores"]["main"]["parts_resumed"] > 0


@pytest.mark.remote_kinds("file")
def test_a_move_out_during_an_outage_waits_for_the_remote_and_says_so(make_repo):
    """Files moved out while their remote is unreachable (its directory gone, as an unmounted
    export) keep reading from the cache where it has them, `status` counts what is still to
    fetch, and the move completes once the remote is back."""
    repo = make_repo(extra_toml='read_timeout = "3s"\n')
    repo.start()
    (repo.data / "run").mkdir()
    want = {f"run/{i}.bin": os.urandom(100_000 + i) for i in range(5)}
    for rel, data in want.items():
        (repo.data / rel).write_bytes(data)
    repo.sync()
    mountd_cmd("cache", "clear", str(repo.mp))  # their bytes are in the remote only now
    away = repo.remote_dir.with_name("remote-away")
    repo.remote_dir.rename(away)
    repo.expected_log_errors.append("does not exist")
    (repo.mp / "scratch").mkdir()
    os.rename(repo.data / "run", repo.mp / "scratch" / "run")  # a rename: no remote call needed
    out = mountd_cmd("status", str(repo.mp)).stdout
    assert "moving out of remotes: 5 files" in out, out
    away.rename(repo.remote_dir)
    repo.sync()
    assert {f"run/{p.name}": p.read_bytes() for p in (repo.mp / "scratch" / "run").iterdir()} == want
    assert not [k for k in remote_files(repo.remote_dir) if k.startswith("run/")]
    assert "moving out" not in mountd_cmd("status", str(repo.mp)).stdout
