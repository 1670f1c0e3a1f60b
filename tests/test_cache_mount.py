"""End-to-end: the chunk cache behind a real FUSE mount, driven by real processes and syscalls.

GETs are counted where they happen: `RemoteOpens` watches the file:// remote's directory with
inotify, and every ranged read of the backend opens the object's file there. The daemon's own
counters are checked as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import mmap
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mountd.backend.factory import open_store
from mountd.config import RemoteConfig
from mountd.control import request
from tests.conftest import MountedRepo, mountd_cmd, wait_until
from tests.test_cache import tier_dir_size

K = 1024
M = 1024 * K
CHUNK = 256 * K
IN_OPEN = 0x20
IN_ISDIR = 0x40000000


class RemoteOpens:
    """Counts files opened in one directory (not below it), with inotify."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_OPEN) >= 0
        self.names: list[str] = []

    def opened(self) -> list[str]:
        """Names of files opened since the watch began (repeats may be merged by the kernel)."""
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.names
            pos = 0
            while pos < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                name = buf[pos + 16:pos + 16 + length].rstrip(b"\0").decode()
                pos += 16 + length
                if not mask & IN_ISDIR:
                    self.names.append(name)

    def close(self) -> None:
        os.close(self.fd)


def configure(repo: MountedRepo, *, tiers: str, chunk: str = "256K", listing_ttl: str = "1h",
              read_whole: tuple[str, ...] = ()) -> MountedRepo:
    repo.config.write_text(textwrap.dedent(f"""
        name = "test"
        [local]
        path = "{repo.local}"
        [cache]
        path = "{repo.cache}"
        chunk_size = "{chunk}"
        {textwrap.dedent(tiers)}
        [writeback]
        delay = "0s"
        [mount]
        listing_ttl = "{listing_ttl}"
        [[remote]]
        name = "main"
        url = "{repo.remote_url}"
        at = "/data"
        read_whole = {json.dumps(list(read_whole))}
        """))
    return repo


def control(repo: MountedRepo, op: str, **args: object) -> dict:
    """One control request from this process (the CLI's own output is tested where it matters)."""
    return [m for m in request(str(repo.mp), op, args, socket_timeout=120) if "result" in m][0]["result"]


def cache_stats(repo: MountedRepo, wait: bool = True) -> dict:
    return control(repo, "cache_stats", wait=wait)


READER = """
import hashlib, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    h = hashlib.sha256()
    while block := os.read(fd, 1 << 20):
        h.update(block)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next reader asks the daemon again
    os.close(fd)
    print(os.path.basename(path), h.hexdigest())
"""


