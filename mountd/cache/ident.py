"""`Ident`: what the cache derives from one `ObjectRef`, worked out once per object and kept (a
bounded number of them) so that every read of a chunk does not route and key the object again."""

from __future__ import annotations

from dataclasses import dataclass

from mountd.cache.prefetch import ReadAhead
from mountd.cache.reader import ObjectRef
from mountd.cache.store import TierStore


@dataclass(slots=True, eq=False)
class Ident:
    obj: ObjectRef
    base: str
    chunks: int
    tier: TierStore | None  # where its new chunks go (None: not cached on disk)
    pinned: bool
    read_ahead: ReadAhead | None = None
    whole: bool = False  # a read_whole fetch was started
