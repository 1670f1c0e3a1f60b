"""`LinksStore`: a read-only remote made of a text file of object URLs (`links:///path/list.txt`).

Each non-empty line that is not a `#` comment is one object URL (`s3://bucket/key`,
`gs://...`, `az://...`, `file:///...`). The store shows each object once, flat, under the last
segment of its key; it copies nothing: heads and ranged reads go to the object's own store,
one per scheme and bucket, built with this remote's `options` (a table per scheme such as
`options.s3 = {...}` wins over the flat options). Lines that are not URLs, and a second object
with a name already taken, are skipped with one warning each. Every write raises RemoteDenied.
It owns the parsed list (re-read when the file changes) and the per-bucket stores; it never
imports fsspec nor the factory: the stores come from the `open_store` its constructor is given.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountd.backend import (
    LIST_PAGE,
    DirListing,
    ListingPage,
    ObjectInfo,
    ObjectStore,
    Precondition,
    StoreTuning,
)
from mountd.config import RemoteConfig, redact_url
from mountd.errors import ObjectNotFound, RemoteDenied, RemoteError

log = logging.getLogger(__name__)

LINK_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "file", "memory")
HEAD_CONCURRENCY = 8
# how a store of one bucket is built: `factory.open_store(remote, tuning=...)`
OpenStore = Callable[..., ObjectStore]
_URL = re.compile(r"^([a-z0-9]+)://([^/]*)/(.*[^/])$")


@dataclass(frozen=True, slots=True)
class Link:
    name: str  # the file name shown in the mount
    url: str  # as written in the list
    scheme: str
    bucket: str
    key: str


def parse_links(text: str, remote: str) -> list[Link]:
    """The valid links of a list, in order; invalid lines and taken names are skipped with a warning."""
    links: list[Link] = []
    taken: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _URL.match(line)
        if not m or m.group(1) not in LINK_SCHEMES:
            log.warning("remote %r: line %d is not an object URL such as s3://bucket/key: %r", remote, n,
                        redact_url(line)[:200])
            continue
        scheme, bucket, key = m.groups()
        name = key.rsplit("/", 1)[-1]
        if name in taken:
            log.warning("remote %r: line %d: the name %r is taken by an earlier line; skipped",
                        remote, n, name)
            continue
        taken.add(name)
        links.append(Link(name=name, url=line, scheme=scheme, bucket=bucket, key=key))
    return links


class LinksStore:
    conditional: frozenset[str] = frozenset()  # read-only: it writes nothing
    appends = False

    def __init__(self, remote: RemoteConfig, tuning: StoreTuning, open_store: OpenStore) -> None:
        self.name = remote.name
        self.display_url = remote.display_url
        self.path = Path("/" + remote.url.split("://", 1)[1].lstrip("/"))
        self._remote = remote
        self._tuning = tuning
        self._open_store = open_store
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._links: dict[str, Link] = {}
        self._stores: dict[tuple[str, str], ObjectStore] = {}
        self._stats = {"requests": 0, "bytes_downloaded": 0, "links": 0}

    # --- the list -----------------------------------------------------------------------------------
    def _load(self) -> dict[str, Link]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            with self._lock:
                if stamp == self._stamp:
                    return self._links
            text = self.path.read_text(errors="replace")
        except OSError as e:
            raise RemoteError(self.name, f"cannot read the list of links {self.path}: {e.strerror}") from None
        links = {link.name: link for link in parse_links(text, self.name)}
        with self._lock:
            self._links, self._stamp = links, stamp
            self._stats["links"] = len(links)
        return links

    def _link(self, key: str) -> Link:
        link = self._load().get(key)
        if link is None:
            raise ObjectNotFound(self.name, f"{key!r} is not in the list {self.path}")
        return link

    @staticmethod
    def _split(link: Link) -> tuple[str, str]:
        """(URL of the store that holds the object, key inside it)."""
        if link.scheme in ("file", "memory"):  # no buckets: the object's directory is the store
            path = f"{link.bucket}/{link.key}".lstrip("/")
            parent, _, base = path.rpartition("/")
            return f"{link.scheme}:///{parent}", base
        return f"{link.scheme}://{link.bucket}", link.key

    def _store(self, link: Link) -> ObjectStore:
        root, _ = self._split(link)
        sk = (link.scheme, root)
        with self._lock:
            store = self._stores.get(sk)
        if store is None:
            opts = self._remote.options
            scoped = opts.get(link.scheme)
            options = dict(scoped) if isinstance(scoped, Mapping) else {
                k: v for k, v in opts.items() if not isinstance(v, Mapping)}
            store = self._open_store(RemoteConfig(name=self.name, url=root, options=options),
                                     tuning=self._tuning)
            with self._lock:
                store = self._stores.setdefault(sk, store)
        return store

    def _inner_key(self, link: Link) -> str:
        return self._split(link)[1]

    # --- ObjectStore ------------------------------------------------------------------------------------
    def list_page(self, prefix: str, token: str | None = None, limit: int = LIST_PAGE, *,
                  start_after: str = "") -> ListingPage:
        """The links file is read whole: one page (it has no change log to poll)."""
        return ListingPage(self.list_dir(prefix), None)

    def list_dir(self, prefix: str) -> DirListing:
        if prefix:
            return DirListing(objects=(), prefixes=())
        links = list(self._load().values())

        def head(link: Link) -> ObjectInfo | None:
            try:
                return self.head(link.name)
            except RemoteError as e:
                log.warning("remote %r: %s is not readable: %s", self.name, redact_url(link.url), e)
                return None

        with ThreadPoolExecutor(HEAD_CONCURRENCY) as pool:
            infos = [i for i in pool.map(head, links) if i is not None]
        return DirListing(objects=tuple(infos), prefixes=(), marker_exists=True)

    def head(self, key: str) -> ObjectInfo:
        link = self._link(key)
        info = self._store(link).head(self._inner_key(link))
        self._stats["requests"] += 1
        return ObjectInfo(key=key, size=info.size, version=info.version, mtime_ns=info.mtime_ns,
                          metadata={k: v for k, v in (info.metadata or {}).items() if k == "sha256"})

    def read_range(self, key: str, start: int, end: int, *, version: str = "") -> bytes:
        link = self._link(key)
        data = self._store(link).read_range(self._inner_key(link), start, end, version=version)
        self._stats["requests"] += 1
        self._stats["bytes_downloaded"] += len(data)
        return data

    def download(self, key: str, dest: Path) -> ObjectInfo:
        link = self._link(key)
        info = self._store(link).download(self._inner_key(link), dest)
        return ObjectInfo(key=key, size=info.size, version=info.version, mtime_ns=info.mtime_ns, metadata={})

    def _read_only(self, what: str, key: str) -> RemoteError:
        return RemoteDenied(self.name, f"{what} {key!r}: a links remote is read-only")

    def upload(self, src: Path, key: str, metadata: Mapping[str, str], *,
               expect: Precondition | None = None) -> ObjectInfo:
        raise self._read_only("upload", key)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str], *,
                  expect: Precondition | None = None) -> ObjectInfo:
        raise self._read_only("put", key)

    def copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None, *,
             expect: Precondition | None = None) -> ObjectInfo:
        raise self._read_only("copy", dst_key)

    def delete(self, key: str, *, expect: Precondition | None = None) -> None:
        raise self._read_only("delete", key)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        raise self._read_only("set metadata", key)

    def probe(self) -> None:
        """The list is readable and the first link of each bucket answers a HEAD."""
        seen: set[str] = set()
        for link in self._load().values():
            root, key = self._split(link)
            if root not in seen:
                seen.add(root)
                self._store(link).head(key)

    def statistics(self) -> dict[str, Any]:
        return dict(self._stats)
