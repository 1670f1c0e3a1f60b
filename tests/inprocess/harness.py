"""The in-process tier's driver: the daemon's own stack, no kernel, driven from the test thread.

`InProcessMount` builds the stack with `build_stack(config, stores, DetachedKernel())`, the same
function the daemon calls, and runs `trio.run` in a thread of its own: `Stack.run` (uploads, the
metadata pass, cache admissions) works there in the background exactly as in the daemon. Each
method of the driver is one call into the vfs, made on the trio thread with
`trio.from_thread.run`, so the test thread plays the part of the kernel and the FUSE shim:

- paths are resolved one `lookup` at a time (ENOENT, ENOTDIR as the kernel finds them);
- an `open(O_CREAT)` of a missing name is a `create` with the umask applied; `close` is a flush
  then a release; `truncate` is a `setattr` of the size;
- `rename` first makes the kernel's own checks of a rename (the source may not be an ancestor of
  the target, and the reverse), in the kernel's order, then calls the vfs;
- errors become `OSError(errno)` as `fuse/ops.py` maps them; anything else propagates, so a bug
  fails the test with its traceback instead of becoming EIO.

`until(predicate)` waits, on the trio thread and without polling, until a predicate holds: an
instrument checks it after every task step. `drain()` applies the whole journal the way
`mountd sync` does (entries that are waiting on another one are made due again as soon as the
uploader is idle), so a test never waits out a retry delay.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import textwrap
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.lowlevel

from mountd.backend import ObjectStore
from mountd.backend.factory import open_store, store_tuning
from mountd.config import RepoConfig, load_config
from mountd.errors import MountdError, PosixError
from mountd.meta.store import ROOT_INODE
from mountd.stack import Stack, build_stack
from mountd.vfs.kernel import DetachedKernel
from mountd.vfs.types import Attr, Ctx, SetAttr

T = TypeVar("T")
UMASK = 0o022
RENAME_EXCHANGE = 2
READ_SIZE = 1 << 20
START_TIMEOUT = 30.0
HELD_FOR = 365 * 86400.0  # how far in the future `drain(keep=...)` moves the entries it holds back


def repo_config(root: Path, *, delay: str = "0s", extra: str = "", writeback: str = "") -> RepoConfig:
    """A config of one file:// remote at /data (the rest of the mount is local-only), loaded from
    TOML by the project's own loader; `root` holds the remote, the local tier and the cache."""
    for part in ("remote", "local"):  # the daemon makes the local tier when it locks it
        (root / part).mkdir(parents=True, exist_ok=True)
    path = root / "repo.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "inprocess"
        [local]
        path = "{root / 'local'}"
        reserve = "1M"
        [cache]
        path = "{root / 'cache'}"
        [writeback]
        delay = "{delay}"
        retry_initial = "0.2s"
        retry_max = "2s"
        yield_max = "0s"
        {writeback}
        [mount]
        listing_ttl = "1h"
        read_timeout = "30s"
        [[remote]]
        name = "main"
        url = "file://{root / 'remote'}"
        at = "/data"
        """) + textwrap.dedent(extra))
    return load_config(path)


def remote_files(root: Path) -> dict[str, bytes]:
    """Every object of a file:// remote by key, upload temporaries left out (they are invisible),
    and the hosts' change log too (it is not a file anyone wrote)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root and ".mountd-log" in dirs:
            dirs.remove(".mountd-log")
        for name in files:
            if not name.startswith(".mountd-tmp-"):
                p = Path(dirpath, name)
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def remote_hidden(root: Path) -> list[str]:
    """Hidden keys (evacuated bytes, upload temporaries) still in a file:// remote; the store's
    own lock file is not one."""
    return [str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files
            if f.startswith(".mountd-tmp-") and f != ".mountd-tmp-lock"]


def _posix_error(e: BaseException) -> OSError | None:
    """The errno the FUSE shim would answer for `e` (see fuse/ops.py `_mapped`), or None for a bug."""
    if isinstance(e, MountdError):
        return OSError(e.errno, os.strerror(e.errno))
    if isinstance(e, OSError):
        return OSError(e.errno or errno.EIO, os.strerror(e.errno or errno.EIO))
    full = getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
    if isinstance(e, sqlite3.OperationalError) and full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


