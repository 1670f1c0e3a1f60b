"""`S3Store`: s3:// on AWS and S3-compatible servers (MinIO, Ceph, R2, rclone serve s3).

It calls the botocore client that s3fs holds (`call_s3`) for listings, metadata, copies and
deletes. Uploads run as a task on fsspec's loop, so one can be cancelled: s3fs's own, or, when
the upload carries a condition and goes in parts, its own multipart upload (s3fs would hand the
condition to CreateMultipartUpload, which refuses it). Ranged GETs and HEADs go as URLs it signs
itself over plain keep-alive HTTP (`PresignedRanges`), falling back to botocore for any answer
but success. It must never log or return a presigned URL: it carries a signature.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import hashlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mountd.backend import (
    APPEND_MIN,
    LIST_PAGE,
    AppendBase,
    ListingPage,
    ObjectInfo,
    PatchBase,
    PatchRefused,
    Precondition,
    StoreTuning,
)
from mountd.backend.base import BucketStore, lower_keys, mtime_ns_of, normalize_version
from mountd.backend.errors import http_status
from mountd.backend.presigned import NotThere, PresignedRanges
from mountd.backend.resumable import OpenUpload, OpenUploads
from mountd.backend.s3_listing import parse_listing
from mountd.errors import ObjectNotFound, UploadCancelled

log = logging.getLogger(__name__)
COPY_PART_MAX = 5 << 30  # the largest part UploadPartCopy copies


def part_plan(size: int, base: PatchBase, chunk: int) -> list[tuple[int, int, bool]]:
    """The parts of a file of `size` bytes made from `base`: (start, end, copied), in order. A
    run of copied bytes is split evenly into parts of at most COPY_PART_MAX, a run of sent bytes
    into parts of about `chunk`; every part but the last is at least S3_MIN_PART (a plan that
    cannot keep that is the caller's error: ValueError)."""
    sent = [(s, min(e, size)) for s, e in base.changed if s < min(e, size)]
    if size > base.size:
        sent.append((base.size, size))
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    for s, e in sent:
        s = max(s, pos)
        if pos < s:
            runs.append((pos, s, True))
        if s < e:
            if runs and not runs[-1][2] and runs[-1][1] == s:
                s = runs.pop()[0]  # (adjoining sent runs are one)
            runs.append((s, e, False))
        pos = max(pos, e)
    if pos < size:
        runs.append((pos, size, True))
    parts: list[tuple[int, int, bool]] = []
    part = max(chunk, S3_MIN_PART, -(-size // S3_PARTS_PLANNED))  # (S3 takes at most 10,000 parts)
    for s, e, copied in runs:
        # a sent run goes in parts of `part` to 2 x `part`: a remainder never makes a short one
        n = -(-(e - s) // COPY_PART_MAX) if copied else max(1, (e - s) // part)
        parts += [(s + (e - s) * i // n, s + (e - s) * (i + 1) // n, copied) for i in range(n)]
    if any(e - s < S3_MIN_PART for s, e, _ in parts[:-1]):
        raise ValueError(f"a part under {S3_MIN_PART} bytes before the last: {parts}")
    return parts


class _NoPartCopy(Exception):
    """The server took an UploadPartCopy for something else."""


def _read_range(src: Path, start: int, length: int) -> bytes:
    """Bytes of a part of the local file (a worker thread's call)."""
    with open(src, "rb") as f:
        f.seek(start)
        return f.read(length)

S3_MIN_PART = 5 << 20  # S3 refuses smaller parts (except the last)
S3_PARTS_PLANNED = 9_000  # parts of sent bytes a patch plans at most (S3's limit is 10,000 in all)
S3_META = "x-amz-meta-"  # user metadata headers (lower case)
HEAD_URL_LIFETIME = 900  # seconds a signed HEAD URL is valid (it is used at once)
HEAD_SIGNER_REUSE = 300  # seconds before the HEAD signer takes up the credentials again
# which request parameter of the S3 API carries a Precondition, per operation of CONDITIONAL_OPS
_CONDITION_PARAMS = {"put": ("PutObject",), "upload": ("PutObject",),
                     "multipart": ("CompleteMultipartUpload",), "copy": ("CopyObject",),
                     "delete": ("DeleteObject",)}


def _botocore_conditions() -> frozenset[str]:
    """The operations whose conditional headers this botocore can send (If-None-Match and
    If-Match on writes arrived in botocore 1.35; older ones refuse the parameters)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3")
    ops = set()
    for op, (api,) in _CONDITION_PARAMS.items():
        members = model.operation_model(api).input_shape.members
        if "IfMatch" in members and (op == "delete" or "IfNoneMatch" in members):
            ops.add(op)
    return frozenset(ops)


def condition_params(expect: Precondition | None) -> dict[str, str]:
    if expect is None:
        return {}
    return {"IfNoneMatch": "*"} if expect.create_only else {"IfMatch": f'"{expect.version}"'}


class S3Store(BucketStore):
    """s3:// (AWS and S3-compatible): the botocore client of s3fs, called through `call_s3`.

    User metadata rides in x-amz-meta-*; listings do not return it (HEAD does). Ranged GETs are
    made with response checksum validation "when_required", so a whole-object checksum header
    that a server returns on a range never fails the read."""

    appends = True  # (until the server shows it cannot: `_put_appended`)

    def __init__(self, name: str, url: str, fs: Any, root: str, tuning: StoreTuning | None = None,
                 endpoint: str = "") -> None:
        super().__init__(name, url, fs, root, tuning, endpoint)
        self._uploads: dict[str, concurrent.futures.Future[Any]] = {}  # key -> upload running
        self._uploads_lock = threading.Lock()
        # multipart uploads left open by an earlier attempt, resumed by the next (resumable.py)
        self._open = OpenUploads(self.tuning.resume_dir, name) if self.tuning.resume_dir else None

    @property
    def conditional(self) -> frozenset[str]:  # type: ignore[override]
        ops = self.__dict__.get("_conditional")
        if ops is None:
            ops = self.__dict__["_conditional"] = _botocore_conditions()
        return ops  # type: ignore[no-any-return]

    def _condition(self, op: str, expect: Precondition | None) -> dict[str, str]:
        return condition_params(expect) if op in self.conditional else {}

    def _call(self, method: str, **kwargs: Any) -> Any:
        self._count(requests=1)
        return self.fs.call_s3(method, **kwargs)

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        """A ranged GET: through `PresignedRanges` (plain keep-alive HTTP read by C code, no event
        loop) when nothing but the signature is needed (no requester-pays or SSE-C arguments),
        else, or when that path gives up, through s3fs. A `version` goes as `If-Match`."""
        if end <= start:
            return b""
        try:
            data = self._fast().read(f"{self.bucket}/{self._full(key)}", start, end,
                                     if_match=f'"{version}"' if version else None)
        except NotThere:
            self._count(requests=1)
            raise ObjectNotFound(self.name, f"read {key!r}: not found in {self.display_url}") from None
        if data is not None:
            self._count(requests=1, bytes_downloaded=len(data))
            return data
        if not version:
            return super().read_range(key, start, end)
        return self._read_if_match(key, start, end, version)

    def _read_if_match(self, key: str, start: int, end: int, version: str) -> bytes:
        """The SDK's ranged GetObject with If-Match (s3fs's cat_file cannot send one); a 412 is
        a VersionMismatch, a range past the end reads empty."""
        from fsspec.asyn import sync

        async def get() -> bytes:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._full(key),
                                          Range=f"bytes={start}-{end - 1}", IfMatch=f'"{version}"')
            try:
                return bytes(await resp["Body"].read())
            finally:
                resp["Body"].close()

        return self._ranged(key, lambda: bytes(sync(self.fs.loop, get)))

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
        """Through `PresignedRanges` (a URL signed here, plain HTTP) when it answers 200 or 404,
        else, or for any other answer, through botocore, which decides errors."""
        answer = self._fast().head(lambda: self._sign_head(key))
        if answer is not None and answer[0] == 404:
            self._count(requests=1)
            raise ObjectNotFound(self.name, f"head {key!r}: not found in {self.display_url}")
        if answer is not None and (info := self._info_from_headers(key, answer[1])) is not None:
            self._count(requests=1)
            return info
        with self._translate("head", key):
            r = self._call("head_object", Bucket=self.bucket, Key=self._full(key))
            return self._info(key, r, lower_keys(r.get("Metadata")))

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
        """A HEAD URL of `key` signed with SigV4 in the query."""
        return self._sign("HEAD", self._signer()[1] + urllib.parse.quote(self._full(key), safe="/~"))

    def _sign_list(self, params: dict[str, str]) -> str:
        """A ListObjectsV2 URL of the bucket with `params`, signed with SigV4 in the query."""
        bucket_url = self._signer()[1]
        if urllib.parse.urlsplit(bucket_url).path not in ("", "/"):
            bucket_url = bucket_url.rstrip("/")  # path style: /bucket?list-type=2, as botocore asks
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        return self._sign("GET", bucket_url + "?" + query)

    def _sign_put(self, key: str, headers: Mapping[str, str]) -> str:
        """A PUT URL of `key` signed with SigV4 in the query, `headers` among what it signs."""
        return self._sign("PUT", self._signer()[1] + urllib.parse.quote(self._full(key), safe="/~"), headers)

    def _sign(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> str:
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
        auth = self._signer()[0]
        if auth is not None:
            auth.add_auth(request)
        return str(request.url)

    def _signer(self) -> tuple[Any, str]:
        """The query signer (credentials) and the URL of the bucket as botocore addresses it,
        taken up again every `HEAD_SIGNER_REUSE` s."""
        from fsspec.asyn import sync

        signer = self.__dict__.get("_head_signer")
        if signer is None or time.monotonic() - signer[2] > HEAD_SIGNER_REUSE:
            signer = self._head_signer = (*sync(self.fs.loop, self._head_signer_now), time.monotonic())
        return signer[0], signer[1]

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
        auth = await s3._request_signer.get_auth_instance("s3", s3.meta.region_name or "us-east-1",
                                                          "s3v4-query", expires=HEAD_URL_LIFETIME)
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
            auth = await s3._request_signer.get_auth_instance("s3", s3.meta.region_name or "us-east-1",
                                                              "s3v4-query", expires=lifetime)
            request = AWSRequest(method="GET", url=url.split("?", 1)[0], headers={})
            auth.add_auth(request)
            return str(request.url)

        return str(sync(self.fs.loop, sign))

    def _info(self, key: str, o: Mapping[str, Any], metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(o.get("Size", o.get("ContentLength", 0)) or 0),
                          version=normalize_version(o.get("ETag")),
                          mtime_ns=mtime_ns_of(o.get("LastModified")), metadata=metadata)

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        page = self._list_page_fast(prefix, token, limit, start_after)
        if page is not None:
            return page
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix), "Delimiter": "/",
                                  "MaxKeys": limit}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = self._full(start_after)
        with self._translate("list", prefix):
            resp = self._call("list_objects_v2", **kwargs)
            cut = len(self.prefix)
            entries: list[tuple[str, ObjectInfo | None]] = [
                (o["Key"], self._info(o["Key"][cut:], o, None)) for o in resp.get("Contents", ())]
            entries += [(p["Prefix"], None) for p in resp.get("CommonPrefixes", ())]
            more = resp.get("IsTruncated") and resp.get("NextContinuationToken")
            return ListingPage(self._listing(prefix, iter(entries)), more or None)

    def _list_page_fast(self, prefix: str, token: str | None, limit: int,
                        start_after: str) -> ListingPage | None:
        """The page through `PresignedRanges` and `parse_listing` (no SDK parsing); None when
        that path gives up, for any reason: the SDK then asks and decides errors."""
        params = {"list-type": "2", "prefix": self._full(prefix), "delimiter": "/", "max-keys": str(limit),
                  "encoding-type": "url"}
        if token:
            params["continuation-token"] = token
        elif start_after:
            params["start-after"] = self._full(start_after)
        body = self._fast().get_signed(lambda: self._sign_list(params))
        page = parse_listing(body) if body is not None else None
        if page is None:
            return None
        self._count(requests=1, listings_direct=1)
        cut = len(self.prefix)
        entries: list[tuple[str, ObjectInfo | None]] = [
            (o.key, ObjectInfo(key=o.key[cut:], size=o.size, version=normalize_version(o.etag),
                               mtime_ns=mtime_ns_of(o.last_modified), metadata=None)) for o in page.objects]
        entries += [(p, None) for p in page.prefixes]
        return ListingPage(self._listing(prefix, iter(entries)), page.next_token)

    @property
    def patches(self) -> bool:  # type: ignore[override]
        return self.appends  # (both are UploadPartCopy)

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None, append_to: AppendBase | None = None,
               patch: PatchBase | None = None) -> ObjectInfo:
        size = src.stat().st_size
        full = f"{self.bucket}/{self._full(key)}"
        with self._translate("upload", key):
            if patch is not None:
                if not self.appends:
                    raise PatchRefused(self.name, f"{key!r}: the server does not copy parts of objects")
                self._run_upload(key, self._put_patched(src, key, size, metadata,
                                                        self._condition("multipart", expect), patch))
                sent = patch.sent_bytes(size)
                self._count(patches=1, bytes_uploaded=sent, bytes_copied=size - sent)
                return self.head(key)
            if append_to is not None and self.appends and APPEND_MIN <= append_to.size < size:
                condition = self._condition("multipart", expect)
                if self._run_upload(key, self._put_appended(src, key, size, metadata, condition, append_to)):
                    self._count(appends=1, bytes_uploaded=size - append_to.size, bytes_copied=append_to.size)
                    return self.head(key)
            if self._upload_parts(src):
                # s3fs goes multipart when size >= 2 * chunksize; parts of at least 5 MiB
                chunk = max(S3_MIN_PART, min(self.tuning.multipart_chunk, size // 2))
                self._count(multipart_uploads=1, requests=2 + -(-size // chunk))
                condition = self._condition("multipart", expect)
            else:
                chunk = max(size, S3_MIN_PART) + 1  # one PUT
                self._count(requests=1)
                condition = self._condition("upload", expect)
            single: list[Any] = []  # the PutObject answer of a single-part upload
            if chunk <= size and (condition or self._open is not None):
                # our own parts: a condition goes on the completion (s3fs would pass it to
                # CreateMultipartUpload, which refuses it), and an interrupted upload resumes
                coro = self._put_parts(src, key, size, chunk, metadata, condition)
            elif chunk > size:
                data = src.read_bytes()
                if (fast := self._put_fast(key, data, metadata, condition)) is not None:
                    self._count(bytes_uploaded=size)
                    return self._proven(key, fast, data, metadata) or self.head(key)
                coro = self._put_one(key, data, metadata, condition, single)
            else:
                coro = self.fs._put_file(str(src), full, chunksize=chunk,
                                         max_concurrency=self.tuning.concurrency,
                                         Metadata=dict(metadata), ContentType="application/octet-stream",
                                         **condition)
            self._run_upload(key, coro)
            self._count(bytes_uploaded=size)
            if single and (info := self._proven(key, single[0], data, metadata)) is not None:
                return info
            return self.head(key)

    def _run_upload(self, key: str, coro: Any) -> Any:
        """Run an upload coroutine as a task on fsspec's loop, so that cancel_upload can stop it."""
        running = asyncio.run_coroutine_threadsafe(coro, self.fs.loop)
        with self._uploads_lock:
            self._uploads[key] = running
        try:
            return running.result()
        except concurrent.futures.CancelledError:
            self._abort_multipart(key)
            raise UploadCancelled(self.name,
                                  f"upload of {key!r} stopped: the file changed or moved") from None
        finally:
            with self._uploads_lock:
                if self._uploads.get(key) is running:
                    del self._uploads[key]

    async def _put_appended(self, src: Path, key: str, size: int, metadata: Mapping[str, str],
                            condition: Mapping[str, str], base: AppendBase) -> bool:
        """A file that only grew past the object at its key: a multipart upload whose first parts
        are copies of that object's bytes (`UploadPartCopy`, pinned to its version) and whose
        last parts are the new bytes. False when the server cannot (the caller sends the file
        whole): it refused the copy, or answered without a copy result, as servers that take
        the request for a plain part upload do (rclone's `serve s3`, whose empty part would
        make a wrong object), which is then remembered for this store."""
        parts = part_plan(size, PatchBase(base.size, base.version, ()), self.tuning.multipart_chunk)
        try:
            await self._put_from_base(src, key, metadata, condition, base.version, parts)
            return True
        except _NoPartCopy as e:
            self._no_part_copy(e)
        except Exception as e:  # the object changed meanwhile, or the copy was refused: sent whole
            log.debug("append to %s sent whole: %s", key, e)
        return False

    async def _put_patched(self, src: Path, key: str, size: int, metadata: Mapping[str, str],
                           condition: Mapping[str, str], base: PatchBase) -> None:
        """A file changed in some ranges of the object at its key: the unchanged runs are copied
        from that version (`UploadPartCopy` with `CopySourceIfMatch`), the changed ones sent from
        the local file, which need not hold anything else. Unlike an append, nothing is sent
        whole here (the local file may lack the unchanged bytes): a server that cannot copy
        parts is `PatchRefused`, and a base that changed meanwhile a `VersionMismatch`."""
        parts = part_plan(size, base, self.tuning.multipart_chunk)
        try:
            await self._put_from_base(src, key, metadata, condition, base.version, parts)
        except _NoPartCopy as e:
            self._no_part_copy(e)
            raise PatchRefused(self.name, f"{key!r}: the server does not copy parts of objects") from None

    def _no_part_copy(self, e: Exception) -> None:
        log.warning("remote %r: the server does not copy parts of objects (%s); appends and edits of "
                    "large files are sent whole", self.name, e)
        self.appends = False

    async def _put_from_base(self, src: Path, key: str, metadata: Mapping[str, str],
                             condition: Mapping[str, str], version: str,
                             parts: list[tuple[int, int, bool]]) -> None:
        """One multipart upload of `parts` ((start, end, copied) in order): the copied ones from
        `version` of the object at `key`, the others read from `src`."""
        full = self._full(key)
        mpu = await self.fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=full,
                                     Metadata=dict(metadata), ContentType="application/octet-stream")
        upload_id = mpu["UploadId"]
        gate = asyncio.Semaphore(self.tuning.concurrency)

        async def one(number: int, start: int, end: int, copied: bool) -> dict[str, Any]:
            async with gate:
                if not copied:
                    data = await asyncio.to_thread(_read_range, src, start, end - start)
                    return await self._send_part(full, upload_id, number, data)
                r = await self.fs._call_s3("upload_part_copy", Bucket=self.bucket, Key=full,
                                           UploadId=upload_id, PartNumber=number,
                                           CopySource={"Bucket": self.bucket, "Key": full},
                                           CopySourceRange=f"bytes={start}-{end - 1}",
                                           CopySourceIfMatch=f'"{version}"')
                etag = (r.get("CopyPartResult") or {}).get("ETag")
                if not etag:
                    raise _NoPartCopy(f"UploadPartCopy answered without a copy result: {sorted(r)}")
                return {"PartNumber": number, "ETag": etag}

        completed = False
        try:
            done = await asyncio.gather(*(one(n, *part) for n, part in enumerate(parts, 1)))
            await self.fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=full,
                                   UploadId=upload_id, MultipartUpload={"Parts": list(done)}, **condition)
            completed = True
        finally:
            if not completed:
                await self._abort_upload(full, upload_id)

    async def _send_part(self, full: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        r = await self.fs._call_s3("upload_part", Bucket=self.bucket, Key=full, UploadId=upload_id,
                                   PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": r["ETag"]}

    async def _abort_upload(self, full: str, upload_id: str) -> None:
        """Abort a multipart upload (one already gone is no error)."""
        with contextlib.suppress(Exception):
            await self.fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=full, UploadId=upload_id)

    async def _put_one(self, key: str, data: bytes, metadata: Mapping[str, str], condition: Mapping[str, str],
                       answer: list[Any]) -> None:
        """One PutObject; its answer goes to `answer` (its ETag may prove what was stored)."""
        answer.append(await self.fs._call_s3("put_object", Bucket=self.bucket, Key=self._full(key), Body=data,
                                             Metadata=dict(metadata), ContentType="application/octet-stream",
                                             **condition))

    def _put_fast(self, key: str, data: bytes, metadata: Mapping[str, str],
                  condition: Mapping[str, str]) -> dict[str, Any] | None:
        """A small PutObject over `PresignedRanges` (no event-loop thread, no botocore request
        model); its answer in the SDK's shape, or None: the caller sends it through the SDK."""
        headers = {S3_META + k.lower(): v for k, v in metadata.items()}
        headers["content-type"] = "application/octet-stream"
        for name, value in condition.items():
            headers[{"IfNoneMatch": "if-none-match", "IfMatch": "if-match"}[name]] = value
        answer = self._fast().put(lambda h: self._sign_put(key, h), data, headers)
        if answer is None:
            return None
        self._count(fast_puts=1)
        return {"ETag": answer.get("etag"), "ResponseMetadata": {"HTTPHeaders": answer}}

    def _proven(self, key: str, answer: Mapping[str, Any], data: bytes,
                metadata: Mapping[str, str]) -> ObjectInfo | None:
        """What a single PutObject stored, from its answer alone, when its ETag is the MD5 of the
        bytes sent (the server hashed what it received): no HEAD needed. None where the ETag is not
        an MD5 (SSE-KMS, some S3-compatible servers): the caller asks with a HEAD then."""
        version = normalize_version(answer.get("ETag"))
        if not version or version != hashlib.md5(data, usedforsecurity=False).hexdigest():
            return None
        date = ((answer.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}).get("date")
        try:
            mtime_ns = int(email.utils.parsedate_to_datetime(date).timestamp() * 1e9) if date else 0
        except (TypeError, ValueError):
            mtime_ns = 0
        return ObjectInfo(key=key, size=len(data), version=version, mtime_ns=mtime_ns or time.time_ns(),
                          metadata=lower_keys(metadata))

    async def _put_parts(self, src: Path, key: str, size: int, chunk: int, metadata: Mapping[str, str],
                         condition: Mapping[str, str]) -> None:
        """A multipart upload whose completion carries the condition. One that fails while its
        parts go up stays open, and the next upload of the same bytes goes on from the parts the
        server holds (`OpenUploads`); a failed completion, or a cancelled upload, is aborted."""
        full = self._full(key)
        sha = metadata.get("sha256", "")
        upload_id, held = await self._resume(key, sha, size, chunk)
        if upload_id is None:
            mpu = await self.fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=full,
                                         Metadata=dict(metadata), ContentType="application/octet-stream")
            upload_id = mpu["UploadId"]
            if self._open is not None and sha:
                self._open.opened(OpenUpload(key=key, upload_id=upload_id, sha256=sha, size=size,
                                             part_size=chunk))
        gate = asyncio.Semaphore(self.tuning.concurrency)

        async def part(i: int) -> dict[str, Any]:
            async with gate:
                data = await asyncio.to_thread(_read_range, src, i * chunk, chunk)
                etag = held.get(i + 1)
                if etag is not None and normalize_version(etag) == hashlib.md5(
                        data, usedforsecurity=False).hexdigest():
                    self._count(parts_resumed=1, bytes_resumed=len(data))
                    return {"PartNumber": i + 1, "ETag": etag}  # stored by an earlier attempt
                return await self._send_part(full, upload_id, i + 1, data)

        async def abort() -> None:
            await self._abort_upload(full, upload_id)
            if self._open is not None:
                self._open.closed(key)

        try:
            parts = await asyncio.gather(*(part(i) for i in range(-(-size // chunk))))
        except Exception:
            if self._open is None or not sha:
                await abort()
            raise  # (resumable: its stored parts wait for the next attempt)
        except BaseException:
            await abort()  # cancelled: the file changed or moved
            raise
        try:
            await self.fs._call_s3("complete_multipart_upload", Bucket=self.bucket, Key=full,
                                   UploadId=upload_id, MultipartUpload={"Parts": list(parts)}, **condition)
        except BaseException:
            await abort()
            raise
        if self._open is not None:
            self._open.closed(key)

    async def _resume(self, key: str, sha: str, size: int, chunk: int) -> tuple[str | None, dict[int, str]]:
        """(upload id, part number -> ETag) of an open upload of these same bytes in parts of this
        size; (None, {}) when there is none (an open upload of other bytes is aborted)."""
        found = self._open.find(key) if self._open is not None else None
        if self._open is None or found is None:
            return None, {}
        full = self._full(key)
        if (found.sha256, found.size, found.part_size) != (sha, size, chunk) or not sha:
            await self._abort_upload(full, found.upload_id)
            self._open.closed(key)
            return None, {}
        held: dict[int, str] = {}
        marker = 0
        try:
            while True:
                page = await self.fs._call_s3("list_parts", Bucket=self.bucket, Key=full,
                                              UploadId=found.upload_id, PartNumberMarker=marker)
                for p in page.get("Parts", []):
                    number = int(p["PartNumber"])
                    if int(p.get("Size", -1)) == min(chunk, size - (number - 1) * chunk):
                        held[number] = p["ETag"]
                if not page.get("IsTruncated"):
                    break
                marker = int(page["NextPartNumberMarker"])
        except Exception as e:  # (NoSuchUpload: completed or aborted meanwhile) a new upload then
            log.debug("open upload of %s not resumed: %s", key, e)
            self._open.closed(key)
            return None, {}
        return found.upload_id, held

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

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        with self._translate("put", key):
            condition = self._condition("put", expect)
            r = self._put_fast(key, data, metadata, condition)
            if r is not None:
                self._count(requests=1)
            else:
                r = self._call("put_object", Bucket=self.bucket, Key=self._full(key), Body=data,
                               Metadata=dict(metadata), **condition)
            self._count(bytes_uploaded=len(data))
            info = self._proven(key, r, data, metadata)
            return info if info is not None else self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        with self._translate("copy", src_key):
            kwargs: dict[str, Any] = {}
            if metadata is not None:
                kwargs = {"Metadata": dict(metadata), "MetadataDirective": "REPLACE"}
            self._count(requests=1, copies=1)
            condition = self._condition("copy", expect)
            if condition:
                self._call("copy_object", Bucket=self.bucket, Key=self._full(dst_key),
                           CopySource={"Bucket": self.bucket, "Key": self._full(src_key)},
                           **kwargs, **condition)
            else:
                # s3fs copies objects over 5 GiB part by part (UploadPartCopy), still on the server
                self.fs.copy(f"{self.bucket}/{self._full(src_key)}", f"{self.bucket}/{self._full(dst_key)}",
                             **kwargs)
            return self.head(dst_key)

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        if self._open is not None and (left := self._open.find(key)) is not None:
            with contextlib.suppress(Exception):  # an upload of it left open: not resumed now
                self._call("abort_multipart_upload", Bucket=self.bucket, Key=self._full(key),
                           UploadId=left.upload_id)
            self._open.closed(key)
        condition = self._condition("delete", expect)
        with self._translate("delete", key):
            if condition.get("IfNoneMatch"):
                return  # "delete what is not there": nothing to do
            try:
                self._call("delete_object", Bucket=self.bucket, Key=self._full(key), **condition)
            except Exception as e:
                # a conditional delete of a key that is gone: gone it is (moto answers 404, SeaweedFS 412)
                if condition and (http_status(e) == 404 or (http_status(e) == 412 and not self._exists(key))):
                    return
                raise

    def _exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except ObjectNotFound:
            return False

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return self.copy(key, key, metadata)

    def _probe(self) -> None:
        with self._translate("list", "/"):
            self._call("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, Delimiter="/", MaxKeys=1)
