"""One conformance suite for every ObjectStore: file, memory, S3 (moto), Azure (Azurite), GCS (emulator).

Every test builds a store exactly as the daemon does (`open_store` of a `RemoteConfig`) on a
fresh bucket of a real server started by the test suite on 127.0.0.1, under a key prefix so
that prefix handling is exercised too, and checks what the store answers through its own API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest

from mountd.backend import CREATE_ONLY, ObjectStore, Precondition, StoreTuning
from mountd.backend.azure import _block_id
from mountd.backend.factory import open_store
from mountd.backend.resumable import OpenUpload, OpenUploads
from mountd.backend.s3_listing import _url_decoded
from mountd.config import RemoteConfig
from mountd.errors import ObjectNotFound, RemoteDenied, RemoteError, RemoteUnavailable, VersionMismatch
from tests.servers import REMOTE_KIND_FIXTURE, CountingProxy, ErrorServer, Server, free_port

KINDS = ["file", "memory", "s3", "azure", "gcs"]
CLOUDS = ["s3", "azure", "gcs"]
SERVER_FIXTURE = REMOTE_KIND_FIXTURE
MiB = 1 << 20
META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1600000000.123456789",
        "sha256": hashlib.sha256(b"payload").hexdigest()}
TUNING = StoreTuning(timeout=10, multipart_threshold=10 * MiB, multipart_chunk=5 * MiB, concurrency=4)


def server_for(request: pytest.FixtureRequest, kind: str) -> Server:
    return request.getfixturevalue(SERVER_FIXTURE[kind])


def make_store(request: pytest.FixtureRequest, tmp_path: Path, kind: str, *, bucket: str | None = None,
               endpoint_url: str | None = None, options: dict | None = None, prefix: str = "root/sub",
               tuning: StoreTuning = TUNING) -> ObjectStore:
    if kind == "file":
        url = f"file://{tmp_path}/bucket/{prefix}"
        (tmp_path / "bucket" / prefix).mkdir(parents=True, exist_ok=True)  # (a bucket must exist)
        opts: dict = {}
    elif kind == "memory":
        url = f"memory://{tmp_path.name}/{prefix}"
        opts = {}
    else:
        server = server_for(request, kind)
        bucket = bucket or server.new_bucket()
        url = server.url(bucket, prefix)
        opts = server.options()
        if endpoint_url:
            opts = server.with_endpoint(opts, endpoint_url)
    if options is not None:
        opts = {**opts, **options}
    return open_store(RemoteConfig(name="conf", url=url, options=opts), tuning=tuning)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> ObjectStore:
    return make_store(request, tmp_path, kind)


def names(listing) -> tuple[list[str], list[str]]:
    return sorted(o.key for o in listing.objects), sorted(listing.prefixes)


# --- put, head, list, read --------------------------------------------------------------------------


def test_put_head_and_list(store: ObjectStore):
    info = store.put_bytes("a.txt", b"payload", META)
    assert info.key == "a.txt" and info.size == 7
    assert info.version and '"' not in info.version
    store.put_bytes("d/b.txt", b"bb", {})
    store.put_bytes("d/e/c.txt", b"c", {})
    head = store.head("a.txt")
    assert (head.size, head.version) == (7, info.version)
    assert head.mtime_ns > 1_500_000_000 * 10**9
    top = store.list_dir("")
    assert names(top) == (["a.txt"], ["d"])
    listed = top.objects[0]
    assert listed.size == 7 and listed.version == head.version
    assert names(store.list_dir("d/")) == (["d/b.txt"], ["e"])
    assert names(store.list_dir("d/e/")) == (["d/e/c.txt"], [])
    assert names(store.list_dir("missing/")) == ([], [])


@pytest.mark.parametrize("kind", ["s3", "s3-rclone"])
def test_s3_head_goes_over_plain_http_and_answers_as_the_sdk_does(request, tmp_path, kind, monkeypatch):
    """A HEAD is signed here and made by `PresignedRanges` (a third of botocore's CPU per call);
    what it returns equals botocore's answer, keys that need quoting included; a missing key is
    a 404 there too, and not asked again of the SDK (a lookup of a missing name is one request)."""
    store = make_store(request, tmp_path, kind)
    key = "dir/a b+c%d~e.txt"
    store.put_bytes(key, b"payload", META)
    sdk_calls: list[str] = []
    call = store.fs.call_s3

    def counted(method, *args, **kwargs):
        sdk_calls.append(method)
        return call(method, *args, **kwargs)

    monkeypatch.setattr(store.fs, "call_s3", counted)
    fast = store.head(key)
    assert sdk_calls == []
    assert (fast.key, fast.size) == (key, 7) and fast.mtime_ns > 1_500_000_000 * 10**9
    if kind == "s3":  # (rclone serve s3 on a local directory keeps no user metadata)
        assert fast.metadata == META
    with pytest.raises(ObjectNotFound):
        store.head("dir/missing.txt")
    assert sdk_calls == []
    monkeypatch.setattr(store._fast(), "enabled", False)
    assert store.head(key) == fast
    with pytest.raises(ObjectNotFound):
        store.head("dir/missing.txt")
    assert sdk_calls == ["head_object", "head_object"]


@pytest.mark.parametrize("kind", CLOUDS)
def test_prefix_of_the_url_is_the_root(request, tmp_path, kind):
    server = server_for(request, kind)
    bucket = server.new_bucket()
    inner = make_store(request, tmp_path, kind, bucket=bucket, prefix="root/sub")
    outer = make_store(request, tmp_path, kind, bucket=bucket, prefix="")
    inner.put_bytes("x/y.bin", b"y", {})
    assert names(outer.list_dir("")) == ([], ["root"])
    assert names(outer.list_dir("root/sub/x/")) == (["root/sub/x/y.bin"], [])
    assert outer.read_range("root/sub/x/y.bin", 0, 10) == b"y"


def test_ranged_reads(store: ObjectStore):
    blob = os.urandom(300_000)
    store.put_bytes("r.bin", blob, {})
    assert store.read_range("r.bin", 0, 10) == blob[:10]
    assert store.read_range("r.bin", 123_456, 200_000) == blob[123_456:200_000]
    assert store.read_range("r.bin", 299_990, 400_000) == blob[299_990:]
    assert store.read_range("r.bin", 5, 5) == b""


@pytest.mark.parametrize("kind", ["s3", "s3-rclone"])
def test_ranged_read_ignores_whole_object_checksums(request, tmp_path, kind):
    """An object uploaded with a whole-object CRC32 (as aws-cli >= 2.23 does) still reads by range,
    also from rclone serve s3, which returns that whole-object checksum on ranged GETs."""
    server = server_for(request, kind)
    bucket = server.new_bucket()
    blob = os.urandom(200_000)
    server.client().put_object(Bucket=bucket, Key="root/sub/c.bin", Body=blob, ChecksumAlgorithm="CRC32")
    store = make_store(request, tmp_path, kind, bucket=bucket)
    assert store.read_range("c.bin", 1000, 3000) == blob[1000:3000]


@pytest.mark.parametrize("kind", KINDS + ["gcs-fake"])
def test_bytes_that_look_like_line_ends_survive_an_upload(request, tmp_path, kind):
    """A file whose first or last bytes are CR or LF (a text file with Windows line ends, one
    random file in 256) keeps them: a multipart body written with bare LF line ends lost a last
    `\\r` on gcp-storage-emulator (CI on 574db0a)."""
    store = make_store(request, tmp_path, kind)
    for i, blob in enumerate([b"end with cr\r", b"\r\n", b"\n\r", b"\r", b"crlf\r\n", b"\r\nlead",
                              b"--==0==--\r", os.urandom(2000) + b"\r"]):
        src = tmp_path / f"{i}.bin"
        src.write_bytes(blob)
        info = store.upload(src, f"eol/{i}", META)
        assert (info.size, store.read_range(f"eol/{i}", 0, len(blob) + 10)) == (len(blob), blob), blob[-12:]


def test_download_and_upload(store: ObjectStore, tmp_path: Path):
    src = tmp_path / "src.bin"
    blob = os.urandom(2 * MiB + 3)
    src.write_bytes(blob)
    info = store.upload(src, "up/file.bin", META)
    assert info.size == len(blob)
    dest = tmp_path / "dest.bin"
    got = store.download("up/file.bin", dest)
    assert dest.read_bytes() == blob
    assert got.version == info.version


def test_multipart_upload(store: ObjectStore, tmp_path: Path, kind: str):
    src = tmp_path / "big.bin"
    blob = os.urandom(TUNING.multipart_threshold + 3 * MiB + 7)
    src.write_bytes(blob)
    info = store.upload(src, "big.bin", META)
    assert info.size == len(blob)
    head = store.head("big.bin")
    assert head.version == info.version and '"' not in head.version
    assert dict(head.metadata or {}) == META
    assert store.read_range("big.bin", len(blob) - 100, len(blob)) == blob[-100:]
    assert store.read_range("big.bin", 5 * MiB - 10, 5 * MiB + 10) == blob[5 * MiB - 10 : 5 * MiB + 10]
    listed = {o.key: o for o in store.list_dir("").objects}["big.bin"]
    assert listed.version == head.version
    stats = store.statistics()
    if kind in CLOUDS:
        assert stats["multipart_uploads"] == 1


def test_overwrite_changes_version(store: ObjectStore):
    v1 = store.put_bytes("v.txt", b"one", {}).version
    v2 = store.put_bytes("v.txt", b"two!", {}).version
    assert v1 != v2
    assert store.head("v.txt").size == 4


# --- metadata ----------------------------------------------------------------------------------------


def test_metadata_round_trip(store: ObjectStore, tmp_path: Path):
    store.put_bytes("m.txt", b"payload", META)
    assert dict(store.head("m.txt").metadata or {}) == META
    src = tmp_path / "f"
    src.write_bytes(b"x")
    store.upload(src, "u.txt", {"mode": "33261", "sha256": "ab" * 32})
    assert dict(store.head("u.txt").metadata or {}) == {"mode": "33261", "sha256": "ab" * 32}


def test_set_metadata_keeps_bytes(store: ObjectStore):
    store.put_bytes("m.txt", b"payload", META)
    new = {"mode": "33152", "uid": "7", "gid": "8", "mtime": "1.5", "sha256": META["sha256"]}
    info = store.set_metadata("m.txt", new)
    assert dict(info.metadata or {}) == new
    assert dict(store.head("m.txt").metadata or {}) == new
    assert store.read_range("m.txt", 0, 100) == b"payload"


# --- copy, delete, markers ---------------------------------------------------------------------------


def test_server_side_copy(store: ObjectStore, kind: str):
    store.put_bytes("src.bin", b"copy me", META)
    before = store.statistics().get("bytes_uploaded", 0)
    info = store.copy("src.bin", "dir/dst.bin")
    assert info.size == 7
    assert store.read_range("dir/dst.bin", 0, 100) == b"copy me"
    assert dict(store.head("dir/dst.bin").metadata or {}) == META
    replaced = store.copy("src.bin", "dst2.bin", {"mode": "33188", "sha256": "cd" * 32})
    assert dict(replaced.metadata or {}) == {"mode": "33188", "sha256": "cd" * 32}
    assert dict(store.head("src.bin").metadata or {}) == META
    if kind in CLOUDS:
        assert store.statistics().get("bytes_uploaded", 0) == before  # nothing went through the client


def test_delete(store: ObjectStore):
    store.put_bytes("gone.txt", b"x", {})
    store.delete("gone.txt")
    with pytest.raises(ObjectNotFound):
        store.head("gone.txt")
    store.delete("gone.txt")  # missing: not an error
    store.delete("never/was/here")


def test_directory_markers(store: ObjectStore):
    store.put_bytes("empty/", b"", {"mode": "16877"})
    store.put_bytes("full/", b"", {})
    store.put_bytes("full/f.txt", b"f", {})
    top = store.list_dir("")
    assert names(top) == ([], ["empty", "full"])
    empty = store.list_dir("empty/")
    assert names(empty) == ([], []) and empty.marker_exists
    full = store.list_dir("full/")
    assert names(full) == (["full/f.txt"], []) and full.marker_exists
    assert store.head("empty/").size == 0
    store.delete("empty/")
    assert names(store.list_dir("")) == ([], ["full"])
    store.delete("full/")
    assert names(store.list_dir("")) == ([], ["full"])  # the object below keeps the prefix
    assert names(store.list_dir("full/")) == (["full/f.txt"], [])


@pytest.mark.parametrize("kind", ["memory", *CLOUDS])  # a directory cannot hold both
def test_file_and_directory_of_the_same_name(store: ObjectStore, kind: str):
    store.put_bytes("a", b"file", {})
    store.put_bytes("a/b", b"below", {})
    listing = store.list_dir("")
    assert [o.key for o in listing.objects] == ["a"] and list(listing.prefixes) == ["a"]
    assert names(store.list_dir("a/")) == (["a/b"], [])


# --- pagination --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_listing_pages_beyond_1000_keys(store: ObjectStore, kind: str):
    if kind == "gcs":  # gcp-storage-emulator ignores maxResults: one page, whatever the size
        pytest.skip("GCS listing pages are tested on fake-gcs-server (PAGED)")
    keys = [f"many/k{i:05d}" for i in range(1_050)]
    keys.append("many/zz/")  # a prefix on the last page

    def put(k: str) -> None:
        store.put_bytes(k, b"" if k.endswith("/") else b"x", {})

    with ThreadPoolExecutor(1 if kind == "gcs" else 16) as pool:
        list(pool.map(put, keys))
    listing = store.list_dir("many/")
    assert len(listing.objects) == 1_050 and list(listing.prefixes) == ["zz"]
    assert sorted(o.key for o in listing.objects) == keys[:-1]


# --- errors ------------------------------------------------------------------------------------------


def test_missing_objects(store: ObjectStore):
    with pytest.raises(ObjectNotFound) as e:
        store.head("nope.bin")
    assert "'conf'" in str(e.value)
    with pytest.raises(ObjectNotFound):
        store.read_range("nope.bin", 0, 10)
    with pytest.raises(ObjectNotFound):
        store.copy("nope.bin", "other.bin")
    store.probe()


@pytest.mark.parametrize("kind", CLOUDS)
def test_missing_bucket_is_named(request, tmp_path, kind):
    store = make_store(request, tmp_path, kind, bucket="no-such-bucket-here")
    with pytest.raises(RemoteError) as e:
        store.probe()
    assert "'conf'" in str(e.value) and "no-such-bucket-here" in str(e.value)
    assert "does not exist" in str(e.value)


@pytest.mark.parametrize("kind", CLOUDS)
def test_unreachable_endpoint(request, tmp_path, kind):
    server = server_for(request, kind)
    bucket = server.new_bucket()
    store = make_store(request, tmp_path, kind, bucket=bucket, endpoint_url=f"http://127.0.0.1:{free_port()}",
                       tuning=StoreTuning(timeout=3))
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable) as e:
        store.probe()
    assert time.monotonic() - t0 < 30
    assert "'conf'" in str(e.value) and "unreachable" in str(e.value)


@pytest.mark.parametrize("kind", CLOUDS)
def test_server_errors_500(request, tmp_path, kind):
    server = server_for(request, kind)
    bucket = server.new_bucket()
    errors = ErrorServer(500)
    try:
        store = make_store(request, tmp_path, kind, bucket=bucket, endpoint_url=errors.endpoint_url,
                           tuning=StoreTuning(timeout=3))
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailable) as e:
            store.probe()
        assert time.monotonic() - t0 < 30
        assert "'conf'" in str(e.value) and "500" in str(e.value)
    finally:
        errors.close()


@pytest.mark.parametrize("kind", CLOUDS)
def test_stalled_server_times_out(request, tmp_path, kind):
    server = server_for(request, kind)
    bucket = server.new_bucket()
    proxy = CountingProxy(server.port)
    try:
        store = make_store(request, tmp_path, kind, bucket=bucket, endpoint_url=proxy.endpoint_url,
                           tuning=StoreTuning(timeout=1))
        store.put_bytes("s.bin", b"stall", {})
        proxy.stall()
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailable) as e:
            store.read_range("s.bin", 0, 5)
        assert time.monotonic() - t0 < 20
        assert "'conf'" in str(e.value)
        proxy.resume()
        assert store.read_range("s.bin", 0, 5) == b"stall"
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["s3", "azure"])  # the GCS emulator checks no credentials
def test_wrong_credentials_are_denied(request, tmp_path, kind):
    if kind == "s3":
        server = request.getfixturevalue("s3_persistent_server")  # moto accepts any key; rclone checks
        bucket = server.new_bucket()
        store = open_store(RemoteConfig(name="conf", url=server.url(bucket), options={
            **server.options(), "secret": "not-the-secret"}), tuning=StoreTuning(timeout=3))
    else:
        server = server_for(request, kind)
        bucket = server.new_bucket()
        bad_key = "A" * 86 + "=="
        store = make_store(request, tmp_path, kind, bucket=bucket, options={
            "connection_string": server.connection_string.replace(
                server.connection_string.split("AccountKey=")[1].split(";")[0], bad_key)},
            tuning=StoreTuning(timeout=3))
    with pytest.raises(RemoteDenied) as e:
        store.probe()
    assert "'conf'" in str(e.value)
    assert "not-the-secret" not in str(e.value) and "AAAAAAAA" not in str(e.value)


# gcp-storage-emulator ignores maxResults (one page, whatever the limit); fake-gcs-server counts
# only objects against it (real GCS counts objects and prefixes together) and repeats the prefixes
PAGED = ["memory", "s3", "azure", "gcs-fake"]  # (SeaweedFS pages as moto does)


@pytest.mark.parametrize("kind", PAGED)
def test_a_listing_comes_a_page_at_a_time_and_the_pages_make_the_whole(request, tmp_path, kind):
    """25 objects and 5 prefixes in pages of 7: every page at most 7 objects (a prefix of many
    keys counts once), each child in exactly one page, and the token of one page starts the next."""
    store = make_store(request, tmp_path, kind)
    for i in range(25):
        store.put_bytes(f"d/f{i:02d}", b"x", {})
    for j in range(5):
        for k in range(3):
            store.put_bytes(f"d/p{j}/k{k}", b"y", {})
    pages, token = [], None
    while True:
        page = store.list_page("d/", token, limit=7)
        pages.append(page.listing)
        token = page.next_token
        if token is None:
            break
    assert len(pages) >= 4
    assert all(len(p.objects) <= 7 for p in pages)
    keys = [o.key for p in pages for o in p.objects]
    prefixes = [x for p in pages for x in p.prefixes]
    assert sorted(keys) == [f"d/f{i:02d}" for i in range(25)] and len(set(keys)) == 25
    # (fake-gcs-server repeats the prefixes in every page: a listing must take them once)
    assert sorted(set(prefixes)) == [f"p{j}" for j in range(5)]
    assert names(store.list_dir("d/")) == (sorted(keys), sorted(set(prefixes)))
    after = store.list_page("d/", None, 100, start_after="d/f20")  # how the change log is polled
    assert names(after.listing) == ([f"d/f{i}" for i in range(21, 25)], [f"p{j}" for j in range(5)])
    assert after.next_token is None


@pytest.mark.parametrize("kind", ["file", "memory", "s3"])
def test_a_one_key_page_tells_whether_a_prefix_has_children(request, tmp_path, kind):
    store = make_store(request, tmp_path, kind)
    store.put_bytes("dir/deep/a", b"x", {})
    store.put_bytes("dir/deep/b", b"x", {})
    page = store.list_page("dir/deep/", None, limit=1)
    assert len(page.listing.objects) + len(page.listing.prefixes) == 1
    assert page.next_token is not None
    empty = store.list_page("dir/nothing/", None, limit=1)
    assert (empty.listing.objects, empty.listing.prefixes, empty.next_token) == ((), (), None)


@pytest.mark.parametrize("text", ["2026-12-07T03:36:02.000Z", "2026-12-07T03:36:02.123456Z",
                                  "2026-12-07T03:36:02Z", "Mon, 07 Dec 2026 03:36:02 GMT", "1700000000",
                                  "2026-12-07T03:36:02+02:00"])
def test_the_fast_timestamp_parser_agrees_with_botocores(text):
    """S3 listings' timestamps are parsed by the standard library instead of dateutil (a quarter
    of a listing's CPU): the same instant for every form S3 servers send."""
    import botocore.utils

    from mountd.backend.factory import fast_timestamp

    assert fast_timestamp(text) == botocore.utils.parse_timestamp(text)


LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
           b'2006-03-01/"><Name>b</Name>' + b"<Contents><Key>k</Key><Size>1</Size></Contents>" * 50
           + b"</ListBucketResult>")


