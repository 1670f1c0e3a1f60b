"""New files take empty data files made ahead of need (mountd/spares.py), so that `create` does
not allocate an inode on the trio thread."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mountd.spares import SpareFiles
from tests.conftest import wait_until


def _inodes(directory) -> set[int]:
    return {e.inode() for e in os.scandir(directory)}


def test_spares_left_by_an_earlier_run_are_taken_over_and_anything_else_there_is_removed(tmp_path):
    d = tmp_path / "spare"
    d.mkdir()
    for n in range(3):
        (d / f"old{n}").touch()
    (d / "not-empty").write_bytes(b"x")
    old = {(d / f"old{n}").stat().st_ino for n in range(3)}
    spares = SpareFiles(d, keep=8)
    try:
        assert len(spares) == 3
        assert _inodes(d) == old
        dest = tmp_path / "data"
        dest.mkdir()
        fd = spares.take(dest / "a")
        assert fd is not None
        os.write(fd, b"hello")
        os.close(fd)
        assert (dest / "a").read_bytes() == b"hello"
        assert (dest / "a").stat().st_ino in old
        # a spare that cannot be moved is dropped, and the caller is told to create the file itself
        assert spares.take(tmp_path / "no-such-dir" / "b") is None
        assert len(spares) == 1 and len(_inodes(d)) == 1
        assert (spares.taken, spares.missed) == (1, 0)
    finally:
        spares.close()


def test_files_created_through_the_mount_take_spares_and_survive_a_kill9(make_repo):
    repo = make_repo(delay="1h")  # the data files stay in the local tier until `sync`
    repo.start()
    spare_dir = repo.local / "spare"
    wait_until(lambda: repo.status()["statistics"]["local"]["spare_files_ready"] >= 100)
    made_ahead = _inodes(spare_dir)
    bodies = {f"f{i:03d}": b"%d\n" % i * (i + 1) for i in range(100)}
    for name, body in bodies.items():
        with open(repo.data / name, "wb") as f:
            f.write(body)
    local = repo.status()["statistics"]["local"]
    assert local["creates_from_spares"] == 100, local
    assert len(_inodes(repo.local / "data") & made_ahead) == 100
    left = _inodes(spare_dir)
    repo.kill9()
    repo.start()
    assert {name: (repo.data / name).read_bytes() for name in bodies} == bodies
    repo.sync()
    assert {name: (repo.remote_dir / name).read_bytes() for name in bodies} == bodies
    assert left <= _inodes(spare_dir)  # the spares of the killed run were taken over, not deleted


def test_spares_are_turned_off_when_the_data_directory_is_another_file_system(tmp_path):
    d = tmp_path / "spare"
    d.mkdir()
    for n in range(2):
        (d / f"old{n}").touch()
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: a rename into it fails with EXDEV
    try:
        assert os.stat(other).st_dev != os.stat(d).st_dev
        spares = SpareFiles(d, keep=8)
        assert len(spares) == 2
        assert spares.take(other / "a") is None
        assert (spares.keep, len(spares)) == (0, 0)
        assert spares.take(other / "b") is None
        assert not (other / "a").exists()
    finally:
        shutil.rmtree(other)
