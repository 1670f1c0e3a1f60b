"""`Uploader`: applies due journal entries with capped concurrency and endless retries.

It knows nothing of paths or inodes: it takes due entries from the journal and hands each to
the `apply` callable it was given (the vfs reconciler). One key is in flight at most once; an
entry re-queued while in flight (a rewrite, a rename) stays in the journal and runs again.
Failures are retried with exponential backoff and jitter, forever, without holding up other
keys. `wait_drained` is what unmount and `mountd sync --wait` wait on.

Each entry has one retry schedule, kept in its journal row: `due` is the next attempt (what the
log announces and `status` shows) and `attempts` the failures so far. Nothing else may move a
failed entry's `due` earlier except an explicit `mountd sync` (no `--wait`): a drain skips the
write-back delay of entries that never failed, not the back-off of those that did. (An unmount
waits in 0.5 s steps, each a `wait_drained`; when those made every entry due, a failing upload
was retried every 0.5 s while the log said `retry in 307.8s`.)

Small objects get many more entries in flight than large ones: a 1 KiB upload waits on the
server's round trip, not on bandwidth, so `TransferSlots.in_flight` entries run at once, while the uploads
of files of `LARGE_OBJECT` bytes or more (hashing and sending) also take one of `concurrency` large
slots (`TransferSlots.slot`, entered by the reconciler): a burst of large files keeps the bandwidth
they had and never holds more than `concurrency` upload threads, and small files go past them.

New uploads yield to bursts of FUSE requests for at most `yield_max` after they became due
(in-flight ones go on): upload threads share the GIL with the FUSE handlers, and a loop creating
thousands of small files ran 3-8x slower while its first files were being uploaded. A drain
(`sync --wait`, unmount) is never held.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from mountd.activity import QUIET_GAP, RequestActivity
from mountd.errors import MountdError
from mountd.meta import JournalEntry, MetaStore
from mountd.writeback.journal import Journal

log = logging.getLogger(__name__)

ApplyFn = Callable[[JournalEntry], Awaitable[None]]


# the first wait of an entry that must wait for another (`Retry`); it doubles up to retry_initial
RETRY_WAIT = 0.2
# entries in flight at once when their objects are small; each may hold a worker thread while it
# waits on the server, so this stays well below trio's 40 threads that reads need too
SMALL_SLOTS = 16
# files of at least this many bytes also take one of the `concurrency` large slots
LARGE_OBJECT = 1 << 20



class TransferSlots:
    """The `concurrency` slots that hashing and sending a large file takes; the uploader runs up
    to `in_flight` entries at once, and the reconciler holds a slot while it sends a large one."""

    def __init__(self, concurrency: int, small: int = SMALL_SLOTS) -> None:
        self.in_flight = max(concurrency, small)
        self._large = trio.CapacityLimiter(concurrency)

    @asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        """Held while an entry hashes and sends `size` bytes: a large slot if the object is large,
        nothing for a small one."""
        if size < LARGE_OBJECT:
            yield
            return
        async with self._large:
            yield


class Retry(MountdError):
    """Raised by `apply` when an entry must wait for another (a copy before a delete)."""


def backoff(attempts: int, initial: float, most: float, rng: random.Random | None = None) -> float:
    """The wait before the next attempt after `attempts` failures (1 after the first).

    "Equal jitter": between half and all of min(most, initial * 2**(attempts - 1)), so that
    entries that failed together spread out, and the wait never exceeds `most`."""
    base = min(most, initial * 2 ** min(max(attempts - 1, 0), 40))
    return base / 2 + (rng or random).uniform(0, base / 2)


class Scope(Protocol):
    """Some of the journal's entries (those under a path of the mount), counted by the store."""

    def count(self, meta: MetaStore) -> int: ...


