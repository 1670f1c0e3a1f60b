"""`MountdOperations`: pyfuse3's Operations as a thin shim over `mountd.vfs.Filesystem`.

Arguments are converted to vfs types, results to pyfuse3 types, and every error is mapped to
an errno here and nowhere else: a `MountdError` carries its errno, an `OSError` from local
disk I/O (ENOSPC, EIO) keeps its own, anything else is logged with its traceback and becomes
EIO. Per-operation counts and errors are kept for status and metrics.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from mountd.activity import RequestActivity
from mountd.errors import MountdError
from mountd.fuse.kernel import FuseKernel
from mountd.latency import LatencyHistogram
from mountd.meta.store import ListingRow, Row
from mountd.vfs.filesystem import Filesystem
from mountd.vfs.types import Attr, Ctx, Opened, SetAttr

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

# st_blksize: the size cp, cat and Python's buffered I/O read and write at (one FUSE request's max)
BLKSIZE = 1 << 20


def _ctx(ctx: pyfuse3.RequestContext) -> Ctx:
    return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)


def _mapped(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Map every exception of a handler to a FUSEError, counting calls and errors per operation."""
    name = fn.__name__

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        assert isinstance(self, MountdOperations)
        self.calls[name] += 1
        start = time.perf_counter()
        self.activity.last = start
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            self.errors[name] += 1
            raise
        except MountdError as e:
            self.errors[name] += 1
            if e.errno == errno.EIO:
                log.warning("%s: %s", name, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            self.errors[name] += 1
            code = e.errno or errno.EIO
            if code not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("%s: local I/O error: %s", name, e)
            raise pyfuse3.FUSEError(code) from None
        except sqlite3.OperationalError as e:
            # the metadata db shares the local tier's disk: when it is full the transaction
            # rolled back, nothing committed is damaged, and the caller sees ENOSPC like a disk
            self.errors[name] += 1
            if getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
                log.warning("%s: the local tier is full: %s", name, e)
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.error("%s: metadata db error: %s", name, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            self.errors[name] += 1
            log.exception("%s failed unexpectedly", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            end = time.perf_counter()
            self.activity.last = end  # a long request (a readdir of thousands) is part of the burst
            elapsed = end - start
            self.seconds[name] += elapsed
            self.latency[name].observe(elapsed)

    return wrapper


class MountdOperations(pyfuse3.Operations):
    # Write-through. Measured on kernel 6.18 with the kernel's writeback cache on: a page-cache
    # re-read of 1 GiB ran at 3-4 GB/s (6-11 GB/s without it), and 1 GiB written until close at
    # 0.2-0.6 GB/s (1.4 GB/s without), with a hundred SETATTRs on top of the 1 MiB WRITEs.
    enable_writeback_cache = False
    supports_dot_lookup = True
    # Asked of the kernel where pyfuse3 was built with scripts/build-pyfuse3-passthrough.sh (stock
    # pyfuse3 ignores both). Passthrough: see Filesystem._maybe_passthrough. killpriv_v2: the kernel
    # leaves clearing setuid/setgid on write, truncate and chown to us (the vfs does it) instead of
    # asking for security.capability before every write(2), a round trip per call.
    enable_passthrough = True
    enable_killpriv_v2 = True

    def __init__(self, fs: Filesystem, kernel: FuseKernel, activity: RequestActivity | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.kernel = kernel
        self.activity = activity or RequestActivity()
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.latency: defaultdict[str, LatencyHistogram] = defaultdict(LatencyHistogram)
        self.attr_timeout = fs.config.mount.attr_timeout
        self.enable_passthrough = fs.config.mount.passthrough
        self._reply_rows = getattr(pyfuse3, "readdir_reply_rows", None) or self._reply_rows_one_by_one

    def init(self) -> None:
        """The kernel's INIT was answered: hand the vfs the passthrough calls if it was granted."""
        if self.enable_passthrough and passthrough_available() and pyfuse3.passthrough_enabled():
            self.kernel.granted()
            log.info("FUSE passthrough is on: local-tier files are read and written by the kernel")
        elif self.enable_passthrough:
            log.info("FUSE passthrough is off (%s)", "not granted by the kernel" if passthrough_available()
                     else "this pyfuse3 lacks it; "
                          "scripts/build-pyfuse3-passthrough.sh builds one that has it")

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        # attributes still defaulted (from a listing, before its index or a HEAD) must not be cached
        # by the kernel, nor the name: the object may turn out to be a symlink, FIFO or device,
        # and the kernel takes a new file type only from a lookup (a getattr that finds one
        # answers EIO)
        e.entry_timeout = self.attr_timeout if a.exact else 0
        e.attr_timeout = self.attr_timeout if a.exact else 0
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = BLKSIZE
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    @_mapped
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.lookup(parent_inode, name))

    @_mapped
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.getattr(inode))

    @_mapped
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,  # None: the vfs's clock's now
        )
        return self._entry(await self.fs.setattr(inode, changes, _ctx(ctx)))

    @_mapped
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @_mapped
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.mknod(parent_inode, name, mode, rdev, _ctx(ctx)))

    @_mapped
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.mkdir(parent_inode, name, mode, _ctx(ctx)))

    @_mapped
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, name)

    @_mapped
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, name)

    @_mapped
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.symlink(parent_inode, name, target, _ctx(ctx)))

    @_mapped
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_mapped
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.link(inode, new_parent_inode, new_name))

    @_mapped
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return _file_info(await self.fs.open(inode, flags, _ctx(ctx)))

    @_mapped
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        opened, attr = await self.fs.create(parent_inode, name, mode, _ctx(ctx))
        return _file_info(opened), self._entry(attr)

    @_mapped
    async def tmpfile(self, parent_inode: int, mode: int, flags: int,
                      ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        opened, attr = await self.fs.tmpfile(parent_inode, mode, _ctx(ctx))
        return _file_info(opened), self._entry(attr)

    @_mapped
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        await self.fs.fallocate(fh, mode, offset, length)

    @_mapped
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.fs.read(fh, off, size)

    @_mapped
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_mapped
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_mapped
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_mapped
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh, datasync)

    @_mapped
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.fs.opendir(inode)

    @_mapped
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        await self.fs.readdir_ready(fh, start_id)
        for page in self.fs.readdir(fh, start_id):
            # entries whose attributes are final are cached by the kernel, the others not (see
            # _entry): a run of each kind per reply (one directory among 1,000 files listed must
            # not make `du` look up every file of its page again)
            for exact, group in itertools.groupby(page, lambda row: row[Row.META_LOADED] != 0):
                run = list(group)
                if self._reply_rows(token, run, self.attr_timeout if exact else 0, self.attr_timeout,
                                    BLKSIZE) < len(run):
                    return

    def _reply_rows_one_by_one(self, token: pyfuse3.ReaddirToken, rows: list[ListingRow],
                               entry_timeout: float, attr_timeout: float, blksize: int) -> int:
        """`readdir_reply_rows` for a pyfuse3 built without scripts/pyfuse3-passthrough.patch."""
        for done, row in enumerate(rows):
            attr = Attr(*row[Row.INO:Row.META_LOADED], exact=row[Row.META_LOADED] != 0)  # type: ignore[misc]
            if not pyfuse3.readdir_reply(token, row[Row.NAME], self._entry(attr), row[Row.ENTRY_ID]):
                return done
        return len(rows)

    @_mapped
    async def releasedir(self, fh: int) -> None:
        return None

    @_mapped
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_mapped
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.fs.statfs()
        st = pyfuse3.StatvfsData()
        st.f_bsize = s.block_size
        st.f_frsize = s.block_size
        st.f_blocks = s.blocks
        st.f_bfree = s.blocks_free
        st.f_bavail = s.blocks_avail
        st.f_files = s.files
        st.f_ffree = s.files_free
        st.f_favail = s.files_free
        st.f_namemax = s.name_max
        return st

    @_mapped
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.getxattr(inode, os.fsdecode(name))

    @_mapped
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [n.encode() for n in await self.fs.listxattr(inode)]

    @_mapped
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.setxattr(inode, os.fsdecode(name), value)

    @_mapped
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, os.fsdecode(name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None

    def statistics(self) -> dict[str, Any]:
        polled = pyfuse3.device_poll_hits() if hasattr(pyfuse3, "device_poll_hits") else 0
        return {"calls": dict(self.calls), "errors": dict(self.errors), "seconds": dict(self.seconds),
                "latency": {op: h.snapshot() for op, h in self.latency.items()}, "read_while_polling": polled}


def set_device_poll(seconds: float) -> None:
    """Poll the FUSE device this long after each request (0: sleep in epoll at once); a no-op with
    a pyfuse3 other than the one scripts/build-pyfuse3-passthrough.sh builds."""
    if hasattr(pyfuse3, "set_device_poll"):
        pyfuse3.set_device_poll(round(seconds * 1e9))


def passthrough_available() -> bool:
    """Whether this pyfuse3 has the passthrough calls (scripts/build-pyfuse3-passthrough.sh)."""
    return hasattr(pyfuse3, "backing_open")


def _file_info(opened: Opened) -> pyfuse3.FileInfo:
    if opened.backing_id:
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=False, direct_io=False, backing_id=opened.backing_id)
    return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)


