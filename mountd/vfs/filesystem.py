"""`Filesystem`: POSIX semantics of the merged namespace, with no pyfuse3 in it.

It owns the in-memory state of open files (handles, local file descriptors, sizes being
written) and turns every POSIX call into quick SQLite changes (`MetaStore`), local file I/O
(`LocalTier`) and journal entries; it waits on the network only through worker threads
(listings, HEADs, downloads) or through the `RemoteReader`. Every mutating call commits its
metadata and journal entries in one transaction before returning.

Concurrency invariant: code between two awaits is atomic (one trio thread). A coroutine that
awaits (listing, materializing) re-reads what it needs from the MetaStore after the await.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import trio

from mountd.backend import DirListing, ObjectInfo, ObjectStore
from mountd.cache import ObjectRef, RemoteReader, WholeFile
from mountd.config import RepoConfig
from mountd.errors import MountdError, ObjectNotFound, PosixError, RemoteError
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.meta.store import ROOT_INODE, ListingRow
from mountd.vfs.namespace import (
    META_SHA256,
    NAME_MAX,
    Attachment,
    attachments_for,
    attrs_from_metadata,
    invalid_name_reason,
    key_for,
)
from mountd.vfs.types import Attr, Ctx, FsStats, Opened, SetAttr
from mountd.writeback import Journal
from mountd.writeback.backpressure import DirtyBytes
from mountd.writeback.ignore import IGNORE_FILE, IgnoreRules

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_PREFIX = "user.mountd."
READDIR_PAGE = 1000
LISTING_RETRY = 5.0
FREE_SPACE_CHECK_EVERY = 1 << 20
PASSTHROUGH_MIN_FREE = 1 << 30  # local-tier free space below which files open without passthrough
# seconds between statvfs calls deciding that (a create of 5,000 small files made 5,000 of them);
# the margin (1 GiB, or 4 x `local.reserve`) is what a disk filling within that second may use
ROOM_CHECK_EVERY = 1.0
METADATA_CONCURRENCY = 8  # parallel HEADs of the background metadata pass after a readdir
METADATA_BATCH = 16  # objects one worker of that pass HEADs per trio hand-off and transaction


def _without_suid(mode: int) -> int:
    """`mode` as the kernel leaves it after an unprivileged write or truncate: setuid dropped, and
    setgid when group-execute is set (without it setgid marks mandatory locking). With FUSE's
    killpriv_v2 the kernel leaves this to the file system."""
    return mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))


def _err(code: int, message: str = "") -> PosixError:
    return PosixError(code, message)


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


@dataclass(slots=True)
class Handle:
    ino: int
    writable: bool
    uid: int


@dataclass(slots=True)
class _Stats:
    listings: int = 0
    listing_errors: int = 0
    heads: int = 0
    materialized: int = 0
    adopted: int = 0
    skipped_keys: int = 0
    open_handles: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class Filesystem:
    def __init__(self, config: RepoConfig, meta: MetaStore, local: LocalTier, reader: RemoteReader,
                 stores: Mapping[str, ObjectStore], journal: Journal) -> None:
        self.config = config
        self.meta = meta
        self.local = local
        self.reader = reader
        self.stores = stores
        self.journal = journal
        self.attachments = attachments_for(config.remote)
        self._remote_cfg = {r.name: r for r in config.remote}
        self._attach_ino: dict[str, int] = {}
        self._open: dict[int, OpenInode] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._listing_inflight: dict[int, trio.Event] = {}
        self._listing_failed_at: dict[int, float] = {}
        self._checked_at: dict[int, float] = {}  # inode -> when its remote version was last confirmed
        self._page_cache_version: dict[int, str] = {}
        self._metadata_backlog: dict[int, None] = {}  # listed inodes the background pass will HEAD, in order
        self._metadata_running: dict[int, trio.Event] = {}  # inodes it is HEADing now
        self._metadata_workers = 0
        self._warned_keys: set[tuple[str, str]] = set()
        self._stats = _Stats()
        self.owner_uid = config.mount.uid if config.mount.uid is not None else os.getuid()
        self.owner_gid = config.mount.gid if config.mount.gid is not None else os.getgid()
        self.invalidate_cb = lambda ino: None  # set by the FUSE layer: drop the kernel page cache
        # set by the FUSE layer when the kernel granted passthrough: register / drop a backing fd
        self.backing_open: Callable[[int], int] | None = None
        self.backing_close: Callable[[int], None] = lambda backing_id: None
        self.dirty = DirtyBytes(config.local.max_dirty)
        self._unchecked_bytes = FREE_SPACE_CHECK_EVERY  # bytes written since free space was last checked
        self._room_checked_at = -math.inf  # time.monotonic() of the last statvfs for passthrough
        self._room_for_kernel_writes = False
        self.ignore = IgnoreRules(config.writeback.ignore)
        # set by the daemon: whether the uploader is working on (remote, key) right now
        self.is_uploading: Callable[[str, str], bool] = lambda remote, key: False

    # ------------------------------------------------------------------------------------------
    # start-up
    # ------------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Root, attach points, and crash recovery of the db; quick, no network."""
        m = self.meta
        with m.transaction():
            root_remote = next((a.name for a in self.attachments if not a.parts), None)
            if m.get(ROOT_INODE) is None:
                m.create_inode(ino=ROOT_INODE, mode=stat.S_IFDIR | 0o755, uid=self.owner_uid, gid=self.owner_gid,
                               remote=root_remote, nlink=2, remote_key="" if root_remote else None)
            for att in sorted(self.attachments, key=lambda a: len(a.parts)):
                self._attach_ino[att.name] = self._ensure_attach_point(att)
            for ino in m.orphans():
                log.info("removing orphan inode %d left by an earlier run", ino)
                m.delete_inode(ino)
                self.local.remove(ino)
            for inode in m.dirty_without_journal():
                if inode.has_local and self.local.exists(inode.ino):
                    m.update(inode.ino, size=self.local.size_of(inode.ino))
                    if inode.remote is not None and inode.is_reg:
                        self.dirty.set(inode.ino, self.local.size_of(inode.ino))
                key = self.key_of(inode.ino)
                if key is not None and not m.journal_has(inode.remote or "", key[1]):
                    log.info("re-queueing %s:%s written before a crash", key[0], key[1])
                    m.journal_put(key[0], key[1], self.journal.clock())

    def _ensure_attach_point(self, att: Attachment) -> int:
        ino = ROOT_INODE
        for depth, part in enumerate(att.parts):
            name = part.encode()
            child = self.meta.lookup(ino, name)
            last = depth == len(att.parts) - 1
            if child is None:
                parent = self.meta.get(ino)
                assert parent is not None
                node = self.meta.create_inode(mode=stat.S_IFDIR | 0o755, uid=self.owner_uid, gid=self.owner_gid,
                                              remote=att.name if last else None, nlink=2,
                                              remote_key="" if last else None)
                self.meta.add_entry(ino, name, node.ino)
                self.meta.bump(ino, "nlink")
                child = node.ino
            elif last:
                self.meta.update(child, remote=att.name, remote_key="")
            ino = child
        if not att.parts:
            self.meta.update(ROOT_INODE, remote=att.name, remote_key="")
        return ino

    # ------------------------------------------------------------------------------------------
    # paths and keys
    # ------------------------------------------------------------------------------------------
    def path_parts(self, ino: int) -> tuple[str, ...] | None:
        parts: list[str] = []
        while ino != ROOT_INODE:
            up = self.meta.parent_of(ino)
            if up is None:
                return None
            parts.append(up[1].decode("utf-8", "surrogateescape"))
            ino = up[0]
        return tuple(reversed(parts))

    def path_of(self, ino: int) -> str | None:
        parts = self.path_parts(ino)
        return None if parts is None else "/" + "/".join(parts)

    def attachment(self, remote: str) -> Attachment:
        return next(a for a in self.attachments if a.name == remote)

    def key_of(self, ino: int, inode: Inode | None = None) -> tuple[str, str] | None:
        """(remote, object key) of an inode's current path; directories get their marker key."""
        inode = inode or self.meta.get(ino)
        if inode is None or inode.remote is None:
            return None
        parts = self.path_parts(ino)
        if parts is None:
            return None
        att = self.attachment(inode.remote)
        below = parts[len(att.parts):]
        return inode.remote, key_for(below, directory=inode.is_dir)

    def resolve_key(self, remote: str, key: str) -> Inode | None:
        """The inode whose path maps to `key` now (no listing is fetched)."""
        ino = self._attach_ino.get(remote)
        if ino is None:
            return None
        for part in [p for p in key.split("/") if p]:
            nxt = self.meta.lookup(ino, part.encode("utf-8", "surrogateescape"))
            if nxt is None:
                return None
            ino = nxt
        node = self.meta.get(ino)
        if node is None or node.remote != remote:
            return None
        return node

    def _is_attach_point(self, ino: int) -> bool:
        return ino in self._attach_ino.values()

    def _inode(self, ino: int) -> Inode:
        node = self.meta.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _writable_area(self, inode: Inode) -> None:
        if inode.remote is not None and self._remote_cfg[inode.remote].read_only:
            raise _err(errno.EROFS, f"remote {inode.remote!r} is read-only")

    def _store(self, remote: str) -> ObjectStore:
        return self.stores[remote]

    # ------------------------------------------------------------------------------------------
    # attributes
    # ------------------------------------------------------------------------------------------
    def _attr(self, inode: Inode) -> Attr:
        size, mtime = inode.size, inode.mtime_ns
        op = self._open.get(inode.ino)
        if op is not None:
            if op.backing_id is not None and op.writers:
                self._take_in_passthrough_writes(op)
            size = op.size if op.size is not None else size
            mtime = op.mtime_ns if op.mtime_ns is not None else mtime
        return Attr(ino=inode.ino, mode=inode.mode, nlink=inode.nlink, uid=inode.uid, gid=inode.gid, size=size,
                    atime_ns=inode.atime_ns, mtime_ns=mtime, ctime_ns=inode.ctime_ns, rdev=inode.rdev,
                    exact=bool(inode.meta_loaded))

    async def getattr(self, ino: int) -> Attr:
        return self._attr(await self._with_metadata(self._inode(ino)))

    async def _with_metadata(self, inode: Inode) -> Inode:
        """`inode` with the POSIX attributes its object stores (one HEAD the first time).

        An inode that the background pass of a readdir is loading now is waited for; one it has
        not reached yet is taken out of its backlog and loaded here at once."""
        if inode.meta_loaded:
            return inode
        running = self._metadata_running.get(inode.ino)
        if running is not None:
            await running.wait()
            inode = self._inode(inode.ino)
            if inode.meta_loaded:
                return inode
        self._metadata_backlog.pop(inode.ino, None)
        return await self._load_metadata(inode)

    def _load_metadata_later(self, inos: list[int]) -> None:
        """HEAD these listed inodes in the background, a few at a time, in order (after a readdir:
        `ls -l` asks for every entry next, and one HEAD after the other would be slow)."""
        for ino in inos:
            if ino not in self._metadata_running:
                self._metadata_backlog.setdefault(ino)
        while self._metadata_workers < METADATA_CONCURRENCY and self._metadata_backlog:
            self._metadata_workers += 1
            trio.lowlevel.spawn_system_task(self._metadata_worker, name="mountd-metadata-pass")

    async def _metadata_worker(self) -> None:
        try:
            while self._metadata_backlog:
                batch: list[tuple[int, trio.Event]] = []
                while self._metadata_backlog and len(batch) < METADATA_BATCH:
                    ino = next(iter(self._metadata_backlog))
                    del self._metadata_backlog[ino]
                    done = self._metadata_running[ino] = trio.Event()
                    batch.append((ino, done))
                try:
                    await self._load_metadata_batch([ino for ino, _ in batch])
                except MountdError as e:  # the remote timed out: getattr retries
                    log.debug("background metadata of %d inodes: %s", len(batch), e)
                except sqlite3.ProgrammingError:  # the db was closed: the mount is shutting down
                    self._metadata_backlog.clear()
                except Exception:  # a bug must not end the pass nor the daemon (this is a system task)
                    log.exception("background metadata of %d inodes failed unexpectedly", len(batch))
                finally:
                    for ino, done in batch:
                        del self._metadata_running[ino]
                        done.set()
        finally:
            self._metadata_workers -= 1

    async def _load_metadata_batch(self, inos: list[int]) -> None:
        """HEAD listed objects one after the other in one worker thread, and take in the answers
        in one transaction: one trio hand-off and one commit per batch, not per object."""
        nodes = [n for ino in inos if (n := self.meta.get(ino)) is not None and not n.meta_loaded
                 and n.remote is not None and n.remote_key is not None]
        if not nodes:
            return
        calls = [(self._store(n.remote or ""), n.remote_key or "") for n in nodes]
        deadline = time.monotonic() + self.config.mount.read_timeout
        answers = await self._in_thread(_head_each, calls, deadline)
        with self.meta.transaction():
            for node, answer in zip(nodes, answers, strict=True):
                self._take_head_answer(node, answer)

    async def _load_metadata(self, inode: Inode) -> Inode:
        """HEAD an object seen only in a listing, for its POSIX attributes and sha256."""
        if inode.remote is None or inode.remote_key is None:
            return inode
        store = self._store(inode.remote)
        try:
            answer: ObjectInfo | RemoteError | None = await self._in_thread(store.head, inode.remote_key)
        except RemoteError as e:
            answer = e
        return self._take_head_answer(inode, answer)

    def _take_head_answer(self, inode: Inode, answer: ObjectInfo | RemoteError | None) -> Inode:
        """Store what a HEAD of `inode`'s object said, unless the inode changed meanwhile."""
        if isinstance(answer, ObjectNotFound):
            # no marker (a bare prefix) or the object is gone: keep the defaults, stop asking
            fresh = self.meta.get(inode.ino)
            if fresh is not None and fresh.remote_key == inode.remote_key and not fresh.meta_loaded:
                with self.meta.transaction():
                    self.meta.update(inode.ino, meta_loaded=1)
            return fresh or inode
        if not isinstance(answer, ObjectInfo):  # failed, or not asked before the batch's deadline
            log.debug("HEAD %s failed: %s", inode.remote_key, answer or "out of time")
            return inode
        self._stats.heads += 1
        fresh = self.meta.get(inode.ino)
        if fresh is None or fresh.meta_loaded or fresh.remote_key != inode.remote_key:
            return fresh or inode
        self._apply_object_info(fresh, answer)
        return self._inode(inode.ino)

    def _apply_object_info(self, inode: Inode, info: ObjectInfo) -> None:
        kind = stat.S_IFMT(inode.mode)
        default_mode = self.config.mount.dir_mode if inode.is_dir else self.config.mount.file_mode
        attrs = attrs_from_metadata(info.metadata, default_mode=default_mode, uid=self.owner_uid,
                                    gid=self.owner_gid, mtime_ns=info.mtime_ns, kind=kind)
        values: dict[str, object] = {}
        if not inode.is_dir:  # a directory takes only the attributes of its marker
            values["remote_version"] = info.version
            if not inode.has_local:
                values["size"] = info.size
        if info.metadata is not None:
            values.update(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns, meta_loaded=1,
                          sha256=info.metadata.get(META_SHA256) or None)
            if info.metadata.get(META_SHA256):
                self.meta.hash_put(inode.remote or "", info.metadata[META_SHA256], info.key, info.version)
        with self.meta.transaction():
            self.meta.update(inode.ino, **values)
        self._checked_at[inode.ino] = time.monotonic()

    async def setattr(self, ino: int, changes: SetAttr, fh: int | None, ctx: Ctx) -> Attr:
        # the object's stored attributes first: the fields not changed here are written back with it
        inode = await self._with_metadata(self._inode(ino))
        op = self._open.get(ino)
        passthrough_writer = op is not None and op.backing_id is not None and op.writers > 0
        if passthrough_writer:
            assert op is not None
            self._take_in_passthrough_writes(op)  # writes made before this call come first
        now = time.time_ns()
        values: dict[str, object] = {}
        if changes.size is not None:
            if inode.is_dir:
                raise _err(errno.EISDIR)
            if not inode.is_reg:
                raise _err(errno.EINVAL)
            self._writable_area(inode)
            self._check_immutable(inode)
            self._no_cache_readers(op)
            await self._truncate(inode, changes.size)
            inode = self._inode(ino)
            values.update(mtime_ns=now)
            if ctx.uid != 0 and (killed := _without_suid(inode.mode)) != inode.mode:
                values["mode"] = killed
        if changes.mode is not None:
            self._writable_area(inode)
            values["mode"] = stat.S_IFMT(inode.mode) | stat.S_IMODE(changes.mode)
        if changes.uid is not None or changes.gid is not None:
            self._writable_area(inode)
            if changes.uid is not None:
                values["uid"] = changes.uid
            if changes.gid is not None:
                values["gid"] = changes.gid
            mode = int(values.get("mode", inode.mode))  # type: ignore[call-overload]
            if not stat.S_ISDIR(mode) and mode & (stat.S_ISUID | stat.S_ISGID) and changes.mode is None:
                values["mode"] = mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
        if changes.atime_ns is not None:
            values["atime_ns"] = changes.atime_ns
        if changes.mtime_ns is not None:
            self._writable_area(inode)
            values["mtime_ns"] = changes.mtime_ns
        if op is not None and "mtime_ns" in values:
            op.mtime_ns = int(values["mtime_ns"])  # type: ignore[call-overload]
        if passthrough_writer:
            assert op is not None and op.fd is not None
            st = os.fstat(op.fd)  # a truncate here is not a write that would overrule this mtime
            op.seen = (st.st_size, st.st_mtime_ns)
        values["ctime_ns"] = changes.ctime_ns if changes.ctime_ns is not None else now
        remote_visible = any(k in values for k in ("mode", "uid", "gid", "mtime_ns"))
        if remote_visible and not inode.is_dir:
            self._check_immutable(inode)  # its attributes live in the object's metadata
        with self.meta.transaction():
            self.meta.update(ino, **values)
            if remote_visible or changes.size is not None:
                self.meta.bump(ino, "attr_gen")
                self._queue(ino)
        return self._attr(self._inode(ino))

    async def _truncate(self, inode: Inode, size: int) -> None:
        inode = await self._with_metadata(inode)  # its upload carries the stored mode, owner and mtime
        if not inode.has_local:
            if size == 0:
                with self.meta.transaction():
                    self.local.create_empty(inode.ino)
                    self.meta.update(inode.ino, has_local=1, size=0)
            else:
                await self._materialize(inode)
        self.local.truncate(inode.ino, size)
        op = self._open.get(inode.ino)
        if op is not None:
            op.size = size
            op.modified = True
        with self.meta.transaction():
            self.meta.update(inode.ino, size=size)
            self.meta.bump(inode.ino, "content_gen")

    # ------------------------------------------------------------------------------------------
    # listings
    # ------------------------------------------------------------------------------------------
    async def _ensure_listed(self, d: Inode, *, force: bool = False) -> bool:
        """Merge the remote listing of a directory when it is older than listing_ttl; whether the
        directory may have changed meanwhile (its Inode must then be read again)."""
        if d.remote is None or not d.is_dir:
            return False
        now = time.time()
        if not force and d.listed_at is not None and now - d.listed_at < self.config.mount.listing_ttl:
            return False
        failed = self._listing_failed_at.get(d.ino)
        if not force and failed is not None and time.monotonic() - failed < LISTING_RETRY and d.listed_at is not None:
            return False
        event = self._listing_inflight.get(d.ino)
        if event is not None:
            await event.wait()
            return True
        event = self._listing_inflight[d.ino] = trio.Event()
        try:
            key = self.key_of(d.ino, d)
            if key is None:
                return False
            remote, prefix = key
            try:
                listing = await self._in_thread(self._store(remote).list_dir, prefix)
            except RemoteError as e:
                self._stats.listing_errors += 1
                self._listing_failed_at[d.ino] = time.monotonic()
                log.warning("listing %s of remote %r failed, serving what is known: %s", prefix or "/", remote, e)
                return True
            self._listing_failed_at.pop(d.ino, None)
            self._stats.listings += 1
            fresh = self.meta.get(d.ino)
            if fresh is not None and fresh.is_dir:
                self._merge_listing(fresh, remote, prefix, listing)
            return True
        finally:
            del self._listing_inflight[d.ino]
            event.set()

    def _skip_key(self, remote: str, key: str, reason: str) -> None:
        if (remote, key) not in self._warned_keys:
            self._warned_keys.add((remote, key))
            self._stats.skipped_keys += 1
            log.warning("remote %r: skipping key %r: %s", remote, key, reason)

    def _merge_listing(self, d: Inode, remote: str, prefix: str, listing: DirListing) -> None:
        m = self.meta
        pending = m.journal_keys_under(remote, prefix)
        existing = {name: ino for name, ino in m.children(d.ino)}
        seen: set[bytes] = set()
        now = time.monotonic()
        dir_names = set()
        with m.transaction():
            for name in listing.prefixes:
                reason = invalid_name_reason(name)
                if reason:
                    self._skip_key(remote, prefix + name + "/", reason)
                    continue
                dir_names.add(name)
                bname = name.encode()
                seen.add(bname)
                child_key = prefix + name + "/"
                if bname in existing or child_key in pending:
                    continue
                # meta_loaded=0: the first getattr HEADs the marker for the directory's own attributes
                node = m.create_inode(mode=stat.S_IFDIR | self.config.mount.dir_mode, uid=self.owner_uid,
                                      gid=self.owner_gid, remote=remote, nlink=2, remote_key=child_key,
                                      meta_loaded=0)
                m.add_entry(d.ino, bname, node.ino)
                m.bump(d.ino, "nlink")
            for info in listing.objects:
                name = info.key[len(prefix):]
                reason = invalid_name_reason(name)
                if reason is None and name in dir_names:
                    reason = "a directory of the same name exists"
                if reason:
                    self._skip_key(remote, info.key, reason)
                    continue
                bname = name.encode()
                seen.add(bname)
                if info.key in pending:
                    continue
                ino = existing.get(bname)
                if ino is None:
                    self._create_from_listing(d.ino, bname, remote, info)
                    continue
                listed = m.get(ino)
                if listed is None or listed.remote != remote or not (listed.is_reg or listed.is_symlink):
                    continue
                self._checked_at[ino] = now
                if listed.remote_key == info.key and listed.remote_version != info.version and not listed.has_local:
                    self._refresh_from_listing(listed, info)
            for bname, ino in existing.items():
                if bname in seen:
                    continue
                gone = m.get(ino)
                if gone is None or self._keeps_local_state(gone, remote, prefix + bname.decode("utf-8", "surrogateescape")):
                    continue
                m.remove_entry(d.ino, bname)
                if gone.is_dir:
                    m.bump(d.ino, "nlink", -1)
                if ino not in self._open:
                    m.delete_inode(ino)
            m.update(d.ino, listed_at=time.time())

    def _keeps_local_state(self, node: Inode, remote: str, key: str) -> bool:
        """An entry missing from a listing stays when it has anything not yet in the remote."""
        if node.remote != remote or self._is_attach_point(node.ino):
            return True
        if node.has_local or node.content_dirty or node.attrs_dirty or node.ino in self._open:
            return True
        if node.is_dir:
            return self.meta.has_children(node.ino) or self.meta.journal_has(remote, key + "/")
        return self.meta.journal_has(remote, key)

    def _create_from_listing(self, parent: int, bname: bytes, remote: str, info: ObjectInfo) -> None:
        attrs = attrs_from_metadata(info.metadata, default_mode=self.config.mount.file_mode, uid=self.owner_uid,
                                    gid=self.owner_gid, mtime_ns=info.mtime_ns, kind=stat.S_IFREG)
        sha = (info.metadata or {}).get(META_SHA256) or None
        node = self.meta.create_inode(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, remote=remote, size=info.size,
                                      mtime_ns=attrs.mtime_ns, remote_key=info.key, remote_version=info.version,
                                      sha256=sha, meta_loaded=int(info.metadata is not None))
        self.meta.add_entry(parent, bname, node.ino)
        if sha:
            self.meta.hash_put(remote, sha, info.key, info.version)
        self._checked_at[node.ino] = time.monotonic()

    def _refresh_from_listing(self, node: Inode, info: ObjectInfo) -> None:
        """The object changed in the remote: take its new size/version; its cached pages go."""
        if node.remote_key is not None:
            self.reader.forget(self._object_ref(node))
        self.invalidate_cb(node.ino)
        values: dict[str, object] = {"size": info.size, "remote_version": info.version, "mtime_ns": info.mtime_ns}
        if info.metadata is not None:
            attrs = attrs_from_metadata(info.metadata, default_mode=self.config.mount.file_mode, uid=self.owner_uid,
                                        gid=self.owner_gid, mtime_ns=info.mtime_ns, kind=stat.S_IFMT(node.mode))
            values.update(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns,
                          sha256=info.metadata.get(META_SHA256) or None, meta_loaded=1)
        else:
            values.update(meta_loaded=0, sha256=None)
        self.meta.update(node.ino, **values)

    async def _ensure_subtree_listed(self, ino: int) -> None:
        """Every directory below `ino` listed (before a directory rename in a remote)."""
        stack = [ino]
        while stack:
            d = self.meta.get(stack.pop())
            if d is None or not d.is_dir:
                continue
            await self._ensure_listed(d)
            for _, child in self.meta.children(d.ino):
                c = self.meta.get(child)
                if c is not None and c.is_dir:
                    stack.append(child)

    # ------------------------------------------------------------------------------------------
    # lookup and directories
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if name in (b"", b".", b"..") or b"/" in name:
            raise _err(errno.EINVAL)

    async def _dir(self, ino: int) -> Inode:
        d = self._inode(ino)
        if not d.is_dir:
            raise _err(errno.ENOTDIR)
        return self._inode(ino) if await self._ensure_listed(d) else d

    async def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if name == b".":
            return await self.getattr(parent)
        if name == b"..":
            up = self.meta.parent_of(parent)
            return await self.getattr(up[0] if up else ROOT_INODE)
        await self._dir(parent)
        # one joined query for the common case (a stat after its dentry expired); the Inode only
        # when its attributes are not final (an open file, metadata not loaded yet)
        row = self.meta.lookup_attr(parent, name)
        if row is None:
            raise _err(errno.ENOENT)
        if row[10] and row[0] not in self._open:
            return Attr(*row[:10])
        return self._attr(await self._with_metadata(self._inode(row[0])))

    async def opendir(self, ino: int) -> int:
        await self._dir(ino)
        return ino

    def readdir(self, ino: int, after_id: int) -> Iterator[list[ListingRow]]:
        """Pages of entries from `after_id` on, in stable entry-id order, as the rows of
        `MetaStore.listing_after` (entry id first: it is the offset the kernel asks again from).
        Rows rather than `Attr`s: `ls -l` of 5,000 entries spent a third of its daemon time
        building an object per entry."""
        while True:
            page = self.meta.listing_after(ino, after_id, READDIR_PAGE)
            if not page:
                return
            self._load_metadata_later([row[2] for row in page if not row[12]])
            if self._open:
                page = [self._listing_row(row[0], row[1], self._attr(self._inode(row[2])))
                        if row[2] in self._open else row for row in page]
            yield page
            if len(page) < READDIR_PAGE:
                return
            after_id = page[-1][0]

    @staticmethod
    def _listing_row(entry_id: int, name: bytes, a: Attr) -> ListingRow:
        # an open file's size and mtime may be newer than the db's
        return (entry_id, name, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.atime_ns, a.mtime_ns,
                a.ctime_ns, a.rdev, int(a.exact))

    def _new_child_owner(self, parent: Inode, ctx: Ctx, mode: int) -> tuple[int, int, int]:
        """uid, gid, mode of a new entry: BSD group semantics under a setgid directory."""
        gid = ctx.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return ctx.uid, gid, mode

    async def _prepare_new_entry(self, parent: int, name: bytes) -> Inode:
        self._check_name(name)
        d = await self._dir(parent)
        self._writable_area(d)
        self._check_remote_name(d, name)
        if self.meta.lookup(parent, name) is not None:
            raise _err(errno.EEXIST)
        return d

    @staticmethod
    def _check_remote_name(d: Inode, name: bytes) -> None:
        """Object keys are UTF-8: a name that is not cannot live under a remote (EILSEQ, as ZFS utf8only)."""
        if d.remote is None:
            return
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(errno.EILSEQ, "names under a remote must be valid UTF-8") from None

    def _touch_dir(self, ino: int, now: int) -> None:
        self.meta.update(ino, mtime_ns=now, ctime_ns=now)

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        d = await self._prepare_new_entry(parent, name)
        uid, gid, mode = self._new_child_owner(d, ctx, stat.S_IFDIR | stat.S_IMODE(mode))
        now = time.time_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=d.remote, nlink=2, marker=1,
                                          attr_gen=1, listed_at=time.time() if d.remote else None, mtime_ns=now)
            self.meta.add_entry(parent, name, node.ino)
            self.meta.bump(parent, "nlink")
            self._touch_dir(parent, now)
            self._queue(node.ino)
        return self._attr(self._inode(node.ino))

    async def rmdir(self, parent: int, name: bytes) -> None:
        d = await self._dir(parent)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT)
        node = self._inode(ino)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if self._is_attach_point(ino):
            raise _err(errno.EBUSY, "a remote is attached here")
        self._writable_area(d)
        await self._ensure_listed(node)
        if self.meta.has_children(ino):
            raise _err(errno.ENOTEMPTY)
        self._check_immutable(node, deleting=True)
        key = self.key_of(ino, node)
        now = time.time_ns()
        with self.meta.transaction():
            self.meta.remove_entry(parent, name)
            self.meta.bump(parent, "nlink", -1)
            self._touch_dir(parent, now)
            self.meta.delete_inode(ino)
            if key is not None:
                self.journal.put(*key)

    # ------------------------------------------------------------------------------------------
    # files
    # ------------------------------------------------------------------------------------------
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[Opened, Attr]:
        d = await self._prepare_new_entry(parent, name)
        uid, gid, mode = self._new_child_owner(d, ctx, stat.S_IFREG | stat.S_IMODE(mode))
        now = time.time_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=d.remote, has_local=1,
                                          content_gen=1, attr_gen=1, mtime_ns=now)
            fd = self.local.create_open(node.ino)
            try:
                self.meta.add_entry(parent, name, node.ino)
                self._touch_dir(parent, now)
            except BaseException:
                os.close(fd)
                raise
        opened = self._new_handle(node.ino, writable=True, uid=ctx.uid, keep_cache=True)
        op = self._open[node.ino]  # a new inode: this handle is its first, with no data fd yet
        op.modified = True
        op.fd = fd
        opened = await self._maybe_passthrough(opened, self._inode(node.ino))
        return opened, self._attr(self._inode(node.ino))

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Attr:
        if stat.S_ISREG(mode):
            opened, attr = await self.create(parent, name, mode, os.O_WRONLY, ctx)
            await self.release(opened.fh)
            return attr
        d = await self._prepare_new_entry(parent, name)
        if d.remote is not None:
            raise _err(errno.EPERM, "special files exist only in local-only paths")
        uid, gid, mode = self._new_child_owner(d, ctx, mode)
        now = time.time_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=None, rdev=rdev, mtime_ns=now)
            self.meta.add_entry(parent, name, node.ino)
            self._touch_dir(parent, now)
        return self._attr(self._inode(node.ino))

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        d = await self._prepare_new_entry(parent, name)
        if len(target) > 4095:
            raise _err(errno.ENAMETOOLONG)
        uid, gid, _ = self._new_child_owner(d, ctx, stat.S_IFLNK)
        now = time.time_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, remote=d.remote, target=target,
                                          size=len(target), attr_gen=1, mtime_ns=now)
            self.meta.add_entry(parent, name, node.ino)
            self._touch_dir(parent, now)
            self._queue(node.ino)
        return self._attr(self._inode(node.ino))

    async def readlink(self, ino: int) -> bytes:
        node = self._inode(ino)
        if not node.is_symlink:
            raise _err(errno.EINVAL)
        if node.target is not None:
            return node.target
        assert node.remote is not None and node.remote_key is not None
        data = await self._in_thread(self._store(node.remote).read_range, node.remote_key, 0, max(node.size, 4096))
        with self.meta.transaction():
            self.meta.update(ino, target=data, size=len(data))
        return data

    async def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Ctx) -> Attr:
        node = self._inode(ino)
        if node.is_dir:
            raise _err(errno.EPERM)
        d = await self._prepare_new_entry(new_parent, new_name)
        if node.remote != d.remote:
            raise _err(errno.EXDEV, "hard link between a remote and a local-only path or across remotes")
        if node.remote is not None:
            raise _err(errno.EPERM, "hard links exist only in local-only paths")
        now = time.time_ns()
        with self.meta.transaction():
            self.meta.add_entry(new_parent, new_name, ino)
            self.meta.bump(ino, "nlink")
            self.meta.update(ino, ctime_ns=now)
            self._touch_dir(new_parent, now)
        return self._attr(self._inode(ino))

    async def unlink(self, parent: int, name: bytes) -> None:
        d = await self._dir(parent)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT)
        node = self._inode(ino)
        if node.is_dir:
            raise _err(errno.EISDIR)
        self._writable_area(d)
        self._check_immutable(node, deleting=True)
        key = self.key_of(ino, node)
        now = time.time_ns()
        with self.meta.transaction():
            self.meta.remove_entry(parent, name)
            self._touch_dir(parent, now)
            self._drop_link(node, now)
            if key is not None:
                self.journal.put(*key)

    def _drop_link(self, node: Inode, now: int) -> None:
        """One directory entry of `node` is gone; free it when it was the last and is not open."""
        self.meta.update(node.ino, nlink=node.nlink - 1, ctime_ns=now)
        if node.nlink - 1 <= 0 and node.ino not in self._open:
            self._free_inode(node)

    def _free_inode(self, node: Inode) -> None:
        self.meta.delete_inode(node.ino)
        self.local.remove(node.ino)
        self.dirty.clear(node.ino)
        self._checked_at.pop(node.ino, None)
        self._page_cache_version.pop(node.ino, None)

    def _check_immutable(self, node: Inode, *, deleting: bool = False) -> None:
        if node.remote is None or not self._remote_cfg[node.remote].immutable:
            return
        if node.is_dir and not deleting:
            return
        if node.remote_key is not None and node.synced_gen > 0 or (node.remote_version and not node.has_local):
            raise _err(errno.EPERM, f"remote {node.remote!r} is immutable")

    async def open(self, ino: int, flags: int, ctx: Ctx) -> Opened:
        node = self._inode(ino)
        if node.is_dir:
            raise _err(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable:
            self._no_cache_readers(self._open.get(ino))
            self._writable_area(node)
            self._check_immutable(node)
            if flags & os.O_TRUNC:
                await self._truncate(node, 0)
            elif not node.has_local and node.remote is not None:
                await self._materialize(node)
            node = self._inode(ino)
        elif not node.has_local and node.remote is not None:
            node = await self._revalidate(node)
            if not node.has_local and node.remote_key is not None:
                self.reader.opened(self._object_ref(node))  # read_whole objects start downloading
        version = "local" if node.has_local else (node.remote_version or "")
        keep = self._page_cache_version.get(ino) == version
        self._page_cache_version[ino] = version
        opened = await self._maybe_passthrough(
            self._new_handle(ino, writable=writable, uid=ctx.uid, keep_cache=keep), node)
        if not writable and not node.has_local and not opened.backing_id:
            opened = self._maybe_cache_passthrough(opened, node)
        if writable and flags & os.O_TRUNC:
            # POSIX: O_TRUNC of an existing file marks mtime and ctime for update, even when it was empty
            op = self._open[ino]
            op.modified = True
            op.mtime_ns = time.time_ns()
            values: dict[str, object] = {"mtime_ns": op.mtime_ns, "ctime_ns": op.mtime_ns}
            if ctx.uid != 0 and (killed := _without_suid(node.mode)) != node.mode:
                values["mode"] = killed  # as truncate(2) by an unprivileged user does
            with self.meta.transaction():
                self.meta.update(ino, **values)
        return opened

    async def _revalidate(self, node: Inode) -> Inode:
        """Check the object's version when what we know of it is older than listing_ttl."""
        checked = self._checked_at.get(node.ino)
        if checked is not None and time.monotonic() - checked < self.config.mount.listing_ttl:
            return node
        assert node.remote is not None and node.remote_key is not None
        try:
            info = await self._in_thread(self._store(node.remote).head, node.remote_key)
        except ObjectNotFound:
            raise _err(errno.ENOENT, "the object is gone from the remote") from None
        except RemoteError as e:
            log.info("cannot revalidate %s (%s); serving the known version", node.remote_key, e)
            return node
        fresh = self._inode(node.ino)
        if fresh.has_local:
            return fresh
        if info.version != fresh.remote_version:
            self.reader.forget(self._object_ref(fresh))
            self.invalidate_cb(fresh.ino)
        self._apply_object_info(fresh, info)
        return self._inode(node.ino)

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
        if (self.backing_open is None or not node.has_local or not node.is_reg
                or node.mode & (stat.S_ISUID | stat.S_ISGID) or not self._room_for_passthrough()):
            return opened
        if self._handles[opened.fh].writable and self.dirty.over_limit(node.ino):
            await self.dirty.wait_for_room(node.ino)
            if self.backing_open is None or op.handles > 1:
                return replace(opened, backing_id=op.backing_id or 0)
        fd = self._local_fd(op)
        try:
            op.backing_id = self.backing_open(fd)
        except OSError as e:  # e.g. ELOOP: the local tier is itself on overlayfs or FUSE
            log.warning("FUSE passthrough refused for the local tier (%s); it is off for this mount", e)
            self.backing_open = None
            return opened
        st = os.fstat(fd)
        op.seen = (st.st_size, st.st_mtime_ns)
        self._page_cache_version.pop(node.ino, None)  # the kernel's own pages of this inode may be stale after
        return replace(opened, backing_id=op.backing_id, keep_cache=False)

    @staticmethod
    def _no_cache_readers(op: OpenInode | None) -> None:
        """A change of content waits until no handle reads the cache's copy: those readers are
        bound to that read-only file, and the kernel allows one backing file per open inode, so a
        writer could not join them, and a reader opening after the change would."""
        if op is not None and op.cached is not None:
            raise _err(errno.ETXTBSY, "open for reading from the cache by the kernel; close those first")

    def _maybe_cache_passthrough(self, opened: Opened, node: Inode) -> Opened:
        """Let the kernel read a remote object itself from the cache's file of the whole object,
        when there is one (objects of several chunks, all cached and checked): re-reads then come
        from ext4's page cache at local-disk speed, which FUSE's own page cache does not reach."""
        op = self._open[node.ino]
        if self.backing_open is None or op.handles > 1 or node.remote_key is None or not node.is_reg:
            return opened
        whole = self.reader.open_whole(self._object_ref(node))
        if whole is None:
            return opened
        try:
            op.backing_id = self.backing_open(whole.fd)
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

    def _take_in_passthrough_writes(self, op: OpenInode) -> None:
        """Passthrough writes never reach write(): learn their size and mtime from the local file."""
        assert op.fd is not None
        st = os.fstat(op.fd)
        if (st.st_size, st.st_mtime_ns) == op.seen:
            return
        op.seen = (st.st_size, st.st_mtime_ns)
        op.size, op.mtime_ns = st.st_size, st.st_mtime_ns
        if not op.modified:
            op.modified = True
            with self.meta.transaction():
                self.meta.bump(op.ino, "content_gen")
                self.meta.update(op.ino, ctime_ns=st.st_mtime_ns)

    async def _materialize(self, node: Inode) -> None:
        """Fetch a remote file whole onto the local tier before it is changed in place."""
        node = await self._with_metadata(node)  # its upload carries the stored mode, owner and mtime
        assert node.remote is not None and node.remote_key is not None
        store, key = self._store(node.remote), node.remote_key

        def fetch() -> ObjectInfo:
            box: list[ObjectInfo] = []
            self.local.materialize_from(node.ino, lambda tmp: box.append(store.download(key, tmp)))
            return box[0]

        info = await self._in_thread(fetch)
        self._stats.materialized += 1
        with self.meta.transaction():
            self.meta.update(node.ino, has_local=1, size=self.local.size_of(node.ino), remote_version=info.version)

    def _local_fd(self, op: OpenInode) -> int:
        if op.fd is None:
            op.fd = self.local.open_fd(op.ino)
        return op.fd

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise _err(errno.EBADF) from None

    def _object_ref(self, node: Inode) -> ObjectRef:
        assert node.remote is not None and node.remote_key is not None
        return ObjectRef(remote=node.remote, key=node.remote_key, version=node.remote_version or "",
                         size=node.size, sha256=node.sha256)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        op = self._open[h.ino]
        if op.fd is not None:
            return os.pread(op.fd, size, offset)
        node = self._inode(h.ino)
        if node.has_local:
            return os.pread(self._local_fd(op), size, offset)
        if node.remote is None or node.remote_key is None:
            return b""
        return await self.reader.read(self._object_ref(node), offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise _err(errno.EBADF)
        if self.dirty.over_limit(h.ino):
            await self.dirty.wait_for_room(h.ino)
        op = self._open[h.ino]
        fd = self._local_fd(op)
        self._check_free_space(len(data))
        written = os.pwrite(fd, data, offset)
        if op.size is None:
            node = self._inode(h.ino)
            op.size = node.size
        op.size = max(op.size, offset + written)
        op.mtime_ns = time.time_ns()
        if not op.modified:
            op.modified = True
            node = self._inode(h.ino)
            values: dict[str, object] = {}
            # as the kernel does (it also sends a SETATTR for it): a write by anyone but root drops
            # setuid, and setgid when group-execute is set (without it setgid marks mandatory locking)
            if h.uid != 0 and _without_suid(node.mode) != node.mode:
                values["mode"] = _without_suid(node.mode)
            with self.meta.transaction():
                self.meta.bump(h.ino, "content_gen")
                self.meta.update(h.ino, ctime_ns=op.mtime_ns, **values)
        return written

    def _check_free_space(self, incoming: int) -> None:
        """ENOSPC while the local tier's free space is under `local.reserve` (statvfs per MiB written)."""
        self._unchecked_bytes += incoming
        if self._unchecked_bytes < FREE_SPACE_CHECK_EVERY:
            return
        self._unchecked_bytes = 0
        st = os.statvfs(self.local.root)
        if st.f_bavail * st.f_frsize < self.config.local.reserve + incoming:
            self._unchecked_bytes = FREE_SPACE_CHECK_EVERY  # check again on the next write
            raise _err(errno.ENOSPC, "the local tier is full")

    def _persist_open(self, op: OpenInode) -> None:
        """Write the in-memory size/mtime of an open file to the db and journal it if changed."""
        if op.backing_id is not None and op.cached is None:
            self._take_in_passthrough_writes(op)
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
            self._queue(op.ino)
        op.modified = False
        node = self.meta.get(op.ino)
        if node is not None and node.remote is not None and node.content_dirty and not self.is_ignored(node):
            self.dirty.set(op.ino, node.size)

    async def flush(self, fh: int) -> None:
        """close(2) waits for this: data that was written is journaled before close returns."""
        h = self._handle(fh)
        if h.writable:
            self._persist_open(self._open[h.ino])

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        op = self._open[h.ino]
        if op.fd is not None:
            await trio.to_thread.run_sync(self.local.fsync, op.fd, datasync)
        if h.writable:
            self._persist_open(op)

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        op = self._open[h.ino]
        op.handles -= 1
        if h.writable:
            op.writers -= 1
            self._persist_open(op)
        if op.handles > 0:
            return
        del self._open[h.ino]
        if op.backing_id is not None:
            try:
                self.backing_close(op.backing_id)
            except OSError as e:
                log.debug("closing backing id %d of inode %d: %s", op.backing_id, op.ino, e)
        if op.cached is not None:
            op.cached.close()
        if op.fd is not None:
            os.close(op.fd)
        node = self.meta.get(h.ino)
        if node is not None and node.nlink <= 0:
            with self.meta.transaction():
                self._free_inode(node)

    def is_open_for_write(self, ino: int) -> bool:
        op = self._open.get(ino)
        return op is not None and op.writers > 0

    def _queue(self, ino: int) -> None:
        """Journal the inode's key (caller holds a transaction)."""
        key = self.key_of(ino)
        if key is not None:
            self.journal.put(*key)

    # ------------------------------------------------------------------------------------------
    # rename
    # ------------------------------------------------------------------------------------------
    def _subtree_keys(self, ino: int) -> list[tuple[str, str]]:
        """Keys of an inode and, for a directory, of everything below it."""
        out = []
        stack = [ino]
        while stack:
            cur = stack.pop()
            key = self.key_of(cur)
            if key is not None:
                out.append(key)
            for _, child in self.meta.children(cur):
                stack.append(child)
        return out

    def _mark_subtree_moved(self, ino: int) -> None:
        """After a directory moved, its marker and every descendant must be re-put at new keys."""
        stack = [ino]
        while stack:
            cur = stack.pop()
            node = self.meta.get(cur)
            if node is None:
                continue
            if node.is_dir:
                self.meta.update(cur, marker=1)
                self.meta.bump(cur, "attr_gen")
                stack.extend(child for _, child in self.meta.children(cur))

    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, flags: int,
                     ctx: Ctx) -> None:
        self._check_name(name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        d_old = await self._dir(parent_old)
        d_new = await self._dir(parent_new)
        self._check_remote_name(d_new, name_new)
        ino = self.meta.lookup(parent_old, name_old)
        if ino is None:
            raise _err(errno.ENOENT)
        node = self._inode(ino)
        target_ino = self.meta.lookup(parent_new, name_new)
        if target_ino == ino:
            return
        if (d_old.remote or None) != (d_new.remote or None):
            raise _err(errno.EXDEV, "rename across remotes or between a remote and a local-only path")
        self._writable_area(d_old)
        if self._is_attach_point(ino) or (target_ino is not None and self._is_attach_point(target_ino)):
            raise _err(errno.EBUSY)
        self._check_immutable(node, deleting=True)
        target = self.meta.get(target_ino) if target_ino is not None else None
        if flags & RENAME_NOREPLACE and target is not None:
            raise _err(errno.EEXIST)
        if flags & RENAME_EXCHANGE and target is None:
            raise _err(errno.ENOENT)
        if target is not None and not flags & RENAME_EXCHANGE:
            if node.is_dir and not target.is_dir:
                raise _err(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise _err(errno.EISDIR)
            if target.is_dir:
                await self._ensure_listed(target)
                if self.meta.has_children(target.ino):
                    raise _err(errno.ENOTEMPTY)
            self._check_immutable(target, deleting=True)
        if d_old.remote is not None:
            if node.is_dir:
                await self._ensure_subtree_listed(ino)
            if target is not None and target.is_dir and flags & RENAME_EXCHANGE:
                await self._ensure_subtree_listed(target.ino)
        if not node.is_dir:
            await self._with_metadata(node)  # the copy at the new key carries the stored attributes
        # re-read everything after the awaits above
        if self.meta.lookup(parent_old, name_old) != ino or self.meta.lookup(parent_new, name_new) != target_ino:
            raise _err(errno.EAGAIN, "the directory changed during the rename; try again")
        node = self._inode(ino)
        target = self.meta.get(target_ino) if target_ino is not None else None
        now = time.time_ns()
        with self.meta.transaction():
            old_keys = self._subtree_keys(ino)
            if target is not None:
                old_keys += self._subtree_keys(target.ino)
            if flags & RENAME_EXCHANGE and target is not None:
                self.meta.set_entry_ino(parent_old, name_old, target.ino)
                self.meta.set_entry_ino(parent_new, name_new, ino)
                if node.is_dir != target.is_dir and parent_old != parent_new:
                    delta = 1 if node.is_dir else -1
                    self.meta.bump(parent_new, "nlink", delta)
                    self.meta.bump(parent_old, "nlink", -delta)
                self.meta.update(target.ino, ctime_ns=now)
                self._mark_subtree_moved(target.ino)
            else:
                if target is not None:
                    self.meta.remove_entry(parent_new, name_new)
                    if target.is_dir:
                        self.meta.bump(parent_new, "nlink", -1)
                        self.meta.delete_inode(target.ino)
                    else:
                        self._drop_link(target, now)
                self.meta.move_entry(parent_old, name_old, parent_new, name_new)
                if node.is_dir and parent_old != parent_new:
                    self.meta.bump(parent_old, "nlink", -1)
                    self.meta.bump(parent_new, "nlink", 1)
            self.meta.update(ino, ctime_ns=now)
            self._mark_subtree_moved(ino)
            self._touch_dir(parent_old, now)
            if parent_new != parent_old:
                self._touch_dir(parent_new, now)
            new_keys = self._subtree_keys(ino)
            if flags & RENAME_EXCHANGE and target is not None:
                new_keys += self._subtree_keys(target.ino)
            for key in dict.fromkeys(old_keys + new_keys):
                self.journal.put(*key)

    # ------------------------------------------------------------------------------------------
    # misc
    # ------------------------------------------------------------------------------------------
    # ------------------------------------------------------------------------------------------
    # after upload: the local copy becomes cache
    # ------------------------------------------------------------------------------------------
    async def adopt_uploaded(self, ino: int, content_gen: int) -> bool:
        """Hand the local copy of a file that is now clean in its remote over to the cache.

        The inode is marked remote-backed and its file renamed out of the local tier in one step
        (no await in between), so a reader sees one or the other, never neither. Files that are
        open, changed since, or not clean stay where they are."""
        node = self.meta.get(ino)
        if (node is None or not node.is_reg or not node.has_local or node.content_gen != content_gen
                or node.content_dirty or node.remote is None or node.remote_key is None
                or not node.remote_version or ino in self._open):
            return False
        key = self.key_of(ino, node)
        if key is None or key[1] != node.remote_key:
            return False
        handoff = self.local.tmp / f"{ino:x}.adopt"
        # the db first: a crash between the two leaves a stray local file, never a missing one
        with self.meta.transaction():
            self.meta.update(ino, has_local=0)
        try:
            os.rename(self.local.path_for(ino), handoff)
        except FileNotFoundError:
            return False
        self.dirty.clear(ino)
        self._page_cache_version[ino] = node.remote_version  # same bytes: the kernel's pages stay valid
        self._checked_at[ino] = time.monotonic()
        await self.reader.adopt_file(self._object_ref(self._inode(ino)), handoff)
        self._stats.adopted += 1
        return True

    # ------------------------------------------------------------------------------------------
    # ignore rules: paths under a remote that stay local-only
    # ------------------------------------------------------------------------------------------
    def _ignore_files(self, remote: str, parts: list[str]) -> list[tuple[int, Inode]]:
        """(depth below the attach point, inode) of each `.mountdignore` in the path's directories."""
        found: list[tuple[int, Inode]] = []
        dir_ino: int | None = self._attach_ino.get(remote)
        name = IGNORE_FILE.encode()
        for depth in range(len(parts)):
            if dir_ino is None:
                break
            f = self.meta.lookup(dir_ino, name)
            node = self.meta.get(f) if f is not None else None
            if node is not None and node.is_reg:
                found.append((depth, node))
            dir_ino = self.meta.lookup(dir_ino, parts[depth].encode("utf-8", "surrogateescape"))
        return found

    @staticmethod
    def ignore_stamp(f: Inode) -> tuple[int, str | None, int]:
        return (f.content_gen, f.remote_version, f.size)

    def is_ignored(self, node: Inode) -> bool:
        """Whether `node` is kept local-only by `writeback.ignore` or a `.mountdignore` (no network).

        A `.mountdignore` that exists only in the remote counts once `load_ignore_files` read it."""
        key = self.key_of(node.ino, node)
        if key is None:
            return False
        parts = [p for p in key[1].split("/") if p]
        specs = []
        for depth, f in self._ignore_files(key[0], parts):
            spec = self.ignore.cached_spec(f.ino, self.ignore_stamp(f))
            if spec is None and f.has_local and self.local.exists(f.ino):
                with open(self.local.path_for(f.ino), "rb") as fp:
                    spec = self.ignore.spec_for(f.ino, self.ignore_stamp(f), fp.read(1 << 20))
            if spec is not None:
                specs.append((depth, spec))
        return self.ignore.matches(parts, node.is_dir, specs)

    async def load_ignore_files(self, remote: str, key: str) -> None:
        """Read the remote-only `.mountdignore` files that govern `key` (raises RemoteError)."""
        parts = [p for p in key.split("/") if p]
        for _, f in self._ignore_files(remote, parts):
            stamp = self.ignore_stamp(f)
            if f.has_local or f.remote_key is None or self.ignore.cached_spec(f.ino, stamp) is not None:
                continue
            text = await self.reader.read(self._object_ref(f), 0, min(f.size, 1 << 20))
            self.ignore.spec_for(f.ino, stamp, text)

    def statfs(self) -> FsStats:
        st = os.statvfs(self.local.root)
        return FsStats(block_size=st.f_frsize, blocks=st.f_blocks, blocks_free=st.f_bfree, blocks_avail=st.f_bavail,
                       files=max(st.f_files, 1 << 20), files_free=max(st.f_ffree, 1 << 19), name_max=NAME_MAX)

    def file_state(self, node: Inode) -> str:
        """local, dirty, uploading, clean or error: what `user.mountd.state` shows."""
        if node.remote is None:
            return "local"
        key = self.key_of(node.ino, node)
        if key is None or self.is_ignored(node):
            return "local"
        entry = self.meta.journal_get(*key)
        if entry is not None and entry.last_error:
            return "error"
        if self.is_uploading(*key):
            return "uploading"
        if node.content_dirty or node.attrs_dirty or entry is not None:
            return "dirty"
        return "clean"

    def xattrs(self, ino: int) -> dict[str, bytes]:
        node = self._inode(ino)
        out = {
            "state": self.file_state(node).encode(),
            "size": str(self._attr(node).size).encode(),
        }
        if node.remote is not None:
            cfg = self._remote_cfg[node.remote]
            key = self.key_of(ino, node)
            out["remote"] = cfg.name.encode()
            if key is not None:
                out["remote_url"] = (cfg.display_url.rstrip("/") + "/" + key[1]).encode()
                entry = self.meta.journal_get(*key)
                if entry is not None and entry.last_error:
                    out["error"] = entry.last_error.encode()
            if node.remote_version:
                out["version"] = node.remote_version.encode()
        if node.sha256:
            out["sha256"] = node.sha256.encode()
        out["local"] = b"1" if node.has_local else b"0"
        if node.is_reg:
            tier, cached = "local", self._attr(node).size
            if not node.has_local and node.remote_key is not None:
                tier, cached = self.reader.describe(self._object_ref(node))
            out["tier"], out["cached_bytes"] = tier.encode(), str(cached).encode()
        return {XATTR_PREFIX + k: v for k, v in out.items()}

    def remote_scope(self, path: str) -> list[tuple[str, str]]:
        """(remote, key) pairs a mount path covers: its key below the attach point that holds it
        ("" for a whole remote; a key also covers the keys below it), and every remote attached
        at or below the path. Empty for a local-only path."""
        parts = tuple(p for p in path.split("/") if p)
        out = [(a.name, "") for a in self.attachments if a.parts[: len(parts)] == parts]
        holder = next((a for a in self.attachments if len(parts) > len(a.parts) and parts[: len(a.parts)] == a.parts),
                      None)
        if holder is not None:
            out.append((holder.name, "/".join(parts[len(holder.parts):])))
        return out

    async def remote_files_under(self, path: str) -> list[ObjectRef]:
        """Every remote file at or below a mount path whose bytes are not on the local tier."""
        ino = ROOT_INODE
        for part in (p for p in path.split("/") if p):
            ino = (await self.lookup(ino, part.encode("utf-8", "surrogateescape"))).ino
        out, stack = [], [ino]
        while stack:
            node = self._inode(stack.pop())
            if node.is_dir:
                await self._ensure_listed(node)
                stack.extend(child for _, child in self.meta.children(node.ino))
            elif node.is_reg and not node.has_local and node.remote is not None and node.remote_key is not None:
                if not node.meta_loaded:
                    node = await self._load_metadata(node)
                out.append(self._object_ref(node))
        return out

    async def getxattr(self, ino: int, name: str) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            # `ls -l` asks for security.selinux and system.posix_acl_access on every entry. ENOTSUP
            # for the namespaces we do not store (security, system, trusted) tells it, as ext4
            # mounted without ACLs does, that the file system lacks them, and it stops asking for
            # the other entries of the device; ENODATA would cost two round trips per entry.
            self._inode(ino)
            raise _err(errno.ENODATA if name.startswith("user.") else errno.ENOTSUP)
        attrs = self.xattrs(ino)
        if name not in attrs:
            raise _err(errno.ENODATA)
        return attrs[name]

    def listxattr(self, ino: int) -> list[str]:
        return list(self.xattrs(ino))

    def setxattr(self, ino: int, name: str) -> None:
        self._inode(ino)
        if name.startswith(XATTR_PREFIX):
            raise _err(errno.EPERM, "user.mountd.* attributes are read-only")
        raise _err(errno.ENOTSUP)

    async def _in_thread(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a blocking remote call in a worker thread, bounded by the read timeout."""
        timeout = self.config.mount.read_timeout
        with trio.move_on_after(timeout) as scope:
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        if scope.cancelled_caught:
            raise _err(errno.EIO, f"remote call timed out after {timeout:g}s")
        raise AssertionError("unreachable")

    def statistics(self) -> dict[str, int]:
        s = self._stats
        return {"listings": s.listings, "listing_errors": s.listing_errors, "heads": s.heads,
                "materialized": s.materialized, "adopted": s.adopted, "skipped_keys": s.skipped_keys, "open_handles": len(self._handles),
                "open_inodes": len(self._open)}


__all__ = ["Filesystem", "MountdError"]


def _head_each(calls: list[tuple[ObjectStore, str]], deadline: float) -> list[ObjectInfo | RemoteError | None]:
    """Worker thread: HEAD each key in turn; None for those not reached before `deadline`."""
    out: list[ObjectInfo | RemoteError | None] = []
    for store, key in calls:
        if time.monotonic() > deadline:
            out.append(None)
            continue
        try:
            out.append(store.head(key))
        except RemoteError as e:
            out.append(e)
    return out
