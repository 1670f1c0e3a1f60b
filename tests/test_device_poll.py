"""Polling the FUSE device after each request (`mount.device_poll`): a request that follows
within the poll window is read without the daemon sleeping in epoll, so a program that sends
requests back to back (a stat loop, `ls -l`, a create loop) does not pay for waking an idle CPU
on each one."""

from __future__ import annotations

import os


def polled(repo) -> int:
    return int(repo.status()["statistics"]["fuse"]["read_while_polling"])


def xattr_loop(path, n: int) -> None:
    # the kernel caches no xattr answers: each call is one request to the daemon
    for _ in range(n):
        assert os.getxattr(path, "user.mountd.state") == b"dirty"


def test_back_to_back_requests_are_read_while_polling(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    path = repo.data / "f.txt"
    path.write_bytes(b"x")
    before = polled(repo)
    xattr_loop(path, 400)
    # each getxattr follows the last reply within microseconds; a few may be late on a busy machine
    assert polled(repo) - before >= 200


def test_device_poll_zero_never_polls(make_repo):
    repo = make_repo(delay="1h", extra_toml='device_poll = "0s"\n')
    repo.start()
    path = repo.data / "f.txt"
    path.write_bytes(b"x")
    xattr_loop(path, 400)
    assert polled(repo) == 0
