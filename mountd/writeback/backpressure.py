"""`DirtyBytes`: how much closed, not-yet-uploaded data the local tier holds, and the brake on it.

A file counts from its last close until its upload is recorded (or it is deleted, or it turns
out to be ignored). Files still open for writing do not count: they cannot upload before they
are closed, so making their own writer wait for them would never end. When the total reaches
`local.max_dirty`, `wait_for_room` holds writers of *other* files until uploads catch up; it
never fails them. All of this runs on the trio thread; nothing here touches the disk.
"""

from __future__ import annotations

import trio


class DirtyBytes:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._shrunk = trio.Event()
        self.waits = 0
        self.seconds_waited = 0.0

    @property
    def total(self) -> int:
        return self._total

    def set(self, ino: int, size: int) -> None:
        """`ino` is closed and dirty with `size` bytes to upload."""
        old = self._sizes.get(ino, 0)
        self._sizes[ino] = size
        self._total += size - old
        if size < old:
            self._wake()

    def clear(self, ino: int) -> None:
        """`ino` no longer needs uploading (uploaded, deleted or ignored)."""
        size = self._sizes.pop(ino, None)
        if size is not None:
            self._total -= size
            self._wake()

    def over_limit(self, ino: int) -> bool:
        return self._total - self._sizes.get(ino, 0) >= self.limit

    async def wait_for_room(self, ino: int) -> None:
        """Return once the dirty bytes of files other than `ino` are under the limit."""
        if not self.over_limit(ino):
            return
        self.waits += 1
        start = trio.current_time()
        while self.over_limit(ino):
            await self._shrunk.wait()
        self.seconds_waited += trio.current_time() - start

    def _wake(self) -> None:
        self._shrunk.set()
        self._shrunk = trio.Event()

    def statistics(self) -> dict[str, float]:
        return {"dirty_bytes": self._total, "dirty_files": len(self._sizes), "max_dirty": self.limit,
                "writer_waits": self.waits, "writer_wait_seconds": round(self.seconds_waited, 3)}
