"""The read path for remote data that is not on the local tier.

`RemoteReader` is the interface the vfs reads through; `ChunkCache` implements it with named
disk tiers (diskcache stores with hard size caps and expiry), a pinned store on the local tier,
single-flight ranged GETs, sequential prefetch and whole-object fetches. See docs/cache.md.
"""

from mountd.cache.chunks import CacheInUse, ChunkCache
from mountd.cache.reader import ObjectRef, RemoteReader, WholeFile

__all__ = ["CacheInUse", "ChunkCache", "ObjectRef", "RemoteReader", "WholeFile"]
