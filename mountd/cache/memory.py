"""`ChunkMemory`: the chunks the cache holds in memory, each kind bounded in bytes.

A fetched chunk is kept while it is written to its tier, so that readers are served at once and
a pin waits for the write instead of fetching again; a chunk no tier takes (no rule routes its
object there, or it would not fit) is kept among the last few, so that the reader of the rest of
that chunk does not fetch it again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio


@dataclass(slots=True, eq=False)
class Write:
    data: bytes
    done: trio.Event = field(default_factory=trio.Event)


class ChunkMemory:
    def __init__(self, chunk_size: int) -> None:
        self._writes: dict[str, Write] = {}  # fetched, being admitted
        self._write_bytes = 0
        self._max_write_bytes = 8 * chunk_size
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # chunks no store took
        self._recent_bytes = 0
        self._max_recent_bytes = 4 * chunk_size

    def get(self, key: str) -> bytes | None:
        w = self._writes.get(key)
        if w is not None:
            return w.data
        data = self._recent.get(key)
        if data is not None:
            self._recent.move_to_end(key)
        return data

    def writing(self, key: str) -> Write | None:
        return self._writes.get(key)

    @property
    def writes(self) -> int:
        return len(self._writes)

    def begin_write(self, key: str, data: bytes) -> Write | None:
        """The write to hand to the tier; None when this chunk is being written already."""
        if key in self._writes:
            return None
        write = self._writes[key] = Write(data)
        self._write_bytes += len(data)
        return write

    @property
    def lagging(self) -> bool:
        """Writes lag behind fetches: the reader of the next chunk should wait for its own write."""
        return self._write_bytes > self._max_write_bytes

    def end_write(self, key: str, write: Write) -> None:
        del self._writes[key]
        self._write_bytes -= len(write.data)
        write.done.set()

    def remember(self, key: str, data: bytes) -> None:
        if key in self._recent:
            return
        self._recent[key] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > self._max_recent_bytes and len(self._recent) > 1:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key in self._recent:
                self._recent_bytes -= len(self._recent.pop(key))

    def clear_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0
