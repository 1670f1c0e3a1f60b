"""`Fetches`: the GETs of chunks in flight, one per chunk however many readers want it.

Background fetches (prefetch, read_whole, pins) share `fetch_concurrency` GETs; a reader's own
fetch never queues behind them. Each GET has the mount's `read_timeout`: a remote that stalls
fails the read instead of holding it. Only the caller whose call made the GET is told to admit
the chunk, so it is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

from mountd.backend import ObjectStore
from mountd.cache.reader import ObjectRef
from mountd.cache.store import TierStore
from mountd.errors import MountdError, RemoteError, RemoteUnavailable


@dataclass(slots=True, eq=False)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: MountdError | None = None


class Fetches:
    def __init__(self, stores: Mapping[str, ObjectStore], *, timeout: float, concurrency: int,
                 on_fetching: Callable[[bool], None]) -> None:
        self._stores = stores
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)
        # told True when the first GET starts and False when the last ends (the FUSE layer stops
        # polling its device meanwhile: a polling CPU is one that the download threads lack)
        self._on_fetching = on_fetching
        self._inflight: dict[str, _Flight] = {}
        self.gets = 0
        self.bytes_fetched = 0
        self.errors = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    async def wait_one(self) -> None:
        await next(iter(self._inflight.values())).done.wait()

    async def fetch(self, key: str, obj: ObjectRef, start: int, stop: int, target: TierStore | None, *,
                    background: bool) -> tuple[bytes, bool]:
        """Bytes [start, stop) of `obj`, the chunk `key`, and True when this call made the GET
        (its caller admits the chunk to `target`, whose misses it counts)."""
        while (flight := self._inflight.get(key)) is not None:
            await flight.done.wait()
            if flight.data is not None:
                return flight.data, False
            if flight.error is not None:
                raise flight.error
        flight = self._inflight[key] = _Flight()
        if len(self._inflight) == 1:
            self._on_fetching(True)
        try:
            if background:
                async with self._limiter:
                    data = await self._get(obj, start, stop, target)
            else:
                data = await self._get(obj, start, stop, target)
            flight.data = data
        except MountdError as e:
            flight.error = e
            raise
        finally:
            del self._inflight[key]
            if not self._inflight:
                self._on_fetching(False)
            flight.done.set()
        return data, True

    async def _get(self, obj: ObjectRef, start: int, stop: int, target: TierStore | None) -> bytes:
        store = self._stores[obj.remote]
        if target is not None:
            target.stats.misses += 1
        self.misses += 1
        try:
            with trio.move_on_after(self._timeout) as scope:
                # only bytes of the version the reader opened: never a mix of two versions
                data = await trio.to_thread.run_sync(partial(store.read_range, obj.key, start, stop,
                                                             version=obj.version),
                                                     abandon_on_cancel=True)
        except RemoteError:
            self.errors += 1
            raise
        if scope.cancelled_caught:
            self.errors += 1
            raise RemoteUnavailable(obj.remote, f"read of {obj.key!r} timed out after {self._timeout:g}s")
        self.gets += 1
        self.bytes_fetched += len(data)
        return data
