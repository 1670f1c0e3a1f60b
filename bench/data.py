"""Test data for the benchmark: incompressible content, a safetensors-shaped model file, small objects.

Owns the files under WORK/seed. Content is pseudo-random and distinct per (seed, block), so no
layer can deduplicate or compress two writes unless the scenario means it to (the dedup one).
Never writes outside the directories it is given.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 1 << 20
_POOL_BLOCKS = 64


class Content:
    """Blocks of 1 MiB: a 64 MiB random pool, each block stamped with (seed, index) so none repeats."""

    _pool: bytes | None = None

    def __init__(self, seed: int) -> None:
        self.seed = seed
        if Content._pool is None:
            Content._pool = random.Random(1234).randbytes(_POOL_BLOCKS * BLOCK)

    def block(self, index: int) -> bytes:
        assert Content._pool is not None
        start = (index % _POOL_BLOCKS) * BLOCK
        stamp = struct.pack("<QQ", self.seed, index)
        return stamp + Content._pool[start + len(stamp) : start + BLOCK]

    def blocks(self, size: int) -> Iterator[bytes]:
        for i in range((size + BLOCK - 1) // BLOCK):
            b = self.block(i)
            yield b if (i + 1) * BLOCK <= size else b[: size - i * BLOCK]


def write_file(path: Path, size: int, seed: int) -> None:
    with open(path, "wb") as f:
        for b in Content(seed).blocks(size):
            f.write(b)


@dataclass(frozen=True)
class Tensor:
    name: str
    start: int
    end: int


def safetensors_layout(size: int) -> list[Tensor]:
    """Tensors of a transformer-like model filling about `size` bytes: big weights, small norms/biases."""
    rng = random.Random(7)
    tensors, pos, layer = [], 0, 0
    while True:
        for part, nbytes in (("attn.qkv.weight", 3), ("attn.out.weight", 1), ("mlp.up.weight", 4),
                             ("mlp.down.weight", 4), ("norm1.weight", 0), ("norm2.weight", 0),
                             ("mlp.up.bias", 0)):
            n = nbytes * max(1, size // 600) if nbytes else rng.choice((4096, 8192, 16384))
            if pos + n > size:
                return tensors
            tensors.append(Tensor(f"model.layers.{layer}.{part}", pos, pos + n))
            pos += n
        layer += 1


def write_safetensors(path: Path, size: int) -> list[Tensor]:
    """A real safetensors file (8-byte header length, JSON header, data) of exactly `size` bytes."""
    tensors = safetensors_layout(size - 64 * 1024)
    header = {t.name: {"dtype": "U8", "shape": [t.end - t.start], "data_offsets": [t.start, t.end]}
              for t in tensors}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    data_size = size - 8 - len(raw)  # the tail after the last tensor is padding
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for b in Content(99).blocks(data_size):
            f.write(b)
    return tensors


def ensure_file(path: Path, size: int, make) -> None:
    """Build `path` with `make(tmp)` unless a file of that name and size is already there."""
    if path.exists() and path.stat().st_size == size:
        return
    tmp = path.with_suffix(".tmp")
    make(tmp)
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    os.link(src, dst)


def make_objects(directory: Path, count: int, size: int = 64) -> None:
    """`count` small files o00000.. in `directory` (the 10,000-object listing)."""
    directory.mkdir(parents=True, exist_ok=True)
    body = b"x" * size
    for i in range(count):
        p = directory / f"o{i:05d}"
        if not p.exists():
            p.write_bytes(body)
