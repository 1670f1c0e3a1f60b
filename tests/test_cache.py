"""The chunk cache against a real file:// store, without the kernel.

GETs are counted at the backend: `CountingStore` is the real `FileStore` with its ranged read
counted (and optionally held at a gate, to make concurrency deterministic). Time is an
injectable clock, so expiry and eviction order are exact.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fsspec.implementations.local import LocalFileSystem

from mountd.backend.files import FileStore
from mountd.cache import CacheInUse, ChunkCache, ObjectRef
from mountd.cache.prefetch import ReadAhead
from mountd.cache.routing import TierRule, route
from mountd.cache.tierdb import WAL_RESERVE
from mountd.config import RepoConfig
from mountd.errors import ConfigError, RemoteError
from mountd.units import parse_size

K = 1024
CHUNK = 64 * K


class CountingStore(FileStore):
    """The real file:// store, counting its ranged reads (GETs) and how many run at once."""

    def __init__(self, root: Path, name: str = "r") -> None:
        super().__init__(name, f"file://{root}", LocalFileSystem(skip_instance_cache=True), str(root))
        self.gets = 0
        self.active = 0
        self.max_active = 0
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        with self._lock:
            self.gets += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            return super().read_range(key, start, end, version=version)
        finally:
            with self._lock:
                self.active -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_config(tmp: Path, *, chunk: str = "64K", tiers: dict[str, Any] | None = None,
                read_whole: tuple[str, ...] = (), passthrough: bool = True) -> RepoConfig:
    tiers = tiers or {"small": {"max_size": "1M", "expires": "1h"}}
    return RepoConfig.model_validate({
        "name": "t", "local": {"path": str(tmp / "local")},
        "cache": {"path": str(tmp / "cache"), "chunk_size": chunk, "tiers": tiers, "fetch_concurrency": 4,
                  "passthrough": passthrough},
        "remote": [{"name": "r", "url": f"file://{tmp / 'remote'}", "read_whole": list(read_whole)}],
    })


class Env:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.remote = tmp / "remote"
        self.remote.mkdir(exist_ok=True)
        self.store = CountingStore(self.remote)
        self.clock = Clock()
        self.config = make_config(tmp, **config)

    def put(self, key: str, data: bytes, **metadata: str) -> ObjectRef:
        info = self.store.put_bytes(key, data, metadata)
        return ObjectRef("r", key, info.version, info.size, (info.metadata or {}).get("sha256"))

    @asynccontextmanager
    async def cache(self, config: RepoConfig | None = None) -> AsyncIterator[ChunkCache]:
        cache = ChunkCache(config or self.config, {"r": self.store}, clock=self.clock)
        try:
            async with trio.open_nursery() as n:
                await n.start(cache.run)
                await cache.wait_ready()
                yield cache
                n.cancel_scope.cancel()
        finally:
            cache.close()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def tier_dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in [*files, "."]:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            total += max(st.st_size, st.st_blocks * 512)
    return total


async def settle(cache: ChunkCache) -> None:
    """Until every fetched chunk is written (admission runs in the background)."""
    await cache.wait_idle()


