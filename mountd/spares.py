"""`SpareFiles`: empty local data files made ahead of need by a worker thread, so that creating
a file through the mount does not allocate an inode on the trio thread.

Why: allocating an inode is usually a few microseconds of kernel work, but not always. ext4
without a journal (the root file system of the benchmark machine) avoids reusing inodes deleted
in the last minute or more, and finds a free one by looking up each recently deleted inode in
turn. After a few thousand deletions, `open(O_CREAT)` of a data file took 0.58 ms on average
and was 51 % of the trio thread's time while a program created 5,000 small files (py-spy), and
every other FUSE request waited behind it.

Here a worker thread creates the files in `spare/` (beside `data/`, on the same file system) and
keeps each one open; `take` renames one into place, one system call on the trio thread, and hands
over its descriptor. When none is ready the caller creates the file itself, as before. Spares
left by an earlier run (they are empty files) are taken over at start, never deleted, so a
restart does not free a batch of inodes that the next creates would have to skip.

The list of ready files is owned by the trio thread: the worker only returns new ones.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import time
from pathlib import Path

import trio

log = logging.getLogger(__name__)

KEEP = 512  # spares kept ready (each holds a descriptor); refilled when half are taken


def spares_to_keep() -> int:
    """KEEP, or fewer where descriptors are scarce: an eighth of the open-file limit at most."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return KEEP if soft == resource.RLIM_INFINITY else max(0, min(KEEP, soft // 8))


class SpareFiles:
    def __init__(self, directory: Path, keep: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(exist_ok=True)
        self.keep = spares_to_keep() if keep is None else keep
        self._ready: list[tuple[str, int]] = []  # (path, open descriptor)
        self._wanted = trio.Event()
        self.taken = 0  # creates served by a spare
        self.missed = 0  # creates that found none ready
        self._names = (f"{directory}/{os.getpid():x}-{time.time_ns():x}-{n:x}" for n in itertools.count())
        self._adopt_leftovers()
        self._wanted.set()

    def _adopt_leftovers(self) -> None:
        for entry in os.scandir(self.directory):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size == 0:
                    self._ready.append((entry.path, os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW)))
                else:  # not ours to keep: nothing but empty regular files is ever made here
                    os.unlink(entry.path)
            except OSError as e:
                log.warning("ignoring %s in the spare files: %s", entry.path, e.strerror)

    def __len__(self) -> int:
        return len(self._ready)

    def take(self, dest: Path) -> int | None:
        """An empty file moved to `dest` (replacing what was there), open for reading and writing;
        None when no spare is ready or the move failed: the caller then creates the file itself."""
        if len(self._ready) <= self.keep // 2:
            self._wanted.set()
        if not self._ready:
            self.missed += 1
            return None
        path, fd = self._ready.pop()
        try:
            os.rename(path, dest)
        except OSError as e:
            os.close(fd)  # the caller's own create will say what is wrong with `dest`
            try:
                os.unlink(path)
            except OSError:
                pass
            if e.errno == errno.EXDEV:  # data/ is another file system (a mount inside the local tier)
                log.warning("spare files are off: %s and %s are on different file systems", self.directory,
                            dest.parent)
                self.keep = 0
                self.close()
            return None
        self.taken += 1
        return fd

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                missing = self.keep - len(self._ready)
                if missing > 0:
                    made = await trio.to_thread.run_sync(self._make, missing)
                    self._ready[:0] = made  # under the ones already ready: those are taken first
                    if len(made) < missing:  # full disk or no descriptors left: try again later
                        await trio.sleep(5)
        finally:
            self.close()

    def _make(self, count: int) -> list[tuple[str, int]]:
        """Worker thread: up to `count` new empty files, each open."""
        made = []
        for _ in range(count):
            path = next(self._names)
            try:
                made.append((path, os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)))
            except OSError as e:
                log.debug("could not make a spare file: %s", e.strerror)
                break
        return made

    def close(self) -> None:
        """Close the descriptors; the files stay for the next start."""
        log.debug("spare files: %d creates took one, %d found none", self.taken, self.missed)
        ready, self._ready = self._ready, []
        for _, fd in ready:
            os.close(fd)
