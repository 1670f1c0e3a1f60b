"""Moving files and trees out of a remote (into a local-only path or another remote), on the
daemon's own stack with real file:// remotes and no kernel.

The rename is one transaction; a file whose bytes are only in its object departs and is fetched in
the background (vfs/departures.py). `HeldDownloads` wraps the real store and holds its whole-object
downloads (the departures' fetches) until the test lets them go, so a test can act, crash and
restart while files are departing. Reads go on through ranged reads, which it does not hold.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess.harness import remote_files, remote_hidden

HOLD_TIMEOUT = 60.0
SECOND_REMOTE = """
    [[remote]]
    name = "second"
    url = "file://{root}"
    at = "/second"
    """


class HeldDownloads:
    """The real store; each `download` waits until `go` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.go = threading.Event()
        self.downloads: list[str] = []
        self._arrived = threading.Condition()

    def download(self, key: str, dest: Path, **kw: Any) -> Any:
        with self._arrived:
            self.downloads.append(key)
            self._arrived.notify_all()
        if not self.go.wait(HOLD_TIMEOUT):
            raise TimeoutError(f"the test never let the download of {key} go")
        return self.inner.download(key, dest, **kw)

    def wait_downloads(self, n: int, timeout: float = 10.0) -> bool:
        """Whether `n` downloads reached the hold within `timeout` (from the test thread)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.downloads) >= n, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _uploaded(m, files: dict[str, bytes]) -> None:
    """Files written through the mount, uploaded, and their local copies handed to the cache."""
    for path, data in files.items():
        m.create(path, data)
    m.drain()
    m.until(lambda: m.stack.fs.copies.stats.adopted >= len(files))


def test_a_tree_moved_to_a_local_only_path_is_fetched_after_the_rename_and_survives_a_crash(
        make_mount, tmp_path: Path) -> None:
    remote = tmp_path / "repo" / "remote"
    held: list[HeldDownloads] = []
    m = make_mount(wrap=lambda s: held.append(HeldDownloads(s)) or held[-1])
    m.mkdir("/data/run")
    m.mkdir("/data/run/sub")
    want = {"/data/run/weights.bin": b"w" * 300_000, "/data/run/sub/log.txt": b"step 1\n"}
    _uploaded(m, want)
    m.run(m.stack.reader.clear)  # (else the cache, which took the uploaded files, serves the fetches)
    m.mkdir("/scratch")
    m.rename("/data/run", "/scratch/run")  # returns with nothing fetched: the downloads are held
    assert held[0].wait_downloads(2)
    assert m.readdir("/data") == [] and m.readdir("/scratch/run") == ["sub", "weights.bin"]
    assert m.read_file("/scratch/run/weights.bin") == want["/data/run/weights.bin"]  # read from the object
    assert m.statistics()["departures"]["departing"] == 2
    with pytest.raises(OSError) as refused:  # back into a remote before its bytes are here: mv copies
        m.rename("/scratch/run", "/data/back")
    assert refused.value.errno == errno.EXDEV
    assert sorted(remote_files(remote)) == ["run/sub/log.txt", "run/weights.bin"]  # kept until fetched
    m.stop()  # (as a crash: the fetches were in flight)
    held[0].go.set()
    again = make_mount()
    again.drain()
    assert again.statistics()["departures"]["departing"] == 0
    assert again.read_file("/scratch/run/weights.bin") == want["/data/run/weights.bin"]
    assert again.read_file("/scratch/run/sub/log.txt") == want["/data/run/sub/log.txt"]
    assert remote_files(remote) == {}  # the source objects went once the bytes were here
    assert remote_hidden(remote) == []


def test_a_file_moved_to_another_remote_is_sent_there_once_and_deleted_here(make_mount, tmp_path) -> None:
    second = tmp_path / "second-remote"
    second.mkdir()
    m = make_mount(extra=SECOND_REMOTE.format(root=second))
    _uploaded(m, {"/data/model.bin": b"m" * 100_000})
    uploads = m.statistics()["reconciler"]["uploads"]
    m.rename("/data/model.bin", "/second/model.bin")
    m.drain()
    assert remote_files(tmp_path / "repo" / "remote") == {}
    assert remote_files(second) == {"model.bin": b"m" * 100_000}
    assert m.statistics()["reconciler"]["uploads"] == uploads + 1
    assert m.read_file("/second/model.bin") == b"m" * 100_000


def test_a_departing_file_written_to_and_its_old_name_reused_loses_nothing(make_mount, tmp_path) -> None:
    remote = tmp_path / "repo" / "remote"
    held: list[HeldDownloads] = []
    m = make_mount(wrap=lambda s: held.append(HeldDownloads(s)) or held[-1])
    _uploaded(m, {"/data/a": b"old a", "/data/b": b"old b"})
    m.run(m.stack.reader.clear)  # (the fetches go to the store, held)
    m.mkdir("/scratch")
    m.rename("/data/a", "/scratch/a")
    m.rename("/data/b", "/scratch/b")
    m.create("/data/a", b"a new file at the old name")  # its upload overwrites the key a departs from
    # (b's delete and that of the copy a's bytes were saved to wait for the fetches, held)
    m.drain(hold=lambda key: key == "b" or ".mountd-tmp-" in key)
    assert remote_files(remote)["a"] == b"a new file at the old name"
    held[0].go.set()
    m.write_at("/scratch/b", 0, b"B")  # written while departing: fetched first, then changed
    m.drain()
    assert m.read_file("/scratch/a") == b"old a" and m.read_file("/scratch/b") == b"Bld b"
    assert remote_files(remote) == {"a": b"a new file at the old name"}
    assert remote_hidden(remote) == []


def test_a_departing_file_another_host_replaced_takes_the_newer_bytes_and_leaves_the_object(
        make_mount, tmp_path) -> None:
    """The object a file departs from is replaced by another host (here a tool writing the file://
    remote) before its bytes are fetched: the version the move took is gone from the store, so
    the moved file takes the bytes now at the key, the conflict is recorded, and the other host's
    object stays (the source's delete expects the version the move took). Before, the fetch was
    tried again with back-off forever and nothing could drain."""
    remote = tmp_path / "repo" / "remote"
    held: list[HeldDownloads] = []
    m = make_mount(wrap=lambda s: held.append(HeldDownloads(s)) or held[-1])
    _uploaded(m, {"/data/a": b"old a"})
    m.run(m.stack.reader.clear)  # (the fetch goes to the store, held)
    m.mkdir("/scratch")
    m.rename("/data/a", "/scratch/a")
    assert held[0].wait_downloads(1)
    (remote / "a").write_bytes(b"another host's a")
    held[0].go.set()
    m.drain()
    assert m.read_file("/scratch/a") == b"another host's a"
    assert remote_files(remote) == {"a": b"another host's a"}
    conflicts = m.run_sync(m.stack.meta.conflicts)
    assert [(c["key"], c["resolution"]) for c in conflicts] == [("a", "moved-newer")]