class _Watch(trio.abc.Instrument):
    """Checks waiting predicates after every task step and sets their events once they hold."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[[], bool], trio.Event]] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.waiting:
            self.check()

    def check(self) -> None:
        still = []
        for predicate, event in self.waiting:
            if predicate():
                event.set()
            else:
                still.append((predicate, event))
        self.waiting = still


class InProcessMount:
    """One stack over `config`, served by `trio.run` in a thread until `stop()` (or `crash()`)."""

    def __init__(self, config: RepoConfig, *, stores: Mapping[str, ObjectStore] | None = None,
                 instruments: tuple[trio.abc.Instrument, ...] = ()) -> None:
        self.config = config
        self.kernel = DetachedKernel()
        self.stores = dict(stores) if stores is not None else {
            r.name: open_store(r, tuning=store_tuning(config)) for r in config.remote}
        self.ctx = Ctx(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=UMASK)
        self._watch = _Watch()
        self._instruments = (self._watch, *instruments)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stack: Stack | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="inprocess-trio", daemon=True)

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> InProcessMount:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT), "the stack did not start"
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self

    def _main(self) -> None:
        try:
            trio.run(self._serve, instruments=self._instruments)
        except BaseException as e:  # reported by start() or stop()
            self._error = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        stack = build_stack(self.config, self.stores, self.kernel)
        self._stack = stack
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                await nursery.start(stack.run)
                self._ready.set()
                await trio.sleep_forever()
        finally:
            stack.close()

    @property
    def stack(self) -> Stack:
        assert self._stack is not None
        return self._stack

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def crash(self) -> None:
        """Cancel everything now, from the trio thread (an instrument may call this mid-step)."""
        assert self._cancel is not None
        self._cancel.cancel()

    def stop(self, timeout: float = 60.0) -> None:
        if self._thread.is_alive() and self._token is not None and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self.join(timeout)

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stack did not stop"
        if self._error is not None:
            raise self._error

    # --- calls onto the trio thread ---------------------------------------------------------
    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await afn(*args)` on the trio thread; vfs errors come back as OSError(errno)."""
        assert self._token is not None
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._token)
        except Exception as e:
            mapped = _posix_error(e)
            if mapped is None:
                raise
            raise mapped from e

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> None:
        if predicate():
            return
        event = trio.Event()
        self._watch.waiting.append((predicate, event))
        with trio.fail_after(timeout):
            await event.wait()

    def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate()` (called on the trio thread after every task step) holds."""
        self.run(self._until, predicate, timeout)

    # --- write-back -------------------------------------------------------------------------
    def _idle(self) -> bool:
        """Nothing in flight, and what is left of the journal is due later (waiting on another entry)."""
        meta, uploader = self.stack.meta, self.stack.uploader
        next_due = meta.journal_next_due()
        return not uploader.in_flight and (next_due is None or next_due > self.stack.journal.clock())

    async def _drain(self, timeout: float, hold: Callable[[str], bool]) -> None:
        stack = self.stack
        meta = stack.meta
        with trio.fail_after(timeout):
            while True:
                left = meta.journal_all(100000)
                if all(hold(e.key) for e in left):
                    # and the change-log entry of what was sent is written, as `sync --wait` waits
                    assert await stack.feed.wait_logged(timeout), "the change log was not written"
                    return
                meta.journal_make_due(stack.journal.clock())  # what `mountd sync` does
                for e in left:
                    if hold(e.key):  # held back: due in a year, as a failed attempt (a drain skips it)
                        meta.journal_failed(e.remote, e.key, e.seq, "held back by the test",
                                            stack.journal.clock() + HELD_FOR)
                stack.journal.notify()
                await trio.lowlevel.checkpoint()  # the uploader starts what is due
                await self._until(self._idle, timeout)

    def drain(self, timeout: float = 30.0, *, hold: Callable[[str], bool] = lambda key: False) -> None:
        """Apply every journal entry as `mountd sync` would, until the journal is empty, or holds
        only keys for which `hold(key)` is true: those are held back (made due in a year) and stay."""
        self.run(self._drain, timeout, hold)

    def statistics(self) -> dict[str, Any]:
        return self.run_sync(self.stack.statistics)

    # --- paths, as the kernel resolves them -------------------------------------------------
    async def _walk(self, path: str) -> int:
        ino = ROOT_INODE
        for part in (p for p in path.split("/") if p):
            ino = (await self.stack.fs.lookup(ino, os.fsencode(part))).ino
        return ino

    async def _parent(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.strip("/").rpartition("/")
        parent = await self._walk(head)
        if not stat.S_ISDIR((await self.stack.fs.getattr(parent)).mode):
            raise PosixError(errno.ENOTDIR)  # as the kernel's path walk finds it
        return parent, os.fsencode(name)

    async def _child(self, parent: int, name: bytes) -> Attr | None:
        try:
            return await self.stack.fs.lookup(parent, name)
        except MountdError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def ino(self, path: str) -> int:
        return self.run(self._walk, path)

    async def _getattr(self, path: str) -> Attr:
        return await self.stack.fs.getattr(await self._walk(path))

    def getattr(self, path: str) -> Attr:
        return self.run(self._getattr, path)

    # --- open files -------------------------------------------------------------------------
    async def _open(self, path: str, flags: int, mode: int) -> int:
        fs = self.stack.fs
        parent, name = await self._parent(path)
        found = await self._child(parent, name)
        if found is None:
            if not flags & os.O_CREAT:
                raise PosixError(errno.ENOENT)
            opened, _ = await fs.create(parent, name, stat.S_IFREG | (mode & ~UMASK), self.ctx)
            return opened.fh
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise PosixError(errno.EEXIST)
        if stat.S_ISDIR(found.mode) and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PosixError(errno.EISDIR)
        return (await fs.open(found.ino, flags & ~(os.O_CREAT | os.O_EXCL), self.ctx)).fh

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        return self.run(self._open, path, flags, mode)

    async def _write(self, fh: int, offset: int, data: bytes) -> int:
        if not data:
            return 0  # the kernel sends no WRITE of nothing (generic_write_checks)
        return await self.stack.fs.write(fh, offset, data)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        return self.run(self._write, fh, offset, data)

    async def _read_fh(self, fh: int, offset: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            part = await self.stack.fs.read(fh, offset + len(out), min(READ_SIZE, size - len(out)))
            if not part:
                break
            out += part
        return bytes(out)

    def read(self, fh: int, offset: int = 0, size: int = 1 << 30) -> bytes:
        return self.run(self._read_fh, fh, offset, size)

    def fsync(self, fh: int, datasync: bool = False) -> None:
        self.run(self.stack.fs.fsync, fh, datasync)

    async def _close(self, fh: int) -> None:
        try:
            await self.stack.fs.flush(fh)
        finally:
            await self.stack.fs.release(fh)

    def close(self, fh: int) -> None:
        self.run(self._close, fh)

    # --- whole-file helpers (one trio call each) --------------------------------------------
    async def _write_file(self, path: str, offset: int, data: bytes, flags: int, mode: int) -> int:
        fh = await self._open(path, flags, mode)
        try:
            return await self._write(fh, offset, data)
        finally:
            await self._close(fh)

    def create(self, path: str, data: bytes = b"", mode: int = 0o644) -> int:
        """open(O_WRONLY|O_CREAT|O_TRUNC), write, close."""
        return self.run(self._write_file, path, 0, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def write_at(self, path: str, offset: int, data: bytes) -> int:
        return self.run(self._write_file, path, offset, data, os.O_WRONLY, 0)

    async def _read_file(self, path: str) -> bytes:
        fh = await self._open(path, os.O_RDONLY, 0)
        try:
            return await self._read_fh(fh, 0, 1 << 40)
        finally:
            await self._close(fh)

    def read_file(self, path: str) -> bytes:
        return self.run(self._read_file, path)

    async def _truncate(self, path: str, size: int) -> None:
        ino = await self._walk(path)
        await self.stack.fs.setattr(ino, SetAttr(size=size), self.ctx)

    def truncate(self, path: str, size: int) -> None:
        self.run(self._truncate, path, size)

    async def _chmod(self, path: str, mode: int) -> None:
        await self.stack.fs.setattr(await self._walk(path), SetAttr(mode=mode), self.ctx)

    def chmod(self, path: str, mode: int) -> None:
        self.run(self._chmod, path, mode)

    # --- namespace --------------------------------------------------------------------------
    async def _mkdir(self, path: str, mode: int) -> None:
        parent, name = await self._parent(path)
        await self.stack.fs.mkdir(parent, name, mode & ~UMASK, self.ctx)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.run(self._mkdir, path, mode)

    async def _unlink(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.stack.fs.unlink(parent, name)

    def unlink(self, path: str) -> None:
        self.run(self._unlink, path)

    async def _link(self, src: str, dst: str) -> Attr:
        ino = await self._walk(src)
        parent, name = await self._parent(dst)
        return await self.stack.fs.link(ino, parent, name)

    def link(self, src: str, dst: str) -> Attr:
        return self.run(self._link, src, dst)

    async def _rmdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.stack.fs.rmdir(parent, name)

    def rmdir(self, path: str) -> None:
        self.run(self._rmdir, path)

    async def _rename(self, src: str, dst: str, flags: int) -> None:
        """The kernel's checks of rename(2) in its order (do_renameat2), then the vfs call."""
        old_parent, old_name = await self._parent(src)
        new_parent, new_name = await self._parent(dst)
        old = await self._child(old_parent, old_name)
        if old is None:
            raise PosixError(errno.ENOENT)
        new = await self._child(new_parent, new_name)
        if flags & RENAME_EXCHANGE and new is None:
            raise PosixError(errno.ENOENT)
        # the source may not be an ancestor of the target's directory, nor the target of the source's
        if await self._is_ancestor(old.ino, new_parent):
            raise PosixError(errno.EINVAL)
        if new is not None and await self._is_ancestor(new.ino, old_parent):
            raise PosixError(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)
        await self.stack.fs.rename(old_parent, old_name, new_parent, new_name, flags)

    async def _is_ancestor(self, ino: int, of: int) -> bool:
        """Whether directory `ino` is `of` or lies above it."""
        cur = of
        while cur != ino:
            up = self.stack.meta.parent_of(cur) if cur != ROOT_INODE else None
            if up is None:
                return False
            cur = up[0]
        return True

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        self.run(self._rename, src, dst, flags)

    async def _readdir(self, path: str) -> list[str]:
        fs = self.stack.fs
        fh = await fs.opendir(await self._walk(path))
        names: list[str] = []
        offset = 0
        while True:  # as the kernel asks: from the last offset, until an answer is empty
            await fs.readdir_ready(fh, offset)
            rows = [row for page in fs.readdir(fh, offset) for row in page]
            if not rows:
                return sorted(names)
            names += [os.fsdecode(row[1]) for row in rows if row[1] not in (b".", b"..")]
            offset = rows[-1][0]

    def readdir(self, path: str) -> list[str]:
        """The names of a directory, as readdir pages give them less `.` and `..` (as os.listdir), sorted."""
        return self.run(self._readdir, path)

    async def _tree(self, path: str) -> dict[str, tuple[int, int, int | None, bytes | None]]:
        out: dict[str, tuple[int, int, int | None, bytes | None]] = {}
        todo = [""]
        while todo:
            rel = todo.pop()
            for name in await self._readdir(f"{path}/{rel}"):
                child = f"{rel}/{name}".lstrip("/")
                a = await self._getattr(f"{path}/{child}")
                data = None
                if stat.S_ISREG(a.mode):
                    data = await self._read_file(f"{path}/{child}")
                elif stat.S_ISDIR(a.mode):
                    todo.append(child)
                size = a.size if data is not None else None
                out[child] = (stat.S_IFMT(a.mode), stat.S_IMODE(a.mode), size, data)
        return out

    def tree(self, path: str) -> dict[str, tuple[int, int, int | None, bytes | None]]:
        """relative path -> (type, permission bits, size, bytes) of everything below `path`."""
        return self.run(self._tree, path)
