"""Directories of thousands of objects: a lookup asks for one name, a listing comes page by page.

The requests are counted at the server: moto logs every request it answers (one line each, with
its method and query), so a test reads what the mount asked for, not what it says it asked for.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import stat
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import S3Server
from tests.test_writeback_requests import RequestCounter

N = 1_100  # two listing pages of 1,000


class ServerRequests:
    """The requests moto answered after `mark()`, from its log."""

    def __init__(self, server: S3Server, bucket: str) -> None:
        self.log = server.log_path
        self.bucket = bucket
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.log.stat().st_size

    def since(self) -> list[tuple[str, str]]:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            text = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace"))  # 404s are colored
        return re.findall(rf'"([A-Z]+) (/{re.escape(self.bucket)}[^ ]*) HTTP', text)

    def listings(self, prefix: str) -> list[str]:
        """Listing requests of `prefix` (URL-encoded as the SDK sends it)."""
        p = prefix.replace("/", "%2F")
        return [path for method, path in self.since()
                if method == "GET" and "list-type=2" in path and (f"prefix={p}&" in path
                                                                  or f"prefix={prefix}&" in path)]


@pytest.fixture(scope="module")
def big_bucket(s3_server: S3Server) -> str:
    """A bucket whose `big/` holds N objects and one directory, made once for the module (each
    test mounts it afresh; the one that adds an object adds it under its own name)."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"big/f{i:05d}", Body=b"x" * (i % 7)),
                      range(N)))
    client.put_object(Bucket=bucket, Key="big/sub/inner", Body=b"inner")
    return bucket


@pytest.fixture
def big_dir(make_repo, s3_server: S3Server, big_bucket: str):
    """A fresh mount of `big_bucket`, nothing listed yet."""
    bucket = big_bucket
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    return repo, ServerRequests(s3_server, bucket)


def test_a_lookup_in_a_directory_of_thousands_asks_for_that_name_only(big_dir):
    repo, server = big_dir
    server.mark()
    assert os.stat(repo.data / "big" / "f01050").st_size == 1050 % 7
    assert os.path.isdir(repo.data / "big" / "sub")
    with pytest.raises(FileNotFoundError):
        os.stat(repo.data / "big" / "missing")
    with pytest.raises(FileNotFoundError):
        os.stat(repo.data / "big" / "missing")  # the kernel or the daemon remembers: no new request
    assert (repo.data / "big" / "sub" / "inner").read_bytes() == b"inner"
    # of big/ itself only its first page (which would have listed a small directory whole; it
    # goes on in the background, and may not be answered yet), then one-key probes of big/<name>/
    pages = [p for p in server.listings("big/") if "max-keys=1&" not in p]
    assert len(pages) <= 1 and not [p for p in pages if "continuation-token" in p], pages
    asked = server.since()
    assert len([1 for m, p in asked if m == "HEAD" and "/big/missing" in p]) == 1, "\n".join(map(str, asked))
    # the first pages of the bucket's root, big/ and big/sub/, and five names looked up (big,
    # f01050, sub, missing, inner) with a HEAD and a one-key listing each where a page did not
    # answer; the marker HEAD of big/ and the read of inner: about 16, never thousands
    assert len(asked) <= 18, "\n".join(map(str, asked))


@pytest.mark.slow
def test_a_stat_does_not_wait_for_a_first_page_the_server_is_slow_to_give(make_repo, s3_server: S3Server,
                                                                          big_bucket: str):
    """A directory never listed whose first listing page comes late (`rclone serve s3` reads and
    sorts a whole directory for each page: about 1 s at 100,000 objects): a stat of a name in it,
    and of a missing name, is answered by a HEAD and a one-key listing while that page is still
    held at the proxy; the page then goes into the db all the same, and `ls` shows every entry."""
    proxy = SlowListings(s3_server.port, "big/", 3.0)
    try:
        repo = make_repo(remote_toml=s3_server.remote_toml("main", big_bucket, "/data",
                                                           endpoint_url=proxy.endpoint_url))
        repo.start()
        assert os.stat(repo.data / "big" / "f01050").st_size == 1050 % 7
        with pytest.raises(FileNotFoundError):
            os.stat(repo.data / "big" / "missing")
        assert proxy.pages == 0, proxy.continued  # both answered before the first page came
        names = os.listdir(repo.data / "big")
        assert sorted(set(names) - {"late"}) == sorted([f"f{i:05d}" for i in range(N)] + ["sub"])
        assert proxy.continued == [False, True], proxy.continued  # the first page was not asked twice
    finally:
        proxy.close()


