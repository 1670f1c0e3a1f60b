"""`DirIndexes`: the POSIX attributes of the objects mountd wrote, one small object per directory.

A listing gives each object's key, size, version (ETag/generation) and Last-Modified, but not the
mode, owner, mtime, sha256 and user xattrs mountd keeps in the object's metadata: those cost one
HEAD per object, and at 20 ms a request `ls -l` of 10,000 objects takes minutes that way (s3fs-fuse
and rclone pay it; mountpoint-s3 and gcsfuse show listing attributes only). So every host that
writes objects into a directory also keeps that directory's *index*, the object
`.mountd-attrs/<directory>/.index` at the remote's root: for each name, the version and size it
wrote and the metadata it sent. A host that needs the attributes of a listed directory GETs that
one object and takes each entry whose version and size are what the listing says, exactly as a
HEAD's answer would be taken.

An entry that does not match (another tool rewrote the object, an update of the index was lost)
is ignored: the object keeps its listing attributes until something needs more (a getxattr or a
chmod HEADs it). The index is thus a cache: losing it costs requests and, for a while, the
stored mode and mtime in `ls -l`, never data. Its updates are compare-and-swap writes on the
version read (where the store enforces conditions), merged per directory in batches: a batch of
small files costs one PUT of the index, not one per file.

It owns the batches of index updates not written yet and the last version of each index it
wrote (bounded); what the namespace does with an index is `RemoteView`'s.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from mountd.backend import CREATE_ONLY, ObjectInfo, ObjectStore, Precondition
from mountd.errors import ObjectNotFound, RemoteError, VersionMismatch
from mountd.vfs.namespace import ATTRS_DIR, FEED_DIR
from mountd.vfs.remote_calls import RemoteCalls

log = logging.getLogger(__name__)

FORMAT = 1
# the schemes whose listings indexes complete (a file:// HEAD is a local stat: it needs none)
INDEXED_SCHEMES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "memory"})
BATCH_WAIT = 0.5  # seconds index updates gather before each directory's index is written
BATCH_SPACING = 4  # and at least this many times as long as the last round of writes took
MAX_INDEX = 256 << 20  # bytes of one index read at most
CAS_TRIES = 5  # writes of one batch when other hosts keep changing the same index
CACHED_ENTRIES = 200_000  # entries of indexes this host wrote kept in memory, at most
RETRY_AFTER = 5.0  # seconds before a batch whose write failed is tried again
WRITERS = 4  # indexes written at once
WRITE_TRIES = 3  # writes of one directory's batch before its updates are dropped


@dataclass(frozen=True, slots=True)
class IndexEntry:
    version: str
    size: int
    metadata: Mapping[str, str]


def index_key(dir_prefix: str) -> str:
    """The key of the index of the directory whose keys start with `dir_prefix` ("" or "a/b/").

    One-to-one: the index of "a/b/" is ".mountd-attrs/a/b/.index", that of "a/b/.index/" is
    ".mountd-attrs/a/b/.index/.index"."""
    return f"{ATTRS_DIR}/{dir_prefix}.index"


def split_key(key: str) -> tuple[str, str] | None:
    """(directory prefix, name in the index) of an object key; None for keys no index holds (the
    change log, the indexes, temporary keys). A marker "a/b/" is the entry "b/" of "a/"."""
    if not key or key.startswith((FEED_DIR + "/", ATTRS_DIR + "/")) or "/.mountd-tmp-" in "/" + key:
        return None
    body = key[:-1] if key.endswith("/") else key
    slash = body.rfind("/")
    prefix, name = body[:slash + 1], body[slash + 1:]
    return prefix, name + ("/" if key.endswith("/") else "")


def encode(entries: Mapping[str, IndexEntry]) -> bytes:
    """The index as stored. A directory being filled has its whole index encoded at each batch,
    so this is the writer's main cost: no copy of each entry's metadata (a dict already, but a
    Mapping for the type checker), names unsorted (json keeps insertion order; readers take a
    mapping), and zlib's fastest level (5 % larger, 2.5 times faster than level 6)."""
    doc = {"format": FORMAT, "entries": {
        name: [e.version, e.size, e.metadata if isinstance(e.metadata, dict) else dict(e.metadata)]
        for name, e in entries.items()}}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


def decode(data: bytes, key: str) -> dict[str, IndexEntry]:
    """The entries of an index; {} (and a warning) when it is unreadable: it is only a cache."""
    try:
        doc = json.loads(zlib.decompress(data))
        if doc.get("format") != FORMAT:
            log.warning("directory index %s has format %r (this mountd reads %d): ignored",
                        key, doc.get("format"), FORMAT)
            return {}
        return {str(name): IndexEntry(str(v), int(size), {str(k): str(x) for k, x in dict(meta).items()})
                for name, (v, size, meta) in dict(doc["entries"]).items()}
    except (ValueError, TypeError, KeyError, zlib.error, AttributeError) as e:
        log.warning("directory index %s is unreadable (%s): ignored", key, e)
        return {}


