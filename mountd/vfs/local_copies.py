"""`LocalCopies`: whole local copies of remote files, made before a change and given up after it.

A remote file that is changed in place (and is not edited part by part: vfs/partial.py), or that
moves out of its remote, is fetched whole onto the local tier first (`materialize`): from the
cache when it holds all of the version, else downloaded. After its upload, the clean local copy
is handed to the cache (`adopt_uploaded`), so the next change starts from there instead of from a
download. It owns the fetches in progress (one per inode) and their counters; what is known of
the remote (metadata, freshness) stays `RemoteView`'s, which it asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from mountd.backend import ObjectInfo, ObjectStore
from mountd.cache import RemoteReader
from mountd.errors import RemoteError, VersionMismatch
from mountd.hashing import sha256_file
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.vfs.namespace import object_ref
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap
from mountd.vfs.remote_calls import RemoteCalls
from mountd.vfs.remote_view import RemoteView
from mountd.writeback.backpressure import DirtyBytes

CACHE_COPY_BLOCK = 8 << 20  # bytes read from the cache per step when a file goes onto the local tier


@dataclass(slots=True)
class _Stats:
    materialized: int = 0
    materialized_from_cache: int = 0  # files put on the local tier from the cache, with no download
    adopted: int = 0


class LocalCopies:
    def __init__(self, meta: MetaStore, paths: PathMap, stores: Mapping[str, ObjectStore],
                 reader: RemoteReader, local: LocalTier, dirty: DirtyBytes, remote: RemoteCalls,
                 view: RemoteView, *, is_open: Callable[[int], bool]) -> None:
        self.meta = meta
        self.paths = paths
        self.stores = stores
        self.reader = reader
        self.local = local
        self.dirty = dirty
        self.remote = remote
        self.view = view  # (the inode's stored attributes; that its version is confirmed)
        self._is_open = is_open
        self._materializing: dict[int, trio.Event] = {}  # files being fetched whole (`materialize`)
        self.stats = _Stats()

    async def materialize(self, node: Inode, *, exact: bool = False) -> None:
        """Fetch a remote file whole onto the local tier before it is changed in place (or, for a
        file moved out of its remote, to keep it). One fetch per inode at a time: a first write
        and the departure of a file both ask, and the second waits for the first. `exact`: the
        version the inode knows, or VersionMismatch (a file departing from a key that is being
        overwritten gets its bytes from where they were saved, at the next try)."""
        while (fetching := self._materializing.get(node.ino)) is not None:
            await fetching.wait()
        fresh = self.meta.get(node.ino)
        if fresh is None or fresh.has_local:
            return
        done = self._materializing[node.ino] = trio.Event()
        try:
            await self._materialize(fresh, exact=exact)
        finally:
            del self._materializing[node.ino]
            done.set()

    async def _materialize(self, node: Inode, *, exact: bool) -> None:
        node = await self.view.with_metadata(node)  # its upload carries the stored mode, owner and mtime
        assert node.remote is not None and node.remote_key is not None
        remote, store, key = node.remote, self.stores[node.remote], node.remote_key
        expected = node.remote_version if exact else None
        if not (node.remote_version and await self._materialize_from_cache(node)):
            await self._download_whole(node, remote, store, key, expected)
        await self._learn_sha256(node.ino)

    async def _download_whole(self, node: Inode, remote: str, store: ObjectStore, key: str,
                              expected: str | None) -> None:
        def fetch() -> ObjectInfo:
            box: list[ObjectInfo] = []

            def into(tmp: Path) -> None:
                info = store.download(key, tmp)
                if expected and info.version != expected:  # (checked before the file takes its place)
                    raise VersionMismatch(remote, f"{key} changed while it was fetched ({expected} before, "
                                                  f"{info.version} now)")
                box.append(info)

            self.local.materialize_from(node.ino, into)
            return box[0]

        info = await self.remote.call(store, fetch, timeout=self.remote.transfer_timeout(node.size),
                                      what=f"download of {key}")
        self.stats.materialized += 1
        fresh = self.meta.get(node.ino)
        values: dict[str, object] = {"has_local": 1, "size": self.local.size_of(node.ino)}
        if fresh is not None and fresh.remote_key == key:  # (not moved to where its bytes were saved)
            values["remote_version"] = info.version
        with self.meta.transaction():
            self.meta.update(node.ino, **values)

    async def _learn_sha256(self, ino: int) -> None:
        """An object another tool wrote has no sha256 in its metadata: the file just fetched (from
        the remote or the cache) gives it, so that an append to it is known for one at its upload
        and sends only the new bytes."""
        node = self.meta.get(ino)
        if node is None or node.sha256 is not None:
            return
        sha = await trio.to_thread.run_sync(sha256_file, self.local.path_for(ino))
        fresh = self.meta.get(ino)
        if fresh is not None and fresh.sha256 is None and not fresh.content_dirty:
            with self.meta.transaction():
                self.meta.update(ino, sha256=sha)

    async def _materialize_from_cache(self, node: Inode) -> bool:
        """The file onto the local tier from the cache, when the cache holds all of its version
        (a file uploaded from here is handed to the cache, so the next append or edit of it
        starts from there, not from a download). False when it does not."""
        ref = object_ref(node)
        if ref.size == 0 or self.reader.describe(ref)[1] < ref.size:
            return False
        tmp = self.local.tmp / f"{node.ino:x}.from-cache"
        out = await trio.to_thread.run_sync(open, tmp, "wb")
        offset = 0
        try:
            while offset < ref.size:
                try:
                    data = await self.reader.read(ref, offset, min(CACHE_COPY_BLOCK, ref.size - offset))
                except RemoteError:
                    return False  # (a chunk went meanwhile, and its fetch failed)
                if not data:
                    return False
                await trio.to_thread.run_sync(out.write, data)
                offset += len(data)
        finally:
            out.close()
            if offset < ref.size:
                tmp.unlink(missing_ok=True)
        os.replace(tmp, self.local.path_for(node.ino))
        self.stats.materialized_from_cache += 1
        with self.meta.transaction():
            self.meta.update(node.ino, has_local=1, size=ref.size)
        return True

    async def adopt_uploaded(self, ino: int, content_gen: int, *,
                             keep_pages: Callable[[int, str], None], partial: PartialFiles) -> bool:
        """Hand the local copy of a file that is now clean in its remote over to the cache (one
        that holds only some chunks, vfs/partial.py, is dropped instead: the cache takes whole
        objects).

        The inode is marked remote-backed and its file renamed out of the local tier in one step
        (no await in between), so a reader sees one or the other, never neither. Files that are
        open, changed since, or not clean stay where they are. `keep_pages(ino, version)` tells
        the open-file state that the kernel's pages of the inode are those of `version`."""
        node = self.meta.get(ino)
        if (node is None or not node.is_reg or not node.has_local or node.content_gen != content_gen
                or node.content_dirty or node.remote is None or node.remote_key is None
                or not node.remote_version or self._is_open(ino)):
            return False
        if (node.remote, node.remote_key) not in self.paths.keys_of(ino, node):
            return False
        if partial.is_partial(ino):
            with self.meta.transaction():
                self.meta.update(ino, has_local=0)
                partial.drop(ino)
            self.local.discard(ino)
            self.dirty.clear(ino)
            keep_pages(ino, node.remote_version)
            self.view.confirmed(ino)
            return True
        handoff = self.local.tmp / f"{ino:x}.adopt"
        # the db first: a crash between the two leaves a stray local file, never a missing one
        with self.meta.transaction():
            self.meta.update(ino, has_local=0)
        try:
            os.rename(self.local.path_for(ino), handoff)
        except FileNotFoundError:
            return False
        self.dirty.clear(ino)
        keep_pages(ino, node.remote_version)  # same bytes: the kernel's pages stay valid
        self.view.confirmed(ino)
        fresh = self.meta.get(ino) or node
        await self.reader.adopt_file(object_ref(fresh), handoff)
        self.stats.adopted += 1
        return True
