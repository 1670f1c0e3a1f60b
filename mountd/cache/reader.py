"""The interface the vfs reads remote data through, and the identity of one object version.

`RemoteReader` is all `mountd.vfs` knows of the read path: `ChunkCache` implements it. An
`ObjectRef` names one version of one remote object (remote, key, version, size, and its sha256
when the object's metadata carries one); the cache derives chunk keys from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The identity of one version of a remote object."""

    remote: str
    key: str
    version: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class WholeFile:
    """A cached object in one file, open for the kernel to read directly; `close` when done."""

    fd: int
    close: Callable[[], None]


class RemoteReader(Protocol):
    async def read(self, obj: ObjectRef, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the object (shorter at its end)."""
        ...

    def opened(self, obj: ObjectRef) -> None:
        """A file backed by `obj` was opened for reading (may start fetching it whole)."""
        ...

    def open_whole(self, obj: ObjectRef) -> WholeFile | None:
        """All of `obj` in one checked local file, kept until closed; None if it is not so cached."""
        ...

    def forget(self, obj: ObjectRef) -> None:
        """This version of the object is outdated: its cached data may go."""
        ...

    def describe(self, obj: ObjectRef) -> tuple[str, int]:
        """(tier that holds or would take the object, bytes of it cached now); quick, no I/O."""
        ...

    async def adopt_file(self, obj: ObjectRef, path: Path) -> int:
        """Take (consume) a local file holding exactly the bytes of `obj`; returns bytes cached."""
        ...

    def statistics(self) -> dict[str, Any]: ...