def test_a_directory_of_thousands_is_listed_in_pages_and_shows_every_entry(big_dir):
    repo, server = big_dir
    server.mark()
    names = os.listdir(repo.data / "big")
    assert sorted(set(names) - {"late"}) == sorted([f"f{i:05d}" for i in range(N)] + ["sub"])
    pages = [p for p in server.listings("big/") if "max-keys=1&" not in p]
    assert len(pages) == 2, pages  # 1,000 keys a page: N / 1,000 requests, once
    assert sum(1 for p in pages if "continuation-token" in p) == 1
    server.mark()
    assert os.listdir(repo.data / "big") == names  # listed already (listing_ttl): no request
    assert server.listings("big/") == []


def test_a_stat_of_every_object_other_tools_wrote_costs_no_head_and_no_index_read(big_dir):
    """`ls -l` or `du` of a bucket no mountd wrote: its root's listing shows no `.mountd-attrs/`,
    so no stat asks for a directory index, and none HEADs an object (listing attributes). After a
    remount, which serves the listed root from the db, one one-key listing of `.mountd-attrs/`
    tells the same before the first directory not listed yet is (before: a GET of the missing
    index of every directory `du` entered)."""
    repo, server = big_dir
    assert "big" in os.listdir(repo.data)  # the root, listed whole
    server.mark()
    sizes = {p.name: os.lstat(p).st_size for p in (repo.data / "big").iterdir()}
    asked = server.since()
    assert [p for m, p in asked if ".mountd-attrs" in p] == [], asked
    assert [p for m, p in asked if m == "HEAD" and "/big/f" in p] == [], asked
    assert sum(v for k, v in sizes.items() if k.startswith("f")) == sum(i % 7 for i in range(N))
    repo.stop()
    repo.start()
    server.mark()
    assert os.lstat(repo.data / "big" / "sub" / "inner").st_size == len(b"inner")
    asked = server.since()
    assert [p for m, p in asked if m == "GET" and "/.mountd-attrs/" in p] == [], asked
    assert len([p for m, p in asked if "mountd-attrs" in p]) == 1, asked


def test_after_ls_of_a_bucket_no_mountd_wrote_a_stat_of_each_entry_asks_the_daemon_nothing(
        make_repo, s3_server: S3Server, big_bucket: str):
    """Where the bucket has no directory index at all, a listing's attributes are final as soon as
    its page is merged: readdirplus hands them to the kernel (for attr_timeout), so `du` or
    `ls -l` after the listing stats every entry without a lookup or getattr in the daemon. (Made
    at META_DEFAULTS, each stat was a lookup and a getattr: 30 s of a warm `du` of 300,000.)"""
    repo = make_repo(remote_toml=s3_server.remote_toml("main", big_bucket, "/data"),
                     extra_toml='attr_timeout = "60s"\n')
    repo.start()
    names = os.listdir(repo.data / "big")
    calls = repo.status()["statistics"]["fuse"]["calls"]
    sizes = {n: os.lstat(repo.data / "big" / n).st_size for n in names}
    after = repo.status()["statistics"]["fuse"]["calls"]
    asked = {op: after.get(op, 0) - calls.get(op, 0) for op in ("lookup", "getattr")}
    assert sum(v for k, v in sizes.items() if k.startswith("f")) == sum(i % 7 for i in range(N))
    assert asked["lookup"] + asked["getattr"] <= 5, asked  # (the path down to big/, at most)


def test_a_name_another_tool_adds_after_a_lookup_missed_it_shows_after_the_listing(big_dir, s3_server):
    repo, server = big_dir
    with pytest.raises(FileNotFoundError):
        os.stat(repo.data / "big" / "late")
    s3_server.client().put_object(Bucket=server.bucket, Key="big/late", Body=b"late")
    names = os.listdir(repo.data / "big")  # a listing is the truth
    assert "late" in names
    assert (repo.data / "big" / "late").read_bytes() == b"late"
    assert os.stat(repo.data / "big" / "f00001").st_size == 1
    try:
        os.stat(repo.data / "big" / "f99999")
    except OSError as e:
        assert e.errno == errno.ENOENT
    else:
        raise AssertionError("f99999 does not exist")


def test_files_created_in_a_small_directory_never_listed_cost_one_listing(make_repo, s3_server: S3Server):
    """A loop creating files in an existing small directory: the first lookup lists its first (and
    only) page, and every create after that is answered from the db: no HEAD per new name (the
    first name may be asked alone, when the page takes longer than FIRST_PAGE_GRACE under load)."""
    bucket = s3_server.new_bucket()
    for i in range(3):
        s3_server.put(bucket, f"runs/old{i}.json", b"{}")
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    server = ServerRequests(s3_server, bucket)
    server.mark()
    for i in range(20):
        (repo.data / "runs" / f"new{i:02d}.json").write_bytes(b"{}")
    asked = server.since()
    assert [p for m, p in asked if m == "HEAD" and "/runs/new" in p] in ([], [f"/{bucket}/runs/new00.json"])
    assert len([p for p in server.listings("runs/") if "max-keys=1&" not in p]) == 1


