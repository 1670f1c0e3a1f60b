"""User extended attributes (`user.*`) through a real mount, with real syscalls.

Local-only and remote paths store them like a disk; on remote paths they also travel in the
object's metadata (one `xattr` entry, s3fs-fuse's form: docs/semantics.md), so a mount of the
same bucket from an empty local tier sees them, and a rename keeps them. An attribute that
would not fit in the store's metadata fails at setxattr with E2BIG.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MountedRepo
from tests.servers import REMOTE_KIND_FIXTURE, S3Server
from tests.test_posix import errno_of

XATTR_CREATE, XATTR_REPLACE = os.XATTR_CREATE, os.XATTR_REPLACE
BINARY = bytes(range(256)) + b"\0\xff tail"


def user_names(path: Path) -> list[str]:
    return sorted(n for n in os.listxattr(path) if n.startswith("user.") and not n.startswith("user.mountd."))


def decoded(header: str) -> dict[str, bytes]:
    """The `xattr` metadata entry as s3fs-fuse reads it: URL-encoded JSON of base64 values."""
    return {k: base64.b64decode(v) for k, v in json.loads(urllib.parse.unquote(header)).items()}


def remount_empty(repo: MountedRepo) -> None:
    repo.stop()
    shutil.rmtree(repo.local)
    shutil.rmtree(repo.cache, ignore_errors=True)
    repo.start()


def test_user_xattrs_behave_as_on_a_disk_on_both_kinds_of_path(repo: MountedRepo):
    """set/get/list/remove, binary values, XATTR_CREATE/REPLACE, user.mountd.* read-only, and the
    namespaces not stored (trusted, security, ACLs) ENOTSUP, on files and directories of a
    remote path and of a local-only path."""
    (repo.mp / "scratch").mkdir()
    for area in (repo.data, repo.mp / "scratch"):
        f = area / "f"
        f.write_bytes(b"data")
        d = area / "d"
        d.mkdir()
        for p in (f, d):
            assert user_names(p) == []
            assert errno_of(lambda p=p: os.getxattr(p, "user.comment")) == errno.ENODATA
            os.setxattr(p, "user.comment", b"first")
            os.setxattr(p, "user.bin", BINARY)
            os.setxattr(p, "user.empty", b"")
            assert os.getxattr(p, "user.comment") == b"first"
            assert os.getxattr(p, "user.bin") == BINARY
            assert os.getxattr(p, "user.empty") == b""
            assert user_names(p) == ["user.bin", "user.comment", "user.empty"]
            assert "user.mountd.state" not in os.listxattr(p)  # the read-only ones are read by name
            # flags: CREATE of an existing name, REPLACE of a missing one
            assert errno_of(lambda p=p: os.setxattr(p, "user.comment", b"x", XATTR_CREATE)) == errno.EEXIST
            assert errno_of(lambda p=p: os.setxattr(p, "user.nope", b"x", XATTR_REPLACE)) == errno.ENODATA
            os.setxattr(p, "user.comment", b"second", XATTR_REPLACE)
            os.setxattr(p, "user.new", b"made", XATTR_CREATE)
            assert os.getxattr(p, "user.comment") == b"second"
            assert os.getxattr(p, "user.new") == b"made"
            os.removexattr(p, "user.new")
            assert errno_of(lambda p=p: os.getxattr(p, "user.new")) == errno.ENODATA
            assert errno_of(lambda p=p: os.removexattr(p, "user.new")) == errno.ENODATA
            assert user_names(p) == ["user.bin", "user.comment", "user.empty"]
            # user.mountd.* stays read-only; the namespaces not stored answer ENOTSUP
            assert errno_of(lambda p=p: os.setxattr(p, "user.mountd.state", b"x")) == errno.EPERM
            assert errno_of(lambda p=p: os.removexattr(p, "user.mountd.state")) == errno.EPERM
            assert errno_of(lambda p=p: os.setxattr(p, "user.mountd.mine", b"x")) == errno.EPERM
            for name in ("trusted.x", "security.x", "system.posix_acl_access"):
                assert errno_of(lambda p=p, n=name: os.setxattr(p, n, b"x")) in (errno.ENOTSUP, errno.EINVAL)
                assert errno_of(lambda p=p, n=name: os.getxattr(p, n)) == errno.ENOTSUP
            assert os.getxattr(p, "user.mountd.state") in (b"local", b"dirty", b"uploading", b"clean")
        # the largest value Linux allows, on a local-only path
        big = os.urandom(65536)
        if area != repo.data:
            os.setxattr(f, "user.big", big)
            assert os.getxattr(f, "user.big") == big
    # gone with the file: a new file of the same name has none
    os.unlink(repo.mp / "scratch" / "f")
    (repo.mp / "scratch" / "f").write_bytes(b"again")
    assert user_names(repo.mp / "scratch" / "f") == []
    # a setxattr changes ctime, not mtime
    st = os.stat(repo.data / "f")
    os.setxattr(repo.data / "f", "user.later", b"1")
    st2 = os.stat(repo.data / "f")
    assert st2.st_mtime_ns == st.st_mtime_ns and st2.st_ctime_ns >= st.st_ctime_ns


def _server_repo(make_repo, request, kind: str) -> tuple[MountedRepo, Callable[[str], dict[str, str]]]:
    """A mount of a fresh bucket of `kind` at /data, and a reader of an object's user metadata."""
    if kind == "file":
        repo = make_repo()

        def meta(key: str) -> dict[str, str]:
            return dict(json.loads(os.getxattr(repo.remote_dir / key, "user.mountd.meta")))
        return repo, meta
    server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data"))
    if kind == "s3":
        def s3_meta(key: str) -> dict[str, str]:
            return dict(server.client().head_object(Bucket=bucket, Key=key)["Metadata"])
        return repo, s3_meta
    return repo, lambda key: {}


