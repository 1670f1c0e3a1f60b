"""How remote objects and local paths merge into one tree.

Pure functions and small value types, no I/O: which remote a path belongs to, the object key
of a path, which listed names are valid POSIX names (with the reason when not), and how POSIX
attributes travel in object metadata (the names s3fs-fuse and rclone use: mode, uid, gid,
mtime; plus our sha256; user extended attributes in s3fs-fuse's one `xattr` entry).
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from mountd.cache.reader import ObjectRef
from mountd.config import RemoteConfig
from mountd.meta import Inode

NAME_MAX = 255
META_MODE, META_UID, META_GID, META_MTIME, META_SHA256 = "mode", "uid", "gid", "mtime", "sha256"
# user extended attributes of a remote file or directory: one entry holding URL-encoded JSON of
# {name: base64(value)}, as s3fs-fuse writes its `x-amz-meta-xattr` header (docs/semantics.md)
META_XATTR = "xattr"
META_RDEV = "rdev"  # the device number of a character or block device node
# a file with hard links on a remote path: each name is an object, and each carries the same id, so
# a mount that meets them makes them names of one inode (no hyphen: Azure's metadata names are
# C# identifiers)
META_LINK_GROUP = "linkgroup"
# file types an empty object becomes when its stored mode says so (s3fs-fuse's convention: a
# `mode` header); a directory is never one (its kind comes from the listing's prefix)
OBJECT_KINDS = frozenset({stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
XATTR_SIZE_MAX = 65536  # Linux's largest value, and our largest list of names on a local-only path
# user metadata per object (keys + values, in bytes) each kind of store accepts: S3 2 KiB, GCS and
# Azure 8 KiB; a file:// remote keeps it in one extended attribute of the bucket's file (ext4:
# one 4 KiB block for all of a file's attributes); memory:// as GCS
METADATA_LIMITS = {"s3": 2048, "gs": 8192, "gcs": 8192, "az": 8192, "abfs": 8192, "abfss": 8192,
                   "file": 3072, "memory": 8192}


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
# the directory indexes of the attributes mountd stored, at the remote's root (vfs/dir_index.py);
# not shown either
ATTRS_DIR = ".mountd-attrs"
HIDDEN_AT_ROOT = (FEED_DIR, ATTRS_DIR)


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


def metadata_for(mode: int, uid: int, gid: int, mtime_ns: int, sha256: str | None,
                 xattrs: Mapping[bytes, bytes] | None = None, rdev: int = 0,
                 link_group: str | None = None) -> dict[str, str]:
    meta = {META_MODE: str(mode), META_UID: str(uid), META_GID: str(gid), META_MTIME: format_mtime(mtime_ns)}
    if rdev:
        meta[META_RDEV] = str(rdev)
    if link_group:
        meta[META_LINK_GROUP] = link_group
    if sha256:
        meta[META_SHA256] = sha256
    if xattrs:
        meta[META_XATTR] = encode_xattrs(xattrs)
    return meta


def encode_xattrs(xattrs: Mapping[bytes, bytes]) -> str:
    """s3fs-fuse's form: URL-encoded JSON of {name: base64(value)}; ASCII, so a valid header value
    for every store. Names that are not UTF-8 travel as JSON's escapes of their surrogates."""
    doc = {name.decode("utf-8", "surrogateescape"): base64.b64encode(value).decode("ascii")
           for name, value in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(doc, separators=(",", ":")), safe="")


def xattrs_from_metadata(meta: Mapping[str, str] | None) -> dict[bytes, bytes]:
    """The user extended attributes an object's metadata holds ({} when none, or unreadable)."""
    text = (meta or {}).get(META_XATTR)
    if not text:
        return {}
    try:
        doc = json.loads(urllib.parse.unquote(text))
        return {str(name).encode("utf-8", "surrogateescape"): base64.b64decode(str(value), validate=True)
                for name, value in dict(doc).items() if str(name).startswith("user.")}
    except (ValueError, TypeError, binascii.Error):
        return {}


def metadata_size(meta: Mapping[str, str]) -> int:
    """Bytes of user metadata as the stores count them: each key and value, UTF-8."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


# the most the other entries of an object's metadata can take: the widest mode, owner and time
_META_RESERVED = metadata_size(metadata_for(0o177777, 2**32 - 1, 2**32 - 1, -(10**20), "0" * 64,
                                            link_group="0" * 32))


def xattr_room(scheme: str) -> int | None:
    """Bytes left for the `xattr` entry in an object of a remote of this scheme (None: no limit)."""
    limit = METADATA_LIMITS.get(scheme)
    return None if limit is None else limit - _META_RESERVED - len(META_XATTR)


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    rdev: int = 0
    link_group: str | None = None


def attrs_from_metadata(meta: Mapping[str, str] | None, *, default_mode: int, uid: int, gid: int,
                        mtime_ns: int, kind: int) -> PosixAttrs:
    """POSIX attributes from object metadata, falling back to the mount's defaults field by field.

    The file type always comes from `kind` unless the metadata says symlink, FIFO, socket or
    device (a regular object whose mode has one of those types is one, the s3fs-fuse convention)."""
    meta = meta or {}
    mode = default_mode | kind
    try:
        m = int(meta[META_MODE])
        if stat.S_IFMT(m) in OBJECT_KINDS and kind == stat.S_IFREG:
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
    rdev = _int(META_RDEV, 0) if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
    group = meta.get(META_LINK_GROUP) or None
    if group is not None and (len(group) > 64 or not group.isalnum() or stat.S_ISDIR(mode)):
        group = None  # not one mountd wrote
    return PosixAttrs(mode=mode, uid=_int(META_UID, uid), gid=_int(META_GID, gid), mtime_ns=mtime, rdev=rdev,
                      link_group=group)


def object_ref(node: Inode) -> ObjectRef:
    """The version of the remote object whose bytes `node` has now (it must have a key)."""
    assert node.remote is not None and node.remote_key is not None
    return ObjectRef(remote=node.remote, key=node.remote_key, version=node.remote_version or "",
                     size=node.size, sha256=node.sha256)
