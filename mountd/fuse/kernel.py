"""`FuseKernel`: the vfs's `Kernel` interface over pyfuse3.

Passthrough is off until the kernel's INIT grants it (`MountdOperations.init` calls `granted`),
and off for good once the kernel refuses a backing file. Invalidations are queued and sent by
`run` from a worker thread: pyfuse3 documents that `invalidate_inode` may block (the kernel can
call back into the file system while it invalidates), and the trio thread must keep serving.
"""

from __future__ import annotations

import logging

import pyfuse3
import trio

log = logging.getLogger(__name__)


class FuseKernel:
    def __init__(self) -> None:
        self._passthrough = False
        self._send, self._queued = trio.open_memory_channel[tuple[int, bytes | None]](float("inf"))
        self.invalidations = 0

    @property
    def passthrough(self) -> bool:
        return self._passthrough

    def granted(self) -> None:
        """The kernel answered INIT with passthrough."""
        self._passthrough = True

    def backing_open(self, fd: int) -> int:
        return int(pyfuse3.backing_open(fd))

    def backing_close(self, backing_id: int) -> None:
        pyfuse3.backing_close(backing_id)

    def passthrough_refused(self, reason: str) -> None:
        self._passthrough = False

    def invalidate_inode(self, ino: int) -> None:
        self._send.send_nowait((ino, None))

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        self._send.send_nowait((parent, name))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued invalidations to the kernel until cancelled."""
        task_status.started()
        async for ino, name in self._queued:
            await trio.to_thread.run_sync(_invalidate_quietly, ino, name)
            self.invalidations += 1


def _invalidate_quietly(ino: int, name: bytes | None) -> None:
    try:
        if name is None:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        else:
            # not the _async variant: its queue logs a traceback for a name the kernel never looked up
            pyfuse3.invalidate_entry(ino, name)
    except (FileNotFoundError, OSError) as e:  # the kernel no longer knows it: nothing to drop
        log.debug("invalidating %d %r: %s", ino, name, e)
