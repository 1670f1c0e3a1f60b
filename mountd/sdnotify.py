"""Readiness, status and watchdog messages to systemd over `$NOTIFY_SOCKET` (the sd_notify protocol).

Owns the datagram socket address and the watchdog interval read from the environment. It sends
`READY=1` once the mount answers, `STATUS=` lines when the number of pending uploads changes,
`WATCHDOG=1` every half `WATCHDOG_USEC` while the trio loop runs, and `STOPPING=1` when asked to
stop; it keeps reporting the drain until the daemon's nursery ends. Without `$NOTIFY_SOCKET`
every call is a no-op. It never blocks (a datagram to a local socket) and never raises: systemd
being gone must not take the mount down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)
STATUS_INTERVAL = 1.0
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a daemon we start that is not the service's main process: no sd_notify."""
    return {k: v for k, v in environ.items() if k not in NOTIFY_ENV}


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        """Send `KEY=value` fields in one datagram; failures are logged at debug level only."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.send("\n".join(fields).encode())
            self.sent += 1
        except OSError as e:
            log.debug("sd_notify to %r failed: %s", self.address, e)

    async def run(self, status: Callable[[], str], stopping: trio.Event) -> None:
        """READY=1 now, then STATUS= on change and WATCHDOG=1 on time; STOPPING=1 once `stopping` is set.

        Runs until cancelled, so it keeps the watchdog fed and the status current while draining.
        """
        last = status()
        self.send("READY=1", f"STATUS={last}")
        told_stopping = False
        tick = min(STATUS_INTERVAL, self.watchdog_interval or STATUS_INTERVAL)
        next_ping = trio.current_time()
        while True:
            if stopping.is_set() and not told_stopping:
                told_stopping = True
                last = status()
                self.send("STOPPING=1", f"STATUS={last}")
            now = trio.current_time()
            if self.watchdog_interval is not None and now >= next_ping:
                self.send("WATCHDOG=1")
                next_ping = now + self.watchdog_interval
            current = status()
            if current != last:
                last = current
                self.send(f"STATUS={current}")
            with trio.move_on_after(tick):
                await (stopping.wait() if not told_stopping else trio.sleep_forever())
