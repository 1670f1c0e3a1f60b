"""`Renames`: the namespace change of a rename, and the journal rows of every key it moves.

`Filesystem.rename` checks the POSIX rules and awaits the listings the rename needs; `apply` runs
after, inside its transaction and with no await, so what it was checked against cannot change
under it. A directory that moves takes its whole subtree to new keys, so every key under the old
and the new name is journaled: the reconciler copies what now lives at a new key and deletes what
no longer lives at an old one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from mountd import clock
from mountd.meta import Inode, MetaStore
from mountd.vfs.departures import arrive
from mountd.vfs.paths import PathMap
from mountd.writeback import Journal
from mountd.writeback.backpressure import DirtyBytes

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Renames:
    def __init__(self, meta: MetaStore, paths: PathMap, journal: Journal, dirty: DirtyBytes,
                 drop_link: Callable[[Inode, int], None]) -> None:
        self.meta = meta
        self.paths = paths
        self.journal = journal
        self.dirty = dirty
        self._drop_link = drop_link  # a replaced file lost one link; freed when it was the last

    def apply(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, node: Inode,
              target: Inode | None, *, exchange: bool, into_remote: str | None = None,
              out_of_remote: tuple[str | None] | None = None) -> bool:
        """The caller holds a transaction. `into_remote`: a local-only file or tree moves into that
        remote (see `_adopt`); `out_of_remote`: a remote's file or tree moves to (the remote, or
        None for a local-only path) (see `_depart`). True when files departed (their bytes to fetch)."""
        now = clock.now_ns()
        ino = node.ino
        old_keys = self.paths.subtree_keys(ino)
        if target is not None:
            old_keys += self.paths.subtree_keys(target.ino)
        if exchange and target is not None:
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
        self.meta.update(parent_old, mtime_ns=now, ctime_ns=now)
        if parent_new != parent_old:
            self.meta.update(parent_new, mtime_ns=now, ctime_ns=now)
        if into_remote is not None:
            self._adopt(ino, into_remote)
        departed = out_of_remote is not None and self._depart(ino, out_of_remote[0])
        new_keys = self.paths.subtree_keys(ino)
        if exchange and target is not None:
            new_keys += self.paths.subtree_keys(target.ino)
        for key in dict.fromkeys(old_keys + new_keys):
            self.journal.put(*key)
        return departed

    def _mark_subtree_moved(self, ino: int) -> None:
        """After a directory moved, its marker and every descendant must be re-put at new keys."""
        for node, _ in self.paths.subtree(ino):
            if node.is_dir:
                self.meta.update(node.ino, marker=1)
                self.meta.bump(node.ino, "attr_gen")

    def refusal_to_move_in(self, ino: int, fits: Callable[[Inode], bool], *,
                           from_remote: str | None = None) -> str | None:
        """Why a file or tree cannot move to another kind of path (None: it can): a local-only
        one into a remote (`fits`: whether a file's attributes fit in an object there), or one of
        remote `from_remote` out of it. `mv` meets EXDEV and copies instead, so each file that
        cannot be moved fails on its own there."""
        names_inside: dict[int, int] = {}  # files with hard links: how many of their names move
        for node, entries in self.paths.subtree(ino):
            if self.meta.departure_dest(node.ino)[0]:
                return "a file in it is still being fetched from the remote it was moved out of"
            if node.remote != from_remote or self.paths.is_attach_point(node.ino):
                return "a remote is attached inside it"
            if not node.is_dir and node.nlink > 1:
                names_inside[node.ino] = names_inside.get(node.ino, 0) + 1
                if names_inside[node.ino] > 1:
                    continue
            if not fits(node):
                return "a file's extended attributes are more than the remote's object metadata holds"
            for name, _ in entries:
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    return "a name in it is not UTF-8, which an object key must be"
        for linked, inside in names_inside.items():
            if (found := self.meta.get(linked)) is not None and inside < found.nlink:
                return "a file in it has hard links outside it, which would be in two kinds of path"
        return None

    def _depart(self, ino: int, dest: str | None) -> bool:
        """A remote's file or tree goes to `dest` (another remote, or None: a local-only path) in
        one transaction: what has nothing left on the remote (directories, symlinks whose target
        is known, special files, files on the local tier) arrives at once; a file whose bytes are
        only in its object departs (departures.py), keeping that object as its source until the
        bytes are fetched. The caller journals the old keys (deleted once nothing departs from
        them) and the new ones."""
        departed = False
        for node, _ in self.paths.subtree(ino):
            if node.is_reg and not node.has_local and node.remote_key is not None:
                self.meta.departure_add(node.ino, dest)
                departed = True
            else:
                arrive(self.meta, self.dirty, node, dest)  # (`apply` journals the new keys)
        return departed

    def _adopt(self, ino: int, remote: str) -> None:
        """A local-only file or tree becomes remote-path files in one transaction: every inode is
        the remote's now, with content and attributes to send; the caller journals every key.
        The bytes stay on the local tier, uploaded from there as written files are, so a crash or
        an outage resumes from the journal and no byte moves before the rename returns."""
        now = time.time()
        for node, _ in self.paths.subtree(ino):
            values: dict[str, object] = {"remote": remote}
            if node.is_dir:
                values.update(marker=1, listed_at=now)  # nothing is at its keys yet: no listing
            elif node.is_reg:
                self.meta.bump(node.ino, "content_gen")
            if not node.is_dir and node.nlink > 1 and node.link_group is None:
                values["link_group"] = uuid.uuid4().hex  # each name an object, all of one group
            self.meta.update(node.ino, **values)
            self.meta.bump(node.ino, "attr_gen")
