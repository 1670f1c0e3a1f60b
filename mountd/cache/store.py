"""`TierStore`: one cache tier, a diskcache directory of chunk files under a hard size cap.

It owns the tier's directory and an in-memory index of its entries (LRU order, admission order,
lengths, checksums, expiry, open file descriptors), loaded from the diskcache database at start.
The index and the byte accounting change only on the trio thread; SQLite and file work runs in
worker threads that get what they need as arguments and never touch the index.

The cap: ``committed + pending + overhead <= max_size`` at every moment, where `committed` is the
block-rounded size of the indexed chunk files, `pending` the reservations of chunk files being
written plus the files of entries being removed (counted until they are really gone), and
`overhead` the measured size of the SQLite files and of the directory itself (the WAL counted
at no less than the size it reaches before a checkpoint). Admission makes
room first (expired entries, then the least recently used) and writes only after the victims'
files are deleted; when in-flight writes and removals hold the room it waits for them. diskcache
never culls on its own here (eviction_policy "none"); the only slack is the growth of the
SQLite files between two measurements, far less than one chunk.

Integrity: each entry carries its length and a CRC32 per block of `CRC_BLOCK` bytes (in the
diskcache tag). The first read of a block checks it — the read covers the whole block, which the
kernel's 1 MiB requests usually are anyway — and the check is done again after the file's size
or mtime changed. A chunk this process has just written is trusted as long as its file keeps
the size and mtime it was written with (its checksums were computed from those very bytes). A file that does not match is taken out of the index and reported as a miss,
never returned. Opening a chunk file, checking a 1 MiB block (about 0.2 ms) and `pread` are
quick local work done on the trio thread; measured, threads made cache hits 2-4 times slower.

Expiry: an entry expires `expires` seconds after it was admitted (the clock is injectable);
an expired entry is never served, is the first to go when room is needed, and is swept by
`expire`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
import google_crc32c
import trio
from diskcache.core import MODE_BINARY, UNKNOWN

log = logging.getLogger(__name__)

NEVER = math.inf
DB_FILES = ("cache.db", "cache.db-shm")
WAL_FILE = "cache.db-wal"
TMP_SUFFIX = ".tmp"
WAL_PAGES = 64
# the WAL grows to about WAL_PAGES pages before a checkpoint lets it be reused; that growth is
# counted in advance, so it never pushes the tier over its cap between two measurements
WAL_RESERVE = (WAL_PAGES + 32) * 4096
MAX_OPEN_FDS = 256
READ_AHEAD_EVERY = 1.0  # seconds between two read-ahead requests for one region of a file
READ_AHEAD_SPAN = 8 << 20  # a read-ahead request covers the reader's region of this size and the next
CRC_BLOCK = 1 << 20
CASTAGNOLI_MARK = "crc32c:"  # not hex: a zlib CRC32 tag can start with any hex digit
# eviction is ours; every value is a file; the WAL is checkpointed often and truncated after,
# so the SQLite files stay small next to a cap
DISKCACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "size_limit": 2**62,
    "disk_min_file_size": 0,
    "statistics": 0,
    "tag_index": 0,
    "sqlite_wal_autocheckpoint": WAL_PAGES,
    "sqlite_journal_size_limit": WAL_PAGES * 4096,
}


@dataclass(frozen=True, slots=True)
class FileSource:
    """A local file to be moved into a tier (renamed when on the same filesystem, else copied)."""

    path: Path


@dataclass(frozen=True, slots=True)
class Part:
    """One chunk file to be merged, and what it was checked or written with."""

    path: Path
    length: int
    crcs: tuple[int, ...]
    castagnoli: bool
    trusted: tuple[int, int] | None  # (size, mtime_ns) of the file when every block had been checked


@dataclass(frozen=True, slots=True)
class Assembly:
    """Chunk files of one object to be merged into one file, in order."""

    parts: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class _Payload:
    """What a worker thread hands to `ChunkDisk.store`: a written file and the name to give it."""

    name: str
    source: Path


class ChunkDisk(diskcache.Disk):  # type: ignore[misc]
    """Chunk files lie flat in the tier directory (diskcache's two levels of subdirectories would
    cost blocks that count against a small cap); a value is a file written beforehand, moved in
    under the name the caller chose, so the index knows the file without asking SQLite again."""

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple[str, str]:
        name = value.name if isinstance(value, _Payload) else secrets.token_hex(16) + ".val"
        return name, os.path.join(self._directory, name)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if not isinstance(value, _Payload):
            return super().store(value, read, key)  # type: ignore[no-any-return]
        filename, full_path = self.filename(key, value)
        try:
            os.rename(value.source, full_path)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(value.source, full_path)
            os.unlink(value.source)
        return os.path.getsize(full_path), MODE_BINARY, filename, None

    def remove(self, file_path: str) -> None:
        try:
            os.unlink(os.path.join(self._directory, file_path))
        except FileNotFoundError:
            pass


@dataclass(slots=True, eq=False)
class Entry:
    key: str
    filename: str
    length: int
    alloc: int  # bytes the file occupies on disk (rounded up to blocks)
    crcs: tuple[int, ...]  # checksum of each CRC_BLOCK bytes
    expires_at: float
    castagnoli: bool = True  # CRC32C (hardware, 28 GB/s); False: zlib's CRC32 (6 GB/s) of older caches
    fd: int | None = None
    signature: tuple[int, int] | None = None  # (size, mtime_ns) the verified blocks were read with
    verified: int = 0  # bit i: block i was checked
    read_ahead_at: float = -math.inf  # monotonic time the kernel was last asked to read ahead
    read_ahead_region: int = -1  # ... the region of READ_AHEAD_SPAN bytes it was asked for
    holds: int = 0  # open for the kernel to read directly (FUSE passthrough): not evicted meanwhile

    @property
    def fully_checked(self) -> bool:
        """Every block has been checked (or written by this process) since `signature` was taken."""
        return self.signature is not None and self.verified == (1 << len(self.crcs)) - 1


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


@dataclass(slots=True)
class _Loaded:
    entries: list[tuple[Entry, float]] = field(default_factory=list)  # with last access time
    dropped: int = 0
    orphans: int = 0
    overhead: int = 0


def block_crc(block: bytes, castagnoli: bool = True) -> int:
    """The checksum of one block. A cache hit checks each 1 MiB block it serves the first time,
    on the trio thread: CRC32C takes 0.04 ms there, zlib's CRC32 0.17 ms (a third of the time a
    1 MiB hit took). google_crc32c takes bytes only (no memoryview)."""
    if not castagnoli:
        return zlib.crc32(block)
    return google_crc32c.value(block if type(block) is bytes else bytes(block))


def block_crcs(data: bytes, castagnoli: bool = True) -> tuple[int, ...]:
    if len(data) <= CRC_BLOCK:
        return (block_crc(data, castagnoli),)
    return tuple(block_crc(data[i:i + CRC_BLOCK], castagnoli) for i in range(0, len(data), CRC_BLOCK))


def _encode_tag(crcs: tuple[int, ...], expires_at: float) -> str:
    return f"{expires_at!r} {CASTAGNOLI_MARK}{''.join(f'{c:08x}' for c in crcs)}"


def _decode_tag(tag: object) -> tuple[tuple[int, ...], float, bool] | None:
    """(checksums, expiry, castagnoli); tags without the mark hold zlib CRC32s (older caches)."""
    try:
        expires, crcs = str(tag).split()
        castagnoli = crcs.startswith(CASTAGNOLI_MARK)
        crcs = crcs.removeprefix(CASTAGNOLI_MARK)
        return tuple(int(crcs[i:i + 8], 16) for i in range(0, len(crcs), 8)), float(expires), castagnoli
    except (ValueError, TypeError):
        return None


def _file_crcs(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    with open(path, "rb") as f:
        while True:
            block = f.read(CRC_BLOCK)
            if not block and out:
                break
            out.append(block_crc(block))
            if len(block) < CRC_BLOCK:
                break
    return tuple(out)


# bytes per write(2) of a chunk file. One write(2) of a whole 8 MiB chunk made the kernel's copy
# into the page cache (`copy_folio_from_iter_atomic`) cost about twice as much in some states of
# the benchmark machine (the daemon's CPU per GiB of cold read rose from 1.2 s to 1.97-2.02 s,
# half of it in that copy, with 3 rounds of the benchmark's read suite); written 1 MiB at a time
# the same sequence stayed at 1.07-1.10 s (cold read 843-926 MB/s against 598-813). An A/B of the
# two on mountd alone was not conclusive (575-801 against 631-769 MB/s): that state is not there
# in every sequence. See docs/benchmarks.md.
WRITE_PIECE = 1 << 20


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]):]


def _merge_into(fd: int, assembly: Assembly) -> tuple[int, ...]:
    """Copy the parts one after the other into `fd`; returns the checksums of the merged file
    (worker thread). Parts whose every block was checked, in files unchanged since, are copied
    by the kernel (copy_file_range) and their CRC32Cs reused when they cover whole 1 MiB blocks;
    the others are read and checked here. A part that does not match raises EIO: the merge is
    dropped, and the part is found corrupt when it is next read."""
    parts = assembly.parts
    if all(p.trusted is not None and p.castagnoli and (p.length % CRC_BLOCK == 0 or p is parts[-1]) for p in parts):
        try:
            for p in parts:
                _copy_trusted(p, fd)
            return tuple(c for p in parts for c in p.crcs)
        except _Changed:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
    crcs: list[int] = []
    carry = b""
    for p in parts:
        data = _read_verified(str(p.path), p.length, p.crcs, p.castagnoli)
        if data is None:
            raise OSError(errno.EIO, f"chunk file {p.path.name} does not match its checksums")
        _write_all(fd, data)
        if carry:
            data = carry + data
        whole = len(data) - len(data) % CRC_BLOCK
        crcs.extend(block_crcs(data[:whole]) if whole else ())
        carry = data[whole:]
    if carry or not crcs:
        crcs.append(block_crc(carry))
    return tuple(crcs)


class _Changed(Exception):
    """A chunk file changed after it was checked: merge by reading and checking instead."""


def _copy_trusted(p: Part, fd: int) -> None:
    src = os.open(p.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if (st.st_size, st.st_mtime_ns) != p.trusted or st.st_size != p.length:
            raise _Changed
        left = p.length
        while left:
            try:
                n = os.copy_file_range(src, fd, left)
            except OSError as e:  # e.g. a file system without it: read and write instead
                raise _Changed from e
            if n == 0:
                raise _Changed
            left -= n
    finally:
        os.close(src)


def _read_part_verified(path: str, offset: int, length: int, total: int, crcs: tuple[int, ...],
                        castagnoli: bool) -> bytes | None:
    """Bytes [offset, offset+length) of a file of `total` bytes whose every 1 MiB block touched
    matches its checksum; None otherwise (worker thread)."""
    first, last = offset // CRC_BLOCK, (offset + max(length, 1) - 1) // CRC_BLOCK
    start, stop = first * CRC_BLOCK, min((last + 1) * CRC_BLOCK, total)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != total:
                return None
            span = os.pread(fd, stop - start, start)
        finally:
            os.close(fd)
    except OSError:
        return None
    if len(span) != stop - start or last >= len(crcs):
        return None
    for b in range(first, last + 1):
        if block_crc(span[(b - first) * CRC_BLOCK:(b - first + 1) * CRC_BLOCK], castagnoli) != crcs[b]:
            return None
    return span[offset - start:offset - start + length]


def _read_verified(path: str, length: int, crcs: tuple[int, ...], castagnoli: bool) -> bytes | None:
    """The whole content of a chunk file when it matches its length and checksums (worker thread)."""
    try:
        with open(path, "rb") as f:
            data = f.read(length + 1)
    except OSError:
        return None
    return data if len(data) == length and block_crcs(data, castagnoli) == crcs else None


class TierStore:
    def __init__(self, name: str, directory: Path, *, max_size: int | None, expires: float | None,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.directory = directory
        self.max_size = max_size  # None: no cap (the pinned store)
        self.expires = expires if expires else None
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open_db()
        except sqlite3.DatabaseError as e:
            self._db = self._start_over(e)
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
        self._db_lock = threading.Lock()  # one SQLite writer per tier (worker threads)
        self.stats = TierStats()

    # ------------------------------------------------------------------------------------------
    # loading (start-up)
    # ------------------------------------------------------------------------------------------
    def _open_db(self) -> diskcache.Cache:
        return diskcache.Cache(str(self.directory), disk=ChunkDisk, timeout=60, **DISKCACHE_SETTINGS)

    def _start_over(self, error: Exception) -> diskcache.Cache:
        """A tier whose database is unreadable is emptied: it is a cache, the remote has the data."""
        log.warning("cache tier %r: its database in %s is unreadable (%s); starting the tier empty",
                    self.name, self.directory, error)
        shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        return self._open_db()

    def load(self) -> _Loaded:
        """`load_rows`, or an empty tier when its database turns out to be damaged (worker thread)."""
        try:
            return self.load_rows()
        except sqlite3.DatabaseError as e:
            self._db.close()
            self._db = self._start_over(e)
            return self.load_rows()

    def load_rows(self) -> _Loaded:
        """Read the index from the diskcache database and clean up after a crash (worker thread).

        diskcache has no bulk call that returns size, tag and file name, so this reads its
        `Cache` table directly (its schema has been stable since diskcache 3). Rows whose file is
        missing or has another size are deleted; files no row names (a crash between writing a
        file and committing its row) are removed."""
        out = _Loaded()
        rows = self._db._sql("SELECT key, raw, size, tag, filename, access_time FROM Cache").fetchall()
        names: set[str] = set()
        bad: list[Any] = []
        for key, raw, size, tag, filename, access in rows:
            meta = _decode_tag(tag)
            if not raw or not isinstance(key, str) or meta is None or not filename:
                bad.append(key)
                continue
            try:
                st = os.stat(self.directory / filename)
            except OSError:
                st = None
            if st is None or st.st_size != size:
                bad.append(key)
                continue
            names.add(filename)
            crcs, expires_at, castagnoli = meta
            if len(crcs) != max(1, -(-size // CRC_BLOCK)):
                bad.append(key)
                continue
            entry = Entry(key=key, filename=filename, length=size, alloc=self._alloc(size), crcs=crcs,
                          expires_at=expires_at, castagnoli=castagnoli)
            out.entries.append((entry, float(access or 0)))
        for key in bad:
            self._db.delete(key, retry=True)
        out.dropped = len(bad)
        with os.scandir(self.directory) as it:
            for f in it:
                if f.name.endswith(TMP_SUFFIX) or f.name.endswith(".val") and f.name not in names:
                    os.unlink(f.path)
                    out.orphans += 1
        out.overhead = self._measure()
        return out

    def apply_loaded(self, loaded: _Loaded) -> None:
        """Install what `load_rows` read (trio thread)."""
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
        data = await trio.to_thread.run_sync(_read_part_verified, str(self.directory / e.filename), offset, length,
                                           e.length, e.crcs, e.castagnoli)
        if data is None and self.entries.get(e.key) is e:
            self._corrupt(e, "does not match its checksum")
            await self._delete([e])
        return data

    async def read_whole(self, e: Entry) -> bytes | None:
        """The verified content of an entry (worker thread); None (and removed) when corrupt."""
        data = await trio.to_thread.run_sync(_read_verified, str(self.directory / e.filename), e.length, e.crcs,
                                           e.castagnoli)
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
                crcs, overhead, written = await trio.to_thread.run_sync(self._write, key, payload, name, expires_at)
            except OSError as e:
                log.warning("cache tier %r: cannot store a chunk: %s", self.name, e)
                self.stats.rejected += 1
                return False
            self.overhead = overhead
            entry = Entry(key=key, filename=name, length=length, alloc=alloc, crcs=crcs, expires_at=expires_at)
            if written is not None:  # its checksums were taken of the bytes written: no need to read them back
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

    def _write(self, key: str, payload: bytes | FileSource | Assembly, name: str,
               expires_at: float) -> tuple[tuple[int, ...], int, tuple[int, int] | None]:
        """Worker thread: checksum and write one chunk file, then (one writer at a time, so SQLite
        checkpoints keep its WAL small) move it in with its row; returns (checksums, overhead, and
        the (size, mtime_ns) of the file as written when its checksums are of those very bytes)."""
        if isinstance(payload, FileSource):
            source = payload.path
            crcs = _file_crcs(source)
        else:
            source = self.directory / (name + TMP_SUFFIX)
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if isinstance(payload, Assembly):
                    crcs = _merge_into(fd, payload)
                else:
                    crcs = block_crcs(payload)
                    _write_all(fd, payload)
            except BaseException:
                os.unlink(source)
                raise
            finally:
                os.close(fd)
        written = None
        if not isinstance(payload, FileSource):
            st = os.stat(source)
            written = (st.st_size, st.st_mtime_ns)
        try:
            with self._db_lock:
                self._db.set(key, _Payload(name=name, source=source), tag=_encode_tag(crcs, expires_at), retry=True)
                return crcs, self._measure(), written
        finally:
            if not isinstance(payload, FileSource):
                source.unlink(missing_ok=True)

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
            self.overhead = await trio.to_thread.run_sync(self._delete_rows, [e.key for e in entries])
        finally:
            self.pending -= sum(e.alloc for e in entries)
            self._signal()

    def _delete_rows(self, keys: list[str]) -> int:
        with self._db_lock:
            for key in keys:
                self._db.delete(key, retry=True)
            return self._measure()

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
            await trio.to_thread.run_sync(self._write_access_times, batch)

    def _write_access_times(self, batch: dict[str, float]) -> None:
        with self._db_lock, self._db.transact(retry=True):
            for key, when in batch.items():
                self._db._sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (when, key))

    def close(self) -> None:
        for e in list(self._open_fds.values()):
            self._close_fd(e)
        if self._dirty_access:
            self._write_access_times(self._dirty_access)
            self._dirty_access = {}
        self._db.close()

    @property
    def on_disk(self) -> int:
        return self.committed + self.pending + self.overhead

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        return {"entries": len(self.entries), "bytes": sum(e.length for e in self.entries.values()),
                "on_disk": self.on_disk, "cap": self.max_size, "expires": self.expires, "hits": s.hits,
                "misses": s.misses, "writes": s.writes, "evictions": s.evictions, "expirations": s.expirations,
                "rejected": s.rejected, "corrupt": s.corrupt, "open_files": len(self._open_fds)}

    # ------------------------------------------------------------------------------------------
    def _alloc(self, length: int) -> int:
        return -(-length // self.block) * self.block

    def _measure(self) -> int:
        """Bytes of the tier directory that are not chunk files (SQLite files, the directory)."""
        total = 0
        for name in (*DB_FILES, WAL_FILE, "."):
            try:
                st = os.stat(self.directory / name)
                size = max(st.st_size, st.st_blocks * 512)
            except FileNotFoundError:
                size = 0
            total += max(size, WAL_RESERVE) if name == WAL_FILE else size
        return total

    def _close_fd(self, e: Entry) -> None:
        if e.fd is not None:
            os.close(e.fd)
            e.fd = None
            e.signature, e.verified = None, 0
        self._open_fds.pop(e.key, None)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
