"""The read path for remote data that is not on the local tier.

`RemoteReader` is the interface the vfs reads through; `DirectReader` serves reads with ranged
GETs and a small per-object read-ahead block (no disk cache). The tiered chunk cache implements
the same interface and replaces it without the vfs noticing.
"""

from mountd.cache.reader import DirectReader, ObjectRef, RemoteReader

__all__ = ["DirectReader", "ObjectRef", "RemoteReader"]
