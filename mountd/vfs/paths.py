"""`PathMap`: where each remote is attached, and the object key of an inode's path (and back).

It owns the inodes of the attach points (made at start, never renamed or removed) and answers,
from the metadata db alone, which remote and key an inode's current path maps to, and which
inode a key maps to now. Keys are derived from paths every time, never stored for a path: a
rename of a directory then changes the keys of everything below it in one db change.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from mountd.config import RepoConfig
from mountd.meta import Inode, MetaStore
from mountd.meta.store import ROOT_INODE
from mountd.vfs.namespace import Attachment, attachments_for, key_for


class PathMap:
    def __init__(self, config: RepoConfig, meta: MetaStore, *, owner_uid: int, owner_gid: int) -> None:
        self.meta = meta
        self.attachments = attachments_for(config.remote)
        self._owner = (owner_uid, owner_gid)
        self._attach_ino: dict[str, int] = {}

    def bootstrap(self) -> None:
        """The root and every attach point exist in the db (caller holds a transaction)."""
        m = self.meta
        uid, gid = self._owner
        root_remote = next((a.name for a in self.attachments if not a.parts), None)
        if m.get(ROOT_INODE) is None:
            m.create_inode(ino=ROOT_INODE, mode=stat.S_IFDIR | 0o755, uid=uid, gid=gid, remote=root_remote,
                           nlink=2, remote_key="" if root_remote else None)
        for att in sorted(self.attachments, key=lambda a: len(a.parts)):
            self._attach_ino[att.name] = self._ensure_attach_point(att)

    def _ensure_attach_point(self, att: Attachment) -> int:
        uid, gid = self._owner
        ino = ROOT_INODE
        for depth, part in enumerate(att.parts):
            name = part.encode()
            child = self.meta.lookup(ino, name)
            last = depth == len(att.parts) - 1
            if child is None:
                node = self.meta.create_inode(mode=stat.S_IFDIR | 0o755, uid=uid, gid=gid,
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

    def attach_ino(self, remote: str) -> int | None:
        return self._attach_ino.get(remote)

    def is_attach_point(self, ino: int) -> bool:
        return ino in self._attach_ino.values()

    def attachment(self, remote: str) -> Attachment:
        return next(a for a in self.attachments if a.name == remote)

    def path_parts(self, ino: int) -> tuple[str, ...] | None:
        parts: list[str] = []
        while ino != ROOT_INODE:
            up = self.meta.parent_of(ino)
            if up is None:
                return None
            parts.append(up[1].decode("utf-8", "surrogateescape"))
            ino = up[0]
        return tuple(reversed(parts))

    def key_of(self, ino: int, inode: Inode | None = None) -> tuple[str, str] | None:
        """(remote, object key) of an inode's current path; directories get their marker key."""
        inode = inode or self.meta.get(ino)
        if inode is None or inode.remote is None:
            return None
        parts = self.path_parts(ino)
        attached_at = self.attachment(inode.remote).parts
        if parts is None or parts[:len(attached_at)] != attached_at:
            return None  # moved out of its remote, its bytes not fetched yet (departures.py)
        return inode.remote, key_for(parts[len(attached_at):], directory=inode.is_dir)

    def keys_of(self, ino: int, inode: Inode | None = None) -> list[tuple[str, str]]:
        """(remote, key) of every name of an inode: one for most, one per hard link of a remote
        file (each name is an object; see docs/semantics.md)."""
        inode = inode or self.meta.get(ino)
        if inode is None or inode.remote is None:
            return []
        if inode.nlink <= 1 or inode.is_dir:
            key = self.key_of(ino, inode)
            return [key] if key is not None else []
        return [key for parent, name in self.meta.parents_of(ino)
                if (key := self.key_at(parent, name)) is not None]

    def key_at(self, parent: int, name: bytes) -> tuple[str, str] | None:
        """(remote, key) of a file's name `name` in directory `parent` (None on a local-only path)."""
        d = self.meta.get(parent)
        parts = self.path_parts(parent)
        if d is None or d.remote is None or parts is None:
            return None
        below = (*parts, name.decode("utf-8", "surrogateescape"))[len(self.attachment(d.remote).parts):]
        return d.remote, key_for(below)

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

    def subtree_keys(self, ino: int) -> list[tuple[str, str]]:
        """Keys of an inode and, for a directory, of everything below it (every name of a file
        with hard links, also those outside the subtree)."""
        return list(dict.fromkeys(key for node, _ in self.subtree(ino)
                                  for key in self.keys_of(node.ino, node)))

    def subtree(self, ino: int) -> Iterator[tuple[Inode, list[tuple[bytes, int]]]]:
        """`ino` and every inode below it, each with its directory entries."""
        stack = [ino]
        while stack:
            node = self.meta.get(stack.pop())
            if node is None:
                continue
            entries = self.meta.children(node.ino) if node.is_dir else []
            yield node, entries
            stack.extend(child for _, child in entries)

    def scope(self, path: str) -> list[tuple[str, str]]:
        """(remote, key) pairs a mount path covers: its key below the attach point that holds it
        ("" for a whole remote; a key also covers the keys below it), and every remote attached
        at or below the path. Empty for a local-only path."""
        parts = tuple(p for p in path.split("/") if p)
        out = [(a.name, "") for a in self.attachments if a.parts[: len(parts)] == parts]
        holder = next((a for a in self.attachments
                       if len(parts) > len(a.parts) and parts[: len(a.parts)] == a.parts), None)
        if holder is not None:
            out.append((holder.name, "/".join(parts[len(holder.parts):])))
        return out
