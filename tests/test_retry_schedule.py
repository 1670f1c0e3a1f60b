"""The uploader's retry schedule: one per journal entry, with jitter, and the one it announces.

The unit tests run the real `Uploader` on a real `MetaStore` under trio's MockClock, so minutes
of back-off take milliseconds; the entry's `apply` fails the way the reconciler does when a remote
refuses an upload. The end-to-end test makes a real file:// remote refuse writes (chattr +i) under
a real mount, unmounts it, and reads every attempt from the daemon's log.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
from datetime import datetime

import pytest
import trio
import trio.testing

from mountd.errors import RemoteError
from mountd.meta import MetaStore
from mountd.writeback.journal import Journal
from mountd.writeback.uploader import Retry, TransferSlots, Uploader, backoff
from tests.conftest import mountd_cmd, wait_until


def test_backoff_doubles_with_jitter_and_never_exceeds_the_maximum():
    rng = random.Random(7)
    for attempts in range(1, 40):
        base = min(300.0, 1.0 * 2 ** (attempts - 1))
        waits = [backoff(attempts, 1.0, 300.0, rng) for _ in range(200)]
        assert all(base / 2 <= w <= base for w in waits), (attempts, min(waits), max(waits))
        assert max(waits) - min(waits) > base / 4, "entries that fail together must spread out"


async def _run_failing_entry(tmp_path, error: Exception, *, seconds: float, drain_steps: bool,
                             retry_initial: float = 1.0,
                             retry_max: float = 16.0) -> tuple[list[float], list[float]]:
    """Run one entry whose apply always raises `error` for `seconds` of (mock) time; returns the
    times of its attempts and the `due` the journal held after each (the announced next attempt)."""
    attempts: list[float] = []
    announced: list[float] = []

    class RecordingMetaStore(MetaStore):
        def journal_failed(self, remote: str, key: str, seq: int, error: str, retry_at: float) -> None:
            announced.append(retry_at)
            super().journal_failed(remote, key, seq, error, retry_at)

    meta = RecordingMetaStore(tmp_path / "meta.db")
    journal = Journal(meta, delay=0.0, clock=trio.current_time)

    async def apply(entry) -> None:
        attempts.append(trio.current_time())
        await trio.sleep(0.01)  # the remote's answer takes a moment
        raise error

    uploader = Uploader(meta, journal, apply, slots=TransferSlots(2), retry_initial=retry_initial,
                        retry_max=retry_max, rng=random.Random(1))
    journal.put("main", "model.bin")
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        with trio.move_on_after(seconds):
            while drain_steps:  # what `mountd umount` does while it waits: wait_drained(0.5) in a loop
                await uploader.wait_drained(0.5)
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    meta.close()
    return attempts, announced


@pytest.mark.parametrize("drain_steps", [False, True], ids=["serving", "while-draining"])
def test_a_failing_entry_is_retried_when_announced_and_not_before(tmp_path, drain_steps):
    clock = trio.testing.MockClock(autojump_threshold=0)
    attempts, announced = trio.run(
        lambda: _run_failing_entry(tmp_path, RemoteError("main", "access denied"), seconds=120,
                                   drain_steps=drain_steps), clock=clock)
    # each attempt starts at the due time announced after the previous failure (the log's "retry in")
    for started, due in zip(attempts[1:], announced, strict=False):
        assert due <= started < due + 0.05, (started, due)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        base = min(16.0, 2.0 ** (n - 1))
        assert base / 2 <= gap <= base + 0.05, (n, gap, gaps)
    # 1 + the doublings to 16 s + 120 s at 8-16 s: at most about 15 (the old drain made it ~240)
    assert 8 <= len(attempts) <= 16, attempts


def test_an_entry_that_waits_on_another_backs_off_to_retry_initial(tmp_path):
    clock = trio.testing.MockClock(autojump_threshold=0)
    attempts, _ = trio.run(lambda: _run_failing_entry(tmp_path, Retry("waiting for a copy"), seconds=30,
                                                      drain_steps=True, retry_initial=2.0), clock=clock)
    gaps = [round(b - a - 0.01, 3) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[:5] == [0.2, 0.4, 0.8, 1.6, 2.0], gaps
    assert all(g == 2.0 for g in gaps[4:]), gaps


_ATTEMPT = re.compile(r"^(\S+ \S+) WARNING .*write-back of main:stuck\.bin failed \(attempt (\d+), "
                      r"retry in ([\d.]+)s\)")


@pytest.mark.slow
def test_unmount_with_a_refusing_remote_keeps_the_announced_back_off(make_repo):
    """A file:// remote that refuses writes (immutable directory) while `mountd umount` drains:
    every attempt in the daemon's log comes no earlier than the previous one announced."""
    repo = make_repo()
    repo.expected_log_errors.append("write-back of")
    repo.config.write_text(repo.config.read_text()
                           .replace('retry_initial = "0.2s"', 'retry_initial = "1s"')
                           .replace('retry_max = "2s"', 'retry_max = "4s"')
                           .replace('drain_timeout = "60s"', 'drain_timeout = "10s"'))
    repo.start()
    subprocess.run(["chattr", "+i", str(repo.remote_dir)], check=True)
    try:
        (repo.data / "stuck.bin").write_bytes(b"the remote refuses this")
        wait_until(lambda: "attempt 1," in repo.log(), timeout=30)
        status = mountd_cmd("status", str(repo.mp)).stdout
        assert re.search(r"stuck\.bin  attempts=\d+  next attempt in \d+s", status), status
        # the daemon stops draining after drain_timeout: an umount that waits longer gets no answer
        r = mountd_cmd("umount", str(repo.mp), "--timeout", "6s", check=False, timeout=90)
        assert "1 write-back entries left pending" in r.stderr, r.stderr
        repo.proc.wait(timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(repo.remote_dir)], check=True)
    lines = [m.groups() for m in map(_ATTEMPT.match, repo.log().splitlines()) if m]
    times = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t, _, _ in lines]
    assert [int(n) for _, n, _ in lines] == list(range(1, len(lines) + 1))
    for (prev, (_, _, wait)), now in zip(zip(times, lines, strict=False), times[1:], strict=False):
        assert now - prev >= float(wait) - 0.1, (lines, times)
    # about 11 s of unmount and drain at 2-4 s a retry after the first ones; at 0.5 s it was 20+
    assert 3 <= len(lines) <= 10, lines
    db = sqlite3.connect(repo.local / "meta.db")
    (attempts,) = db.execute("SELECT attempts FROM journal WHERE key LIKE '%stuck.bin'").fetchone()
    assert attempts == len(lines), "the entry stays journaled with its count, for the next mount"
