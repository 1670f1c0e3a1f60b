"""The composition root: builds every component of one mount and runs them in one nursery.

Order of start: state directory lock → metadata db (with crash recovery) → remote stores →
read path → journal and uploader → vfs → FUSE mount → control socket → ready. Order of stop:
unmount (no new writes) → drain the journal for at most `writeback.drain_timeout` → report
what is left (it resumes at the next mount) → close the db. Nothing here blocks the trio
thread on the network: remote probes run in worker threads with a timeout.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import resource
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mountd.activity import RequestActivity
from mountd.backend import ObjectStore
from mountd.backend.conditions import probe_conditions, warn_unconditional
from mountd.backend.factory import open_store, store_tuning
from mountd.cache import ChunkCache
from mountd.config import RepoConfig
from mountd.control import ControlServer, socket_path
from mountd.errors import MountdError, RemoteError
from mountd.fuse import ops as fuse_ops
from mountd.fuse.kernel import FuseKernel
from mountd.meta import MetaStore
from mountd.sdnotify import SystemdNotifier
from mountd.stack import Stack, build_stack
from mountd.vfs.filesystem import Filesystem
from mountd.writeback import Journal, Uploader

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 10.0
RECONNECT_INTERVAL = 2.0  # first re-probe of an unreachable remote; doubles up to RECONNECT_MAX
RECONNECT_MAX = 60.0


class StartupError(MountdError):
    """The mount cannot start; the message is one line for the user."""


def mounted_at(mountpoint: str) -> str | None:
    """The `major:minor` of what is mounted exactly at `mountpoint` (the topmost mount), from mountinfo."""
    found = _mounts_at(mountpoint)
    return found[-1][0] if found else None


def _mounts_at(mountpoint: str) -> list[tuple[str, str]]:
    """(major:minor, fstype) of every mount stacked at `mountpoint`, lowest first."""
    real = os.path.realpath(mountpoint)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == real and " - " in line:
                    found.append((fields[2], line.split(" - ", 1)[1].split()[0]))
    except OSError:
        return []
    return found


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.exists(mountpoint):
        raise StartupError(f"mountpoint {mountpoint} does not exist (create it with: mkdir -p {mountpoint})")
    if not os.path.isdir(mountpoint):
        raise StartupError(f"mountpoint {mountpoint} is not a directory")
    # a systemd .automount (autofs) waiting at the mountpoint is what we mount over; listing it
    # would wait for the very mount we are making
    awaited = [t for _, t in _mounts_at(mountpoint)] == ["autofs"]
    if mounted_at(mountpoint) is not None and not awaited:
        raise StartupError(f"{mountpoint} is already mounted (unmount it first: mountd umount {mountpoint})")
    if not awaited and os.listdir(mountpoint):
        raise StartupError(f"mountpoint {mountpoint} is not empty (choose an empty directory)")
    if not os.path.exists("/dev/fuse"):
        raise StartupError("/dev/fuse does not exist: load the fuse module (modprobe fuse) or, "
                           "in a container, pass --device /dev/fuse")
    if os.geteuid() == 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise StartupError("no permission to open /dev/fuse")
    if os.geteuid() != 0 and not any(os.access(os.path.join(p, "fusermount3"), os.X_OK)
                                     for p in os.environ.get("PATH", "/usr/bin:/bin").split(":")):
        raise StartupError("fusermount3 not found: install the fuse3 package (apt-get install fuse3)")


@dataclass
class Mount:
    """Every component of one running mount: the stack below FUSE, and what the daemon adds."""

    stack: Stack
    mountpoint: str
    kernel: FuseKernel
    lock_fd: int
    control_path: Path
    activity: RequestActivity = field(default_factory=RequestActivity)
    ops: Any = None
    unreachable: dict[str, str] = field(default_factory=dict)
    shutdown: trio.Event = field(default_factory=trio.Event)
    unmounted: bool = False
    terminating: bool = False
    umount_replies: int = 0  # umount requests still owed their final answer
    replied: trio.Event = field(default_factory=trio.Event)
    metrics_url: str | None = None

    @property
    def config(self) -> RepoConfig:
        return self.stack.config

    @property
    def meta(self) -> MetaStore:
        return self.stack.meta

    @property
    def fs(self) -> Filesystem:
        return self.stack.fs

    @property
    def stores(self) -> Mapping[str, ObjectStore]:
        return self.stack.stores

    @property
    def journal(self) -> Journal:
        return self.stack.journal

    @property
    def uploader(self) -> Uploader:
        return self.stack.uploader

    @property
    def reader(self) -> ChunkCache:
        return self.stack.reader

    def statistics(self) -> dict[str, Any]:
        return {**self.stack.statistics(), "fuse": self.ops.statistics() if self.ops else {}}


def _lock_state_dir(path: Path) -> int:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the local tier {path}: {e.strerror}") from None
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StartupError(f"the local tier {path} is in use by another mountd "
                           f"(pid {other or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go programs (rclone) do at start:
    the daemon holds a descriptor per open file handle, per cached file being read and per spare
    data file, and shells often leave the soft limit at 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.debug("open-file limit stays at %d: %s", soft, e)


def build(config: RepoConfig, mountpoint: str) -> Mount:
    """Open everything local (no network): db, local tier, stores, vfs."""
    _raise_open_file_limit()
    lock_fd = _lock_state_dir(config.local_path)
    try:
        stores: dict[str, ObjectStore] = {}
        for remote in config.remote:
            stores[remote.name] = open_store(remote, tuning=store_tuning(config))
        kernel = FuseKernel()
        activity = RequestActivity()
        poll = config.mount.device_poll
        # measured on 2 cores: polling during a cold read from S3 took the CPU that botocore's
        # threads needed (350-500 MB/s against 665-760 without)
        stack = build_stack(config, stores, kernel, activity=activity,
                            on_fetching=lambda busy: fuse_ops.set_device_poll(0 if busy else poll))
    except BaseException:
        os.close(lock_fd)
        raise
    return Mount(stack=stack, mountpoint=os.path.realpath(mountpoint), kernel=kernel, lock_fd=lock_fd,
                 activity=activity,
                 # resolved now: once mounted, a realpath() from this thread would wait on ourselves
                 control_path=socket_path(mountpoint))


async def probe_remotes(m: Mount, names: list[str] | None = None) -> dict[str, str]:
    """Reach every remote (or those `names`) in parallel; returns name -> reason for those that failed."""
    failures: dict[str, str] = {}
    # a stalled server: the store's own request timeout (mount.read_timeout) answers first, this bounds it
    limit = min(PROBE_TIMEOUT, max(2.0, 2.5 * m.config.mount.read_timeout))

    async def one(name: str, store: ObjectStore) -> None:
        with trio.move_on_after(limit) as scope:
            try:
                await trio.to_thread.run_sync(store.probe, abandon_on_cancel=True)
            except RemoteError as e:
                failures[name] = str(e)
        if scope.cancelled_caught:
            failures[name] = f"remote {name!r} ({store.display_url}): no answer within {limit:g}s"

    async with trio.open_nursery() as n:
        for name, store in m.stores.items():
            if names is None or name in names:
                n.start_soon(one, name, store)
    return failures


async def _check_conditions(m: Mount) -> None:
    """A remote with `require_conditional` mounts only when its server refuses a second create-only
    write and a wrong if-match (asked with a temporary object); the others say once which writes
    their client sends without a condition."""
    for r in m.config.remote:
        store = m.stores[r.name]
        if not r.require_conditional:
            if not r.read_only:
                warn_unconditional(store)
            continue
        if r.name in m.unreachable:
            raise StartupError(f"remote {r.name!r}: require_conditional = true, but it cannot be reached to "
                               f"check ({m.unreachable[r.name]})")
        try:
            report = await trio.to_thread.run_sync(probe_conditions, store)
        except RemoteError as e:
            raise StartupError(f"remote {r.name!r}: require_conditional = true, and writing a test object "
                               f"failed: {e}") from None
        if not report.enforced:
            raise StartupError(f"remote {r.name!r}: require_conditional = true, but {report.describe()}; "
                               "use a store that enforces conditional writes, or remove require_conditional")
        log.info("remote %r: %s", r.name, report.describe())


async def watch_unreachable(m: Mount, interval: float = RECONNECT_INTERVAL) -> None:
    """Probe remotes that were unreachable until they answer; `status` follows
    (uploads retry on their own)."""
    delay = interval
    while True:
        await trio.sleep(delay)
        if not m.unreachable:
            delay = interval
            continue
        still = await probe_remotes(m, list(m.unreachable))
        for name in list(m.unreachable):
            if name not in still:
                log.info("remote %r is reachable again", name)
                del m.unreachable[name]
            else:
                m.unreachable[name] = still[name]
        delay = interval if not still else min(delay * 2, RECONNECT_MAX)


def _set_read_ahead(mountpoint: str, kb: int) -> None:
    dev = mounted_at(mountpoint)
    if dev is None or kb <= 0:
        return
    try:
        Path(f"/sys/class/bdi/{dev}/read_ahead_kb").write_text(str(kb))
    except OSError as e:
        log.debug("cannot set read_ahead_kb for %s: %s", dev, e)


async def run(config: RepoConfig, mountpoint: str, *, require_remotes: bool = False,
              on_ready: Callable[[Mount], None] = lambda m: None,
              extra_options: set[str] | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns the number of entries left pending."""
    check_mountpoint(mountpoint)
    m = build(config, mountpoint)
    try:
        return await _serve(m, require_remotes=require_remotes, on_ready=on_ready,
                            extra_options=extra_options or set())
    finally:
        m.stack.close()
        os.close(m.lock_fd)


