"""Each store's compare-and-swap through its own API, against the real servers of the suite.

A write with `expect` must go ahead only when the object at the key is that version (or absent,
for create-only), and fail with `VersionMismatch` otherwise, changing nothing. Whether that
holds is the server's doing: `ENFORCED` records, per server, which operations it really refuses
(the others it performs unconditionally). A server upgrade that changes one of them fails here,
and docs/multihost.md says which server proves which guarantee.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mountd.backend import CREATE_ONLY, ObjectStore, Precondition
from mountd.backend.conditions import probe_conditions
from mountd.errors import VersionMismatch
from tests.test_backends import MiB, make_store

ALL = {f"{op}:{cond}" for op in ("put", "upload", "multipart", "copy") for cond in ("create", "match")} | {
    "delete:match", "read:match"}
# "op:create" the server refuses a create-only write over an object; "op:match" a wrong version
ENFORCED = {
    "file": ALL,
    "memory": ALL,
    # moto: If-None-Match and If-Match on PutObject, If-None-Match (not If-Match) on the multipart
    # completion, If-Match on DeleteObject, nothing on CopyObject
    "s3": {"put:create", "put:match", "upload:create", "upload:match", "multipart:create", "delete:match",
           "read:match"},
    "azure": ALL,
    "gcs": set(),  # gcp-storage-emulator ignores ifGenerationMatch and serves any generation asked
    # fake-gcs-server: on multipart/related uploads (puts, files under 5 MiB), not on resumable
    # uploads, rewrites or deletes; a read of a replaced generation answers 404
    "gcs-fake": {"put:create", "put:match", "upload:create", "upload:match", "read:match"},
    "s3-seaweedfs": ALL,
}


@pytest.fixture(params=sorted(ENFORCED))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> ObjectStore:
    return make_store(request, tmp_path, kind)


def wrong(version: str) -> Precondition:
    return Precondition(("1" if version[:1] != "1" else "2") + version[1:])


def write(store: ObjectStore, op: str, tmp_path: Path, key: str, data: bytes, expect: Precondition) -> None:
    if op == "put":
        store.put_bytes(key, data, {}, expect=expect)
    elif op in ("upload", "multipart"):
        src = tmp_path / "src"
        src.write_bytes(data * (1 if op == "upload" else (12 * MiB) // len(data) + 1))
        store.upload(src, key, {}, expect=expect)
    elif op == "copy":
        store.put_bytes("source", data, {})
        store.copy("source", key, expect=expect)


def body(store: ObjectStore, key: str) -> bytes:
    return store.read_range(key, 0, 64)


@pytest.mark.parametrize("op", ["put", "upload", "multipart", "copy"])
def test_a_write_is_a_compare_and_swap_where_the_server_enforces_it(store, kind, op, tmp_path):
    old = store.put_bytes("k", b"the object another host wrote", {})
    for expect in (CREATE_ONLY, wrong(old.version)):
        enforced = f"{op}:{'create' if expect.create_only else 'match'}" in ENFORCED[kind]
        try:
            write(store, op, tmp_path, "k", b"this host's bytes", expect)
            refused = False
        except VersionMismatch:
            refused = True
        assert refused == enforced, (kind, op, expect)
        if refused:
            assert body(store, "k") == b"the object another host wrote"
        else:
            store.put_bytes("k", b"the object another host wrote", {})
            old = store.head("k")
    write(store, op, tmp_path, "k", b"this host's bytes", Precondition(store.head("k").version))
    assert body(store, "k").startswith(b"this host's bytes")
    write(store, op, tmp_path, "new", b"fresh", CREATE_ONLY)
    assert body(store, "new").startswith(b"fresh")


def test_a_delete_is_a_compare_and_swap_where_the_server_enforces_it(store, kind):
    info = store.put_bytes("d", b"newer than what this host saw", {})
    try:
        store.delete("d", expect=wrong(info.version))
        refused = False
    except VersionMismatch:
        refused = True
    assert refused == ("delete:match" in ENFORCED[kind])
    if refused:
        assert body(store, "d") == b"newer than what this host saw"
        store.delete("d", expect=Precondition(info.version))
    with pytest.raises(Exception, match="not found"):
        store.head("d")
    store.delete("d", expect=Precondition(info.version))  # gone already: nothing to refuse


def test_a_read_pinned_to_a_version_never_returns_another_versions_bytes(store, kind):
    old = store.put_bytes("r", b"version one, as the reader opened it", {})
    assert store.read_range("r", 8, 11, version=old.version) == b"one"
    new = store.put_bytes("r", b"VERSION TWO, written by another host", {})
    assert new.version != old.version
    try:
        data = store.read_range("r", 8, 11, version=old.version)
    except VersionMismatch:
        data = None
    if "read:match" in ENFORCED[kind]:
        assert data is None
    else:
        assert data == b"TWO"  # the server ignores the condition: what is there now
    assert store.read_range("r", 8, 11, version=new.version) == b"TWO"
    assert store.read_range("r", 100, 200, version=new.version) == b""  # past the end


def test_the_probe_reports_what_the_server_does(store, kind):
    report = probe_conditions(store)
    assert report.create_only == ("put:create" in ENFORCED[kind])
    assert report.if_match == ("put:match" in ENFORCED[kind])
    assert [k for k in store.list_dir("").objects if k.key.startswith(".mountd-check-")] == []