def read_index(store: ObjectStore, key: str) -> tuple[str, dict[str, IndexEntry]]:
    """(version, entries) of an index; ("", {}) when there is none. In a worker thread."""
    for _ in range(CAS_TRIES):
        try:
            info = store.head(key)
            data = store.read_range(key, 0, MAX_INDEX, version=info.version)
        except ObjectNotFound:
            return "", {}
        except VersionMismatch:
            continue  # rewritten between the HEAD and the read
        return info.version, decode(data, key)
    raise RemoteError(getattr(store, "name", ""), f"the directory index {key} keeps changing")


def _read_entries(store: ObjectStore, key: str) -> dict[str, IndexEntry]:
    """A reader's one GET (no version: it takes only entries that match its listing)."""
    try:
        return decode(store.read_range(key, 0, MAX_INDEX), key)
    except ObjectNotFound:
        return {}


def write_index(store: ObjectStore, key: str, updates: Mapping[str, IndexEntry | None],
                known: tuple[str, dict[str, IndexEntry]] | None) -> tuple[str, dict[str, IndexEntry]]:
    """Merge `updates` (None: the name is gone) into the index and write it, as a compare-and-swap
    on the version it was read at (`known`: the version this host wrote last, tried first).
    Returns the new (version, entries). In a worker thread."""
    for _ in range(CAS_TRIES):
        version, entries = known if known is not None else read_index(store, key)
        merged = dict(entries)
        for name, entry in updates.items():
            if entry is None:
                merged.pop(name, None)
            else:
                merged[name] = entry
        expect = Precondition(version) if version else CREATE_ONLY
        try:
            if not merged:
                if version:
                    store.delete(key, expect=expect)
                return "", {}
            info = store.put_bytes(key, encode(merged), {}, expect=expect)
        except (VersionMismatch, ObjectNotFound):
            known = None  # another host wrote it meanwhile: read theirs and merge again
            continue
        return info.version, merged
    raise RemoteError(getattr(store, "name", ""), f"the directory index {key} keeps changing")


