"""`LocalTier`: the files on the fast local disk, one per inode, named by inode number.

It owns the `data/` directory under `local.path` (and `spare/`, through `SpareFiles`). Content
of dirty, local-only and pinned files lives here; writes go straight to these files. Nothing here
talks to a remote. Removing a file and moving a spare into place are quick local calls (fine on
the trio thread); filling a file from a remote (`materialize_from`) is slow and is run in a
worker thread by the caller.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from mountd.errors import PosixError
from mountd.spares import SpareFiles


class LocalTier:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmp = root / "tmp"
        self.tmp.mkdir(exist_ok=True)
        for leftover in self.tmp.iterdir():  # partial downloads from a crashed run
            leftover.unlink(missing_ok=True)
        self.spares = SpareFiles(root / "spare")  # its refill task is run by the daemon

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

    def remove(self, ino: int) -> None:
        self.path_for(ino).unlink(missing_ok=True)

    def open_fd(self, ino: int) -> int:
        try:
            return os.open(self.path_for(ino), os.O_RDWR)
        except FileNotFoundError:
            raise PosixError(errno.EIO, f"local data of inode {ino} is missing") from None

    def truncate(self, ino: int, size: int) -> None:
        os.truncate(self.path_for(ino), size)

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

    def fsync(self, fd: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fd)

    def statistics(self) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize,
                "spare_files_ready": len(self.spares), "creates_from_spares": self.spares.taken,
                "creates_without_spare": self.spares.missed}
