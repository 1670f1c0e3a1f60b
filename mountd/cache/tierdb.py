"""`TierDb`: the diskcache database of one tier, and the writes and deletions of its chunk files.

`TierStore` keeps the tier's index in memory and changes it only on the trio thread; everything
that touches SQLite or writes a chunk file is here and runs in worker threads, on arguments, one
writer at a time (so SQLite checkpoints keep its WAL small). diskcache never culls on its own
here (eviction_policy "none"): `TierStore` decides what goes, and this only carries it out and
reports the measured size of the SQLite files, which counts against the tier's cap.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from mountd.cache.chunkfile import (
    CRC_BLOCK,
    Assembly,
    Entry,
    FileSource,
    block_crcs,
    decode_tag,
    encode_tag,
    file_crcs,
    merge_into,
    write_all,
)

log = logging.getLogger(__name__)

DB_FILES = ("cache.db", "cache.db-shm")
WAL_FILE = "cache.db-wal"
TMP_SUFFIX = ".tmp"
WAL_PAGES = 64
# the WAL grows to about WAL_PAGES pages before a checkpoint lets it be reused; that growth is
# counted in advance, so it never pushes the tier over its cap between two measurements
WAL_RESERVE = (WAL_PAGES + 32) * 4096
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


@dataclass(slots=True)
class Loaded:
    entries: list[tuple[Entry, float]] = field(default_factory=list)  # with last access time
    dropped: int = 0
    orphans: int = 0
    overhead: int = 0


class TierDb:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            self._db = self._start_over(e)
        self._lock = threading.Lock()  # one SQLite writer per tier (worker threads)

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(str(self.directory), disk=ChunkDisk, timeout=60, **DISKCACHE_SETTINGS)

    def _start_over(self, error: Exception) -> diskcache.Cache:
        """A tier whose database is unreadable is emptied: it is a cache, the remote has the data."""
        log.warning("cache tier %r: its database in %s is unreadable (%s); starting the tier empty",
                    self.name, self.directory, error)
        shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        return self._open()

    def load(self, alloc: Callable[[int], int]) -> Loaded:
        """`load_rows`, or an empty tier when its database turns out to be damaged."""
        try:
            return self.load_rows(alloc)
        except sqlite3.DatabaseError as e:
            self._db.close()
            self._db = self._start_over(e)
            return self.load_rows(alloc)

    def load_rows(self, alloc: Callable[[int], int]) -> Loaded:
        """Read the index from the diskcache database and clean up after a crash.

        diskcache has no bulk call that returns size, tag and file name, so this reads its
        `Cache` table directly (its schema has been stable since diskcache 3). Rows whose file is
        missing or has another size are deleted; files no row names (a crash between writing a
        file and committing its row) are removed."""
        out = Loaded()
        rows = self._db._sql("SELECT key, raw, size, tag, filename, access_time FROM Cache").fetchall()
        names: set[str] = set()
        bad: list[Any] = []
        for key, raw, size, tag, filename, access in rows:
            meta = decode_tag(tag)
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
            entry = Entry(key=key, filename=filename, length=size, alloc=alloc(size), crcs=crcs,
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
        out.overhead = self.measure()
        return out

    def write(self, key: str, payload: bytes | FileSource | Assembly, name: str,
              expires_at: float) -> tuple[tuple[int, ...], int, tuple[int, int] | None]:
        """Checksum and write one chunk file, then move it in with its row; returns (checksums,
        overhead, and the (size, mtime_ns) of the file as written when its checksums are of those
        very bytes)."""
        if isinstance(payload, FileSource):
            source = payload.path
            crcs = file_crcs(source)
        else:
            source = self.directory / (name + TMP_SUFFIX)
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if isinstance(payload, Assembly):
                    crcs = merge_into(fd, payload)
                else:
                    crcs = block_crcs(payload)
                    write_all(fd, payload)
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
            with self._lock:
                self._db.set(key, _Payload(name=name, source=source), tag=encode_tag(crcs, expires_at),
                             retry=True)
                return crcs, self.measure(), written
        finally:
            if not isinstance(payload, FileSource):
                source.unlink(missing_ok=True)

    def delete(self, keys: list[str]) -> int:
        """Remove these rows and their files; returns the overhead measured after."""
        with self._lock:
            for key in keys:
                self._db.delete(key, retry=True)
            return self.measure()

    def write_access_times(self, batch: dict[str, float]) -> None:
        """Record the LRU order, so that it survives a restart."""
        with self._lock, self._db.transact(retry=True):
            for key, when in batch.items():
                self._db._sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (when, key))

    def measure(self) -> int:
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

    def close(self) -> None:
        self._db.close()
