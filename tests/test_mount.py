"""End-to-end: a real FUSE mount driven with syscalls, remote and local-only paths."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
import subprocess
import time

import pytest

from tests.conftest import is_mounted, mountd_cmd, remote_files, wait_until

# every test here also runs on a bucket of each test server (tests/servers.py);
# remote_dir is then a BucketPath
REMOTE_KINDS = ("file", "s3", "azure", "gcs")
NOT_GCS = pytest.mark.remote_kinds("file", "s3", "azure")  # the GCS emulator serves one request at a time


def test_write_read_and_upload(repo):
    p = repo.data / "hello.txt"
    p.write_bytes(b"hello world\n")
    assert p.read_bytes() == b"hello world\n"
    (repo.mp / "scratch").mkdir()
    (repo.mp / "scratch" / "notes.txt").write_text("local only")
    repo.sync()
    assert (repo.remote_dir / "hello.txt").read_bytes() == b"hello world\n"
    assert remote_files(repo.remote_dir) == {"hello.txt": b"hello world\n"}
    assert os.getxattr(p, "user.mountd.state") == b"clean"
    assert os.getxattr(repo.mp / "scratch" / "notes.txt", "user.mountd.state") == b"local"
    assert os.getxattr(p, "user.mountd.remote_url").decode().endswith(f"{repo.remote_dir}/hello.txt")
    assert os.getxattr(p, "user.mountd.size") == b"12"
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.mountd.state", b"dirty")
    assert e.value.errno == errno.EPERM


def test_remote_objects_appear_and_read_by_range(repo):
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (repo.remote_dir / "sub").mkdir()
    (repo.remote_dir / "sub" / "blob.bin").write_bytes(blob)
    p = repo.data / "sub" / "blob.bin"
    assert p.stat().st_size == len(blob)
    with open(p, "rb") as f:
        f.seek(2 * 1024 * 1024 + 5)
        assert f.read(1000) == blob[2 * 1024 * 1024 + 5 : 2 * 1024 * 1024 + 1005]
        f.seek(0)
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(blob).digest()
    st = repo.status()
    assert st["statistics"]["vfs"]["materialized"] == 0  # served by ranged reads, not a whole download
    assert st["statistics"]["reader"]["gets"] >= 1


@pytest.mark.remote_kinds("file")
def test_a_temporary_file_left_by_a_killed_upload_is_swept_when_its_directory_is_listed(repo):
    d = repo.remote_dir / "sub"
    d.mkdir()
    (d / "kept.bin").write_bytes(b"data")
    stale, fresh = d / ".mountd-tmp-0dead", d / ".mountd-tmp-0live"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert os.listdir(repo.data / "sub") == ["kept.bin"]
    assert not stale.exists()
    assert fresh.read_bytes() == b"an upload in progress"  # another writer's, still being written


@pytest.mark.remote_kinds("s3")
def test_objects_no_index_vouches_for_show_listing_attributes_until_their_metadata_is_asked_for(repo):
    """Objects another tool wrote with mountd-style metadata, in a directory with no index: a
    readdir and a stat of every entry (ls -l) HEAD nothing and show the listing's attributes (the
    default mode, Last-Modified); a getxattr of a user.* name HEADs the one object, which then
    shows its stored mode and mtime."""
    count = 20
    for i in range(count):
        p = repo.remote_dir / "attrs" / f"f{i:02d}.bin"
        meta = {"mode": str(0o100600 | (i % 2) * 0o040), "mtime": f"{1_600_000_000 + i}.5"}
        p.server.put(p.bucket, p.key, b"x" * i, meta)
    before = repo.status()["statistics"]["vfs"]["heads"]
    assert len(os.listdir(repo.data / "attrs")) == count
    for i in range(count):
        st = os.stat(repo.data / "attrs" / f"f{i:02d}.bin")
        assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o644, i)
        assert st.st_mtime_ns > 1_700_000_000 * 10**9  # the object's Last-Modified
    assert repo.status()["statistics"]["vfs"]["heads"] == before
    with pytest.raises(OSError):
        os.getxattr(repo.data / "attrs" / "f03.bin", "user.none")
    assert repo.status()["statistics"]["vfs"]["heads"] == before + 1
    # the kernel cached the listing's attributes; the daemon's invalidation of them is queued
    wait_until(lambda: stat.S_IMODE(os.stat(repo.data / "attrs" / "f03.bin").st_mode) == 0o640, timeout=10)
    assert os.stat(repo.data / "attrs" / "f03.bin").st_mtime_ns == 1_600_000_003_500_000_000


@NOT_GCS
def test_an_open_for_writing_downloads_nothing_until_its_first_write(repo):
    """A verifier that opens a clean remote file read-write and only reads it leaves it remote;
    the first write fetches it, once, for every handle. (With `materialize` called at open again,
    as before, `user.mountd.local` is 1 after the first open.)"""
    data = bytes(range(256)) * 8192  # 2 MiB
    (repo.remote_dir / "ro.bin").write_bytes(data)
    p = repo.data / "ro.bin"
    with open(p, "r+b") as f, open(p, "ab") as g:
        assert f.read() == data
        assert os.getxattr(p, "user.mountd.local") == b"0"
        g.write(b"tail")
        g.flush()
        assert os.getxattr(p, "user.mountd.local") == b"1"
        f.seek(100)
        f.write(b"mid")
    assert os.getxattr(p, "user.mountd.local") == b"1"
    repo.sync()
    assert (repo.remote_dir / "ro.bin").read_bytes() == data[:100] + b"mid" + data[103:] + b"tail"
    vfs = repo.status()["statistics"]["vfs"]
    assert vfs["materialized"] + vfs["materialized_from_cache"] == 1  # (the cache's copy, when it has one)


@NOT_GCS
def test_rewrite_without_trunc_materializes(repo):
    (repo.remote_dir / "f.bin").write_bytes(b"A" * 10000)
    with open(repo.data / "f.bin", "r+b") as f:
        f.seek(5000)
        f.write(b"BBBB")
    repo.sync()
    assert (repo.remote_dir / "f.bin").read_bytes() == b"A" * 5000 + b"BBBB" + b"A" * 4996


@pytest.mark.remote_kinds("file")  # on buckets: test_cloud_mount.py::test_awkward_keys_and_a_large_directory
def test_large_remote_directory_pages(repo):
    d = repo.remote_dir / "many"
    d.mkdir()
    names = {f"file-{i:05d}.txt" for i in range(3000)}
    for n in names:
        (d / n).write_bytes(b"x")
    assert set(os.listdir(repo.data / "many")) == names


@pytest.mark.remote_kinds("file")  # non-UTF-8 names and symlinks: tests/test_cloud_mount.py seeds buckets
def test_invalid_keys_are_skipped_with_a_warning(repo):
    bad = os.fsencode(repo.remote_dir) + b"/bad-\xff-name"
    with open(bad, "wb") as f:
        f.write(b"x")
    (repo.remote_dir / "good").write_bytes(b"ok")
    os.symlink("/etc/passwd", repo.remote_dir / "escape")
    assert sorted(os.listdir(repo.data)) == ["good"]
    assert (repo.data / "good").read_bytes() == b"ok"
    assert "skipping key" in repo.log()


def test_directories_and_markers(repo):
    (repo.data / "a" / "b").mkdir(parents=True)
    repo.sync()
    assert (repo.remote_dir / "a" / "b").is_dir()
    (repo.data / "a" / "b").rmdir()
    repo.sync()
    assert not (repo.remote_dir / "a" / "b").exists()
    (repo.data / "a" / "f").write_text("x")
    with pytest.raises(OSError) as e:
        (repo.data / "a").rmdir()
    assert e.value.errno == errno.ENOTEMPTY


def test_rename_file_and_directory_in_remote(repo):
    (repo.data / "d1").mkdir()
    (repo.data / "d1" / "x").write_bytes(b"x-content")
    (repo.data / "d1" / "y").write_bytes(b"y-content")
    repo.sync()
    os.rename(repo.data / "d1", repo.data / "d2")
    os.rename(repo.data / "d2" / "x", repo.data / "d2" / "z")
    assert sorted(os.listdir(repo.data / "d2")) == ["y", "z"]
    repo.sync()
    assert remote_files(repo.remote_dir) == {"d2/y": b"y-content", "d2/z": b"x-content"}
    assert not (repo.remote_dir / "d1").exists()


@pytest.mark.remote_kinds("file")  # the remote plays no part
def test_rename_out_of_a_remote_and_into_one_are_renames(repo):
    (repo.data / "remote.txt").write_text("r")
    ino = os.stat(repo.data / "remote.txt").st_ino
    os.rename(repo.data / "remote.txt", repo.mp / "moved-out.txt")
    assert os.stat(repo.mp / "moved-out.txt").st_ino == ino  # the same file, not a copy
    assert (repo.mp / "moved-out.txt").read_text() == "r" and not (repo.data / "remote.txt").exists()
    (repo.mp / "local.txt").write_text("x")
    os.rename(repo.mp / "local.txt", repo.data / "moved.txt")
    assert (repo.data / "moved.txt").read_text() == "x"
    repo.sync()
    assert remote_files(repo.remote_dir) == {"moved.txt": b"x"}


def test_attributes_survive_remount_from_object_metadata(make_repo):
    repo = make_repo()
    repo.start()
    p = repo.data / "attrs.bin"
    p.write_bytes(b"abc")
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    repo.stop()
    # a fresh machine: no local state at all, only what the remote holds
    subprocess.run(["rm", "-rf", str(repo.local), str(repo.cache)], check=True)
    repo.start()
    st = os.stat(repo.data / "attrs.bin")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns // 1000 == 1_600_000_000_123_456_789 // 1000
    # atime and ctime restart from the stored mtime, not from the object's Last-Modified
    assert st.st_atime_ns == st.st_ctime_ns == st.st_mtime_ns
    assert (repo.data / "attrs.bin").read_bytes() == b"abc"


def test_special_files_on_a_remote_path_survive_a_remount_from_an_empty_local_tier(make_repo):
    """A FIFO, a bound Unix socket and a character device on a remote path are empty objects
    whose metadata holds the mode and rdev: a mount from nothing but the remote (on S3 through
    the directory's index, on file:// through the objects' metadata) makes the same nodes, and
    the FIFO carries data between two processes. (Before, mknod on a remote path was EPERM.)"""
    repo = make_repo()
    repo.start()
    d = repo.data / "nodes"
    d.mkdir()
    os.mkfifo(d / "fifo", 0o640)
    os.mknod(d / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(d / "sock"))
    os.symlink("fifo", d / "link")
    repo.sync()
    repo.stop()
    subprocess.run(["rm", "-rf", str(repo.local), str(repo.cache)], check=True)
    repo.start()
    kinds = {p.name: os.lstat(p) for p in d.iterdir()}
    assert stat.S_ISFIFO(kinds["fifo"].st_mode) and stat.S_IMODE(kinds["fifo"].st_mode) == 0o640
    assert stat.S_ISCHR(kinds["null"].st_mode) and kinds["null"].st_rdev == os.makedev(1, 3)
    assert stat.S_ISSOCK(kinds["sock"].st_mode)
    assert os.readlink(d / "link") == "fifo"
    reader = subprocess.Popen(["cat", str(d / "fifo")], stdout=subprocess.PIPE)
    with open(d / "fifo", "wb") as w:
        w.write(b"through the pipe")
    assert reader.communicate(timeout=30)[0] == b"through the pipe"


@NOT_GCS
def test_crash_before_upload_loses_nothing(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    payloads = {f"f{i}.bin": os.urandom(1000 + i * 5000) for i in range(20)}
    for name, data in payloads.items():
        (repo.data / name).write_bytes(data)
    assert remote_files(repo.remote_dir) == {}
    repo.kill9()
    assert not is_mounted(repo.mp)
    repo.start()
    repo.sync()
    assert remote_files(repo.remote_dir) == payloads


@NOT_GCS
def test_unmount_drains_pending_uploads(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    (repo.data / "late.txt").write_text("drained at unmount")
    assert repo.status()["pending_uploads"] == 1
    repo.stop()
    assert (repo.remote_dir / "late.txt").read_text() == "drained at unmount"


@pytest.mark.remote_kinds("file", "s3")
def test_status_lists_remotes_and_pending(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    (repo.data / "p.txt").write_text("x")
    out = mountd_cmd("status", str(repo.mp)).stdout
    assert "main" in out and "/data" in out and "pending uploads: 1" in out and "p.txt" in out
