"""`WritebackView`: all the reconciler may see and do of the namespace, in one narrow interface.

The reconciler used to hold the whole `Filesystem` and reach into a dozen of its members; this
view lists what it really needs (which inode a key maps to, whether a path is ignored, whether a
file is still being written, where its local bytes are, and the two effects of an upload: the
dirty bytes shrink and the local copy becomes cache). Built from the rooms that own each piece.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from mountd.backend import PatchBase
from mountd.local import LocalTier
from mountd.meta import Inode, PartialCopy
from mountd.vfs.handles import OpenFiles
from mountd.vfs.ignored import IgnoredPaths
from mountd.vfs.local_copies import LocalCopies
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap
from mountd.vfs.remote_view import RemoteView
from mountd.writeback.backpressure import DirtyBytes


class WritebackView:
    def __init__(self, paths: PathMap, ignored: IgnoredPaths, files: OpenFiles, remote: RemoteView,
                 local: LocalTier, dirty: DirtyBytes, partial: PartialFiles, copies: LocalCopies) -> None:
        self._partial = partial
        self._copies = copies
        self._paths = paths
        self._ignored = ignored
        self._files = files
        self._remote = remote
        self._local = local
        self._dirty = dirty

    def resolve_key(self, remote: str, key: str) -> Inode | None:
        """The inode whose path maps to `key` now."""
        return self._paths.resolve_key(remote, key)

    def key_of(self, ino: int, inode: Inode | None = None) -> tuple[str, str] | None:
        return self._paths.key_of(ino, inode)

    def keys_of(self, ino: int, inode: Inode | None = None) -> list[tuple[str, str]]:
        """Every name's key: several for a file with hard links."""
        return self._paths.keys_of(ino, inode)

    async def load_ignore_files(self, remote: str, key: str) -> bool:
        return await self._ignored.load_remote_files(remote, key)

    async def is_ignored(self, node: Inode, key: tuple[str, str] | None = None) -> bool:
        return await self._ignored.is_ignored(node, key)

    def is_open_for_write(self, ino: int) -> bool:
        return self._files.is_open_for_write(ino)

    def local_path(self, ino: int) -> Path:
        return self._local.path_for(ino)

    def not_dirty(self, ino: int) -> None:
        """The inode has nothing left to upload (uploaded, or local-only by the ignore rules)."""
        self._dirty.clear(ino)

    def recorded(self, before: Inode, after: Inode) -> None:
        """An upload's result was recorded: rules parsed from the file stay valid under its new stamp."""
        self._ignored.restamp(after.ino, before, after)

    def forget_listing(self, remote: str, key: str) -> None:
        """Another host's object at `key` must show: list its directory again."""
        self._remote.forget_listing(remote, key)

    async def adopt_uploaded(self, ino: int, content_gen: int) -> bool:
        return await self._copies.adopt_uploaded(ino, content_gen, keep_pages=self._files.keep_pages,
                                                 partial=self._partial)

    # a file that holds only some chunks of its object (vfs/partial.py)
    def partial_of(self, ino: int) -> PartialCopy | None:
        return self._partial.get(ino)

    async def complete_partial(self, ino: int) -> list[tuple[int, int]]:
        """Its missing chunks fetched; the ranges whose version was gone (left zeros)."""
        return await self._partial.complete_or_zero(ino)

    def partial_uploading(self, ino: int) -> AbstractAsyncContextManager[None]:
        return self._partial.uploading(ino)

    async def partial_patch(self, ino: int, size: int) -> PatchBase | None:
        return await self._partial.patch_for_upload(ino, size)

    def partial_uploaded(self, ino: int, key: str, version: str, size: int) -> None:
        self._partial.uploaded(ino, key, version, size)
