"""`ReadAhead`: the sequential prefetch window of one object. Pure logic, no I/O.

Reads that continue where the previous ones ended (give or take `slack`, because the kernel's
read-ahead requests are served concurrently and may arrive slightly out of order) are a
stream: its second read opens a window of one chunk, and each time the stream enters a new
chunk the window doubles, up to `max_chunks`; and the chunks ahead of the reader inside the
window are to be fetched. A read anywhere else is a seek: the window drops to zero. Each chunk is
proposed at most once per stream.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ReadAhead:
    chunk_size: int
    chunks: int  # chunks in the object
    max_chunks: int
    slack: int = 4 << 20
    next_offset: int = -1
    window: int = 0
    current: int = -1  # chunk the stream is in
    proposed: int = -1  # highest chunk index proposed so far

    def on_read(self, offset: int, end: int) -> range:
        """Chunk indexes to fetch ahead after a read of [offset, end)."""
        sequential = self.next_offset >= 0 and abs(offset - self.next_offset) <= self.slack
        self.next_offset = max(end, self.next_offset) if sequential else end
        last = (end - 1) // self.chunk_size
        if not sequential:
            self.window = 0
            self.current = last
            self.proposed = last
            return range(0)
        if self.window == 0:
            self.window = 1
        elif last > self.current:
            self.window = min(self.max_chunks, self.window * 2)
        self.current = max(self.current, last)
        stop = min(self.chunks - 1, last + self.window)
        start = max(last + 1, self.proposed + 1)
        if stop < start:
            return range(0)
        self.proposed = stop
        return range(start, stop + 1)
