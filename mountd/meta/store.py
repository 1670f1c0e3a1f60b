"""`MetaStore`: the one owner of the mount's SQLite database.

It holds the merged namespace (inodes and directory entries, for local-only paths and for what
listings of remotes showed), the write-back journal and the content-hash index. Every call is
synchronous and quick (indexed lookups), so callers make them on the trio thread; nothing here
touches the network. WAL mode with synchronous=NORMAL: a commit survives a crash of the daemon
(kill -9) because the WAL is in the kernel's page cache before `commit` returns; each public
mutating method is one transaction, committed before it returns.
"""

from __future__ import annotations

import sqlite3
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, NamedTuple

from mountd import clock
from mountd.errors import MountdError

ROOT_INODE = 1
# the `user_version` of meta.db: 0 is a database from before versions were kept (schema 1), or a
# new one; `_MIGRATIONS[n]` takes schema n to n + 1
SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL DEFAULT 1,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    remote TEXT,
    has_local INTEGER NOT NULL DEFAULT 0,
    content_gen INTEGER NOT NULL DEFAULT 0,
    synced_gen INTEGER NOT NULL DEFAULT 0,
    attr_gen INTEGER NOT NULL DEFAULT 0,
    synced_attr_gen INTEGER NOT NULL DEFAULT 0,
    remote_key TEXT,
    remote_version TEXT,
    sha256 TEXT,
    meta_loaded INTEGER NOT NULL DEFAULT 1,
    listed_at REAL,
    marker INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS inodes_remote_key ON inodes(remote, remote_key);