@pytest.mark.parametrize("body", [
    LISTING,
    LISTING[:-7],  # cut short by the network
    LISTING[:300],
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code></Error>',
    b"<Error><Code>SlowDown</Code></Error>\n",
    b'<?xml version="1.0"?><CopyObjectResult><ETag>"e"</ETag></CopyObjectResult>\n\n',
    b"<ListBucketResult/>",
    b"not xml at all",
], ids=["listing", "cut-7", "cut-300", "error", "error-no-decl", "copy", "empty-element", "garbage"])
def test_the_cheap_200_error_check_decides_as_botocores(body):
    """An S3 200 answer is checked for an <Error> body or a cut-short one by reading its two ends
    instead of parsing it all a second time: the same decision as botocore's check."""
    import botocore.handlers
    import botocore.session

    from mountd.backend.factory import error_in_200

    model = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")
    response = {"status_code": 200, "body": body, "headers": {}}
    error_in_200(model, response)
    botocores = botocore.handlers._looks_like_special_case_error(200, body)
    assert (response["status_code"] == 500) == botocores


@hypothesis.given(st.text(st.sampled_from(["a", "/", "+", " ", "%", "2", "F", "f", "é", "😀", "~", "\t"]),
                          max_size=16),
                  st.sampled_from([dict(safe=""), dict(safe="/"), dict(safe="/", lower=True)]))