def _freeze_startup_objects() -> None:
    """Hide what exists once the mount is up from the cyclic garbage collector: the ~100,000
    objects of botocore's service models, fsspec, pydantic and our own setup live as long as the
    daemon, and every full collection walked them all. Those collections stopped FUSE requests
    for 12-34 ms (measured with gc.callbacks on a mount of an S3 remote; none over 5 ms after),
    as long as a whole `ls -l` of 5,000 files."""
    gc.freeze()


async def _serve(m: Mount, *, require_remotes: bool, on_ready: Callable[[Mount], None],
                 extra_options: set[str]) -> int:
    m.unreachable = await probe_remotes(m)
    for reason in m.unreachable.values():
        if require_remotes:
            raise StartupError(reason)
        log.warning("%s; mounting anyway: cached and local data are served, writes are queued", reason)
    await _check_conditions(m)
    m.ops = fuse_ops.MountdOperations(m.fs, m.kernel, m.activity)
    opts = fuse_ops.mount_options(fsname=f"mountd:{m.config.name}", allow_other=m.config.mount.allow_other,
                                  default_permissions=m.config.mount.default_permissions) | extra_options
    try:
        fuse_ops.init(m.ops, m.mountpoint, opts)
    except RuntimeError as e:
        raise StartupError(f"cannot mount {m.mountpoint}: {e}") from None
    left = 0
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(m.kernel.run)
            await nursery.start(m.stack.run)
            nursery.start_soon(_serve_fuse, m)
            control = ControlServer(m.control_path, lambda req: _control(m, req))
            await nursery.start(control.run)
            if m.config.metrics.listen:
                from mountd import metrics

                m.metrics_url = await nursery.start(metrics.serve, m.config.name, m.config.metrics.address,
                                                    lambda: metrics_snapshot(m)) or None
            nursery.start_soon(_signals, m)
            nursery.start_soon(watch_unreachable, m)
            await trio.to_thread.run_sync(_set_read_ahead, m.mountpoint, m.config.mount.read_ahead_kb)
            await trio.to_thread.run_sync(os.stat, m.mountpoint)  # answers: the mount is ready
            log.info("mounted %s at %s (%s)", m.config.name, m.mountpoint,
                     ", ".join(f"{r.name}={r.display_url} at {r.at}" for r in m.config.remote))
            _freeze_startup_objects()
            on_ready(m)
            notifier = SystemdNotifier()
            if notifier.enabled:
                nursery.start_soon(notifier.run, lambda: systemd_status(m), m.shutdown)
            await m.shutdown.wait()
            left = await _drain(m, m.config.writeback.drain_timeout)
            notifier.send(f"STATUS=stopped; {left} uploads left pending (they resume at the next mount)")
            with trio.move_on_after(5):
                while m.umount_replies:  # let `mountd umount` hear how it ended
                    await m.replied.wait()
            nursery.cancel_scope.cancel()
    finally:
        if not m.unmounted:
            m.unmounted = True
            fuse_ops.close(unmount=True)
    return left