def test_read_serves_bytes_and_second_read_hits_disk(tmp_path):
    env = Env(tmp_path, passthrough=False)  # chunks stay chunks (merging: test_merged_objects_...)
    data = os.urandom(3 * CHUNK + 100)
    obj = env.put("a.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            assert await cache.read(obj, 0, len(data) + 10) == data
            assert await cache.read(obj, CHUNK - 5, 10) == data[CHUNK - 5:CHUNK + 5]
            await settle(cache)
            gets = env.store.gets
            assert gets == 4
            cache.memory.clear_recent()
            for off in range(0, len(data), 4 * K):
                assert await cache.read(obj, off, 4 * K) == data[off:off + 4 * K]
            assert env.store.gets == gets
            assert cache.describe(obj) == ("small", len(data))
            st = cache.cache_statistics()["tiers"]["small"]
            assert st["entries"] == 4 and st["hits"] > 0 and st["writes"] == 4

    run(main)


def test_one_get_per_chunk_however_many_readers_wait(tmp_path):
    env = Env(tmp_path)
    data = os.urandom(CHUNK)
    obj = env.put("a.bin", data)
    env.store.gate = threading.Event()

    async def main() -> None:
        async with env.cache() as cache:
            results: list[bytes] = []

            async def reader(off: int) -> None:
                results.append(await cache.read(obj, off, 1000))

            async with trio.open_nursery() as n:
                for i in range(10):
                    n.start_soon(reader, i * 1000)
                await trio.testing.wait_all_tasks_blocked()
                env.store.gate.set()
            assert sorted(results) == sorted(data[i * 1000:(i + 1) * 1000] for i in range(10))
            assert env.store.gets == 1

    run(main)


def test_eviction_is_expired_first_then_least_recently_used(tmp_path):
    env = Env(tmp_path, chunk="1M", tiers={"t": {"max_size": "64M", "expires": "1h"}})
    objs = {name: env.put(f"{name}.bin", os.urandom(1 << 20)) for name in "ABCDEF"}
    t0 = env.clock.now

    async def main() -> None:
        async with env.cache() as cache:
            tier = cache.tiers["t"]
            tier.max_size = tier.overhead + (4 << 20) + (512 << 10)  # four chunks and the SQLite files

            async def load(name: str) -> None:
                await cache.read(objs[name], 0, 10)
                await settle(cache)

            def cached() -> set[str]:
                return {k for k, o in objs.items() if cache.describe(o)[1]}

            for name in "ABCD":  # admitted at t0, t0+1, t0+2, t0+3
                await load(name)
                env.clock.now += 1
            assert cached() == set("ABCD")
            await cache.read(objs["A"], 0, 10)  # LRU order now B C D A
            await load("E")
            assert cached() == set("ACDE"), "B was the least recently used"
            await cache.read(objs["C"], 0, 10)  # LRU order D E A C
            env.clock.now = t0 + 3600.5  # A has expired, D (least recently used) has not
            await load("F")
            assert cached() == set("CDEF"), "the expired entry goes before the least recently used one"
            st = tier.statistics()
            assert (st["evictions"], st["expirations"]) == (1, 1)
            assert tier_dir_size(tier.directory) <= tier.max_size

    run(main)


def test_expired_entries_are_never_served_and_are_swept(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "1M", "expires": "10m"}})
    data = os.urandom(CHUNK)
    obj = env.put("a.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, 10)
            await settle(cache)
            cache.memory.clear_recent()
            env.clock.now += 599
            assert await cache.read(obj, 100, 10) == data[100:110]
            assert env.store.gets == 1
            env.clock.now += 2  # past 10 minutes since admission
            assert cache.describe(obj)[1] == 0
            assert await cache.prune() == {"t": 1}
            assert cache.tiers["t"].statistics()["entries"] == 0
            assert not list(cache.tiers["t"].directory.glob("*.val"))
            assert await cache.read(obj, 100, 10) == data[100:110]
            assert env.store.gets == 2

    run(main)


def test_corrupt_or_truncated_chunk_is_a_miss_and_is_fetched_again(tmp_path):
    env = Env(tmp_path, passthrough=False)
    data = os.urandom(2 * CHUNK)
    obj = env.put("a.bin", data)

    def chunk_files(cache: ChunkCache) -> list[Path]:
        return sorted(cache.tiers["small"].directory.glob("*.val"), key=lambda p: p.stat().st_mtime_ns)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, len(data))
            await settle(cache)
            cache.memory.clear_recent()
            assert await cache.read(obj, 0, 10) == data[:10]  # opened and verified
            first = chunk_files(cache)
            assert len(first) == 2
            for f in first:  # flip bytes in place while the daemon has the file open
                with open(f, "r+b") as fh:
                    fh.seek(CHUNK // 2)
                    fh.write(b"\0garbage\0")
            assert await cache.read(obj, 0, len(data)) == data
            await settle(cache)
            assert env.store.gets == 4
            assert cache.tiers["small"].statistics()["corrupt"] == 2
        # truncated while no daemon runs: found at load (size mismatch), fetched again
        async with env.cache() as cache:
            f = chunk_files(cache)[0]
            os.truncate(f, 100)
        async with env.cache() as cache:
            assert await cache.read(obj, 0, len(data)) == data
            assert env.store.gets == 5

    run(main)


def test_merged_objects_serve_reads_are_handed_out_whole_and_keep_the_cap(tmp_path):
    """Once all chunks of an object are cached they become one file (room for both is made first,
    so the cap holds); reads are served from it, and a file handed out whole is not evicted."""
    env = Env(tmp_path)
    data = os.urandom(3 * CHUNK + 7)
    obj = env.put("a.bin", data)
    others = [env.put(f"o{i}.bin", os.urandom(CHUNK)) for i in range(12)]  # more than the tier holds

    async def main() -> None:
        async with env.cache() as cache:
            tier = cache.tiers["small"]
            assert cache.open_whole(obj) is None  # nothing cached yet
            assert await cache.read(obj, 0, len(data)) == data
            await settle(cache)
            assert cache.statistics()["merged"] == 1
            assert [e.length for e in tier.entries.values()] == [len(data)]  # one file, no chunk left
            assert tier.on_disk <= tier.max_size
            cache.memory.clear_recent()
            gets = env.store.gets
            for off in (0, CHUNK - 3, 2 * CHUNK + 11, len(data) - 5):
                assert await cache.read(obj, off, 100) == data[off:off + 100]
            assert env.store.gets == gets
            assert cache.describe(obj) == ("small", len(data))
            whole = cache.open_whole(obj)
            assert whole is not None
            assert os.pread(whole.fd, len(data) + 1, 0) == data
            for o in others:  # the tier fills up and evicts; never the file handed out
                await cache.read(o, 0, CHUNK)
                await settle(cache)
                assert tier.on_disk <= tier.max_size
            assert tier.statistics()["evictions"] > 0
            assert any(e.length == len(data) for e in tier.entries.values())
            whole.close()
            for o in others:
                await cache.read(o, 0, CHUNK)
            await settle(cache)
            assert not any(e.length == len(data) for e in tier.entries.values())  # evicted once let go
            assert await cache.read(obj, 0, len(data)) == data

    run(main)


@pytest.mark.parametrize("chunk", ["64K", "1M"])  # read and checked here / copied by the kernel, CRCs reused
def test_a_merged_file_passes_its_checksums_after_a_restart(tmp_path, chunk):
    env = Env(tmp_path, chunk=chunk, tiers={"t": {"max_size": "16M", "expires": "1h"}})
    data = os.urandom(2 * parse_size(chunk) + 12345)
    obj = env.put("a.bin", data)

    async def fill() -> None:
        async with env.cache() as cache:
            assert await cache.read(obj, 0, len(data)) == data
            await settle(cache)
            assert cache.statistics()["merged"] == 1

    async def read_back() -> None:
        async with env.cache() as cache:
            gets = env.store.gets
            assert cache.open_whole(obj) is None  # not checked by this process yet
            assert await cache.read(obj, 0, len(data) + 1) == data
            assert env.store.gets == gets and cache.tiers["t"].statistics()["corrupt"] == 0
            whole = cache.open_whole(obj)  # every block checked now
            assert whole is not None
            whole.close()

    run(fill)
    run(read_back)


def test_a_damaged_merged_file_is_never_handed_out_nor_served(tmp_path):
    env = Env(tmp_path)
    data = os.urandom(3 * CHUNK)
    obj = env.put("a.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, len(data))
            await settle(cache)
            (merged,) = cache.tiers["small"].directory.glob("*.val")
            before = merged.stat()
            with open(merged, "r+b") as fh:
                fh.seek(CHUNK + 5)
                fh.write(b"\0garbage\0")
            # a writer moves the mtime; set it apart explicitly, as the clock's tick may not have moved
            os.utime(merged, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
            assert cache.open_whole(obj) is None
            cache.memory.clear_recent()
            gets = env.store.gets
            assert await cache.read(obj, 0, len(data)) == data
            assert cache.tiers["small"].statistics()["corrupt"] == 1 and env.store.gets > gets

    run(main)


def test_identical_content_with_sha256_metadata_is_cached_once(tmp_path):
    env = Env(tmp_path)
    data = os.urandom(2 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    a = env.put("x/a.bin", data, sha256=sha)
    b = env.put("y/b.bin", data, sha256=sha)
    c = env.put("c.bin", data)  # no hash known: its own entries

    async def main() -> None:
        async with env.cache() as cache:
            assert await cache.read(a, 0, len(data)) == data
            await settle(cache)
            assert await cache.read(b, 0, len(data)) == data
            assert env.store.gets == 2
            assert await cache.read(c, 0, len(data)) == data
            await settle(cache)
            assert env.store.gets == 4
            # two objects, each merged into one file once all its chunks were cached
            assert cache.cache_statistics()["tiers"]["small"]["entries"] == 2
            assert cache.statistics()["merged"] == 2

    run(main)


def test_every_tier_is_searched_before_the_remote(tmp_path):
    env = Env(tmp_path, tiers={"first": {"max_size": "1M", "expires": "1h"},
                               "second": {"max_size": "1M", "expires": "1h"}})
    data = os.urandom(CHUNK)
    obj = env.put("model.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, 10)
            await settle(cache)
            assert cache.describe(obj) == ("first", CHUNK)
        # the rules change: *.bin now belongs to "second", but "first" still holds the data
        rerouted = make_config(tmp_path, tiers={
            "first": {"max_size": "1M", "expires": "1h", "globs": ["*.txt"]},
            "second": {"max_size": "1M", "expires": "1h"}})
        async with env.cache(rerouted) as cache:
            assert await cache.read(obj, 0, len(data)) == data
            assert cache.describe(obj) == ("second", CHUNK)
            assert env.store.gets == 1

    run(main)


def test_routing_rules_first_match_wins():
    rules = [TierRule("previews", max_object_size=4 << 20),
             TierRule("images", globs=("*.png", "shots/*.jpg")),
             TierRule("big", min_object_size=1 << 30), TierRule("rest")]
    assert route(rules, "a/b.png", 1 << 20) == "previews"
    assert route(rules, "a/b.png", 5 << 20) == "images"
    assert route(rules, "shots/x.jpg", 5 << 20) == "images"
    assert route(rules, "other/x.jpg", 5 << 20) == "rest"
    assert route(rules, "w.bin", 2 << 30) == "big"
    assert route(rules[:3], "w.bin", 5 << 20) is None


def test_read_ahead_window_grows_on_sequential_reads_and_resets_on_seek():
    ra = ReadAhead(chunk_size=CHUNK, chunks=100, max_chunks=8, slack=0)
    assert list(ra.on_read(0, 16 * K)) == []  # a first read is not yet a stream
    assert list(ra.on_read(16 * K, 32 * K)) == [1]  # second sequential read: window of one chunk
    assert list(ra.on_read(32 * K, 64 * K)) == []  # chunk 1 already proposed
    assert list(ra.on_read(64 * K, 80 * K)) == [2, 3]  # entered chunk 1: window 2
    assert list(ra.on_read(128 * K, 144 * K)) == []  # a jump of 48K is a seek with slack 0
    assert ra.window == 0
    got = []
    off = 144 * K
    for _ in range(60):
        got += list(ra.on_read(off, off + 16 * K))
        off += 16 * K
    assert ra.window == 8 and got == list(range(3, (off - 1) // CHUNK + 9))


def test_sequential_reads_prefetch_ahead(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "4M", "expires": "1h"}})
    data = os.urandom(20 * CHUNK)
    obj = env.put("seq.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            for off in range(0, 10 * CHUNK, 16 * K):
                assert await cache.read(obj, off, 16 * K) == data[off:off + 16 * K]
            await settle(cache)
            st = cache.statistics()
            assert st["prefetched"] >= 8
            assert cache.describe(obj)[1] > 10 * CHUNK  # chunks beyond the reader are already here

    run(main)


def test_read_whole_fetches_all_chunks_with_parallel_gets(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "4M", "expires": "1h"}}, read_whole=("*.safetensors",))
    data = os.urandom(12 * CHUNK + 5)
    obj = env.put("m/model.safetensors", data)
    other = env.put("m/model.json", os.urandom(3 * CHUNK))
    env.store.gate = threading.Event()

    async def main() -> None:
        async with env.cache() as cache:
            cache.opened(other)
            cache.opened(obj)
            with trio.fail_after(10):
                while env.store.active < 4:  # GETs held at the gate: as many as fetch_concurrency
                    await trio.sleep(0.001)
            env.store.gate.set()
            await settle(cache)
            while cache.describe(obj)[1] < len(data):
                await trio.sleep(0.01)
            assert env.store.gets == 13
            assert env.store.max_active == 4  # fetch_concurrency
            assert cache.describe(other)[1] == 0
            assert await cache.read(obj, 0, len(data)) == data
            assert env.store.gets == 13

    run(main)


def test_a_chunk_no_tier_takes_is_served_from_memory_once_fetched(tmp_path):
    env = Env(tmp_path, tiers={"images": {"max_size": "1M", "expires": "1h", "globs": ["*.png"]}})
    data = os.urandom(CHUNK)
    obj = env.put("weights.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            for off in range(0, CHUNK, 4 * K):
                assert await cache.read(obj, off, 4 * K) == data[off:off + 4 * K]
            assert env.store.gets == 1
            assert cache.describe(obj) == ("none", 0)

    run(main)


def test_forget_drops_the_chunks_of_an_old_version(tmp_path):
    env = Env(tmp_path)
    old = env.put("a.bin", b"1" * CHUNK)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(old, 0, 10)
            await settle(cache)
            new = env.put("a.bin", b"2" * CHUNK)
            assert new.version != old.version
            cache.forget(old)
            await trio.testing.wait_all_tasks_blocked()
            assert cache.describe(old)[1] == 0
            assert await cache.read(new, 0, 3) == b"222"

    run(main)


@pytest.mark.slow
def test_chunks_of_an_older_cache_with_zlib_crc32_tags_are_still_verified(tmp_path):
    env = Env(tmp_path, passthrough=False)
    data = os.urandom(2 * CHUNK)
    obj = env.put("a.bin", data)

    async def fill() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, len(data))
            await settle(cache)

    corrupt: list[int] = []

    async def read_back() -> None:
        async with env.cache() as cache:
            assert cache.cache_statistics()["tiers"]["small"]["entries"] == 2  # old tags are accepted
            assert await cache.read(obj, 0, len(data)) == data
            corrupt.append(cache.tiers["small"].statistics()["corrupt"])

    run(fill)
    tier = env.config.cache.path / "tiers" / "small"
    with sqlite3.connect(tier / "cache.db") as db:  # rewrite the tags as caches before CRC32C wrote them
        rows = db.execute("SELECT rowid, tag, filename FROM Cache").fetchall()
        assert len(rows) == 2 and all(tag.split()[1].startswith("crc32c:") for _, tag, _ in rows)
        for rowid, tag, filename in rows:
            block = (tier / filename).read_bytes()
            db.execute("UPDATE Cache SET tag = ? WHERE rowid = ?",
                       (f"{tag.split()[0]} {zlib.crc32(block):08x}", rowid))
    run(read_back)
    assert corrupt == [0]  # the old chunks pass their zlib checksums
    for f in tier.glob("*.val"):
        with open(f, "r+b") as fh:
            fh.write(b"\0garbage\0")
    run(read_back)
    assert corrupt[1] == 2  # and damaged ones fail them: fetched again, never returned


def test_restart_with_10000_chunks_is_ready_within_a_second_and_reads_without_gets(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "1G", "expires": "7d"}})
    src = tmp_path / "src"
    src.mkdir()
    objs = [ObjectRef("r", f"f/{i}", "v1", 100, None) for i in range(10_000)]

    async def main() -> None:
        async with env.cache() as cache:
            limiter = trio.CapacityLimiter(16)

            async def adopt(i: int, obj: ObjectRef) -> None:
                async with limiter:
                    p = src / str(i)
                    p.write_bytes(i.to_bytes(4, "big") * 25)
                    assert await cache.adopt_file(obj, p) == 100

            async with trio.open_nursery() as n:
                for i, obj in enumerate(objs):
                    n.start_soon(adopt, i, obj)
            assert not any(src.iterdir()), "adopted files are consumed"
        start = time.monotonic()
        cache = ChunkCache(env.config, {"r": env.store}, clock=env.clock)
        try:
            async with trio.open_nursery() as n:
                await n.start(cache.run)
                await cache.wait_ready()
                ready = time.monotonic() - start
                assert cache.cache_statistics()["tiers"]["t"]["entries"] == 10_000
                for i in (0, 1, 4999, 9999):
                    assert await cache.read(objs[i], 0, 100) == i.to_bytes(4, "big") * 25
                n.cancel_scope.cancel()
        finally:
            cache.close()
        assert ready < 1.0, f"loading 10,000 chunks took {ready:.2f}s"
        assert env.store.gets == 0

    run(main)


def test_pins_persist_and_are_read_with_the_remote_offline(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "1M", "expires": "1h"}})
    data = {f"ds/{i}.bin": os.urandom(CHUNK + 1 + i) for i in range(3)}  # two chunks each
    objs = [env.put(k, v) for k, v in data.items()]
    loose = env.put("loose.bin", os.urandom(100))

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(objs[0], 0, 10)  # one is cached already: moved, not fetched again
            await settle(cache)
            steps = [s async for s in cache.pin("/data/ds", [("r", "ds")], objs)]
            assert steps[-1] == {"path": "/data/ds", "files": 3, "bytes": sum(map(len, data.values())),
                                 "failed": []}
            assert env.store.gets == 6
            assert cache.describe(objs[1]) == ("pinned", len(data["ds/1.bin"]))
            assert cache.describe(loose)[0] == "t"
            assert cache.cache_statistics()["tiers"]["t"]["entries"] == 0
        # remote offline: its root is no longer a directory
        os.rename(env.remote, tmp_path / "remote.away")
        env.remote.write_bytes(b"")
        async with env.cache() as cache:
            assert cache.cache_statistics()["pins"] == [{"path": "/data/ds", "objects": 3}]
            await cache.clear()
            for obj in objs:
                assert await cache.read(obj, 0, obj.size) == data[obj.key]
            with pytest.raises(RemoteError):
                await cache.read(loose, 0, 10)
            result = await cache.unpin("/data/ds")
            assert result == {"path": "/data/ds", "pinned": True, "dropped_chunks": 6}
            assert cache.cache_statistics()["pinned"]["entries"] == 0
            assert (await cache.unpin("/data/ds"))["pinned"] is False

    run(main)


