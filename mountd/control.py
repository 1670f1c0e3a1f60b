"""The control socket: one unix socket per mount, owner-only, speaking JSON lines.

A request is one JSON object line ({"op": "status", ...}); the answer is zero or more progress
lines ({"progress": {...}}) and one final line ({"ok": true, "result": ...} or {"ok": false,
"error": "..."}). The socket's path is derived from the mountpoint, so the CLI finds it from the
path the user typed. The directory is 0700 and the socket 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/mountd")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/mountd-{os.getuid()}"
    return Path(base) / "mountd"


def socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    real = os.path.realpath(mountpoint)
    return runtime_dir() / (hashlib.sha256(real.encode()).hexdigest()[:20] + ".sock")


def _prepare(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self.requests = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raw = _prepare(self.path)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            task_status.started()
            await trio.serve_listeners(self._serve, [listener])
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > 1 << 20:
                    return
            self.requests += 1
            try:
                request = json.loads(buf.split(b"\n", 1)[0])
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                async for reply in self._handler(request):
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except Exception as e:  # a bad request must not stop the server
                log.warning("control request failed: %s: %s", type(e).__name__, e)
                try:
                    await stream.send_all(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass


class ControlClientError(Exception):
    pass


def request(mountpoint: str, op: str, args: dict[str, Any] | None = None, *,
            socket_timeout: float | None = 30.0) -> Iterator[dict[str, Any]]:
    """Send one request; yields progress dicts, and finally the result dict (key "result")."""
    path = socket_path(mountpoint)
    if not path.exists():
        raise ControlClientError(f"{mountpoint} is not mounted by mountd (no control socket {path})")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(socket_timeout)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        raise ControlClientError(f"no mountd daemon answers for {mountpoint} (stale socket {path})") from None
    with s:
        s.sendall(json.dumps({"op": op, **(args or {})}).encode() + b"\n")
        f = s.makefile("rb")
        for line in f:
            msg = json.loads(line)
            if "progress" in msg:
                yield msg
                continue
            if not msg.get("ok"):
                raise ControlClientError(msg.get("error", "request failed"))
            yield {"result": msg.get("result")}
            return
    raise ControlClientError("the daemon closed the connection without an answer")


async def single(result: Awaitable[Any]) -> AsyncIterator[dict[str, Any]]:
    yield {"ok": True, "result": await result}