@pytest.mark.slow
def test_tier_stays_under_its_cap_while_processes_read_three_times_its_size(make_repo):
    cap = 4 * M
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "4M"\nexpires = "1h"\n')
    files = {f"w{i:02d}.bin": os.urandom(M) for i in range(12)}  # 12M: three times the cap
    for name, data in files.items():
        (repo.remote_dir / name).write_bytes(data)
    repo.start()
    tier = repo.cache / "tiers" / "t"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(tier_dir_size(tier))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        names = sorted(files)
        procs = []
        for i in range(4):
            order = names[i * 3:] + names[:i * 3]
            if i % 2:
                order.reverse()
            procs.append(subprocess.Popen([sys.executable, "-c", READER,
                                           *(str(repo.data / n) for n in order * 2)],
                                          stdout=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        stop.set()
        sampler.join()
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for out in outputs:
        lines = [line.split() for line in out.splitlines()]
        assert len(lines) == 24 and all(expected[name] == digest for name, digest in lines)
    st = cache_stats(repo)["tiers"]["t"]
    assert st["evictions"] > 0 and st["writes"] >= 48
    assert len(samples) > 50
    assert max(samples) <= cap + CHUNK, f"the tier reached {max(samples)} bytes (cap {cap})"
    assert tier_dir_size(tier) <= cap


@pytest.mark.slow
def test_restart_after_kill9_reads_the_cache_without_gets_and_refetches_a_corrupt_chunk(make_repo):
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "64M"\nexpires = "1h"\n')
    files = {f"f{i}.bin": os.urandom(M + 1 + i * 1000) for i in range(8)}  # five chunks each
    for name, data in files.items():
        (repo.remote_dir / name).write_bytes(data)
    repo.start()
    for name, data in files.items():
        assert (repo.data / name).read_bytes() == data
    st = cache_stats(repo)
    assert st["tiers"]["t"]["entries"] == 8 and st["reads"]["merged"] == 8  # each file's chunks merged
    repo.kill9()

    repo.start()
    opens = RemoteOpens(repo.remote_dir)
    try:
        for name, data in files.items():
            assert (repo.data / name).read_bytes() == data
        assert opens.opened() == []
        st = cache_stats(repo, wait=False)
        assert st["reads"]["gets"] == 0 and st["tiers"]["t"]["hits"] > 0
        repo.stop()

        # one cache file damaged on disk while no daemon runs: detected, fetched again, never served
        victim = min((repo.cache / "tiers" / "t").glob("*.val"))
        with open(victim, "r+b") as f:
            f.seek(1000)
            f.write(b"\xff" * 64)
        repo.start()
        for name, data in files.items():
            assert (repo.data / name).read_bytes() == data
        st = cache_stats(repo)
        # the damaged file held one object's five chunks: they are fetched again, nothing else
        assert st["tiers"]["t"]["corrupt"] == 1 and st["reads"]["gets"] == 5
        assert len(set(opens.opened())) == 1
    finally:
        opens.close()


def test_same_content_under_two_paths_is_cached_once_and_the_cache_commands(make_repo):
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "16M"\nexpires = "1h"\n')
    store = open_store(RemoteConfig(name="main", url=repo.remote_url))
    data = os.urandom(3 * CHUNK + 10)
    digest = hashlib.sha256(data).hexdigest()
    store.put_bytes("a/weights.bin", data, {"sha256": digest})
    store.put_bytes("b/copy.bin", data, {"sha256": digest})
    repo.start()
    a, b = repo.data / "a" / "weights.bin", repo.data / "b" / "copy.bin"
    assert a.read_bytes() == data
    cache_stats(repo)
    assert b.read_bytes() == data
    st = cache_stats(repo)
    assert st["tiers"]["t"]["entries"] == 1 and st["reads"]["gets"] == 4  # four chunks, merged into one file
    assert os.getxattr(b, "user.mountd.tier") == b"t"
    assert os.getxattr(b, "user.mountd.cached_bytes") == str(len(data)).encode()
    assert os.getxattr(a, "user.mountd.cached_bytes") == str(len(data)).encode()

    out = mountd_cmd("cache", "stats", str(repo.mp)).stdout
    assert out.splitlines()[0].split()[:3] == ["t", "1", "files"]
    assert "expired: t 0" in mountd_cmd("cache", "prune", str(repo.mp)).stdout
    assert "removed: t 1" in mountd_cmd("cache", "clear", str(repo.mp), "--tier", "t").stdout
    assert os.getxattr(a, "user.mountd.cached_bytes") == b"0"
    r = mountd_cmd("cache", "clear", str(repo.mp), "--tier", "nope", check=False)
    assert r.returncode == 1 and "no cache tier named 'nope'" in r.stderr


def test_read_whole_objects_are_fetched_on_open_and_served_to_mmap_from_disk(make_repo):
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "16M"\nexpires = "1h"\n',
                     read_whole=("*.safetensors",))
    model = os.urandom(8 * CHUNK + 123)
    (repo.remote_dir / "model.safetensors").write_bytes(model)
    repo.start()
    path = repo.data / "model.safetensors"
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert mm[:8] == model[:8]
        st = cache_stats(repo)
        assert st["reads"]["read_whole"] == 1 and st["reads"]["gets"] == 9
        assert os.getxattr(path, "user.mountd.cached_bytes") == str(len(model)).encode()
        assert hashlib.sha256(mm).digest() == hashlib.sha256(model).digest()
        mm.close()
    assert cache_stats(repo)["reads"]["gets"] == 9


def test_a_changed_object_is_never_served_from_its_old_chunks(make_repo):
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "16M"\nexpires = "1h"\n',
                     listing_ttl="0s")
    old, new = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK)
    (repo.remote_dir / "f.bin").write_bytes(old)
    repo.start()
    path = repo.data / "f.bin"
    with open(path, "rb") as held:
        assert held.read() == old
        assert cache_stats(repo)["tiers"]["t"]["entries"] == 1  # its two chunks, merged
        tmp = repo.remote_dir / "f.tmp"
        tmp.write_bytes(new)
        os.replace(tmp, repo.remote_dir / "f.bin")  # a new version, same size
        assert path.read_bytes() == new  # the open revalidates the version: a new inode has it
        held.seek(0)
        # the handle opened before the change keeps reading the version it opened (close-to-open,
        # docs/multihost.md), here from its cached chunks: never a page of the new one
        assert held.read() == old
    st = cache_stats(repo)
    assert st["tiers"]["t"]["entries"] == 1  # the old version's file went with its last handle
    assert os.getxattr(path, "user.mountd.cached_bytes") == str(len(new)).encode()


def read_once_and_merged(make_repo, size: int) -> tuple[MountedRepo, Path, bytes]:
    """A mount with one remote object of `size` bytes, read once through the daemon: its chunks
    are then merged into one cache file."""
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "16M"\nexpires = "1h"\n')
    data = os.urandom(size)
    (repo.remote_dir / "ckpt.bin").write_bytes(data)
    repo.start()
    path = repo.data / "ckpt.bin"
    assert path.read_bytes() == data
    assert cache_stats(repo)["reads"]["merged"] == 1
    return repo, path, data


