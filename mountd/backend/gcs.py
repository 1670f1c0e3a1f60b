"""`GcsStore`: gs:// and gcs://, Google Cloud Storage through the JSON API.

It calls gcsfs's authenticated session (`call`) for listings, metadata, rewrites, deletes and
uploads (made here, not by gcsfs, which can send only `ifGenerationMatch=0`: resumable ones in
chunks from 5 MiB on). The version of an object
is its generation. A metadata change is a PATCH where `null` removes a key no longer wanted.
It never copies through the client: a copy is a server-side rewrite, repeated until done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mountd.backend import CONDITIONAL_OPS, LIST_PAGE, AppendBase, ListingPage, ObjectInfo, Precondition
from mountd.backend.base import BucketStore, lower_keys, mtime_ns_of
from mountd.backend.errors import http_status
from mountd.backend.files import TMP_PREFIX
from mountd.errors import ObjectNotFound, VersionMismatch

log = logging.getLogger(__name__)
GCS_CHUNK_ALIGN = 256 << 10  # resumable-upload chunks must be multiples of 256 KiB
SIMPLE_UPLOAD_MAX = 5 << 20  # smaller files go in one multipart/related request (as gcsfs does)
CONTENT_TYPE = "application/octet-stream"


def generation_match(expect: Precondition | None) -> dict[str, str]:
    """GCS's compare-and-swap: `ifGenerationMatch`, 0 for "no live object"."""
    return {} if expect is None else {"ifGenerationMatch": expect.version or "0"}