class DirIndexes:
    def __init__(self, stores: Mapping[str, ObjectStore], remote: RemoteCalls, *,
                 indexed: Collection[str], writable: Collection[str]) -> None:
        self.stores = stores
        self.remote = remote
        self._indexed = set(indexed)  # remotes whose listings are completed by indexes
        self._writable = self._indexed & set(writable)
        self._pending: dict[tuple[str, str], dict[str, IndexEntry | None]] = {}
        self._writing = 0
        self._wake = trio.Event()
        self._written = trio.Event()  # replaced after each round of writes
        self._none_exist: set[str] = set()  # remotes whose root listing showed no index at all
        self._decided: set[str] = set()  # remotes of which a listing told whether they have indexes
        self._finding_out: dict[str, trio.Event] = {}  # remotes being asked that now (`find_out`)
        self._failures: dict[tuple[str, str], int] = {}  # writes that failed in a row, per index
        self._known: OrderedDict[tuple[str, str], tuple[str, dict[str, IndexEntry]]] = OrderedDict()
        self.stats = {"index_writes": 0, "index_reads": 0, "index_write_errors": 0}

    def indexed(self, remote: str | None) -> bool:
        return remote in self._indexed

    def may_exist(self, remote: str) -> bool:
        """Whether a directory of `remote` may have an index (unknown until its root is listed)."""
        return remote in self._indexed and remote not in self._none_exist

    def known_absent(self, remote: str) -> bool:
        """Whether `remote` is known to have no index at all (a bucket no mountd wrote, as a
        listing of its root or of `.mountd-attrs/` showed): a listing's attributes are then final."""
        return remote in self._indexed and remote in self._decided and remote in self._none_exist

    async def find_out(self, remote: str) -> None:
        """Whether `remote` has indexes at all, when no listing of its root said so in this
        process (a remount serves the root from the db): one one-key listing of `.mountd-attrs/`,
        not a GET of a missing index per directory (`du` of 3,000 directories asked 6,000)."""
        if remote in self._decided or remote not in self._indexed:
            return
        asking = self._finding_out.get(remote)
        if asking is not None:  # (one listing asks at a time; the others wait for its answer)
            await asking.wait()
            return
        asking = self._finding_out[remote] = trio.Event()
        try:
            await self._find_out(remote)
        finally:
            del self._finding_out[remote]
            asking.set()

    async def _find_out(self, remote: str) -> None:
        store = self.stores[remote]
        try:
            page = await self.remote.call(store, partial(store.list_page, ATTRS_DIR + "/", None, 1),
                                          what=f"listing of {ATTRS_DIR}/")
        except RemoteError as e:
            log.debug("whether %s has directory indexes: %s", remote, e)
            return
        if remote in self._decided:  # (a root listing said so meanwhile)
            return
        if page.listing.objects or page.listing.prefixes:
            self.exist(remote)
        else:
            self.none_exist(remote)

    def exist(self, remote: str) -> None:
        self._none_exist.discard(remote)
        self._decided.add(remote)

    def none_exist(self, remote: str) -> None:
        """`remote`'s root was listed whole and has no `.mountd-attrs/`: no index to read (until
        this host writes one)."""
        self._none_exist.add(remote)
        self._decided.add(remote)

    # --- what this host wrote -----------------------------------------------------------------
    def stored(self, remote: str, key: str, info: ObjectInfo | None,
               metadata: Mapping[str, str] | None) -> None:
        """The write-back stored `info` with `metadata` at `key` (info None: deleted it). Quick;
        on the trio thread."""
        where = split_key(key) if remote in self._writable else None
        if where is None or (info is not None and not metadata):
            return
        entry = IndexEntry(info.version, info.size, dict(metadata or {})) if info is not None else None
        self._pending.setdefault((remote, where[0]), {})[where[1]] = entry
        self._none_exist.discard(remote)
        self._wake.set()

    async def wait_written(self, timeout: float) -> bool:
        """Until every update made so far is in its index (`sync --wait` waits for this too)."""
        with trio.move_on_after(timeout):
            while self._pending or self._writing:
                await self._written.wait()
            return True
        return False

    async def run(self) -> None:
        took = 0.0
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # a directory being filled is encoded whole at each batch: the batches space out as
            # they grow, so writing indexes takes at most about a fifth of the time
            await trio.sleep(max(BATCH_WAIT, BATCH_SPACING * took))
            batches, self._pending = self._pending, {}
            self._writing += 1
            started = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    limit = trio.CapacityLimiter(WRITERS)
                    for where, updates in batches.items():
                        nursery.start_soon(self._write_batch, where, updates, limit)
            finally:
                took = trio.current_time() - started
                self._writing -= 1
                written, self._written = self._written, trio.Event()
                written.set()

    async def _write_batch(self, where: tuple[str, str], updates: dict[str, IndexEntry | None],
                           limit: trio.CapacityLimiter) -> None:
        remote, prefix = where
        store, key = self.stores[remote], index_key(prefix)
        async with limit:
            try:
                known = self._known.get(where)
                result = await self.remote.call(store, write_index, store, key, updates, known,
                                                what=f"write of the directory index {key}")
            except RemoteError as e:
                self.stats["index_write_errors"] += 1
                self._known.pop(where, None)
                tries = self._failures[where] = self._failures.get(where, 0) + 1
                if tries >= WRITE_TRIES:  # (read-only credentials, a long outage): only a cache
                    del self._failures[where]
                    log.warning("directory index %s of %s not written after %d tries (%s): its %d "
                                "updates are dropped; those objects show their listing attributes "
                                "elsewhere until a HEAD", key, remote, tries, e, len(updates))
                    return
                log.info("directory index %s of %s not written (%s); tried again later", key, remote, e)
                await trio.sleep(RETRY_AFTER)
                later = self._pending.setdefault(where, {})
                for name, entry in updates.items():
                    later.setdefault(name, entry)  # (a newer update of the name wins)
                self._wake.set()
                return
        self._failures.pop(where, None)
        self.stats["index_writes"] += 1
        self._remember(where, result)

    def _remember(self, where: tuple[str, str], result: tuple[str, dict[str, IndexEntry]]) -> None:
        self._known.pop(where, None)
        if result[0]:
            self._known[where] = result
        total = sum(len(e) for _, e in self._known.values())
        while self._known and total > CACHED_ENTRIES:
            _, (_, dropped) = self._known.popitem(last=False)
            total -= len(dropped)

    # --- what a reader asks -------------------------------------------------------------------
    async def read(self, remote: str, prefix: str) -> dict[str, IndexEntry]:
        """The entries of a directory's index ({} when it has none). RemoteError if unreachable."""
        store, key = self.stores[remote], index_key(prefix)
        self.stats["index_reads"] += 1
        return await self.remote.call(store, _read_entries, store, key,
                                      what=f"read of the directory index {key}")

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "index_updates_pending": sum(len(u) for u in self._pending.values())}