async def _serve_fuse(m: Mount) -> None:
    await fuse_ops.serve()
    # either we asked to stop (umount command, signal) and must unmount ourselves now, so no
    # program waits on a mount nobody serves, or the kernel side went away (fusermount -u)
    log.info("%s was unmounted", m.mountpoint)
    if not m.unmounted:
        m.unmounted = True
        fuse_ops.close(unmount=m.terminating)
    m.shutdown.set()


def _unmount(m: Mount) -> None:
    if not m.unmounted and not m.terminating:
        m.terminating = True
        fuse_ops.terminate()


INDEX_FLUSH_AT_UNMOUNT = 10.0  # seconds an unmount waits for the directory indexes after the drain


async def _drain(m: Mount, timeout: float) -> int:
    pending = m.uploader.pending()
    if pending:
        log.info("draining %d pending write-back entries (at most %gs)", pending, timeout)
    left = await m.uploader.wait_drained(timeout)
    if left:
        log.warning("%d write-back entries left pending; they resume at the next mount", left)
    elif not await m.stack.indexes.wait_written(INDEX_FLUSH_AT_UNMOUNT):
        # (only a cache: the objects then show their listing attributes elsewhere until a HEAD)
        log.info("directory indexes not all written at unmount")
    return left


async def _signals(m: Mount) -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: unmounting")
            _unmount(m)
            m.shutdown.set()


