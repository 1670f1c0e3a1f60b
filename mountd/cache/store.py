"""`TierStore`: one cache tier, a directory of chunk files under a hard size cap.

It owns the tier's in-memory index of its entries (LRU order, admission order, lengths,
checksums, expiry, open file descriptors), loaded from the tier's database at start, and its byte
accounting. The index and the accounting change only on the trio thread; SQLite and file work runs
in worker threads (`TierDb`, `tierdb.py`) that get what they need as arguments and never touch
the index. How a chunk file is checked is in `chunkfile.py`.

The cap: ``committed + pending + overhead <= max_size`` at every moment, where `committed` is the
block-rounded size of the indexed chunk files, `pending` the reservations of chunk files being
written plus the files of entries being removed (counted until they are really gone), and
`overhead` the measured size of the SQLite files and of the directory itself (the WAL counted
at no less than the size it reaches before a checkpoint). Admission makes
room first (expired entries, then the least recently used) and writes only after the victims'
files are deleted; when in-flight writes and removals hold the room it waits for them. diskcache
never culls on its own here (eviction_policy "none"); the only slack is the growth of the
SQLite files between two measurements, far less than one chunk.

Reads: opening a chunk file, checking a 1 MiB block (about 0.2 ms) and `pread` are quick local
work done on the trio thread; measured, threads made cache hits 2-4 times slower. A file that
does not match its checksums is taken out of the index and reported as a miss, never returned.

Expiry: an entry expires `expires` seconds after it was admitted (the clock is injectable);
an expired entry is never served, is the first to go when room is needed, and is swept by
`expire`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from mountd.cache.chunkfile import (
    CRC_BLOCK,
    Assembly,
    Entry,
    FileSource,
    block_crc,
    read_part_verified,
    read_verified,
)
from mountd.cache.tierdb import Loaded, TierDb

log = logging.getLogger(__name__)

NEVER = math.inf
MAX_OPEN_FDS = 256
READ_AHEAD_EVERY = 1.0  # seconds between two read-ahead requests for one region of a file
READ_AHEAD_SPAN = 8 << 20  # a read-ahead request covers the reader's region of this size and the next


@dataclass(slots=True)
class TierStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    evictions: int = 0
    expirations: int = 0
    rejected: int = 0
    corrupt: int = 0
    removed: int = 0



class TierStore:
    def __init__(self, name: str, directory: Path, *, max_size: int | None, expires: float | None,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.directory = directory
        self.max_size = max_size  # None: no cap (the pinned store)
        self.expires = expires if expires else None
        self._clock = clock
        self._db = TierDb(name, directory)
        self.block = os.statvfs(directory).f_frsize or 4096
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._by_expiry: dict[str, Entry] = {}  # admission order: soonest to expire first
        self.committed = 0
        self.pending = 0
        self.overhead = 0
        self._writing: set[str] = set()
        self._changed = trio.Event()
        self._open_fds: OrderedDict[str, Entry] = OrderedDict()
        self._dirty_access: dict[str, float] = {}
        self.stats = TierStats()

    # ------------------------------------------------------------------------------------------
    # loading (start-up)
    # ------------------------------------------------------------------------------------------
    def load(self) -> Loaded:
        """The index as the tier's database holds it, cleaned up after a crash (worker thread)."""
        return self._db.load(self._alloc)

    def apply_loaded(self, loaded: Loaded) -> None:
        """Install what `load` read (trio thread)."""
        for entry, _ in sorted(loaded.entries, key=lambda t: t[1]):
            self.entries[entry.key] = entry
            self.committed += entry.alloc
        for entry, _ in sorted(loaded.entries, key=lambda t: t[0].expires_at):
            self._by_expiry[entry.key] = entry
        self.overhead = loaded.overhead
        if loaded.dropped or loaded.orphans:
            log.info("cache tier %r: dropped %d broken entries and %d leftover files from an earlier run",
                     self.name, loaded.dropped, loaded.orphans)

    # ------------------------------------------------------------------------------------------
    # lookups and reads (trio thread, quick)
    # ------------------------------------------------------------------------------------------
    def get(self, key: str, now: float) -> Entry | None:
        """The entry of `key` unless it has expired (expired entries stay until swept or evicted)."""
        e = self.entries.get(key)
        if e is None or e.expires_at <= now:
            return None
        return e

    def touch(self, e: Entry, now: float) -> None:
        if self.entries.get(e.key) is e:
            self.entries.move_to_end(e.key)
            self._dirty_access[e.key] = now

    def read(self, e: Entry, size: int, offset: int) -> bytes | None:
        """Bytes of an entry (trio thread: quick local I/O); blocks not checked yet are checked now.
        None: the file is missing, truncated or corrupt; the entry is out of the index and its file
        must be removed with `purge`."""
        try:
            fd = self._open(e)
            self._read_ahead(e, fd, offset)
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != e.signature:
                e.signature, e.verified = (st.st_size, st.st_mtime_ns), 0
            self._open_fds.move_to_end(e.key)
            size = min(size, e.length - offset)
            if size <= 0:
                return b""
            first, last = offset // CRC_BLOCK, (offset + size - 1) // CRC_BLOCK
            todo = [b for b in range(first, last + 1) if not e.verified >> b & 1]
            if st.st_size != e.length:
                return self._corrupt_miss(e, "has the wrong size")
            if not todo:
                return os.pread(fd, size, offset)
            start = first * CRC_BLOCK
            span = os.pread(fd, min((last + 1) * CRC_BLOCK, e.length) - start, start)
            for b in todo:
                block = span if first == last else span[(b - first) * CRC_BLOCK:(b - first + 1) * CRC_BLOCK]
                if block_crc(block, e.castagnoli) != e.crcs[b]:
                    return self._corrupt_miss(e, "does not match its checksum")
                e.verified |= 1 << b
            return span[offset - start:offset - start + size]
        except OSError as err:
            return self._corrupt_miss(e, f"cannot be read ({err.strerror})")

    def _open(self, e: Entry) -> int:
        if e.fd is None:
            e.fd = os.open(self.directory / e.filename, os.O_RDONLY | os.O_CLOEXEC)
            self._open_fds[e.key] = e
            while len(self._open_fds) > MAX_OPEN_FDS:
                self._close_fd(self._open_fds.popitem(last=False)[1])
        return e.fd

    @staticmethod
    def _read_ahead(e: Entry, fd: int, offset: int) -> None:
        """Ask the kernel to read the region of the file around `offset` and the next one into the
        page cache in the background (POSIX_FADV_WILLNEED), at most once per READ_AHEAD_EVERY
        seconds per region: the rest of a chunk is likely read next, and one 8 MiB read of the
        disk beats many small ones (pages already cached make it a quick no-op)."""
        region = offset // READ_AHEAD_SPAN
        now = time.monotonic()
        if region != e.read_ahead_region or now - e.read_ahead_at >= READ_AHEAD_EVERY:
            e.read_ahead_region, e.read_ahead_at = region, now
            os.posix_fadvise(fd, region * READ_AHEAD_SPAN, 2 * READ_AHEAD_SPAN, os.POSIX_FADV_WILLNEED)

    def prepare(self, e: Entry, offset: int = 0) -> None:
        """A sequential reader is coming to `offset` of this entry: have the kernel read it ahead."""
        try:
            self._read_ahead(e, self._open(e), offset)
        except OSError:
            pass  # read() finds out and reports it

    def open_trusted(self, e: Entry) -> int | None:
        """A new read-only descriptor of an entry whose every block has been checked (or was
        written by this process) and whose file is unchanged since; None otherwise. The kernel
        reads through it without the checksums, so nothing less than a fully checked file goes."""
        if not e.fully_checked:
            return None
        try:
            fd = os.open(self.directory / e.filename, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != e.signature or st.st_size != e.length:
            os.close(fd)
            return None
        return fd

    def hold(self, entries: Iterable[Entry]) -> None:
        """Keep these entries from eviction (their files are being read or merged)."""
        for e in entries:
            e.holds += 1

    def release(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            e.holds -= 1
        self._signal()  # an admission waiting for room may find it now

    def _corrupt_miss(self, e: Entry, why: str) -> bytes | None:
        """Drop a damaged chunk; the caller returns this None as a miss."""
        self._corrupt(e, why)
        return None

    def _corrupt(self, e: Entry, why: str) -> None:
        log.warning("cache tier %r: chunk file %s %s; it is fetched again", self.name, e.filename, why)
        self.stats.corrupt += 1
        self._take([e])
        return None

    async def purge(self, entries: list[Entry]) -> None:
        """Remove the files and rows of entries already taken out of the index."""
        await self._delete(entries)

    async def read_part(self, e: Entry, offset: int, length: int) -> bytes | None:
        """Verified bytes [offset, offset+length) of an entry, every block they touch checked
        (worker thread: a chunk of a merged file is MiBs, too much for `read` on the trio
        thread); None (and removed) when corrupt."""
        data = await trio.to_thread.run_sync(read_part_verified, str(self.directory / e.filename), offset,
                                             length, e.length, e.crcs, e.castagnoli)
        if data is None and self.entries.get(e.key) is e:
            self._corrupt(e, "does not match its checksum")
            await self._delete([e])
        return data

    async def read_whole(self, e: Entry) -> bytes | None:
        """The verified content of an entry (worker thread); None (and removed) when corrupt."""
        data = await trio.to_thread.run_sync(read_verified, str(self.directory / e.filename), e.length,
                                             e.crcs, e.castagnoli)
        if data is None and self.entries.get(e.key) is e:
            self._corrupt(e, "does not match its checksum")
            await self._delete([e])
        return data

    # ------------------------------------------------------------------------------------------
    # admission: room first, then the write
    # ------------------------------------------------------------------------------------------
    def fits(self, length: int) -> bool:
        return self.max_size is None or self._alloc(length) + self.overhead <= self.max_size

    async def admit(self, key: str, payload: bytes | FileSource | Assembly, length: int) -> bool:
        """Store one chunk (or merged object); False when it cannot fit (bigger than the cap) or the
        write failed."""
        if key in self.entries or key in self._writing:
            return True
        alloc = self._alloc(length)
        if not self.fits(length):
            self.stats.rejected += 1
            return False
        self._writing.add(key)
        reserved = False
        try:
            while self.max_size is not None:
                excess = self.committed + self.pending + self.overhead + alloc - self.max_size
                if excess <= 0:
                    break
                victims = self._victims(excess)
                if victims:
                    self._take(victims, evicted=True)
                    await self._delete(victims)
                elif self.pending > 0:
                    await self._changed.wait()  # in-flight writes and removals hold the room
                else:
                    self.stats.rejected += 1
                    return False
            self.pending += alloc
            reserved = True
            expires_at = self._clock() + self.expires if self.expires else NEVER
            name = secrets.token_hex(16) + ".val"
            try:
                crcs, overhead, written = await trio.to_thread.run_sync(self._db.write, key, payload, name,
                                                                        expires_at)
            except OSError as e:
                log.warning("cache tier %r: cannot store a chunk: %s", self.name, e)
                self.stats.rejected += 1
                return False
            self.overhead = overhead
            entry = Entry(key=key, filename=name, length=length, alloc=alloc, crcs=crcs,
                          expires_at=expires_at)
            if written is not None:  # its checksums were of the bytes written: no need to read them back
                entry.signature, entry.verified = written, (1 << len(crcs)) - 1
            self.entries[key] = entry
            self._by_expiry[key] = entry
            self.committed += alloc
            self._dirty_access[key] = self._clock()
            self.stats.writes += 1
            return True
        finally:
            self._writing.discard(key)
            if reserved:
                self.pending -= alloc
                self._signal()
    def _victims(self, excess: int) -> list[Entry]:
        """Expired entries first, then the least recently used, until `excess` bytes are freed;
        never one that is held."""
        out: list[Entry] = []
        freed = 0
        now = self._clock()
        for e in self._by_expiry.values():
            if freed >= excess or e.expires_at > now:
                break
            if not e.holds:
                out.append(e)
                freed += e.alloc
        chosen = {id(e) for e in out}
        for e in self.entries.values():
            if freed >= excess:
                break
            if id(e) not in chosen and not e.holds:
                out.append(e)
                freed += e.alloc
        return out

    # ------------------------------------------------------------------------------------------
    # removal
    # ------------------------------------------------------------------------------------------
    def _take(self, entries: Iterable[Entry], *, evicted: bool = False, expired: bool = False) -> None:
        """Out of the index; their bytes stay counted (pending) until `_delete` has removed them."""
        now = self._clock()
        for e in entries:
            if self.entries.get(e.key) is not e:
                continue
            del self.entries[e.key]
            self._by_expiry.pop(e.key, None)
            self._dirty_access.pop(e.key, None)
            self._close_fd(e)
            self.committed -= e.alloc
            self.pending += e.alloc
            if expired or (evicted and e.expires_at <= now):
                self.stats.expirations += 1
            elif evicted:
                self.stats.evictions += 1
            else:
                self.stats.removed += 1

    async def _delete(self, entries: list[Entry]) -> None:
        if not entries:
            return
        try:
            self.overhead = await trio.to_thread.run_sync(self._db.delete, [e.key for e in entries])
        finally:
            self.pending -= sum(e.alloc for e in entries)
            self._signal()

    async def remove(self, keys: Iterable[str]) -> int:
        """Delete these entries now; returns how many there were."""
        entries = [e for k in keys if (e := self.entries.get(k)) is not None]
        self._take(entries)
        await self._delete(entries)
        return len(entries)

    async def expire(self) -> int:
        """Remove every expired entry now; returns how many."""
        now = self._clock()
        expired = [e for e in self._by_expiry.values() if e.expires_at <= now]
        self._take(expired, expired=True)
        await self._delete(expired)
        return len(expired)

    async def clear(self) -> int:
        return await self.remove(list(self.entries))

    # ------------------------------------------------------------------------------------------
    # persistence of the LRU order, statistics, shutdown
    # ------------------------------------------------------------------------------------------
    async def flush_access_times(self) -> None:
        if self._dirty_access:
            batch, self._dirty_access = self._dirty_access, {}
            await trio.to_thread.run_sync(self._db.write_access_times, batch)

    def close(self) -> None:
        for e in list(self._open_fds.values()):
            self._close_fd(e)
        if self._dirty_access:
            self._db.write_access_times(self._dirty_access)
            self._dirty_access = {}
        self._db.close()

    @property
    def on_disk(self) -> int:
        return self.committed + self.pending + self.overhead

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        return {"entries": len(self.entries), "bytes": sum(e.length for e in self.entries.values()),
                "on_disk": self.on_disk, "cap": self.max_size, "expires": self.expires, "hits": s.hits,
                "misses": s.misses, "writes": s.writes, "evictions": s.evictions,
                "expirations": s.expirations,
                "rejected": s.rejected, "corrupt": s.corrupt, "open_files": len(self._open_fds)}

    # ------------------------------------------------------------------------------------------
    def _alloc(self, length: int) -> int:
        return -(-length // self.block) * self.block

    def _close_fd(self, e: Entry) -> None:
        if e.fd is not None:
            os.close(e.fd)
            e.fd = None
            e.signature, e.verified = None, 0
        self._open_fds.pop(e.key, None)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
