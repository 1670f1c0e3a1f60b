"""The sha256 of a local file: the content hash that names what mountd uploads (dedup, the
`sha256` metadata) and that tells an append from an edit. Blocking: callers run it in a worker
thread unless the file is tiny."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_BLOCK = 8 << 20


def sha256_file(path: Path) -> str:
    return sha256_file_and_prefix(path, 0)[0]


def sha256_file_and_prefix(path: Path, prefix: int) -> tuple[str, str | None]:
    """(sha256 of the file, sha256 of its first `prefix` bytes or None when prefix is 0), in one
    read: whether a file only grew past what its object holds costs no second pass."""
    h = hashlib.sha256()
    head: str | None = None
    done = 0
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK if not prefix or done >= prefix else min(HASH_BLOCK, prefix - done)):
            h.update(block)
            done += len(block)
            if prefix and done == prefix:
                head = h.copy().hexdigest()
    return h.hexdigest(), head
