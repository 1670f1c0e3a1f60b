"""How remote objects and local paths merge into one tree.

Pure functions and small value types, no I/O: which remote a path belongs to, the object key
of a path, which listed names are valid POSIX names (with the reason when not), and how POSIX
attributes travel in object metadata (the names s3fs-fuse and rclone use: mode, uid, gid,
mtime; plus our sha256).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from mountd.cache.reader import ObjectRef
from mountd.config import RemoteConfig
from mountd.meta import Inode

NAME_MAX = 255
META_MODE, META_UID, META_GID, META_MTIME, META_SHA256 = "mode", "uid", "gid", "mtime", "sha256"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A remote attached at a path of the mount."""

    remote: RemoteConfig
    parts: tuple[str, ...]  # the attach path split, () for "/"

    @property
    def name(self) -> str:
        return self.remote.name


def attachments_for(remotes: tuple[RemoteConfig, ...]) -> list[Attachment]:
    """Deepest attach point first, so the first match of a path is the most specific remote."""
    atts = [Attachment(r, tuple(p for p in r.at.split("/") if p)) for r in remotes]
    return sorted(atts, key=lambda a: -len(a.parts))


# the change log of the hosts sharing a remote, at the remote's root (vfs/feed.py); not shown
FEED_DIR = ".mountd-log"


def key_for(parts_below_attach: tuple[str, ...], *, directory: bool = False) -> str:
    """The object key of a path below its attach point; directories (markers) end in '/'."""
    key = "/".join(parts_below_attach)
    return key + "/" if directory and key else key


def invalid_name_reason(name: str) -> str | None:
    """Why a listed name cannot be a directory entry, or None when it can."""
    if name == "":
        return "empty path segment"
    if name in (".", ".."):
        return f"'{name}' segment"
    if "/" in name or "\0" in name:
        return "contains '/' or NUL"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    return None


def format_mtime(mtime_ns: int) -> str:
    """Seconds with nine decimals, exact (a float would lose the last digits of today's times)."""
    sign = "-" if mtime_ns < 0 else ""
    sec, ns = divmod(abs(mtime_ns), 10**9)
    return f"{sign}{sec}.{ns:09d}"


def parse_mtime(text: str) -> int:
    """Nanoseconds from "1600000000", "1600000000.5" or "1600000000.123456789" (ValueError if not)."""
    return int(Decimal(text.strip()).scaleb(9).to_integral_value())


def metadata_for(mode: int, uid: int, gid: int, mtime_ns: int, sha256: str | None) -> dict[str, str]:
    meta = {META_MODE: str(mode), META_UID: str(uid), META_GID: str(gid), META_MTIME: format_mtime(mtime_ns)}
    if sha256:
        meta[META_SHA256] = sha256
    return meta


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    mode: int
    uid: int
    gid: int
    mtime_ns: int


def attrs_from_metadata(meta: Mapping[str, str] | None, *, default_mode: int, uid: int, gid: int,
                        mtime_ns: int, kind: int) -> PosixAttrs:
    """POSIX attributes from object metadata, falling back to the mount's defaults field by field.

    The file type always comes from `kind` unless the metadata says symlink (a regular object
    whose mode has S_IFLNK is a symlink, the s3fs-fuse convention)."""
    meta = meta or {}
    mode = default_mode | kind
    try:
        m = int(meta[META_MODE])
        if stat.S_ISLNK(m) and kind == stat.S_IFREG:
            mode = m
        else:
            mode = stat.S_IMODE(m) | kind
    except (KeyError, ValueError):
        pass

    def _int(name: str, default: int) -> int:
        try:
            return int(meta[name])
        except (KeyError, ValueError):
            return default

    try:
        mtime = parse_mtime(meta[META_MTIME])
    except (KeyError, ValueError, ArithmeticError):
        mtime = mtime_ns
    return PosixAttrs(mode=mode, uid=_int(META_UID, uid), gid=_int(META_GID, gid), mtime_ns=mtime)


def object_ref(node: Inode) -> ObjectRef:
    """The version of the remote object whose bytes `node` has now (it must have a key)."""
    assert node.remote is not None and node.remote_key is not None
    return ObjectRef(remote=node.remote, key=node.remote_key, version=node.remote_version or "",
                     size=node.size, sha256=node.sha256)
