"""`FsspecStore` and its per-scheme subclasses: the one module that imports fsspec and the cloud SDKs.

It adapts fsspec filesystems (file, memory, s3fs, gcsfs, adlfs) to the `ObjectStore` protocol:
keys relative to the remote's root (bucket + prefix of its URL), user metadata as a str->str
mapping, versions normalized (ETag without quotes or weak prefix; GCS generation), and every
SDK exception translated to the `RemoteError` family in one place (`_Translate`). The cloud
stores call the SDK clients the fsspec filesystems hold (s3fs `call_s3`, gcsfs `call`, adlfs's
async `service_client`), so listings, metadata, copies and multipart uploads behave the same on
every cloud. Filesystems are built explicitly per remote (never fsspec's shared instance cache).

It must never log or raise a message that contains option values (keys, SAS tokens, connection
strings): messages name the remote, its redacted URL and endpoint only; the SDKs' own loggers
(which print request headers at DEBUG) are held at WARNING, and a logging filter masks the
secret option values of every remote opened here.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import email.utils
import errno
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mountd.backend import DirListing, ObjectInfo, StoreTuning
from mountd.backend.presigned import PresignedRanges
from mountd.config import RemoteConfig, RepoConfig, redact_url
from mountd.errors import ObjectNotFound, RemoteDenied, RemoteError, RemoteUnavailable, UploadCancelled

log = logging.getLogger(__name__)

TMP_PREFIX = ".mountd-tmp-"
# a temporary upload file of a local-directory remote that has not been written to for this long
# was left by a writer that died; listing its directory removes it
STALE_TMP_AGE = 3600.0
XATTR_META = "user.mountd.meta"
COPY_BLOCK = 8 << 20
S3_MIN_PART = 5 << 20  # S3 refuses smaller parts (except the last)
S3_META = "x-amz-meta-"  # user metadata headers (lower case)
HEAD_URL_LIFETIME = 900  # seconds a signed HEAD URL is valid (it is used at once)
HEAD_SIGNER_REUSE = 300  # seconds before the HEAD signer takes up the credentials again
GCS_CHUNK_ALIGN = 256 << 10  # resumable-upload chunks must be multiples of 256 KiB

# Loggers of the SDKs: at DEBUG they print request headers and URLs (signatures, SAS tokens,
# bearer tokens). They stay at WARNING whatever level the daemon runs at.
SDK_LOGGERS = ("botocore", "boto3", "aiobotocore", "s3fs", "gcsfs", "google", "google.auth", "adlfs", "azure",
               "urllib3", "aiohttp", "fsspec", "requests_oauthlib", "oauthlib", "msal")
# option names whose values are secrets (matched case-insensitively, also inside nested tables)
SECRET_OPTION = re.compile(r"secret|key|token|password|sas|credential|connection_string|signature", re.I)


# --- secrets ----------------------------------------------------------------------------------------


class SecretFilter(logging.Filter):
    """Masks registered secret values in every record that passes a handler it is attached to."""

    def __init__(self) -> None:
        super().__init__("mountd-secrets")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        masked = msg
        for s in self.secrets:
            masked = masked.replace(s, "***")
        if masked != msg or record.exc_info:
            record.msg, record.args = masked, None
            if record.exc_info:  # a traceback could quote a secret: keep only its last line
                record.msg += f" [{record.exc_info[0].__name__ if record.exc_info[0] else 'error'}]"
                record.exc_info = None
                record.exc_text = None
        return True


SECRETS = SecretFilter()


def _secret_values(options: Mapping[str, Any], under_secret: bool = False) -> Iterator[str]:
    for k, v in options.items():
        secret = under_secret or bool(SECRET_OPTION.search(str(k)))
        if isinstance(v, Mapping):
            yield from _secret_values(v, secret)
        elif secret and isinstance(v, str) and len(v) >= 4:
            yield v
            # parts of a connection string are secrets on their own too
            for part in v.split(";"):
                name, _, value = part.partition("=")
                if value and SECRET_OPTION.search(name) and len(value) >= 4:
                    yield value


def guard_secrets(options: Mapping[str, Any]) -> None:
    """Register the secret values of one remote's options and quiet the SDK loggers."""
    SECRETS.secrets.update(_secret_values(options))
    for name in SDK_LOGGERS:
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    # gcsfs logs a traceback at ERROR each time it gives up on a request; the error reaches us anyway
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        if SECRETS not in handler.filters:
            handler.addFilter(SECRETS)


# --- small conversions ------------------------------------------------------------------------------


def normalize_version(value: object) -> str:
    """ETag/generation as an opaque version: no quotes, no weak prefix, lower case.

    A multipart ETag keeps its `-N` suffix (it is part of the identity; it is not an MD5)."""
    v = str(value or "").strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').strip().lower()


_normalize_version = normalize_version


def _mtime_ns(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(float(value) * 1e9)
    ts = getattr(value, "timestamp", None)
    if ts is not None:
        return int(ts() * 1e9)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


def _lower_keys(meta: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (meta or {}).items() if v is not None}


# --- errors -----------------------------------------------------------------------------------------

_MISSING_BUCKET_CODES = ("nosuchbucket", "containernotfound", "bucket does not exist", "nosuchcontainer",
                         "the specified bucket does not exist", "no such container", "bucketnotfound")
_DENIED_CODES = ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "authenticationfailed",
                 "authorizationfailure", "authorizationpermissionmismatch", "invalidauthenticationinfo",
                 "forbidden", "unauthorized", "invalid credentials", "permission", "noauthenticationinformation",
                 "expiredtoken", "invalidtoken", "accountisdisabled")