CREATE TABLE IF NOT EXISTS dentries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(ino);
-- readdir pages walk a directory in id order from an offset: without this index each page sorted
-- the whole directory (a 5,000-entry `ls -l` spent 14 ms in SQLite, now 5)
CREATE INDEX IF NOT EXISTS dentries_parent_id ON dentries(parent, id);
CREATE TABLE IF NOT EXISTS journal (
    remote TEXT NOT NULL,
    key TEXT NOT NULL,
    due REAL NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (remote, key)
);
CREATE INDEX IF NOT EXISTS journal_due ON journal(due);
CREATE TABLE IF NOT EXISTS hashes (
    remote TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (remote, sha256, key)
);
"""

# Schema 2 (multi-host): `displaced` keeps the version of an object that no inode claims any more
# (its file was unlinked, renamed away or replaced here) until its delete or an overwrite is sent,
# so that write is still a compare-and-swap against what this host last saw; `conflicts` lists
# the conflict copies made when another host had changed a key first; `feed` the last entry of
# each remote's change log this host has applied.
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS displaced (
    remote TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (remote, key)
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    remote TEXT NOT NULL,
    key TEXT NOT NULL,
    copy_key TEXT,
    expected_version TEXT,
    found_version TEXT,
    local_mtime_ns INTEGER NOT NULL,
    detected_at REAL NOT NULL,
    resolution TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conflicts_copy ON conflicts(remote, copy_key);
CREATE TABLE IF NOT EXISTS feed (remote TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instance (id TEXT NOT NULL);
"""
# schema 3: a directory listing in progress survives a restart: the token of the next page
# (`listing_resume`) and the names the pages so far showed (`listing_seen`, for the sweep at the
# end), both written with each page's entries and removed when the listing ends; `xattrs` the
# user extended attributes
_SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS listing_resume (dir INTEGER PRIMARY KEY, token TEXT NOT NULL,
                                           pages INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS listing_seen (
    dir INTEGER NOT NULL,
    name BLOB NOT NULL,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
-- user extended attributes (`user.*` other than `user.mountd.*`) of each inode, removed with it;
-- on remote paths also in the object's metadata (vfs/namespace.py `encode_xattrs`)
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
"""
# schema 4: hard links on remote paths: the names of one inode are objects whose metadata carries
# one link-group id (vfs/namespace.py META_LINK_GROUP); a mount that finds a second object of a
# group makes its name another link of the inode it has for the first
_SCHEMA_4 = """
ALTER TABLE inodes ADD COLUMN link_group TEXT;
CREATE INDEX IF NOT EXISTS inodes_link_group ON inodes(remote, link_group) WHERE link_group IS NOT NULL;
"""
# schema 5: files moved out of a remote whose bytes are still only in its object (vfs/departures.py):
# the inode keeps its source object until the bytes are fetched; `dest` is the remote it went to
# (NULL: a local-only path)
_SCHEMA_5 = """
CREATE TABLE IF NOT EXISTS departures (ino INTEGER PRIMARY KEY, dest TEXT);
"""
# schema 6: local copies of large remote files that hold only the chunks a program wrote
# (vfs/partial.py): the version the other chunks are still read from, and a bitmap of the chunks
# that are on the local tier
_SCHEMA_6 = """
CREATE TABLE IF NOT EXISTS partial (ino INTEGER PRIMARY KEY, remote TEXT NOT NULL, key TEXT NOT NULL,
                                    version TEXT NOT NULL, base_size INTEGER NOT NULL,
                                    chunk INTEGER NOT NULL, present BLOB NOT NULL, sha256 TEXT);
"""
_MIGRATIONS = {1: "DROP TABLE IF EXISTS settings;" + _SCHEMA_2, 2: _SCHEMA_3, 3: _SCHEMA_4, 4: _SCHEMA_5,
               5: _SCHEMA_6}


class SchemaTooNew(MountdError):
    """meta.db was written by a newer mountd: its tables may mean things this one does not know."""


# `Inode.meta_loaded`: what an inode's attributes are
META_DEFAULTS = 0  # a listing's defaults, not looked at yet: a stat reads the directory's index or HEADs
META_LOADED = 1  # the object's stored attributes (from a HEAD, its directory's index, or made here)
META_FROM_LISTING = 2  # the listing's, final for a stat (no index vouches for the object): a HEAD
#                        only when its stored metadata is needed (getxattr, chmod, a rename's copy)


@dataclass(slots=True)
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    target: bytes | None
    remote: str | None  # remote name whose subtree holds this inode; None for local-only paths
    has_local: int  # content lives on the local tier
    content_gen: int  # bumped on every content change
    synced_gen: int  # content_gen that is stored at remote_key
    attr_gen: int  # bumped on every attribute change that the remote stores
    synced_attr_gen: int
    remote_key: str | None  # key whose object holds this inode's bytes now
    remote_version: str | None
    sha256: str | None
    meta_loaded: int  # META_DEFAULTS, META_LOADED or META_FROM_LISTING (below)
    listed_at: float | None  # directories: when the remote listing was last merged
    marker: int  # directories: a marker object is wanted for it
    link_group: str | None = None  # remote files with hard links: the id every name's object carries

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def content_dirty(self) -> bool:
        return self.content_gen != self.synced_gen

    @property
    def attrs_dirty(self) -> bool:
        return self.attr_gen != self.synced_attr_gen


class AttrRow(NamedTuple):
    """What a lookup answers with: an inode's attributes in the order of `vfs.types.Attr`'s fields."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    meta_loaded: int


# A readdir page row: the entry id and name, then the columns of an `AttrRow`. A plain tuple, not a
# NamedTuple: pyfuse3's readdir_reply_rows (scripts/pyfuse3-passthrough.patch) takes exactly tuples,
# and a page of thousands is read per request. `Row` names its positions.
ListingRow = tuple[int, bytes, int, int, int, int, int, int, int, int, int, int, int]


class Row:
    """Positions in a `ListingRow` (Final, so a type checker knows each position's type)."""

    ENTRY_ID: Final = 0
    NAME: Final = 1
    INO: Final = 2
    MODE: Final = 3
    NLINK: Final = 4
    UID: Final = 5
    GID: Final = 6
    SIZE: Final = 7
    ATIME_NS: Final = 8
    MTIME_NS: Final = 9
    CTIME_NS: Final = 10
    RDEV: Final = 11
    META_LOADED: Final = 12


_ATTR_COLUMNS = ("i.ino, i.mode, i.nlink, i.uid, i.gid, i.size, i.atime_ns, i.mtime_ns, i.ctime_ns, i.rdev,"
                 " i.meta_loaded")


_INODE_COLUMNS = tuple(f.name for f in fields(Inode))
_INODE_SELECT = "SELECT " + ", ".join(_INODE_COLUMNS) + " FROM inodes"


@dataclass(slots=True)
class PartialCopy:
    """A local data file that holds only some chunks of its file: chunk i (bytes [i*chunk,
    (i+1)*chunk)) is on the local tier when its bit in `present` is set or when it starts at or
    past `base_size`; any other chunk is still the bytes of `version` of the object at `key`."""

    ino: int
    remote: str
    key: str
    version: str
    base_size: int
    chunk: int
    present: bytearray
    sha256: str | None = None  # of the version, when known (the cache finds its chunks by it)

    @property
    def base_chunks(self) -> int:
        return -(-self.base_size // self.chunk)

    def has(self, i: int) -> bool:
        return i >= self.base_chunks or bool(self.present[i >> 3] & (1 << (i & 7)))

    def mark(self, i: int) -> None:
        if i < self.base_chunks:
            self.present[i >> 3] |= 1 << (i & 7)

    def absent(self) -> list[int]:
        return [i for i in range(self.base_chunks) if not self.has(i)]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    remote: str
    key: str
    due: float
    seq: int
    attempts: int
    last_error: str | None


# a regular file a listing showed: (name, mode, uid, gid, size, mtime_ns, key, version)
ListedFile = tuple[bytes, int, int, int, int, int, str, "str | None"]

class MetaStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.execute("PRAGMA cache_size=-65536")
        self._open_schema()
        self._depth = 0
        self.statements = 0
        self._seq = int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM journal") or 0)

    def close(self) -> None:
        self._db.close()

    def _open_schema(self) -> None:
        """Create a new database at SCHEMA_VERSION, or migrate an older one step by step, each step
        in one transaction; refuse one from a newer mountd before touching it."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._db.close()
            raise SchemaTooNew(f"{self.path} has metadata schema {version}, and this mountd knows up to "
                               f"{SCHEMA_VERSION}: run the newer mountd that wrote it, or give this one "
                               "another local.path")
        fresh = self._db.execute("SELECT 1 FROM sqlite_master WHERE name='inodes'").fetchone() is None
        if version == 0:
            version = SCHEMA_VERSION if fresh else 1
            later = _SCHEMA_2 + _SCHEMA_3 + _SCHEMA_4 + _SCHEMA_5 + _SCHEMA_6 if fresh else ""
            self._db.executescript("BEGIN;" + _SCHEMA + later + f"PRAGMA user_version={version}; COMMIT;")
        while version < SCHEMA_VERSION:
            self._db.executescript(f"BEGIN; {_MIGRATIONS[version]} "
                                   f"PRAGMA user_version={version + 1}; COMMIT;")
            version += 1

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Nestable; the outermost one commits (or rolls back on an exception)."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    def _exec(self, sql: str, args: Iterable[object] = ()) -> sqlite3.Cursor:
        self.statements += 1
        return self._db.execute(sql, tuple(args))

    def _scalar(self, sql: str, args: Iterable[object] = ()) -> Any:
        row = self._exec(sql, args).fetchone()
        return row[0] if row else None

    # --- inodes -------------------------------------------------------------------------------
    def get(self, ino: int) -> Inode | None:
        row = self._exec(_INODE_SELECT + " WHERE ino=?", (ino,)).fetchone()
        return Inode(*row) if row else None

    def create_inode(self, *, mode: int, uid: int, gid: int, remote: str | None, ino: int | None = None,
                     size: int = 0, mtime_ns: int | None = None, nlink: int = 1, rdev: int = 0,
                     target: bytes | None = None, has_local: int = 0, remote_key: str | None = None,
                     remote_version: str | None = None, sha256: str | None = None, meta_loaded: int = 1,
                     content_gen: int = 0, synced_gen: int = 0, attr_gen: int = 0, synced_attr_gen: int = 0,
                     marker: int = 0, listed_at: float | None = None) -> Inode:
        now = clock.now_ns()
        mtime_ns = now if mtime_ns is None else mtime_ns
        cur = self._exec(
            "INSERT INTO inodes (ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev,"
            " target, remote, has_local, content_gen, synced_gen, attr_gen, synced_attr_gen, remote_key,"
            " remote_version, sha256, meta_loaded, listed_at, marker)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ino, mode, uid, gid, size, mtime_ns, mtime_ns, mtime_ns if ino != ROOT_INODE else now, nlink,
             rdev, target, remote, has_local, content_gen, synced_gen, attr_gen, synced_attr_gen, remote_key,
             remote_version, sha256, meta_loaded, listed_at, marker),
        )
        got = self.get(int(cur.lastrowid or ino or 0))
        assert got is not None
        return got

    def create_listed_files(self, parent: int, rows: list[ListedFile], *, remote: str,
                            meta_loaded: int = META_DEFAULTS) -> None:
        """Regular files one listing page showed, `(name, mode, uid, gid, size, mtime_ns, key,
        version)` each, with their entries: two statements for the page instead of three per file
        (a fifth of the daemon's samples while `find` listed a tree went to merging pages).
        Inode numbers are taken after the highest ever given (AUTOINCREMENT's sequence), as the
        database would give them one by one."""
        if not rows:
            return
        first = int(self._scalar(
            "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name='inodes'), 0),"
            " COALESCE((SELECT max(ino) FROM inodes), 0))")) + 1
        self.statements += 2
        self._db.executemany(
            "INSERT INTO inodes (ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev,"
            " remote, has_local, content_gen, synced_gen, attr_gen, synced_attr_gen, remote_key,"
            " remote_version, meta_loaded, marker) VALUES (?,?,?,?,?,?,?,?,1,0,?,0,0,0,0,0,?,?,?,0)",
            [(first + i, mode, uid, gid, size, mtime, mtime, mtime, remote, key, version, meta_loaded)
             for i, (_, mode, uid, gid, size, mtime, key, version) in enumerate(rows)])
        self._db.executemany("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)",
                             [(parent, row[0], first + i) for i, row in enumerate(rows)])

    def update(self, ino: int, **values: object) -> None:
        if not values:
            return
        if "remote_key" in values:
            self._displace(ino, values["remote_key"])
        cols = ", ".join(f"{k}=?" for k in values)
        self._exec(f"UPDATE inodes SET {cols} WHERE ino=?", (*values.values(), ino))

    def _displace(self, ino: int, new_key: object = None) -> None:
        """An inode stops claiming its key: remember the version it had there, for the delete or
        overwrite of that key that follows (a compare-and-swap needs it), unless another inode
        still claims the key."""
        row = self._exec("SELECT remote, remote_key, remote_version FROM inodes WHERE ino=?",
                         (ino,)).fetchone()
        if row is None or row[1] is None or row[1] == new_key or not row[2]:
            return
        others = self._scalar("SELECT 1 FROM inodes WHERE remote=? AND remote_key=? AND ino != ? LIMIT 1",
                              (row[0], row[1], ino))
        if others is None:
            self._exec("INSERT OR REPLACE INTO displaced (remote, key, version) VALUES (?, ?, ?)", row)

    def bump(self, ino: int, column: str, by: int = 1) -> None:
        """Atomically add to a counter column (content_gen, attr_gen, nlink)."""
        assert column in ("content_gen", "attr_gen", "nlink")
        self._exec(f"UPDATE inodes SET {column}={column}+? WHERE ino=?", (by, ino))

    def delete_inode(self, ino: int) -> None:
        self._displace(ino)
        self._exec("DELETE FROM inodes WHERE ino=?", (ino,))
        self._exec("DELETE FROM xattrs WHERE ino=?", (ino,))
        self._exec("DELETE FROM departures WHERE ino=?", (ino,))
        self._exec("DELETE FROM partial WHERE ino=?", (ino,))

    # --- files moved out of a remote, their bytes not fetched yet ---------------------------------
    def departure_add(self, ino: int, dest: str | None) -> None:
        self._exec("INSERT OR REPLACE INTO departures (ino, dest) VALUES (?, ?)", (ino, dest))

    def departure_dest(self, ino: int) -> tuple[bool, str | None]:
        """(departing, the remote it goes to: None for a local-only path)."""
        row = self._exec("SELECT dest FROM departures WHERE ino=?", (ino,)).fetchone()
        return (row is not None, row[0] if row is not None else None)

    def departure_done(self, ino: int) -> None:
        self._exec("DELETE FROM departures WHERE ino=?", (ino,))

    def departures(self, *, after: int = 0, limit: int = 1000) -> list[int]:
        """Departing inodes in number order, from after `after` (a page of them)."""
        return [r[0] for r in self._exec("SELECT ino FROM departures WHERE ino > ? ORDER BY ino LIMIT ?",
                                         (after, limit)).fetchall()]

    def departing_bytes(self) -> tuple[int, int]:
        """(files, bytes) still to fetch from the remotes they left."""
        row = self._exec("SELECT count(*), COALESCE(sum(i.size), 0) FROM departures d"
                         " JOIN inodes i ON i.ino = d.ino").fetchone()
        return int(row[0]), int(row[1])

    # --- local copies that hold only some chunks of their object (vfs/partial.py) ----------------
    def partial_get(self, ino: int) -> PartialCopy | None:
        row = self._exec("SELECT remote, key, version, base_size, chunk, present, sha256 FROM partial"
                         " WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return None
        return PartialCopy(ino, row[0], row[1], row[2], int(row[3]), int(row[4]), bytearray(row[5]), row[6])

    def partial_put(self, p: PartialCopy) -> None:
        self._exec("INSERT OR REPLACE INTO partial (ino, remote, key, version, base_size, chunk, present,"
                   " sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (p.ino, p.remote, p.key, p.version, p.base_size, p.chunk, bytes(p.present), p.sha256))

    def partial_delete(self, ino: int) -> None:
        self._exec("DELETE FROM partial WHERE ino=?", (ino,))

    def partial_inodes(self) -> list[int]:
        return [r[0] for r in self._exec("SELECT ino FROM partial").fetchall()]

    # --- user extended attributes -----------------------------------------------------------------
    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return {bytes(n): bytes(v) for n, v in
                self._exec("SELECT name, value FROM xattrs WHERE ino=? ORDER BY name", (ino,)).fetchall()}

    def xattr_get(self, ino: int, name: bytes) -> bytes | None:
        v = self._scalar("SELECT value FROM xattrs WHERE ino=? AND name=?", (ino, name))
        return bytes(v) if v is not None else None

    def xattr_set(self, ino: int, name: bytes, value: bytes) -> None:
        self._exec("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)", (ino, name, value))

    def xattr_remove(self, ino: int, name: bytes) -> bool:
        return self._exec("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name)).rowcount > 0

    def xattrs_replace(self, ino: int, xattrs: dict[bytes, bytes]) -> None:
        """All of an inode's attributes at once (as an object's metadata holds them)."""
        self._exec("DELETE FROM xattrs WHERE ino=?", (ino,))
        self._db.executemany("INSERT INTO xattrs (ino, name, value) VALUES (?, ?, ?)",
                             [(ino, n, v) for n, v in xattrs.items()])

    # --- what this host last saw at a key (compare-and-swap) --------------------------------------
    def known_version(self, remote: str, key: str, ino: int | None = None) -> str | None:
        """The version of the object at `key` as this host last saw it: that of inode `ino` when it
        takes its bytes from `key`, else of any inode that does, else of one displaced from it;
        None when this host knows of no object there."""
        if ino is not None:
            row = self._exec("SELECT remote_version FROM inodes WHERE ino=? AND remote=? AND remote_key=?",
                             (ino, remote, key)).fetchone()
            if row is not None and row[0]:
                return str(row[0])
        # a linked inode first: an unlinked open one may still read a version replaced since
        v = self._scalar("SELECT remote_version FROM inodes WHERE remote=? AND remote_key=?"
                         " AND remote_version IS NOT NULL AND remote_version != ''"
                         " ORDER BY nlink > 0 DESC LIMIT 1", (remote, key))
        if v is None:
            v = self._scalar("SELECT version FROM displaced WHERE remote=? AND key=?", (remote, key))
        return str(v) if v is not None else None

    def note_written(self, remote: str, key: str, version: str) -> None:
        """This host just wrote `version` at `key`: the next write there compares against it, even
        when the inode that wrote it has moved, changed or gone meanwhile, or the upload's own
        check failed. Linked inodes that still take their bytes from `key` are the writer itself
        (others were evacuated before the overwrite); unlinked open ones keep the version their
        readers opened (their reads are pinned to it)."""
        if not version:
            return
        claimed = self._exec("UPDATE inodes SET remote_version=? WHERE remote=? AND remote_key=?"
                             " AND nlink > 0", (version, remote, key)).rowcount
        if claimed:
            self.displaced_forget(remote, key)
        else:
            self._exec("INSERT OR REPLACE INTO displaced (remote, key, version) VALUES (?, ?, ?)",
                       (remote, key, version))

    def displaced_forget(self, remote: str, key: str) -> None:
        """The key was written or deleted: what was displaced from it is gone."""
        self._exec("DELETE FROM displaced WHERE remote=? AND key=?", (remote, key))

    # --- change log -----------------------------------------------------------------------------
    def feed_last(self, remote: str) -> int | None:
        v = self._scalar("SELECT last FROM feed WHERE remote=?", (remote,))
        return int(v) if v is not None else None  # type: ignore[arg-type]

    def instance_id(self) -> str:
        """This local tier's identity, made once: how a host knows its own change-log entries."""
        v = self._scalar("SELECT id FROM instance LIMIT 1")
        if v is None:
            v = uuid.uuid4().hex
            self._exec("INSERT INTO instance (id) VALUES (?)", (v,))
        return str(v)

    def feed_set_last(self, remote: str, last: int) -> None:
        self._exec("INSERT OR REPLACE INTO feed (remote, last) VALUES (?, ?)", (remote, last))

    # --- conflicts ----------------------------------------------------------------------------
    def conflict_add(self, remote: str, key: str, *, copy_key: str | None, expected: str | None,
                     found: str | None, local_mtime_ns: int, resolution: str) -> int:
        cur = self._exec("INSERT INTO conflicts (remote, key, copy_key, expected_version, found_version,"
                         " local_mtime_ns, detected_at, resolution) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (remote, key, copy_key, expected, found, local_mtime_ns, time.time(), resolution))
        return int(cur.lastrowid or 0)

    def conflict_of_copy(self, remote: str, copy_key: str) -> dict[str, Any] | None:
        rows = self._conflict_rows("WHERE remote=? AND copy_key=? ORDER BY id DESC LIMIT 1",
                                   (remote, copy_key))
        return rows[0] if rows else None

    def conflicts(self, limit: int = 10000) -> list[dict[str, Any]]:
        return self._conflict_rows("ORDER BY id LIMIT ?", (limit,))

    def conflict_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM conflicts") or 0)

    def _conflict_rows(self, where: str, args: tuple[object, ...]) -> list[dict[str, Any]]:
        cur = self._exec("SELECT id, remote, key, copy_key, expected_version, found_version, local_mtime_ns,"
                         " detected_at, resolution FROM conflicts " + where, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def remote_dirs(self, remote: str) -> list[int]:
        return [r[0] for r in self._exec("SELECT ino FROM inodes WHERE remote=? AND (mode & 61440) = 16384",
                                         (remote,)).fetchall()]

    def orphans(self) -> list[int]:
        """Inodes no directory entry refers to (unlinked while open when the daemon stopped)."""
        rows = self._exec(
            "SELECT ino FROM inodes WHERE ino != ?"
            " AND NOT EXISTS (SELECT 1 FROM dentries d WHERE d.ino = inodes.ino)",
            (ROOT_INODE,),
        ).fetchall()
        return [r[0] for r in rows]

    def dirty_without_journal(self) -> list[Inode]:
        """Inodes with unsynced local content; the caller re-journals them after a crash."""
        rows = self._exec(_INODE_SELECT + " WHERE remote IS NOT NULL AND has_local=1"
                          " AND content_gen != synced_gen").fetchall()
        return [Inode(*r) for r in rows]

    def inodes_with_remote_key(self, remote: str, key: str) -> list[Inode]:
        rows = self._exec(_INODE_SELECT + " WHERE remote=? AND remote_key=?", (remote, key)).fetchall()
        return [Inode(*r) for r in rows]

    # --- directory entries --------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int | None:
        v = self._scalar("SELECT ino FROM dentries WHERE parent=? AND name=?", (parent, name))
        return int(v) if v is not None else None  # type: ignore[arg-type]

    def lookup_attr(self, parent: int, name: bytes) -> AttrRow | None:
        """The attributes of the inode that `name` in `parent` names, in one query (a lookup)."""
        row = self._exec(
            f"SELECT {_ATTR_COLUMNS} FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent=? AND d.name=?",
            (parent, name)).fetchone()
        return AttrRow._make(row) if row is not None else None

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._exec("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino))

    def remove_entry(self, parent: int, name: bytes) -> None:
        self._exec("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))

    def move_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        self._exec("UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?",
                   (new_parent, new_name, parent, name))

    def set_entry_ino(self, parent: int, name: bytes, ino: int) -> None:
        self._exec("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (ino, parent, name))

    def listing_after(self, parent: int, after_id: int, limit: int) -> list[ListingRow]:
        """Entries after `after_id` in stable id order, each with the attributes readdirplus replies
        with: one narrow query, because `ls -l` of a large directory reads thousands per request."""
        return self._exec(  # type: ignore[no-any-return]
            f"SELECT d.id, d.name, {_ATTR_COLUMNS} FROM dentries d JOIN inodes i ON i.ino = d.ino"
            " WHERE d.parent=? AND d.id > ? ORDER BY d.id LIMIT ?", (parent, after_id, limit)).fetchall()

    def children(self, parent: int) -> list[tuple[bytes, int]]:
        return self._exec("SELECT name, ino FROM dentries WHERE parent=?", (parent,)).fetchall()

    def children_named(self, parent: int, names: list[bytes]) -> dict[bytes, int]:
        """The entries of `parent` among `names` (one page of a listing, not the whole directory)."""
        out: dict[bytes, int] = {}
        for i in range(0, len(names), 500):
            part = names[i:i + 500]
            marks = ",".join("?" * len(part))
            out.update(self._exec(f"SELECT name, ino FROM dentries WHERE parent=? AND name IN ({marks})",
                                  (parent, *part)).fetchall())
        return out

    # --- a listing in progress: where it goes on, and the names it has seen ----------------------
    def listing_page_done(self, parent: int, names: list[bytes], next_token: str | None, pages: int) -> None:
        """One page merged (call in its transaction): its names seen, and where the next starts."""
        self._db.executemany("INSERT OR IGNORE INTO listing_seen (dir, name) VALUES (?, ?)",
                             [(parent, n) for n in names])
        if next_token is not None:
            self._exec("INSERT OR REPLACE INTO listing_resume (dir, token, pages) VALUES (?, ?, ?)",
                       (parent, next_token, pages))

    def listing_resume(self, parent: int) -> tuple[str, int] | None:
        """(token of the next page, pages done) of a listing of `parent` a restart interrupted."""
        row = self._exec("SELECT token, pages FROM listing_resume WHERE dir=?", (parent,)).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def listing_unseen(self, parent: int) -> list[tuple[bytes, int]]:
        """Entries of `parent` that the listing now finished did not see."""
        return self._exec("SELECT d.name, d.ino FROM dentries d WHERE d.parent=? AND NOT EXISTS"
                          " (SELECT 1 FROM listing_seen s WHERE s.dir=d.parent AND s.name=d.name)",
                          (parent,)).fetchall()

    def listing_forget(self, parent: int) -> None:
        """The listing of `parent` ended (or starts again from its first page)."""
        self._exec("DELETE FROM listing_seen WHERE dir=?", (parent,))
        self._exec("DELETE FROM listing_resume WHERE dir=?", (parent,))

    def unloaded_children(self, parent: int) -> list[tuple[bytes, int]]:
        """(name, ino) of the entries of `parent` whose object metadata is not loaded."""
        return self._exec("SELECT d.name, d.ino FROM dentries d JOIN inodes i ON i.ino = d.ino"
                          " WHERE d.parent=? AND i.meta_loaded=0", (parent,)).fetchall()

    def mark_from_listing(self, parent: int) -> None:
        """The entries of `parent` still at META_DEFAULTS keep their listing attributes for stat."""
        self._exec("UPDATE inodes SET meta_loaded=2 WHERE meta_loaded=0 AND ino IN"
                   " (SELECT ino FROM dentries WHERE parent=?)", (parent,))

    def stale_dirs_after(self, parent: int, ino: int, stale_before: float, most: int) -> list[int]:
        """Directories of `parent` after `ino` (in readdir order) never listed or listed before
        `stale_before` (a time.time())."""
        return [r[0] for r in self._exec(
            "SELECT d.ino FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent=?"
            " AND d.id > COALESCE((SELECT id FROM dentries WHERE parent=? AND ino=?), 0)"
            " AND (i.mode & 61440) = 16384 AND (i.listed_at IS NULL OR i.listed_at < ?)"
            " ORDER BY d.id LIMIT ?", (parent, parent, ino, stale_before, most)).fetchall()]

    def oldest_listing_of_subdirs(self, parent: int) -> float | None:
        """The earliest `listed_at` among the directories of `parent` (None: it has none, or one
        never listed)."""
        row = self._exec(
            "SELECT count(*), count(i.listed_at), min(i.listed_at) FROM dentries d"
            " JOIN inodes i ON i.ino = d.ino WHERE d.parent=? AND (i.mode & 61440) = 16384",
            (parent,)).fetchone()
        return float(row[2]) if row[0] and row[0] == row[1] else None

    def unloaded_entries_after(self, parent: int, ino: int, most: int) -> list[int]:
        """Entries of `parent` after `ino`'s (in readdir order) whose object metadata is not loaded."""
        return [r[0] for r in self._exec(
            "SELECT d.ino FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent=? AND i.meta_loaded=0"
            " AND d.id > COALESCE((SELECT id FROM dentries WHERE parent=? AND ino=?), 0)"
            " ORDER BY d.id LIMIT ?",
            (parent, parent, ino, most)).fetchall()]

    def children_up_to(self, parent: int, most: int) -> int:
        """How many entries `parent` has, counted up to `most` (a bounded count, for any size)."""
        return int(self._scalar("SELECT COUNT(*) FROM (SELECT 1 FROM dentries WHERE parent=? LIMIT ?)",
                                (parent, most)))

    def has_children(self, parent: int) -> bool:
        return self._scalar("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (parent,)) is not None

    def parents_of(self, ino: int) -> list[tuple[int, bytes]]:
        """Every (parent, name) of an inode: a file with hard links has several."""
        return [(r[0], bytes(r[1])) for r in
                self._exec("SELECT parent, name FROM dentries WHERE ino=? ORDER BY id", (ino,)).fetchall()]

    def link_group_member(self, remote: str, group: str, *, besides: int) -> Inode | None:
        """The inode (other than `besides`) that already has names of link group `group`."""
        row = self._exec(_INODE_SELECT + " WHERE remote=? AND link_group=? AND ino != ? AND nlink > 0"
                         " LIMIT 1", (remote, group, besides)).fetchone()
        return Inode(*row) if row else None

    def parent_of(self, ino: int) -> tuple[int, bytes] | None:
        """One (parent, name) of an inode: for directories the only one."""
        row = self._exec("SELECT parent, name FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
        return (row[0], row[1]) if row else None

    # --- journal ------------------------------------------------------------------------------
    def journal_put(self, remote: str, key: str, due: float) -> None:
        """Ask for `key` to be reconciled at `due`; a later call moves the due time (resets the delay)."""
        self._seq += 1
        self._exec(
            "INSERT INTO journal (remote, key, due, seq) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(remote, key) DO UPDATE SET due=excluded.due, seq=excluded.seq",
            (remote, key, due, self._seq),
        )

    def journal_get(self, remote: str, key: str) -> JournalEntry | None:
        row = self._exec("SELECT remote, key, due, seq, attempts, last_error FROM journal"
                         " WHERE remote=? AND key=?", (remote, key)).fetchone()
        return JournalEntry(*row) if row else None

    def journal_due(self, now: float, limit: int) -> list[JournalEntry]:
        rows = self._exec(
            "SELECT remote, key, due, seq, attempts, last_error FROM journal"
            " WHERE due <= ? ORDER BY due, seq LIMIT ?",
            (now, limit),
        ).fetchall()
        return [JournalEntry(*r) for r in rows]

    def journal_next_due(self) -> float | None:
        v = self._scalar("SELECT MIN(due) FROM journal")
        return float(v) if v is not None else None  # type: ignore[arg-type]

    def journal_done(self, remote: str, key: str, seq: int) -> bool:
        """Drop the entry if nobody re-queued it meanwhile (same seq); True when dropped."""
        cur = self._exec("DELETE FROM journal WHERE remote=? AND key=? AND seq=?", (remote, key, seq))
        return cur.rowcount > 0

    def journal_failed(self, remote: str, key: str, seq: int, error: str, retry_at: float) -> None:
        self._exec("UPDATE journal SET attempts=attempts+1, last_error=?, due=?"
                   " WHERE remote=? AND key=? AND seq=?", (error, retry_at, remote, key, seq))

    def journal_all(self, limit: int = 1000) -> list[JournalEntry]:
        rows = self._exec("SELECT remote, key, due, seq, attempts, last_error FROM journal"
                          " ORDER BY due, seq LIMIT ?", (limit,)).fetchall()
        return [JournalEntry(*r) for r in rows]

    def journal_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM journal") or 0)

    def journal_has(self, remote: str, key: str) -> bool:
        return self._scalar("SELECT 1 FROM journal WHERE remote=? AND key=?", (remote, key)) is not None

    def journal_count_under(self, remote: str, key: str | None) -> int:
        """Entries of `remote` at `key` or below `key/` (all of the remote's when `key` is None),
        by ranges of the primary key: a `sync --wait PATH` counts after every upload."""
        if key is None:
            return int(self._scalar("SELECT COUNT(*) FROM journal WHERE remote=?", (remote,)) or 0)
        below = key + "/"
        return int(self._scalar("SELECT COUNT(*) FROM journal"
                                " WHERE remote=? AND (key=? OR (key>=? AND key<?))",
                                (remote, key, below, key + "0")) or 0)  # "0" follows "/"

    def journal_keys_under(self, remote: str, prefix: str) -> set[str]:
        """Keys waiting in the journal that start with `prefix`: a range of the primary key (each
        listing page asks; a scan would read every pending upload for every page)."""
        if not prefix:
            rows = self._exec("SELECT key FROM journal WHERE remote=?", (remote,)).fetchall()
        else:  # (UTF-8 keeps code point order, which SQLite's binary compare of text follows)
            after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            rows = self._exec("SELECT key FROM journal WHERE remote=? AND key >= ? AND key < ?",
                              (remote, prefix, after)).fetchall()
        return {r[0] for r in rows}

    def journal_make_due(self, now: float, *, failed: bool = True) -> None:
        """Move entries due later to `now`; with `failed=False` only those that never failed (a drain
        skips the write-back delay, not the back-off of a failing upload)."""
        only_fresh = "" if failed else " AND attempts = 0"
        self._exec("UPDATE journal SET due=? WHERE due > ?" + only_fresh, (now, now))

    # --- hash index ---------------------------------------------------------------------------
    def hash_put(self, remote: str, sha256: str, key: str, version: str) -> None:
        self._exec("INSERT OR REPLACE INTO hashes (remote, sha256, key, version) VALUES (?, ?, ?, ?)",
                   (remote, sha256, key, version))

    def hash_lookup(self, remote: str, sha256: str) -> list[tuple[str, str]]:
        return self._exec("SELECT key, version FROM hashes WHERE remote=? AND sha256=?",
                          (remote, sha256)).fetchall()

    def hash_forget(self, remote: str, key: str) -> None:
        self._exec("DELETE FROM hashes WHERE remote=? AND key=?", (remote, key))

    # --- statistics ---------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        return {
            "inodes": int(self._scalar("SELECT COUNT(*) FROM inodes") or 0),
            "journal_entries": self.journal_count(),
            "conflicts": self.conflict_count(),
            "statements": self.statements,
        }
