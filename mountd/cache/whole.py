"""`WholeObjects`: objects of several chunks merged into one file, for the kernel to read directly.

Once every chunk of an object is in one tier, its chunks are merged into one file (`open` hands
that to the kernel: FUSE passthrough reads it with ext4's page cache and its large folios, which
FUSE's own page cache lacks). The merge needs room for the object twice until its chunks go, so
objects over half the tier's cap stay in chunks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

from mountd.cache.chunkfile import Assembly, Entry, Part
from mountd.cache.ident import Ident
from mountd.cache.reader import WholeFile
from mountd.cache.routing import chunk_key, whole_key
from mountd.cache.store import TierStore
from mountd.cache.warmup import WarmUp

log = logging.getLogger(__name__)


class WholeObjects:
    def __init__(self, tiers: Iterable[TierStore], *, passthrough: bool, clock: Callable[[], float]) -> None:
        self.passthrough = passthrough
        self._tiers = tuple(tiers)
        self._clock = clock
        self._merging: set[str] = set()  # bases whose chunks are being merged into one file
        self.merged = 0
        self.passthrough_opens = 0

    def claim(self, ident: Ident, tier: TierStore) -> bool:
        """True when every chunk of the object is in `tier` and no merged file exists or is being
        made: the caller runs `merge`."""
        if (not self.passthrough or ident.chunks < 2 or ident.base in self._merging
                or tier.max_size is not None and ident.obj.size > tier.max_size // 2):
            return False
        now = self._clock()
        # from the last chunk back: while a sequential reader fills the object, the check costs
        # one lookup per chunk written, not one per chunk already there
        if whole_key(ident.base) in tier.entries or any(
                tier.get(chunk_key(ident.base, i), now) is None for i in reversed(range(ident.chunks))):
            return False
        self._merging.add(ident.base)
        return True

    async def merge(self, ident: Ident, tier: TierStore) -> None:
        try:
            now = self._clock()
            found = [tier.get(chunk_key(ident.base, i), now) for i in range(ident.chunks)]
            entries = [e for e in found if e is not None]
            if len(entries) < ident.chunks:
                return  # one was evicted meanwhile
            tier.hold(entries)
            start = time.monotonic()
            try:
                parts = tuple(Part(tier.directory / e.filename, e.length, e.crcs, e.castagnoli,
                                   e.signature if e.fully_checked else None) for e in entries)
                merged = await tier.admit(whole_key(ident.base), Assembly(parts), ident.obj.size)
            finally:
                tier.release(entries)
            if merged:
                log.debug("merged %d chunks of %s:%s in %.3fs", len(entries), ident.obj.remote, ident.obj.key,
                          time.monotonic() - start)
                self.merged += 1
                await tier.remove([e.key for e in entries])
        finally:
            self._merging.discard(ident.base)

    def open(self, ident: Ident) -> WholeFile | None:
        """The merged file of the object, opened for the kernel to read directly, when it exists
        and all of it has been checked; it is not evicted until `WholeFile.close`."""
        if ident.chunks < 2:
            return None
        key = whole_key(ident.base)
        now = self._clock()
        for store in self._tiers:
            e = store.get(key, now)
            if e is None or e.length != ident.obj.size or (fd := store.open_trusted(e)) is None:
                continue
            store.hold([e])
            store.touch(e, now)
            store.stats.hits += 1
            self.passthrough_opens += 1

            warm_up = WarmUp(fd, e.length)  # the kernel's readahead alone keeps too little in flight

            def close(store: TierStore = store, e: Entry = e, fd: int = fd,
                      warm_up: WarmUp = warm_up) -> None:
                warm_up.stop()
                os.close(fd)
                store.release([e])

            return WholeFile(fd=fd, close=close)
        return None
