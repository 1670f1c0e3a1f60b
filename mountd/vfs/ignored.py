"""`IgnoredPaths`: which inodes under a remote stay local-only, by `writeback.ignore` and `.mountdignore`.

It finds the `.mountdignore` files that govern a path in the namespace and hands their text to
`IgnoreRules` (which parses and caches it by a version stamp). Reading a `.mountdignore` is file
I/O, so it happens in a worker thread (local copy) or through the read path (remote copy), never
on the trio thread; once parsed, a decision is quick and made on the trio thread.
"""

from __future__ import annotations

import trio

from mountd.cache import RemoteReader
from mountd.local import LocalTier
from mountd.meta import Inode, MetaStore
from mountd.vfs.namespace import object_ref
from mountd.vfs.paths import PathMap
from mountd.writeback.ignore import IGNORE_FILE, IgnoreRules

IGNORE_FILE_MAX = 1 << 20  # bytes of a .mountdignore that count


def _read_head(path: object) -> bytes:
    with open(path, "rb") as fp:  # type: ignore[call-overload]
        return fp.read(IGNORE_FILE_MAX)  # type: ignore[no-any-return]


class IgnoredPaths:
    def __init__(self, rules: IgnoreRules, meta: MetaStore, paths: PathMap, local: LocalTier,
                 reader: RemoteReader) -> None:
        self.rules = rules
        self.meta = meta
        self.paths = paths
        self.local = local
        self.reader = reader

    @staticmethod
    def stamp(f: Inode) -> tuple[int, str | None, int]:
        """What identifies one version of a `.mountdignore`'s content."""
        return (f.content_gen, f.remote_version, f.size)

    def restamp(self, ino: int, old: Inode, new: Inode) -> None:
        """An upload recorded the remote version of unchanged bytes: the parsed rules stay valid."""
        self.rules.restamp(ino, self.stamp(old), self.stamp(new))

    def _ignore_files(self, remote: str, parts: list[str]) -> list[tuple[int, Inode]]:
        """(depth below the attach point, inode) of each `.mountdignore` in the path's directories."""
        found: list[tuple[int, Inode]] = []
        dir_ino = self.paths.attach_ino(remote)
        name = IGNORE_FILE.encode()
        for depth in range(len(parts)):
            if dir_ino is None:
                break
            f = self.meta.lookup(dir_ino, name)
            node = self.meta.get(f) if f is not None else None
            if node is not None and node.is_reg:
                found.append((depth, node))
            if depth + 1 < len(parts):  # (the last part is the path itself, not a directory above it)
                dir_ino = self.meta.lookup(dir_ino, parts[depth].encode("utf-8", "surrogateescape"))
        return found

    async def is_ignored(self, node: Inode, key: tuple[str, str] | None = None) -> bool:
        """Whether `node` is kept local-only (no network; a local `.mountdignore` is read in a thread).
        `key`: its (remote, key) when the caller has it (the write-back resolved the node from it).

        A `.mountdignore` that exists only in the remote counts once `load_remote_files` read it."""
        key = key or self.paths.key_of(node.ino, node)
        if key is None:
            return False
        parts = [p for p in key[1].split("/") if p]
        specs = []
        for depth, f in self._ignore_files(key[0], parts):
            spec = self.rules.cached_spec(f.ino, self.stamp(f))
            if spec is None and f.has_local and self.local.exists(f.ino):
                try:
                    text = await trio.to_thread.run_sync(_read_head, self.local.path_for(f.ino))
                except FileNotFoundError:  # replaced meanwhile: its new version is read next time
                    continue
                spec = self.rules.spec_for(f.ino, self.stamp(f), text)
            if spec is not None:
                specs.append((depth, spec))
        return self.rules.matches(parts, node.is_dir, specs)

    async def load_remote_files(self, remote: str, key: str) -> bool:
        """Read the remote-only `.mountdignore` files that govern `key` (raises RemoteError);
        whether it read any (it then waited, and the namespace may have changed meanwhile)."""
        parts = [p for p in key.split("/") if p]
        read = False
        for _, f in self._ignore_files(remote, parts):
            stamp = self.stamp(f)
            if f.has_local or f.remote_key is None or self.rules.cached_spec(f.ino, stamp) is not None:
                continue
            text = await self.reader.read(object_ref(f), 0, min(f.size, IGNORE_FILE_MAX))
            self.rules.spec_for(f.ino, stamp, text)
            read = True
        return read
