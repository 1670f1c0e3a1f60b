"""`PartialFiles`: local copies of large remote files that hold only the chunks a program changed.

An edit in place of a large object (a header rewritten, a record patched, an index updated)
should not cost a download of the whole object before the first write, nor an upload of the
whole object after the close. So a remote file whose object is larger than one chunk (the
write-back part size) and whose store can build an object from ranges of another
(`ObjectStore.patches`: S3's UploadPartCopy, a file:// copy) gets, at its first write, a sparse
local file of its size instead of the whole object. Before a write reaches a chunk, that chunk is
fetched from the object's version (one ranged GET, pinned to the version) and made durable; the
bitmap of chunks on the local tier is in meta.db (`partial`), so a crash never mistakes a hole
for data. Reads of the other chunks go to the object's version through the cache, as they did
before the write. The upload sends the chunks on the local tier and copies the rest server-side
(`PatchBase`); afterwards the local copy goes, as an uploaded file's copy goes to the cache.

rclone's vfs cache keeps sparse files with the ranges it holds in the same way, but downloads
the missing ranges before every upload; mountpoint-s3 refuses writes to existing objects.

What such a file cannot do without its missing chunks (a truncate to a size other than 0, a
rename, a hard link, an upload to a store that cannot copy ranges, a conflict copy) first
`complete`s it: every missing chunk fetched. Its content hash is unknown until then (the
object it uploads carries none, and deduplication skips it), because hashing would need every
byte.

It owns the `partial` rows and the per-file fetch locks; it changes no inode but its
`has_local` and `sha256`, and it never decides when a file is uploaded.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial as bind

import trio

from mountd.backend import APPEND_MIN, ObjectStore, PatchBase
from mountd.cache.chunks import PINNED
from mountd.cache.reader import ObjectRef, RemoteReader
from mountd.errors import ObjectNotFound, PosixError, RemoteError, VersionMismatch
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore, PartialCopy
from mountd.vfs.namespace import object_ref
from mountd.vfs.remote_calls import RemoteCalls

log = logging.getLogger(__name__)


class BaseLost(RemoteError):
    """The version a partial file's missing chunks are is gone from the remote and the cache
    (another host or tool replaced the object): those chunks cannot be had any more."""

    errno = errno.EIO


class PartialFiles:
    def __init__(self, meta: MetaStore, local: LocalTier, stores: Mapping[str, ObjectStore],
                 remote: RemoteCalls, reader: RemoteReader, *, chunk: int) -> None:
        self.meta = meta
        self.local = local
        self.stores = stores
        self.remote = remote
        self.reader = reader
        self.chunk = max(chunk, APPEND_MIN)  # a chunk is a part of the upload
        self._rows: dict[int, PartialCopy] = {}
        for ino in meta.partial_inodes():  # (a few rows: files being edited when the daemon stopped)
            row = meta.partial_get(ino)
            if row is not None:
                self._rows[ino] = row
        self._locks: dict[int, trio.Lock] = {}
        self.stats = {"partial_started": 0, "chunks_fetched": 0, "partial_completed": 0, "bases_lost": 0}

    # ------------------------------------------------------------------------------------------
    def is_partial(self, ino: int) -> bool:
        return ino in self._rows

    def get(self, ino: int) -> PartialCopy | None:
        return self._rows.get(ino)

    def local_bytes(self, ino: int, size: int) -> int:
        """The bytes of a file of `size` that are on the local tier (what its upload sends, about;
        what counts against `local.max_dirty`): all of them unless it is partial."""
        row = self._rows.get(ino)
        if row is None:
            return size
        held = sum(min((i + 1) * row.chunk, row.base_size) - i * row.chunk
                   for i in range(row.base_chunks) if row.has(i))
        return held + max(0, size - row.base_size)

    def under(self, remote: str, prefix: str) -> list[int]:
        """The partial files whose object is below `prefix` of `remote`."""
        return [ino for ino, row in self._rows.items() if row.remote == remote and row.key.startswith(prefix)]

    def statistics(self) -> dict[str, int]:
        return {"partial_files": len(self._rows), **self.stats}

    def can_start(self, node: Inode) -> bool:
        """Whether a first write of `node` (its bytes only in its object) may start a partial copy."""
        store = self.stores.get(node.remote or "")
        if not (store is not None and store.patches and node.is_reg and node.nlink <= 1
                and node.size > self.chunk and bool(node.remote_key) and bool(node.remote_version)):
            return False
        # a pinned file stays whole in the pinned store: fetched whole from there, and its local
        # copy handed back whole after the upload (a partial copy would be dropped instead)
        return self.reader.describe(object_ref(node))[0] != PINNED

    def start(self, node: Inode) -> None:
        """A sparse local file of the object's size; no byte is fetched yet (`before_write` does,
        chunk by chunk). Quick: one create and one ftruncate."""
        assert node.remote is not None and node.remote_key is not None and node.remote_version
        row = PartialCopy(node.ino, node.remote, node.remote_key, node.remote_version, node.size, self.chunk,
                          bytearray((-(-node.size // self.chunk) + 7) // 8), node.sha256)
        fd = self.local.create_open(node.ino)
        try:
            os.ftruncate(fd, node.size)
        finally:
            os.close(fd)
        with self.meta.transaction():
            self.meta.partial_put(row)
            self.meta.update(node.ino, has_local=1, sha256=None)
        self._rows[node.ino] = row
        self.stats["partial_started"] += 1

    # ------------------------------------------------------------------------------------------
    async def before_write(self, ino: int, fd: int, offset: int, length: int) -> None:
        """Fetch each missing chunk whose old bytes a write of [offset, offset+length) reaches
        into, so the chunk is whole on the local tier before the write lands in it. A write past
        the old end fetches nothing: those bytes were never the object's."""
        row = self._rows.get(ino)
        if row is None or length <= 0 or offset >= row.base_size:
            return  # (an append: the bytes past the old end are the local file's alone)
        wanted = [i for i in range(offset // row.chunk, (offset + length - 1) // row.chunk + 1)
                  if not row.has(i) and offset < min((i + 1) * row.chunk, row.base_size)]
        if not wanted:
            return
        async with self._lock(ino):
            for i in wanted:
                row = self._rows.get(ino)
                if row is None:
                    return  # (completed or dropped meanwhile)
                if not row.has(i):
                    await self._fetch_chunk(row, fd, i)

    async def read(self, ino: int, fd: int, offset: int, size: int) -> bytes:
        """Bytes of a partial file: its chunks on the local tier from there, the others from the
        version they still are (through the cache, as any remote read)."""
        row = self._rows.get(ino)
        if row is None:
            return os.pread(fd, size, offset)
        end = min(offset + size, os.fstat(fd).st_size)
        out = bytearray()
        pos = offset
        while pos < end:
            i = pos // row.chunk
            piece_end = min(end, (i + 1) * row.chunk)
            if row.has(i) or pos >= row.base_size:
                out += os.pread(fd, piece_end - pos, pos)
            else:
                from_base = min(piece_end, row.base_size)
                data = await self.reader.read(self._base_ref(row), pos, from_base - pos)
                if len(data) != from_base - pos:
                    raise PosixError(errno.EIO, f"{row.key}: short read of version {row.version}")
                out += data
                if from_base < piece_end:  # (past the old end: what the file has there, zeros or writes)
                    out += os.pread(fd, piece_end - from_base, from_base)
            pos = piece_end
        return bytes(out)

    async def complete(self, ino: int) -> None:
        """Every missing chunk fetched: the local file is the whole file, as any other."""
        if ino not in self._rows:
            return
        async with self._lock(ino):
            row = self._rows.get(ino)
            if row is None:
                return
            fd = self.local.open_fd(ino)
            try:
                for i in row.absent():
                    await self._fetch_chunk(row, fd, i)
            finally:
                os.close(fd)
            self._forget(ino)
            self.stats["partial_completed"] += 1

    async def complete_or_zero(self, ino: int) -> list[tuple[int, int]]:
        """`complete`, but where the version the missing chunks are is gone (`BaseLost`), they
        stay zeros, and the ranges lost are returned (the caller records the conflict). What a
        program wrote is never among them: only bytes it did not touch."""
        try:
            await self.complete(ino)
            return []
        except BaseLost:
            row = self._rows.get(ino)
            if row is None:
                return []
            lost = [(i * row.chunk, min((i + 1) * row.chunk, row.base_size)) for i in row.absent()]
            self._forget(ino)
            self.stats["bases_lost"] += 1
            return lost

    def drop(self, ino: int) -> None:
        """Nothing of the file is missing any more (truncated to 0, or every chunk fetched): it is
        an ordinary local file. Within the caller's transaction."""
        if self._rows.pop(ino, None) is not None:
            self.meta.partial_delete(ino)

    def forget(self, ino: int) -> None:
        """The inode is gone (its row went with it)."""
        self._rows.pop(ino, None)
        self._locks.pop(ino, None)

    # ------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def uploading(self, ino: int) -> AsyncIterator[None]:
        """Held over a patched upload and its `uploaded`: no chunk is fetched from the old version
        in between (the upload replaces it; a fetch then would find it gone)."""
        async with self._lock(ino):
            yield

    async def patch_for_upload(self, ino: int, size: int) -> PatchBase | None:
        """What an upload of the partial file (now `size` bytes) sends and copies: None when it
        is not partial. A run of missing chunks too short for a part of its own (the old end's
        last chunk, when the file grew past it) is fetched first. Within `uploading`."""
        row = self._rows.get(ino)
        if row is None:
            return None
        while True:
            runs = _missing_runs(row, size)
            short = [i for start, end, chunks in runs[:-1] if end - start < APPEND_MIN for i in chunks]
            if runs and runs[-1][1] < size and runs[-1][1] - runs[-1][0] < APPEND_MIN:
                short += runs[-1][2]  # (a copied run followed by sent bytes is no last part)
            if not short:
                break
            fd = self.local.open_fd(ino)
            try:
                for i in short:
                    await self._fetch_chunk(row, fd, i)
            finally:
                os.close(fd)
        changed: list[tuple[int, int]] = []
        pos = 0
        for start, end, _ in runs:
            if pos < start:
                changed.append((pos, start))
            pos = end
        if pos < min(size, row.base_size):
            changed.append((pos, min(size, row.base_size)))
        return PatchBase(size=row.base_size, version=row.version, changed=tuple(changed))

    def uploaded(self, ino: int, key: str, version: str, size: int) -> None:
        """The file is at `key` as `version` now (its missing chunks copied into it): they are
        read from there from now on, for the old version may be gone. Within `uploading`."""
        row = self._rows.get(ino)
        if row is None:
            return
        grown = PartialCopy(ino, row.remote, key, version, size, row.chunk,
                            bytearray((-(-size // row.chunk) + 7) // 8))
        for i in range(grown.base_chunks):
            if row.has(i):
                grown.mark(i)
        self._rows[ino] = grown
        with self.meta.transaction():
            self.meta.partial_put(grown)

    # ------------------------------------------------------------------------------------------
    def _lock(self, ino: int) -> trio.Lock:
        lock = self._locks.get(ino)
        if lock is None:
            lock = self._locks[ino] = trio.Lock()
        return lock

    def _forget(self, ino: int) -> None:
        with self.meta.transaction():
            self.drop(ino)

    def _base_ref(self, row: PartialCopy) -> ObjectRef:
        return ObjectRef(row.remote, row.key, row.version, row.base_size, row.sha256)

    async def _fetch_chunk(self, row: PartialCopy, fd: int, i: int) -> None:
        """Chunk `i` of the old version into the local file, durably, then marked as there (a
        crash in between leaves the old bytes at a place still read from the old version)."""
        start, end = i * row.chunk, min((i + 1) * row.chunk, row.base_size)
        store = self.stores[row.remote]
        try:
            if self.reader.describe(self._base_ref(row))[1] >= row.base_size:
                data = await self.reader.read(self._base_ref(row), start, end - start)  # (no download)
            else:
                data = await self.remote.call(store, bind(store.read_range, version=row.version), row.key,
                                              start, end, timeout=self.remote.transfer_timeout(end - start),
                                              what=f"read of {row.key}")
        except (VersionMismatch, ObjectNotFound) as e:
            try:  # the cache may still hold the version
                data = await self.reader.read(self._base_ref(row), start, end - start)
            except RemoteError:
                raise BaseLost(row.remote, f"{row.key}: version {row.version} is gone ({e}); bytes "
                                           f"{start}-{end} of the file edited here cannot be had") from None
        if len(data) != end - start:
            raise PosixError(errno.EIO, f"{row.key}: {len(data)} bytes of version {row.version} at {start}, "
                                        f"expected {end - start}")
        await trio.to_thread.run_sync(_write_durably, fd, data, start)
        row.mark(i)
        with self.meta.transaction():
            self.meta.partial_put(row)
        self.stats["chunks_fetched"] += 1


def _missing_runs(row: PartialCopy, size: int) -> list[tuple[int, int, list[int]]]:
    """Runs of adjoining missing chunks below the file's `size`: (start, end, chunk indexes)."""
    runs: list[tuple[int, int, list[int]]] = []
    for i in row.absent():
        start, end = i * row.chunk, min((i + 1) * row.chunk, row.base_size, size)
        if start >= end:
            break
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end, [*runs[-1][2], i])
        else:
            runs.append((start, end, [i]))
    return runs


def _write_durably(fd: int, data: bytes, offset: int) -> None:
    os.pwrite(fd, data, offset)
    os.fdatasync(fd)