def test_the_quick_url_decoding_of_listed_keys_is_unquote_plus(key, how):
    """`_url_decoded` takes a shortcut for `%2F` and falls back to `unquote_plus` for the rest:
    the same key back, however a server encodes it (with `+` or `%20` for a space, slashes kept or
    encoded, hex digits in either case)."""
    encoded = urllib.parse.quote_plus(key, safe=how["safe"])
    if how.get("lower"):
        encoded = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)
    assert _url_decoded(encoded) == urllib.parse.unquote_plus(encoded) == key


ODD_NAMES = ["plain.txt", "with space", "plus+sign", "percent%41", "amp&and=eq", "ünïcödé-名前", "tab\tin",
             "quote\"'", "semi;colon", "tilde~", "a<b>", "escaped%2Fslash"]


@pytest.mark.parametrize("kind", ["s3", "s3-rclone", "s3-seaweedfs"])
def test_s3_listing_pages_read_without_the_sdk_match_the_sdks(request, tmp_path, kind):
    """A listing page is asked for over plain HTTP and read from its XML (`s3_listing.py`):
    odd names (encoded by the server, decoded here), sizes, ETags, times and page tokens are what
    the SDK's own ListObjectsV2 gives, and the direct path is the one taken on every S3 server."""
    store = make_store(request, tmp_path, kind)
    for i, name in enumerate(ODD_NAMES):
        store.put_bytes(f"d/{name}", b"x" * i, {})
        store.put_bytes(f"d/sub {name}/k", b"y", {})
    before = store.statistics().get("listings_direct", 0)
    pages, token = [], None
    while True:
        page = store.list_page("d/", token, limit=5)
        pages.append(page.listing)
        if (token := page.next_token) is None:
            break
    direct = [(o.key, o.size, o.version, o.mtime_ns) for p in pages for o in p.objects]
    prefixes = sorted(x for p in pages for x in p.prefixes)
    assert store.statistics().get("listings_direct", 0) - before == len(pages) >= 4
    store._fast().enabled = False  # the SDK's answer, for comparison
    sdk = store.list_dir("d/")
    assert sorted(direct) == sorted((o.key, o.size, o.version, o.mtime_ns) for o in sdk.objects)
    assert sorted(o.key for o in sdk.objects) == sorted(f"d/{n}" for n in ODD_NAMES)
    assert prefixes == sorted(set(sdk.prefixes)) == sorted(f"sub {n}" for n in ODD_NAMES)
    assert all(v for _, _, v, _ in direct) and all(m > 0 for _, _, _, m in direct)