def test_ls_l_of_objects_mountd_wrote_reads_their_directory_index_not_one_head_each(make_repo, s3_server):
    """A fresh mount (empty local tier) stats every file of a directory another mount wrote: the
    mode, mtime and user xattrs those files were given come from the directory's index (one GET),
    with no HEAD per object. An object another tool rewrote since no longer matches its entry: it
    shows its listing's attributes (size, the default mode) until its metadata is asked for."""
    bucket = s3_server.new_bucket()
    toml = s3_server.remote_toml("main", bucket, "/data")
    writer = make_repo("writer", remote_toml=toml)
    writer.start()
    runs = writer.data / "runs"
    runs.mkdir()
    stored = {}
    for i in range(30):
        p = runs / f"f{i:02d}"
        p.write_bytes(b"x" * i)
        os.chmod(p, 0o600 if i % 2 else 0o750)
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789 + i))
        stored[p.name] = (os.stat(p).st_mode, os.stat(p).st_mtime_ns)
    os.setxattr(runs / "f03", "user.tag", b"v3")
    writer.sync()
    writer.stop()
    s3_server.put(bucket, "runs/f05", b"other")  # another tool: the index's entry no longer matches

    reader = make_repo("reader", remote_toml=toml)
    reader.start()
    server = ServerRequests(s3_server, bucket)
    server.mark()
    seen = {p.name: os.lstat(p) for p in (reader.data / "runs").iterdir()}  # what `ls -l` asks
    assert os.getxattr(reader.data / "runs" / "f03", "user.tag") == b"v3"
    asked = server.since()
    assert [p for m, p in asked if m == "HEAD" and "/runs/" in p] == [], asked
    index = f"/{bucket}/.mountd-attrs/runs/.index"
    assert len([p for m, p in asked if m == "GET" and p.startswith(index)]) == 1, asked
    assert sorted(seen) == sorted(stored)
    for name, (mode, mtime_ns) in stored.items():
        if name != "f05":
            assert (seen[name].st_mode, seen[name].st_mtime_ns) == (mode, mtime_ns), name
    assert (seen["f05"].st_size, stat.S_IMODE(seen["f05"].st_mode)) == (5, 0o644)
    assert (reader.data / "runs" / "f05").read_bytes() == b"other"


HUGE = 20_000  # 20 listing pages
PAGE_DELAY = 0.15  # seconds each page request of the huge directory is held at the proxy


class SlowListings(RequestCounter):
    """Holds each listing page of `prefix` for `delay` seconds before passing it on (a far
    server), and records whether each carried a continuation token (page 1 carries none)."""

    def __init__(self, upstream_port: int, prefix: str, delay: float) -> None:
        self.prefix, self.delay = prefix, delay
        self.continued: list[bool] = []  # one per page request of `prefix`, in order
        self._pages = threading.Condition()
        super().__init__(upstream_port)

    def _count(self, method: str, target: str) -> None:
        super()._count(method, target)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        if "list-type" in query and query.get("prefix", [""])[0] == self.prefix \
                and query.get("max-keys", ["1000"])[0] != "1":
            time.sleep(self.delay)
            with self._pages:
                self.continued.append("continuation-token" in query)
                self._pages.notify_all()

    @property
    def pages(self) -> int:
        with self._pages:
            return len(self.continued)

    def wait_pages(self, n: int, timeout: float = 60) -> None:
        with self._pages:
            assert self._pages.wait_for(lambda: len(self.continued) >= n, timeout), self.continued


@pytest.fixture(scope="module")
def huge_bucket(s3_server: S3Server) -> str:
    """HUGE objects under huge/, PUT as plain HTTP requests over 8 kept-alive connections (moto
    checks no signature; boto3's own cost per request would make this half as fast again)."""
    bucket = s3_server.new_bucket("huge")

    def put_share(first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", s3_server.port, timeout=60)
        for i in range(first, HUGE, 8):
            body = b"%d" % i
            conn.request("PUT", f"/{bucket}/huge/k{i:05d}", body=body)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
        conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put_share, range(8)))
    return bucket


