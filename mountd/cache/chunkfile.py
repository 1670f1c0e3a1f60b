"""One chunk file of a tier: its index record (`Entry`), its checksums, and the reads, writes and
merges that check them.

Integrity: each entry carries its length and a CRC32 per block of `CRC_BLOCK` bytes (kept in the
diskcache tag, see `tierdb.py`). The first read of a block checks it — the read covers the whole
block, which the kernel's 1 MiB requests usually are anyway — and the check is done again after
the file's size or mtime changed. A chunk this process has just written is trusted as long as its
file keeps the size and mtime it was written with (its checksums were computed from those very
bytes). A file that does not match is taken out of the index and reported as a miss, never
returned.

The functions hold no state and run in worker threads on what they are given, so that
`TierStore` alone changes its index and the `Entry`s in it.
"""

from __future__ import annotations

import errno
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

CRC_BLOCK = 1 << 20
CASTAGNOLI_MARK = "crc32c:"  # not hex: a zlib CRC32 tag can start with any hex digit


@dataclass(frozen=True, slots=True)
class FileSource:
    """A local file to be moved into a tier (renamed when on the same filesystem, else copied)."""

    path: Path


@dataclass(frozen=True, slots=True)
class Part:
    """One chunk file to be merged, and what it was checked or written with."""

    path: Path
    length: int
    crcs: tuple[int, ...]
    castagnoli: bool
    trusted: tuple[int, int] | None  # (size, mtime_ns) of the file when every block had been checked


@dataclass(frozen=True, slots=True)
class Assembly:
    """Chunk files of one object to be merged into one file, in order."""

    parts: tuple[Part, ...]



@dataclass(slots=True, eq=False)
class Entry:
    """A chunk file as the index knows it: what a read needs without asking SQLite."""

    key: str
    filename: str
    length: int
    alloc: int  # bytes the file occupies on disk (rounded up to blocks)
    crcs: tuple[int, ...]  # checksum of each CRC_BLOCK bytes
    expires_at: float
    castagnoli: bool = True  # CRC32C (hardware, 28 GB/s); False: zlib's CRC32 (6 GB/s) of older caches
    fd: int | None = None
    signature: tuple[int, int] | None = None  # (size, mtime_ns) the verified blocks were read with
    verified: int = 0  # bit i: block i was checked
    read_ahead_at: float = -math.inf  # monotonic time the kernel was last asked to read ahead
    read_ahead_region: int = -1  # ... the region of READ_AHEAD_SPAN bytes it was asked for
    holds: int = 0  # open for the kernel to read directly (FUSE passthrough): not evicted meanwhile

    @property
    def fully_checked(self) -> bool:
        """Every block has been checked (or written by this process) since `signature` was taken."""
        return self.signature is not None and self.verified == (1 << len(self.crcs)) - 1


def block_crc(block: bytes, castagnoli: bool = True) -> int:
    """The checksum of one block. A cache hit checks each 1 MiB block it serves the first time,
    on the trio thread: CRC32C takes 0.04 ms there, zlib's CRC32 0.17 ms (a third of the time a
    1 MiB hit took). google_crc32c takes bytes only (no memoryview)."""
    if not castagnoli:
        return zlib.crc32(block)
    return google_crc32c.value(block if type(block) is bytes else bytes(block))


def block_crcs(data: bytes, castagnoli: bool = True) -> tuple[int, ...]:
    if len(data) <= CRC_BLOCK:
        return (block_crc(data, castagnoli),)
    return tuple(block_crc(data[i:i + CRC_BLOCK], castagnoli) for i in range(0, len(data), CRC_BLOCK))


def encode_tag(crcs: tuple[int, ...], expires_at: float) -> str:
    return f"{expires_at!r} {CASTAGNOLI_MARK}{''.join(f'{c:08x}' for c in crcs)}"


def decode_tag(tag: object) -> tuple[tuple[int, ...], float, bool] | None:
    """(checksums, expiry, castagnoli); tags without the mark hold zlib CRC32s (older caches)."""
    try:
        expires, crcs = str(tag).split()
        castagnoli = crcs.startswith(CASTAGNOLI_MARK)
        crcs = crcs.removeprefix(CASTAGNOLI_MARK)
        return tuple(int(crcs[i:i + 8], 16) for i in range(0, len(crcs), 8)), float(expires), castagnoli
    except (ValueError, TypeError):
        return None