class Uploader:
    def __init__(self, meta: MetaStore, journal: Journal, apply: ApplyFn, *, slots: TransferSlots,
                 retry_initial: float, retry_max: float, activity: RequestActivity | None = None,
                 yield_max: float = 0.0, rng: random.Random | None = None) -> None:
        self._meta = meta
        self._activity = activity or RequestActivity()
        self._yield_max = yield_max
        self._draining = 0
        self._journal = journal
        self._apply = apply
        self._limit = trio.CapacityLimiter(slots.in_flight)  # entries in flight
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._rng = rng or random.Random()
        self.in_flight: dict[tuple[str, str], JournalEntry] = {}
        self._progress = trio.Event()
        self._stats = {"applied": 0, "failed": 0, "retried": 0}
        self.last_errors: list[tuple[str, str, str]] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = self._journal.clock()
                # in-flight entries stay in the journal: asking for as many more rows as there are free
                # tokens finds every startable entry without reading thousands of pending rows per wake-up
                wanted = len(self.in_flight) + int(self._limit.available_tokens)
                due = self._meta.journal_due(now, wanted) if self._limit.available_tokens else []
                startable = [e for e in due if (e.remote, e.key) not in self.in_flight]
                if startable and await self._yielded_to_requests(min(e.due for e in startable)):
                    continue  # the journal may have changed meanwhile: read it again
                for entry in startable:
                    ident = (entry.remote, entry.key)
                    if self._limit.available_tokens == 0:
                        break
                    await self._limit.acquire_on_behalf_of(ident)
                    self.in_flight[ident] = entry
                    nursery.start_soon(self._run_one, entry)
                next_due = self._meta.journal_next_due()
                wait = 3600.0 if next_due is None else max(0.0, next_due - self._journal.clock())
                if wait == 0.0 and (self._limit.available_tokens == 0 or self._all_due_in_flight()):
                    wait = 3600.0
                with trio.move_on_after(min(wait, 3600.0)):
                    await self._journal.wait_changed()

    async def _yielded_to_requests(self, due: float) -> bool:
        """Wait while FUSE requests keep coming, until `yield_max` after `due`; True if it waited."""
        waited = False
        while self._yield_max and not self._draining:
            busy_for = QUIET_GAP - self._activity.idle_for()
            hold_left = due + self._yield_max - self._journal.clock()
            if busy_for <= 0 or hold_left <= 0:
                break
            await trio.sleep(min(busy_for, hold_left))
            waited = True
        return waited

    def _all_due_in_flight(self) -> bool:
        # a due entry that is not in flight would be among the first len(in_flight) + 1 rows
        due = self._meta.journal_due(self._journal.clock(), len(self.in_flight) + 1)
        return all((e.remote, e.key) in self.in_flight for e in due)

    async def _run_one(self, entry: JournalEntry) -> None:
        ident = (entry.remote, entry.key)
        try:
            try:
                await self._apply(entry)
            except Retry as e:
                # waiting on another entry, not a failure of the remote: short waits, doubling to
                # retry_initial, so a wait that lasts (a verification that keeps failing) costs
                # at most one attempt per retry_initial
                wait = min(max(self._retry_initial, RETRY_WAIT), RETRY_WAIT * 2 ** min(entry.attempts, 20))
                log.debug("write-back of %s:%s runs again in %.1fs: %s", entry.remote, entry.key, wait, e)
                self._meta.journal_failed(entry.remote, entry.key, entry.seq, str(e),
                                          self._journal.clock() + wait)
            except MountdError as e:
                self._fail(entry, str(e))
            except sqlite3.OperationalError as e:  # e.g. the local disk is full: the entry stays queued
                self._fail(entry, f"metadata db: {e}")
            except Exception as e:  # a bug must not lose the entry nor stop the other uploads
                log.exception("write-back of %s:%s failed unexpectedly", entry.remote, entry.key)
                self._fail(entry, f"{type(e).__name__}: {e}")
            else:
                if self._meta.journal_done(entry.remote, entry.key, entry.seq):
                    self._stats["applied"] += 1
        except sqlite3.OperationalError as e:
            # the journal could not record the outcome; the entry is still there and runs again
            log.warning("write-back of %s:%s: cannot update the journal: %s", entry.remote, entry.key, e)
        finally:
            del self.in_flight[ident]
            self._limit.release_on_behalf_of(ident)
            self._journal.notify()
            self._progress.set()
            self._progress = trio.Event()

    def _fail(self, entry: JournalEntry, message: str) -> None:
        self._stats["failed"] += 1
        delay = backoff(entry.attempts + 1, self._retry_initial, self._retry_max, self._rng)
        log.warning("write-back of %s:%s failed (attempt %d, retry in %.1fs): %s", entry.remote, entry.key,
                    entry.attempts + 1, delay, message)
        # the row's `due` is the schedule: the run loop starts the entry then and not before
        self._meta.journal_failed(entry.remote, entry.key, entry.seq, message, self._journal.clock() + delay)
        self.last_errors = (self.last_errors + [(entry.remote, entry.key, message)])[-20:]

    def pending(self, scope: Scope | None = None) -> int:
        # called after every applied entry while draining: building every journal row each time
        # made an unmount with 6,000 pending files quadratic (seconds of CPU per hundred uploads);
        # a scope counts its entries with indexed queries for the same reason
        if scope is None:
            return self._meta.journal_count()
        return scope.count(self._meta)

    async def wait_drained(self, timeout: float, select: Scope | None = None) -> int:
        """Make matching entries due now and wait until none is left or `timeout` passes;
        returns what is left.

        Entries that failed keep their back-off: callers wait in steps (an unmount, every 0.5 s), and
        each step used to make a failing entry due again at once."""
        self._meta.journal_make_due(self._journal.clock(), failed=False)
        self._journal.notify()
        self._draining += 1
        try:
            with trio.move_on_after(timeout):
                while self.pending(select):
                    progress = self._progress
                    with trio.move_on_after(1.0):
                        await progress.wait()
        finally:
            self._draining -= 1
        return self.pending(select)

    def statistics(self) -> dict[str, int]:
        return dict(self._stats, pending=self._meta.journal_count(), in_flight=len(self.in_flight))
