"""`Introspection`: what a file's `user.mountd.*` extended attributes say about it.

It owns no state: it reads the namespace, the journal, the uploads in flight and the read path,
and answers `getxattr`/`listxattr` with the file's state (local, dirty, uploading, clean, conflict,
error),
its remote URL and version, its sha256, and where its bytes are (local tier, a cache tier, and how
much of it is cached). These attributes are read-only; the namespaces not stored at all (security,
system, trusted) are refused here too. Other `user.*` names are the Filesystem's (meta.db).
"""

from __future__ import annotations

import errno
from collections.abc import Container, Mapping
from typing import NoReturn

from mountd.cache import RemoteReader
from mountd.config import RemoteConfig
from mountd.errors import PosixError
from mountd.meta import Inode, MetaStore
from mountd.vfs.handles import OpenFiles
from mountd.vfs.ignored import IgnoredPaths
from mountd.vfs.namespace import object_ref
from mountd.vfs.partial import PartialFiles
from mountd.vfs.paths import PathMap

XATTR_PREFIX = "user.mountd."


class Introspection:
    def __init__(self, remotes: Mapping[str, RemoteConfig], meta: MetaStore, paths: PathMap, files: OpenFiles,
                 ignored: IgnoredPaths, reader: RemoteReader, uploading: Container[tuple[str, str]],
                 partial: PartialFiles) -> None:
        self.remotes = remotes
        self.partial = partial
        self.meta = meta
        self.paths = paths
        self.files = files
        self.ignored = ignored
        self.reader = reader
        self.uploading = uploading  # (remote, key) the uploader is applying now

    def _inode(self, ino: int) -> Inode:
        node = self.meta.get(ino)
        if node is None:
            raise PosixError(errno.ENOENT)
        return node

    async def file_state(self, node: Inode) -> str:
        """local, dirty, uploading, clean, conflict or error: what `user.mountd.state` shows."""
        if node.remote is None:
            return "local"
        key = self.paths.key_of(node.ino, node)
        if key is None or await self.ignored.is_ignored(node):
            return "local"
        entry = self.meta.journal_get(*key)
        if self.meta.conflict_of_copy(*key) is not None or (entry is not None and
                                                            (entry.last_error or "").startswith("conflict:")):
            return "conflict"  # a conflict copy, or a file another host changed first (on_conflict = fail)
        if entry is not None and entry.last_error:
            return "error"
        if key in self.uploading:
            return "uploading"
        if node.content_dirty or node.attrs_dirty or entry is not None:
            return "dirty"
        return "clean"

    async def xattrs(self, ino: int) -> dict[str, bytes]:
        node = self._inode(ino)
        out = {
            "state": (await self.file_state(node)).encode(),
            "size": str(self.files.attr(node).size).encode(),
        }
        node = self._inode(ino)  # the state may have read a .mountdignore meanwhile
        if node.remote is not None:
            cfg = self.remotes[node.remote]
            key = self.paths.key_of(ino, node)
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
            tier, cached = "local", self.files.attr(node).size
            if self.partial.is_partial(ino):  # (a large file edited in place: its parts written)
                out["local"] = b"partial"
                cached = self.partial.local_bytes(ino, cached)
            elif not node.has_local and node.remote_key is not None:
                tier, cached = self.reader.describe(object_ref(node))
            out["tier"], out["cached_bytes"] = tier.encode(), str(cached).encode()
        return {XATTR_PREFIX + k: v for k, v in out.items()}

    async def getxattr(self, ino: int, name: str) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            # `ls -l` asks for security.selinux and system.posix_acl_access on every entry. ENOTSUP
            # for the namespaces we do not store (security, system, trusted) tells it, as ext4
            # mounted without ACLs does, that the file system lacks them, and it stops asking for
            # the other entries of the device; ENODATA would cost two round trips per entry.
            self._inode(ino)
            raise PosixError(errno.ENODATA if name.startswith("user.") else errno.ENOTSUP)
        attrs = await self.xattrs(ino)
        if name not in attrs:
            raise PosixError(errno.ENODATA)
        return attrs[name]

    def setxattr(self, ino: int, name: str) -> NoReturn:
        """A set or remove of a name not stored by the Filesystem (`user.*` is, the rest is not)."""
        self._inode(ino)
        if name.startswith(XATTR_PREFIX):
            raise PosixError(errno.EPERM, "user.mountd.* attributes are read-only")
        raise PosixError(errno.ENOTSUP)