class GcsStore(BucketStore):
    """gs:// / gcs://: the JSON API through gcsfs's authenticated session (`call`).

    The version is the object generation. Custom metadata is returned by listings too. Uploads
    of 5 MiB and more are resumable uploads in `multipart_chunk` pieces (gcsfs's threshold).
    gcsfs can send only `ifGenerationMatch=0`, so uploads are made here with the JSON API's
    own upload requests, each carrying its generation condition."""

    conditional = frozenset(CONDITIONAL_OPS)
    appends = True  # by `compose` (until a server refuses it)

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        self._count(requests=1)
        return self.fs.call(method, path, *args, json_out=True, **kwargs)

    def _info(self, key: str, o: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(o.get("size") or 0), version=str(o.get("generation") or ""),
                          mtime_ns=mtime_ns_of(o.get("updated")), metadata=lower_keys(o.get("metadata")))

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        after = self._full(start_after) if start_after and not token else ""
        with self._translate("list", prefix):
            resp = self._call("GET", "b/{}/o", self.bucket, prefix=self._full(prefix) or None, delimiter="/",
                              pageToken=token or None, maxResults=limit, startOffset=after or None)
            entries: list[tuple[str, ObjectInfo | None]] = [
                (o["name"], self._info(o["name"][len(self.prefix):], o)) for o in resp.get("items", ())
                if o["name"] > after]  # (startOffset includes its own name)
            entries += [(p, None) for p in resp.get("prefixes", ())]
            return ListingPage(self._listing(prefix, iter(entries)), resp.get("nextPageToken") or None)

    def _pinned(self, version: str) -> dict[str, str]:
        return {"generation": version} if version else {}

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        """A `version` is read as `generation=N` (not `ifGenerationMatch`, which fake-gcs-server
        ignores on reads): once that generation is replaced the server answers 404, and on a
        bucket that keeps old generations it still serves the version the reader opened."""
        try:
            return super().read_range(key, start, end, version=version)
        except ObjectNotFound:
            if not version:
                raise
            raise VersionMismatch(self.name, f"{key!r}: generation {version} is not there any more") from None

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            return self._info(key, self._call("GET", "b/{}/o/{}", self.bucket, self._full(key)))

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None, append_to: AppendBase | None = None) -> ObjectInfo:
        from fsspec.asyn import sync

        size = src.stat().st_size
        chunk = max(GCS_CHUNK_ALIGN, self.tuning.multipart_chunk // GCS_CHUNK_ALIGN * GCS_CHUNK_ALIGN)
        with self._translate("upload", key):
            if append_to is not None and self.appends and append_to.size < size and \
                    self._append(src, key, size, chunk, metadata, expect, append_to):
                self._count(appends=1, bytes_uploaded=size - append_to.size, bytes_copied=append_to.size)
                return self.head(key)
            if size >= SIMPLE_UPLOAD_MAX:
                self._count(multipart_uploads=1, requests=1 + -(-size // chunk))
                sync(self.fs.loop, self._resumable, src, key, size, chunk, metadata, generation_match(expect))
            else:
                self._count(requests=1)
                sync(self.fs.loop, self._simple, src.read_bytes(), key, metadata, generation_match(expect))
            self._count(bytes_uploaded=size)
            return self.head(key)

    async def _simple(self, data: bytes, key: str, metadata: Mapping[str, str],
                      condition: Mapping[str, str]) -> None:
        """One multipart/related upload request (gcsfs's `simple_upload`, with any generation)."""
        part = json.dumps({"name": self._full(key), "metadata": dict(metadata), "contentType": CONTENT_TYPE})
        # CRLF line ends, as RFC 2046 and google-resumable-media write them: with bare LF (gcsfs's
        # body) a parser takes a file's last byte `\r` as part of the line end before the closing
        # boundary and drops it (gcp-storage-emulator did: one file in 256 lost its last byte).
        # A random boundary: gcsfs's fixed `==0==` ends the part early in a file that holds it.
        b = f"=={uuid.uuid4().hex}=="
        body = (f"--{b}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{part}\r\n--{b}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
        await self.fs._call("POST", f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o",
                            uploadType="multipart",
                            headers={"Content-Type": f'multipart/related; boundary="{b}"'},
                            data=body, json_out=True, **condition)

    def _append(self, src: Path, key: str, size: int, chunk: int, metadata: Mapping[str, str],
                expect: Precondition | None, base: AppendBase) -> bool:
        """A file that only grew past the object at its key: the new bytes go to a hidden object,
        and `compose` makes the key hold the old generation followed by them (the server joins
        them; the old bytes are not sent again). False when the server refuses the compose for
        a reason other than the condition: the caller sends the file whole. The condition
        (`ifGenerationMatch`) rides on the compose, so another host's write in between is a
        VersionMismatch as for any upload."""
        from fsspec.asyn import sync

        folder = key.rpartition("/")[0]
        hidden = (folder + "/" if folder else "") + f"{TMP_PREFIX}append-{uuid.uuid4().hex}"
        tail = size - base.size
        self._count(requests=2 + (-(-tail // chunk) if tail >= SIMPLE_UPLOAD_MAX else 0))
        if tail >= SIMPLE_UPLOAD_MAX:
            sync(self.fs.loop, self._resumable, src, hidden, size, chunk, {}, {"ifGenerationMatch": "0"},
                 base.size)
        else:
            with open(src, "rb") as f:
                f.seek(base.size)
                sync(self.fs.loop, self._simple, f.read(tail), hidden, {}, {"ifGenerationMatch": "0"})
        try:
            body = {"sourceObjects": [{"name": self._full(key), "generation": base.version},
                                      {"name": self._full(hidden)}],
                    "destination": {"contentType": CONTENT_TYPE, "metadata": dict(metadata)}}
            try:
                self._call("POST", "b/{}/o/{}/compose", self.bucket, self._full(key), json=body,
                           **generation_match(expect))
            except Exception as e:
                if http_status(e) == 412:
                    raise
                log.warning("remote %r: compose failed (%s); appends to large files are sent whole",
                            self.name, e)
                self.appends = False
                return False
        finally:
            with contextlib.suppress(Exception):
                self._count(requests=1)
                self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._full(hidden))
        return True

    async def _resumable(self, src: Path, key: str, size: int, chunk: int, metadata: Mapping[str, str],
                         condition: Mapping[str, str], start: int = 0) -> None:
        """A resumable upload in `chunk` pieces of the bytes of `src` from `start`; the condition
        rides on its initiation and is checked again by the server when the object is created."""
        from gcsfs.core import upload_chunk

        full = self._full(key)
        headers, _ = await self.fs._call(
            "POST", f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o?name={quote(full)}",
            uploadType="resumable", json={"name": full, "metadata": dict(metadata)},
            headers={"X-Upload-Content-Type": CONTENT_TYPE}, **condition)
        location = headers["Location"]
        location = location[0] if isinstance(location, list) else location
        try:
            with open(src, "rb") as f:
                f.seek(start)
                offset = 0
                while bit := f.read(chunk):
                    await upload_chunk(self.fs, location, bit, offset, size - start, CONTENT_TYPE)
                    offset += len(bit)
        except Exception:
            try:
                await self.fs._call("DELETE", location)
            except Exception:  # the upload's own error is the one to report
                pass
            raise

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        from fsspec.asyn import sync

        with self._translate("put", key):
            self._count(requests=1, bytes_uploaded=len(data))
            sync(self.fs.loop, self._simple, data, key, metadata, generation_match(expect))
            return self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            body: dict[str, Any] | None = None
            if metadata is not None:
                body = {"metadata": dict(metadata)}
            token = None
            self._count(copies=1)
            while True:  # a rewrite of a large object may take several calls
                resp = self._call("POST", "b/{}/o/{}/rewriteTo/b/{}/o/{}", self.bucket, self._full(src_key),
                                  self.bucket, self._full(dst_key), rewriteToken=token, json=body,
                                  **generation_match(expect))
                if resp.get("done", True):
                    break
                token = resp["rewriteToken"]
            info = self.head(dst_key)
            if metadata is not None and dict(info.metadata or {}) != dict(metadata):
                # a server that ignored the metadata of the rewrite
                return self.set_metadata(dst_key, metadata)
            return info

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        if expect is not None and expect.create_only:
            return  # "delete what is not there": nothing to do
        with self._translate("delete", key):
            try:
                self._count(requests=1)
                self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._full(key), **generation_match(expect))
            except FileNotFoundError:
                pass
            except Exception as e:
                if http_status(e) != 404:
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