def file_crcs(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    with open(path, "rb") as f:
        while True:
            block = f.read(CRC_BLOCK)
            if not block and out:
                break
            out.append(block_crc(block))
            if len(block) < CRC_BLOCK:
                break
    return tuple(out)


# bytes per write(2) of a chunk file. One write(2) of a whole 8 MiB chunk made the kernel's copy
# into the page cache (`copy_folio_from_iter_atomic`) cost about twice as much in some states of
# the benchmark machine (the daemon's CPU per GiB of cold read rose from 1.2 s to 1.97-2.02 s,
# half of it in that copy, with 3 rounds of the benchmark's read suite); written 1 MiB at a time
# the same sequence stayed at 1.07-1.10 s (cold read 843-926 MB/s against 598-813). An A/B of the
# two on mountd alone was not conclusive (575-801 against 631-769 MB/s): that state is not there
# in every sequence. See docs/benchmarks.md.
WRITE_PIECE = 1 << 20


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]):]


def merge_into(fd: int, assembly: Assembly) -> tuple[int, ...]:
    """Copy the parts one after the other into `fd`; returns the checksums of the merged file
    (worker thread). Parts whose every block was checked, in files unchanged since, are copied
    by the kernel (copy_file_range) and their CRC32Cs reused when they cover whole 1 MiB blocks;
    the others are read and checked here. A part that does not match raises EIO: the merge is
    dropped, and the part is found corrupt when it is next read."""
    parts = assembly.parts
    if all(p.trusted is not None and p.castagnoli and (p.length % CRC_BLOCK == 0 or p is parts[-1])
           for p in parts):
        try:
            for p in parts:
                _copy_trusted(p, fd)
            return tuple(c for p in parts for c in p.crcs)
        except _Changed:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
    crcs: list[int] = []
    carry = b""
    for p in parts:
        data = read_verified(str(p.path), p.length, p.crcs, p.castagnoli)
        if data is None:
            raise OSError(errno.EIO, f"chunk file {p.path.name} does not match its checksums")
        write_all(fd, data)
        if carry:
            data = carry + data
        whole = len(data) - len(data) % CRC_BLOCK
        crcs.extend(block_crcs(data[:whole]) if whole else ())
        carry = data[whole:]
    if carry or not crcs:
        crcs.append(block_crc(carry))
    return tuple(crcs)


class _Changed(Exception):
    """A chunk file changed after it was checked: merge by reading and checking instead."""


def _copy_trusted(p: Part, fd: int) -> None:
    src = os.open(p.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if (st.st_size, st.st_mtime_ns) != p.trusted or st.st_size != p.length:
            raise _Changed
        left = p.length
        while left:
            try:
                n = os.copy_file_range(src, fd, left)
            except OSError as e:  # e.g. a file system without it: read and write instead
                raise _Changed from e
            if n == 0:
                raise _Changed
            left -= n
    finally:
        os.close(src)


def read_part_verified(path: str, offset: int, length: int, total: int, crcs: tuple[int, ...],
                       castagnoli: bool) -> bytes | None:
    """Bytes [offset, offset+length) of a file of `total` bytes whose every 1 MiB block touched
    matches its checksum; None otherwise (worker thread)."""
    first, last = offset // CRC_BLOCK, (offset + max(length, 1) - 1) // CRC_BLOCK
    start, stop = first * CRC_BLOCK, min((last + 1) * CRC_BLOCK, total)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != total:
                return None
            span = os.pread(fd, stop - start, start)
        finally:
            os.close(fd)
    except OSError:
        return None
    if len(span) != stop - start or last >= len(crcs):
        return None
    for b in range(first, last + 1):
        if block_crc(span[(b - first) * CRC_BLOCK:(b - first + 1) * CRC_BLOCK], castagnoli) != crcs[b]:
            return None
    return span[offset - start:offset - start + length]


def read_verified(path: str, length: int, crcs: tuple[int, ...], castagnoli: bool) -> bytes | None:
    """The whole content of a chunk file when it matches its length and checksums (worker thread)."""
    try:
        with open(path, "rb") as f:
            data = f.read(length + 1)
    except OSError:
        return None
    return data if len(data) == length and block_crcs(data, castagnoli) == crcs else None

