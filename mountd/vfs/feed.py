"""`ChangeFeed`: each remote's change log, written by every host that changes it and followed by all.

Without it a host sees another host's changes only when a listing or a revalidation happens to
look (`mount.listing_ttl`). With it, every batch of changes this host's write-back makes (keys
written, with their new versions, and keys deleted) becomes one small object under
`.mountd-log/` at the root of the remote, named by a sequence number and written create-only:
the store's own conditional write decides the one total order, so no other service is needed.
Every host lists that prefix each `mount.poll_interval` (one request when nothing changed),
reads the entries it has not applied, and hands each change to `RemoteView.apply_remote_change`,
which updates exactly those names and inodes and tells the kernel to forget them.

Entry N is written only by a host that has applied entry N-1 (it tries last + 1; a refusal means
someone else took that number: it reads the newcomers and tries again), so the log has no gaps;
a follower that finds one was offline while the log was compacted (entries older than `KEEP`
are deleted by whoever writes a multiple of `COMPACT_EVERY`) and lists everything again.
On a store that does not enforce create-only writes two hosts may take the same number and one
entry is lost: the feed is then a hint, and listings and revalidation still find every change.

It owns the log's sequence state (in memory, and the last applied entry in meta.db's `feed`
table) and the batch of changes not yet logged; it never touches the namespace itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from functools import partial
from typing import Any

import trio

from mountd.backend import CREATE_ONLY, ObjectStore
from mountd.errors import RemoteError, VersionMismatch
from mountd.meta import MetaStore
from mountd.vfs.namespace import FEED_DIR
from mountd.vfs.remote_calls import RemoteCalls
from mountd.vfs.remote_view import RemoteView

log = logging.getLogger(__name__)

KEEP = 1000  # log entries kept behind the newest
COMPACT_EVERY = 100  # the writer of entry N (N a multiple of this) deletes entries up to N - KEEP
MAX_ENTRY = 4 << 20  # bytes of one entry read at most
BATCH_WAIT = 0.02  # seconds changes gather before one entry is written
CATCH_UP_LIMIT = 30.0  # seconds the first catch-up may hold back the uploads


def entry_key(n: int) -> str:
    return f"{FEED_DIR}/{n:012d}"


def is_log_key(key: str) -> bool:
    return key == FEED_DIR or key.startswith(FEED_DIR + "/")


class ChangeFeed:
    def __init__(self, meta: MetaStore, stores: Mapping[str, ObjectStore], view: RemoteView,
                 remote: RemoteCalls, *, host: str, poll_interval: float, writable: Collection[str],
                 followed: Collection[str]) -> None:
        self.meta = meta
        self.stores = stores
        self.view = view
        self.remote = remote
        self.host = host
        self.poll_interval = poll_interval
        self._writable = set(writable)
        self._followed = set(followed)
        # remote -> key -> (new version (None: deleted), whether its attributes alone changed)
        self._pending: dict[str, dict[str, tuple[str | None, bool]]] = {}
        self._writing = 0
        self._wake = trio.Event()
        self._logged = trio.Event()  # replaced after each write: `wait_logged` waits on it
        self._locks: dict[str, trio.Lock] = {}
        self._writer = meta.instance_id()  # entries with this writer are this local tier's own
        self.stats = {"entries_written": 0, "entries_applied": 0, "changes_applied": 0, "polls": 0,
                      "relists": 0, "poll_errors": 0}

    @property
    def enabled(self) -> bool:
        return self.poll_interval > 0 and bool(self._followed)

    # --- what this host changed ---------------------------------------------------------------
    def changed(self, remote: str, key: str, version: str | None, *, attrs: bool = False) -> None:
        """The write-back wrote `version` at `key` (None: deleted it); `attrs`: it changed the
        object's metadata alone, which may keep its version. Quick; on the trio thread."""
        if (not self.enabled or remote not in self._writable or is_log_key(key)
                or "/.mountd-tmp-" in "/" + key):
            return
        pending = self._pending.setdefault(remote, {})
        earlier = pending.get(key)
        pending[key] = (version, attrs or (earlier is not None and earlier[1]))
        self._wake.set()

    async def wait_logged(self, timeout: float) -> bool:
        """Until every change made so far is in the log (a `sync --wait` waits for this too)."""
        with trio.move_on_after(timeout):
            while self._pending or self._writing:
                await self._logged.wait()
            return True
        return False

    # --- the tasks ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up with each followed log first (the uploads start after it, so queued changes
        of a host that was offline compare against the newest versions), then write and follow."""
        if not self.enabled:
            task_status.started()
            return
        with trio.move_on_after(CATCH_UP_LIMIT):
            for name in sorted(self._followed):
                await self._poll_quietly(name)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop)
            nursery.start_soon(self._follow_loop)

    async def _follow_loop(self) -> None:
        while True:
            await trio.sleep(self.poll_interval)
            for name in sorted(self._followed):
                await self._poll_quietly(name)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(BATCH_WAIT)
            for name in list(self._pending):
                changes = self._pending.pop(name, {})
                if not changes:
                    continue
                self._writing += 1
                try:
                    await self._append(name, changes)
                except RemoteError as e:
                    log.info("remote %r: change log not written (%s); trying again", name, e)
                    for key, change in changes.items():
                        self._pending.setdefault(name, {}).setdefault(key, change)
                    self._wake.set()
                    await trio.sleep(self.poll_interval)
                finally:
                    self._writing -= 1
                    self._logged.set()
                    self._logged = trio.Event()

    # --- writing --------------------------------------------------------------------------------
    async def _append(self, name: str, changes: dict[str, tuple[str | None, bool]]) -> None:
        store = self.stores[name]
        body = json.dumps({"host": self.host, "writer": self._writer, "time": time.time(),
                           "changes": [{"key": k, "version": v, **({"attrs": True} if attrs else {})}
                                       for k, (v, attrs) in changes.items()]}).encode()
        async with self._lock(name):
            while True:
                n = (self.meta.feed_last(name) or 0) + 1
                try:
                    await self.remote.call(store, partial(store.put_bytes, expect=CREATE_ONLY), entry_key(n),
                                           body, {}, what=f"change log entry {n}")
                except VersionMismatch:
                    await self._poll(name)  # someone else took n: read the newcomers, then try after them
                    continue
                with self.meta.transaction():
                    self.meta.feed_set_last(name, n)
                self.stats["entries_written"] += 1
                break
        if n % COMPACT_EVERY == 0 and n > KEEP:
            await self._compact(name, store, n - KEEP)

    async def _compact(self, name: str, store: ObjectStore, upto: int) -> None:
        listing = await self.remote.call(store, store.list_dir, FEED_DIR + "/")
        for n in sorted(_numbers(listing.objects)):
            if n > upto:
                break
            await self.remote.call(store, store.delete, entry_key(n))

    # --- following ------------------------------------------------------------------------------
    def _lock(self, name: str) -> trio.Lock:
        return self._locks.setdefault(name, trio.Lock())

    async def _poll_quietly(self, name: str) -> None:
        try:
            async with self._lock(name):
                await self._poll(name)
        except RemoteError as e:
            self.stats["poll_errors"] += 1
            log.debug("remote %r: change log not read: %s", name, e)

    async def _poll(self, name: str) -> None:
        """Apply the entries after the last one applied (the caller holds the remote's lock)."""
        store = self.stores[name]
        self.stats["polls"] += 1
        last = self.meta.feed_last(name)
        if last is None:
            # a host new to this remote has nothing cached that could be stale: start at the end
            listing = await self.remote.call(store, store.list_dir, FEED_DIR + "/")
            numbers = _numbers(listing.objects)
            self._set_last(name, max(numbers) if numbers else 0)
            return
        new = sorted(n for n in await self._entries_after(store, last) if n > last)
        if new and new != list(range(last + 1, last + 1 + len(new))):
            # entries this host never read are gone (compacted while it was away): what they said
            # is unknown, so every directory is listed again
            dirs = self.view.forget_all_listings(name)
            self.stats["relists"] += 1
            log.info("remote %r: the change log was compacted past entry %d that this host read last: %d "
                     "directories will be listed again", name, last, dirs)
            self._set_last(name, new[-1])
            return
        for n in new:
            await self._apply(name, store, n)
            self._set_last(name, n)

    async def _entries_after(self, store: ObjectStore, last: int) -> list[int]:
        """The numbers of the entries after `last`: one small listing when nothing is new, however
        many entries the log keeps (S3 and GCS start it after `last`; Azure filters its pages)."""
        numbers: list[int] = []
        token: str | None = None
        while True:
            page = await self.remote.call(store, partial(store.list_page, FEED_DIR + "/", token,
                                                         start_after=entry_key(last)))
            numbers += _numbers(page.listing.objects)
            token = page.next_token
            if token is None:
                return numbers

    async def _apply(self, name: str, store: ObjectStore, n: int) -> None:
        data = await self.remote.call(store, store.read_range, entry_key(n), 0, MAX_ENTRY)
        try:
            entry = json.loads(data)
            changes = [(str(c["key"]), None if c.get("version") is None else str(c["version"]),
                        c.get("attrs") is True) for c in entry.get("changes", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("remote %r: change log entry %d is not readable; skipped", name, n)
            return
        if entry.get("writer") == self._writer:
            return  # this local tier's own changes (written before a restart): known here
        for key, version, attrs in changes:
            if await self.view.apply_remote_change(name, key, version, attrs=attrs):
                self.stats["changes_applied"] += 1
        self.stats["entries_applied"] += 1

    def _set_last(self, name: str, n: int) -> None:
        with self.meta.transaction():
            self.meta.feed_set_last(name, n)

    def statistics(self) -> dict[str, Any]:
        return dict(self.stats)


def _numbers(objects: Any) -> list[int]:
    out = []
    for o in objects:
        tail = o.key.rpartition("/")[2]
        if tail.isdigit():
            out.append(int(tail))
    return out
