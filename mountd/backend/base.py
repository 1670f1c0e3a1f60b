"""`FsspecStore` and `BucketStore`: what every store over an fsspec filesystem shares.

It owns a store's identity in messages (remote name, redacted URL), its request counters and
the error translator of its calls; for the clouds (`BucketStore`) also the split of the root
into bucket and key prefix, delimited listings, and ranged GETs and downloads through the fsspec
filesystem. It also holds the conversions every cloud needs (versions, times, metadata keys).
It never builds a filesystem (`factory.py` does) and knows no cloud's API: the per-cloud
modules replace what their SDK does better.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mountd.backend import LIST_PAGE, DirListing, ListingPage, ObjectInfo, StoreTuning, gather_pages
from mountd.backend.errors import Translate, http_status
from mountd.config import redact_url
from mountd.errors import ObjectNotFound, RemoteError


def normalize_version(value: object) -> str:
    """ETag/generation as an opaque version: no quotes, no weak prefix, lower case.

    A multipart ETag keeps its `-N` suffix (it is part of the identity; it is not an MD5)."""
    v = str(value or "").strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').strip().lower()


def mtime_ns_of(value: object) -> int:
    """Nanoseconds since the epoch of an SDK's time (datetime, epoch seconds or ISO text); 0 if none."""
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


def lower_keys(meta: Mapping[str, Any] | None) -> dict[str, str]:
    """User metadata with lower-case names: S3 and Azure return the case they were sent in."""
    return {str(k).lower(): str(v) for k, v in (meta or {}).items() if v is not None}


class FsspecStore:
    """The part of an ObjectStore every backend shares; subclasses implement its operations."""

    appends = False
    patches = False

    def __init__(self, name: str, url: str, fs: Any, root: str, tuning: StoreTuning | None = None,
                 bucket: str = "", endpoint: str = "") -> None:
        self.name = name
        self.display_url = redact_url(url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.tuning = tuning or StoreTuning()
        self._translate = Translate(name, self.display_url, bucket, endpoint, self.tuning.timeout)
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def _count(self, **kw: int) -> None:
        with self._stats_lock:
            self._stats.update(kw)

    def cancel_upload(self, key: str) -> bool:
        """Stop an upload of `key` running in another thread (it raises UploadCancelled); False
        where the SDK gives no way to stop one: the upload then finishes and its result is dropped."""
        return False

    def statistics(self) -> dict[str, int]:
        with self._stats_lock:
            out = {"requests": 0, "bytes_uploaded": 0, "bytes_downloaded": 0, "multipart_uploads": 0,
                   "copies": 0, **self._stats}
        out["errors"] = self._translate.errors
        return out


class BucketStore(FsspecStore):
    """A store whose root is `bucket/prefix`; `_full(key)` is the key inside the bucket."""

    def __init__(self, name: str, url: str, fs: Any, root: str, tuning: StoreTuning | None = None,
                 endpoint: str = "") -> None:
        bucket, _, prefix = root.strip("/").partition("/")
        super().__init__(name, url, fs, root, tuning, bucket=bucket, endpoint=endpoint)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _full(self, key: str) -> str:
        return self.prefix + key

    def list_dir(self, prefix: str) -> DirListing:
        return gather_pages(self.list_page, prefix)

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        raise NotImplementedError  # each cloud asks its own API

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
        return DirListing(objects=tuple(objects), prefixes=tuple(dict.fromkeys(prefixes)),
                          marker_exists=marker)

    def _upload_parts(self, src: Path) -> bool:
        return src.stat().st_size >= self.tuning.multipart_threshold

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        """A ranged GET through the fsspec filesystem (s3fs, gcsfs); past the end reads empty."""
        if end <= start:
            return b""
        path, pin = f"{self.bucket}/{self._full(key)}", self._pinned(version)
        return self._ranged(key, lambda: bytes(self.fs.cat_file(path, start=start, end=end, **pin)))

    def _ranged(self, key: str, get: Callable[[], bytes]) -> bytes:
        """One ranged GET made by `get`, counted, its errors translated; past the end reads empty."""
        with self._translate("read", key):
            self._count(requests=1)
            try:
                data = get()
            except Exception as e:
                if "InvalidRange" in str(e) or http_status(e) == 416:
                    return b""
                raise
            self._count(bytes_downloaded=len(data))
            return data

    def _pinned(self, version: str) -> dict[str, str]:
        """The arguments of `fs.cat_file` that read only `version`: each cloud says its own."""
        return {}

    def head(self, key: str) -> ObjectInfo:
        raise NotImplementedError  # each cloud asks its own API

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
            raise RemoteError(self.name, f"the bucket/container {self.bucket!r} of {self.display_url} "
                                         "does not exist (create it, or fix `url`)") from None
