"""`Departures`: files moved out of a remote whose bytes are still only in its object.

A rename out of a remote (into a local-only path or another remote) is one transaction in the
mount, however large the tree, as a move into one is (rename.py). What is on the local tier
already (written here, or fetched) simply becomes the destination's at once (`arrive`). A file
whose bytes are only in the source object *departs*: its inode keeps that object as its source
(reads go on coming from it, through the cache), a row in `departures` says where it went, and
this module fetches it onto the local tier in the background, then makes it the destination's
(a local-only file, or a new object there, uploaded from the local tier). The source keys were
journaled by the rename: the reconciler deletes a source object only once no departing inode
takes its bytes from it, so a `kill -9` at any point resumes at the next start from the table and
the journal, and nothing is fetched or sent twice. `mountd status` counts what is left and
`sync --wait` waits for it (the deletes wait for the fetches).

It owns the fetches in flight and their back-off; the rows are MetaStore's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator

import trio

from mountd.errors import MountdError, VersionMismatch
from mountd.meta import Inode, MetaStore
from mountd.vfs.local_copies import LocalCopies
from mountd.vfs.paths import PathMap
from mountd.writeback import Journal
from mountd.writeback.backpressure import DirtyBytes
from mountd.writeback.uploader import backoff

log = logging.getLogger(__name__)
FETCHES = 4  # files fetched at once (each holds a worker thread while it downloads)
SCAN_PAGE = 1000  # departing inodes read from the db at a time


def arrive(meta: MetaStore, dirty: DirtyBytes, node: Inode, dest: str | None) -> None:
    """`node` (its bytes on the local tier, or none to have: a directory, a symlink, a FIFO) is
    the destination's now: a local-only file, or one to send to remote `dest` (the caller
    journals its keys there). Within the caller's transaction. Its old key's version stays known
    (`MetaStore._displace`), for the compare-and-swap of the source's delete."""
    values: dict[str, object] = {"remote": dest, "remote_key": None, "remote_version": None}
    if node.is_dir:
        values.update(marker=int(dest is not None), listed_at=time.time() if dest is not None else None,
                      meta_loaded=1)
    if dest is None:
        values.update(link_group=None, synced_gen=node.content_gen, synced_attr_gen=node.attr_gen)
        meta.update(node.ino, **values)
        dirty.clear(node.ino)
        return
    meta.update(node.ino, **values)
    if node.is_reg:
        meta.bump(node.ino, "content_gen")
    meta.bump(node.ino, "attr_gen")
    if node.is_reg and node.has_local:
        dirty.set(node.ino, node.size)


class Departures:
    def __init__(self, meta: MetaStore, paths: PathMap, journal: Journal, dirty: DirtyBytes,
                 copies: LocalCopies, *, retry_initial: float, retry_max: float) -> None:
        self.meta = meta
        self.paths = paths
        self.journal = journal
        self.dirty = dirty
        self.copies = copies
        self._retry = (retry_initial, retry_max)
        self._failures: dict[int, tuple[int, float]] = {}  # ino -> (attempts, not before)
        self._in_flight: set[int] = set()
        self._wake = trio.Event()
        self.stats = {"departed": 0, "departure_failures": 0, "departures_replaced": 0}

    def started(self) -> None:
        """A rename made departures: fetch them now."""
        self._wake.set()

    def statistics(self) -> dict[str, int]:
        files, size = self.meta.departing_bytes()
        return {**self.stats, "departing": files, "departing_bytes": size}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch every departing file, those of an earlier run first, until cancelled."""
        limit = trio.Semaphore(FETCHES)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._wake = trio.Event()
                now = time.monotonic()
                later: list[float] = []
                for ino in self._all_departing():
                    if ino in self._in_flight:
                        continue
                    not_before = self._failures.get(ino, (0, 0.0))[1]
                    if not_before > now:
                        later.append(not_before)
                        continue
                    await limit.acquire()
                    self._in_flight.add(ino)
                    nursery.start_soon(self._depart, ino, limit)
                with trio.move_on_after(min(later) - now if later else float("inf")):
                    await self._wake.wait()

    async def _take_what_replaced_it(self, node: Inode, mismatch: VersionMismatch) -> None:
        """The object a file departs from was replaced at its key before its bytes were fetched.
        When this host replaced it, the old bytes were saved first and the inode's source moved
        to them (the next try fetches from there: re-raised). Otherwise another host (or tool)
        wrote the key, and the moved version is gone from the store: the file takes the bytes now
        at the key rather than wait for a version that cannot come back (before, it was fetched
        again with back-off forever, and `sync --wait` never returned). The conflict is recorded,
        and the version the move left is kept as the one its source delete expects, so the other
        host's object stays at its key."""
        fresh = self.meta.get(node.ino)
        if (fresh is None or fresh.remote is None or fresh.remote_key is None
                or fresh.remote_key != node.remote_key or fresh.has_local):
            raise mismatch
        moved_version = fresh.remote_version
        await self.copies.materialize(fresh)  # the version at the key now
        taken = self.meta.get(node.ino)
        if taken is None:
            return
        with self.meta.transaction():
            self.meta.conflict_add(fresh.remote, fresh.remote_key, copy_key=None, expected=moved_version,
                                   found=taken.remote_version, local_mtime_ns=fresh.mtime_ns,
                                   resolution="moved-newer")
            self.meta.update(node.ino, remote_version=moved_version)
        self.stats["departures_replaced"] += 1
        log.warning("%s:%s, moved out of its remote, was replaced there (version %s, the move took %s) "
                    "before its bytes were fetched: the moved file holds the newer bytes, and the "
                    "object stays", fresh.remote, fresh.remote_key, taken.remote_version, moved_version)

    def _all_departing(self) -> Iterator[int]:
        """Every departing inode, read a page at a time (a move of a million files is a million
        rows, and this pass goes over them while fetches run)."""
        after = 0
        while page := self.meta.departures(after=after, limit=SCAN_PAGE):
            yield from page
            after = page[-1]

    async def _depart(self, ino: int, limit: trio.Semaphore) -> None:
        try:
            node = self.meta.get(ino)
            if node is not None and node.is_reg and not node.has_local:
                try:
                    await self.copies.materialize(node, exact=True)  # from the object it left
                except VersionMismatch as e:
                    await self._take_what_replaced_it(node, e)
            departing, dest = self.meta.departure_dest(ino)
            node = self.meta.get(ino)
            with self.meta.transaction():
                if node is not None and departing:
                    arrive(self.meta, self.dirty, node, dest)
                    for key in self.paths.keys_of(ino):  # (its new keys, in the remote it went to)
                        self.journal.put(*key)
                    if node.remote is not None and node.remote_key:
                        self.journal.put(node.remote, node.remote_key, delay=0)  # its delete may go now
                self.meta.departure_done(ino)
            self._failures.pop(ino, None)
            self.stats["departed"] += 1
        except MountdError as e:
            attempts = self._failures.get(ino, (0, 0.0))[0] + 1
            wait = backoff(attempts, *self._retry, random.Random())
            self._failures[ino] = (attempts, time.monotonic() + wait)
            self.stats["departure_failures"] += 1
            log.warning("fetching inode %d, moved out of its remote, failed (attempt %d, again in %.0fs): %s",
                        ino, attempts, wait, e)
        finally:
            self._in_flight.discard(ino)
            limit.release()
            self._wake.set()
