"""`LocalTier`: the files on the fast local disk, one per inode, named by inode number.

It owns the `data/` directory under `local.path` (and `spare/`, through `SpareFiles`). Content
of dirty, local-only and pinned files lives here; writes go straight to these files. Nothing here
talks to a remote. Moving a spare into place is one quick call on the trio thread. Freeing a
file's blocks is not quick (unlinking or truncating a large file walks its extents): `discard`
renames the file out of `data/` at once and a worker thread unlinks it (`run`), and `truncate`
of a large file runs in a worker thread. Filling a file from a remote (`materialize_from`) is
slow and is run in a worker thread by the caller.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import trio

from mountd.errors import PosixError
from mountd.spares import SpareFiles

# a truncate that frees more than this runs in a worker thread
TRUNCATE_INLINE_MAX = 1 << 20


class LocalTier:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmp = root / "tmp"
        self.tmp.mkdir(exist_ok=True)
        for leftover in self.tmp.iterdir():  # partial downloads from a crashed run
            leftover.unlink(missing_ok=True)
        self.spares = SpareFiles(root / "spare")  # its refill task is run by `run`
        self._discards = (self.tmp / f"{n:x}.discard" for n in itertools.count())
        self._to_unlink: trio.MemorySendChannel[Path] | None = None
        self.discarded = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refill spares and unlink discarded files in worker threads, until cancelled."""
        send, receive = trio.open_memory_channel[Path](float("inf"))
        async with trio.open_nursery() as nursery:
            await nursery.start(self.spares.run)
            self._to_unlink = send
            task_status.started()
            try:
                async for path in receive:
                    await trio.to_thread.run_sync(_unlink_quietly, path)
            finally:
                self._to_unlink = None

    def path_for(self, ino: int) -> Path:
        return self.data / f"{ino:x}"

    def create_empty(self, ino: int) -> None:
        os.close(self.create_open(ino))

    def create_open(self, ino: int) -> int:
        """An empty data file, open for reading and writing (a new file is written next: one open).
        A spare made ahead is taken when one is ready (see `mountd.spares`)."""
        fd = self.spares.take(self.path_for(ino))
        if fd is not None:
            return fd
        return os.open(self.path_for(ino), os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)

    def exists(self, ino: int) -> bool:
        return self.path_for(ino).exists()

    def discard(self, ino: int) -> None:
        """Remove the inode's file from `data/` now; its blocks are freed by a worker thread (a
        leftover after a crash is swept from `tmp/` at the next start)."""
        if self._to_unlink is None:  # not running (start-up recovery): free it here
            self.path_for(ino).unlink(missing_ok=True)
            return
        gone = next(self._discards)
        try:
            os.rename(self.path_for(ino), gone)
        except FileNotFoundError:
            return
        self.discarded += 1
        self._to_unlink.send_nowait(gone)

    def open_fd(self, ino: int) -> int:
        try:
            return os.open(self.path_for(ino), os.O_RDWR)
        except FileNotFoundError:
            raise PosixError(errno.EIO, f"local data of inode {ino} is missing") from None

    async def truncate(self, ino: int, size: int) -> None:
        path = self.path_for(ino)
        if path.stat().st_size - size > TRUNCATE_INLINE_MAX:
            await trio.to_thread.run_sync(os.truncate, path, size)
        else:
            os.truncate(path, size)

    def size_of(self, ino: int) -> int:
        return self.path_for(ino).stat().st_size

    def materialize_from(self, ino: int, fetch: Callable[[Path], object]) -> None:
        """Fill the inode's file by `fetch(tmp_path)` then rename into place (worker thread)."""
        tmp = self.tmp / f"{ino:x}.part"
        try:
            fetch(tmp)
            os.replace(tmp, self.path_for(ino))
        finally:
            tmp.unlink(missing_ok=True)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) with its mode flags on a local data file (the os module has only
        posix_fallocate, mode 0); a worker thread's call: allocating can take a while."""
        if _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
            err = ctypes.get_errno()
            raise PosixError(err, f"fallocate: {os.strerror(err)}")

    def fsync(self, fd: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fd)

    def statistics(self) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize,
                "spare_files_ready": len(self.spares), "creates_from_spares": self.spares.taken,
                "creates_without_spare": self.spares.missed}


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
