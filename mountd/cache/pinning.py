"""`Pinning`: brings the chunks of pinned objects into the pinned store, and says which pinned
chunks an object's new version leaves unneeded.

The pin records are `PinSet`'s and the chunks the pinned `TierStore`'s; this only moves chunks
between stores: from a tier when one holds them (a merged object's file is cut back into chunks),
from memory when a fetch is being written, else from the remote.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from mountd.cache.chunkfile import Entry
from mountd.cache.ident import Ident
from mountd.cache.memory import ChunkMemory
from mountd.cache.pins import PinSet
from mountd.cache.reader import ObjectRef
from mountd.cache.routing import base_of, chunk_key, chunk_length, whole_key
from mountd.cache.store import TierStore
from mountd.errors import RemoteError

log = logging.getLogger(__name__)


class Pinning:
    def __init__(self, pinned: TierStore, pins: PinSet, tiers: Mapping[str, TierStore],
                 memory: ChunkMemory, *, chunk_size: int, parallel: int,
                 find: Callable[[str], tuple[TierStore, Entry, int] | None],
                 fetch: Callable[[Ident, int], Awaitable[bytes]]) -> None:
        self._pinned = pinned
        self._pins = pins
        self._tiers = tiers
        self._memory = memory
        self._chunk_size = chunk_size
        self._parallel = parallel
        self._find = find  # a chunk in a tier (not the pinned store)
        self._fetch = fetch  # a background fetch, admitted where its object's chunks go

    def note(self, obj: ObjectRef, base: str) -> list[str]:
        """Record that `obj`'s pinned chunks are those of `base`; returns the keys of pinned chunks
        that no pinned object needs any more (its earlier version's)."""
        old = self._pins.note_object(obj.remote, obj.key, base)
        if old is None or old in self._pins.needed_bases():
            return []
        return [k for k in self._pinned.entries if base_of(k) == old]

    async def pin_object(self, ident: Ident) -> bool:
        results: list[bool] = []
        limiter = trio.CapacityLimiter(self._parallel)

        async def one(index: int) -> None:
            async with limiter:
                results.append(await self._pin_chunk(ident, index))

        async with trio.open_nursery() as n:
            for index in range(ident.chunks):
                n.start_soon(one, index)
        if all(results):  # every chunk is in the pinned store now: a merged copy in a tier is not needed
            for store in self._tiers.values():
                if whole_key(ident.base) in store.entries:
                    await store.remove([whole_key(ident.base)])
        return all(results)

    async def _pin_chunk(self, ident: Ident, index: int) -> bool:
        key = chunk_key(ident.base, index)
        length = chunk_length(ident.obj.size, self._chunk_size, index)
        for _ in range(4):
            if key in self._pinned.entries:
                return True
            write = self._memory.writing(key)
            if write is not None:
                await write.done.wait()
                continue
            found = self._find(key)
            data = self._memory.get(key)
            if found is not None:  # move it from its tier
                store, e, start = found
                if e.key != key:
                    # a merged object's file: copy the chunk out of it (it goes once all are pinned)
                    data = await store.read_part(e, start, length)
                    if data is not None:
                        await self._pinned.admit(key, data, length)
                    continue
                data = await store.read_whole(e)
                if data is None:
                    continue
                if await self._pinned.admit(key, data, length):
                    await store.remove([key])
                continue
            if data is not None:
                await self._pinned.admit(key, data, length)
                continue
            try:
                await self._fetch(ident, index)
            except RemoteError as e:
                log.warning("pin: cannot fetch %s:%s: %s", ident.obj.remote, ident.obj.key, e)
                return False
        return key in self._pinned.entries
