"""`Filesystem`: the POSIX operations of the merged namespace, with no pyfuse3 in it.

It is the front the FUSE shim (and the in-process tests) call. Each operation checks POSIX rules,
then commits its metadata and journal rows in one transaction before it returns, and hands the
rest to the rooms it was built with (see docs/architecture.md):

- `PathMap` (paths.py): attach points, and the object key of an inode's path;
- `OpenFiles` (handles.py): handles, open files' local data, FUSE passthrough;
- `RemoteView` (remote_view.py): listings, the background metadata pass, revalidation,
  fetching a remote file onto the local tier;
- `Introspection` (introspect.py): the `user.mountd.*` extended attributes;
- `IgnoredPaths` (ignored.py): which paths stay local-only;
- `Renames` (rename.py): the namespace change of a rename and the keys it journals.

## What runs on the trio thread (read this before adding an await or a blocking call)

- On the trio thread: SQLite calls (each one quick, indexed), local file calls that take
  microseconds (open, pread/pwrite of one request, rename, fstat, statvfs once a second).
- In a worker thread: everything that waits on the network (always through `RemoteCalls`, with a
  deadline), hashing, fsync, freeing blocks (unlinks of data files via `LocalTier.discard`,
  truncates that free more than 1 MiB), reading a `.mountdignore`.
- Code between two awaits is atomic: a coroutine that awaits re-reads from `MetaStore` what it
  uses afterwards; a rename that had to await a listing checks that its entries did not change.
- Background work runs in nurseries the daemon owns (`RemoteView.run`, `LocalTier.run`), never
  in system tasks.
The reconciler's per-key reservations are listed at the top of `reconcile.py`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator

from mountd import clock
from mountd.cache import ObjectRef
from mountd.config import RepoConfig
from mountd.errors import PosixError
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.meta.store import META_LOADED, ROOT_INODE, ListingRow, Row
from mountd.vfs.departures import Departures
from mountd.vfs.handles import OpenFiles, without_suid
from mountd.vfs.introspect import XATTR_PREFIX as MOUNTD_XATTR_PREFIX
from mountd.vfs.introspect import Introspection
from mountd.vfs.local_copies import LocalCopies
from mountd.vfs.namespace import NAME_MAX, XATTR_SIZE_MAX, encode_xattrs, object_ref, xattr_room
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap
from mountd.vfs.remote_view import RemoteView
from mountd.vfs.rename import RENAME_EXCHANGE, RENAME_NOREPLACE, Renames
from mountd.vfs.types import Attr, Ctx, FsStats, Opened, SetAttr
from mountd.writeback import Journal
from mountd.writeback.backpressure import DirtyBytes

log = logging.getLogger(__name__)

READDIR_PAGE = 1000
# readdir offsets (what the kernel asks again from, and telldir returns): `.` is 1, `..` is 2, an
# entry's is its entry id + 2 (ids start at 1), so each names one place for as long as the db lives
DOT_OFFSET, DOTDOT_OFFSET = 1, 2


class Filesystem:
    def __init__(self, config: RepoConfig, meta: MetaStore, local: LocalTier, journal: Journal,
                 dirty: DirtyBytes, paths: PathMap, files: OpenFiles, remote: RemoteView,
                 introspect: Introspection, partial: PartialFiles, copies: LocalCopies) -> None:
        self.config = config
        self.partial = partial
        self.copies = copies
        self.meta = meta
        self.local = local
        self.journal = journal
        self.dirty = dirty
        self.paths = paths
        self.files = files
        self.remote = remote
        self.introspect = introspect
        self._remote_cfg = {r.name: r for r in config.remote}
        self.renames = Renames(meta, paths, journal, dirty, self._drop_link)
        self.departures = Departures(meta, paths, journal, dirty, copies,
                                     retry_initial=config.writeback.retry_initial,
                                     retry_max=config.writeback.retry_max)

    # ------------------------------------------------------------------------------------------
    # start-up
    # ------------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Root, attach points, and crash recovery of the db; quick, no network."""
        m = self.meta
        with m.transaction():
            self.paths.bootstrap()
            for ino in m.orphans():
                log.info("removing orphan inode %d left by an earlier run", ino)
                m.delete_inode(ino)
                self.local.discard(ino)
            for inode in m.dirty_without_journal():
                if inode.has_local and self.local.exists(inode.ino):
                    m.update(inode.ino, size=self.local.size_of(inode.ino))
                    if inode.remote is not None and inode.is_reg:
                        self.dirty.set(inode.ino, self.partial.local_bytes(inode.ino,
                                                                           self.local.size_of(inode.ino)))
                for key in self.paths.keys_of(inode.ino):
                    if not m.journal_has(key[0], key[1]):
                        log.info("re-queueing %s:%s written before a crash", key[0], key[1])
                        m.journal_put(key[0], key[1], self.journal.clock())

    # ------------------------------------------------------------------------------------------
    # small checks
    # ------------------------------------------------------------------------------------------
    def _inode(self, ino: int) -> Inode:
        """The inode the kernel names. One that is gone is ESTALE, not ENOENT: the kernel may still
        hold a name for it that another host's change replaced (RemoteView._replace_open) and
        whose invalidation is on its way; for ESTALE the kernel looks the path up again."""
        node = self.meta.get(ino)
        if node is None:
            raise PosixError(errno.ESTALE)
        return node

    def _writable_area(self, inode: Inode) -> None:
        if inode.remote is not None and self._remote_cfg[inode.remote].read_only:
            raise PosixError(errno.EROFS, f"remote {inode.remote!r} is read-only")

    def _check_immutable(self, node: Inode, *, deleting: bool = False) -> None:
        if node.remote is None or not self._remote_cfg[node.remote].immutable:
            return
        if node.is_dir and not deleting:
            return
        if (node.remote_key is not None and node.synced_gen > 0
                or (node.remote_version and not node.has_local)):
            raise PosixError(errno.EPERM, f"remote {node.remote!r} is immutable")

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise PosixError(errno.ENAMETOOLONG)
        if name in (b"", b".", b"..") or b"/" in name:
            raise PosixError(errno.EINVAL)

    @staticmethod
    def _check_remote_name(d: Inode, name: bytes) -> None:
        """Object keys are UTF-8: a name that is not cannot live under a remote (EILSEQ, as ZFS utf8only)."""
        if d.remote is None:
            return
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            raise PosixError(errno.EILSEQ, "names under a remote must be valid UTF-8") from None

    def _queue(self, ino: int) -> None:
        """Journal the inode's key, every name's of a file with hard links (caller holds a transaction)."""
        for key in self.paths.keys_of(ino):
            self.journal.put(*key)

    def _touch_dir(self, ino: int, now: int) -> None:
        self.meta.update(ino, mtime_ns=now, ctime_ns=now)

    # ------------------------------------------------------------------------------------------
    # attributes
    # ------------------------------------------------------------------------------------------
    async def getattr(self, ino: int) -> Attr:
        node = await self.remote.for_stat(self._inode(ino))
        if self.meta.get(ino) is None:
            # gone while its attributes were read: its metadata made its name a hard link of an
            # inode known here, or another host replaced it; the kernel looks the name up again
            raise PosixError(errno.ESTALE)
        return self.files.attr(node)

    async def setattr(self, ino: int, changes: SetAttr, ctx: Ctx) -> Attr:
        # the object's stored attributes first: the fields not changed here are written back with it
        inode = await self.remote.with_metadata(self._inode(ino))
        passthrough_writer = self.files.before_setattr(ino)  # writes made before this call come first
        for t in (changes.atime_ns, changes.mtime_ns, changes.ctime_ns):
            clock.observed(t)  # a UTIME_NOW is the kernel's "now": our ctime of this call is not before it
        now = clock.now_ns()
        values: dict[str, object] = {}
        if changes.size is not None:
            if inode.is_dir:
                raise PosixError(errno.EISDIR)
            if not inode.is_reg:
                raise PosixError(errno.EINVAL)
            self._writable_area(inode)
            self._check_immutable(inode)
            self.files.no_cache_readers(ino)
            await self._truncate(inode, changes.size)
            inode = self._inode(ino)
            values.update(mtime_ns=now)
            if ctx.uid != 0 and (killed := without_suid(inode.mode)) != inode.mode:
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
        mtime = values.get("mtime_ns")
        self.files.after_setattr(ino,
                                 int(mtime) if mtime is not None else None,  # type: ignore[call-overload]
                                 passthrough_writer)
        values["ctime_ns"] = changes.ctime_ns if changes.ctime_ns is not None else now
        remote_visible = any(k in values for k in ("mode", "uid", "gid", "mtime_ns"))
        if remote_visible and not inode.is_dir:
            self._check_immutable(inode)  # its attributes live in the object's metadata
        with self.meta.transaction():
            self.meta.update(ino, **values)
            if remote_visible or changes.size is not None:
                self.meta.bump(ino, "attr_gen")
                self._queue(ino)
        return self.files.attr(self._inode(ino))

    async def _truncate(self, inode: Inode, size: int) -> None:
        inode = await self.remote.with_metadata(inode)  # its upload carries the stored mode, owner and mtime
        if self.partial.is_partial(inode.ino):
            if size == 0:
                with self.meta.transaction():
                    self.partial.drop(inode.ino)
            else:
                await self.partial.complete(inode.ino)
        if not inode.has_local:
            if size == 0:
                with self.meta.transaction():
                    self.local.create_empty(inode.ino)
                    self.meta.update(inode.ino, has_local=1, size=0)
            else:
                await self.copies.materialize(inode)
        await self.local.truncate(inode.ino, size)
        self.files.truncated(inode.ino, size)
        with self.meta.transaction():
            self.meta.update(inode.ino, size=size)
            self.meta.bump(inode.ino, "content_gen")

    # ------------------------------------------------------------------------------------------
    # lookup and directories
    # ------------------------------------------------------------------------------------------
    async def _dir_knowing(self, ino: int, name: bytes) -> Inode:
        """The directory `ino`, with its entry `name` as the remote has it: a lookup of that one
        name, never a wait for the listing of a directory of a million objects."""
        d = self._inode(ino)
        if not d.is_dir:
            raise PosixError(errno.ENOTDIR)
        await self.remote.prepare_lookup(d, name)
        return self._inode(ino)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        if len(name) > NAME_MAX:
            raise PosixError(errno.ENAMETOOLONG)
        if name == b".":
            return await self.getattr(parent)
        if name == b"..":
            up = self.meta.parent_of(parent)
            return await self.getattr(up[0] if up else ROOT_INODE)
        await self._dir_knowing(parent, name)
        # one joined query for the common case (a stat after its dentry expired); the Inode only
        # when its attributes are not final (an open file, metadata not loaded yet)
        row = self.meta.lookup_attr(parent, name)
        if row is None:
            raise PosixError(errno.ENOENT)
        if row.meta_loaded and not self.files.is_open(row.ino):
            return Attr(*row[:10])
        node = await self.remote.for_stat(self._inode(row.ino))
        if (now := self.meta.lookup(parent, name)) not in (row.ino, None):
            node = self._inode(now)  # its metadata made it a hard link of an inode known here
        return self.files.attr(node)

    async def opendir(self, ino: int) -> int:
        """A stale directory's listing starts here and goes on in the background; this waits for
        its first page only (for a directory of one page, the whole listing)."""
        d = self._inode(ino)
        if not d.is_dir:
            raise PosixError(errno.ENOTDIR)
        self.remote.walking_into(d)
        if self.remote.start_listing(d):
            await self.remote.listing_progress(ino)
        return ino

    async def readdir_ready(self, ino: int, offset: int) -> None:
        """Wait until `readdir(ino, offset)` has an entry to give, or the directory's listing has
        ended: the kernel takes an empty answer for the end of the directory, so entries are
        served as their pages arrive, and only an empty answer waits for the next page."""
        if offset < DOTDOT_OFFSET:
            return
        after_id = offset - DOTDOT_OFFSET
        listing = self.remote.start_listing(self._inode(ino))
        while listing and not self.meta.listing_after(ino, after_id, 1):
            listing = await self.remote.listing_progress(ino)

    def readdir(self, ino: int, offset: int) -> Iterator[list[ListingRow]]:
        """Pages of entries after `offset`: `.` and `..` first, as on a disk, then the entries in
        stable entry-id order, as the rows of `MetaStore.listing_after` with the offset (see
        DOT_OFFSET) in place of the entry id. Rows rather than `Attr`s: `ls -l` of 5,000 entries
        spent a third of its daemon time building an object per entry."""
        self.remote.directory_read(ino)
        if offset < DOTDOT_OFFSET:
            up = self.meta.parent_of(ino)
            yield [self._dot_row(DOT_OFFSET, b".", ino),
                   self._dot_row(DOTDOT_OFFSET, b"..", up[0] if up else ROOT_INODE)][offset:]
        after_id = max(offset - DOTDOT_OFFSET, 0)
        while True:
            page = self.meta.listing_after(ino, after_id, READDIR_PAGE)
            if not page:
                return
            if self.files.any_open():
                page = [self.files.listing_row(row, self._inode(row[Row.INO]))
                        if self.files.is_open(row[Row.INO]) else row for row in page]
            yield [(row[Row.ENTRY_ID] + DOTDOT_OFFSET,) + row[1:] for row in page]
            if len(page) < READDIR_PAGE:
                return
            after_id = page[-1][Row.ENTRY_ID]

    def _dot_row(self, offset: int, name: bytes, ino: int) -> ListingRow:
        a = self.files.attr(self._inode(ino))
        return (offset, name, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.atime_ns, a.mtime_ns,
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
        d = await self._dir_knowing(parent, name)
        self._writable_area(d)
        self._check_remote_name(d, name)
        if self.meta.lookup(parent, name) is not None:
            raise PosixError(errno.EEXIST)
        return d

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        d = await self._prepare_new_entry(parent, name)
        uid, gid, mode = self._new_child_owner(d, ctx, stat.S_IFDIR | stat.S_IMODE(mode))
        now = clock.now_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=d.remote, nlink=2, marker=1,
                                          attr_gen=1, listed_at=time.time() if d.remote else None,
                                          mtime_ns=now)
            self.meta.add_entry(parent, name, node.ino)
            self.meta.bump(parent, "nlink")
            self._touch_dir(parent, now)
            self._queue(node.ino)
        return self.files.attr(self._inode(node.ino))

    async def rmdir(self, parent: int, name: bytes) -> None:
        d = await self._dir_knowing(parent, name)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise PosixError(errno.ENOENT)
        node = self._inode(ino)
        if not node.is_dir:
            raise PosixError(errno.ENOTDIR)
        if self.paths.is_attach_point(ino):
            raise PosixError(errno.EBUSY, "a remote is attached here")
        self._writable_area(d)
        await self.remote.ensure_listed(node)
        if self.meta.has_children(ino):
            raise PosixError(errno.ENOTEMPTY)
        self._check_immutable(node, deleting=True)
        key = self.paths.key_of(ino, node)
        now = clock.now_ns()
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
    async def create(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> tuple[Opened, Attr]:
        return await self._new_open_file(await self._prepare_new_entry(parent, name), name, mode, ctx)

    async def _new_open_file(self, d: Inode, name: bytes | None, mode: int, ctx: Ctx) -> tuple[Opened, Attr]:
        """A new regular file in `d`, open, its data on the local tier; `name` None: unnamed
        (O_TMPFILE, nlink 0)."""
        uid, gid, mode = self._new_child_owner(d, ctx, stat.S_IFREG | stat.S_IMODE(mode))
        now = clock.now_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=d.remote, has_local=1,
                                          nlink=0 if name is None else 1, content_gen=1, attr_gen=1,
                                          mtime_ns=now)
            fd = self.local.create_open(node.ino)
            try:
                if name is not None:
                    self.meta.add_entry(d.ino, name, node.ino)
                    self._touch_dir(d.ino, now)
            except BaseException:
                os.close(fd)
                raise
        opened = await self.files.open_created(self._inode(node.ino), fd, ctx.uid)
        return opened, self.files.attr(self._inode(node.ino))

    async def tmpfile(self, parent: int, mode: int, ctx: Ctx) -> tuple[Opened, Attr]:
        """O_TMPFILE: an open inode with no name (nlink 0) on the local tier of the directory's
        kind of path. Nothing is uploaded for it; a `link` naming it makes it an ordinary new
        file there, and its last close without a name frees it (a crash leaves an orphan that
        the next start removes, as for a file unlinked while open)."""
        d = self._inode(parent)
        if not d.is_dir:
            raise PosixError(errno.ENOTDIR)
        self._writable_area(d)
        return await self._new_open_file(d, None, mode, ctx)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Attr:
        if stat.S_ISREG(mode):
            opened, attr = await self.create(parent, name, mode, ctx)
            await self.release(opened.fh)
            return attr
        if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise PosixError(errno.EINVAL, f"mknod of file type {stat.S_IFMT(mode):o}")
        d = await self._prepare_new_entry(parent, name)
        uid, gid, mode = self._new_child_owner(d, ctx, mode)
        now = clock.now_ns()
        with self.meta.transaction():
            # on a remote path: an empty object whose metadata holds the mode and rdev (s3fs-fuse's
            # convention), so a mount from an empty local tier makes the same node again
            node = self.meta.create_inode(mode=mode, uid=uid, gid=gid, remote=d.remote, rdev=rdev,
                                          mtime_ns=now, attr_gen=1 if d.remote is not None else 0)
            self.meta.add_entry(parent, name, node.ino)
            self._touch_dir(parent, now)
            if d.remote is not None:
                self._queue(node.ino)
        return self.files.attr(self._inode(node.ino))

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        d = await self._prepare_new_entry(parent, name)
        if len(target) > 4095:
            raise PosixError(errno.ENAMETOOLONG)
        uid, gid, _ = self._new_child_owner(d, ctx, stat.S_IFLNK)
        now = clock.now_ns()
        with self.meta.transaction():
            node = self.meta.create_inode(mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, remote=d.remote,
                                          target=target, size=len(target), attr_gen=1, mtime_ns=now)
            self.meta.add_entry(parent, name, node.ino)
            self._touch_dir(parent, now)
            self._queue(node.ino)
        return self.files.attr(self._inode(node.ino))

    async def readlink(self, ino: int) -> bytes:
        node = self._inode(ino)
        if not node.is_symlink:
            raise PosixError(errno.EINVAL)
        if node.target is not None:
            return node.target
        return await self.remote.read_link_target(node)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        node = self._inode(ino)
        if node.is_dir:
            raise PosixError(errno.EPERM)
        d = await self._prepare_new_entry(new_parent, new_name)
        if node.remote != d.remote:
            raise PosixError(errno.EXDEV,
                             "hard link between a remote and a local-only path or across remotes")
        naming = node.nlink <= 0  # an O_TMPFILE file (linkat) gets its first name: a new file there
        if naming and not self.files.is_open(ino):
            raise PosixError(errno.ENOENT)
        remote_link = node.remote is not None and not naming
        if remote_link:
            # another object, copied server-side from the first; every name's metadata carries the
            # group id (its attributes must be loaded to be written again with it)
            self._check_immutable(node)
            await self.partial.complete(ino)  # (each name's object is whole)
            node = await self.remote.with_metadata(node)
            if node.meta_loaded != META_LOADED:
                raise PosixError(errno.EIO, "the object's metadata could not be read from the remote")
            if self.meta.lookup(new_parent, new_name) is not None:  # (made during the await)
                raise PosixError(errno.EEXIST)
            node = self._inode(ino)
            if node.nlink <= 0:  # unlinked during the await
                raise PosixError(errno.ENOENT)
        now = clock.now_ns()
        with self.meta.transaction():
            if remote_link and node.link_group is None:
                self.meta.update(ino, link_group=uuid.uuid4().hex)
                self.meta.bump(ino, "attr_gen")
                self._queue(ino)  # the names it has: their objects get the group id
            self.meta.add_entry(new_parent, new_name, ino)
            self.meta.bump(ino, "nlink")
            self.meta.update(ino, ctime_ns=now)
            self._touch_dir(new_parent, now)
            if remote_link and (key := self.paths.key_at(new_parent, new_name)):
                self.journal.put(*key)
        if naming:
            await self.files.named(ino)
        return self.files.attr(self._inode(ino))

    async def unlink(self, parent: int, name: bytes) -> None:
        d = await self._dir_knowing(parent, name)
        ino = self.meta.lookup(parent, name)
        if ino is None:
            raise PosixError(errno.ENOENT)
        node = self._inode(ino)
        if node.is_dir:
            raise PosixError(errno.EISDIR)
        self._writable_area(d)
        self._check_immutable(node, deleting=True)
        # every name: the one removed, and a remaining one whose object becomes the file's if the
        # removed one held its bytes (the reconciler copies before it deletes)
        keys = self.paths.keys_of(ino, node)
        now = clock.now_ns()
        with self.meta.transaction():
            self.meta.remove_entry(parent, name)
            self._touch_dir(parent, now)
            self._drop_link(node, now)
            for key in keys:
                self.journal.put(*key)

    def _drop_link(self, node: Inode, now: int) -> None:
        """One directory entry of `node` is gone; free it when it was the last and is not open."""
        self.meta.update(node.ino, nlink=node.nlink - 1, ctime_ns=now)
        if node.nlink - 1 <= 0 and not self.files.is_open(node.ino):
            self._free_inode(node)

    def _free_inode(self, node: Inode) -> None:
        if node.remote is not None and node.remote_key is not None and node.remote_version and \
                self.meta.known_version(node.remote, node.remote_key) not in (None, node.remote_version):
            # an inode another host's version replaced (RemoteView._replace_open), closed at last:
            # the version it read is at no key any more
            self.remote.reader.forget(object_ref(node))
        self.meta.delete_inode(node.ino)
        self.local.discard(node.ino)
        self.partial.forget(node.ino)
        self.dirty.clear(node.ino)
        self.remote.forget_inode(node.ino)
        self.files.forget_inode(node.ino)

    async def open(self, ino: int, flags: int, ctx: Ctx) -> Opened:
        node = self._inode(ino)
        if node.is_dir:
            raise PosixError(errno.EISDIR)
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        fetch_later = False
        if writable:
            self.files.no_cache_readers(ino)
            self._writable_area(node)
            self._check_immutable(node)
            if flags & os.O_TRUNC:
                await self._truncate(node, 0)
            elif not node.has_local and node.remote is not None:
                node = await self.remote.revalidate(node)  # (its reads come from the remote until a write)
                fetch_later = True
            node = self._inode(ino)
        elif not node.has_local and node.remote is not None:
            node = await self.remote.revalidate(node)
            if not node.has_local and node.remote_key is not None:
                self.remote.reader.opened(object_ref(node))  # read_whole objects start downloading
        opened = await self.files.open(node, writable=writable, uid=ctx.uid)
        if fetch_later:
            self.files.fetch_at_first_write(ino)
        if writable and flags & os.O_TRUNC:
            now = self.files.opened_truncated(ino)
            values: dict[str, object] = {"mtime_ns": now, "ctime_ns": now}
            if ctx.uid != 0 and (killed := without_suid(node.mode)) != node.mode:
                values["mode"] = killed  # as truncate(2) by an unprivileged user does
            with self.meta.transaction():
                self.meta.update(ino, **values)
        return opened

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return await self.files.read(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        await self.files.before_write(fh, self._fetch_for_write)
        return await self.files.write(fh, offset, data)

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        if offset < 0 or length <= 0:
            raise PosixError(errno.EINVAL)
        await self.files.before_write(fh, self._fetch_for_write)
        await self.files.fallocate(fh, mode, offset, length)

    async def _fetch_for_write(self, ino: int) -> None:
        """The whole object onto the local tier, at the first write of a file opened without it
        (unless a truncate or another path fetched it meanwhile)."""
        node = self._inode(ino)
        if not node.has_local and node.remote is not None:
            node = await self.remote.with_metadata(node)  # its upload carries the stored attributes
            if self.partial.can_start(node) and not node.has_local:
                self.partial.start(node)  # (the chunks a write reaches are fetched before it lands)
                return
            await self.copies.materialize(node)  # (from the cache when it holds all of it: no download)

    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh, datasync)

    async def release(self, fh: int) -> None:
        ino = self.files.ino_of(fh)
        if not await self.files.release(fh) or ino is None:
            return
        node = self.meta.get(ino)
        if node is not None and node.nlink <= 0:
            with self.meta.transaction():
                self._free_inode(node)

    # ------------------------------------------------------------------------------------------
    # rename
    # ------------------------------------------------------------------------------------------
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int) -> None:
        self._check_name(name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise PosixError(errno.EINVAL)
        d_old = await self._dir_knowing(parent_old, name_old)
        d_new = await self._dir_knowing(parent_new, name_new)
        self._check_remote_name(d_new, name_new)
        ino = self.meta.lookup(parent_old, name_old)
        if ino is None:
            raise PosixError(errno.ENOENT)
        node = self._inode(ino)
        target_ino = self.meta.lookup(parent_new, name_new)
        if target_ino == ino:
            return
        into_remote = None
        out_of_remote: tuple[str | None] | None = None
        if (d_old.remote or None) != (d_new.remote or None):
            if flags & RENAME_EXCHANGE:
                raise PosixError(errno.EXDEV, "an exchange between two kinds of path")
            self._writable_area(d_new)
            if d_old.remote is None:
                why = self._refusal_to_move(ino, None, d_new.remote)
                if why is not None:
                    raise PosixError(errno.EXDEV, f"rename into a remote: {why}")
                into_remote = d_new.remote
            elif self._remote_cfg[d_old.remote].immutable:
                raise PosixError(errno.EXDEV, f"remote {d_old.remote!r} is immutable: its objects stay")
            else:
                out_of_remote = (d_new.remote,)
        self._writable_area(d_old)
        if self.paths.is_attach_point(ino) or (target_ino is not None
                                               and self.paths.is_attach_point(target_ino)):
            raise PosixError(errno.EBUSY)
        self._check_immutable(node, deleting=True)
        target = self.meta.get(target_ino) if target_ino is not None else None
        await self._check_rename_target(node, target, flags)
        if d_old.remote is not None:
            if node.is_dir:
                await self.remote.ensure_subtree_listed(ino)
            if target is not None and target.is_dir and flags & RENAME_EXCHANGE:
                await self.remote.ensure_subtree_listed(target.ino)
        if not node.is_dir:
            await self.remote.with_metadata(node)  # the copy at the new key carries the stored attributes
        await self._complete_partial_under(node)
        if out_of_remote is not None:
            await self._load_for_departure(ino)
        # re-read everything after the awaits above
        if (self.meta.lookup(parent_old, name_old) != ino
                or self.meta.lookup(parent_new, name_new) != target_ino):
            raise PosixError(errno.EAGAIN, "the directory changed during the rename; try again")
        if out_of_remote is not None and (why := self._refusal_to_move(ino, d_old.remote, out_of_remote[0])):
            raise PosixError(errno.EXDEV, f"rename out of a remote: {why}")
        node = self._inode(ino)
        target = self.meta.get(target_ino) if target_ino is not None else None
        with self.meta.transaction():
            departed = self.renames.apply(parent_old, name_old, parent_new, name_new, node, target,
                                          exchange=bool(flags & RENAME_EXCHANGE), into_remote=into_remote,
                                          out_of_remote=out_of_remote)
        if departed:
            self.departures.started()

    async def _complete_partial_under(self, node: Inode) -> None:
        """A file being renamed (or any below a directory being renamed) that holds only some
        chunks gets the others first: they are read from the object at its old key, which the
        rename deletes."""
        if self.partial.is_partial(node.ino):
            await self.partial.complete(node.ino)
        elif node.is_dir and node.remote is not None and (key := self.paths.key_of(node.ino, node)):
            prefix = key[1].rstrip("/") + "/" if key[1] else ""
            for ino in self.partial.under(node.remote, prefix):
                await self.partial.complete(ino)

    def _refusal_to_move(self, ino: int, source: str | None, dest: str | None) -> str | None:
        """Why `ino` (a file or tree of remote `source`, None: a local-only path) cannot move to `dest`."""
        if dest is None:
            return self.renames.refusal_to_move_in(ino, lambda n: True, from_remote=source)
        return self.renames.refusal_to_move_in(
            ino, lambda n: self._xattrs_over(dest, self.meta.xattrs(n.ino)) is None, from_remote=source)

    async def _load_for_departure(self, ino: int) -> None:
        """What a file or tree leaving its remote must carry from its objects: every entry's stored
        attributes (one HEAD each, or its directory's index) and every symlink's target."""
        for node, _ in list(self.paths.subtree(ino)):
            if node.meta_loaded != META_LOADED and node.remote_key is not None:
                node = await self.remote.with_metadata(node)
            if node.is_symlink and node.target is None and node.remote_key is not None:
                await self.remote.read_link_target(node)

    async def _check_rename_target(self, node: Inode, target: Inode | None, flags: int) -> None:
        if flags & RENAME_NOREPLACE and target is not None:
            raise PosixError(errno.EEXIST)
        if flags & RENAME_EXCHANGE and target is None:
            raise PosixError(errno.ENOENT)
        if target is not None and not flags & RENAME_EXCHANGE:
            if node.is_dir and not target.is_dir:
                raise PosixError(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise PosixError(errno.EISDIR)
            if target.is_dir:
                await self.remote.ensure_listed(target)
                if self.meta.has_children(target.ino):
                    raise PosixError(errno.ENOTEMPTY)
            self._check_immutable(target, deleting=True)

    # ------------------------------------------------------------------------------------------
    # the rest of the kernel's calls, and what the control socket asks
    # ------------------------------------------------------------------------------------------
    def statfs(self) -> FsStats:
        st = os.statvfs(self.local.root)
        return FsStats(block_size=st.f_frsize, blocks=st.f_blocks, blocks_free=st.f_bfree,
                       blocks_avail=st.f_bavail, files=max(st.f_files, 1 << 20),
                       files_free=max(st.f_ffree, 1 << 19), name_max=NAME_MAX)

    # ------------------------------------------------------------------------------------------
    # extended attributes: `user.*` stored in meta.db (and, on remote paths, in the object's
    # metadata, sent like a chmod); `user.mountd.*` read-only (Introspection); others ENOTSUP
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _is_user_xattr(name: str) -> bool:
        return name.startswith("user.") and not name.startswith(MOUNTD_XATTR_PREFIX)

    async def getxattr(self, ino: int, name: str) -> bytes:
        if not self._is_user_xattr(name):
            return await self.introspect.getxattr(ino, name)
        await self.remote.with_metadata(self._inode(ino))  # a remote object's attributes: one HEAD
        value = self.meta.xattr_get(ino, os.fsencode(name))
        if value is None:
            raise PosixError(errno.ENODATA)
        return value

    async def listxattr(self, ino: int) -> list[str]:
        """The stored `user.*` names only. The read-only `user.mountd.*` ones are read by name and
        not listed: `cp -a`, `rsync -X` and `tar --xattrs` copy every listed name, and would carry
        a file's mountd status onto other disks (or, into the mount, try to remove it)."""
        await self.remote.with_metadata(self._inode(ino))
        return [os.fsdecode(n) for n in self.meta.xattrs(ino)]

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        """XATTR_CREATE and XATTR_REPLACE are checked by pyfuse3 (a getxattr first)."""
        if not self._is_user_xattr(name):
            self.introspect.setxattr(ino, name)  # EPERM for user.mountd.*, ENOTSUP for the others
        node = await self._xattr_target(ino)
        if len(value) > XATTR_SIZE_MAX:
            raise PosixError(errno.E2BIG, f"a value of {len(value)} bytes (at most {XATTR_SIZE_MAX})")
        xattrs = self.meta.xattrs(ino)
        xattrs[os.fsencode(name)] = value
        self._check_xattr_room(node, xattrs)
        self._xattrs_changed(node, xattrs)

    async def removexattr(self, ino: int, name: str) -> None:
        if not self._is_user_xattr(name):
            self.introspect.setxattr(ino, name)
        node = await self._xattr_target(ino)
        xattrs = self.meta.xattrs(ino)
        if xattrs.pop(os.fsencode(name), None) is None:
            raise PosixError(errno.ENODATA)
        self._xattrs_changed(node, xattrs)

    async def _xattr_target(self, ino: int) -> Inode:
        """An inode whose user attributes may change: with those its object holds loaded first."""
        node = await self.remote.with_metadata(self._inode(ino))
        if not (node.is_reg or node.is_dir):
            raise PosixError(errno.EPERM, "user extended attributes exist on files and directories only")
        self._writable_area(node)
        self._check_immutable(node)  # they live in the object's metadata
        if node.meta_loaded != META_LOADED:  # the HEAD failed: a write now would drop the attributes it holds
            raise PosixError(errno.EIO, "the object's metadata could not be read from the remote")
        return node

    def _check_xattr_room(self, node: Inode, xattrs: dict[bytes, bytes]) -> None:
        """E2BIG now, never a refused upload later: on a remote path the attributes must fit in
        what the store allows an object's metadata to hold; on a local-only path their names in
        one listxattr answer (64 KiB, as Linux's XATTR_LIST_MAX)."""
        if node.remote is None:
            if sum(len(n) + 1 for n in xattrs) > XATTR_SIZE_MAX - 1024:  # (and the user.mountd.* names)
                raise PosixError(errno.E2BIG, "the names of a file's attributes take at most 64 KiB")
            return
        if (over := self._xattrs_over(node.remote, xattrs)) is not None:
            raise PosixError(errno.E2BIG, f"remote {node.remote!r} keeps at most {over[0]} bytes of extended "
                                          f"attributes per object ({over[1]} needed)")

    def _xattrs_over(self, remote: str, xattrs: dict[bytes, bytes]) -> tuple[int, int] | None:
        """(room, needed) when `xattrs` do not fit in an object's metadata on `remote`."""
        room = xattr_room(self._remote_cfg[remote].scheme)
        need = len(encode_xattrs(xattrs)) if xattrs and room is not None else 0
        return (room, need) if room is not None and need > room else None

    def _xattrs_changed(self, node: Inode, xattrs: dict[bytes, bytes]) -> None:
        """Store them; ctime changes; on a remote path the object's metadata is sent again (as after
        a chmod: attr_gen, and a directory gets a marker to hold them)."""
        with self.meta.transaction():
            self.meta.xattrs_replace(node.ino, xattrs)
            self.meta.update(node.ino, ctime_ns=clock.now_ns())
            if node.remote is not None and not self.paths.is_attach_point(node.ino):  # (it has no object)
                self.meta.bump(node.ino, "attr_gen")
                if node.is_dir:
                    self.meta.update(node.ino, marker=1)
                self._queue(node.ino)

    async def remote_files_under(self, path: str) -> list[ObjectRef]:
        """Every remote file at or below a mount path whose bytes are not on the local tier."""
        ino = ROOT_INODE
        for part in (p for p in path.split("/") if p):
            ino = (await self.lookup(ino, part.encode("utf-8", "surrogateescape"))).ino
        return [object_ref(node) for node in await self.remote.objects_under(self._inode(ino))]

    def statistics(self) -> dict[str, int]:
        s, c = self.remote.stats, self.copies.stats
        return {"listings": s.listings, "listing_errors": s.listing_errors, "heads": s.heads,
                "materialized": c.materialized, "listings_ahead": s.listings_ahead, "adopted": c.adopted,
                "links_joined": s.links_joined, "materialized_from_cache": c.materialized_from_cache,
                "skipped_keys": s.skipped_keys, **self.partial.statistics(), **self.files.statistics()}
