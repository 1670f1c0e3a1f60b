"""Typed values that cross the boundary between the FUSE shim and the vfs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ctx:
    """Who is asking: the caller's credentials from the kernel request."""

    uid: int
    gid: int
    pid: int = 0
    umask: int = 0o022


# Not frozen: a frozen dataclass's __init__ took 1.3 us against 0.12, once per entry of a readdir
# page and per stat; nothing mutates an Attr after it is made.
@dataclass(slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    exact: bool = True  # False: defaults until a HEAD loads the object's metadata (do not cache)

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


@dataclass(frozen=True, slots=True)
class SetAttr:
    """The fields a setattr call changes; None means unchanged. `*_now` sets the time to now."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    fh: int
    keep_cache: bool
    direct_io: bool = False
    backing_id: int = 0  # > 0: the kernel reads and writes the local file itself (FUSE passthrough)


@dataclass(frozen=True, slots=True)
class FsStats:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int
