"""`ConflictCopies`: what happens to this host's bytes when another host changed the key first.

A write-back upload is a compare-and-swap against the version this host last saw at the key
(`MetaStore.known_version`). When the store refuses it, the other host's object is the one at
the name: this module sets this host's file aside under a conflict name in the same directory
(a namespace rename that the kernel is told about), puts an inode for the winner's object back
at the name, and records the conflict (the `conflicts` table, which `mountd conflicts` and the
`user.mountd.state` of the copy read). The copy then uploads create-only as any new file does,
so a copy can never overwrite anything either.

It owns conflict names and the conflicts table; it never calls a remote (the reconciler does,
and hands it the winner's ObjectInfo).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time

from mountd.backend import ObjectInfo
from mountd.meta import Inode, MetaStore
from mountd.vfs.kernel import Kernel
from mountd.vfs.namespace import META_SHA256, attrs_from_metadata, xattrs_from_metadata

log = logging.getLogger(__name__)

NAME_MAX = 255
CONFLICT_WORD = ".conflict-"


def default_host_id() -> str:
    """The host's name as conflict copies carry it (the first label, safe characters only)."""
    name = socket.gethostname().split(".", 1)[0] or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:32]


def conflict_name(name: str, host: str, when: float, attempt: int = 1) -> str:
    """`report.txt` -> `report.conflict-HOST-20261207T001502Z.txt`: the original's stem first, so
    the copy lists beside it; the extension last, so programs still know the type; the UTC
    time to the second, and `-2`, `-3`... when a copy of that second exists already."""
    stem, ext = os.path.splitext(name)
    if len(ext) > 16:  # not an extension: a dotted name
        stem, ext = name, ""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    tail = f"{CONFLICT_WORD}{host}-{stamp}{'' if attempt == 1 else f'-{attempt}'}{ext}"
    room = NAME_MAX - len(tail.encode())
    stem_bytes = stem.encode()[:max(1, room)]
    return stem_bytes.decode("utf-8", "ignore") + tail


class ConflictCopies:
    def __init__(self, meta: MetaStore, kernel: Kernel, *, host: str, file_mode: int,
                 owner: tuple[int, int]) -> None:
        self.meta = meta
        self.kernel = kernel
        self.host = host
        self._file_mode = file_mode
        self._owner = owner

    def set_aside(self, node: Inode, remote: str, key: str, winner: ObjectInfo, expected: str | None) -> str:
        """Rename `node` (dirty, at `key`) to a conflict name beside it and show `winner` at
        `key`; returns the copy's key. One transaction: a crash leaves either state whole."""
        where = self.meta.parent_of(node.ino)
        if where is None:
            raise LookupError(f"inode {node.ino} has no name")
        parent, bname = where
        name = bname.decode("utf-8", "surrogateescape")
        now = time.time()
        attempt = 1
        while True:
            copy = conflict_name(name, self.host, now, attempt).encode("utf-8", "surrogateescape")
            if self.meta.lookup(parent, copy) is None:
                break
            attempt += 1
        folder = key.rpartition("/")[0]
        copy_key = (folder + "/" if folder else "") + copy.decode("utf-8", "surrogateescape")
        with self.meta.transaction():
            self.meta.move_entry(parent, bname, parent, copy)
            if node.remote_key == key:
                # its bytes are not at `key` (the winner's are): it uploads create-only to its new
                # key; one renamed here keeps the key it copies from
                self.meta.update(node.ino, remote_key=None, remote_version=None)
            self.meta.displaced_forget(remote, key)
            attrs = attrs_from_metadata(winner.metadata, default_mode=self._file_mode, uid=self._owner[0],
                                        gid=self._owner[1], mtime_ns=winner.mtime_ns, kind=stat.S_IFREG)
            shown = self.meta.create_inode(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, remote=remote,
                                           size=winner.size, mtime_ns=attrs.mtime_ns, remote_key=key,
                                           remote_version=winner.version,
                                           sha256=(winner.metadata or {}).get(META_SHA256) or None,
                                           meta_loaded=int(winner.metadata is not None))
            self.meta.add_entry(parent, bname, shown.ino)
            self.meta.xattrs_replace(shown.ino, xattrs_from_metadata(winner.metadata))
            self.meta.conflict_add(remote, key, copy_key=copy_key, expected=expected, found=winner.version,
                                   local_mtime_ns=node.mtime_ns, resolution="keep-both")
        for entry in (bname, copy):
            self.kernel.invalidate_entry(parent, entry)
        self.kernel.invalidate_inode(node.ino)
        self.kernel.invalidate_inode(parent)
        log.warning("conflict at %s:%s: another host wrote version %s after this host's %s; the other "
                    "host's file stays at the name, this host's is kept as %s", remote, key, winner.version,
                    expected or "(no object)", copy_key)
        return copy_key

    def record_refusal(self, node: Inode, remote: str, key: str, found: str | None,
                       expected: str | None) -> bool:
        """on_conflict = fail: note the conflict once per version found; True when it is new."""
        for row in reversed(self.meta.conflicts()):
            if row["remote"] == remote and row["key"] == key and row["found_version"] == found:
                return False
        with self.meta.transaction():
            self.meta.conflict_add(remote, key, copy_key=None, expected=expected, found=found,
                                   local_mtime_ns=node.mtime_ns, resolution="failed")
        log.warning("conflict at %s:%s: another host wrote version %s after this host's %s; on_conflict = "
                    "fail: this host's file stays dirty here and is not uploaded", remote, key, found,
                    expected or "(no object)")
        return True

    def state_of(self, remote: str | None, key: str | None) -> str | None:
        """'conflict' for a file that is a conflict copy made here, else None."""
        if remote is None or key is None:
            return None
        return "conflict" if self.meta.conflict_of_copy(remote, key) is not None else None
