"""Hard links on a remote path, on the daemon's own stack with a real file:// remote (no kernel).

Each name of a linked file is an object of its own, made by a server-side copy of the first, and
every name's metadata carries one link-group id; a mount that meets the names again (another
host, or a fresh local tier) makes them one inode. The end-to-end tests over FUSE and S3 are in
tests/test_posix.py and tests/test_programs.py.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mountd.vfs.namespace import META_LINK_GROUP
from tests.inprocess.harness import remote_files


def _group(m, key: str) -> str | None:
    store = m.stack.stores["main"]
    return (m.run_sync(store.head, key).metadata or {}).get(META_LINK_GROUP)


@pytest.mark.parametrize("dedup", ["true", "false"])
def test_names_of_a_linked_file_are_objects_copied_server_side(make_mount, tmp_path: Path,
                                                                dedup: str) -> None:
    m = make_mount(writeback=f"dedup = {dedup}")  # without dedup too: a link's copy is not a dedup
    m.mkdir("/data/sub")
    m.create("/data/a", b"first bytes")
    m.drain()
    sent = m.statistics()["reconciler"]["bytes_uploaded"]
    attr = m.link("/data/a", "/data/sub/b")
    assert attr.nlink == 2 and attr.ino == m.getattr("/data/a").ino == m.getattr("/data/sub/b").ino
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"a": b"first bytes", "sub/b": b"first bytes"}
    assert m.statistics()["reconciler"]["bytes_uploaded"] == sent  # the new name: a copy, no bytes sent
    assert _group(m, "a") is not None and _group(m, "a") == _group(m, "sub/b")

    # a write through one name is seen through the other, and reaches both objects, sent once
    m.write_at("/data/sub/b", 0, b"FIRST")
    assert m.read_file("/data/a") == b"FIRST bytes"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"a": b"FIRST bytes", "sub/b": b"FIRST bytes"}
    assert m.statistics()["reconciler"]["bytes_uploaded"] == sent + len(b"FIRST bytes")

    # unlink of one name (not the first) keeps the other, and its object
    m.unlink("/data/sub/b")
    assert m.getattr("/data/a").nlink == 1 and m.read_file("/data/a") == b"FIRST bytes"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"a": b"FIRST bytes"}


def test_a_mount_from_an_empty_local_tier_makes_the_names_one_inode_again(make_mount, tmp_path: Path) -> None:
    first = make_mount()
    first.mkdir("/data/x")
    first.create("/data/x/one", b"shared")
    first.link("/data/x/one", "/data/two")
    first.link("/data/two", "/data/x/three")
    first.drain()
    first.stop()
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "remote").symlink_to(tmp_path / "repo" / "remote")
    fresh = make_mount("fresh")
    inos = {fresh.getattr(p).ino for p in ("/data/x/one", "/data/two", "/data/x/three")}
    assert len(inos) == 1 and fresh.getattr("/data/two").nlink == 3
    assert fresh.statistics()["vfs"]["links_joined"] == 2
    # still one file: a write through one name shows through the others and reaches every object
    fresh.write_at("/data/x/three", 0, b"SH")
    assert fresh.read_file("/data/x/one") == b"SHared"
    fresh.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"x/one": b"SHared", "two": b"SHared",
                                                          "x/three": b"SHared"}


def test_hard_links_across_kinds_of_path_fail_as_across_file_systems(make_mount) -> None:
    m = make_mount()
    m.create("/data/f", b"x")
    m.create("/local-f", b"x")
    for src, dst in (("/data/f", "/local-link"), ("/local-f", "/data/link")):
        with pytest.raises(OSError) as e:
            m.link(src, dst)
        assert e.value.errno == errno.EXDEV
    m.mkdir("/data/d")
    with pytest.raises(OSError) as e:
        m.link("/data/d", "/data/dlink")
    assert e.value.errno == errno.EPERM
