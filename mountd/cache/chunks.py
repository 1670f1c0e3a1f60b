"""`ChunkCache`: the read path for remote data that is not on the local tier.

It owns the named disk tiers and the pinned store (`TierStore`s), the pin records (`PinSet`) and
the read-ahead state of each object (`Ident`), and hands parts of the work to collaborators it
makes: the fetches in flight (`Fetches`, fetch.py), the chunks held in memory (`ChunkMemory`,
memory.py), merged objects for the kernel (`WholeObjects`, whole.py) and the moves into the
pinned store (`Pinning`, pinning.py). It serves `read(obj, offset, size)` in chunks of
`chunk_size`:

1. a chunk fetched moments ago and still being written, or one no tier can hold, is served from
   memory;
2. else every store is searched (pinned first, then the tiers in configuration order): data found
   in another tier than the routing rules name is served from there;
3. else one ranged GET fetches it, however many readers wait (single flight); the chunk is then
   admitted, in the background, to the pinned store when a pin covers the object, else to the
   tier its rules choose.

Sequential readers grow a prefetch window (`ReadAhead`); opening an object that matches its
remote's `read_whole` globs fetches all its chunks with parallel ranged GETs; chunks ahead of a
sequential reader that are already on disk are read into the page cache by the kernel
(`TierStore.prepare`). Hits are served with `os.pread` on the trio thread; GETs, checksums and
chunk writes run in worker threads.
It never imports the vfs: pinning receives the objects to pin from the caller.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from mountd.backend import ObjectStore
from mountd.cache.chunkfile import Entry, FileSource
from mountd.cache.fetch import Fetches
from mountd.cache.ident import Ident
from mountd.cache.memory import ChunkMemory, Write
from mountd.cache.pinning import Pinning
from mountd.cache.pins import PinSet
from mountd.cache.prefetch import ReadAhead
from mountd.cache.reader import ObjectRef, WholeFile
from mountd.cache.routing import (
    base_of,
    chunk_count,
    chunk_key,
    chunk_length,
    matches_any,
    object_base,
    route,
    rules_from_config,
    whole_key,
)
from mountd.cache.store import TierStore
from mountd.cache.whole import WholeObjects
from mountd.config import RepoConfig
from mountd.errors import MountdError, RemoteError

log = logging.getLogger(__name__)

PINNED = "pinned"
MAX_IDENTS = 4096
MAX_SWEEP_INTERVAL = 60.0


class CacheInUse(MountdError):
    """Another daemon uses the same cache directory (its caps could not be kept)."""


@dataclass(slots=True)
class _Stats:
    hits: int = 0
    memory_hits: int = 0
    prefetched: int = 0
    prefetch_errors: int = 0
    read_whole: int = 0


class ChunkCache:
    def __init__(self, config: RepoConfig, stores: Mapping[str, ObjectStore], *,
                 clock: Callable[[], float] = time.time,
                 on_fetching: Callable[[bool], None] = lambda busy: None) -> None:
        cfg = config.cache
        self.chunk_size = cfg.chunk_size
        self._clock = clock
        self._rules = rules_from_config(cfg.tiers)
        self._read_whole = {r.name: r.read_whole for r in config.remote if r.read_whole}
        self._max_ahead = max(1, cfg.prefetch // cfg.chunk_size)
        self._parallel = cfg.fetch_concurrency
        self._lock_fd = self._lock(config.cache_path)
        try:
            self.tiers = {name: TierStore(name, config.cache_path / "tiers" / name, max_size=t.max_size,
                                          expires=t.expires, clock=clock) for name, t in cfg.tiers.items()}
            pin_dir = config.local_path / "pinned"
            self.pinned = TierStore(PINNED, pin_dir / "chunks", max_size=None, expires=None, clock=clock)
            self.pins = PinSet(pin_dir / "rules")
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._search = [self.pinned, *self.tiers.values()]
        expiries = [t.expires for t in cfg.tiers.values() if t.expires]
        self._sweep_interval = max(1.0, min([MAX_SWEEP_INTERVAL, *(e / 4 for e in expiries)]))
        self._idents: OrderedDict[ObjectRef, Ident] = OrderedDict()
        self._fetches = Fetches(stores, timeout=config.mount.read_timeout, concurrency=cfg.fetch_concurrency,
                                on_fetching=on_fetching)
        self.memory = ChunkMemory(cfg.chunk_size)
        self._whole = WholeObjects(self.tiers.values(), passthrough=cfg.passthrough, clock=clock)
        self._pinning = Pinning(self.pinned, self.pins, self.tiers, self.memory, chunk_size=cfg.chunk_size,
                                parallel=cfg.fetch_concurrency,
                                find=lambda key: self._find(key, pinned=False),
                                fetch=lambda ident, index: self._fetch(ident, index, background=True))
        self._nursery: trio.Nursery | None = None
        self._busy = 0  # background tasks spawned and not finished
        self._idle = trio.Event()
        self._ready = trio.Event()
        self._stats = _Stats()

    @staticmethod
    def _lock(path: Path) -> int:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheInUse(f"the cache directory {path} is in use by another mountd; give each repository "
                             f"its own [cache] path") from None
        return fd

    # ------------------------------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the indexes (reads wait for that, the mount does not), then sweep expired entries."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._load()
                while True:
                    await trio.sleep(self._sweep_interval)
                    await self.prune()
                    for store in self._search:
                        await store.flush_access_times()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    for store in self._search:
                        await store.flush_access_times()

    async def _load(self) -> None:
        start = time.monotonic()

        async def one(store: TierStore) -> None:
            store.apply_loaded(await trio.to_thread.run_sync(store.load))

        async with trio.open_nursery() as n:
            for store in self._search:
                n.start_soon(one, store)
        self._ready.set()
        loaded = ", ".join(f"{s.name} {len(s.entries)} chunks" for s in self._search)
        log.info("cache loaded: %s in %.3fs", loaded, time.monotonic() - start)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        assert self._nursery is not None
        self._busy += 1
        self._nursery.start_soon(self._tracked, fn, args)

    async def _tracked(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        try:
            await fn(*args)
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()
                self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Until no fetch, prefetch or chunk write is under way."""
        while self._busy or len(self._fetches):
            if self._busy:
                await self._idle.wait()
            else:
                await self._fetches.wait_one()

    def close(self) -> None:
        for store in self._search:
            store.close()
        self.pins.close()
        os.close(self._lock_fd)

    # ------------------------------------------------------------------------------------------
    # identities
    # ------------------------------------------------------------------------------------------
    def _ident(self, obj: ObjectRef) -> Ident:
        ident = self._idents.get(obj)
        if ident is not None:
            self._idents.move_to_end(obj)
            return ident
        tier_name = route(self._rules, obj.key, obj.size)
        ident = Ident(obj=obj, base=object_base(obj, self.chunk_size),
                      chunks=chunk_count(obj.size, self.chunk_size),
                      tier=self.tiers[tier_name] if tier_name else None,
                      pinned=self.pins.covers(obj.remote, obj.key))
        self._idents[obj] = ident
        if len(self._idents) > MAX_IDENTS:
            self._idents.popitem(last=False)
        return ident

    def _target(self, ident: Ident) -> TierStore | None:
        return self.pinned if ident.pinned else ident.tier

    # ------------------------------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------------------------------
    async def read(self, obj: ObjectRef, offset: int, size: int) -> bytes:
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        if not self._ready.is_set():
            await self._ready.wait()
        ident = self._ident(obj)
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        self._read_ahead(ident, offset, end)
        if first == last:
            return await self._read_chunk(ident, first, offset - first * cs, end - offset)
        for index in range(first + 1, last + 1):  # fetch the later chunks of this request in parallel
            self._spawn_prefetch(ident, index, count=False)
        out = []
        for index in range(first, last + 1):
            start, stop = max(offset, index * cs), min(end, (index + 1) * cs)
            piece = await self._read_chunk(ident, index, start - index * cs, stop - start)
            out.append(piece)
            if len(piece) < stop - start:
                break  # the object is shorter than its listed size
        return b"".join(out)

    def _find(self, key: str, *, pinned: bool = True) -> tuple[TierStore, Entry, int] | None:
        """(store, entry, where the chunk starts in the entry's file): the chunk's own entry, else
        the merged file of its whole object."""
        now = self._clock()
        for store in self._search if pinned else self._search[1:]:
            e = store.get(key, now)
            if e is not None:
                return store, e, 0
        base, index = key.rsplit("#", 1)
        whole = whole_key(base)
        for store in self._search[1:]:
            e = store.get(whole, now)
            if e is not None:
                return store, e, int(index) * self.chunk_size
        return None

    async def _read_chunk(self, ident: Ident, index: int, offset: int, size: int) -> bytes:
        key = chunk_key(ident.base, index)
        for _ in range(len(self._search) + 1):
            data = self.memory.get(key)
            if data is not None:
                self._stats.memory_hits += 1
                return data[offset:offset + size]
            found = self._find(key)
            if found is None:
                break
            store, e, start = found
            piece = store.read(e, size, start + offset)
            if piece is not None:
                store.touch(e, self._clock())
                store.stats.hits += 1
                self._stats.hits += 1
                return piece
            await store.purge([e])  # corrupt: out of the index now; look again (another tier, the remote)
        data = await self._fetch(ident, index)
        return data[offset:offset + size]

    async def _fetch(self, ident: Ident, index: int, *, background: bool = False) -> bytes:
        """The chunk from the remote (`Fetches`: one GET however many callers want it), then
        admitted where its object's chunks go."""
        key = chunk_key(ident.base, index)
        start = index * self.chunk_size
        stop = min(start + self.chunk_size, ident.obj.size)
        data, fetched = await self._fetches.fetch(key, ident.obj, start, stop, self._target(ident),
                                                  background=background)
        if fetched:
            await self._admit_fetched(ident, index, key, data)
        return data

    async def _admit_fetched(self, ident: Ident, index: int, key: str, data: bytes) -> None:
        target = self._target(ident)
        if target is None or len(data) != chunk_length(ident.obj.size, self.chunk_size, index) \
                or not target.fits(len(data)):
            self.memory.remember(key, data)  # no tier takes it, or the object is not what its listing said
            return
        write = self.memory.begin_write(key, data)
        if write is None:
            return
        if self._nursery is not None and not self.memory.lagging:
            self._spawn(self._write_chunk, target, ident, key, write)
        else:  # writes lag behind fetches: this reader waits for its own write
            await self._write_chunk(target, ident, key, write)

    async def _write_chunk(self, target: TierStore, ident: Ident, key: str, write: Write) -> None:
        try:
            if await target.admit(key, write.data, len(write.data)):
                if target is self.pinned:
                    self._note_pinned(ident.obj, ident.base)
                else:
                    self._maybe_merge(ident, target)
            else:
                self.memory.remember(key, write.data)
        finally:
            self.memory.end_write(key, write)

    # ------------------------------------------------------------------------------------------
    # prefetch and whole-object fetches
    # ------------------------------------------------------------------------------------------
    def _read_ahead(self, ident: Ident, offset: int, end: int) -> None:
        if ident.chunks <= 1:
            return
        if ident.read_ahead is None:
            ident.read_ahead = ReadAhead(self.chunk_size, ident.chunks, self._max_ahead)
        for index in ident.read_ahead.on_read(offset, end):
            self._spawn_prefetch(ident, index)

    def _cached(self, key: str) -> bool:
        return key in self._fetches or self.memory.get(key) is not None or self._find(key) is not None

    def _spawn_prefetch(self, ident: Ident, index: int, *, count: bool = True) -> None:
        if self._nursery is None:
            return
        key = chunk_key(ident.base, index)
        found = self._find(key)
        if found is not None:  # on disk: the kernel reads it ahead of the reader
            found[0].prepare(found[1], found[2])
            return
        if key in self._fetches or self.memory.get(key) is not None:
            return
        self._spawn(self._prefetch_one, ident, index, count)

    async def _prefetch_one(self, ident: Ident, index: int, count: bool) -> None:
        if self._cached(chunk_key(ident.base, index)):
            return
        try:
            await self._fetch(ident, index, background=True)
        except RemoteError as e:
            # the reader that needs this chunk gets the error itself when it reads it
            self._stats.prefetch_errors += 1
            log.info("prefetch of %s:%s chunk %d failed: %s", ident.obj.remote, ident.obj.key, index, e)
            return
        if count:
            self._stats.prefetched += 1

    def opened(self, obj: ObjectRef) -> None:
        """Start fetching a `read_whole` object in full (parallel ranged GETs) when it is opened;
        merge an object whose chunks are all cached (left unmerged by an earlier run)."""
        if self._ready.is_set() and (ident := self._ident(obj)).tier is not None and not ident.pinned:
            self._maybe_merge(ident, ident.tier)
        globs = self._read_whole.get(obj.remote)
        if not globs or obj.size == 0 or self._nursery is None or not matches_any(obj.key, globs):
            return
        ident = self._ident(obj)
        target = self._target(ident)
        if ident.whole or target is None:
            return
        if target.max_size is not None and obj.size > target.max_size // 2:
            log.info("not fetching %s:%s whole: it is larger than half of cache tier %r", obj.remote, obj.key,
                     target.name)
            return
        ident.whole = True
        self._stats.read_whole += 1
        self._spawn(self._fetch_all, ident)

    async def _fetch_all(self, ident: Ident, limit: int | None = None) -> None:
        limiter = trio.CapacityLimiter(limit or self._parallel)

        async def one(index: int) -> None:
            async with limiter:
                await self._prefetch_one(ident, index, False)

        async with trio.open_nursery() as n:
            for index in range(ident.chunks):
                if not self._cached(chunk_key(ident.base, index)):
                    n.start_soon(one, index)

    # ------------------------------------------------------------------------------------------
    # whole objects in one file, for the kernel to read directly
    # ------------------------------------------------------------------------------------------
    def _maybe_merge(self, ident: Ident, tier: TierStore) -> None:
        if self._nursery is not None and self._whole.claim(ident, tier):
            self._spawn(self._whole.merge, ident, tier)

    def open_whole(self, obj: ObjectRef) -> WholeFile | None:
        """The merged file of `obj`, opened for the kernel to read directly (`WholeObjects.open`).
        None: read through `read` instead."""
        if not self._whole.passthrough or not self._ready.is_set():
            return None
        opened = self._whole.open(self._ident(obj))
        if opened is not None:
            self._stats.hits += 1
        return opened

    # ------------------------------------------------------------------------------------------
    # what the vfs asks besides reads
    # ------------------------------------------------------------------------------------------
    def forget(self, obj: ObjectRef) -> None:
        """An object's version changed: drop the chunks cached for the old version."""
        self._idents.pop(obj, None)
        base = object_base(obj, self.chunk_size)
        if not base.startswith("o:"):
            return  # chunks keyed by content stay valid for any key that holds that content
        keys = [chunk_key(base, i) for i in range(chunk_count(obj.size, self.chunk_size))]
        keys.append(whole_key(base))
        self.memory.forget(keys)
        stores = self._search if base not in self.pins.needed_bases() else self._search[1:]
        for store in stores:
            if self._nursery is not None and any(k in store.entries for k in keys):
                self._spawn(store.remove, keys)

    def describe(self, obj: ObjectRef) -> tuple[str, int]:
        """(tier that holds or would take the object, bytes of it cached now)."""
        ident = self._ident(obj)
        target = self._target(ident)
        cached = 0
        for index in range(ident.chunks):
            if self._find(chunk_key(ident.base, index)) is not None:
                cached += chunk_length(ident.obj.size, self.chunk_size, index)
        return (target.name if target else "none"), cached

    async def adopt_file(self, obj: ObjectRef, path: Path) -> int:
        """Take a local file holding exactly the bytes of `obj` (e.g. just uploaded) into the cache.

        The file is consumed: renamed into the tier when the object is a single chunk (and the
        tier is on the same filesystem), else copied chunk by chunk and removed. Chunks go where
        a read would put them (the pinned store when a pin covers the object); caps hold, so a
        chunk that cannot fit is skipped. Returns the bytes now cached."""
        await self._ready.wait()
        ident = self._ident(obj)
        target = self._target(ident)
        adopted = 0
        try:
            if target is None or obj.size == 0:
                return 0
            if ident.chunks == 1:
                if await target.admit(chunk_key(ident.base, 0), FileSource(path), obj.size):
                    adopted = obj.size
            else:
                for index in range(ident.chunks):
                    start = index * self.chunk_size
                    length = chunk_length(obj.size, self.chunk_size, index)
                    data = await trio.to_thread.run_sync(_pread_file, path, start, length)
                    if len(data) == length and await target.admit(chunk_key(ident.base, index), data, length):
                        adopted += length
            if adopted and target is self.pinned:
                self._note_pinned(obj, ident.base)
            return adopted
        finally:
            path.unlink(missing_ok=True)  # left only when it was copied, not renamed

    # ------------------------------------------------------------------------------------------
    # pins
    # ------------------------------------------------------------------------------------------
    def _note_pinned(self, obj: ObjectRef, base: str) -> None:
        keys = self._pinning.note(obj, base)
        if keys and self._nursery is not None:
            self._spawn(self.pinned.remove, keys)

    async def pin(self, path: str, targets: list[tuple[str, str]],
                  objects: list[ObjectRef]) -> AsyncIterator[dict[str, Any]]:
        """Pin a mount path: record it, then bring every object under it into the pinned store
        (moved from a tier when cached, else fetched). Yields progress; the last item is the result."""
        await self._ready.wait()
        self.pins.add(path, targets)
        self._idents.clear()
        total = sum(o.size for o in objects)
        done_bytes, failed, last_report = 0, [], 0.0
        for number, obj in enumerate(objects, 1):
            ident = self._ident(obj)
            ok = await self._pinning.pin_object(ident)
            if ok:
                self._note_pinned(obj, ident.base)
                done_bytes += obj.size
            else:
                failed.append(obj.key)
            now = time.monotonic()
            if now - last_report > 0.2 or number == len(objects):
                last_report = now
                yield {"files": number, "of": len(objects), "bytes": done_bytes, "total": total}
        yield {"path": path, "files": len(objects) - len(failed), "bytes": done_bytes, "failed": failed[:20]}

    async def unpin(self, path: str) -> dict[str, Any]:
        await self._ready.wait()
        if not self.pins.remove(path):
            return {"path": path, "pinned": False, "dropped_chunks": 0}
        self._idents.clear()
        needed = self.pins.needed_bases()
        keys = [k for k in self.pinned.entries if base_of(k) not in needed]
        await self.pinned.remove(keys)
        return {"path": path, "pinned": True, "dropped_chunks": len(keys)}

    # ------------------------------------------------------------------------------------------
    # operations
    # ------------------------------------------------------------------------------------------
    async def prune(self) -> dict[str, int]:
        """Remove expired entries from every tier now."""
        out = {}
        for name, store in self.tiers.items():
            out[name] = await store.expire()
        return out

    async def clear(self, tier: str | None = None) -> dict[str, int]:
        if tier is not None and tier not in self.tiers:
            raise MountdError(f"no cache tier named {tier!r} (tiers: {', '.join(self.tiers)})")
        out = {}
        for name, store in self.tiers.items():
            if tier is None or name == tier:
                out[name] = await store.clear()
        self.memory.clear_recent()
        return out

    def statistics(self) -> dict[str, Any]:
        """Counters of the read path (GETs, hits, prefetches)."""
        s, f = self._stats, self._fetches
        return {"gets": f.gets, "bytes_fetched": f.bytes_fetched, "errors": f.errors, "hits": s.hits,
                "memory_hits": s.memory_hits, "misses": f.misses, "prefetched": s.prefetched,
                "prefetch_errors": s.prefetch_errors, "read_whole": s.read_whole,
                "merged": self._whole.merged,
                "passthrough_opens": self._whole.passthrough_opens, "inflight": len(f),
                "writing": self.memory.writes, "ready": self._ready.is_set()}

    def cache_statistics(self) -> dict[str, Any]:
        """Per tier: entries, bytes, cap, hits, misses, evictions, expirations; the pinned store; pins."""
        return {"chunk_size": self.chunk_size,
                "tiers": {name: store.statistics() for name, store in self.tiers.items()},
                "pinned": self.pinned.statistics(), "pins": self.pins.describe()}


def _pread_file(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
