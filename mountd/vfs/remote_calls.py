"""`RemoteCalls`: the one way the vfs and the reconciler wait on an object store.

Store methods block on the network, so they run in a worker thread; the trio thread waits with
a deadline, and every failure reaches the caller as a `RemoteError` (a timeout as
`RemoteUnavailable` naming the remote, the operation and the deadline). Before this helper the
vfs and the reconciler had four ways to call a remote with four failure shapes (an EIO
`PosixError`, a bare `RemoteError`, a `None` in a list, no timeout at all), and a stalled server
could hold an upload slot forever.

A call that misses its deadline is abandoned, not stopped: its thread finishes on its own (each
request inside a store has its own timeout too). An upload that is abandoned is also asked to
stop (`cancel_upload`), so its bytes do not land after a newer upload of the same key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio

from mountd.backend import ObjectStore, Precondition
from mountd.errors import RemoteUnavailable

T = TypeVar("T")
# the slowest transfer rate an upload, download or server-side copy may keep before its call
# gives up (the deadline grows with the size: a 10 GiB upload may take 11 hours at this rate)
MIN_TRANSFER_RATE = 256 << 10


class RemoteCalls:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.timeouts = 0

    def transfer_timeout(self, size: int) -> float:
        """The deadline of a call that moves `size` bytes."""
        return self.timeout + size / MIN_TRANSFER_RATE

    async def call(self, store: ObjectStore, fn: Callable[..., T], *args: Any, timeout: float | None = None,
                   what: str = "") -> T:
        """`fn(*args)` (a method of `store`) in a worker thread, within `timeout`
        (default: the read timeout)."""
        limit = self.timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)
        self.timeouts += 1
        if not what:
            what = f"{getattr(fn, '__name__', 'call')} {args[0] if args else ''}".strip()
        raise RemoteUnavailable(store.name, f"{what}: no answer within {limit:g}s")

    async def upload(self, store: ObjectStore, *args: Any, key: str, size: int,
                     expect: Precondition | None = None, append_to: Any = None, patch: Any = None) -> Any:
        """`store.upload(*args, expect=expect)`, stopped if it outlives its deadline; `append_to`
        (an `AppendBase`) only to a store that `appends`, `patch` (a `PatchBase`) only to one that
        `patches`."""
        extra = {"append_to": append_to} if append_to else {}
        if patch is not None:
            extra["patch"] = patch
        upload = partial(store.upload, expect=expect, **extra)
        try:
            return await self.call(store, upload, *args,
                                   timeout=self.transfer_timeout(size), what=f"upload of {key}")
        except RemoteUnavailable:
            store.cancel_upload(key)
            raise