def test_pinning_a_merged_object_copies_its_chunks_out_of_the_merged_file(tmp_path):
    """The chunks of a merged object are read out of its file (checked, in a worker thread) into
    the pinned store, without a GET; a damaged block is fetched again instead."""
    env = Env(tmp_path, tiers={"t": {"max_size": "4M", "expires": "1h"}})
    data = {name: os.urandom(3 * CHUNK + 5) for name in ("ok.bin", "bad.bin")}
    objs = {name: env.put(name, body) for name, body in data.items()}

    async def main() -> None:
        async with env.cache() as cache:
            for obj in objs.values():
                await cache.read(obj, 0, obj.size)
                await settle(cache)
            assert cache.statistics()["merged"] == 2
            gets = env.store.gets
            merged = sorted(cache.tiers["t"].directory.rglob("*.val"), key=lambda p: p.stat().st_mtime_ns)
            assert len(merged) == 2
            with open(merged[-1], "r+b") as fh:  # the file of bad.bin, merged last
                fh.seek(2 * CHUNK + 1)
                fh.write(b"\0" if fh.read(1) != b"\0" else b"\1")
            steps = [s async for s in cache.pin("/data", [("r", "")], list(objs.values()))]
            assert steps[-1]["failed"] == [] and steps[-1]["files"] == 2
            assert env.store.gets - gets == 4  # bad.bin's 4 chunks once its file failed its check
            assert cache.cache_statistics()["tiers"]["t"]["entries"] == 0
            for name, obj in objs.items():
                assert cache.describe(obj) == ("pinned", len(data[name]))
                assert await cache.read(obj, 0, obj.size) == data[name]

    run(main)