def mount_options(*, fsname: str, allow_other: bool, default_permissions: bool,
                  read_only: bool = False) -> set[str]:
    # read size comes from max_pages (libfuse negotiates 256 pages = 1 MiB) and bdi read_ahead_kb;
    # max_read here would conflict with libfuse's own init (it aborts the session)
    opts = {f"fsname={fsname}", "subtype=mountd"}
    if allow_other:
        opts.add("allow_other")
    if default_permissions:
        opts.add("default_permissions")
    if read_only:
        opts.add("ro")
    return opts


def init(ops: MountdOperations, mountpoint: str, options: set[str]) -> None:
    """Mount; on failure raise RuntimeError with libfuse's own reason and what to do about it.

    libfuse (and fusermount3, which it runs when we lack CAP_SYS_ADMIN) print the reason of a
    failed mount on file descriptor 2: it is captured here so the user gets one line."""
    with tempfile.TemporaryFile() as said:
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            pyfuse3.init(ops, mountpoint, options)
            failure = None
        except RuntimeError as e:
            failure = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        text = "; ".join(line.strip() for line in said.read().decode(errors="replace").splitlines()
                         if line.strip())
    if failure is None:
        if text:
            log.warning("libfuse: %s", text)
        set_device_poll(ops.fs.config.mount.device_poll)
        return
    reason = text or str(failure)
    if "not permitted" in reason or "ermission denied" in reason:
        reason += (" (mounting needs root with CAP_SYS_ADMIN, or fusermount3 from the fuse3 package;"
                   " in a container: --cap-add SYS_ADMIN --device /dev/fuse)")
    elif "allow_other" in reason:
        reason += " (set user_allow_other in /etc/fuse.conf, or mount as root)"
    raise RuntimeError(reason) from None


# How long a thread that wants the GIL waits for a busy one to hand it over (Python's default is
# 5 ms). Every FUSE request wakes the trio thread from epoll and needs the GIL back while upload
# threads run botocore: with the default, a create+write+close of a small file waited ~6 ms.
GIL_SWITCH_INTERVAL = 0.0002


async def serve() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    await pyfuse3.main(min_tasks=4, max_tasks=64)


def terminate() -> None:
    pyfuse3.terminate()


def close(unmount: bool = True) -> None:
    pyfuse3.close(unmount=unmount)
