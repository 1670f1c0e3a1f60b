"""`RemoteView`: what the namespace knows of remote objects, and how it learns more.

It owns the freshness of that knowledge: when each directory was listed (and listings in flight
or recently failed), when each file's version was last confirmed (`checked`), and the background
metadata pass that HEADs listed objects for their POSIX attributes after a readdir. It merges a
listing into the metadata db without dropping anything that is not in the remote yet (local
content, dirty attributes, a pending journal row, an open handle), and revalidates a file's
version before it is opened. (Whole local copies of remote files, fetched before a change and
handed to the cache after an upload, are `LocalCopies`' in local_copies.py.)

Every remote call goes through `RemoteCalls` (a worker thread and a deadline). After each await
what is used is read again from the db: another request may have changed it meanwhile.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from mountd.backend import LIST_PAGE, DirListing, ListingPage, ObjectInfo, ObjectStore
from mountd.cache import RemoteReader
from mountd.config import RepoConfig
from mountd.errors import ObjectNotFound, PosixError, RemoteError, RemoteUnavailable
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.meta.store import META_DEFAULTS, META_FROM_LISTING, META_LOADED, ListedFile
from mountd.vfs.dir_index import DirIndexes, IndexEntry
from mountd.vfs.kernel import Kernel
from mountd.vfs.namespace import (
    ATTRS_DIR,
    HIDDEN_AT_ROOT,
    META_MODE,
    META_SHA256,
    attrs_from_metadata,
    invalid_name_reason,
    object_ref,
    xattrs_from_metadata,
)
from mountd.vfs.paths import PathMap
from mountd.vfs.remote_calls import RemoteCalls
from mountd.writeback.backpressure import DirtyBytes

log = logging.getLogger(__name__)

LISTING_RETRY = 5.0  # seconds a directory whose listing failed is served as known before trying again
LISTING_PAGE_TRIES = 3  # tries of one listing page when the remote fails for a moment
ABSENT_NAMES = 10_000  # names known missing (looked up without a listing) kept at most
METADATA_CONCURRENCY = 8  # parallel HEADs of the background metadata pass after a readdir
METADATA_BATCH = 16  # objects one worker of that pass HEADs per trio hand-off and transaction
METADATA_BACKLOG = 10_000  # listed inodes waiting for that pass, at most
INDEX_APPLY_BATCH = 2_000  # entries of a directory index taken in per transaction
INDEX_CACHE_ENTRIES = 300_000  # entries of directory indexes kept in memory, at most
READAHEAD_LISTINGS = 4  # sibling directories listed at once ahead of a walk
FIRST_PAGE_GRACE = 0.05  # seconds a lookup waits for a never-listed directory's first page alone
READ_DIRS = 1_000  # directories whose last readdir is remembered (a stat of an entry may follow)


@dataclass(slots=True, eq=False)
class ListingRun:
    """One directory listing in progress, which every reader of the directory shares."""

    done: trio.Event = field(default_factory=trio.Event)
    progress: trio.Event = field(default_factory=trio.Event)  # set when a page is in the db

    def page_done(self) -> None:
        self.progress.set()
        self.progress = trio.Event()

    def finish(self) -> None:
        self.progress.set()
        self.done.set()


@dataclass(slots=True)
class _Stats:
    listings: int = 0
    listing_pages: int = 0
    lookups: int = 0  # names looked up at the remote without listing their directory
    listing_errors: int = 0
    heads: int = 0
    indexed: int = 0  # objects whose attributes came from their directory's index
    listings_ahead: int = 0  # directories listed ahead of a walk (`walking_into`)
    links_joined: int = 0  # names found to be hard links of an inode known here (their link group)
    skipped_keys: int = 0


class RemoteView:
    def __init__(self, config: RepoConfig, meta: MetaStore, paths: PathMap, stores: Mapping[str, ObjectStore],
                 reader: RemoteReader, local: LocalTier, dirty: DirtyBytes, kernel: Kernel,
                 remote: RemoteCalls, indexes: DirIndexes, *, is_open: Callable[[int], bool],
                 is_writing: Callable[[int], bool],
                 owner: tuple[int, int]) -> None:
        self.config = config
        self.meta = meta
        self.paths = paths
        self.stores = stores
        self.reader = reader
        self.local = local
        self.dirty = dirty
        self.kernel = kernel
        self.remote = remote
        self.indexes = indexes
        self._is_open = is_open  # whether the kernel holds the inode open (OpenFiles.is_open)
        self._is_writing = is_writing  # ... open for writing (OpenFiles.is_open_for_write)
        self._owner = owner
        self._listing_inflight: dict[int, ListingRun] = {}
        # (directory, name) -> when a lookup at the remote found nothing there (for listing_ttl)
        self._absent: OrderedDict[tuple[int, bytes], float] = OrderedDict()
        self._listing_failed_at: dict[int, float] = {}
        self._checked_at: dict[int, float] = {}  # inode -> when its remote version was last confirmed
        self._metadata_backlog: dict[int, None] = {}  # listed inodes the background pass will HEAD, in order
        self._read_dirs: OrderedDict[int, float] = OrderedDict()  # directory -> its last readdir
        self._metadata_running: dict[int, trio.Event] = {}  # inodes it is HEADing now
        self._metadata_workers = 0
        # directory -> (its listed_at when its index was read, the index's entries)
        self._index_cache: OrderedDict[int, tuple[float | None, Mapping[str, IndexEntry]]] = OrderedDict()
        self._index_reading: dict[int, trio.Event] = {}  # directories whose index is being read
        self._walks: OrderedDict[int, int] = OrderedDict()  # directory -> its child opened last
        # directory -> time.time() until which none of its subdirectories needs a listing: a walk
        # of a tree listed already asks the db once, not at each opendir (a scan of the siblings
        # after each: a third of the daemon's time in a warm `find` of 3,000 directories)
        self._walk_fresh_until: dict[int, float] = {}
        self._readahead: set[int] = set()  # directories listed ahead of a walk, maybe still running
        self._roots_with_indexes: set[str] = set()  # remotes whose root listing in progress showed them
        self._nursery: trio.Nursery | None = None
        self._warned_keys: set[tuple[str, str]] = set()
        self.stats = _Stats()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the background metadata pass until cancelled (the daemon's nursery runs this)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def forget_inode(self, ino: int) -> None:
        self._checked_at.pop(ino, None)

    def confirmed(self, ino: int) -> None:
        """The inode's remote version is known to be current now."""
        self._checked_at[ino] = time.monotonic()

    # ------------------------------------------------------------------------------------------
    # attributes from object metadata
    # ------------------------------------------------------------------------------------------
    async def for_stat(self, inode: Inode) -> Inode:
        """`inode` with the attributes a stat shows. On a remote with directory indexes that is
        the index's entry for the object, or else what the listing said (size, Last-Modified, the
        default mode): `ls -l` of a directory costs one GET, not a HEAD per object. Elsewhere
        (file://, whose HEAD is a local stat) the object's own metadata."""
        if inode.meta_loaded == META_FROM_LISTING:
            return inode
        if inode.meta_loaded == META_LOADED or not self.indexes.indexed(inode.remote):
            return await self.with_metadata(inode)
        up = self.meta.parent_of(inode.ino)
        if up is None:
            return await self.with_metadata(inode)
        entries = await self._take_index(up[0])
        fresh = self.meta.get(inode.ino)
        if fresh is not None and fresh.meta_loaded == META_DEFAULTS:
            # an entry of a page listed after the index was read
            with self.meta.transaction():
                self._apply_index_rows([(up[1], inode.ino)], entries)
                if (after := self.meta.get(inode.ino)) is not None and after.meta_loaded == META_DEFAULTS:
                    self.meta.update(inode.ino, meta_loaded=META_FROM_LISTING)
        return self.meta.get(inode.ino) or inode

    async def _take_index(self, dir_ino: int) -> Mapping[str, IndexEntry]:
        """A listed directory's index, read once per listing (and kept, within a bound, for the
        entries of pages that arrive after it); every entry that matches is taken in at once."""
        while (reading := self._index_reading.get(dir_ino)) is not None:
            await reading.wait()
        d = self.meta.get(dir_ino)
        if d is None:
            return {}
        cached = self._index_cache.get(dir_ino)
        if cached is not None and cached[0] == d.listed_at:
            self._index_cache.move_to_end(dir_ino)
            return cached[1]
        key = self.paths.key_of(dir_ino, d)
        if key is None or not self.indexes.indexed(key[0]):
            return {}
        done = self._index_reading[dir_ino] = trio.Event()
        try:
            entries: Mapping[str, IndexEntry] = {}
            await self.indexes.find_out(key[0])
            if self.indexes.may_exist(key[0]):
                try:
                    entries = await self.indexes.read(*key)
                except RemoteError as e:  # the listing's attributes until the next listing
                    log.debug("directory index of %s: %s", key, e)
            if entries:
                rows = self.meta.unloaded_children(dir_ino)
                for start in range(0, len(rows), INDEX_APPLY_BATCH):
                    with self.meta.transaction():
                        self._apply_index_rows(rows[start:start + INDEX_APPLY_BATCH], entries)
                    await trio.sleep(0)  # (a directory may hold a million)
            with self.meta.transaction():  # the others keep their listing attributes: final for stat
                self.meta.mark_from_listing(dir_ino)
            self._keep_index(dir_ino, d.listed_at, entries)
            return entries
        finally:
            del self._index_reading[dir_ino]
            done.set()

    def _keep_index(self, dir_ino: int, listed_at: float | None, entries: Mapping[str, IndexEntry]) -> None:
        self._index_cache.pop(dir_ino, None)
        self._index_cache[dir_ino] = (listed_at, entries)
        total = sum(len(e) for _, e in self._index_cache.values())
        while len(self._index_cache) > 1 and (total > INDEX_CACHE_ENTRIES
                                              or len(self._index_cache) > READ_DIRS):
            _, (_, dropped) = self._index_cache.popitem(last=False)
            total -= len(dropped)

    def _apply_index_rows(self, rows: list[tuple[bytes, int]], entries: Mapping[str, IndexEntry]) -> None:
        """An index entry is taken as a HEAD's answer would be, if the object is still the version
        and size the index's writer stored. Within the caller's transaction."""
        for bname, ino in rows:
            name = bname.decode("utf-8", "surrogateescape")
            if name not in entries and name + "/" not in entries:
                continue
            node = self.meta.get(ino)
            if node is None or node.meta_loaded != META_DEFAULTS or node.remote_key is None:
                continue
            entry = entries.get(name + "/" if node.is_dir else name)
            if entry is None or (not node.is_dir and (
                    entry.version != node.remote_version or entry.size != node.size or node.has_local)):
                continue  # rewritten since (by another tool, or its index update is not written yet)
            info = ObjectInfo(key=node.remote_key, size=entry.size, version=entry.version,
                              mtime_ns=node.mtime_ns, metadata=entry.metadata)
            self.apply_object_info(node, info, confirm=False)
            self.stats.indexed += 1

    async def with_metadata(self, inode: Inode) -> Inode:
        """`inode` with the POSIX attributes its object stores (one HEAD the first time, unless
        its directory's index has them).

        An inode that the background pass is loading now is waited for; one it has not reached yet
        is taken out of its backlog and loaded here at once. The first one asked of a directory
        that was just read (`ls -l`: a readdir, then a stat of every entry) starts the pass on the
        entries after it; a readdir alone (`find`, `ls`) costs no HEAD."""
        if inode.meta_loaded == META_LOADED:
            return inode
        if inode.meta_loaded == META_DEFAULTS and self.indexes.indexed(inode.remote) and (
                up := self.meta.parent_of(inode.ino)) is not None:
            await self._take_index(up[0])
            inode = self.meta.get(inode.ino) or inode
            if inode.meta_loaded == META_LOADED:
                return inode
        running = self._metadata_running.get(inode.ino)
        if running is not None:
            await running.wait()
            inode = self.meta.get(inode.ino) or inode
            if inode.meta_loaded == META_LOADED:
                return inode
        queued = inode.ino in self._metadata_backlog
        self._metadata_backlog.pop(inode.ino, None)
        if not queued and not self.indexes.indexed(inode.remote):
            self._queue_entries_after(inode.ino)  # (when it was, the pass goes on with the entries after it)
        return await self._load_metadata(inode)

    def directory_read(self, ino: int) -> None:
        """A readdir of `ino` was answered: a stat of its entries may follow (see with_metadata)."""
        self._read_dirs[ino] = time.monotonic()
        self._read_dirs.move_to_end(ino)
        while len(self._read_dirs) > READ_DIRS:
            self._read_dirs.popitem(last=False)

    def _queue_entries_after(self, ino: int) -> None:
        up = self.meta.parent_of(ino)
        if up is None:
            return
        read = self._read_dirs.get(up[0])
        if read is None or time.monotonic() - read > self.config.mount.listing_ttl:
            return
        room = METADATA_BACKLOG - len(self._metadata_backlog)
        if room > METADATA_BACKLOG // 2:  # (else the pass is still busy with the batch before)
            self.load_metadata_later(self.meta.unloaded_entries_after(up[0], ino, room))

    def load_metadata_later(self, inos: list[int]) -> None:
        """HEAD these listed inodes in the background, a few at a time, in order (after a readdir:
        `ls -l` asks for every entry next, and one HEAD after the other would be slow)."""
        if self._nursery is None:
            return  # not running (shutting down): getattr loads them one by one
        # bounded: a readdir of a million entries must not queue a million HEADs in memory; the
        # ones left out are loaded by their own getattr
        inos = inos[:max(0, METADATA_BACKLOG - len(self._metadata_backlog))]
        for ino in inos:
            if ino not in self._metadata_running:
                self._metadata_backlog.setdefault(ino)
        while self._metadata_workers < METADATA_CONCURRENCY and self._metadata_backlog:
            self._metadata_workers += 1
            self._nursery.start_soon(self._metadata_worker, name="mountd-metadata-pass")

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
                except RemoteError as e:  # the remote timed out: getattr retries
                    log.debug("background metadata of %d inodes: %s", len(batch), e)
                except Exception:  # a bug must not end the pass
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
        nodes = [n for ino in inos if (n := self.meta.get(ino)) is not None and n.meta_loaded != META_LOADED
                 and n.remote is not None and n.remote_key is not None]
        if not nodes:
            return
        calls = [(self.stores[n.remote or ""], n.remote_key or "") for n in nodes]
        deadline = time.monotonic() + self.remote.timeout
        answers = await self.remote.call(calls[0][0], _head_each, calls, deadline,
                                         what=f"HEAD of {len(calls)} objects")
        with self.meta.transaction():
            for node, answer in zip(nodes, answers, strict=True):
                self._take_head_answer(node, answer)

    async def _load_metadata(self, inode: Inode) -> Inode:
        """HEAD an object seen only in a listing, for its POSIX attributes and sha256."""
        if inode.remote is None or inode.remote_key is None:
            return inode
        store = self.stores[inode.remote]
        try:
            answer: ObjectInfo | RemoteError | None = await self.remote.call(store, store.head,
                                                                             inode.remote_key)
        except RemoteError as e:
            answer = e
        return self._take_head_answer(inode, answer)

    def _take_head_answer(self, inode: Inode, answer: ObjectInfo | RemoteError | None) -> Inode:
        """Store what a HEAD of `inode`'s object said, unless the inode changed meanwhile."""
        if isinstance(answer, ObjectNotFound):
            # no marker (a bare prefix) or the object is gone: keep the defaults, stop asking
            fresh = self.meta.get(inode.ino)
            if (fresh is not None and fresh.remote_key == inode.remote_key
                    and fresh.meta_loaded != META_LOADED):
                with self.meta.transaction():
                    self.meta.update(inode.ino, meta_loaded=META_LOADED)
            return fresh or inode
        if not isinstance(answer, ObjectInfo):  # failed, or not asked before the batch's deadline
            log.debug("HEAD %s failed: %s", inode.remote_key, answer or "out of time")
            return inode
        self.stats.heads += 1
        fresh = self.meta.get(inode.ino)
        if fresh is None or fresh.meta_loaded == META_LOADED or fresh.remote_key != inode.remote_key:
            return fresh or inode
        self.apply_object_info(fresh, answer)
        if fresh.meta_loaded == META_FROM_LISTING:
            self.kernel.invalidate_inode(fresh.ino)  # it cached the listing's attributes as final
        if answer.metadata and META_MODE in answer.metadata and fresh.remote and fresh.remote_key:
            # an object of ours its directory's index does not vouch for (written before the
            # indexes, or its update was lost): put it in, so the next mount needs no HEAD for it
            self.indexes.stored(fresh.remote, fresh.remote_key, answer, answer.metadata)
        return self.meta.get(inode.ino) or fresh

    def apply_object_info(self, inode: Inode, info: ObjectInfo, *, confirm: bool = True) -> None:
        kind = stat.S_IFMT(inode.mode)
        default_mode = self.config.mount.dir_mode if inode.is_dir else self.config.mount.file_mode
        attrs = attrs_from_metadata(info.metadata, default_mode=default_mode, uid=self._owner[0],
                                    gid=self._owner[1], mtime_ns=info.mtime_ns, kind=kind)
        values: dict[str, object] = {}
        if not inode.is_dir:  # a directory takes only the attributes of its marker
            values["remote_version"] = info.version
            if not inode.has_local:
                values["size"] = info.size
        if info.metadata is not None:
            values.update(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns,
                          rdev=attrs.rdev, meta_loaded=1, sha256=info.metadata.get(META_SHA256) or None)
            if inode.meta_loaded != META_LOADED and not inode.attrs_dirty:
                # the listing's Last-Modified (whole seconds on S3) was only a stand-in: atime and
                # ctime restart from the stored mtime, as docs/semantics.md says
                values.update(atime_ns=attrs.mtime_ns, ctime_ns=attrs.mtime_ns)
            if info.metadata.get(META_SHA256):
                self.meta.hash_put(inode.remote or "", info.metadata[META_SHA256], info.key, info.version)
        with self.meta.transaction():
            self.meta.update(inode.ino, **values)
            if info.metadata is not None and not inode.attrs_dirty:  # (changed here: not sent yet)
                self.meta.xattrs_replace(inode.ino, xattrs_from_metadata(info.metadata))
            if attrs.link_group is not None and not inode.is_dir and self._join_link_group(inode.ino,
                                                                                          attrs.link_group):
                return
        if confirm:
            self.confirmed(inode.ino)

    def _join_link_group(self, ino: int, group: str) -> bool:
        """An object whose metadata names a link group: its name becomes another link of the inode
        this mount has for the group's other names, when that inode holds the same bytes (True:
        `ino` is gone, merged). Within the caller's transaction. The version of this name's object
        stays known (`MetaStore.delete_inode` keeps it) for the compare-and-swap of its next write."""
        node = self.meta.get(ino)
        if node is None or node.remote is None or node.link_group == group:
            return False
        member = self.meta.link_group_member(node.remote, group, besides=ino)
        if (member is None or node.nlink != 1 or stat.S_IFMT(member.mode) != stat.S_IFMT(node.mode)
                or node.has_local or node.content_dirty or node.attrs_dirty or self._is_open(ino)
                or member.content_dirty or member.sha256 is None or member.sha256 != node.sha256
                or (up := self.meta.parent_of(ino)) is None):
            self.meta.update(ino, link_group=group)
            return False
        self.meta.set_entry_ino(up[0], up[1], member.ino)
        self.meta.bump(member.ino, "nlink")
        self.forget_inode(ino)
        self.meta.delete_inode(ino)
        self.kernel.invalidate_entry(up[0], up[1])
        self.kernel.invalidate_inode(member.ino)
        self.stats.links_joined += 1
        return True

    # ------------------------------------------------------------------------------------------
    # listings
    # ------------------------------------------------------------------------------------------
    def _listing_fresh(self, d: Inode) -> bool:
        return d.listed_at is not None and time.time() - d.listed_at < self.config.mount.listing_ttl

    async def ensure_listed(self, d: Inode, *, force: bool = False) -> bool:
        """Merge the remote listing of a directory when it is older than listing_ttl; whether the
        directory may have changed meanwhile (its Inode must then be read again). Concurrent
        callers share one listing."""
        if d.remote is None or not d.is_dir:
            return False
        if not force and self._listing_fresh(d):
            return False
        failed = self._listing_failed_at.get(d.ino)
        if (not force and failed is not None and time.monotonic() - failed < LISTING_RETRY
                and d.listed_at is not None):
            return False
        run = self._listing_inflight.get(d.ino)
        if run is not None:
            await run.done.wait()
            return True
        run = self._listing_inflight[d.ino] = ListingRun()
        return await self._run_listing(d, run)

    async def _run_listing(self, d: Inode, run: ListingRun, max_pages: int | None = None) -> bool:
        try:
            return await self._list_pages(d, run, max_pages)
        finally:
            del self._listing_inflight[d.ino]
            run.finish()

    async def _listing_task(self, d: Inode, run: ListingRun, max_pages: int | None = None) -> None:
        try:
            await self._run_listing(d, run, max_pages)
        except Exception:  # a bug must not take the daemon down with it
            log.exception("listing of directory %d failed unexpectedly", d.ino)

    async def prepare_lookup(self, d: Inode, bname: bytes) -> None:
        """Before a lookup of `bname` in `d` reads the db: make it know that name, without
        waiting for a whole directory. A fresh listing answers as it is; a directory listed before
        with fewer entries than a listing page is listed again (one request); one never listed
        gets its first page (one request, which lists a small directory whole), waited for
        FIRST_PAGE_GRACE at most; otherwise (a large directory, or a page slow to come) a name
        the db knows is served as it is (an open asks the remote for its version), and an unknown
        one is asked of the remote alone (`_look_up_name`), its absence remembered for
        listing_ttl."""
        if d.remote is None or not d.is_dir or self._listing_fresh(d):
            return
        if (d.listed_at is not None and d.ino not in self._listing_inflight
                and self.meta.children_up_to(d.ino, LIST_PAGE) < LIST_PAGE):
            await self.ensure_listed(d)  # a directory known to take one page: listed again
            return
        if (d.listed_at is None and d.ino not in self._listing_inflight
                and self.meta.listing_resume(d.ino) is None):
            # never listed: its first page, one request, lists a small directory whole (a loop
            # creating files in it then asks nothing more), and starts a large one
            run = self._listing_inflight[d.ino] = ListingRun()
            if self._nursery is None:
                await self._run_listing(d, run, max_pages=1)
            else:
                # a server may take long for the first page of a huge directory (rclone's serve s3
                # reads and sorts all of it for every page: ~1 s at 100,000): past a short grace,
                # the name is asked alone while the page goes on
                self._nursery.start_soon(self._listing_task, d, run, 1, name=f"mountd-first-page-{d.ino}")
                with trio.move_on_after(FIRST_PAGE_GRACE):
                    await run.done.wait()
            fresh = self.meta.get(d.ino)
            if fresh is None or self._listing_fresh(fresh):
                return
        if self.meta.lookup(d.ino, bname) is not None:
            return
        seen = self._absent.get((d.ino, bname))
        if seen is not None and time.monotonic() - seen < self.config.mount.listing_ttl:
            return
        await self._look_up_name(d, bname)

    async def _look_up_name(self, d: Inode, bname: bytes) -> None:
        """A HEAD of the key and a one-key listing of `key/`, at once: a file, a directory (the
        directory wins, as in a listing), or nothing, in one round trip whatever the size of the
        directory."""
        name = bname.decode("utf-8", "surrogateescape")
        key = self.paths.key_of(d.ino, d)
        if key is None or invalid_name_reason(name) is not None or (not key[1] and name in HIDDEN_AT_ROOT):
            return
        remote, prefix = key
        store = self.stores[remote]
        found: dict[str, object] = {}
        failed: list[RemoteError] = []

        async def head() -> None:
            try:
                found["file"] = await self.remote.call(store, store.head, prefix + name)
            except ObjectNotFound:
                found["file"] = None
            except RemoteError as e:
                failed.append(e)

        async def below() -> None:
            try:
                page = await self.remote.call(store, store.list_page, prefix + name + "/", None, 1)
            except RemoteError as e:
                failed.append(e)
                return
            found["dir"] = bool(page.listing.objects or page.listing.prefixes or page.listing.marker_exists)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            nursery.start_soon(below)
        if failed:
            log.info("looking up %s in remote %r failed, serving what is known: %s",
                     prefix + name, remote, failed[0])
            return
        self.stats.lookups += 1
        fresh = self.meta.get(d.ino)
        if fresh is None or not fresh.is_dir or self.meta.lookup(d.ino, bname) is not None:
            return  # listed or made meanwhile
        info = found.get("file")
        with self.meta.transaction():
            if found.get("dir"):
                node = self.meta.create_inode(mode=stat.S_IFDIR | self.config.mount.dir_mode,
                                              uid=self._owner[0], gid=self._owner[1], remote=remote, nlink=2,
                                              remote_key=prefix + name + "/", meta_loaded=0)
                self.meta.add_entry(d.ino, bname, node.ino)
                self.meta.bump(d.ino, "nlink")
            elif isinstance(info, ObjectInfo):
                self._create_from_listing(d.ino, bname, remote, info)
            else:
                self._absent[(d.ino, bname)] = time.monotonic()
                while len(self._absent) > ABSENT_NAMES:
                    self._absent.popitem(last=False)

    def _forget_absent(self, parent: int | None = None, bname: bytes | None = None) -> None:
        if parent is None:
            self._absent.clear()
        elif bname is not None:
            self._absent.pop((parent, bname), None)
        else:
            for k in [k for k in self._absent if k[0] == parent]:
                del self._absent[k]

    def start_listing(self, d: Inode) -> bool:
        """Start listing a stale directory in the background (a readdir then takes its entries
        page by page, `listing_progress`); True when a listing of it is running."""
        if d.ino in self._listing_inflight:
            return True
        if d.remote is None or not d.is_dir or self._listing_fresh(d) or self._nursery is None:
            return False
        failed = self._listing_failed_at.get(d.ino)
        if failed is not None and time.monotonic() - failed < LISTING_RETRY and d.listed_at is not None:
            return False
        run = self._listing_inflight[d.ino] = ListingRun()
        self._nursery.start_soon(self._listing_task, d, run, name=f"mountd-listing-{d.ino}")
        return True

    def walking_into(self, d: Inode) -> None:
        """An opendir of `d`. When it follows an opendir of an earlier sibling (a walk: `find`,
        `du`, `ls -R`, rsync), the next sibling directories not listed yet are listed ahead, a
        few at a time, so that the walk finds them listed instead of waiting for one listing after
        the other (rclone's client is faster per listing; at 20 ms a request only parallel
        listings help). A single `cd` or `ls` of one directory lists nothing ahead."""
        up = self.meta.parent_of(d.ino)
        if up is None or d.remote is None:
            return
        parent = up[0]
        before = self._walks.pop(parent, None)
        self._walks[parent] = d.ino
        while len(self._walks) > READ_DIRS:
            self._walks.popitem(last=False)
        if before is None or before == d.ino:
            return
        self._readahead = {ino for ino in self._readahead if ino in self._listing_inflight}
        room = READAHEAD_LISTINGS - len(self._readahead)
        now = time.time()
        if room <= 0 or self._walk_fresh_until.get(parent, 0.0) > now:
            return
        ttl = self.config.mount.listing_ttl
        stale = self.meta.stale_dirs_after(parent, d.ino, now - ttl, READAHEAD_LISTINGS * 2)
        if not stale:
            oldest = self.meta.oldest_listing_of_subdirs(parent)
            self._walk_fresh_until[parent] = (oldest if oldest is not None else now) + ttl
            if len(self._walk_fresh_until) > READ_DIRS:
                self._walk_fresh_until.pop(next(iter(self._walk_fresh_until)))
        for ino in stale:
            node = self.meta.get(ino)
            if node is None or ino in self._listing_inflight:
                continue
            if self.start_listing(node):
                self._readahead.add(ino)
                self.stats.listings_ahead += 1
                room -= 1
                if room == 0:
                    break

    async def listing_progress(self, ino: int) -> bool:
        """Wait for the next page of the directory's listing in progress; False when none is."""
        run = self._listing_inflight.get(ino)
        if run is None:
            return False
        await run.progress.wait()
        return True

    async def _list_pages(self, d: Inode, run: ListingRun, max_pages: int | None = None) -> bool:
        """One listing, a page per request: each page is merged as it comes (a readdir serves its
        entries at once), each request has its own timeout and is tried again when the remote
        fails for a moment; the entries no page showed go at the end. A listing that a failure,
        an unmount or a crash interrupted goes on from its next page (kept in the db with each
        page), not from the start."""
        key = self.paths.key_of(d.ino, d)
        if key is None:
            return False
        remote, prefix = key
        store = self.stores[remote]
        if prefix and self._nursery is not None:
            # whether the remote has indexes at all (once per remote and process, one one-key
            # listing, not awaited: an outage must not hold the listing twice); see _merge_page
            self._nursery.start_soon(self.indexes.find_out, remote)
        resume = self.meta.listing_resume(d.ino)
        token, pages = resume if resume is not None else (None, 0)
        if resume is not None:
            log.info("listing %s of remote %r goes on at page %d", prefix or "/", remote, pages + 1)
        while True:
            try:
                page = await self._list_page(store, prefix, token)
            except RemoteError as e:
                self.stats.listing_errors += 1
                self._listing_failed_at[d.ino] = time.monotonic()
                if resume is not None and pages == resume[1] and not isinstance(e, RemoteUnavailable):
                    with self.meta.transaction():  # the kept token is refused (expired): start again
                        self.meta.listing_forget(d.ino)
                log.warning("listing %s of remote %r failed after %d pages, serving what is known: %s",
                            prefix or "/", remote, pages, e)
                return True
            pages += 1
            fresh = self.meta.get(d.ino)
            if fresh is None or not fresh.is_dir:
                return True
            whole = pages == 1 and page.next_token is None
            self._merge_page(fresh, remote, prefix, page.listing, page.next_token, pages,
                             restart=resume is None and pages == 1, whole=whole)
            token = page.next_token
            if token is None:
                break
            run.page_done()  # (the last page's progress is told when the listing ends)
            if max_pages is not None and pages >= max_pages:
                return True  # (a later listing goes on from the next page)
        self._listing_failed_at.pop(d.ino, None)
        self.stats.listings += 1
        self.stats.listing_pages += pages
        if not whole:
            self._sweep_unlisted(fresh, remote, prefix)
        return True

    async def _list_page(self, store: ObjectStore, prefix: str, token: str | None) -> ListingPage:
        for attempt in range(LISTING_PAGE_TRIES):
            try:
                return await self.remote.call(store, store.list_page, prefix, token)
            except RemoteUnavailable:
                if attempt == LISTING_PAGE_TRIES - 1:
                    raise
                await trio.sleep(0.25 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def ensure_subtree_listed(self, ino: int) -> None:
        """Every directory below `ino` listed (before a directory rename in a remote)."""
        stack = [ino]
        while stack:
            d = self.meta.get(stack.pop())
            if d is None or not d.is_dir:
                continue
            await self.ensure_listed(d)
            for _, child in self.meta.children(d.ino):
                c = self.meta.get(child)
                if c is not None and c.is_dir:
                    stack.append(child)

    def _skip_key(self, remote: str, key: str, reason: str) -> None:
        if (remote, key) not in self._warned_keys:
            self._warned_keys.add((remote, key))
            self.stats.skipped_keys += 1
            log.warning("remote %r: skipping key %r: %s", remote, key, reason)

    def _merge_page(self, d: Inode, remote: str, prefix: str, listing: DirListing, next_token: str | None,
                    pages: int, *, restart: bool, whole: bool) -> None:
        """One page of a listing into the db: new entries made, changed versions taken in, the
        names seen and where the next page starts remembered (for the sweep at the end, and to
        go on after a restart), all in one transaction. Only this page's names are read.
        `restart`: the first page of a listing that does not go on from an earlier one (what an
        earlier one left is forgotten first). `whole`: the first page is the whole listing (most
        directories): the sweep runs in the same transaction on the names in hand, and no name
        is written down (a walk of a tree pays one transaction per directory, not three)."""
        m = self.meta
        pending = m.journal_keys_under(remote, prefix)
        existing = m.children_named(d.ino, [n.encode("utf-8", "surrogateescape") for n in listing.prefixes]
                                    + [o.key[len(prefix):].encode("utf-8", "surrogateescape")
                                       for o in listing.objects])
        seen: set[bytes] = set()
        dir_names = set()
        new_files: list[ListedFile] = []  # made in one go at the end of the page
        default_mode = stat.S_IFREG | self.config.mount.file_mode
        with m.transaction():
            if restart and not whole:
                m.listing_forget(d.ino)
            had_entries = not whole or m.children_up_to(d.ino, 1) > 0
            if not prefix:
                self._note_root_page(remote, ATTRS_DIR in listing.prefixes, last=next_token is None)
            for name in listing.prefixes:
                if not prefix and name in HIDDEN_AT_ROOT:
                    continue  # the change log and the directory indexes (vfs/feed.py, vfs/dir_index.py)
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
                node = m.create_inode(mode=stat.S_IFDIR | self.config.mount.dir_mode, uid=self._owner[0],
                                      gid=self._owner[1], remote=remote, nlink=2, remote_key=child_key,
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
                if ino is None and info.metadata is None:
                    new_files.append((bname, default_mode, *self._owner, info.size, info.mtime_ns, info.key,
                                      info.version))
                    continue
                if ino is None:
                    self._create_from_listing(d.ino, bname, remote, info, confirm=False)
                    continue
                listed = m.get(ino)
                if listed is None or listed.remote != remote or not (listed.is_reg or listed.is_symlink):
                    continue
                if (listed.remote_key == info.key and listed.remote_version != info.version
                        and not listed.has_local):
                    # as a change told by the change log: a new inode (changed in place, an open
                    # reader's next chunk came from the new version, and the kernel could read
                    # the new bytes up to the old size)
                    self._replace_changed(d.ino, bname, listed, info)
                    self.kernel.invalidate_entry(d.ino, bname)
            # in a bucket no mountd wrote, the listing's attributes are final at once, as a first
            # stat would make them (`_take_index`): readdirplus hands them to the kernel for
            # attr_timeout, so `du` or `ls -l` after a listing asks nothing per entry
            m.create_listed_files(d.ino, new_files, remote=remote, meta_loaded=(
                META_FROM_LISTING if self.indexes.known_absent(remote) else META_DEFAULTS))
            if whole:
                unseen = [(b, i) for b, i in m.children(d.ino) if b not in seen] if had_entries else []
                self._sweep_unlisted(d, remote, prefix, unseen=unseen)
            else:
                m.listing_page_done(d.ino, list(seen), next_token, pages)

    def _note_root_page(self, remote: str, has_indexes: bool, *, last: bool) -> None:
        """Whether any directory of `remote` has an index, from its root's listing: where none
        has (a bucket no mountd wrote), a stat reads none (`du` of a tree of 3,000 directories
        would otherwise GET 3,000 missing indexes)."""
        if has_indexes:
            self._roots_with_indexes.add(remote)
            self.indexes.exist(remote)
        elif last and remote not in self._roots_with_indexes:
            self.indexes.none_exist(remote)
        if last:
            self._roots_with_indexes.discard(remote)

    def _sweep_unlisted(self, d: Inode, remote: str, prefix: str, *,
                        unseen: list[tuple[bytes, int]] | None = None) -> None:
        """After the last page: entries the listing did not show are gone from the remote, unless
        they hold something not in it yet. `unseen`: those entries, where the caller knows them
        (a listing of one page, whose names the db does not keep); else read from the db."""
        m = self.meta
        with m.transaction():
            for bname, ino in m.listing_unseen(d.ino) if unseen is None else unseen:
                gone = m.get(ino)
                if gone is None or self._keeps_local_state(
                        gone, remote, prefix + bname.decode("utf-8", "surrogateescape")):
                    continue
                m.remove_entry(d.ino, bname)
                if gone.is_dir:
                    m.bump(d.ino, "nlink", -1)
                if gone.nlink > 1 and not gone.is_dir:
                    m.bump(ino, "nlink", -1)  # a hard link: its other names stay
                    self.kernel.invalidate_inode(ino)
                elif not self._is_open(ino):
                    m.delete_inode(ino)
            m.listing_forget(d.ino)
            m.update(d.ino, listed_at=time.time())

    async def apply_remote_change(self, remote: str, key: str, version: str | None, *,
                                  attrs: bool = False) -> bool:
        """Another host wrote `version` at `key` (None: deleted it), as its change log says: the
        names and inodes this host shows for that key follow now, without waiting for
        listing_ttl, and the kernel forgets what it cached of them. A file with changes of this
        host not yet uploaded is left alone (its compare-and-swap decides), and so is one open
        for writing (checked again at its next open). A file open only for reading is replaced,
        as a rename over it would on a disk: the name gets a new inode, and the open one keeps
        reading the version it opened (its reads are pinned to it) until its last close.
        `attrs`: its metadata alone changed (chmod, utime, setxattr), which may keep the version:
        the attributes are read again and taken in place (the bytes did not change).
        True when something here changed."""
        if key.endswith("/"):
            self.forget_listing(remote, key.rstrip("/"))  # a directory marker: list its parent again
            return True
        node = self.paths.resolve_key(remote, key)
        if node is not None:
            if node.is_dir or node.remote != remote or node.content_dirty or node.attrs_dirty \
                    or self.meta.journal_has(remote, key) or self._is_writing(node.ino):
                self.forget_inode(node.ino)  # its next open asks the remote
                return False
            known = version is not None and node.remote_key == key and node.remote_version == version
            if known and not attrs:
                return False  # known already (our own change, or a listing saw it)
        folder = key.rpartition("/")[0]
        d = self.paths.resolve_key(remote, folder + "/" if folder else "")
        if d is not None and d.is_dir and node is None and d.listed_at is None:
            bname = key.rpartition("/")[2].encode("utf-8", "surrogateescape")
            if (d.ino, bname) in self._absent:  # a lookup found nothing there: look again
                self._forget_absent(d.ino, bname)
                self.kernel.invalidate_entry(d.ino, bname)
                return True
            return False  # never listed here: the first listing or lookup will show it
        if d is None or not d.is_dir:
            return False
        store = self.stores[remote]
        # the entry only says "look at this key": what is there now decides (entries may be old)
        try:
            info: ObjectInfo | None = await self.remote.call(store, store.head, key)
        except ObjectNotFound:
            info = None
        bname = key.rpartition("/")[2].encode("utf-8", "surrogateescape")
        node = self.paths.resolve_key(remote, key)  # again: the HEAD was an await
        with self.meta.transaction():
            if node is not None:
                if node.content_dirty or node.attrs_dirty or self._is_writing(node.ino):
                    return False
                if info is not None and node.remote_key == key and node.remote_version == info.version:
                    if not attrs or info.metadata is None:
                        return False
                    self.apply_object_info(node, info)  # the metadata alone changed: taken in place
                    self.kernel.invalidate_inode(node.ino)
                    return True
                if info is None and not (self._is_open(node.ino) or node.nlink > 1):
                    self.meta.remove_entry(d.ino, bname)
                    self.meta.delete_inode(node.ino)
                    if node.has_local:
                        self.local.discard(node.ino)
                else:
                    self._replace_changed(d.ino, bname, node, info)
            elif info is not None and invalid_name_reason(bname.decode("utf-8", "surrogateescape")) is None:
                self._create_from_listing(d.ino, bname, remote, info)
            else:
                return False
        self.kernel.invalidate_entry(d.ino, bname)
        self.kernel.invalidate_inode(d.ino)
        return True

    def _replace_changed(self, parent: int, bname: bytes, node: Inode, info: ObjectInfo | None) -> None:
        """Another version (`info`; None: deleted) is at the key of the file `node` shows at
        `parent`/`bname`, found by a change-log entry or a listing: the name gets a new inode,
        never a change in place. Open, or with hard links, the old inode stays (unlinked) for its
        readers, or for its other names. Otherwise it goes now: the kernel may still hold its old
        size (the invalidation is queued) and would read the new bytes up to it and zeros past
        (seen under load); naming the old inode it gets ESTALE and looks the name up again.
        Within the caller's transaction."""
        self._replace_open(parent, bname, node, info)
        self.kernel.invalidate_inode(node.ino)  # (its st_nlink, or its pages)
        if self._is_open(node.ino) or node.nlink > 1:
            return
        self.reader.forget(object_ref(node))
        self.forget_inode(node.ino)
        self.meta.delete_inode(node.ino)
        if node.has_local:
            self.local.discard(node.ino)

    def _replace_open(self, parent: int, bname: bytes, node: Inode, info: ObjectInfo | None) -> None:
        """The object of an inode open for reading changed on the remote: the name gets a new
        inode of `info` (none when it was deleted), and the open one, unlinked, keeps its version
        for its readers and goes at its last release. A change in place would let the kernel's
        page cache and the fetches of chunks give one reader bytes of two versions."""
        self.meta.remove_entry(parent, bname)
        self.meta.bump(node.ino, "nlink", -1)
        if info is not None and node.remote is not None:
            self._create_from_listing(parent, bname, node.remote, info)

    def forget_all_listings(self, remote: str) -> int:
        """The change log of `remote` was compacted past what this host read: every directory of
        the remote is listed again when next visited. Returns how many."""
        dirs = self.meta.remote_dirs(remote)
        self._forget_absent()
        with self.meta.transaction():
            for ino in dirs:
                self.meta.update(ino, listed_at=0.0)  # listed before, and stale
        for ino in dirs:
            self.kernel.invalidate_inode(ino)
        return len(dirs)

    def forget_listing(self, remote: str, key: str) -> None:
        """The remote holds something at `key` this host does not show: the directory of `key`
        is listed again at its next lookup or readdir, and the kernel forgets its pages."""
        folder = key.rstrip("/").rpartition("/")[0]
        d = self.paths.resolve_key(remote, folder + "/" if folder else "")
        if d is not None and d.is_dir:
            self._forget_absent(d.ino)
            with self.meta.transaction():
                self.meta.update(d.ino, listed_at=0.0)  # listed before, and stale
            self.kernel.invalidate_inode(d.ino)

    def _keeps_local_state(self, node: Inode, remote: str, key: str) -> bool:
        """An entry missing from a listing stays when it has anything not yet in the remote."""
        if node.remote != remote or self.paths.is_attach_point(node.ino):
            return True
        if node.has_local or node.content_dirty or node.attrs_dirty or self._is_open(node.ino):
            return True
        if node.is_dir:
            return self.meta.has_children(node.ino) or self.meta.journal_has(remote, key + "/")
        return self.meta.journal_has(remote, key)

    def _create_from_listing(self, parent: int, bname: bytes, remote: str, info: ObjectInfo, *,
                             confirm: bool = True) -> None:
        """A new entry for an object a listing, a HEAD or the change log showed; `confirm=False`
        from a listing, whose `listed_at` confirms its entries (no per-entry state in memory)."""
        attrs = attrs_from_metadata(info.metadata, default_mode=self.config.mount.file_mode,
                                    uid=self._owner[0], gid=self._owner[1], mtime_ns=info.mtime_ns,
                                    kind=stat.S_IFREG)
        sha = (info.metadata or {}).get(META_SHA256) or None
        node = self.meta.create_inode(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, remote=remote,
                                      size=info.size, mtime_ns=attrs.mtime_ns, remote_key=info.key,
                                      rdev=attrs.rdev, remote_version=info.version, sha256=sha,
                                      meta_loaded=int(info.metadata is not None))
        self.meta.add_entry(parent, bname, node.ino)
        if xattrs := xattrs_from_metadata(info.metadata):
            self.meta.xattrs_replace(node.ino, xattrs)
        if sha:
            self.meta.hash_put(remote, sha, info.key, info.version)
        if attrs.link_group is not None and self._join_link_group(node.ino, attrs.link_group):
            return
        if confirm:
            self.confirmed(node.ino)

    # ------------------------------------------------------------------------------------------
    # one file's data
    # ------------------------------------------------------------------------------------------
    async def revalidate(self, node: Inode) -> Inode:
        """Check the object's version when what we know of it is older than listing_ttl."""
        checked = self._checked_at.get(node.ino)
        if checked is not None and time.monotonic() - checked < self.config.mount.listing_ttl:
            return node
        up = self.meta.parent_of(node.ino)
        parent = self.meta.get(up[0]) if up else None
        if parent is not None and parent.remote == node.remote and self._listing_fresh(parent):
            return node  # a listing of its directory within listing_ttl showed this version
        assert node.remote is not None and node.remote_key is not None
        store = self.stores[node.remote]
        try:
            info = await self.remote.call(store, store.head, node.remote_key)
        except ObjectNotFound:
            raise PosixError(errno.ENOENT, "the object is gone from the remote") from None
        except RemoteError as e:
            log.info("cannot revalidate %s (%s); serving the known version", node.remote_key, e)
            return node
        fresh = self.meta.get(node.ino)
        if fresh is None or fresh.has_local:
            return fresh or node
        if info.version != fresh.remote_version and self._is_open(fresh.ino):
            self._replace_while_open(fresh, info)
        if info.version != fresh.remote_version:
            self.reader.forget(object_ref(fresh))
            self.kernel.invalidate_inode(fresh.ino)
        self.apply_object_info(fresh, info)
        return self.meta.get(node.ino) or fresh

    def _replace_while_open(self, node: Inode, info: ObjectInfo) -> None:
        """An open of a file that other handles hold open found a new version: the name gets a
        new inode (`_replace_open`) and this open fails with ESTALE, which makes the kernel look
        the path up again (LOOKUP_REVAL) and open the new inode, while the old readers go on."""
        key = node.remote_key
        assert node.remote is not None and key is not None
        folder, _, name = key.rpartition("/")
        d = self.paths.resolve_key(node.remote, folder + "/" if folder else "")
        bname = name.encode("utf-8", "surrogateescape")
        if d is None or self.meta.lookup(d.ino, bname) != node.ino:
            return  # not at its key's name (moved here meanwhile): the old version is served
        with self.meta.transaction():
            self._replace_open(d.ino, bname, node, info)
        self.kernel.invalidate_entry(d.ino, bname)
        raise PosixError(errno.ESTALE, "replaced on the remote while open here; the kernel looks it up again")

    async def read_link_target(self, node: Inode) -> bytes:
        """The target of a symlink known only from a listing: its object's body."""
        assert node.remote is not None and node.remote_key is not None
        store = self.stores[node.remote]
        data = await self.remote.call(store, store.read_range, node.remote_key, 0, max(node.size, 4096))
        with self.meta.transaction():
            self.meta.update(node.ino, target=data, size=len(data))
        return data

    async def objects_under(self, root: Inode) -> list[Inode]:
        """Every remote file at or below `root` whose bytes are not on the local tier (for pins)."""
        out, stack = [], [root.ino]
        while stack:
            node = self.meta.get(stack.pop())
            if node is None:
                continue
            if node.is_dir:
                await self.ensure_listed(node)
                stack.extend(child for _, child in self.meta.children(node.ino))
            elif (node.is_reg and not node.has_local and node.remote is not None
                  and node.remote_key is not None):
                if node.meta_loaded != META_LOADED:
                    node = await self._load_metadata(node)
                out.append(node)
        return out


def _head_each(calls: list[tuple[ObjectStore, str]],
               deadline: float) -> list[ObjectInfo | RemoteError | None]:
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