def test_adopt_file_moves_a_single_chunk_and_copies_larger_files(tmp_path):
    env = Env(tmp_path)
    small, big = os.urandom(1000), os.urandom(2 * CHUNK + 1)
    (tmp_path / "s").write_bytes(small)
    (tmp_path / "b").write_bytes(big)
    ino = (tmp_path / "s").stat().st_ino

    async def main() -> None:
        async with env.cache() as cache:
            s = ObjectRef("r", "s", "v", len(small), None)
            b = ObjectRef("r", "b", "v", len(big), hashlib.sha256(big).hexdigest())
            assert await cache.adopt_file(s, tmp_path / "s") == len(small)
            assert await cache.adopt_file(b, tmp_path / "b") == len(big)
            assert not (tmp_path / "s").exists() and not (tmp_path / "b").exists()
            assert ino in {p.stat().st_ino for p in cache.tiers["small"].directory.glob("*.val")}  # renamed
            assert await cache.read(s, 0, 2000) == small
            assert await cache.read(b, 0, len(big)) == big
            assert env.store.gets == 0

    run(main)


def test_cap_holds_while_many_chunks_are_admitted_at_once(tmp_path):
    env = Env(tmp_path, tiers={"t": {"max_size": "1M", "expires": "1h"}})
    objs = [env.put(f"{i}.bin", os.urandom(CHUNK)) for i in range(48)]
    samples: list[tuple[int, ...]] = []

    async def main() -> None:
        async with env.cache() as cache:
            tier = cache.tiers["t"]

            async def watch() -> None:
                while True:
                    accounted = tier.on_disk
                    measured = await trio.to_thread.run_sync(tier_dir_size, tier.directory)
                    samples.append((accounted, measured, tier.committed, tier.pending, tier.overhead))

            async with trio.open_nursery() as n:
                n.start_soon(watch)
                async with trio.open_nursery() as readers:
                    for obj in objs:
                        readers.start_soon(cache.read, obj, 0, CHUNK)
                await settle(cache)
                n.cancel_scope.cancel()
            st = tier.statistics()
            assert st["evictions"] >= 48 - 16
            # the accounting is the disk, with the WAL counted at its largest
            assert 0 <= tier.on_disk - tier_dir_size(tier.directory) <= WAL_RESERVE
            assert max(a for a, *_ in samples) <= 1 << 20
            assert max(m for _, m, *_ in samples) <= (1 << 20) + CHUNK, samples

    run(main)


