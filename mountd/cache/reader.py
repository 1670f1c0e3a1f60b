"""Ranged reads of remote objects with a bounded wait.

`DirectReader` keeps, per object version, the last block it fetched (block-aligned, `block_size`
bytes) in memory, so sequential 128 KiB-1 MiB kernel reads cost one GET per block instead of one
per request. Fetches run in worker threads; concurrent readers of the same block share one fetch.
A read that cannot be served within `timeout` seconds raises `RemoteUnavailable` (EIO).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from mountd.backend import ObjectStore
from mountd.errors import RemoteUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The identity of one version of a remote object."""

    remote: str
    key: str
    version: str
    size: int
    sha256: str | None = None


class RemoteReader(Protocol):
    async def read(self, obj: ObjectRef, offset: int, size: int) -> bytes: ...

    def forget(self, obj: ObjectRef) -> None: ...

    def statistics(self) -> dict[str, int]: ...


class DirectReader:
    def __init__(self, stores: Mapping[str, ObjectStore], *, block_size: int, timeout: float,
                 max_blocks: int = 16) -> None:
        self._stores = stores
        self._block_size = block_size
        self._timeout = timeout
        self._max_blocks = max_blocks
        self._blocks: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()
        self._inflight: dict[tuple[str, str, str, int], trio.Event] = {}
        self._stats = {"gets": 0, "bytes_fetched": 0, "block_hits": 0, "errors": 0}

    async def read(self, obj: ObjectRef, offset: int, size: int) -> bytes:
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        out = []
        pos = offset
        while pos < end:
            index = pos // self._block_size
            block = await self._block(obj, index)
            start = pos - index * self._block_size
            piece = block[start : start + (end - pos)]
            if not piece:
                break  # the object is shorter than its listed size
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    async def _block(self, obj: ObjectRef, index: int) -> bytes:
        bkey = (obj.remote, obj.key, obj.version, index)
        while True:
            data = self._blocks.get(bkey)
            if data is not None:
                self._blocks.move_to_end(bkey)
                self._stats["block_hits"] += 1
                return data
            event = self._inflight.get(bkey)
            if event is None:
                break
            await event.wait()  # single flight: someone else is fetching this block
            if bkey not in self._blocks:
                raise RemoteUnavailable(obj.remote, f"read of {obj.key!r} failed")
        event = self._inflight[bkey] = trio.Event()
        try:
            start = index * self._block_size
            stop = min(start + self._block_size, obj.size)
            store = self._stores[obj.remote]
            with trio.move_on_after(self._timeout) as scope:
                data = await trio.to_thread.run_sync(store.read_range, obj.key, start, stop, abandon_on_cancel=True)
            if scope.cancelled_caught:
                self._stats["errors"] += 1
                raise RemoteUnavailable(obj.remote, f"read of {obj.key!r} timed out after {self._timeout:g}s")
            self._stats["gets"] += 1
            self._stats["bytes_fetched"] += len(data)
            self._blocks[bkey] = data
            while len(self._blocks) > self._max_blocks:
                self._blocks.popitem(last=False)
            return data
        except RemoteUnavailable:
            raise
        except Exception:
            self._stats["errors"] += 1
            raise
        finally:
            del self._inflight[bkey]
            event.set()

    def forget(self, obj: ObjectRef) -> None:
        for k in [k for k in self._blocks if k[0] == obj.remote and k[1] == obj.key]:
            del self._blocks[k]

    def statistics(self) -> dict[str, int]:
        return dict(self._stats, blocks=len(self._blocks))
