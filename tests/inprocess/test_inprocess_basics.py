"""The vfs called directly, without a kernel: the facts the mount tests check, in milliseconds."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.inprocess.harness import RENAME_EXCHANGE, remote_files


def test_write_read_upload_and_listing(make_mount, tmp_path):
    m = make_mount(delay="1h")  # uploads only by drain(): one upload of the last bytes
    m.mkdir("/data/d")
    assert m.create("/data/d/f", b"hello") == 5
    m.write_at("/data/d/f", 5, b" world")
    assert m.read_file("/data/d/f") == b"hello world"
    assert m.readdir("/data/d") == ["f"]
    assert m.getattr("/data/d/f").size == 11
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"d/f": b"hello world"}
    assert m.statistics()["reconciler"]["uploads"] == 1


def test_local_only_path_never_reaches_the_remote(make_mount, tmp_path):
    m = make_mount()
    m.mkdir("/scratch")
    m.create("/scratch/f", b"x" * 10)
    m.truncate("/scratch/f", 3)
    assert m.read_file("/scratch/f") == b"xxx"
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {}
    assert m.statistics()["reconciler"]["uploads"] == 0


@pytest.mark.parametrize("root", ["/data", "/scratch"])
def test_errors_are_the_kernels(make_mount, root):
    m = make_mount()
    m.mkdir("/scratch")
    m.mkdir(f"{root}/d")
    m.create(f"{root}/d/f", b"1")
    cases = [
        (lambda: m.read_file(f"{root}/missing"), errno.ENOENT),
        (lambda: m.read_file(f"{root}/d/f/x"), errno.ENOTDIR),
        (lambda: m.mkdir(f"{root}/d"), errno.EEXIST),
        (lambda: m.rmdir(f"{root}/d"), errno.ENOTEMPTY),
        (lambda: m.unlink(f"{root}/d"), errno.EISDIR),
        (lambda: m.rmdir(f"{root}/d/f"), errno.ENOTDIR),
        (lambda: m.rename(f"{root}/d", f"{root}/d/e"), errno.EINVAL),
        (lambda: m.rename(f"{root}/d/f", f"{root}/d"), errno.ENOTEMPTY),
        (lambda: m.rename(f"{root}/d/f", f"{root}/g", RENAME_EXCHANGE), errno.ENOENT),
        (lambda: m.open(f"{root}/d", os.O_RDWR), errno.EISDIR),
    ]
    if root == "/data":  # an exchange with a local-only path (a move in or out is a rename)
        m.mkdir("/xl")
        cases.append((lambda: m.rename(f"{root}/d", "/xl", RENAME_EXCHANGE), errno.EXDEV))
    for call, code in cases:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == code, (call, e.value)


def test_unlinked_open_file_keeps_its_bytes(make_mount, tmp_path):
    m = make_mount()
    m.create("/data/f", b"kept")
    fh = m.open("/data/f", os.O_RDWR)
    m.unlink("/data/f")
    assert m.readdir("/data") == []
    m.write(fh, 4, b"!")
    m.fsync(fh)
    assert m.read(fh) == b"kept!"
    m.close(fh)
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {}


def test_exchange_swaps_contents_and_modes(make_mount, tmp_path):
    m = make_mount()
    m.create("/data/a", b"A", mode=0o600)
    m.create("/data/b", b"BB", mode=0o644)
    m.drain()
    m.rename("/data/a", "/data/b", RENAME_EXCHANGE)
    assert (m.read_file("/data/a"), m.read_file("/data/b")) == (b"BB", b"A")
    assert stat.S_IMODE(m.getattr("/data/b").mode) == 0o600
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {"a": b"BB", "b": b"A"}