def systemd_status(m: Mount) -> str:
    """The one-line STATUS= systemd shows in `systemctl status`."""
    pending = m.meta.journal_count()
    if m.shutdown.is_set():
        return f"stopping: draining {pending} pending uploads"
    down = f", {len(m.unreachable)} unreachable" if m.unreachable else ""
    return (f"serving {m.mountpoint}: {pending} pending uploads ({len(m.uploader.in_flight)} in flight); "
            f"{len(m.stores)} remotes{down}")


def metrics_snapshot(m: Mount) -> dict[str, Any]:
    """What one metrics scrape reads (on the trio thread)."""
    return {"statistics": m.statistics(), "remotes": {name: name in m.unreachable for name in m.stores}}


def status(m: Mount) -> dict[str, Any]:
    journal = m.meta.journal_all(200)
    return {
        "name": m.config.name,
        "mountpoint": m.mountpoint,
        "pid": os.getpid(),
        "local_path": str(m.config.local_path),
        "remotes": [
            {"name": r.name, "url": r.display_url, "at": r.at, "read_only": r.read_only,
             "reachable": r.name not in m.unreachable, "error": m.unreachable.get(r.name)}
            for r in m.config.remote
        ],
        "pending_uploads": m.meta.journal_count(),
        "conflicts": m.meta.conflict_count(),
        "in_flight": [f"{r}:{k}" for r, k in m.uploader.in_flight],
        # next_attempt: the entry's due time (epoch s); after a failure, when its back-off ends
        "pending": [{"remote": e.remote, "key": e.key, "attempts": e.attempts, "error": e.last_error,
                     "next_attempt": e.due} for e in journal],
        "last_errors": [{"remote": r, "key": k, "error": e} for r, k, e in m.uploader.last_errors],
        "statistics": m.statistics(),
        "metrics": m.metrics_url,
    }