@pytest.mark.parametrize("kind", ["s3", "s3-seaweedfs"])
def test_an_open_multipart_upload_resumes_with_the_same_bytes_and_is_aborted_for_others(request, tmp_path,
                                                                                        kind):
    """A multipart upload left open by a killed attempt (its parts on the server, its id in the
    local tier's `uploads/`) is continued by the next upload of the same bytes, sending only the
    missing parts; an upload of other bytes aborts it, as does a delete of the key."""
    tuning = dataclasses.replace(TUNING, resume_dir=tmp_path / "uploads")
    store = make_store(request, tmp_path, kind, tuning=tuning)
    blob = os.urandom(3 * TUNING.multipart_chunk + 11)
    src = tmp_path / "big.bin"
    src.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    # the killed attempt: an upload created, its first part stored, its id kept
    s3, bucket, full = store.fs, store.bucket, store._full("big.bin")
    upload_id = s3.call_s3("create_multipart_upload", Bucket=bucket, Key=full)["UploadId"]
    s3.call_s3("upload_part", Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=1,
               Body=blob[:TUNING.multipart_chunk])
    left = OpenUpload(key="big.bin", upload_id=upload_id, sha256=sha, size=len(blob),
                      part_size=TUNING.multipart_chunk)
    OpenUploads(tmp_path / "uploads", "conf").opened(left)
    store.upload(src, "big.bin", {**META, "sha256": sha})
    assert store.read_range("big.bin", 0, len(blob)) == blob
    assert store.statistics()["parts_resumed"] == 1  # part 1 was the killed attempt's
    assert list((tmp_path / "uploads").iterdir()) == []  # closed

    def open_uploads() -> list[str]:
        return [u["UploadId"] for u in s3.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])]

    for finish in ("other bytes", "delete"):
        upload_id = s3.call_s3("create_multipart_upload", Bucket=bucket, Key=full)["UploadId"]
        OpenUploads(tmp_path / "uploads", "conf").opened(dataclasses.replace(left, upload_id=upload_id))
        if finish == "other bytes":
            other = os.urandom(len(blob))
            src.write_bytes(other)
            store.upload(src, "big.bin", {**META, "sha256": hashlib.sha256(other).hexdigest()})
            assert store.read_range("big.bin", 0, len(other)) == other
        else:
            store.delete("big.bin")
        assert upload_id not in open_uploads() and list((tmp_path / "uploads").iterdir()) == [], finish


