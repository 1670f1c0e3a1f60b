"""FUSE passthrough: files whose data is on the local tier are read and written by the kernel
itself. The daemon must still learn their size and mtime, journal and upload them, and keep the
mode of an inode consistent while it is open."""

from __future__ import annotations

import hashlib
import mmap
import os

from tests.conftest import remote_files


def fuse_calls(repo) -> dict[str, int]:
    return repo.status()["statistics"]["fuse"]["calls"]


def test_writes_and_reads_bypass_the_daemon_and_are_still_uploaded(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    path = repo.data / "model.bin"
    block = os.urandom(1 << 20)
    before = fuse_calls(repo)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(8):
        os.write(fd, block)
        assert os.stat(path).st_size == (i + 1) << 20  # sizes seen while it is written are right
    os.close(fd)
    mtime = os.stat(path).st_mtime_ns
    assert path.read_bytes() == block * 8
    after = fuse_calls(repo)
    assert after.get("write", 0) == before.get("write", 0), "the kernel wrote the local file itself"
    assert after.get("read", 0) == before.get("read", 0), "and read it back itself"
    assert os.getxattr(path, "user.mountd.state") == b"dirty"
    repo.sync()
    assert remote_files(repo.remote_dir)["model.bin"] == block * 8
    assert os.getxattr(path, "user.mountd.sha256").decode() == hashlib.sha256(block * 8).hexdigest()
    assert os.stat(path).st_mtime_ns == mtime


def test_mmap_writes_and_a_later_utime_are_kept(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    path = repo.data / "mapped.bin"
    path.write_bytes(b"\0" * 8192)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
        m[100:105] = b"hello"
        m.flush()
        os.utime(f.fileno(), ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    assert os.stat(path).st_mtime_ns == 1_600_000_000_123_456_789
    repo.sync()
    assert remote_files(repo.remote_dir)["mapped.bin"][100:105] == b"hello"
    assert os.stat(path).st_mtime_ns == 1_600_000_000_123_456_789


def test_an_inode_keeps_one_mode_while_it_is_open(make_repo):
    """A remote file opened for reading goes through the daemon; opening it for writing
    meanwhile fetches it onto the local tier but must stay in the same mode (the kernel refuses
    to mix passthrough and daemon handles on one inode)."""
    repo = make_repo(delay="1h")
    (repo.remote_dir / "shared.txt").write_bytes(b"remote content\n")
    repo.start()
    path = repo.data / "shared.txt"
    with open(path, "rb", buffering=0) as reader:
        assert reader.read(6) == b"remote"
        with open(path, "r+b", buffering=0) as writer:
            writer.seek(0)
            writer.write(b"REMOTE")
        reader.seek(0)
        assert reader.read() == b"REMOTE content\n"
    with open(path, "rb") as again:  # no handle open: the local copy is now read by the kernel
        assert again.read() == b"REMOTE content\n"
    repo.sync()
    assert (repo.remote_dir / "shared.txt").read_bytes() == b"REMOTE content\n"