@pytest.mark.parametrize("kind", ["file", "s3"])  # (Azurite and the GCS emulator: the same code)
def test_remote_xattrs_survive_a_remount_from_an_empty_local_tier_and_a_rename(make_repo, request, kind):
    repo, object_meta = _server_repo(make_repo, request, kind)
    repo.start()
    d = repo.data / "models"
    d.mkdir()
    # set before the first upload: sent with it
    (d / "new.bin").write_bytes(b"new")
    os.setxattr(d / "new.bin", "user.origin", b"before upload")
    # set after the upload: a metadata-only update, the bytes not sent again
    (d / "old.bin").write_bytes(b"old" * 1000)
    repo.sync()
    uploads = repo.status()["statistics"]["reconciler"]["uploads"]
    os.setxattr(d / "old.bin", "user.origin", b"after upload")
    os.setxattr(d / "old.bin", "user.bin", BINARY)
    os.setxattr(d, "user.dir", b"on a directory")
    os.setxattr(repo.data, "user.attach", b"local only")  # the attach point has no object: kept here
    (d / "gone.bin").write_bytes(b"g")
    os.setxattr(d / "gone.bin", "user.x", b"1")
    repo.sync()
    os.removexattr(d / "gone.bin", "user.x")
    (d / "moved.bin").write_bytes(b"to move")
    os.setxattr(d / "moved.bin", "user.kept", b"by the rename")
    repo.sync()
    os.rename(d / "moved.bin", d / "renamed.bin")  # a server-side copy of the uploaded object
    repo.sync()
    assert os.getxattr(repo.data, "user.mountd.state") == b"clean"  # nothing waits to be sent
    assert os.getxattr(repo.data, "user.attach") == b"local only"
    stats = repo.status()["statistics"]["reconciler"]
    assert stats["uploads"] - uploads == 2  # gone.bin and moved.bin only
    assert stats["metadata_updates"] >= 2
    if kind in ("file", "s3"):
        assert decoded(object_meta("models/old.bin")["xattr"]) == {"user.origin": b"after upload",
                                                                   "user.bin": BINARY}
        assert decoded(object_meta("models/renamed.bin")["xattr"]) == {"user.kept": b"by the rename"}
        assert "xattr" not in object_meta("models/gone.bin")
    remount_empty(repo)
    d = repo.data / "models"
    assert os.getxattr(d / "new.bin", "user.origin") == b"before upload"
    assert os.getxattr(d / "old.bin", "user.origin") == b"after upload"
    assert os.getxattr(d / "old.bin", "user.bin") == BINARY
    assert user_names(d / "old.bin") == ["user.bin", "user.origin"]
    assert os.getxattr(d, "user.dir") == b"on a directory"
    assert user_names(repo.data) == []
    assert user_names(d / "gone.bin") == []
    assert os.getxattr(d / "renamed.bin", "user.kept") == b"by the rename"
    assert (d / "old.bin").read_bytes() == b"old" * 1000
    # changed again after the remount: still a metadata update
    os.removexattr(d / "old.bin", "user.bin")
    repo.sync()
    remount_empty(repo)
    assert user_names(repo.data / "models" / "old.bin") == ["user.origin"]