_TIMEOUT_WORDS = ("timeout", "timed out", "readtimeout", "connecttimeout")
_UNREACHABLE_WORDS = ("could not connect", "connection refused", "cannot connect", "connectionerror",
                      "connection reset", "name or service not known", "temporary failure in name resolution",
                      "endpointconnectionerror", "serverdisconnected", "connection aborted", "remotedisconnected",
                      "clientconnectorerror", "nodename nor servname")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _http_status(e: BaseException) -> int | None:
    """The HTTP status of an SDK error anywhere in the exception chain (botocore, gcsfs, azure, aiohttp)."""
    for x in _chain(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code:
                return int(code)
        for attr in ("status_code", "status", "code"):
            v = getattr(x, attr, None)
            if isinstance(v, int) and 100 <= v < 600:
                return v
    return None


def _error_code(e: BaseException) -> str:
    for x in _chain(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict) and resp.get("Error", {}).get("Code"):
            return str(resp["Error"]["Code"])
        code = getattr(x, "error_code", None)
        if code:
            return str(getattr(code, "value", code))
    return ""


def _short(e: BaseException) -> str:
    """The first line of an error, or only its type when it could hold a credential."""
    text = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    for marker in ("accountkey=", "sharedaccesssignature=", "sig=", "signature=", "x-amz-credential", "token",
                   "authorization", "secret", "password"):
        if marker in text.lower():
            return type(e).__name__
    for s in SECRETS.secrets:
        text = text.replace(s, "***")
    return text[:160]


class _Translate:
    """Turns any exception of a backend call into the RemoteError family, naming the remote."""

    def __init__(self, name: str, display_url: str, bucket: str = "", endpoint: str = "", timeout: float = 0) -> None:
        self.name = name
        self.display_url = display_url
        self.bucket = bucket
        self.endpoint = endpoint
        self.timeout = timeout
        self.errors = 0

    @contextlib.contextmanager
    def __call__(self, what: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except RemoteError:
            self.errors += 1
            raise
        except Exception as e:
            self.errors += 1
            raise self.classify(what, key, e) from None

    def _where(self) -> str:
        return f"{self.display_url} (endpoint {self.endpoint})" if self.endpoint else self.display_url

    def classify(self, what: str, key: str, e: BaseException) -> RemoteError:
        status = _http_status(e)
        code = _error_code(e)
        texts = " ".join(f"{type(x).__name__} {x}" for x in _chain(e)).lower() + " " + code.lower()
        detail = f"HTTP {status} {code}".strip() if status else (code or type(e).__name__)
        subject = f"{what} {key!r}" if key else what
        if any(s in texts for s in _MISSING_BUCKET_CODES):
            return RemoteError(self.name, f"{subject}: the bucket/container {self.bucket!r} of {self.display_url} "
                                          "does not exist (create it, or fix `url`)")
        if status == 404 or isinstance(e, FileNotFoundError) or code in ("NoSuchKey", "BlobNotFound", "404"):
            return ObjectNotFound(self.name, f"{subject}: not found in {self.display_url}")
        if status in (401, 403) or isinstance(e, PermissionError) or any(s in texts for s in _DENIED_CODES):
            return RemoteDenied(self.name, f"{subject}: access denied by {self._where()} ({detail}); check the "
                                           "credentials in `options` or the SDK's environment")
        if status is not None and (status >= 500 or status == 429):
            return RemoteUnavailable(self.name, f"{subject}: server error from {self._where()} ({detail})")
        if any(s in texts for s in _TIMEOUT_WORDS) or isinstance(e, TimeoutError):
            limit = f" within {self.timeout:g}s" if self.timeout else ""
            return RemoteUnavailable(self.name, f"{subject}: no answer from {self._where()}{limit} (timed out)")
        if any(s in texts for s in _UNREACHABLE_WORDS) or isinstance(e, ConnectionError):
            return RemoteUnavailable(self.name, f"{subject}: {self._where()} unreachable ({_short(e)})")
        if isinstance(e, OSError) and e.errno in (errno.ENOENT,):
            return ObjectNotFound(self.name, f"{subject}: not found in {self.display_url}")
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            return RemoteDenied(self.name, f"{subject}: permission denied ({_short(e)})")
        if isinstance(e, OSError):
            return RemoteUnavailable(self.name, f"{subject}: {_short(e)}")
        return RemoteError(self.name, f"{subject}: {type(e).__name__}: {_short(e)}")


# --- the generic store ------------------------------------------------------------------------------


class FsspecStore:
    """ObjectStore over an fsspec filesystem; subclasses replace what their SDK does better."""

    def __init__(self, name: str, url: str, fs: Any, root: str, tuning: StoreTuning | None = None,
                 bucket: str = "", endpoint: str = "") -> None:
        self.name = name
        self.display_url = redact_url(url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.tuning = tuning or StoreTuning()
        self._translate = _Translate(name, self.display_url, bucket, endpoint, self.tuning.timeout)
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._uploads: dict[str, concurrent.futures.Future[Any]] = {}  # key -> upload running (S3)
        self._uploads_lock = threading.Lock()

    def _count(self, **kw: int) -> None:
        with self._stats_lock:
            self._stats.update(kw)

    def cancel_upload(self, key: str) -> bool:
        """Stop an upload of `key` running in another thread (it raises UploadCancelled); False
        where the SDK gives no way to stop one: the upload then finishes and its result is dropped."""
        return False

    def statistics(self) -> dict[str, int]:
        with self._stats_lock:
            out = {"requests": 0, "bytes_uploaded": 0, "bytes_downloaded": 0, "multipart_uploads": 0, "copies": 0,
                   **self._stats}
        out["errors"] = self._translate.errors
        return out

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
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size  # a directory is a zero-byte marker
        return ObjectInfo(key=key, size=size, version=f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}",
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
                        self._sweep_if_stale(entry)
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
    _lock = threading.Lock()
    _counter = 0

    def __init__(self, name: str, url: str, fs: Any, root: str) -> None:
        super().__init__(name, url, fs, root)
        with self._lock:
            self._objects = self._buckets.setdefault(self.root, {})

    def _new(self, data: bytes, metadata: Mapping[str, str]) -> _MemObject:
        with self._lock:
            MemoryStore._counter += 1
            return _MemObject(bytes(data), _lower_keys(metadata), MemoryStore._counter, time.time_ns())

    def _get(self, key: str) -> _MemObject:
        obj = self._objects.get(key)
        if obj is None:
            raise ObjectNotFound(self.name, f"{key!r} not found in {self.display_url}")
        return obj

    def _info(self, key: str, obj: _MemObject, with_meta: bool = True) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(obj.data), version=str(obj.version), mtime_ns=obj.mtime_ns,
                          metadata=dict(obj.metadata) if with_meta else None)

    def list_dir(self, prefix: str) -> DirListing:
        self._count(requests=1)
        objects, prefixes, marker = [], [], False
        with self._lock:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, obj in items:
            rest = key[len(prefix):]
            if rest == "":
                marker = True
            elif "/" in rest:
                prefixes.append(rest.split("/", 1)[0])
            else:
                objects.append(self._info(key, obj))
        return DirListing(objects=tuple(objects), prefixes=tuple(dict.fromkeys(prefixes)), marker_exists=marker)

    def head(self, key: str) -> ObjectInfo:
        self._count(requests=1)
        return self._info(key, self._get(key))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        self._count(requests=1)
        return self._get(key).data[start:max(start, end)]

    def download(self, key: str, dest: Path) -> ObjectInfo:
        obj = self._get(key)
        dest.write_bytes(obj.data)
        return self._info(key, obj)

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return self.put_bytes(key, src.read_bytes(), metadata)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        obj = self._new(data, metadata)
        self._objects[key] = obj
        self._count(requests=1, bytes_uploaded=len(data))
        return self._info(key, obj)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        src = self._get(src_key)
        obj = self._new(src.data, src.metadata if metadata is None else metadata)
        self._objects[dst_key] = obj
        self._count(requests=1, copies=1)
        return self._info(dst_key, obj)

    def delete(self, key: str) -> None:
        self._count(requests=1)
        self._objects.pop(key, None)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        src = self._get(key)
        obj = self._new(src.data, metadata)
        obj.mtime_ns = src.mtime_ns
        self._objects[key] = obj
        return self._info(key, obj)

    def probe(self) -> None:
        return None



# --- S3 ---------------------------------------------------------------------------------------------


class _BucketStore(FsspecStore):
    """A store whose root is `bucket/prefix`; `_full(key)` is the key inside the bucket."""

    def __init__(self, name: str, url: str, fs: Any, root: str, tuning: StoreTuning | None = None,
                 endpoint: str = "") -> None:
        bucket, _, prefix = root.strip("/").partition("/")
        super().__init__(name, url, fs, root, tuning, bucket=bucket, endpoint=endpoint)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _listing(self, prefix: str, entries: Iterator[tuple[str, ObjectInfo | None]]) -> DirListing:
        """Builds a DirListing from (full key or common prefix, info) pairs of one delimited listing."""
        full = self._full(prefix)
        objects, prefixes, marker = [], [], False
        for name, info in entries:
            rel = name[len(full):]
            if info is None:
                prefixes.append(rel[:-1] if rel.endswith("/") else rel)
            elif rel == "":
                marker = True
            else:
                objects.append(info)
        return DirListing(objects=tuple(objects), prefixes=tuple(dict.fromkeys(prefixes)), marker_exists=marker)

    def _upload_parts(self, src: Path) -> bool:
        return src.stat().st_size >= self.tuning.multipart_threshold

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """A ranged GET through the fsspec filesystem (s3fs, gcsfs); past the end reads empty."""
        if end <= start:
            return b""
        with self._translate("read", key):
            self._count(requests=1)
            try:
                data = bytes(self.fs.cat_file(f"{self.bucket}/{self._full(key)}", start=start, end=end))
            except Exception as e:
                if "InvalidRange" in str(e) or _http_status(e) == 416:
                    return b""
                raise
            self._count(bytes_downloaded=len(data))
            return data

    def download(self, key: str, dest: Path) -> ObjectInfo:
        with self._translate("download", key):
            info = self.head(key)
            self._count(requests=1, bytes_downloaded=info.size)
            self.fs.get_file(f"{self.bucket}/{self._full(key)}", str(dest))
            return info

    def _probe(self) -> None:
        raise NotImplementedError

    def probe(self) -> None:
        """List one key of the root: reachability, credentials, and that the bucket exists."""
        try:
            self._probe()
        except ObjectNotFound:
            raise RemoteError(self.name, f"the bucket/container {self.bucket!r} of {self.display_url} does not "
                                         "exist (create it, or fix `url`)") from None


class S3Store(_BucketStore):
    """s3:// (AWS and S3-compatible): the botocore client of s3fs, called through `call_s3`.

    User metadata rides in x-amz-meta-*; listings do not return it (HEAD does). Ranged GETs are
    made with response checksum validation "when_required", so a whole-object checksum header
    that a server returns on a range never fails the read."""

    def _call(self, method: str, **kwargs: Any) -> Any:
        self._count(requests=1)
        return self.fs.call_s3(method, **kwargs)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """A ranged GET: through `PresignedRanges` (plain keep-alive HTTP read by C code, no event
        loop) when nothing but the signature is needed (no requester-pays or SSE-C arguments),
        else, or when that path gives up, through s3fs."""
        if end <= start:
            return b""
        data = self._fast().read(f"{self.bucket}/{self._full(key)}", start, end)
        if data is None:
            return super().read_range(key, start, end)
        self._count(requests=1, bytes_downloaded=len(data))
        return data

    def _fast(self) -> PresignedRanges:
        fast = self.__dict__.get("_presigned")
        if fast is None:
            simple = not self.fs.req_kw and not self.fs.s3_additional_kwargs
            fast = PresignedRanges(self._presign, timeout=self.tuning.timeout,
                                   verify=(self.fs.client_kwargs or {}).get("verify"))
            fast.enabled = fast.enabled and simple
            fast = self.__dict__.setdefault("_presigned", fast)
        return fast

    def head(self, key: str) -> ObjectInfo:
        """Through `PresignedRanges` (a URL signed here, plain HTTP) when it answers 200, else, or
        for any other answer, through botocore, which decides errors."""
        headers = self._fast().head(lambda: self._sign_head(key))
        if headers is not None and (info := self._info_from_headers(key, headers)) is not None:
            self._count(requests=1)
            return info
        with self._translate("head", key):
            r = self._call("head_object", Bucket=self.bucket, Key=self._full(key))
            return self._info(key, r, _lower_keys(r.get("Metadata")))

    def _info_from_headers(self, key: str, headers: Mapping[str, str]) -> ObjectInfo | None:
        try:
            size = int(headers["content-length"])
            modified = email.utils.parsedate_to_datetime(headers["last-modified"])
        except (KeyError, ValueError, TypeError):
            return None
        metadata = {k[len(S3_META):]: v for k, v in headers.items() if k.startswith(S3_META)}
        return self._info(key, {"ContentLength": size, "ETag": headers.get("etag"), "LastModified": modified},
                          metadata)

    def _sign_head(self, key: str) -> str:
        """A HEAD URL of `key` signed with SigV4 in the query; the signer (credentials, and the
        URL of the bucket as botocore addresses it) is renewed every `HEAD_SIGNER_REUSE` s."""
        from botocore.awsrequest import AWSRequest
        from fsspec.asyn import sync

        signer = self.__dict__.get("_head_signer")
        if signer is None or time.monotonic() - signer[2] > HEAD_SIGNER_REUSE:
            signer = self._head_signer = (*sync(self.fs.loop, self._head_signer_now), time.monotonic())
        auth, bucket_url, _ = signer
        request = AWSRequest(method="HEAD", url=bucket_url + urllib.parse.quote(self._full(key), safe="/~"),
                             headers={})
        if auth is not None:
            auth.add_auth(request)
        return str(request.url)

    async def _head_signer_now(self) -> tuple[Any, str]:
        await self.fs.set_session()
        s3 = await self.fs.get_s3(self.bucket)
        probe = str(await s3.generate_presigned_url("head_object", Params={"Bucket": self.bucket, "Key": "k"},
                                                    ExpiresIn=HEAD_URL_LIFETIME)).split("?", 1)[0]
        if not probe.endswith("/k"):
            raise ValueError("unexpected presigned URL form")
        from botocore import UNSIGNED

        if s3.meta.config.signature_version == UNSIGNED:
            return None, probe[:-1]
        auth = await s3._request_signer.get_auth_instance("s3", s3.meta.region_name or "us-east-1", "s3v4-query",
                                                          expires=HEAD_URL_LIFETIME)
        return auth, probe[:-1]

    def _presign(self, path: str, lifetime: int) -> str:
        """A SigV4 query-signed GET URL of bucket/key (botocore still presigns with SigV2 when no
        signature version is configured, which S3-compatible servers refuse)."""
        from botocore.awsrequest import AWSRequest
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(path)

        async def sign() -> str:
            await self.fs.set_session()
            s3 = await self.fs.get_s3(bucket)
            url = str(await s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=lifetime))
            if "?" not in url or "X-Amz-Signature=" in url:
                return url  # unsigned (anonymous) or already SigV4
            auth = await s3._request_signer.get_auth_instance("s3", s3.meta.region_name or "us-east-1", "s3v4-query",
                                                              expires=lifetime)
            request = AWSRequest(method="GET", url=url.split("?", 1)[0], headers={})
            auth.add_auth(request)
            return str(request.url)

        return str(sync(self.fs.loop, sign))

    def _info(self, key: str, o: Mapping[str, Any], metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(o.get("Size", o.get("ContentLength", 0)) or 0),
                          version=normalize_version(o.get("ETag")), mtime_ns=_mtime_ns(o.get("LastModified")),
                          metadata=metadata)

    def list_dir(self, prefix: str) -> DirListing:
        full = self._full(prefix)

        def entries() -> Iterator[tuple[str, ObjectInfo | None]]:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/"}
            while True:
                resp = self._call("list_objects_v2", **kwargs)
                for o in resp.get("Contents", ()):
                    yield o["Key"], self._info(o["Key"][len(self.prefix):], o, None)
                for p in resp.get("CommonPrefixes", ()):
                    yield p["Prefix"], None
                if not resp.get("IsTruncated") or not resp.get("NextContinuationToken"):
                    return
                kwargs["ContinuationToken"] = resp["NextContinuationToken"]

        with self._translate("list", prefix):
            return self._listing(prefix, entries())

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = src.stat().st_size
        with self._translate("upload", key):
            if self._upload_parts(src):
                # s3fs goes multipart when size >= 2 * chunksize; parts of at least 5 MiB
                chunk = max(S3_MIN_PART, min(self.tuning.multipart_chunk, size // 2))
                self._count(multipart_uploads=1, requests=2 + -(-size // chunk))
            else:
                chunk = max(size, S3_MIN_PART) + 1  # one PUT
                self._count(requests=1)
            # s3fs's coroutine run as a task on fsspec's loop, so that cancel_upload can stop it
            running = asyncio.run_coroutine_threadsafe(
                self.fs._put_file(str(src), f"{self.bucket}/{self._full(key)}", chunksize=chunk,
                                  max_concurrency=self.tuning.concurrency, Metadata=dict(metadata),
                                  ContentType="application/octet-stream"), self.fs.loop)
            with self._uploads_lock:
                self._uploads[key] = running
            try:
                running.result()
            except concurrent.futures.CancelledError:
                self._abort_multipart(key)
                raise UploadCancelled(self.name, f"upload of {key!r} stopped: the file changed or moved") from None
            finally:
                with self._uploads_lock:
                    if self._uploads.get(key) is running:
                        del self._uploads[key]
            self._count(bytes_uploaded=size)
            return self.head(key)

    def cancel_upload(self, key: str) -> bool:
        with self._uploads_lock:
            running = self._uploads.get(key)
        return running is not None and running.cancel()

    def _abort_multipart(self, key: str) -> None:
        """A cancelled s3fs upload leaves its multipart upload open (it aborts only on Exception)."""
        full = self._full(key)
        with contextlib.suppress(Exception):
            listed = self._call("list_multipart_uploads", Bucket=self.bucket, Prefix=full)
            for u in listed.get("Uploads", []):
                if u.get("Key") == full:
                    self._call("abort_multipart_upload", Bucket=self.bucket, Key=full, UploadId=u["UploadId"])

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("put", key):
            r = self._call("put_object", Bucket=self.bucket, Key=self._full(key), Body=data, Metadata=dict(metadata))
            self._count(bytes_uploaded=len(data))
            return self.head(key) if not r.get("ETag") else ObjectInfo(
                key=key, size=len(data), version=normalize_version(r["ETag"]),
                mtime_ns=self.head(key).mtime_ns, metadata=dict(metadata))

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            kwargs: dict[str, Any] = {}
            if metadata is not None:
                kwargs = {"Metadata": dict(metadata), "MetadataDirective": "REPLACE"}
            self._count(requests=1, copies=1)
            # s3fs copies objects over 5 GiB part by part (UploadPartCopy), still on the server
            self.fs.copy(f"{self.bucket}/{self._full(src_key)}", f"{self.bucket}/{self._full(dst_key)}", **kwargs)
            return self.head(dst_key)

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            self._call("delete_object", Bucket=self.bucket, Key=self._full(key))

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return self.copy(key, key, metadata)

    def _probe(self) -> None:
        with self._translate("list", "/"):
            self._call("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, Delimiter="/", MaxKeys=1)


# --- GCS --------------------------------------------------------------------------------------------


class GcsStore(_BucketStore):
    """gs:// / gcs://: the JSON API through gcsfs's authenticated session (`call`).

    The version is the object generation. Custom metadata is returned by listings too. Uploads
    of 5 MiB and more are resumable uploads in `multipart_chunk` pieces (gcsfs's threshold)."""

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        self._count(requests=1)
        return self.fs.call(method, path, *args, json_out=True, **kwargs)

    def _info(self, key: str, o: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(o.get("size") or 0), version=str(o.get("generation") or ""),
                          mtime_ns=_mtime_ns(o.get("updated")), metadata=_lower_keys(o.get("metadata")))

    def list_dir(self, prefix: str) -> DirListing:
        full = self._full(prefix)

        def entries() -> Iterator[tuple[str, ObjectInfo | None]]:
            token = None
            while True:
                resp = self._call("GET", "b/{}/o", self.bucket, prefix=full or None, delimiter="/",
                                  pageToken=token, maxResults=1000)
                for o in resp.get("items", ()):
                    yield o["name"], self._info(o["name"][len(self.prefix):], o)
                for p in resp.get("prefixes", ()):
                    yield p, None
                token = resp.get("nextPageToken")
                if not token:
                    return

        with self._translate("list", prefix):
            return self._listing(prefix, entries())

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            return self._info(key, self._call("GET", "b/{}/o/{}", self.bucket, self._full(key)))

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = src.stat().st_size
        chunk = max(GCS_CHUNK_ALIGN, self.tuning.multipart_chunk // GCS_CHUNK_ALIGN * GCS_CHUNK_ALIGN)
        with self._translate("upload", key):
            if size >= 5 << 20:
                self._count(multipart_uploads=1, requests=1 + -(-size // chunk))
            else:
                self._count(requests=1)
            self.fs.put_file(str(src), f"{self.bucket}/{self._full(key)}", metadata=dict(metadata), chunksize=chunk,
                             content_type="application/octet-stream")
            self._count(bytes_uploaded=size)
            return self.head(key)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("put", key):
            self._count(requests=1, bytes_uploaded=len(data))
            self.fs.pipe_file(f"{self.bucket}/{self._full(key)}", data, metadata=dict(metadata),
                              content_type="application/octet-stream")
            return self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            body: dict[str, Any] | None = None
            if metadata is not None:
                body = {"metadata": dict(metadata)}
            token = None
            self._count(copies=1)
            while True:  # a rewrite of a large object may take several calls
                resp = self._call("POST", "b/{}/o/{}/rewriteTo/b/{}/o/{}", self.bucket, self._full(src_key),
                                  self.bucket, self._full(dst_key), rewriteToken=token, json=body)
                if resp.get("done", True):
                    break
                token = resp["rewriteToken"]
            info = self.head(dst_key)
            if metadata is not None and dict(info.metadata or {}) != dict(metadata):
                return self.set_metadata(dst_key, metadata)  # a server that ignored the metadata of the rewrite
            return info

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            try:
                self._count(requests=1)
                self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._full(key))
            except FileNotFoundError:
                pass
            except Exception as e:
                if _http_status(e) != 404:
                    raise

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with self._translate("set metadata", key):
            old = self.head(key).metadata or {}
            patch: dict[str, Any] = {k: None for k in old if k not in metadata}  # null removes a key
            patch.update(metadata)
            return self._info(key, self._call("PATCH", "b/{}/o/{}", self.bucket, self._full(key),
                                              json={"metadata": patch}))

    def _probe(self) -> None:
        with self._translate("list", "/"):
            self._call("GET", "b/{}/o", self.bucket, prefix=self.prefix or None, delimiter="/", maxResults=1)


def _gcs_filesystem_class(retries: int) -> Any:
    """gcsfs's GCSFileSystem (not the gRPC-probing ExtendedGcsFileSystem) with `retries` attempts.

    gcsfs retries every request 6 times with up to 32 s pauses and logs a traceback when it
    gives up; a mount wants a bounded wait instead (the uploader retries on its own)."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    from gcsfs.core import GCSFileSystem
    from gcsfs.retry import retry_request

    class BoundedGCSFileSystem(GCSFileSystem):
        _request = retry_request(retries=retries)(GCSFileSystem._request.__wrapped__)

    return BoundedGCSFileSystem


# --- Azure ------------------------------------------------------------------------------------------


class AzureStore(_BucketStore):
    """az:// / abfs[s]://: Azure Blob (and ADLS Gen2 accounts through their blob endpoint).

    Uses the async BlobServiceClient that adlfs holds, run on adlfs's event loop. Blobs whose
    metadata says `hdi_isfolder` (ADLS Gen2 directories) or adlfs's `is_directory` count as
    directory markers. Large uploads stage blocks in parallel and commit them with the metadata."""

    FOLDER_FLAGS = ("hdi_isfolder", "is_directory")

    def _run(self, coro_fn: Any, *args: Any) -> Any:
        """Run one SDK coroutine on adlfs's loop; a network failure or 5xx is retried once.

        The SDK's own retry policy waits 15 s and more between attempts, so it is switched off
        per request (`_opts`) and this one quick retry takes its place."""
        from fsspec.asyn import sync

        for attempt in (1, 2):
            self._count(requests=1)
            try:
                return sync(self.fs.loop, coro_fn, *args)
            except Exception as e:
                err = self._translate.classify("", "", e)
                if attempt == 2 or not isinstance(err, RemoteUnavailable):
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def _opts(self) -> dict[str, Any]:
        t = int(max(1, self.tuning.timeout))
        return {"connection_timeout": t, "read_timeout": t, "retry_total": 0}

    def _container(self) -> Any:
        return self.fs.service_client.get_container_client(self.bucket)

    def _blob(self, key: str) -> Any:
        return self.fs.service_client.get_blob_client(self.bucket, self._full(key))

    def _info(self, key: str, p: Any) -> ObjectInfo:
        meta = {k: v for k, v in _lower_keys(p.metadata).items() if k not in self.FOLDER_FLAGS}
        return ObjectInfo(key=key, size=int(p.size or 0), version=normalize_version(p.etag),
                          mtime_ns=_mtime_ns(p.last_modified), metadata=meta)

    def _is_folder_blob(self, p: Any) -> bool:
        meta = _lower_keys(getattr(p, "metadata", None))
        return any(meta.get(f) == "true" for f in self.FOLDER_FLAGS)

    def list_dir(self, prefix: str) -> DirListing:
        full = self._full(prefix)

        async def collect() -> list[tuple[str, ObjectInfo | None]]:
            out: list[tuple[str, ObjectInfo | None]] = []
            async for item in self._container().walk_blobs(name_starts_with=full or None, delimiter="/",
                                                           include=["metadata"], **self._opts()):
                if not hasattr(item, "size"):  # a BlobPrefix
                    out.append((item.name, None))
                elif self._is_folder_blob(item) and item.name != full.rstrip("/"):
                    out.append((item.name + "/", None))
                elif self._is_folder_blob(item):
                    out.append((full, self._info(prefix, item)))
                else:
                    out.append((item.name, self._info(item.name[len(self.prefix):], item)))
            return out

        with self._translate("list", prefix):
            return self._listing(prefix, iter(self._run(collect)))

    def head(self, key: str) -> ObjectInfo:
        async def props() -> Any:
            return await self._blob(key).get_blob_properties(**self._opts())

        with self._translate("head", key):
            return self._info(key, self._run(props))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""

        async def get() -> bytes:
            stream = await self._blob(key).download_blob(offset=start, length=end - start, **self._opts())
            return await stream.readall()

        with self._translate("read", key):
            try:
                data = bytes(self._run(get))
            except Exception as e:
                if _http_status(e) == 416:
                    return b""
                raise
            self._count(bytes_downloaded=len(data))
            return data

    def download(self, key: str, dest: Path) -> ObjectInfo:
        async def get() -> Any:
            stream = await self._blob(key).download_blob(max_concurrency=self.tuning.concurrency, **self._opts())
            with open(dest, "wb") as f:
                await stream.readinto(f)
            return stream.properties

        with self._translate("download", key):
            info = self._info(key, self._run(get))
            self._count(bytes_downloaded=info.size)
            return info

    def upload(self, src: Path, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = src.stat().st_size
        chunk = self.tuning.multipart_chunk
        parts = self._upload_parts(src)

        async def single() -> None:
            with open(src, "rb") as f:
                await self._blob(key).upload_blob(f, overwrite=True, metadata=dict(metadata), length=size,
                                                  **self._opts())

        async def blocks() -> None:
            import asyncio

            blob = self._blob(key)
            ids = [base64.b64encode(f"{i:08d}-{uuid.uuid4().hex[:8]}".encode()).decode()
                   for i in range(-(-size // chunk))]
            gate = asyncio.Semaphore(self.tuning.concurrency)

            async def stage(i: int) -> None:
                async with gate:
                    with open(src, "rb") as f:
                        f.seek(i * chunk)
                        data = f.read(chunk)
                    await blob.stage_block(ids[i], data, length=len(data), **self._opts())

            await asyncio.gather(*(stage(i) for i in range(len(ids))))
            await blob.commit_block_list(ids, metadata=dict(metadata), **self._opts())

        with self._translate("upload", key):
            if parts:
                self._count(multipart_uploads=1, requests=len(range(0, size, chunk)))
            self._run(blocks if parts else single)
            self._count(bytes_uploaded=size)
            return self.head(key)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        async def put() -> None:
            await self._blob(key).upload_blob(data, overwrite=True, metadata=dict(metadata), **self._opts())

        with self._translate("put", key):
            self._run(put)
            self._count(bytes_uploaded=len(data))
            return self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        async def copy() -> None:
            import asyncio

            src = self._blob(src_key)
            await src.get_blob_properties(**self._opts())  # a missing source: BlobNotFound, not a copy error
            dst = self._blob(dst_key)
            kw: dict[str, Any] = {"metadata": dict(metadata)} if metadata is not None else {}
            result = await dst.start_copy_from_url(src.url, **kw, **self._opts())
            status = result.get("copy_status")
            while status == "pending":  # copies within one account usually finish at once
                await asyncio.sleep(0.2)
                status = (await dst.get_blob_properties(**self._opts())).copy.status
            if status != "success":
                raise OSError(errno.EIO, f"server-side copy ended as {status}")

        with self._translate("copy", src_key):
            self._count(copies=1)
            self._run(copy)
            return self.head(dst_key)

    def delete(self, key: str) -> None:
        async def delete() -> None:
            from azure.core.exceptions import ResourceNotFoundError

            with contextlib.suppress(ResourceNotFoundError):
                await self._blob(key).delete_blob(**self._opts())

        with self._translate("delete", key):
            self._run(delete)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        async def put() -> None:
            await self._blob(key).set_blob_metadata(dict(metadata), **self._opts())

        with self._translate("set metadata", key):
            self._run(put)
            return self.head(key)

    def _probe(self) -> None:
        async def one() -> None:
            async for _ in self._container().walk_blobs(name_starts_with=self.prefix or None, delimiter="/",
                                                        results_per_page=1, **self._opts()):
                break

        with self._translate("list", "/"):
            self._run(one)


# --- building a store -------------------------------------------------------------------------------


def _split_root(url: str) -> str:
    return url.split("://", 1)[1]


def _s3_filesystem(opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str]:
    import s3fs

    client_kwargs = dict(opts.pop("client_kwargs", {}))
    for k in ("endpoint_url", "region_name"):
        if k in opts:
            client_kwargs[k] = opts.pop(k)
    if "region" in opts:
        client_kwargs["region_name"] = opts.pop("region")
    t = tuning.timeout
    config_kwargs = {"connect_timeout": min(t, 10), "read_timeout": t,
                     "retries": {"max_attempts": 2, "mode": "standard"},
                     # a ranged GET may carry the whole object's checksum (rclone serve s3, MinIO):
                     # validating it would fail every range read
                     "request_checksum_calculation": "when_required",
                     "response_checksum_validation": "when_required", **opts.pop("config_kwargs", {})}
    if opts.pop("path_style", False) or opts.pop("addressing_style", "") == "path":
        config_kwargs["s3"] = {"addressing_style": "path"}
    retries = int(opts.pop("retries", 1))
    fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, **opts)
    fs.retries = retries  # botocore already retries once; s3fs would add 5 rounds with pauses
    return fs, str(client_kwargs.get("endpoint_url") or "")


def _gcs_filesystem(opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str]:
    if "service_account_file" in opts:  # a path to a service-account JSON key
        opts["token"] = opts.pop("service_account_file")
    cls = _gcs_filesystem_class(int(opts.pop("retries", 2)))
    fs = cls(skip_instance_cache=True, requests_timeout=tuning.timeout, use_listings_cache=False, **opts)
    return fs, str(opts.get("endpoint_url") or "")


def _azure_filesystem(url: str, opts: dict[str, Any], tuning: StoreTuning) -> tuple[Any, str, str]:
    """The adlfs filesystem and the root `container/prefix`; abfs[s]://container@account.host/path works too."""
    import adlfs

    root = _split_root(url)
    netloc, _, path = root.partition("/")
    if "@" in netloc:
        container, _, host = netloc.partition("@")
        opts.setdefault("account_name", host.split(".", 1)[0])
        if "." in host and not host.endswith(".dfs.core.windows.net"):
            opts.setdefault("account_host", host)
        root = f"{container}/{path}"
    endpoint = ""
    cs = str(opts.get("connection_string") or "")
    m = re.search(r"BlobEndpoint=([^;]+)", cs)
    if m:
        endpoint = m.group(1)
    elif opts.get("account_host"):
        endpoint = f"https://{opts['account_host']}"
    t = int(max(1, tuning.timeout))
    fs = adlfs.AzureBlobFileSystem(skip_instance_cache=True, use_listings_cache=False, connection_timeout=t,
                                   read_timeout=t, **opts)
    return fs, root, endpoint


def store_tuning(config: RepoConfig) -> StoreTuning:
    """The request timeout and multipart sizes of a repository's config."""
    wb = config.writeback
    return StoreTuning(timeout=config.mount.read_timeout, multipart_threshold=wb.multipart_threshold,
                       multipart_chunk=wb.multipart_chunk, concurrency=min(8, max(2, wb.concurrency)))


def open_store(remote: RemoteConfig, *, timeout: float | None = None, tuning: StoreTuning | None = None) -> Any:
    """Build the filesystem of one remote explicitly (no fsspec instance cache); no network yet."""
    tuning = tuning or StoreTuning()
    if timeout is not None:
        tuning = StoreTuning(timeout=timeout, multipart_threshold=tuning.multipart_threshold,
                             multipart_chunk=tuning.multipart_chunk, concurrency=tuning.concurrency)
    scheme = remote.scheme
    opts = dict(remote.options)
    guard_secrets(opts)
    with _Translate(remote.name, remote.display_url)("connect"):
        if scheme == "links":
            from mountd.backend.links import LinksStore

            return LinksStore(remote, tuning)
        if scheme == "file":
            from fsspec.implementations.local import LocalFileSystem

            return FileStore(remote.name, remote.url, LocalFileSystem(skip_instance_cache=True),
                             "/" + _split_root(remote.url).lstrip("/"))
        if scheme == "memory":
            from fsspec.implementations.memory import MemoryFileSystem

            return MemoryStore(remote.name, remote.url, MemoryFileSystem(skip_instance_cache=True),
                               "/" + _split_root(remote.url).strip("/"))
        if scheme == "s3":
            fs, endpoint = _s3_filesystem(opts, tuning)
            return S3Store(remote.name, remote.url, fs, _split_root(remote.url), tuning, endpoint)
        if scheme in ("gs", "gcs"):
            fs, endpoint = _gcs_filesystem(opts, tuning)
            return GcsStore(remote.name, remote.url, fs, _split_root(remote.url), tuning, endpoint)
        if scheme in ("az", "abfs", "abfss"):
            fs, root, endpoint = _azure_filesystem(remote.url, opts, tuning)
            return AzureStore(remote.name, remote.url, fs, root, tuning, endpoint)
    raise RemoteError(remote.name, f"unsupported URL scheme {scheme}://")