def test_a_fully_cached_file_is_read_by_the_kernel_from_the_cache_and_writers_wait(make_repo):
    """After one read through the daemon, an object of several chunks is one checked cache file,
    and later opens hand it to the kernel (FUSE passthrough): no read request reaches the daemon,
    mmap works, and a writer is refused (ETXTBSY) until those readers close."""
    repo, path, data = read_once_and_merged(make_repo, 5 * CHUNK + 321)
    st = cache_stats(repo)
    assert st["reads"]["merged"] == 1 and st["reads"]["passthrough_opens"] == 0
    reads = repo.status()["statistics"]["fuse"]["calls"].get("read", 0)
    assert reads > 0
    with open(path, "rb") as reader:
        assert reader.read() == data
        with mmap.mmap(reader.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert mm[CHUNK - 10:CHUNK + 10] == data[CHUNK - 10:CHUNK + 10]
        for change in (lambda: open(path, "r+b"), lambda: os.truncate(path, 10)):
            with pytest.raises(OSError) as e:
                change()
            assert e.value.errno == errno.ETXTBSY
        assert path.read_bytes() == data  # another reader joins
    assert repo.status()["statistics"]["fuse"]["calls"].get("read", 0) == reads
    st = cache_stats(repo)
    assert st["reads"]["passthrough_opens"] == 1 and st["reads"]["gets"] == 6
    with open(path, "r+b") as writer:  # the readers are gone: writing works, on the local tier
        writer.write(b"NEW")
    assert path.read_bytes() == b"NEW" + data[3:]
    repo.sync()
    assert (repo.remote_dir / "ckpt.bin").read_bytes() == b"NEW" + data[3:]


def pages_in_memory(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file), by mincore(2), which reads
    nothing itself (a read that may not wait would start readahead)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        start = ctypes.c_char.from_buffer(mm)
        try:
            rc = libc.mincore(ctypes.addressof(start), size, vec)
        finally:
            del start  # the mapping cannot close while a pointer into it exists
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec), pages


def test_a_cached_file_handed_to_the_kernel_is_read_into_memory_while_it_is_open(make_repo):
    """The kernel's own readahead keeps one window in flight; while a merged cache file is open
    for the kernel, the cache reads the rest into the page cache beside it (cache/warmup.py)."""
    repo, path, data = read_once_and_merged(make_repo, 9 * CHUNK + 321)
    [merged] = [p for p in repo.cache.rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    fd = os.open(merged, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert pages_in_memory(merged)[0] == 0
    with open(path, "rb") as reader:  # opened; nothing read from it yet
        assert cache_stats(repo)["reads"]["passthrough_opens"] == 1
        wait_until(lambda: pages_in_memory(merged)[0] == pages_in_memory(merged)[1], timeout=30)
        assert reader.read() == data


@pytest.mark.slow
def test_pins_persist_show_in_status_and_are_readable_with_the_remote_offline(make_repo):
    repo = configure(make_repo(), tiers='[cache.tiers.t]\nmax_size = "16M"\nexpires = "1h"\n')
    (repo.remote_dir / "ds").mkdir()
    files = {f"ds/{i}.bin": os.urandom(600 * K + i) for i in range(3)}
    for name, data in files.items():
        (repo.remote_dir / name).write_bytes(data)
    (repo.remote_dir / "other.bin").write_bytes(os.urandom(1000))
    repo.start()
    r = mountd_cmd("pin", str(repo.data / "ds"))
    assert f"pinned {repo.data / 'ds'}: 3 files, {sum(map(len, files.values()))} bytes" in r.stdout
    assert "pinning /data/ds: 3/3 files" in r.stderr
    assert os.getxattr(repo.data / "ds" / "1.bin", "user.mountd.tier") == b"pinned"
    assert os.getxattr(repo.data / "other.bin", "user.mountd.tier") == b"t"
    repo.stop()

    repo.start()
    assert "pinned path  /data/ds  (3 objects)" in mountd_cmd("status", str(repo.mp)).stdout
    away = repo.root / "remote.away"
    os.rename(repo.remote_dir, away)
    repo.remote_dir.write_bytes(b"")  # the remote's root is no directory: every call fails
    try:
        assert control(repo, "cache_clear") == {"removed": {"t": 0}}
        for name, data in files.items():
            assert (repo.data / name).read_bytes() == data
        with pytest.raises(OSError):
            (repo.data / "other.bin").read_bytes()
        assert cache_stats(repo)["reads"]["gets"] == 0
    finally:
        repo.remote_dir.unlink()
        os.rename(away, repo.remote_dir)
    r = mountd_cmd("unpin", str(repo.data / "ds"))
    assert "9 chunks dropped" in r.stdout  # three chunks each
    assert os.getxattr(repo.data / "ds" / "1.bin", "user.mountd.tier") == b"t"
    assert cache_stats(repo)["pinned"]["entries"] == 0
    r = mountd_cmd("unpin", str(repo.data / "ds"), check=False)
    assert r.returncode == 1 and "is not pinned" in r.stderr
    r = mountd_cmd("pin", str(repo.mp), check=False)
    assert r.returncode == 0  # the root holds the remote's attach point: pins the whole remote