async def _control(m: Mount, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    op = req.get("op")
    if op == "status":
        yield {"ok": True, "result": status(m)}
    elif op == "umount":
        m.umount_replies += 1
        try:
            _unmount(m)
            timeout = float(req.get("timeout") or m.config.writeback.drain_timeout)
            with trio.move_on_after(timeout + 5):
                while m.uploader.pending():
                    yield {"progress": {"pending": m.uploader.pending()}}
                    with trio.move_on_after(0.5):
                        await m.uploader.wait_drained(0.5)
            left = m.uploader.pending()
            m.shutdown.set()
            yield {"ok": True, "result": {"left": left}}
        finally:
            m.umount_replies -= 1
            m.replied.set()
            m.replied = trio.Event()
    elif op == "sync":
        prefix = str(req.get("path") or "")
        select = _path_filter(m, prefix)
        timeout = float(req.get("timeout") or 3600)
        if not req.get("wait"):
            m.meta.journal_make_due(m.journal.clock())
            m.journal.notify()
            yield {"ok": True, "result": {"left": m.uploader.pending(select)}}
            return
        started = trio.current_time()
        left = await m.uploader.wait_drained(timeout, select)
        if not left:
            # other hosts learn of the changes from the change log: it is part of "synced"
            await m.stack.feed.wait_logged(max(0.0, timeout - (trio.current_time() - started)))
            # and a fresh mount elsewhere finds their attributes in the directory indexes
            await m.stack.indexes.wait_written(max(0.0, timeout - (trio.current_time() - started)))
        errors = [{"remote": e.remote, "key": e.key, "error": e.last_error}
                  for e in m.meta.journal_all(100000) if select(e.remote, e.key) and e.last_error]
        yield {"ok": True, "result": {"left": left, "errors": errors}}
    elif op in CACHE_OPS:
        async for reply in _cache_control(m, op, req):
            yield reply
    elif op == "conflicts":
        yield {"ok": True, "result": {"conflicts": [_conflict_view(m, c) for c in m.meta.conflicts()]}}
    elif op == "log_level":
        level = str(req.get("level", "INFO")).upper()
        logging.getLogger().setLevel(level)
        yield {"ok": True, "result": {"level": level}}
    else:
        yield {"ok": False, "error": f"unknown control operation {op!r}"}


def _conflict_view(m: Mount, row: dict[str, Any]) -> dict[str, Any]:
    """A conflicts-table row with the paths in the mount of its key and of the copy."""
    at = {r.name: "/" + r.at.strip("/") for r in m.config.remote}

    def path(key: str | None) -> str | None:
        base = at.get(row["remote"])
        return None if key is None or base is None else base.rstrip("/") + "/" + key

    return {**row, "path": path(row["key"]), "copy_path": path(row["copy_key"]),
            "local_mtime": row["local_mtime_ns"] / 1e9}


CACHE_OPS = ("pin", "unpin", "cache_stats", "cache_prune", "cache_clear")


async def _cache_control(m: Mount, op: str, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """pin/unpin a path inside the mount; stats, prune and clear of the cache tiers."""
    path = "/" + str(req.get("path") or "").strip("/")
    try:
        if op == "pin":
            targets = m.fs.paths.scope(path)
            if not targets:
                yield {"ok": False,
                       "error": f"{path} is not under a remote: local-only paths are always local"}
                return
            objects = await m.fs.remote_files_under(path)
            async for step in m.reader.pin(path, targets, objects):
                yield {"progress": step} if "of" in step else {"ok": True, "result": step}
        elif op == "unpin":
            result = await m.reader.unpin(path)
            if not result["pinned"]:
                yield {"ok": False, "error": f"{path} is not pinned (pinned: "
                       f"{', '.join(str(p['path']) for p in m.reader.pins.describe()) or 'nothing'})"}
                return
            yield {"ok": True, "result": result}
        elif op == "cache_stats":
            if req.get("wait"):
                with trio.move_on_after(float(req.get("timeout") or 300)):
                    await m.reader.wait_idle()
            yield {"ok": True, "result": {**m.reader.cache_statistics(), "reads": m.reader.statistics()}}
        elif op == "cache_prune":
            yield {"ok": True, "result": {"expired": await m.reader.prune()}}
        elif op == "cache_clear":
            yield {"ok": True, "result": {"removed": await m.reader.clear(req.get("tier") or None)}}
    except MountdError as e:
        yield {"ok": False, "error": f"{op} {path}: {e}"}


@dataclass(frozen=True)
class PathScope:
    """The journal entries of the remote keys under one path inside the mount: `(remote, key or
    None for all of its keys)` for each remote the path reaches."""

    parts: tuple[tuple[str, str | None], ...]

    def __call__(self, remote: str, key: str) -> bool:
        return any(r == remote and (k is None or key == k or key.startswith(k + "/")) for r, k in self.parts)

    def count(self, meta: MetaStore) -> int:
        return sum(meta.journal_count_under(r, k) for r, k in self.parts)


def _path_filter(m: Mount, path: str) -> PathScope:
    """Journal entries whose mount path lies under `path` (a path inside the mount)."""
    rel = "/" + path.strip("/")
    parts: list[tuple[str, str | None]] = []
    for r in m.config.remote:
        at = "/" + r.at.strip("/")
        if rel == "/" or at == rel or at.startswith(rel.rstrip("/") + "/"):
            parts.append((r.name, None))  # the attach point is at or below the path
        elif rel.startswith(at.rstrip("/") + "/"):
            parts.append((r.name, rel[len(at.rstrip("/")) + 1:]))
    return PathScope(tuple(parts))
