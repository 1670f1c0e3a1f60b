"""`mountd status --watch` on a real terminal (a pty), and `mountd log-level` on a running mount."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import pytest

from tests.conftest import PYTHON, REPO, mountd_cmd

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A program on a pseudo-terminal; `expect` reads its screen output until a pattern shows."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([PYTHON, "-m", "mountd", *args], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=REPO,
                                     env={**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm"})
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never shown; screen output:\n{self.seen[-2000:]}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program ended and closed its side
                    chunk = b""
                if not chunk:
                    assert re.search(pattern, self.seen), f"{pattern!r} never shown:\n{self.seen[-2000:]}"
                    return
                self.seen += ANSI.sub("", chunk.decode(errors="replace"))

    def close(self) -> int:
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)
        return code


@pytest.mark.slow
def test_status_watch_shows_upload_progress_live(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    for i in range(3):
        (repo.data / f"f{i}.bin").write_bytes(os.urandom(100_000))  # distinct: no dedup
    term = Terminal("status", str(repo.mp), "--watch", "--interval", "0.2")
    try:
        term.expect(r"0 done, 3 pending")
        term.expect(r"main:f0\.bin")  # the queue lists the pending entries
        term.expect(r"previews\s+0 B\s+1\.0 GiB")  # the cache tiers, with their caps
        repo.sync()
        term.expect(r"3 done, 0 pending, 0 in flight, 293\.0 KiB sent")
        repo.stop()
        term.expect("is no longer mounted")
    except BaseException:
        term.proc.kill()
        raise
    finally:
        code = term.close()
    assert code == 0


def test_status_watch_of_nothing_mounted_fails_in_one_line(tmp_path):
    r = mountd_cmd("status", str(tmp_path), "--watch", check=False)
    assert r.returncode == 1 and "is not mounted by mountd" in r.stderr and len(r.stderr.splitlines()) == 1


def test_log_level_changes_at_run_time(repo):
    r = mountd_cmd("log-level", str(repo.mp), "warning")
    assert r.stdout.strip() == f"{repo.mp}: log level WARNING"
    mark = len(repo.log())
    (repo.data / "f.txt").write_text("x")
    repo.stop()
    after = repo.log()[mark:]
    assert "draining" not in after and " INFO " not in after and " DEBUG " not in after, after
    assert mountd_cmd("log-level", str(repo.mp), "loud", check=False).returncode == 2
