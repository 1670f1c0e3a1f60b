"""`Journal`: the front of the write-back queue that the vfs writes to.

An entry names one object key of one remote that must be made to match the local view; it
does not say how (upload, copy, delete, metadata): the reconciler decides that from the state
at the time it runs, so a burst of changes to one key costs one remote operation and entries
for one key can never apply out of order. Entries are rows of the SQLite journal, committed in
the same transaction as the metadata change that caused them, before the FUSE call returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from mountd.meta import MetaStore


class Journal:
    def __init__(self, meta: MetaStore, *, delay: float, clock: Callable[[], float] = time.time,
                 on_put: Callable[[str, str], None] = lambda remote, key: None) -> None:
        self._meta = meta
        self.delay = delay
        self.clock = clock
        self._changed = trio.Event()
        self._on_put = on_put  # `UploadsSending.key_queued`: stops an upload of a changed key

    def put(self, remote: str, key: str, *, delay: float | None = None) -> None:
        """Queue `key` for reconciliation after the write-back delay (a re-put resets the timer)."""
        self._meta.journal_put(remote, key, self.clock() + (self.delay if delay is None else delay))
        self._on_put(remote, key)
        self.notify()

    def notify(self) -> None:
        self._changed.set()

    async def wait_changed(self) -> None:
        await self._changed.wait()
        self._changed = trio.Event()
