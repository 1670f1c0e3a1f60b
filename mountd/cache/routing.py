"""Which tier takes an object, and the cache keys of its chunks. Pure functions, no I/O.

Routing: the tiers are tried in configuration order and the first whose rule matches the
object takes it (`max_object_size`, `min_object_size`, `globs`; a tier without any of them
matches everything). An object that no tier matches is not cached on disk.

Keys: a chunk is keyed by its object's content identity: ``s:<chunk_size>:<sha256>:<size>`` when
the object's metadata carries its sha256 (so identical content under several keys or remotes
shares its chunks), else ``o:<chunk_size>:<remote>:<version>:<size>:<key>``. The chunk index is
appended after a '#'; an object whose chunks were all cached may be merged into one file, keyed
with ``#whole`` (the kernel can read it directly, see `ChunkCache.open_whole`). The chunk size
is part of the key, so changing `chunk_size` never serves a chunk cut at other boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mountd.cache.reader import ObjectRef
from mountd.config import TierConfig


@dataclass(frozen=True, slots=True)
class TierRule:
    name: str
    max_object_size: int | None = None
    min_object_size: int | None = None
    globs: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, name: str, tier: TierConfig) -> TierRule:
        return cls(name, tier.max_object_size, tier.min_object_size, tuple(tier.globs))

    def matches(self, key: str, size: int) -> bool:
        if self.max_object_size is not None and size > self.max_object_size:
            return False
        if self.min_object_size is not None and size < self.min_object_size:
            return False
        return not self.globs or matches_any(key, self.globs)


def matches_any(key: str, globs: Iterable[str]) -> bool:
    """A glob without '/' matches the last path segment of the key, one with '/' the whole key."""
    name = key.rsplit("/", 1)[-1]
    return any(fnmatchcase(key if "/" in g else name, g) for g in globs)


def route(rules: Iterable[TierRule], key: str, size: int) -> str | None:
    for rule in rules:
        if rule.matches(key, size):
            return rule.name
    return None


def rules_from_config(tiers: Mapping[str, TierConfig]) -> list[TierRule]:
    return [TierRule.from_config(name, t) for name, t in tiers.items()]


def object_base(obj: ObjectRef, chunk_size: int) -> str:
    if obj.sha256:
        return f"s:{chunk_size}:{obj.sha256.lower()}:{obj.size}"
    return f"o:{chunk_size}:{obj.remote}:{obj.version}:{obj.size}:{obj.key}"


def chunk_key(base: str, index: int) -> str:
    return f"{base}#{index}"


def whole_key(base: str) -> str:
    return f"{base}#whole"


def base_of(key: str) -> str:
    return key.rsplit("#", 1)[0]


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    return max(0, min(chunk_size, size - index * chunk_size))