@pytest.fixture
def slow_huge(make_repo, s3_server: S3Server, huge_bucket: str):
    """A fresh mount of `huge_bucket` through a proxy that holds each listing page of huge/, with
    a `read_timeout` of 1 s: the whole listing (20 pages) takes three times that."""
    proxy = SlowListings(s3_server.port, "huge/", PAGE_DELAY)
    try:
        repo = make_repo(remote_toml=s3_server.remote_toml("main", huge_bucket, "/data",
                                                           endpoint_url=proxy.endpoint_url),
                         extra_toml='read_timeout = "1s"\n')
        repo.start()
        yield repo, proxy
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_directory_of_20000_is_listed_whole_though_its_listing_outlasts_read_timeout(slow_huge):
    """No deadline covers a whole listing (each page has its own), and a stat of a name on the
    last page is answered while the listing is still on its first pages. (With one deadline for
    the whole listing, as before issue 22, `ls` fails after 1 s with nothing listed.)"""
    repo, proxy = slow_huge
    listed: dict[str, object] = {}

    def ls() -> None:
        t0 = time.monotonic()
        listed["names"] = os.listdir(repo.data / "huge")
        listed["seconds"] = time.monotonic() - t0

    reader = threading.Thread(target=ls)
    reader.start()
    proxy.wait_pages(2)
    assert os.stat(repo.data / "huge" / f"k{HUGE - 1:05d}").st_size == len(str(HUGE - 1))
    pages_when_answered = proxy.pages
    reader.join(120)
    assert pages_when_answered < HUGE // 1000, pages_when_answered
    assert len(listed["names"]) == HUGE  # type: ignore[arg-type]
    assert listed["seconds"] > 1.0  # type: ignore[operator]
    assert proxy.continued == [False] + [True] * (HUGE // 1000 - 1)  # each page asked for once


@pytest.mark.slow
def test_a_listing_killed_halfway_goes_on_from_its_next_page_after_a_restart(slow_huge):
    """kill -9 of the daemon while `ls` is on page 8 of 20: the next mount's listing starts with
    a continuation token (not page 1 again) and asks for the pages not merged yet only."""
    repo, proxy = slow_huge
    ls = subprocess.Popen(["ls", str(repo.data / "huge")], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    proxy.wait_pages(8)
    repo.kill9()
    ls.wait(30)
    before = proxy.pages
    repo.start()
    assert len(os.listdir(repo.data / "huge")) == HUGE
    after = proxy.continued[before:]
    assert after and all(after), proxy.continued  # resumed: no page 1
    assert len(after) <= HUGE // 1000 - (8 - 1), proxy.continued  # pages 1-7 were merged before the kill


class ConcurrentListings(SlowListings):
    """Holds each listing of a directory under `prefix` (any depth) and records the most listings
    that were held at once."""

    def __init__(self, upstream_port: int, prefix: str, delay: float) -> None:
        self.held = 0
        self.most_at_once = 0
        self.asked: list[str] = []
        super().__init__(upstream_port, prefix, delay)

    def _count(self, method: str, target: str) -> None:
        RequestCounter._count(self, method, target)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        prefix = query.get("prefix", [""])[0]
        if "list-type" not in query or not prefix.startswith(self.prefix) or prefix == self.prefix \
                or query.get("max-keys", ["1000"])[0] == "1":
            return
        with self._pages:
            self.held += 1
            self.most_at_once = max(self.most_at_once, self.held)
            self.asked.append(prefix)
        time.sleep(self.delay)
        with self._pages:
            self.held -= 1


def test_a_walk_lists_the_next_sibling_directories_ahead_each_once(make_repo, s3_server: S3Server):
    """`find` over 12 directories, each listing held 0.2 s at the proxy: after the walk entered
    two of them, the next ones are listed ahead, several at once, and each directory is listed
    once. (With `walking_into` returning at once, as before, the listings go one after the other:
    at most one is held at a time.)"""
    bucket = s3_server.new_bucket("walk")
    for i in range(12):
        for j in range(3):
            s3_server.put(bucket, f"tree/d{i:02d}/f{j}", b"x")
    proxy = ConcurrentListings(s3_server.port, "tree/", 0.2)
    try:
        repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data",
                                                           endpoint_url=proxy.endpoint_url))
        repo.start()
        found = subprocess.run(["find", str(repo.data / "tree")], capture_output=True, text=True, check=True)
        assert len(found.stdout.split()) == 1 + 12 + 36
        assert proxy.most_at_once >= 2, proxy.asked
        assert sorted(proxy.asked) == sorted(set(proxy.asked)) and len(proxy.asked) == 12, proxy.asked
        assert repo.status()["statistics"]["vfs"]["listings_ahead"] >= 2
    finally:
        proxy.close()
