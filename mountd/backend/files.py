"""`FileStore` (file://) and `MemoryStore` (memory://): the remotes that need no server.

A local directory holds objects as files and markers as directories, with user metadata in an
extended attribute; memory:// is a bucket in a dict of this process, with S3's semantics, for
tests and demos. A write never leaves a half object where a reader can see it, and a file://
store never follows a symlink (it could lead out of its root).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountd.backend import (
    CONDITIONAL_OPS,
    LIST_PAGE,
    DirListing,
    ListingPage,
    ObjectInfo,
    PatchBase,
    Precondition,
    gather_pages,
)
from mountd.backend.base import FsspecStore, lower_keys
from mountd.backend.errors import Translate
from mountd.errors import ObjectNotFound, RemoteUnavailable, VersionMismatch

log = logging.getLogger(__name__)

TMP_PREFIX = ".mountd-tmp-"
# a temporary upload file of a local-directory remote that has not been written to for this long
# was left by a writer that died; listing its directory removes it
STALE_TMP_AGE = 3600.0
XATTR_META = "user.mountd.meta"
COPY_BLOCK = 8 << 20


class _RootTranslate(Translate):
    """Every call of a file:// store first checks that its root directory is there."""

    def __init__(self, root: str, name: str, display_url: str) -> None:
        super().__init__(name, display_url)
        self.root = root

    @contextlib.contextmanager
    def __call__(self, what: str, key: str = "") -> Iterator[None]:
        if not os.path.isdir(self.root):
            self.errors += 1
            raise RemoteUnavailable(self.name, f"{what}: its directory {self.root} does not exist (a file "
                                               "system not mounted yet, or a typo): create it, or fix `url`")
        with super().__call__(what, key):
            yield