def test_s3_xattrs_beyond_the_metadata_limit_fail_at_setxattr(make_repo, s3_server: S3Server):
    """S3 keeps 2 KiB of user metadata per object: E2BIG at once, and nothing fails to upload."""
    bucket = s3_server.new_bucket()
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    f = repo.data / "f"
    f.write_bytes(b"x")
    assert errno_of(lambda: os.setxattr(f, "user.huge", os.urandom(1500))) == errno.E2BIG
    os.setxattr(f, "user.a", os.urandom(600))
    os.setxattr(f, "user.b", os.urandom(600))
    # each of these fits alone; together with the others they do not
    assert errno_of(lambda: os.setxattr(f, "user.c", os.urandom(600))) == errno.E2BIG
    assert user_names(f) == ["user.a", "user.b"]
    repo.sync()
    assert set(decoded(s3_server.client().head_object(Bucket=bucket, Key="f")["Metadata"]["xattr"])) == {
        "user.a", "user.b"}
    st = repo.status()
    assert st["pending_uploads"] == 0
    assert os.getxattr(f, "user.mountd.state") == b"clean"
    # a local-only path has no such limit (up to Linux's 64 KiB per value)
    (repo.mp / "scratch").mkdir()
    g = repo.mp / "scratch" / "g"
    g.write_bytes(b"y")
    os.setxattr(g, "user.huge", os.urandom(1500))


def test_tools_copy_xattrs_into_both_kinds_of_path(repo: MountedRepo, tmp_path: Path):
    """`cp --preserve=xattr` and `rsync -X` (when installed) carry user attributes in, and out
    without the read-only user.mountd.* ones (they are not listed)."""
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    try:
        os.setxattr(src, "user.tool", b"copied")
    except OSError as e:
        pytest.skip(f"the test's own directory has no user xattrs: {e}")
    (repo.mp / "scratch").mkdir()
    for area in (repo.data, repo.mp / "scratch"):
        subprocess.run(["cp", "--preserve=xattr", str(src), str(area / "by-cp")], check=True)
        assert os.getxattr(area / "by-cp", "user.tool") == b"copied"
        out = tmp_path / f"out-{area.name}"
        subprocess.run(["cp", "--preserve=xattr", str(area / "by-cp"), str(out)], check=True)
        assert {n for n in os.listxattr(out) if n.startswith("user.")} == {"user.tool"}
        if shutil.which("rsync"):
            for _ in range(2):  # the second run updates a file that exists, removing names it lacks
                subprocess.run(["rsync", "-X", "-I", str(src), str(area / "by-rsync")], check=True)
            assert os.getxattr(area / "by-rsync", "user.tool") == b"copied"
    repo.sync()
    remount_empty(repo)
    assert os.getxattr(repo.data / "by-cp", "user.tool") == b"copied"


def test_xattr_rows_go_with_their_inode(tmp_path: Path):
    """meta.db keeps them per inode and drops them when the inode is freed."""
    from mountd.meta import MetaStore

    meta = MetaStore(tmp_path / "meta.db")
    with meta.transaction():
        a = meta.create_inode(mode=0o100644, uid=0, gid=0, remote=None)
        b = meta.create_inode(mode=0o100644, uid=0, gid=0, remote=None)
        meta.xattr_set(a.ino, b"user.x", b"1")
        meta.xattr_set(b.ino, b"user.y", b"2")
        meta.delete_inode(a.ino)
    assert meta.xattrs(a.ino) == {}
    assert meta.xattrs(b.ino) == {b"user.y": b"2"}
    meta.close()


def test_s3_objects_written_by_others_show_their_xattrs(make_repo, s3_server: S3Server):
    """An object as s3fs-fuse writes one (`x-amz-meta-xattr`: URL-encoded JSON of base64 values)
    shows its attributes; an unreadable entry shows none and breaks nothing."""
    bucket = s3_server.new_bucket()
    b64 = [base64.b64encode(v).decode() for v in (b"s3fs", b"\0\1\2")]
    header = urllib.parse.quote('{"user.from":"' + b64[0] + '","user.bin":"' + b64[1] + '"}')
    s3_server.put(bucket, "by-s3fs", b"a", {"mode": "33188", "xattr": header})
    s3_server.put(bucket, "junk", b"b", {"xattr": "%7Bnot json"})
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    assert os.getxattr(repo.data / "by-s3fs", "user.from") == b"s3fs"
    assert os.getxattr(repo.data / "by-s3fs", "user.bin") == b"\0\1\2"
    assert user_names(repo.data / "junk") == []
    assert (repo.data / "junk").read_bytes() == b"b"
