"""The measured operations, each one repetition on one target, returning {metric key: figure}.

Everything is driven with plain syscalls from this process (fio for random 4 KiB reads), timed
with a monotonic clock, the same way for every target. A scenario never changes a target's
configuration; it only mounts, remounts with an empty cache, and drains through the target.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.data import Content
from bench.proxy import CountingProxy
from bench.server import S3Server
from bench.system import RssSampler, drop_caches, wait_until
from bench.targets import Target

MB = 1e6
MiB = 1 << 20
READ_FILE = "read.bin"
MODEL_FILE = "model.safetensors"
SMALL_DIR = "small"
LIST_DIR = "list10k"
DEDUP_DIR = "dedup"
REF_BUCKET = "bench-ref"


@dataclass(frozen=True)
class Sizes:
    big: int
    small_count: int
    small_size: int
    list_count: int
    dedup: int
    dedup_copies: int
    fio_seconds: int
    reps: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(big=1 << 30, small_count=5000, small_size=1024, list_count=10000, dedup=64 << 20,
                   dedup_copies=10, fio_seconds=10, reps=3)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(big=16 << 20, small_count=200, small_size=1024, list_count=500, dedup=4 << 20,
                   dedup_copies=10, fio_seconds=2, reps=1)


def _write(path: Path, blocks: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for b in blocks:
            os.write(fd, b)
    finally:
        os.close(fd)


def seq_read(path: Path) -> float:
    """Read the whole file with 1 MiB reads; MB/s."""
    return seq_read_with_cpu(path)[0]


def seq_read_with_cpu(path: Path) -> tuple[float, float]:
    """Read the whole file with 1 MiB reads; MB/s, and the reading thread's kernel CPU seconds.

    The kernel time tells two machine states apart that the speed alone does not: on a VM whose
    balloon reports free pages to the host, page cache that lands in memory the host has taken
    back costs the first thread touching it 2-5 µs per 4 KiB page: 0.6-1.3 s per GiB here when all
    of it does (a 5 s pause after dropping the caches), 0.04-0.06 s when none does."""
    buf = bytearray(MiB)
    total = 0
    sys0 = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    elapsed = time.monotonic() - t0
    return total / MB / elapsed, resource.getrusage(resource.RUSAGE_THREAD).ru_stime - sys0


def fio_rand4k(path: Path, size: int, seconds: int, invalidate: bool) -> float:
    """Random 4 KiB reads, one job, queue depth 1 (psync), for `seconds`; IOPS."""
    out = subprocess.run(
        ["fio", "--name=rand4k", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
         "--ioengine=psync", f"--size={size}", "--time_based", f"--runtime={seconds}",
         f"--invalidate={int(invalidate)}", "--output-format=json"],
        capture_output=True, text=True, check=True).stdout
    return float(json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"])


def model_load(path: Path) -> float:
    """The safetensors loading pattern: mmap, parse the header, copy every tensor in name order; MB/s."""
    t0 = time.monotonic()
    total = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        (n,) = struct.unpack("<Q", mm[:8])
        header = json.loads(mm[8 : 8 + n])
        base = 8 + n
        for name in sorted(header):
            start, end = header[name]["data_offsets"]
            total += len(mm[base + start : base + end])
    return total / MB / (time.monotonic() - t0)


def write_suite(t: Target, server: S3Server, sizes: Sizes, rep: int) -> dict[str, float]:
    """Write `big` bytes and close; then (mounts) wait until the object is on the server, or (local)
    upload the written file directly with fsspec as the reference."""
    name = f"write-{rep}.bin"
    path = t.root / name
    blocks = list(Content(1000 + rep).blocks(sizes.big))
    # a clean slate: no earlier dirty pages being written back meanwhile, and free memory to write
    # into (the page cache fills up over a run; reclaiming it during the write is noise)
    drop_caches()
    t0 = time.monotonic()
    _write(path, blocks)
    close_s = time.monotonic() - t0
    if t.is_mount:
        wait_until(lambda: server.object_complete(t.bucket, name, sizes.big), 1800,
                   f"{t.name}: {name} upload", interval=0.01)
        server_s = time.monotonic() - t0
        t.wait_drained()
    else:
        fs = server.fs()
        t1 = time.monotonic()
        fs.put_file(str(path), f"{REF_BUCKET}/{name}")
        server_s = time.monotonic() - t1
        fs.rm_file(f"{REF_BUCKET}/{name}")
    os.unlink(path)
    t.wait_drained()
    out = {"write_close": sizes.big / MB / close_s, "write_server": sizes.big / MB / server_s}
    if not t.is_mount:
        out["write_upload"] = out["write_server"]  # the direct upload starts from a closed file as well
    elif t.name != "s3fs":  # s3fs-fuse uploads inside close(): nothing is left to measure after it
        out["write_upload"] = sizes.big / MB / (server_s - close_s)
    return out


def read_suite(t: Target, sizes: Sizes) -> dict[str, float]:
    """Cold read (fresh mount, empty cache), cache read, warm read, random reads, model loads."""
    if t.is_mount:
        t.remount_clean()
    path = t.root / READ_FILE
    out: dict[str, float] = {}
    drop_caches()
    with RssSampler(t.pid) as rss_cold:
        out["read_cold"] = seq_read(path)
    t.wait_settled()  # a re-read comes later than the end of the first one, when its cache is in place
    drop_caches()
    with RssSampler(t.pid) as rss_cache:
        out["read_cache"], out["read_cache_sys"] = seq_read_with_cpu(path)
    out["read_warm"] = seq_read(path)
    out["rand4k_warm"] = fio_rand4k(path, sizes.big, sizes.fio_seconds, invalidate=False)
    drop_caches()
    out["rand4k_cache"] = fio_rand4k(path, sizes.big, sizes.fio_seconds, invalidate=True)
    drop_caches()
    out["model_cold"] = model_load(t.root / MODEL_FILE)
    drop_caches()
    out["model_cache"] = model_load(t.root / MODEL_FILE)
    if t.is_mount:
        out["rss_mib"] = max(rss_cold.peak_mib, rss_cache.peak_mib)
    return out


def small_files_suite(t: Target, sizes: Sizes, rep: int) -> dict[str, float]:
    d = t.root / SMALL_DIR
    names = [d / f"r{rep}-f{i:05d}" for i in range(sizes.small_count)]
    pad = b"s" * sizes.small_size
    # distinct contents
    bodies = [(b"%d:%d\n" % (rep, i) + pad)[: sizes.small_size] for i in range(len(names))]
    out: dict[str, float] = {}
    os.sync()
    t0 = time.monotonic()
    for p, body in zip(names, bodies, strict=True):
        _write(p, [body])
    out["small_create"] = time.monotonic() - t0
    t0 = time.monotonic()
    for p in names:
        os.stat(p)
    out["small_stat"] = time.monotonic() - t0
    t0 = time.monotonic()
    listing = subprocess.run(["ls", "-l", str(d)], capture_output=True, check=True).stdout
    out["small_ls"] = time.monotonic() - t0
    lines = listing.count(b"\n")
    if lines < sizes.small_count:
        raise RuntimeError(f"{t.name}: ls -l {d} showed {lines} lines, wanted {sizes.small_count}+")
    t0 = time.monotonic()
    for p in names:
        os.unlink(p)
    out["small_delete"] = time.monotonic() - t0
    t.wait_drained()
    return out


def list_cold(t: Target, sizes: Sizes) -> dict[str, float]:
    if t.is_mount:
        t.remount_clean()
    drop_caches()
    t0 = time.monotonic()
    listing = subprocess.run(["ls", "-l", str(t.root / LIST_DIR)], capture_output=True, check=True).stdout
    took = time.monotonic() - t0
    lines = listing.count(b"\n")
    if lines < sizes.list_count:
        raise RuntimeError(f"{t.name}: ls -l {LIST_DIR} showed {lines} lines, wanted {sizes.list_count}+")
    return {"list_cold": took}


def dedup_suite(t: Target, server: S3Server, proxy: CountingProxy, sizes: Sizes,
                rep: int) -> dict[str, float]:
    """Write the same content to `dedup_copies` paths; bytes the mount sent until all are on the server."""
    blocks = list(Content(5000 + rep).blocks(sizes.dedup))
    names = [f"{DEDUP_DIR}/r{rep}-c{i}.bin" for i in range(sizes.dedup_copies)]
    proxy.reset()
    for n in names:
        _write(t.root / n, blocks)
    wait_until(lambda: all(server.object_complete(t.bucket, n, sizes.dedup) for n in names), 1800,
               f"{t.name}: dedup copies upload", interval=0.05)
    t.wait_drained()
    return {"dedup_mib": proxy.bytes_up / MiB}