class FileStore(FsspecStore):
    """file://: objects are files under a root directory; directories are the markers.

    Metadata lives in the `user.mountd.meta` extended attribute. Writes go to a temp file in
    the same directory and are renamed into place, so a reader never sees a half object.
    Symlinks found in the tree are never followed (they could lead out of the root). A write
    with a Precondition compares and replaces under an flock of the root directory (between
    processes, and between threads, each of which opens it anew), so daemons sharing the
    directory get the compare-and-swap of a bucket."""

    conditional = frozenset(CONDITIONAL_OPS)
    patches = True  # (a copy of the stored file with the changed ranges written over it)

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        super().__init__(name, url, fs, root)
        # its directory is the bucket: never made here, so a file system not mounted yet (or a
        # typo) is an unreachable remote, not an empty one that files vanish into
        self._translate = _RootTranslate(self.root, name, self.display_url)
        self._xattr_ok = True
        self._warned = threading.Event()

    def _p(self, key: str) -> Path:
        p = Path(self.root, key)
        if ".." in Path(key).parts:
            raise FileNotFoundError(key)
        return p

    def _getmeta(self, p: Path) -> dict[str, str] | None:
        try:
            return dict(json.loads(os.getxattr(p, XATTR_META, follow_symlinks=False)))
        except OSError as e:
            return {} if e.errno in (errno.ENODATA, errno.ENOTSUP) else None
        except ValueError:
            return {}

    def _setmeta(self, p: Path, metadata: Mapping[str, str]) -> None:
        if not self._xattr_ok:
            return
        try:
            os.setxattr(p, XATTR_META, json.dumps(dict(metadata)).encode(), follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENOTSUP:
                raise
            self._xattr_ok = False
            log.warning("remote %r: %s does not support extended attributes; POSIX attributes will not be "
                        "stored", self.name, self.display_url)

    def _object(self, key: str, st: os.stat_result, metadata: Mapping[str, str] | None) -> ObjectInfo:
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size  # a directory is a zero-byte marker
        return ObjectInfo(key=key, size=size, version=f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}",
                          mtime_ns=st.st_mtime_ns, metadata=metadata)

    def list_dir(self, prefix: str) -> DirListing:
        return self.list_page(prefix).listing

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        """A directory is listed in one page (it is local, and a scan cannot resume in the middle);
        a `limit` below a page, as a probe for any child asks, stops early and says there is more."""
        base = self._p(prefix)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        stop = limit if limit < LIST_PAGE else None
        with self._translate("list", prefix):
            try:
                it = os.scandir(base)
            except (FileNotFoundError, NotADirectoryError):
                return ListingPage(DirListing(objects=(), prefixes=()), None)
            with it:
                for entry in it:
                    if start_after and prefix + entry.name <= start_after:
                        continue
                    if stop is not None and len(objects) + len(prefixes) >= stop:
                        return ListingPage(DirListing(objects=tuple(objects), prefixes=tuple(prefixes),
                                                      marker_exists=True), "more")
                    name = entry.name
                    if name.startswith(TMP_PREFIX):
                        self._sweep_if_stale(entry)
                        continue
                    if entry.is_symlink():
                        log.debug("remote %r: ignoring symlink %r", self.name, prefix + name)
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        prefixes.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        p = Path(entry.path)
                        st = entry.stat(follow_symlinks=False)
                        objects.append(self._object(prefix + name, st, self._getmeta(p)))
        return ListingPage(DirListing(objects=tuple(objects), prefixes=tuple(prefixes), marker_exists=True),
                           None)

    def _sweep_if_stale(self, entry: os.DirEntry[str]) -> None:
        """Remove a temporary file of a write that died with its writer (a daemon killed during
        an upload): one untouched for `STALE_TMP_AGE` is no one's any more."""
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if age > STALE_TMP_AGE and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                log.info("remote %r: removed %s, left %.0f s ago by an interrupted upload",
                         self.name, entry.name, age)
        except OSError as e:  # gone already (its writer finished), or not ours to remove
            log.debug("remote %r: leaving %s: %s", self.name, entry.name, e)

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            p = self._p(key.rstrip("/"))
            st = os.lstat(p)
            if key.endswith("/") != stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                raise FileNotFoundError(key)
            return self._object(key, st, self._getmeta(p) or {})

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        with self._translate("read", key):
            fd = os.open(self._p(key), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                # a replaced file is a new inode (writes are renames over the name), so the open
                # descriptor's version is the version of every byte read through it
                if version and (found := self._object(key, os.fstat(fd), None).version) != version:
                    raise VersionMismatch(self.name, f"{key!r}: expected {version}, found {found}")
                data = os.pread(fd, max(0, end - start), start)
                self._count(requests=1, bytes_downloaded=len(data))
                return data
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _compared(self, key: str, expect: Precondition | None, missing_ok: bool = False) -> Iterator[None]:
        """Hold the root's lock while the object at `key` is what `expect` says (else raise
        VersionMismatch; `missing_ok`: no object at all is fine too, for a delete); without
        `expect`, no lock and no comparison."""
        if expect is None:
            yield
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                found = self.head(key).version
            except ObjectNotFound:
                found = ""
            if found != expect.version and not (missing_ok and not found):
                raise VersionMismatch(self.name, f"{key!r}: expected {expect.version or 'no object'}, "
                                                 f"found {found or 'none'}")
            yield
        finally:
            os.close(fd)  # releases the lock

    def _atomic_write(self, key: str, fill: Any, metadata: Mapping[str, str],
                      expect: Precondition | None = None) -> ObjectInfo:
        dest = self._p(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                fill(f)
            self._setmeta(tmp, metadata)
            with self._compared(key, expect):
                try:
                    os.replace(tmp, dest)
                except IsADirectoryError:
                    if not self._drop_empty_prefix(dest):
                        raise
                    os.replace(tmp, dest)
                return self.head(key)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_empty_prefix(self, p: Path) -> bool:
        """An empty directory that is no marker is no key at all (a prefix with nothing under
        it does not exist in a bucket): removed, so that an object of that name can be written.
        Concurrent deletes and writes of keys below it can leave one behind (the differential
        test met a file stuck behind one, retried until `sync --wait` gave up). False when it
        is a marker, holds anything, or is not a directory."""
        if p.is_symlink() or not p.is_dir() or self._is_marker(p):
            return False
        try:
            p.rmdir()
        except OSError:
            return False
        log.info("removed the empty directory %s, which held no key, to write an object of its name", p)
        return True

    def download(self, key: str, dest: Path) -> ObjectInfo:
        with self._translate("download", key):
            info = self.head(key)
            with open(self._p(key), "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, COPY_BLOCK)
            return info

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None, patch: PatchBase | None = None) -> ObjectInfo:
        with self._translate("upload", key):
            if patch is not None:
                return self._atomic_write(key, lambda f: self._patched(f, src, key, patch), metadata, expect)
            with open(src, "rb") as s:
                return self._atomic_write(key, lambda f: shutil.copyfileobj(s, f, COPY_BLOCK),
                                          metadata, expect)

    def _patched(self, out: Any, src: Path, key: str, patch: PatchBase) -> None:
        """The object `patch` names with the changed ranges (and any bytes past its end) from
        `src`, as S3's UploadPartCopy builds it: the unchanged bytes come from the stored
        version only (VersionMismatch when the key holds another), never from `src`."""
        with open(self._p(key), "rb") as base, open(src, "rb") as changed:
            found = self._object(key, os.fstat(base.fileno()), None).version
            if found != patch.version:
                raise VersionMismatch(self.name, f"{key!r}: the patch is of {patch.version}, found {found}")
            size = os.fstat(changed.fileno()).st_size
            shutil.copyfileobj(base, out, COPY_BLOCK)
            out.truncate(min(size, patch.size))
            for start, end in [*patch.changed, (patch.size, size)]:
                end = min(end, size)
                if start < end:
                    out.seek(start)
                    out.write(os.pread(changed.fileno(), end - start, start))
            self._count(patches=1, bytes_uploaded=patch.sent_bytes(size), bytes_copied=min(size, patch.size))

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        with self._translate("put", key):
            if key.endswith("/"):
                p = self._p(key.rstrip("/"))
                p.mkdir(parents=True, exist_ok=True)
                self._setmeta(p, metadata)
                return self.head(key)
            return self._atomic_write(key, lambda f: f.write(data), metadata, expect)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            src = self._p(src_key)
            meta = metadata if metadata is not None else (self._getmeta(src) or {})
            with open(src, "rb") as s:
                return self._atomic_write(dst_key, lambda f: shutil.copyfileobj(s, f, COPY_BLOCK),
                                          meta, expect)

    def _is_marker(self, p: Path) -> bool:
        try:
            os.getxattr(p, XATTR_META, follow_symlinks=False)
            return True
        except OSError as e:
            return e.errno == errno.ENOTSUP  # without xattrs every directory counts as a marker

    def _prune_parents(self, p: Path) -> None:
        """Remove directories left empty that no marker keeps, as a prefix vanishes in a bucket."""
        root = Path(self.root)
        parent = p.parent
        while parent != root and root in parent.parents and not self._is_marker(parent):
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        with self._translate("delete", key), self._compared(key, expect, missing_ok=True):
            p = self._p(key.rstrip("/"))
            try:
                if key.endswith("/"):
                    if p.is_dir() and not p.is_symlink():
                        try:
                            p.rmdir()
                        except OSError:
                            # objects below keep the prefix alive; only the marker goes
                            with contextlib.suppress(OSError):
                                os.removexattr(p, XATTR_META, follow_symlinks=False)
                            return
                        self._prune_parents(p)
                elif not p.is_dir():
                    p.unlink()
                    self._prune_parents(p)
            except (FileNotFoundError, NotADirectoryError):
                pass  # a "parent" that is a file: the key does not exist, as in a bucket

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("set metadata", key):
            p = self._p(key.rstrip("/"))
            if not p.exists():
                raise FileNotFoundError(key)
            self._setmeta(p, metadata)
            return self.head(key)

    def probe(self) -> None:
        with self._translate("list", "/"):
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(self.root)
            os.listdir(self.root)


@dataclass
class _MemObject:
    data: bytes
    metadata: dict[str, str]
    version: int
    mtime_ns: int


class MemoryStore(FsspecStore):
    """memory://: an in-process bucket with S3 semantics (markers, a file and a prefix of one name).

    fsspec's MemoryFileSystem is a filesystem (no user metadata, no `a` beside `a/`), so objects
    live in a dict shared by every store of the same URL in this process, as fsspec's memory
    store is."""

    _buckets: dict[str, dict[str, _MemObject]] = {}
    _lock = threading.RLock()
    _counter = 0
    conditional = frozenset(CONDITIONAL_OPS)

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        super().__init__(name, url, fs, root)
        with self._lock:
            self._objects = self._buckets.setdefault(self.root, {})

    def _new(self, data: bytes, metadata: Mapping[str, str]) -> _MemObject:
        with self._lock:
            MemoryStore._counter += 1
            return _MemObject(bytes(data), lower_keys(metadata), MemoryStore._counter, time.time_ns())

    def _get(self, key: str) -> _MemObject:
        obj = self._objects.get(key)
        if obj is None:
            raise ObjectNotFound(self.name, f"{key!r} not found in {self.display_url}")
        return obj

    def _info(self, key: str, obj: _MemObject, with_meta: bool = True) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(obj.data), version=str(obj.version), mtime_ns=obj.mtime_ns,
                          metadata=dict(obj.metadata) if with_meta else None)

    def list_dir(self, prefix: str) -> DirListing:
        return gather_pages(self.list_page, prefix)

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        """Pages as S3 makes them: `limit` keys or prefixes in key order; the token is the last one."""
        self._count(requests=1)
        token = token or start_after or None
        objects: list[ObjectInfo] = []
        prefixes: dict[str, None] = {}
        marker = False
        last = ""
        with self._lock:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, obj in items:
            rest = key[len(prefix):]
            child = prefix + rest.split("/", 1)[0] + ("/" if "/" in rest else "")
            if token is not None and child <= token:
                continue
            if len(objects) + len(prefixes) >= limit and child != last:
                return ListingPage(DirListing(objects=tuple(objects), prefixes=tuple(prefixes),
                                              marker_exists=marker), last)
            last = child
            if rest == "":
                marker = True
            elif "/" in rest:
                prefixes.setdefault(rest.split("/", 1)[0])
            else:
                objects.append(self._info(key, obj))
        return ListingPage(DirListing(objects=tuple(objects), prefixes=tuple(prefixes), marker_exists=marker),
                           None)

    def head(self, key: str) -> ObjectInfo:
        self._count(requests=1)
        return self._info(key, self._get(key))

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        self._count(requests=1)
        obj = self._get(key)
        if version and str(obj.version) != version:
            raise VersionMismatch(self.name, f"{key!r}: expected {version}, found {obj.version}")
        return obj.data[start:max(start, end)]

    def download(self, key: str, dest: Path) -> ObjectInfo:
        obj = self._get(key)
        dest.write_bytes(obj.data)
        return self._info(key, obj)

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None) -> ObjectInfo:
        return self.put_bytes(key, src.read_bytes(), metadata, expect=expect)

    def _check(self, key: str, expect: Precondition | None, missing_ok: bool = False) -> None:
        """Called under `_lock`: the compare half of a compare-and-swap."""
        if expect is not None:
            obj = self._objects.get(key)
            found = str(obj.version) if obj is not None else ""
            if found != expect.version and not (missing_ok and not found):
                raise VersionMismatch(self.name, f"{key!r}: expected {expect.version or 'no object'}, "
                                                 f"found {found or 'none'}")

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        obj = self._new(data, metadata)
        with self._lock:
            self._check(key, expect)
            self._objects[key] = obj
        self._count(requests=1, bytes_uploaded=len(data))
        return self._info(key, obj)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        src = self._get(src_key)
        obj = self._new(src.data, src.metadata if metadata is None else metadata)
        with self._lock:
            self._check(dst_key, expect)
            self._objects[dst_key] = obj
        self._count(requests=1, copies=1)
        return self._info(dst_key, obj)

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        self._count(requests=1)
        with self._lock:
            self._check(key, expect, missing_ok=True)
            self._objects.pop(key, None)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        src = self._get(key)
        obj = self._new(src.data, metadata)
        obj.mtime_ns = src.mtime_ns
        self._objects[key] = obj
        return self._info(key, obj)

    def probe(self) -> None:
        return None
