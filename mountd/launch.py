"""Starting a mount's daemon: in the background (returning once the mount answers) or in this process.

It owns the readiness handshake between whoever starts a daemon (`mountd mount`, `mount.mountd`)
and the daemon: the starter passes the write end of a pipe in `MOUNTD_READY_FD`, and the daemon
writes one line to it, `READY` once the mount answers or `ERROR <reason>` when it cannot mount.
A starter that reads neither (the daemon died first) points at the daemon's log. It never
prints and never exits the process: a failure is a `MountdError` with a one-line message, for
the caller to show as it shows its other errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mountd.config import RepoConfig
from mountd.errors import LaunchError, MountdError
from mountd.mount_options import fuse_options

READY_FD_ENV = "MOUNTD_READY_FD"


def take_ready_fd() -> int:
    """The pipe this process must report readiness on (-1: nobody waits), taken out of the
    environment so that no child inherits the duty."""
    return int(os.environ.pop(READY_FD_ENV, "-1"))


class ReadyPipe:
    """The daemon's end of the handshake: one line, written once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def tell(self, line: str) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, line.encode() + b"\n")
            os.close(self.fd)
        except OSError:
            pass  # the starter is gone: nobody to tell
        self.fd = -1


def start_background(source: str, mountpoint: str, local_path: Path, *, require_remotes: bool, log_level: str,
                     log_file: str | None, options: Sequence[str]) -> None:
    """Start `mountd mount --foreground` detached (own session, output to its log) and return once
    the mount answers; raises LaunchError with the daemon's own reason when it does not."""
    log_path = log_file or os.path.join(str(local_path), "mountd.log")
    args = [sys.executable, "-m", "mountd", "mount", source, mountpoint, "--foreground",
            "--log-level", log_level]
    if require_remotes:
        args.append("--require-remotes")
    for o in options:
        args += ["-o", o]
    read_fd, write_fd = os.pipe()
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "ab") as logf:
            subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                             pass_fds=(write_fd,), env={**os.environ, READY_FD_ENV: str(write_fd)},
                             close_fds=True)
    except OSError as e:
        os.close(read_fd)
        raise LaunchError(f"cannot start the daemon (log {log_path}): {e.strerror or e}") from None
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        line = r.readline().decode(errors="replace").strip()
    if line == "READY":
        return
    if line.startswith("ERROR "):
        raise LaunchError(line[6:])
    raise LaunchError(f"the daemon exited before the mount was ready; see {log_path}")


def run_foreground(config: RepoConfig, mountpoint: str, *, require_remotes: bool,
                   options: Sequence[str]) -> int:
    """Serve the mount in this process until it is unmounted or signalled, telling a waiting
    starter when it is ready or why it failed; returns the write-back entries left pending."""
    import trio

    from mountd import daemon

    ready = ReadyPipe(take_ready_fd())
    extra = fuse_options(options)
    try:
        return trio.run(lambda: daemon.run(config, mountpoint, require_remotes=require_remotes,
                                           on_ready=lambda m: ready.tell("READY"), extra_options=extra))
    except MountdError as e:
        ready.tell(f"ERROR {e}")
        raise
    except KeyboardInterrupt:
        return 0
