"""`AzureStore`: az://, abfs:// and abfss://, Azure Blob Storage (and ADLS Gen2 through its blob endpoint).

It runs the async BlobServiceClient that adlfs holds on adlfs's event loop. Blobs flagged as
folders count as directory markers; large uploads stage blocks in parallel and commit them with
the metadata. No request may use the SDK's own retry policy (it waits 15 s and more): each one
switches it off (`_opts`) and `_run` makes one quick retry instead.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mountd.backend import (
    APPEND_MIN,
    CONDITIONAL_OPS,
    LIST_PAGE,
    AppendBase,
    ListingPage,
    ObjectInfo,
    PatchBase,
    PatchRefused,
    Precondition,
)
from mountd.backend.base import BucketStore, lower_keys, mtime_ns_of
from mountd.backend.errors import http_status
from mountd.errors import RemoteUnavailable

log = logging.getLogger(__name__)
MAX_APPENDED_BLOCKS = 40_000  # a blob holds at most 50,000 committed blocks: past this, sent whole


def _block_id(i: int, sha256: str = "", part_size: int = 0) -> str:
    """Our block ids: one length for every block of a blob, as Azure requires. Given the sha256 of
    the file and the part size, the id names the block's content (its index, the part size and 13
    bytes of the file's sha256), so an upload cut off and tried again finds the blocks it staged
    (the server keeps uncommitted blocks for a week) and does not send them again."""
    if not sha256:
        return base64.b64encode(f"{i:08d}-{uuid.uuid4().hex[:8]}".encode()).decode()
    named = i.to_bytes(4, "big") + hashlib.sha256(f"{sha256}:{part_size}".encode()).digest()[:13]
    return base64.b64encode(named).decode()


BLOCK_ID_LENGTH = len(_block_id(0))


class AzureStore(BucketStore):
    """az:// / abfs[s]://: Azure Blob (and ADLS Gen2 accounts through their blob endpoint).

    Uses the async BlobServiceClient that adlfs holds, run on adlfs's event loop. Blobs whose
    metadata says `hdi_isfolder` (ADLS Gen2 directories) or adlfs's `is_directory` count as
    directory markers. Large uploads stage blocks in parallel and commit them with the metadata."""

    FOLDER_FLAGS = ("hdi_isfolder", "is_directory")
    conditional = frozenset(CONDITIONAL_OPS)
    appends = True  # by committing the blob's blocks again with new ones
    patches = True  # the same, with blocks of changed bytes staged anew (blobs mountd wrote in blocks)

    @staticmethod
    def _match(expect: Precondition | None) -> dict[str, Any]:
        """The SDK's access conditions for a Precondition (If-None-Match: * or If-Match)."""
        from azure.core import MatchConditions

        if expect is None:
            return {}
        if expect.create_only:
            return {"match_condition": MatchConditions.IfMissing}
        return {"etag": f'"{expect.version}"', "match_condition": MatchConditions.IfNotModified}

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
        meta = {k: v for k, v in lower_keys(p.metadata).items() if k not in self.FOLDER_FLAGS}
        # the ETag as the service spells it (0x8DC...): an If-Match compares it byte for byte
        return ObjectInfo(key=key, size=int(p.size or 0), version=str(p.etag or "").strip('"'),
                          mtime_ns=mtime_ns_of(p.last_modified), metadata=meta)

    def _is_folder_blob(self, p: Any) -> bool:
        meta = lower_keys(getattr(p, "metadata", None))
        return any(meta.get(f) == "true" for f in self.FOLDER_FLAGS)

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        """Azure lists have no start-after: a `start_after` filters the pages here (which the
        service makes of up to 5,000 blobs)."""
        full = self._full(prefix)
        after = self._full(start_after) if start_after else ""
        next_token: list[str | None] = [None]

        async def collect() -> list[tuple[str, ObjectInfo | None]]:
            out: list[tuple[str, ObjectInfo | None]] = []
            pages = self._container().walk_blobs(name_starts_with=full or None, delimiter="/",
                                                 include=["metadata"], results_per_page=limit,
                                                 **self._opts()).by_page(continuation_token=token or None)
            async for item in await pages.__anext__():
                if item.name <= after:
                    continue
                if not hasattr(item, "size"):  # a BlobPrefix
                    out.append((item.name, None))
                elif self._is_folder_blob(item) and item.name != full.rstrip("/"):
                    out.append((item.name + "/", None))
                elif self._is_folder_blob(item):
                    out.append((full, self._info(prefix, item)))
                else:
                    out.append((item.name, self._info(item.name[len(self.prefix):], item)))
            next_token[0] = pages.continuation_token or None
            return out

        with self._translate("list", prefix):
            return ListingPage(self._listing(prefix, iter(self._run(collect))), next_token[0])

    def head(self, key: str) -> ObjectInfo:
        async def props() -> Any:
            return await self._blob(key).get_blob_properties(**self._opts())

        with self._translate("head", key):
            return self._info(key, self._run(props))

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        if end <= start:
            return b""
        pin = self._match(Precondition(version)) if version else {}

        async def get() -> bytes:
            stream = await self._blob(key).download_blob(offset=start, length=end - start, **pin,
                                                         **self._opts())
            return await stream.readall()

        with self._translate("read", key):
            try:
                data = bytes(self._run(get))
            except Exception as e:
                if http_status(e) == 416:
                    return b""
                raise
            self._count(bytes_downloaded=len(data))
            return data

    def download(self, key: str, dest: Path) -> ObjectInfo:
        async def get() -> Any:
            stream = await self._blob(key).download_blob(max_concurrency=self.tuning.concurrency,
                                                         **self._opts())
            with open(dest, "wb") as f:
                await stream.readinto(f)
            return stream.properties

        with self._translate("download", key):
            info = self._info(key, self._run(get))
            self._count(bytes_downloaded=info.size)
            return info

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None, append_to: AppendBase | None = None,
               patch: PatchBase | None = None) -> ObjectInfo:
        size = src.stat().st_size
        chunk = self.tuning.multipart_chunk
        if patch is not None:
            with self._translate("upload", key):
                sent = self._run(self._patch, src, key, size, metadata, self._match(expect), patch)
                self._count(patches=1, bytes_uploaded=sent, bytes_copied=size - sent)
                return self.head(key)
        # in blocks from 10 MiB on, not only from the multipart threshold: a later append then
        # commits the blob's blocks again with the new ones (`_append`) instead of sending it all
        parts = self._upload_parts(src) or size >= 2 * APPEND_MIN
        match = self._match(expect)
        if append_to is not None and self.appends and append_to.size < size:
            with self._translate("upload", key):
                if self._run(self._append, src, key, size, metadata, match, append_to):
                    self._count(appends=1, bytes_uploaded=size - append_to.size, bytes_copied=append_to.size)
                    return self.head(key)

        async def single() -> None:
            with open(src, "rb") as f:
                await self._blob(key).upload_blob(f, overwrite=True, metadata=dict(metadata), length=size,
                                                  **match, **self._opts())

        async def blocks() -> None:
            import asyncio

            blob = self._blob(key)
            sha = metadata.get("sha256", "")
            ids = [_block_id(i, sha, chunk) for i in range(-(-size // chunk))]
            gate = asyncio.Semaphore(self.tuning.concurrency)
            staged: dict[str, int] = {}  # blocks an earlier attempt at these same bytes left staged
            if sha:
                with contextlib.suppress(Exception):  # (no blob yet: none)
                    self._count(requests=1)
                    _, uncommitted = await blob.get_block_list("uncommitted", **self._opts())
                    staged = {b.id: b.size for b in uncommitted}

            async def stage(i: int) -> None:
                length = min(chunk, size - i * chunk)
                if staged.get(ids[i]) == length:
                    self._count(parts_resumed=1, bytes_resumed=length)
                    return
                async with gate:
                    await self._stage(blob, ids[i], src, i * chunk, length)

            await asyncio.gather(*(stage(i) for i in range(len(ids))))
            await blob.commit_block_list(ids, metadata=dict(metadata), **match, **self._opts())

        with self._translate("upload", key):
            if parts:
                self._count(multipart_uploads=1, requests=len(range(0, size, chunk)))
            self._run(blocks if parts else single)
            self._count(bytes_uploaded=size)
            return self.head(key)

    async def _stage(self, blob: Any, block_id: str, src: Path, start: int, length: int) -> None:
        """Stage one block: `length` bytes of the local file from `start`."""
        with open(src, "rb") as f:
            f.seek(start)
            data = f.read(length)
        await blob.stage_block(block_id, data, length=len(data), **self._opts())

    async def _append(self, src: Path, key: str, size: int, metadata: Mapping[str, str],
                      match: Mapping[str, Any], base: AppendBase) -> bool:
        """A file that only grew past the blob at its key: the blob's committed blocks, which make
        up its `base.size` bytes, are committed again followed by blocks of the new bytes, so only
        those are sent. False (the caller sends the file whole) when the blob is not made of
        blocks of ours (one Put Blob, another tool's block ids), or changed meanwhile."""
        import asyncio

        from azure.core import MatchConditions

        blob = self._blob(key)
        self._count(requests=1)
        try:
            committed, _ = await blob.get_block_list("committed", etag=f'"{base.version}"',
                                                     match_condition=MatchConditions.IfNotModified,
                                                     **self._opts())
        except Exception as e:
            log.debug("append to %s sent whole: %s", key, e)
            return False
        ours = [b.id for b in committed if isinstance(b.id, str) and len(b.id) == BLOCK_ID_LENGTH]
        if not committed or len(ours) != len(committed) or sum(b.size for b in committed) != base.size \
                or len(committed) > MAX_APPENDED_BLOCKS:
            return False
        chunk = self.tuning.multipart_chunk
        starts = list(range(base.size, size, chunk))
        ids = [_block_id(len(ours) + i) for i in range(len(starts))]
        gate = asyncio.Semaphore(self.tuning.concurrency)

        async def stage(i: int) -> None:
            async with gate:
                await self._stage(blob, ids[i], src, starts[i], min(chunk, size - starts[i]))

        self._count(requests=len(ids) + 1)
        await asyncio.gather(*(stage(i) for i in range(len(ids))))
        await blob.commit_block_list(ours + ids, metadata=dict(metadata), **match, **self._opts())
        return True

    async def _patch(self, src: Path, key: str, size: int, metadata: Mapping[str, str],
                     match: Mapping[str, Any], base: PatchBase) -> int:
        """A file changed in some ranges of the blob at its key: the blob's committed blocks that
        hold no changed byte are committed again as they are, the others staged anew from the
        local file, and blocks of any bytes past the old end added; returns the bytes sent. A
        blob not made of blocks of ours (one Put Blob, another tool's ids), or whose blocks cross
        the edge of a changed range (the local file may lack the rest of such a block), is
        `PatchRefused`; one that changed meanwhile is a VersionMismatch (the 412)."""
        import asyncio

        from azure.core import MatchConditions

        blob = self._blob(key)
        self._count(requests=1)
        committed, _ = await blob.get_block_list("committed", etag=f'"{base.version}"',
                                                 match_condition=MatchConditions.IfNotModified,
                                                 **self._opts())
        if (not committed or any(not isinstance(b.id, str) or len(b.id) != BLOCK_ID_LENGTH for b in committed)
                or sum(b.size for b in committed) != base.size or len(committed) > MAX_APPENDED_BLOCKS):
            raise PatchRefused(self.name, f"{key!r} is not made of blocks mountd wrote")
        ids: list[str] = []
        staged: list[tuple[str, int, int]] = []
        pos = 0
        for b in committed:
            start, end = pos, pos + b.size
            pos = end
            hit = [(s, e) for s, e in base.changed if s < end and start < e]
            if not hit:
                ids.append(b.id)
                continue
            if not any(s <= start and end <= e for s, e in hit):
                raise PatchRefused(self.name, f"{key!r}: a block crosses the edge of a changed range")
            staged.append((_block_id(len(committed) + len(staged)), start, b.size))
            ids.append(staged[-1][0])
        chunk = self.tuning.multipart_chunk
        for start in range(base.size, size, chunk):
            staged.append((_block_id(len(committed) + len(staged)), start, min(chunk, size - start)))
            ids.append(staged[-1][0])
        gate = asyncio.Semaphore(self.tuning.concurrency)

        async def stage(block_id: str, start: int, length: int) -> None:
            async with gate:
                await self._stage(blob, block_id, src, start, length)

        self._count(requests=len(staged) + 1)
        await asyncio.gather(*(stage(*one) for one in staged))
        await blob.commit_block_list(ids, metadata=dict(metadata), **match, **self._opts())
        return sum(length for _, _, length in staged)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        async def put() -> None:
            await self._blob(key).upload_blob(data, overwrite=True, metadata=dict(metadata),
                                              **self._match(expect), **self._opts())

        with self._translate("put", key):
            self._run(put)
            self._count(bytes_uploaded=len(data))
            return self.head(key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        async def copy() -> None:
            import asyncio

            src = self._blob(src_key)
            await src.get_blob_properties(**self._opts())  # a missing source: BlobNotFound, not a copy error
            dst = self._blob(dst_key)
            kw: dict[str, Any] = {"metadata": dict(metadata)} if metadata is not None else {}
            result = await dst.start_copy_from_url(src.url, **kw, **self._match(expect), **self._opts())
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

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        if expect is not None and expect.create_only:
            return  # "delete what is not there": nothing to do

        async def delete() -> None:
            from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

            blob = self._blob(key)
            try:
                await blob.delete_blob(**self._match(expect), **self._opts())
            except ResourceNotFoundError:
                pass
            except ResourceModifiedError:
                # Azurite answers an If-Match on a missing blob with 412: gone is gone
                if await blob.exists(**self._opts()):
                    raise

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