def test_a_second_daemon_cannot_share_the_cache_directory(tmp_path):
    env = Env(tmp_path)
    first = ChunkCache(env.config, {"r": env.store})
    try:
        with pytest.raises(CacheInUse, match="in use by another mountd"):
            ChunkCache(env.config, {"r": env.store})
    finally:
        first.close()


def test_a_tier_smaller_than_a_chunk_is_a_config_error(tmp_path):
    from mountd.config import load_config

    cfg = tmp_path / "r.toml"
    cfg.write_text('[cache]\nchunk_size = "8M"\n[cache.tiers.tiny]\nmax_size = "1M"\nexpires = "1h"\n'
                   '[[remote]]\nname = "r"\nurl = "file:///tmp/x"\n')
    with pytest.raises(ConfigError, match=r"cache.*tiny.max_size.*smaller than chunk_size"):
        load_config(cfg)


def test_a_tier_whose_database_is_damaged_starts_empty(tmp_path, caplog):
    env = Env(tmp_path)
    data = os.urandom(CHUNK)
    obj = env.put("a.bin", data)

    async def main() -> None:
        async with env.cache() as cache:
            await cache.read(obj, 0, CHUNK)
            await settle(cache)
            db = cache.tiers["small"].directory / "cache.db"
        for f in db.parent.glob("cache.db*"):
            f.unlink()
        db.write_bytes(b"this is not an SQLite database" * 100)
        async with env.cache() as cache:
            assert cache.cache_statistics()["tiers"]["small"]["entries"] == 0
            assert await cache.read(obj, 0, CHUNK) == data
            assert env.store.gets == 2

    run(main)
    assert "database" in caplog.text and "starting the tier empty" in caplog.text
