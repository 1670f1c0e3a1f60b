"""A directory listed page by page: readdir serves each page as it arrives, readers share one listing.

The remote is the real file:// store behind `PagedStore`, which cuts its listing into pages of
1,000 as S3 does and holds every page after the first until the test lets it go: what readdir
returns meanwhile is what a directory of a million objects would show after its first page.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import pytest

from mountd.backend import DirListing, ListingPage
from mountd.errors import RemoteUnavailable
from mountd.meta.store import ROOT_INODE
from mountd.vfs.remote_view import LISTING_PAGE_TRIES

N = 2_500
PAGE = 1_000


class PagedStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.pages: list[str | None] = []  # the token of each page asked for
        self.fail = False  # every page after the first fails

    def list_page(self, prefix: str, token: str | None = None, limit: int = PAGE, *,
                  start_after: str = "") -> ListingPage:
        if prefix != "big/" or limit < PAGE:  # (a lookup's one-key probe)
            return self.inner.list_page(prefix, token, limit, start_after=start_after)
        self.pages.append(token)
        if token is not None:
            assert self.gate.wait(30), "the test never let the second page go"
            if self.fail:
                raise RemoteUnavailable("main", "the second page does not come")
        whole = self.inner.list_dir(prefix).objects
        start = int(token or 0)
        part = tuple(sorted(whole, key=lambda o: o.key)[start:start + PAGE])
        more = start + PAGE < len(whole)
        return ListingPage(DirListing(objects=part, prefixes=()), str(start + PAGE) if more else None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def paged_mount(make_mount, tmp_path) -> tuple[Any, list[PagedStore]]:
    """A mount whose remote holds N objects in big/, behind a PagedStore (kept in the list, with
    those of later mounts of the same repo)."""
    remote = tmp_path / "repo" / "remote" / "big"
    remote.mkdir(parents=True)
    for i in range(N):
        (remote / f"f{i:05d}").write_bytes(b"x")
    stores: list[PagedStore] = []
    return make_mount(wrap=lambda s: stores.append(PagedStore(s)) or stores[-1]), stores


def entries(m, ino: int, offset: int) -> list[tuple[int, str]]:
    """What one readdir at `offset` returns (after `readdir_ready`, as the FUSE layer calls it)."""
    async def call() -> list[tuple[int, str]]:
        await m.stack.fs.readdir_ready(ino, offset)
        return [(row[0], os.fsdecode(row[1])) for page in m.stack.fs.readdir(ino, offset) for row in page]
    return m.run(call)


def test_readdir_serves_the_first_page_while_the_rest_is_still_coming(make_mount, tmp_path):
    m, stores = paged_mount(make_mount, tmp_path)
    store = stores[0]
    data = m.ino("/data")
    big = m.run(m.stack.fs.lookup, data, b"big").ino
    assert m.run(m.stack.fs.opendir, big) == big  # returns after the first page
    first = entries(m, big, 0)
    assert [name for _, name in first[:2]] == [".", ".."]
    assert len(first) == 2 + PAGE  # the first page, served while the second is held
    m.until(lambda: store.pages == [None, "1000"])
    store.gate.set()
    seen = [name for _, name in first[2:]]
    offset = first[-1][0]
    while True:
        more = entries(m, big, offset)
        if not more:
            break
        seen += [name for _, name in more]
        offset = more[-1][0]
    assert sorted(seen) == [f"f{i:05d}" for i in range(N)] and len(set(seen)) == N
    # one listing, each page once, though every readdir after the first page asked for one
    assert store.pages == [None, "1000", "2000"]
    assert m.run(m.stack.fs.lookup, ROOT_INODE, b"data").ino == data


def test_a_listing_that_fails_midway_keeps_what_it_had_and_removes_nothing(make_mount, tmp_path):
    """A later page that keeps failing ends the listing without its sweep: entries the pages
    fetched so far did not show stay (only a finished listing says what is gone), and each page
    was tried LISTING_PAGE_TRIES times, not forever."""
    m, stores = paged_mount(make_mount, tmp_path)
    store = stores[0]
    store.gate.set()
    assert len(m.readdir("/data/big")) == N
    store.fail = True
    big = m.ino("/data/big")

    async def relist() -> bool:
        d = m.stack.fs.meta.get(big)
        return await m.stack.fs.remote.ensure_listed(d, force=True)

    asked = len(store.pages)
    m.run(relist)
    assert store.pages[asked:] == [None] + ["1000"] * LISTING_PAGE_TRIES
    assert len(m.readdir("/data/big")) == N  # nothing swept


def test_a_listing_a_crash_interrupted_goes_on_from_its_next_page(make_mount, tmp_path):
    """The daemon dies while the second page is on its way; the next mount's listing asks for the
    second and third pages only, and the entries the first page showed are neither lost nor
    swept: the names each page showed were kept in the db with its entries."""
    m, stores = paged_mount(make_mount, tmp_path)
    big = m.run(m.stack.fs.lookup, m.ino("/data"), b"big").ino
    m.run(m.stack.fs.opendir, big)  # the first page is in; the second is held
    m.until(lambda: stores[0].pages == [None, "1000"])
    m.run_sync(m.crash)
    stores[0].gate.set()  # (the held request ends; the cancelled listing takes nothing from it)
    m.join()
    again = make_mount(wrap=lambda s: stores.append(PagedStore(s)) or stores[-1])
    stores[1].gate.set()
    assert again.readdir("/data/big") == [f"f{i:05d}" for i in range(N)]
    assert stores[1].pages == ["1000", "2000"]


def test_a_listing_again_of_a_one_page_directory_drops_what_the_remote_no_longer_holds(make_mount, tmp_path):
    """A directory whose listing is one page is swept on the names of that page in hand (no names
    written to the db): listed again, an object another tool deleted leaves the directory and
    the new one appears; a file written here and not uploaded yet stays."""
    remote = tmp_path / "repo" / "remote" / "small"
    remote.mkdir(parents=True)
    for name in ("a", "b"):
        (remote / name).write_bytes(name.encode())
    m = make_mount(delay="1h")
    d = m.ino("/data/small")
    m.run(m.stack.fs.opendir, d)
    assert sorted(name for _, name in entries(m, d, 0)[2:]) == ["a", "b"]
    m.create("/data/small/mine", b"not sent yet")
    (remote / "b").unlink()
    (remote / "c").write_bytes(b"c")
    view = m.stack.fs.remote
    m.run(lambda: view.ensure_listed(view.meta.get(d), force=True))
    assert sorted(name for _, name in entries(m, d, 0)[2:]) == ["a", "c", "mine"]


def test_a_listing_that_finds_a_new_version_of_an_open_file_leaves_its_readers_on_the_old_one(
        make_mount, tmp_path):
    """Listed again, a directory shows that another tool rewrote a file this mount has open for
    reading: the name gets a new inode (a new open reads the new bytes), and the open one keeps
    its version, old bytes or ESTALE where the old version is gone, never a byte of the new one.
    (Changed in place, as before, the reader's next chunk came from the new version: a torn read
    that the two-host test of a reader met under load in CI.)"""
    remote = tmp_path / "repo" / "remote" / "runs"
    remote.mkdir(parents=True)
    size = 20 << 20  # three chunks of 8 MiB: the reader has the first one only
    (remote / "shard.bin").write_bytes(b"old." * (size // 4))
    m = make_mount()
    d = m.ino("/data/runs")
    m.run(m.stack.fs.opendir, d)
    fh = m.open("/data/runs/shard.bin")
    assert m.read(fh, 0, 4) == b"old."
    (remote / "shard.bin").write_bytes(b"NEW!" * (size // 4))
    view = m.stack.fs.remote
    m.run(lambda: view.ensure_listed(view.meta.get(d), force=True))
    for offset in range(0, size, 1 << 20):
        try:
            data = m.read(fh, offset, 1 << 20)
        except OSError as e:
            assert e.errno == errno.ESTALE, e
            continue
        assert data == b"old." * (len(data) // 4), offset  # never a byte of the new version
    m.close(fh)
    assert m.read_file("/data/runs/shard.bin")[:4] == b"NEW!"


def test_a_listing_that_finds_a_new_version_of_a_closed_file_gives_the_name_a_new_inode(make_mount, tmp_path):
    """The same for a file nobody has open: the name gets a new inode of the new version, and the
    old inode goes (a kernel still naming it gets ESTALE and looks the name up again), as a
    change-log entry does. Changed in place, the kernel could read the new bytes up to the old
    size it still held, and zeros past it."""
    remote = tmp_path / "repo" / "remote" / "runs"
    remote.mkdir(parents=True)
    (remote / "metrics.json").write_bytes(b"old")
    m = make_mount()
    d = m.ino("/data/runs")
    before = m.ino("/data/runs/metrics.json")
    assert m.read_file("/data/runs/metrics.json") == b"old"
    (remote / "metrics.json").write_bytes(b"new and longer")
    view = m.stack.fs.remote
    m.run(lambda: view.ensure_listed(view.meta.get(d), force=True))
    after = m.ino("/data/runs/metrics.json")
    assert after != before and m.stack.meta.get(before) is None
    with pytest.raises(OSError) as e:
        m.run(m.stack.fs.getattr, before)
    assert e.value.errno == errno.ESTALE
    assert m.read_file("/data/runs/metrics.json") == b"new and longer"
