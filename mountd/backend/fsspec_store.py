"""`FsspecStore`: the one module that imports fsspec and the cloud SDKs.

It adapts an fsspec filesystem (file, memory, s3fs, gcsfs, adlfs) to the `ObjectStore`
protocol: keys relative to the remote's root, user metadata as a str->str mapping, versions
normalized, and every SDK exception translated to the `RemoteError` family in one place
(`_translate`). Filesystems are built explicitly per remote (never fsspec's shared instance
cache). It must never log or raise a message that contains option values (keys, SAS tokens,
connection strings): messages name the remote and its redacted URL only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mountd.backend import DirListing, ObjectInfo
from mountd.config import RemoteConfig, redact_url
from mountd.errors import ObjectNotFound, RemoteDenied, RemoteError, RemoteUnavailable

log = logging.getLogger(__name__)

TMP_PREFIX = ".mountd-tmp-"
XATTR_META = "user.mountd.meta"
COPY_BLOCK = 8 << 20


def _normalize_version(value: object) -> str:
    return str(value or "").strip().strip('"').strip()


def _mtime_ns(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(float(value) * 1e9)
    ts = getattr(value, "timestamp", None)
    if ts is not None:
        return int(ts() * 1e9)
    try:
        from datetime import datetime

        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


class _Translate:
    """Turns any exception of a backend call into the RemoteError family, naming the remote only."""

    def __init__(self, name: str, display_url: str) -> None:
        self.name = name
        self.display_url = display_url

    @contextlib.contextmanager
    def __call__(self, what: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except RemoteError:
            raise
        except FileNotFoundError:
            raise ObjectNotFound(self.name, f"{what}: {key!r} not found in {self.display_url}") from None
        except PermissionError as e:
            raise RemoteDenied(self.name, f"{what} {key!r}: permission denied ({self._short(e)})") from None
        except (TimeoutError, ConnectionError) as e:
            raise RemoteUnavailable(self.name, f"{what} {key!r}: {self.display_url} unreachable ({self._short(e)})") from None
        except OSError as e:
            if e.errno in (errno.ENOENT,):
                raise ObjectNotFound(self.name, f"{what}: {key!r} not found") from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise RemoteDenied(self.name, f"{what} {key!r}: permission denied") from None
            raise RemoteUnavailable(self.name, f"{what} {key!r}: {self._short(e)}") from None
        except Exception as e:
            raise self._classify(what, key, e) from None

    def _classify(self, what: str, key: str, e: Exception) -> RemoteError:
        text = self._short(e)
        name = type(e).__name__
        low = (name + " " + text).lower()
        if any(s in low for s in ("nosuchkey", "not found", "404", "blobnotfound", "resourcenotfound")):
            return ObjectNotFound(self.name, f"{what}: {key!r} not found")
        if "nosuchbucket" in low or "containernotfound" in low or "bucket does not exist" in low:
            return ObjectNotFound(self.name, f"{what}: the bucket/container of {self.display_url} does not exist")
        if any(s in low for s in ("accessdenied", "forbidden", "403", "invalidaccesskeyid", "signaturedoesnotmatch",
                                  "authorization", "credential", "401")):
            return RemoteDenied(self.name, f"{what} {key!r}: access denied by {self.display_url} ({name})")
        if any(s in low for s in ("timeout", "timed out", "connect", "endpoint", "unreachable", "500", "502", "503",
                                  "504", "internalerror", "serviceunavailable", "slowdown", "throttl")):
            return RemoteUnavailable(self.name, f"{what} {key!r}: {self.display_url} unavailable ({name})")
        return RemoteError(self.name, f"{what} {key!r}: {name}: {text}")

    @staticmethod
    def _short(e: BaseException) -> str:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        # never echo anything that looks like a credential back to the user
        for marker in ("AccountKey=", "SharedAccessSignature=", "sig=", "Signature=", "X-Amz-Credential"):
            if marker.lower() in text.lower():
                return type(e).__name__
        return text[:200]


class FsspecStore:
    """ObjectStore over an fsspec filesystem; scheme differences live in the small hooks below."""

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        self.name = name
        self.display_url = redact_url(url)
        self.fs = fs
        self.root = root.rstrip("/")
        self._translate = _Translate(name, self.display_url)

    # --- paths ----------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _key(self, path: str) -> str:
        path = path.rstrip("/")
        root = self.root.lstrip("/")
        path = path.lstrip("/")
        return path[len(root) + 1 :] if root else path

    # --- hooks that differ per backend ----------------------------------------------------------
    def _info_to_object(self, key: str, info: Mapping[str, Any], metadata: Mapping[str, str] | None) -> ObjectInfo:
        version = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("version_id") or ""
        mtime = info.get("LastModified") or info.get("last_modified") or info.get("updated") or info.get("mtime")
        return ObjectInfo(key=key, size=int(info.get("size") or 0), version=_normalize_version(version),
                          mtime_ns=_mtime_ns(mtime), metadata=metadata)

    def _listed_metadata(self, info: Mapping[str, Any]) -> Mapping[str, str] | None:
        meta = info.get("metadata")
        return {str(k).lower(): str(v) for k, v in meta.items()} if isinstance(meta, dict) else None

    def _read_metadata(self, key: str) -> dict[str, str]:
        meta = self.fs.metadata(self._path(key)) if hasattr(self.fs, "metadata") else {}
        return {str(k).lower(): str(v) for k, v in (meta or {}).items()}

    def _put_kwargs(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        return {"metadata": dict(metadata)}

    # --- ObjectStore ------------------------------------------------------------------------------
    def list_dir(self, prefix: str) -> DirListing:
        with self._translate("list", prefix):
            try:
                entries = self.fs.ls(self._path(prefix.rstrip("/")), detail=True, refresh=True)
            except FileNotFoundError:
                return DirListing(objects=(), prefixes=())
        objects, prefixes, marker = [], [], False
        for info in entries:
            rel = self._key(info["name"])
            if not rel.startswith(prefix) and prefix:
                continue
            name = rel[len(prefix):]
            if name in ("", "/"):
                marker = True
                continue
            if name.startswith(TMP_PREFIX):
                continue
            if info.get("type") == "directory" or name.endswith("/"):
                prefixes.append(name.rstrip("/"))
            else:
                objects.append(self._info_to_object(rel, info, self._listed_metadata(info)))
        return DirListing(objects=tuple(objects), prefixes=tuple(dict.fromkeys(prefixes)), marker_exists=marker)

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            info = self.fs.info(self._path(key))
            if info.get("type") == "directory" and not key.endswith("/"):
                raise FileNotFoundError(key)
            return self._info_to_object(key, info, self._read_metadata(key))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        with self._translate("read", key):
            return bytes(self.fs.cat_file(self._path(key), start=start, end=end))

    def download(self, key: str, dest: Path) -> ObjectInfo:
        with self._translate("download", key):
            info = self.head(key)
            self.fs.get_file(self._path(key), str(dest))
            return info

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("upload", key):
            self.fs.put_file(str(src), self._path(key), **self._put_kwargs(metadata))
            return self.head(key)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("put", key):
            self.fs.pipe_file(self._path(key), data, **self._put_kwargs(metadata))
            return self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            self.fs.copy(self._path(src_key), self._path(dst_key))
            if metadata is not None:
                return self.set_metadata(dst_key, metadata)
            return self.head(dst_key)

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                pass

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("set metadata", key):
            self.fs.setxattrs(self._path(key), **dict(metadata))
            return self.head(key)

    def probe(self) -> None:
        with self._translate("list", "/"):
            self.fs.ls(self.root, detail=False, refresh=True)


class FileStore(FsspecStore):
    """file://: objects are files under a root directory; directories are the markers.

    Metadata lives in the `user.mountd.meta` extended attribute. Writes go to a temp file in
    the same directory and are renamed into place, so a reader never sees a half object.
    Symlinks found in the tree are never followed (they could lead out of the root)."""

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        super().__init__(name, url, fs, root)
        Path(self.root).mkdir(parents=True, exist_ok=True)
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
            log.warning("remote %r: %s does not support extended attributes; POSIX attributes will not be stored",
                        self.name, self.display_url)

    def _object(self, key: str, st: os.stat_result, metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, version=f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}",
                          mtime_ns=st.st_mtime_ns, metadata=metadata)

    def list_dir(self, prefix: str) -> DirListing:
        base = self._p(prefix)
        objects, prefixes = [], []
        with self._translate("list", prefix):
            try:
                it = os.scandir(base)
            except (FileNotFoundError, NotADirectoryError):
                return DirListing(objects=(), prefixes=())
            with it:
                for entry in it:
                    name = entry.name
                    if name.startswith(TMP_PREFIX):
                        continue
                    if entry.is_symlink():
                        log.debug("remote %r: ignoring symlink %r", self.name, prefix + name)
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        prefixes.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        p = Path(entry.path)
                        objects.append(self._object(prefix + name, entry.stat(follow_symlinks=False), self._getmeta(p)))
        return DirListing(objects=tuple(objects), prefixes=tuple(prefixes), marker_exists=True)

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            p = self._p(key.rstrip("/"))
            st = os.lstat(p)
            if key.endswith("/") != stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                raise FileNotFoundError(key)
            return self._object(key, st, self._getmeta(p) or {})

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._translate("read", key):
            fd = os.open(self._p(key), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                return os.pread(fd, max(0, end - start), start)
            finally:
                os.close(fd)

    def _atomic_write(self, key: str, fill: Any, metadata: Mapping[str, str]) -> ObjectInfo:
        dest = self._p(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                fill(f)
            self._setmeta(tmp, metadata)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self.head(key)

    def download(self, key: str, dest: Path) -> ObjectInfo:
        with self._translate("download", key):
            info = self.head(key)
            with open(self._p(key), "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, COPY_BLOCK)
            return info

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("upload", key):
            with open(src, "rb") as s:
                return self._atomic_write(key, lambda f: shutil.copyfileobj(s, f, COPY_BLOCK), metadata)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("put", key):
            if key.endswith("/"):
                p = self._p(key.rstrip("/"))
                p.mkdir(parents=True, exist_ok=True)
                self._setmeta(p, metadata)
                return self.head(key)
            return self._atomic_write(key, lambda f: f.write(data), metadata)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            src = self._p(src_key)
            meta = metadata if metadata is not None else (self._getmeta(src) or {})
            with open(src, "rb") as s:
                return self._atomic_write(dst_key, lambda f: shutil.copyfileobj(s, f, COPY_BLOCK), meta)

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

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
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
            except FileNotFoundError:
                pass

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


class MemoryStore(FsspecStore):
    """memory://: fsspec's MemoryFileSystem has no user metadata, so it is kept beside it."""

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        super().__init__(name, url, fs, root)
        self._meta: dict[str, dict[str, str]] = {}
        self._versions: dict[str, int] = {}
        self._counter = 0
        self._lock = threading.Lock()

    def _bump(self, key: str) -> None:
        with self._lock:
            self._counter += 1
            self._versions[key] = self._counter

    def _info_to_object(self, key: str, info: Mapping[str, Any], metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(info.get("size") or 0), version=str(self._versions.get(key, 0)),
                          mtime_ns=_mtime_ns(info.get("created")), metadata=dict(self._meta.get(key, {})))

    def _read_metadata(self, key: str) -> dict[str, str]:
        return dict(self._meta.get(key, {}))

    def _put_kwargs(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        return {}

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        self._meta[key] = dict(metadata)
        self._bump(key)
        return super().upload(src, key, metadata)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        self._meta[key] = dict(metadata)
        self._bump(key)
        return super().put_bytes(key, data, metadata)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            self.fs.copy(self._path(src_key), self._path(dst_key))
        self._meta[dst_key] = dict(metadata if metadata is not None else self._meta.get(src_key, {}))
        self._bump(dst_key)
        return self.head(dst_key)

    def delete(self, key: str) -> None:
        super().delete(key)
        self._meta.pop(key, None)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        self.head(key)
        self._meta[key] = dict(metadata)
        return self.head(key)


class S3Store(FsspecStore):
    """s3://: user metadata rides in x-amz-meta-*; listings do not return it (HEAD does)."""

    def _listed_metadata(self, info: Mapping[str, Any]) -> Mapping[str, str] | None:
        return None

    def _put_kwargs(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        return {"Metadata": dict(metadata)}

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            kwargs: dict[str, Any] = {}
            if metadata is not None:
                kwargs = {"Metadata": dict(metadata), "MetadataDirective": "REPLACE"}
            self.fs.copy(self._path(src_key), self._path(dst_key), **kwargs)
            return self.head(dst_key)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return self.copy(key, key, metadata)


def _split_root(url: str) -> str:
    return url.split("://", 1)[1]


def open_store(remote: RemoteConfig, *, timeout: float = 30.0) -> FsspecStore:
    """Build the filesystem of one remote explicitly (no fsspec instance cache)."""
    scheme = remote.scheme
    opts = dict(remote.options)
    with _Translate(remote.name, remote.display_url)("connect"):
        if scheme == "file":
            from fsspec.implementations.local import LocalFileSystem

            return FileStore(remote.name, remote.url, LocalFileSystem(skip_instance_cache=True),
                             "/" + _split_root(remote.url).lstrip("/"))
        if scheme == "memory":
            from fsspec.implementations.memory import MemoryFileSystem

            return MemoryStore(remote.name, remote.url, MemoryFileSystem(skip_instance_cache=True),
                               "/" + _split_root(remote.url).strip("/"))
        if scheme == "s3":
            import s3fs

            client_kwargs = dict(opts.pop("client_kwargs", {}))
            for k in ("endpoint_url", "region_name"):
                if k in opts:
                    client_kwargs[k] = opts.pop(k)
            if "region" in opts:
                client_kwargs["region_name"] = opts.pop("region")
            config_kwargs = {"connect_timeout": min(timeout, 10), "read_timeout": timeout,
                             "retries": {"max_attempts": 2, "mode": "standard"},
                             "request_checksum_calculation": "when_required",
                             "response_checksum_validation": "when_required", **opts.pop("config_kwargs", {})}
            if opts.pop("path_style", False):
                config_kwargs["s3"] = {"addressing_style": "path"}
            fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                                   use_listings_cache=False, **opts)
            return S3Store(remote.name, remote.url, fs, _split_root(remote.url).strip("/"))
        if scheme in ("gs", "gcs"):
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(skip_instance_cache=True, requests_timeout=timeout, **opts)
            return FsspecStore(remote.name, remote.url, fs, _split_root(remote.url).strip("/"))
        if scheme in ("az", "abfs", "abfss"):
            import adlfs

            fs = adlfs.AzureBlobFileSystem(skip_instance_cache=True, **opts)
            return FsspecStore(remote.name, remote.url, fs, _split_root(remote.url).strip("/"))
    raise RemoteError(remote.name, f"unsupported URL scheme {scheme}://")
