"""The object-store boundary: what every remote must offer, in plain dataclasses.

All methods are synchronous and may block on the network: callers run them in worker threads
(`trio.to_thread.run_sync`), never on the trio thread. Keys are relative to the remote's root
(the bucket and prefix of its URL), use '/' separators, and never start with '/'. A directory
marker is the zero-byte object whose key ends in '/'. Implementations raise only the
`mountd.errors.RemoteError` family; SDK exceptions never escape this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mountd.errors import RemoteError


@dataclass(frozen=True, slots=True)
class StoreTuning:
    """How a store talks to its server: timeouts and when uploads go multipart."""

    timeout: float = 30.0  # seconds a request may take (connect, and each read of the answer)
    multipart_threshold: int = 64 << 20  # files this large or larger upload in parts
    multipart_chunk: int = 16 << 20  # size of one part
    concurrency: int = 4  # parts in flight at once for one upload
    # where a store keeps its open multipart uploads, so a restart resumes them (resumable.py);
    # None: not kept
    resume_dir: Path | None = None


# an append's copied prefix must be a part of a multipart upload, and parts but the last are at
# least 5 MiB on S3
APPEND_MIN = 5 << 20


@dataclass(frozen=True, slots=True)
class AppendBase:
    """The object at a key is the start of the file being uploaded there: `size` bytes, `version`."""

    size: int
    version: str


@dataclass(frozen=True, slots=True)
class PatchBase:
    """The object at a key (`version`, `size` bytes) is the file being uploaded there except in
    `changed`, byte ranges [start, end) of the file, sorted and apart: those, and the bytes past
    `size`, are sent; every other byte is copied server-side from the object at the same offset.
    Every run of either kind but the last is at least the store's minimum part (the caller
    plans it: vfs/partial.py)."""

    size: int
    version: str
    changed: tuple[tuple[int, int], ...]

    def sent_bytes(self, file_size: int) -> int:
        """The bytes an upload of a file of `file_size` sends: the changed ranges and the growth."""
        return (sum(min(e, file_size) - s for s, e in self.changed if s < file_size)
                + max(0, file_size - self.size))


class PatchRefused(RemoteError):
    """The store cannot copy ranges of an object into a new one after all (the caller fetches
    the file's missing parts and sends it whole)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    version: str  # normalized ETag / generation / file fingerprint; "" when the store has none
    mtime_ns: int  # the store's last-modified time
    metadata: Mapping[str, str] | None = None  # user metadata; None when this call did not return it


@dataclass(frozen=True, slots=True)
class Precondition:
    """A write or delete as a compare-and-swap: it goes ahead only if the object at the key is
    `version` now, or, for `version` "", if there is none (create-only). Failing, the store
    raises `VersionMismatch` and changes nothing."""

    version: str

    @property
    def create_only(self) -> bool:
        return self.version == ""


CREATE_ONLY = Precondition("")
# the operations whose Precondition a store can pass to its server (`ObjectStore.conditional`)
CONDITIONAL_OPS = ("put", "upload", "multipart", "copy", "delete")


@dataclass(frozen=True, slots=True)
class DirListing:
    """One level below a prefix, all pages gathered."""

    # direct children that are objects (markers of the prefix itself excluded)
    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]  # names (no '/') of direct children that are directories or markers
    marker_exists: bool = False  # the prefix itself has a marker object
    extra: dict[str, int] = field(default_factory=dict)


LIST_PAGE = 1000  # keys per listing request (the most S3 and GCS give in one)


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One request's worth of a directory listing."""

    listing: DirListing
    next_token: str | None  # where the next page starts (opaque); None: this was the last


def gather_pages(list_page: Callable[..., ListingPage], prefix: str) -> DirListing:
    """Every page of a listing in one DirListing (for callers that need it whole)."""
    objects: list[ObjectInfo] = []
    prefixes: dict[str, None] = {}
    marker = False
    token: str | None = None
    while True:
        page = list_page(prefix, token)
        objects.extend(page.listing.objects)
        prefixes.update(dict.fromkeys(page.listing.prefixes))
        marker = marker or page.listing.marker_exists
        token = page.next_token
        if token is None:
            return DirListing(objects=tuple(objects), prefixes=tuple(prefixes), marker_exists=marker)


class ObjectStore(Protocol):
    name: str  # the configured remote name, used in every error message
    display_url: str  # the URL with any secret removed
    # the operations of CONDITIONAL_OPS whose `expect` reaches the server; for the others it is
    # ignored (the write is unconditional, as on a store without conditions)
    conditional: frozenset[str]
    # whether `upload` takes `append_to` (an AppendBase): the object at the key is the start of the
    # file, copied server-side into the new one, and only the rest is sent
    appends: bool
    # whether `upload` takes `patch` (a PatchBase): any ranges of the object at the key copied
    # server-side into the new one, and only the changed ranges sent
    patches: bool

    def list_dir(self, prefix: str) -> DirListing:
        """Children of `prefix` ("" for the root, else ending in '/'). A missing prefix lists empty."""
        ...

    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        """One request of the listing of `prefix`: up to about `limit` children, starting where
        `token` (from the page before; None: the start) says. A directory of a million keys is
        listed a page at a time, each with its own timeout, and can be resumed. `start_after`
        (a key): only the children after it, on the first page (the change log's poll)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, version and user metadata of one object; raises ObjectNotFound."""
        ...

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        """Bytes [start, end) of an object (shorter at its end); raises ObjectNotFound.

        With `version`, bytes of that version only: when the key holds another one now (or
        none), `VersionMismatch`, so a reader that opened one version never gets a mix. Where
        the server ignores the condition (docs/multihost.md), the bytes are whatever is there."""
        ...

    def download(self, key: str, dest: Path) -> ObjectInfo:
        """The whole object into `dest` (created or truncated); returns what was fetched."""
        ...

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None) -> ObjectInfo:
        """The local file `src` to `key` with user metadata, multipart when large."""
        ...

    def cancel_upload(self, key: str) -> bool:
        """Stop an upload of `key` running in another thread (it raises UploadCancelled);
        False when there is none or the store cannot stop one."""
        ...

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        """A small object (directory marker, symlink) in one request."""
        ...

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        """Server-side copy; with `metadata` the copy gets exactly that metadata; `expect` is
        about `dst_key`."""
        ...

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        """Remove one object (or marker); a missing object is not an error (unless `expect`
        names a version: then it is a `VersionMismatch`, as any other version there)."""
        ...

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Replace the user metadata of an existing object without sending its bytes again."""
        ...

    def probe(self) -> None:
        """Cheap reachability and permission check (a list of the root); raises RemoteError."""
        ...

    def statistics(self) -> dict[str, int]:
        """Counters: requests, errors, bytes_uploaded, bytes_downloaded, multipart_uploads, copies."""
        ...
