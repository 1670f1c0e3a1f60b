"""The reconciler's races, each on a real stack with a real file:// remote, no kernel.

`GatedStore` wraps the real store of the remote and holds its uploads at a gate (a
threading.Event the test opens), so a test can act while an upload is in flight. Nothing is
mocked: every object goes through the real `FileStore` to the remote directory, and the test
checks that directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from mountd.meta import MetaStore
from tests.inprocess.harness import InProcessMount, remote_files, remote_hidden

GATE_TIMEOUT = 60.0


class GatedStore:
    """The real store, with each upload held until `gate` is set; `uploads` lists their keys."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.uploads: list[str] = []
        self._arrived = threading.Condition()

    def upload(self, src: Path, key: str, metadata: Any, **kw: Any) -> Any:
        with self._arrived:
            self.uploads.append(key)
            self._arrived.notify_all()
        if not self.gate.wait(GATE_TIMEOUT):
            raise TimeoutError(f"the test never opened the gate for {key}")
        return self.inner.upload(src, key, metadata, **kw)

    def wait_uploads(self, n: int, timeout: float = 10.0) -> bool:
        """Whether `n` uploads reached the gate within `timeout` (from the test thread)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.uploads) >= n, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def gated(stores: list[GatedStore]) -> Any:
    """A `wrap` for make_mount that keeps the GatedStore it made in `stores`."""
    def wrap(inner: Any) -> GatedStore:
        stores.append(GatedStore(inner))
        return stores[-1]
    return wrap


def _remote(tmp_path: Path, name: str = "repo") -> Path:
    return tmp_path / name / "remote"


def _reconciler(m: InProcessMount) -> dict[str, int]:
    return m.statistics()["reconciler"]


def test_rename_and_rewrite_while_the_upload_is_in_flight(make_mount, tmp_path):
    """While the first bytes of `f` and of `h` are being sent: `f` is renamed to `g` and a new `f`
    is written (the upload in flight succeeds, for a key that no longer means that file), and `h`
    is renamed to `k` and rewritten (the upload in flight sends bytes nobody wants at `h`). Each
    key must end with the bytes its name holds now, and nothing at `h`."""
    stores: list[GatedStore] = []
    m = make_mount(wrap=gated(stores))
    m.create("/data/f", b"f, first version")
    m.create("/data/h", b"h, first version")
    assert stores[0].wait_uploads(2), "the uploads of f and h did not start"
    m.rename("/data/f", "/data/g")
    m.create("/data/f", b"a new f")
    m.rename("/data/h", "/data/k")
    m.create("/data/k", b"h renamed to k and rewritten, longer")
    stores[0].gate.set()
    m.drain()
    want = {"f": b"a new f", "g": b"f, first version", "k": b"h renamed to k and rewritten, longer"}
    assert remote_files(_remote(tmp_path)) == want
    assert remote_hidden(_remote(tmp_path)) == []
    assert {name: m.read_file(f"/data/{name}") for name in want} == want
    assert m.stack.meta.journal_count() == 0


def test_evacuation_of_a_key_that_holds_another_inodes_bytes(make_mount, tmp_path):
    """`mv a b; mv c a` (log rotation), with the copy to `b` held back: before key `a` is
    overwritten with c's bytes, its object (b's only copy in the remote) is saved to a hidden
    key; `b` is copied from there later, and the hidden key is deleted."""
    m = make_mount(delay="1h")  # nothing is uploaded but by drain()
    m.create("/data/a", b"AAAA old log")
    m.create("/data/c", b"CCCC current log")
    m.drain()
    m.rename("/data/a", "/data/b")
    m.rename("/data/c", "/data/a")
    m.drain(hold=lambda key: key == "b" or key.startswith(".mountd-tmp-"))
    remote = _remote(tmp_path)
    assert remote_files(remote) == {"a": b"CCCC current log"}  # b not copied yet, c deleted
    hidden = remote_hidden(remote)
    assert len(hidden) == 1 and (remote / hidden[0]).read_bytes() == b"AAAA old log"
    assert _reconciler(m)["evacuated"] == 1
    m.drain()
    assert remote_files(remote) == {"a": b"CCCC current log", "b": b"AAAA old log"}
    assert remote_hidden(remote) == []
    assert m.read_file("/data/b") == b"AAAA old log"


def test_identical_content_written_twice_at_once_is_sent_once(make_mount, tmp_path):
    """Two files with the same bytes, closed together: one upload, then one server-side copy
    (the second waits for the first instead of sending the same bytes again)."""
    stores: list[GatedStore] = []
    m = make_mount(wrap=gated(stores))
    store = stores[0]
    data = os.urandom(200_000)
    m.create("/data/x", data)
    m.create("/data/y", data)
    assert store.wait_uploads(1), "no upload started"
    reconciler = m.stack.reconciler

    def second_waits_or_uploads() -> bool:
        # `_uploading`: the reconciler's events of content being sent (see reconcile.py)
        waiting = any(e.statistics().tasks_waiting for e in reconciler._uploading.values())
        return waiting or len(store.uploads) > 1

    m.until(second_waits_or_uploads)
    store.gate.set()
    m.drain()
    assert len(store.uploads) == 1
    stats = _reconciler(m)
    assert (stats["uploads"], stats["dedup_copied"], stats["bytes_deduplicated"]) == (1, 1, len(data))
    assert remote_files(_remote(tmp_path)) == {"x": data, "y": data}


class CrashAt(trio.abc.Instrument):
    """Counts the steps of the tasks that apply a journal entry (`Uploader._run_one`) once armed;
    after step `k` it cancels the whole stack there, as a crash would stop it (k=0: never)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.armed = False
        self.steps = 0
        self.mount: InProcessMount | None = None

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.armed and task.name.endswith("Uploader._run_one"):
            self.steps += 1
            if self.steps == self.k:
                assert self.mount is not None
                self.mount.crash()
                self.armed = False  # what runs after the crash is not counted


