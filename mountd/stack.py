"""`build_stack`: every component of one mount below the FUSE layer, wired in one place.

The daemon mounts this stack; the in-process tests build the very same one with a
`DetachedKernel` and call the vfs directly, without root or /dev/fuse. Each component gets its
collaborators through its constructor, in dependency order, so the wiring is this function: no
callback is attached after construction. Nothing here touches the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from mountd.backend import ObjectStore
from mountd.cache import ChunkCache
from mountd.config import RepoConfig
from mountd.local import LocalTier
from mountd.meta import MetaStore
from mountd.vfs.conflicts import ConflictCopies, default_host_id
from mountd.vfs.dir_index import INDEXED_SCHEMES, DirIndexes
from mountd.vfs.feed import ChangeFeed
from mountd.vfs.filesystem import Filesystem
from mountd.vfs.handles import OpenFiles
from mountd.vfs.ignored import IgnoredPaths
from mountd.vfs.introspect import Introspection
from mountd.vfs.kernel import Kernel
from mountd.vfs.local_copies import LocalCopies
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap
from mountd.vfs.reconcile import Reconciler
from mountd.vfs.remote_calls import RemoteCalls
from mountd.vfs.remote_view import RemoteView
from mountd.vfs.writeback_view import WritebackView
from mountd.writeback import Journal, Uploader
from mountd.writeback.backpressure import DirtyBytes
from mountd.writeback.ignore import IgnoreRules
from mountd.writeback.sending import UploadsSending
from mountd.writeback.uploader import TransferSlots


@dataclass
class Stack:
    config: RepoConfig
    meta: MetaStore
    local: LocalTier
    stores: Mapping[str, ObjectStore]
    reader: ChunkCache
    journal: Journal
    fs: Filesystem
    reconciler: Reconciler
    uploader: Uploader
    feed: ChangeFeed
    indexes: DirIndexes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background work of the stack (cache admissions, spares and discards, the metadata
        pass, uploads) until cancelled. The FUSE loop and the control socket are the daemon's."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.reader.run)
            await nursery.start(self.local.run)
            await nursery.start(self.fs.remote.run)
            await nursery.start(self.fs.departures.run)
            # the change logs are caught up with before the first upload (a host back from
            # offline compares its queued changes against the newest versions)
            await nursery.start(self.feed.run)
            nursery.start_soon(self.indexes.run)
            await nursery.start(self.uploader.run)
            task_status.started()

    def close(self) -> None:
        self.reader.close()
        self.meta.close()

    def statistics(self) -> dict[str, Any]:
        return {
            "vfs": self.fs.statistics(),
            "uploader": self.uploader.statistics(),
            "reconciler": dict(self.reconciler.stats),
            "reader": self.reader.statistics(),
            "cache": self.reader.cache_statistics(),
            "meta": self.meta.statistics(),
            "local": self.local.statistics(),
            "dirty": self.fs.dirty.statistics(),
            "feed": self.feed.statistics(),
            "indexes": self.indexes.statistics(),
            "departures": self.fs.departures.statistics(),
            "stores": {name: store.statistics() for name, store in self.stores.items()},
        }


def build_stack(config: RepoConfig, stores: Mapping[str, ObjectStore], kernel: Kernel, *,
                on_fetching: Any = None, activity: Any = None) -> Stack:
    """Open the db, the local tier and the cache, and wire the vfs and write-back over `stores`."""
    meta = MetaStore(config.local_path / "meta.db")
    try:
        local = LocalTier(config.local_path)
        reader = ChunkCache(config, stores, **({"on_fetching": on_fetching} if on_fetching else {}))
    except BaseException:
        meta.close()
        raise
    owner = (config.mount.uid if config.mount.uid is not None else os.getuid(),
             config.mount.gid if config.mount.gid is not None else os.getgid())
    sending = UploadsSending()
    journal = Journal(meta, delay=config.writeback.delay, on_put=sending.key_queued)
    dirty = DirtyBytes(config.local.max_dirty)
    remote_calls = RemoteCalls(config.mount.read_timeout)
    indexes = DirIndexes(stores, remote_calls,
                         indexed=[r.name for r in config.remote if r.scheme in INDEXED_SCHEMES],
                         writable=[r.name for r in config.remote if not r.read_only])
    paths = PathMap(config, meta, owner_uid=owner[0], owner_gid=owner[1])
    ignored = IgnoredPaths(IgnoreRules(config.writeback.ignore), meta, paths, local, reader)
    partial = PartialFiles(meta, local, stores, remote_calls, reader, chunk=config.writeback.multipart_chunk)
    files = OpenFiles(config, meta, paths, local, reader, journal, dirty, ignored, kernel, partial)
    remote = RemoteView(config, meta, paths, stores, reader, local, dirty, kernel, remote_calls, indexes,
                        is_open=files.is_open, is_writing=files.is_open_for_write, owner=owner)
    copies = LocalCopies(meta, paths, stores, reader, local, dirty, remote_calls, remote,
                         is_open=files.is_open)
    host = config.writeback.host or default_host_id()
    conflicts = ConflictCopies(meta, kernel, host=host, file_mode=config.mount.file_mode, owner=owner)
    followed = [r.name for r in config.remote if r.scheme != "links"]
    feed = ChangeFeed(meta, stores, remote, remote_calls, host=host, poll_interval=config.mount.poll_interval,
                      writable=[r.name for r in config.remote if not r.read_only and r.name in followed],
                      followed=followed)
    slots = TransferSlots(config.writeback.concurrency)
    view = WritebackView(paths, ignored, files, remote, local, dirty, partial, copies)
    reconciler = Reconciler(meta, stores, view, journal, remote_calls, sending, conflicts, slots,
                            dedup=config.writeback.dedup, on_conflict=config.writeback.on_conflict,
                            on_remote_change=feed.changed, on_stored=indexes.stored)
    uploader = Uploader(meta, journal, reconciler.apply, slots=slots,
                        retry_initial=config.writeback.retry_initial, retry_max=config.writeback.retry_max,
                        activity=activity, yield_max=config.writeback.yield_max)
    introspect = Introspection({r.name: r for r in config.remote}, meta, paths, files, ignored, reader,
                               uploader.in_flight, partial)
    fs = Filesystem(config, meta, local, journal, dirty, paths, files, remote, introspect, partial, copies)
    fs.bootstrap()
    return Stack(config=config, meta=meta, local=local, stores=stores, reader=reader, journal=journal, fs=fs,
                 reconciler=reconciler, uploader=uploader, feed=feed, indexes=indexes)
