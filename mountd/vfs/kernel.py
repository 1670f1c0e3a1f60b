"""What the vfs may ask of the kernel, as a small interface the FUSE layer implements.

The vfs never imports pyfuse3: it is handed a `Kernel` at construction. The FUSE layer's
implementation (`mountd.fuse.kernel.FuseKernel`) learns at INIT whether passthrough was
granted; the in-process tests use `DetachedKernel`, which has no passthrough and records the
invalidations it was asked for, so a test can check that a change reached the kernel.
Invalidations never block the caller (the kernel may call back into the file system while it
invalidates): an implementation queues them.
"""

from __future__ import annotations

from typing import Protocol


class Kernel(Protocol):
    @property
    def passthrough(self) -> bool:
        """Whether the kernel may read and write backing files itself (granted at INIT)."""
        ...

    def backing_open(self, fd: int) -> int:
        """Register `fd` as a backing file; its id goes into the open reply (raises OSError)."""
        ...

    def backing_close(self, backing_id: int) -> None: ...

    def passthrough_refused(self, reason: str) -> None:
        """The kernel refused a backing file (e.g. ELOOP: the local tier is on FUSE): stop asking."""
        ...

    def invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached pages and attributes of `ino` (queued, never blocks)."""
        ...

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached lookup of `name` in `parent` (queued, never blocks)."""
        ...


class DetachedKernel:
    """No kernel: what the vfs runs against in-process. Records what it was asked to invalidate."""

    passthrough = False

    def __init__(self) -> None:
        self.invalidated_inodes: list[int] = []
        self.invalidated_entries: list[tuple[int, bytes]] = []

    def backing_open(self, fd: int) -> int:
        raise OSError("no kernel: passthrough is not available")

    def backing_close(self, backing_id: int) -> None:
        return None

    def passthrough_refused(self, reason: str) -> None:
        return None

    def invalidate_inode(self, ino: int) -> None:
        self.invalidated_inodes.append(ino)

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        self.invalidated_entries.append((parent, name))