def _run_until_crash(make_mount, name: str, k: int) -> CrashAt:
    """v1 of `f` uploaded, then v2 written and closed; the stack is crashed at step k of its upload
    (or, with k=0, left to finish and stopped)."""
    crash = CrashAt(k)
    m = make_mount(name, instruments=(crash,), start=False)
    crash.mount = m
    m.start()
    m.create("/data/f", b"version one")
    m.drain()
    m.run_sync(setattr, crash, "armed", True)
    m.create("/data/f", b"version two, closed before the crash")
    if k == 0:
        m.drain()
        m.stop()
    else:
        m.join()  # the instrument cancels the stack; it closes its db and cache on the way out
    return crash


def _journal_entries(local: Path) -> int:
    """The entries in a local tier's journal, read while no stack has it open."""
    meta = MetaStore(local / "meta.db")
    try:
        return meta.journal_count()
    finally:
        meta.close()


def test_crash_at_every_await_point_of_one_upload(make_mount, tmp_path):
    """For each step k of the task that uploads v2 of `f`: crash there (abandon the stack, its
    worker threads and its in-memory state), open the same local tier and db again, drain: the
    remote holds exactly the bytes that were closed, and nothing the crash left half done
    (a hand-over to the cache, a download) stays on the local tier."""
    v2 = b"version two, closed before the crash"
    steps = _run_until_crash(make_mount, "count", 0).steps
    assert steps >= 3, f"the upload took only {steps} task steps"
    left_pending = []
    for k in range(1, steps + 1):
        name = f"crash-{k}"
        crash = _run_until_crash(make_mount, name, k)
        assert crash.steps == k
        local = tmp_path / name / "local"
        left_pending.append(_journal_entries(local))
        again = make_mount(name)
        again.drain()
        assert remote_files(_remote(tmp_path, name)) == {"f": v2}, k
        assert again.read_file("/data/f") == v2
        assert again.stack.meta.journal_count() == 0
        assert [p.name for p in (local / "tmp").iterdir() if p.suffix != ".discard"] == [], k
        again.stop()
    # the crashes span the whole upload: the first left its entry to the next start, the last none
    assert left_pending[0] == 1 and left_pending[-1] == 0, left_pending
