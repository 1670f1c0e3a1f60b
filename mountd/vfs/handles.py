"""`OpenFiles`: open file handles, their local data files, and FUSE passthrough.

It owns what exists only while a file is open: the handles, one `OpenInode` per open inode (its
local file descriptor, the size and mtime being written, whether content changed since it was
last journaled, its passthrough backing file), which version of each inode the kernel's page
cache holds, and the free-space checks of writes. Data of an open file is read and written here
with quick local calls on the trio thread (fsync goes to a worker thread); the first write of a
handle bumps the inode's content generation, and `flush` (what `close(2)` waits for) writes size
and mtime to the db and journals the key, so data a program wrote and closed survives `kill -9`.

Passthrough: where the kernel granted it, a file whose data is on the local tier is read and
written by the kernel itself (its local file is the backing file); writes then never reach
`write()`, so sizes and mtimes are taken from the local file (`take_in_passthrough_writes`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from mountd import clock
from mountd.cache import RemoteReader, WholeFile
from mountd.config import RepoConfig
from mountd.errors import PosixError
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.meta.store import ListingRow, Row
from mountd.vfs.ignored import IgnoredPaths
from mountd.vfs.kernel import Kernel
from mountd.vfs.namespace import object_ref
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap
from mountd.vfs.types import Attr, Opened
from mountd.writeback import Journal
from mountd.writeback.backpressure import DirtyBytes

log = logging.getLogger(__name__)

FREE_SPACE_CHECK_EVERY = 1 << 20
PASSTHROUGH_MIN_FREE = 1 << 30  # local-tier free space below which files open without passthrough
# seconds between statvfs calls deciding that (a create of 5,000 small files made 5,000 of them);
# the margin (1 GiB, or 4 x `local.reserve`) is what a disk filling within that second may use
ROOM_CHECK_EVERY = 1.0


# fallocate(2) mode flags (linux/falloc.h)
FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02
FALLOC_COLLAPSE_RANGE = 0x08
FALLOC_ZERO_RANGE = 0x10
FALLOC_INSERT_RANGE = 0x20
FALLOC_CHANGES_BYTES = FALLOC_PUNCH_HOLE | FALLOC_COLLAPSE_RANGE | FALLOC_ZERO_RANGE | FALLOC_INSERT_RANGE


def without_suid(mode: int) -> int:
    """`mode` as the kernel leaves it after an unprivileged write or truncate: setuid dropped, and
    setgid when group-execute is set (without it setgid marks mandatory locking). With FUSE's
    killpriv_v2 the kernel leaves this to the file system."""
    return mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))


@dataclass(slots=True)
class OpenInode:
    """State shared by all open handles of one inode."""

    ino: int
    handles: int = 0
    writers: int = 0
    fd: int | None = None  # local data file, opened on first local I/O
    size: int | None = None  # size while being written (authoritative over the db)
    mtime_ns: int | None = None
    modified: bool = False  # content changed since it was last journaled
    # FUSE passthrough: decided at the first open and kept while any handle is open (the kernel
    # refuses to mix modes on one inode); None: the handles go through read()/write() here
    backing_id: int | None = None
    # (size, mtime_ns) of the local file when passthrough writes were last taken in
    seen: tuple[int, int] | None = None
    # the cache's file of the whole object when the kernel reads that (backing_id is then its id)
    cached: WholeFile | None = None
    # opened for writing while its data is only in the remote: the first write fetches it
    fetch_before_write: bool = False
    fetching: trio.Event | None = None  # that fetch, which every other writer waits for


@dataclass(slots=True)
class Handle:
    ino: int
    writable: bool
    uid: int


class OpenFiles:
    def __init__(self, config: RepoConfig, meta: MetaStore, paths: PathMap, local: LocalTier,
                 reader: RemoteReader, journal: Journal, dirty: DirtyBytes, ignored: IgnoredPaths,
                 kernel: Kernel, partial: PartialFiles) -> None:
        self.config = config
        self.partial = partial
        self.meta = meta
        self.paths = paths
        self.local = local
        self.reader = reader
        self.journal = journal
        self.dirty = dirty
        self.ignored = ignored
        self.kernel = kernel
        self._open: dict[int, OpenInode] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._page_cache_version: dict[int, str] = {}
        self._unchecked_bytes = FREE_SPACE_CHECK_EVERY  # bytes written since free space was last checked
        self._room_checked_at = -math.inf  # time.monotonic() of the last statvfs for passthrough
        self._room_for_kernel_writes = False

    # ------------------------------------------------------------------------------------------
    # what other rooms ask
    # ------------------------------------------------------------------------------------------
    def get(self, ino: int) -> OpenInode | None:
        return self._open.get(ino)

    def is_open(self, ino: int) -> bool:
        return ino in self._open

    def is_open_for_write(self, ino: int) -> bool:
        op = self._open.get(ino)
        return op is not None and op.writers > 0

    def ino_of(self, fh: int) -> int | None:
        h = self._handles.get(fh)
        return h.ino if h is not None else None

    def any_open(self) -> bool:
        return bool(self._open)

    def attr(self, inode: Inode) -> Attr:
        """The inode's attributes, with the size and mtime of an open file being written."""
        size, mtime = inode.size, inode.mtime_ns
        op = self._open.get(inode.ino)
        if op is not None:
            if op.backing_id is not None and op.writers:
                self.take_in_passthrough_writes(op)
            size = op.size if op.size is not None else size
            mtime = op.mtime_ns if op.mtime_ns is not None else mtime
        return Attr(ino=inode.ino, mode=inode.mode, nlink=inode.nlink, uid=inode.uid, gid=inode.gid,
                    size=size, atime_ns=inode.atime_ns, mtime_ns=mtime, ctime_ns=inode.ctime_ns,
                    rdev=inode.rdev, exact=bool(inode.meta_loaded))

    def listing_row(self, row: ListingRow, inode: Inode) -> ListingRow:
        """A readdir row with an open file's size and mtime, which may be newer than the db's."""
        a = self.attr(inode)
        return (row[Row.ENTRY_ID], row[Row.NAME], a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.atime_ns,
                          a.mtime_ns, a.ctime_ns, a.rdev, int(a.exact))

    def keep_pages(self, ino: int, version: str) -> None:
        """The kernel's cached pages of `ino` are those of `version` (kept by the next open of it)."""
        self._page_cache_version[ino] = version

    def forget_inode(self, ino: int) -> None:
        self._page_cache_version.pop(ino, None)

    def no_cache_readers(self, ino: int) -> None:
        """A change of content waits until no handle reads the cache's copy: those readers are
        bound to that read-only file, and the kernel allows one backing file per open inode, so a
        writer could not join them, and a reader opening after the change would."""
        op = self._open.get(ino)
        if op is not None and op.cached is not None:
            raise PosixError(errno.ETXTBSY,
                             "open for reading from the cache by the kernel; close those first")

    # ------------------------------------------------------------------------------------------
    # opening
    # ------------------------------------------------------------------------------------------
    async def open(self, node: Inode, *, writable: bool, uid: int) -> Opened:
        """A new handle of an existing inode whose data is where it will be read from."""
        version = "local" if node.has_local else (node.remote_version or "")
        keep = self._page_cache_version.get(node.ino) == version
        self._page_cache_version[node.ino] = version
        opened = await self._maybe_passthrough(self._new_handle(node.ino, writable=writable, uid=uid,
                                                                keep_cache=keep), node)
        if not writable and not node.has_local and not opened.backing_id:
            opened = self._maybe_cache_passthrough(opened, node)
        return opened

    async def open_created(self, node: Inode, fd: int, uid: int) -> Opened:
        """The first handle of a new file, whose data file `fd` was just made."""
        opened = self._new_handle(node.ino, writable=True, uid=uid, keep_cache=True)
        op = self._open[node.ino]
        op.modified = True
        op.fd = fd
        return await self._maybe_passthrough(opened, node)

    def fetch_at_first_write(self, ino: int) -> None:
        """An open for writing (without O_TRUNC) of a file whose data is only in the remote
        downloads nothing: a verifier or a program that opens read-write and only reads costs no
        download. Its reads come from the remote meanwhile."""
        self._open[ino].fetch_before_write = True

    async def before_write(self, fh: int, fetch: Callable[[int], Awaitable[None]]) -> None:
        """Before a write through `fh`: the first one of a file opened without its data fetches it
        (`fetch(ino)`), once for every handle of the inode."""
        op = self._open.get(self._handle(fh).ino)
        while op is not None and op.fetch_before_write:
            if op.fetching is not None:
                await op.fetching.wait()
                continue
            op.fetching = trio.Event()
            try:
                await fetch(op.ino)
                op.fetch_before_write = False
            finally:
                done, op.fetching = op.fetching, None
                done.set()

    def opened_truncated(self, ino: int) -> int:
        """POSIX: O_TRUNC of an existing file marks mtime and ctime for update, even when it was
        empty; returns that time."""
        op = self._open[ino]
        op.modified = True
        op.mtime_ns = clock.now_ns()
        return op.mtime_ns

    def _new_handle(self, ino: int, *, writable: bool, uid: int, keep_cache: bool) -> Opened:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(ino=ino, writable=writable, uid=uid)
        op = self._open.get(ino)
        if op is None:
            op = self._open[ino] = OpenInode(ino)
        op.handles += 1
        if writable:
            op.writers += 1
        return Opened(fh=fh, keep_cache=keep_cache)

    async def _maybe_passthrough(self, opened: Opened, node: Inode) -> Opened:
        """Let the kernel read and write the local file itself (FUSE passthrough) when the data is
        on the local tier: a 1 GiB write then runs at local-disk speed instead of one Python round
        trip per MiB. The mode of an inode is chosen by its first open and kept while it is open.

        Passthrough writes never reach write(), so `local.max_dirty` holds a writer at open
        instead; files with setuid/setgid stay with the daemon, which clears those bits on write."""
        op = self._open[node.ino]
        if op.handles > 1:  # this handle joins the others, in their mode
            return replace(opened, backing_id=op.backing_id or 0)
        if (not self.kernel.passthrough or not node.has_local or not node.is_reg
                or node.mode & (stat.S_ISUID | stat.S_ISGID) or self.partial.is_partial(node.ino)
                or not self._room_for_passthrough()):
            return opened
        if self._handles[opened.fh].writable and self.dirty.over_limit(node.ino):
            await self.dirty.wait_for_room(node.ino)
            if not self.kernel.passthrough or op.handles > 1:
                return replace(opened, backing_id=op.backing_id or 0)
        fd = self._local_fd(op)
        try:
            op.backing_id = self.kernel.backing_open(fd)
        except OSError as e:  # e.g. ELOOP: the local tier is itself on overlayfs or FUSE
            log.warning("FUSE passthrough refused for the local tier (%s); it is off for this mount", e)
            self.kernel.passthrough_refused(str(e))
            return opened
        st = os.fstat(fd)
        op.seen = (st.st_size, st.st_mtime_ns)
        # the kernel's own pages of this inode may be stale after
        self._page_cache_version.pop(node.ino, None)
        return replace(opened, backing_id=op.backing_id, keep_cache=False)

    def _maybe_cache_passthrough(self, opened: Opened, node: Inode) -> Opened:
        """Let the kernel read a remote object itself from the cache's file of the whole object,
        when there is one (objects of several chunks, all cached and checked): re-reads then come
        from ext4's page cache at local-disk speed, which FUSE's own page cache does not reach."""
        op = self._open[node.ino]
        if not self.kernel.passthrough or op.handles > 1 or node.remote_key is None or not node.is_reg:
            return opened
        whole = self.reader.open_whole(object_ref(node))
        if whole is None:
            return opened
        try:
            op.backing_id = self.kernel.backing_open(whole.fd)
        except OSError as e:
            whole.close()
            log.info("FUSE passthrough refused for a cached file (%s); reading it through the daemon", e)
            return opened
        op.cached = whole
        return replace(opened, backing_id=op.backing_id, keep_cache=False)

    def _room_for_passthrough(self) -> bool:
        """Passthrough writes skip the `local.reserve` check of write(): use it only while the local
        tier has plenty of room, so a disk filling up is met by that check, not by SQLite failing."""
        now = time.monotonic()
        if now - self._room_checked_at >= ROOM_CHECK_EVERY:
            st = os.statvfs(self.local.root)
            self._room_checked_at = now
            self._room_for_kernel_writes = \
                st.f_bavail * st.f_frsize >= max(4 * self.config.local.reserve, PASSTHROUGH_MIN_FREE)
        return self._room_for_kernel_writes

    # ------------------------------------------------------------------------------------------
    # content of open files
    # ------------------------------------------------------------------------------------------
    def take_in_passthrough_writes(self, op: OpenInode) -> None:
        """Passthrough writes never reach write(): learn their size and mtime from the local file."""
        assert op.fd is not None
        st = os.fstat(op.fd)
        if (st.st_size, st.st_mtime_ns) == op.seen:
            return
        op.seen = (st.st_size, st.st_mtime_ns)
        op.size, op.mtime_ns = st.st_size, st.st_mtime_ns
        clock.observed(st.st_mtime_ns)  # the local tier's time of the write: later stamps are not before it
        if not op.modified:
            op.modified = True
            with self.meta.transaction():
                self.meta.bump(op.ino, "content_gen")
                self.meta.update(op.ino, ctime_ns=st.st_mtime_ns)

    def before_setattr(self, ino: int) -> bool:
        """Writes made through passthrough before a setattr come first; whether there is such a writer."""
        op = self._open.get(ino)
        if op is None or op.backing_id is None or op.writers == 0:
            return False
        self.take_in_passthrough_writes(op)
        return True

    def after_setattr(self, ino: int, mtime_ns: int | None, passthrough_writer: bool) -> None:
        op = self._open.get(ino)
        if op is None:
            return
        if mtime_ns is not None:
            op.mtime_ns = mtime_ns
        if passthrough_writer and op.fd is not None:
            st = os.fstat(op.fd)  # a truncate here is not a write that would overrule this mtime
            op.seen = (st.st_size, st.st_mtime_ns)

    def truncated(self, ino: int, size: int) -> None:
        op = self._open.get(ino)
        if op is not None:
            op.size = size
            op.modified = True

    def _local_fd(self, op: OpenInode) -> int:
        if op.fd is None:
            op.fd = self.local.open_fd(op.ino)
        return op.fd

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise PosixError(errno.EBADF) from None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        op = self._open[h.ino]
        if self.partial.is_partial(h.ino):  # (holes are still the object's: not on the local tier)
            return await self.partial.read(h.ino, self._local_fd(op), offset, size)
        if op.fd is not None:
            return os.pread(op.fd, size, offset)
        node = self.meta.get(h.ino)
        if node is None:
            raise PosixError(errno.ENOENT)
        if node.has_local:
            return os.pread(self._local_fd(op), size, offset)
        if node.remote is None or node.remote_key is None:
            return b""
        return await self.reader.read(object_ref(node), offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise PosixError(errno.EBADF)
        if self.dirty.over_limit(h.ino):
            await self.dirty.wait_for_room(h.ino)
        op = self._open[h.ino]
        fd = self._local_fd(op)
        self._check_free_space(len(data))
        if self.partial.is_partial(h.ino):
            await self.partial.before_write(h.ino, fd, offset, len(data))
        written = os.pwrite(fd, data, offset)
        if op.size is None:
            node = self.meta.get(h.ino)
            op.size = node.size if node is not None else 0
        op.size = max(op.size, offset + written)
        op.mtime_ns = clock.now_ns()
        if not op.modified:
            self._first_change(op, h)
        return written

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on the local data file. Allocating within the size (or beyond it with
        FALLOC_FL_KEEP_SIZE) changes no byte a reader sees: the file stays clean, and a remote
        file is not uploaded again for it. Growing, punching or zeroing is a write."""
        h = self._handle(fh)
        if not h.writable:
            raise PosixError(errno.EBADF)
        op = self._open[h.ino]
        fd = self._local_fd(op)
        await self.partial.complete(h.ino)  # (a range of holes to allocate or punch: its bytes first)
        if op.backing_id is not None and op.cached is None:
            self.take_in_passthrough_writes(op)
        if mode & ~FALLOC_KEEP_SIZE == 0:
            self._check_free_space(length)
        before = os.fstat(fd).st_size
        await trio.to_thread.run_sync(self.local.fallocate, fd, mode, offset, length)
        st = os.fstat(fd)
        if st.st_size == before and mode & FALLOC_CHANGES_BYTES == 0:
            return
        op.size = st.st_size
        op.mtime_ns = clock.now_ns()
        if op.backing_id is not None:
            op.seen = (st.st_size, st.st_mtime_ns)  # taken in here, with the daemon's clock
        if not op.modified:
            self._first_change(op, h)

    def _first_change(self, op: OpenInode, h: Handle) -> None:
        """The first change of content since the file was last journaled."""
        op.modified = True
        node = self.meta.get(h.ino)
        values: dict[str, object] = {}
        # as the kernel does (it also sends a SETATTR for it): a write by anyone but root drops
        # setuid, and setgid when group-execute is set (without it setgid marks mandatory locking)
        if node is not None and h.uid != 0 and without_suid(node.mode) != node.mode:
            values["mode"] = without_suid(node.mode)
        with self.meta.transaction():
            self.meta.bump(h.ino, "content_gen")
            self.meta.update(h.ino, ctime_ns=op.mtime_ns, **values)

    def _check_free_space(self, incoming: int) -> None:
        """ENOSPC while the local tier's free space is under `local.reserve` (statvfs per MiB written)."""
        self._unchecked_bytes += incoming
        if self._unchecked_bytes < FREE_SPACE_CHECK_EVERY:
            return
        self._unchecked_bytes = 0
        st = os.statvfs(self.local.root)
        if st.f_bavail * st.f_frsize < self.config.local.reserve + incoming:
            self._unchecked_bytes = FREE_SPACE_CHECK_EVERY  # check again on the next write
            raise PosixError(errno.ENOSPC, "the local tier is full")

    async def _persist(self, op: OpenInode) -> None:
        """Write the in-memory size/mtime of an open file to the db and journal it if changed."""
        if op.backing_id is not None and op.cached is None:
            self.take_in_passthrough_writes(op)
        if not op.modified:
            return
        values: dict[str, object] = {}
        if op.size is not None:
            values["size"] = op.size
        if op.mtime_ns is not None:
            values["mtime_ns"] = op.mtime_ns
            values["ctime_ns"] = op.mtime_ns
        with self.meta.transaction():
            self.meta.update(op.ino, **values)
            node = self.meta.get(op.ino)
            keys = self.paths.keys_of(op.ino, node)  # (each name of a file with hard links is an object)
            for key in keys:
                self.journal.put(*key)
        op.modified = False
        # (an unnamed O_TMPFILE file is not counted: nothing can upload it, so nothing could wait)
        if node is not None and node.remote is not None and node.content_dirty and keys:
            size = self.partial.local_bytes(op.ino, node.size)  # (a part-fetched file: its parts here)
            # (its one key is its path's, which the ignore rules judge; a linked file: the first name's)
            if not await self.ignored.is_ignored(node, keys[0] if node.nlink <= 1 else None):
                self.dirty.set(op.ino, size)

    async def named(self, ino: int) -> None:
        """An unnamed open file (O_TMPFILE) got its first name: what it holds is journaled under
        that name now, as if it had just been written there."""
        op = self._open[ino]
        op.modified = True
        await self._persist(op)

    async def flush(self, fh: int) -> None:
        """close(2) waits for this: data that was written is journaled before close returns."""
        h = self._handle(fh)
        if h.writable:
            await self._persist(self._open[h.ino])

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        op = self._open[h.ino]
        if op.fd is not None:
            await trio.to_thread.run_sync(self.local.fsync, op.fd, datasync)
        if h.writable:
            await self._persist(op)

    async def release(self, fh: int) -> bool:
        """Close a handle; True when it was the inode's last (the caller may then free the inode)."""
        h = self._handles.pop(fh, None)
        if h is None:
            return False
        op = self._open[h.ino]
        op.handles -= 1
        if h.writable:
            op.writers -= 1
            await self._persist(op)
        if op.handles > 0:
            return False
        del self._open[h.ino]
        if op.backing_id is not None:
            try:
                self.kernel.backing_close(op.backing_id)
            except OSError as e:
                log.debug("closing backing id %d of inode %d: %s", op.backing_id, op.ino, e)
        if op.cached is not None:
            op.cached.close()
        if op.fd is not None:
            os.close(op.fd)
        return True

    def statistics(self) -> dict[str, int]:
        return {"open_handles": len(self._handles), "open_inodes": len(self._open)}