def test_azure_blocks_an_interrupted_upload_staged_are_not_sent_again(request, tmp_path):
    """Block ids name their content (the file's sha256, the part size, the index): an upload of
    the same bytes after one that was cut off finds the blocks already staged (Azure keeps
    uncommitted blocks a week) and sends only the others."""
    store = make_store(request, tmp_path, "azure")
    chunk = TUNING.multipart_chunk
    blob = os.urandom(3 * chunk + 11)
    src = tmp_path / "big.bin"
    src.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    # the cut-off attempt: its first block staged, nothing committed
    block = _block_id(0, sha, chunk)
    store._run(lambda: store._blob("big.bin").stage_block(block, blob[:chunk], length=chunk))
    store.upload(src, "big.bin", {**META, "sha256": sha})
    assert store.read_range("big.bin", 0, len(blob)) == blob
    assert store.statistics()["parts_resumed"] == 1


@pytest.mark.parametrize("kind", ["s3", "s3-rclone", "s3-seaweedfs"])
def test_small_s3_puts_go_over_plain_http_and_store_what_the_sdk_would(request, tmp_path, kind):
    """A small upload and a put of bytes are PUTs signed here and sent over `PresignedRanges`
    (no botocore request): the bytes, the metadata, the ETag and odd names come out as the SDK
    stores them, and where the server enforces conditions a create-only put on a taken key and
    a put against a stale version are still refused (the SDK, asked again, decides the 412)
    while one against the current version goes the fast way."""
    store = make_store(request, tmp_path, kind)
    meta = {**META, "xattr-user.note": "a b%20c"}
    for i, name in enumerate(ODD_NAMES):
        src = tmp_path / f"src{i}"
        src.write_bytes(name.encode() * 50)
        info = store.upload(src, f"put/{name}", meta, expect=CREATE_ONLY)
        assert (info.size, info.version) == (src.stat().st_size, hashlib.md5(src.read_bytes()).hexdigest())
        store.put_bytes(f"put/{name}.b", b"\r\n" + name.encode(), meta)
    assert store.statistics().get("fast_puts", 0) == 2 * len(ODD_NAMES)
    store._fast().enabled = False  # read back through the SDK
    for name in ODD_NAMES:
        got = store.head(f"put/{name}")
        assert (got.metadata, store.read_range(f"put/{name}", 0, 10_000)) == (meta, name.encode() * 50)
        assert store.read_range(f"put/{name}.b", 0, 100) == b"\r\n" + name.encode()
    store._fast().enabled = True
    if kind != "s3-rclone":  # (which ignores conditions: test_conditional_servers.py)
        taken = tmp_path / "other"
        taken.write_bytes(b"other bytes")
        with pytest.raises(VersionMismatch):
            store.upload(taken, f"put/{ODD_NAMES[0]}", meta, expect=CREATE_ONLY)
        with pytest.raises(VersionMismatch):
            store.upload(taken, f"put/{ODD_NAMES[0]}", meta, expect=Precondition("0" * 32))
        current = store.head(f"put/{ODD_NAMES[0]}").version
        assert store.upload(taken, f"put/{ODD_NAMES[0]}", meta, expect=Precondition(current)).version == \
            hashlib.md5(b"other bytes").hexdigest()
        assert store.statistics()["fast_puts"] == 2 * len(ODD_NAMES) + 1  # the refused ones are not counted


def test_a_file_remote_writes_an_object_over_an_empty_directory_that_holds_no_key(request, tmp_path):
    """In a bucket, a prefix with nothing under it does not exist; in a `file://` remote it can be
    an empty directory that races of deletes and writes below it left behind. An object of its
    name is written there all the same (before, its upload failed with EISDIR until `sync --wait`
    gave up), while a directory marker, or a directory that holds keys, still keeps its name."""
    store = make_store(request, tmp_path, "file")
    root = tmp_path / "bucket" / "root" / "sub"
    (root / "empty").mkdir()
    assert store.put_bytes("empty", b"now a file", {}).size == len(b"now a file")
    assert (root / "empty").read_bytes() == b"now a file"
    store.put_bytes("marked/", b"", {})
    store.put_bytes("full/inner", b"x", {})
    for name in ("marked", "full"):
        with pytest.raises(RemoteError):
            store.put_bytes(name, b"refused", {})
    assert (root / "marked").is_dir() and (root / "full" / "inner").read_bytes() == b"x"
