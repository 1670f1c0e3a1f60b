"""`python -m bench.latency [--rtt 0,20] [--small-files 5000] [--append-base 256] [--targets ...]
[--server rclone|seaweedfs]`: small-file write-back and appends with a real request latency (issue
19, item 1).

Every target reaches `rclone serve s3` (or, with `--server seaweedfs`, SeaweedFS, whose
UploadPartCopy works where rclone serve s3's stores an empty part, so appends can be sent as
only their new bytes) on 127.0.0.1 (bench/server.py) through a `DelayProxy`
(bench/proxy.py) that adds the round-trip time under test: each chunk forwarded in either direction
is held for half the RTT, and a new connection waits one RTT before its first byte goes through
(the handshake). The proxy counts the requests (by kind: PUT, GET, HEAD, LIST, POST, DELETE; `LIST
log`/`GET log entry` for mountd's change-log polls) and the bytes the mount sent. For each RTT,
each target runs from a fresh mount with an empty cache, with the benchmark's configuration
(bench/targets.py: write-back delay 0 for mountd and rclone, s3fs-fuse's defaults):

1. **small-file write-back**: `--small-files` files of 1 KiB (distinct contents) created in one
   directory that exists on the server (`small-RTT/`), each with open, write, close. Timed from
   the first create to the close of the last (`create_s`), and to the moment the server holds
   every object at its full size (`server_s`, polling the server's data directory every 20 ms;
   SeaweedFS: listing the prefix every 100 ms).
   Then the harness waits until the mount says its uploads are done (`mountd sync --wait`,
   rclone's rc `vfs/stats` queue empty) and counts the requests the mount sent from the first
   create until then, per file. Then, as in the main benchmark's small-file scenario (not counted):
   `stat` of each file, `ls -l` of the directory, and the unlink of each file, each timed.
2. **append**: a `--append-base` MiB object seeded on the server (`append-RTT/log.bin`, listed once
   before timing) grown by `--appends` appends of 1 MiB (open with O_APPEND, write, close); after
   each close the harness waits until the server holds the new size (timed: the append's time) and
   then until the mount says its uploads are done (not timed), so every append is uploaded on its
   own, as with a log written every few seconds. Reported: the MiB the mount sent to the server
   (request bodies and headers, counted at the proxy) and the summed time of the appends.

3. **edit**: an `--edit-size` MiB object seeded on the server (`edit-RTT/blob.bin`), 4 KiB
   written in its middle (open O_RDWR, pwrite, close) from a fresh mount with an empty cache.
   Timed: the open, write and close (`close_s`), and until the server holds the new bytes
   (`server_s`, a ranged read of them every 50 ms). Reported: the MiB sent and received (counted
   at the proxy, until the mount says its uploads are done) and the requests.

4. **cold read** (first, right after the mount): an `--read-size` MiB object seeded on the
   server (`read-RTT/blob.bin`) read whole with 1 MiB reads, page cache dropped, cache empty.
   Reported: MB/s, and the daemon's peak RSS while it read (VmRSS sampled every 20 ms).

`--small-files 0`, `--appends 0`, `--edit-size 0` or `--read-size 0` leaves that scenario out.
Also reported for the cold read: the daemon's RSS before it and its CPU seconds during it. For
experiments: `BENCH_MOUNTD_CACHE` adds TOML lines to mountd's `[cache]` (e.g. `prefetch = "16M"`),
and `BENCH_PROFILE_READ=PREFIX` records py-spy's raw stacks of mountd during each cold read into
PREFIX-RTTms.txt.

The figures go to WORK/latency.json and the section of docs/benchmarks.md between the `latency`
markers (`latency-seaweedfs` for SeaweedFS; appended after the other sections when missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.data import write_file
from bench.multihost import request_kind
from bench.proxy import DelayProxy
from bench.report import write_marked_section
from bench.runner import make_targets
from bench.scenarios import seq_read
from bench.server import S3Server, SeaweedBenchServer
from bench.system import (
    RssSampler,
    cpu_seconds,
    drop_caches,
    fusermount_lazy,
    machine_info,
    status_kib,
    tool_versions,
    wait_until,
)
from bench.targets import REPO, Target

DOCS_MD = REPO / "docs" / "benchmarks.md"
SERVERS = {"rclone": S3Server, "seaweedfs": SeaweedBenchServer}
SERVER_NAMES = {"rclone": "`rclone serve s3`", "seaweedfs": "SeaweedFS 4.48 (`weed server`)"}


def markers(server: str) -> tuple[str, str, str]:
    """The BEGIN, NOTES and END markers of the section of docs/benchmarks.md of a server's run."""
    if server == "rclone":
        return BEGIN, NOTES, END
    return (BEGIN.replace("latency:", f"latency-{server}:"), NOTES.replace("latency:", f"latency-{server}:"),
            END.replace("latency:", f"latency-{server}:"))


BEGIN = "<!-- latency:begin (written by `python -m bench.latency`; edits here are overwritten) -->"
NOTES = "<!-- latency:notes (kept by `python -m bench.latency`) -->"
END = "<!-- latency:end -->"
TARGET_NAMES = ("mountd", "rclone", "s3fs")
MiB = 1 << 20
SMALL_SIZE = 1024


def small_dir(rtt_ms: int) -> str:
    return f"small-{rtt_ms}"


def append_key(rtt_ms: int) -> str:
    return f"append-{rtt_ms}/log.bin"


def edit_key(rtt_ms: int) -> str:
    return f"edit-{rtt_ms}/blob.bin"


def read_key(rtt_ms: int) -> str:
    return f"read-{rtt_ms}/blob.bin"


def seed_source(work: Path, name: str, size: int) -> Path:
    src = work / "seed" / f"{name}-{size}"
    if size and (not src.exists() or src.stat().st_size != size):
        src.parent.mkdir(parents=True, exist_ok=True)
        write_file(src, size, seed=7)
    return src


def seed(server: S3Server, targets: list[Target], rtts: list[int], base: int, edit_size: int,
         read_size: int, work: Path) -> None:
    """Per bucket and RTT: a small-file directory (a `.keep` object keeps the prefix) and copies
    (not links: the server rewrites them) of the append base and edit objects."""
    src = seed_source(work, "append-base", base)
    edit_src = seed_source(work, "edit", edit_size)
    read_src = seed_source(work, "edit", read_size)
    shutil.rmtree(server.data, ignore_errors=True)
    if isinstance(server, SeaweedBenchServer):
        return  # through its S3 API once it runs: seed_over_s3
    for t in targets:
        for rtt in rtts:
            d = server.bucket_dir(t.bucket) / small_dir(rtt)
            d.mkdir(parents=True)
            (d / ".keep").write_bytes(b"keeps this prefix alive\n")
            dst = server.object_path(t.bucket, append_key(rtt))
            dst.parent.mkdir(parents=True)
            shutil.copyfile(src, dst)
            for key, size, src_of in ((edit_key(rtt), edit_size, edit_src),
                                      (read_key(rtt), read_size, read_src)):
                if size:
                    dst = server.object_path(t.bucket, key)
                    dst.parent.mkdir(parents=True)
                    shutil.copyfile(src_of, dst)


def seed_over_s3(server: SeaweedBenchServer, targets: list[Target], rtts: list[int], base: int,
                 edit_size: int, read_size: int, work: Path) -> None:
    """`seed` for a server whose data directory is not a tree of objects, once it runs."""
    keep = work / "seed" / "keep"
    keep.write_bytes(b"keeps this prefix alive\n")
    for t in targets:
        for rtt in rtts:
            server.put_file(t.bucket, f"{small_dir(rtt)}/.keep", keep)
            server.put_file(t.bucket, append_key(rtt), work / "seed" / f"append-base-{base}")
            if edit_size:
                server.put_file(t.bucket, edit_key(rtt), work / "seed" / f"edit-{edit_size}")
            if read_size:
                server.put_file(t.bucket, read_key(rtt), work / "seed" / f"edit-{read_size}")


def small_writeback(t: Target, server: S3Server, proxy: DelayProxy, rtt_ms: int, n: int) -> dict[str, Any]:
    d = small_dir(rtt_ms)
    names = [f"f{i:05d}" for i in range(n)]
    pad = b"s" * SMALL_SIZE
    bodies = [(b"%d:%d\n" % (rtt_ms, i) + pad)[:SMALL_SIZE] for i in range(n)]
    on_server = server.bucket_dir(t.bucket) / d
    pending = set(names)

    def all_there() -> bool:
        if isinstance(server, SeaweedBenchServer):
            pending.difference_update(k for k, size in server.sizes_under(t.bucket, d + "/").items()
                                      if size == SMALL_SIZE)
            return not pending
        with os.scandir(on_server) as it:
            for e in it:
                if e.name in pending and e.stat().st_size == SMALL_SIZE:
                    pending.discard(e.name)
        return not pending

    os.sync()
    proxy.reset()
    t0 = time.monotonic()
    for name, body in zip(names, bodies, strict=True):
        fd = os.open(t.root / d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
    create_s = time.monotonic() - t0
    wait_until(all_there, 1800, f"{t.name}: {n} small files on the server",
               interval=0.1 if isinstance(server, SeaweedBenchServer) else 0.02)
    server_s = time.monotonic() - t0
    t.wait_drained()
    drained_s = time.monotonic() - t0
    by_kind = proxy.snapshot()
    out = {"files": n, "create_s": create_s, "server_s": server_s, "drained_s": drained_s,
           "requests": sum(by_kind.values()), "by_kind": by_kind, "mib_up": proxy.bytes_up / MiB}
    # then the rest of the main benchmark's small-file scenario, timed the same way
    t0 = time.monotonic()
    for name in names:
        os.stat(t.root / d / name)
    out["stat_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run(["ls", "-l", str(t.root / d)], capture_output=True, check=True)
    out["ls_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    for name in names:
        os.unlink(t.root / d / name)
    out["delete_s"] = time.monotonic() - t0
    t.wait_drained()
    return out


def appends(t: Target, server: S3Server, proxy: DelayProxy, rtt_ms: int, base: int,
            count: int) -> dict[str, Any]:
    key = append_key(rtt_ms)
    path = t.root / key
    chunk = os.urandom(MiB)
    drop_caches()
    proxy.reset()
    per_append = []
    for i in range(count):
        t1 = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, chunk)
        finally:
            os.close(fd)
        size = base + (i + 1) * MiB
        wait_until(lambda s=size: server.object_complete(t.bucket, key, s), 1800,
                   f"{t.name}: append {i + 1} on the server", interval=0.01)
        per_append.append(time.monotonic() - t1)
        # the object has its full size on the server a little before the upload's last response
        # (rclone serve s3 assembles a multipart object first): let the mount finish, untimed
        t.wait_drained()
    total_s = sum(per_append)
    by_kind = proxy.snapshot()
    return {"base_mib": base / MiB, "appends": count, "total_s": total_s,
            "append_s_median": sorted(per_append)[len(per_append) // 2], "mib_up": proxy.bytes_up / MiB,
            "mib_down": proxy.bytes_down / MiB, "requests": sum(by_kind.values()), "by_kind": by_kind}


def server_bytes(server: S3Server, bucket: str, key: str, offset: int, n: int) -> bytes:
    """Bytes [offset, offset+n) of an object as the server has it now."""
    if isinstance(server, SeaweedBenchServer):
        r = server.client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + n - 1}")
        return bytes(r["Body"].read())
    try:
        with open(server.object_path(bucket, key), "rb") as f:
            return os.pread(f.fileno(), n, offset)
    except FileNotFoundError:  # (between the server's unlink and rename of a new version)
        return b""


def edit(t: Target, server: S3Server, proxy: DelayProxy, rtt_ms: int, size: int) -> dict[str, Any]:
    key = edit_key(rtt_ms)
    piece, at = os.urandom(4096), size // 2
    drop_caches()
    proxy.reset()
    t0 = time.monotonic()
    fd = os.open(t.root / key, os.O_RDWR)
    try:
        os.pwrite(fd, piece, at)
    finally:
        os.close(fd)
    close_s = time.monotonic() - t0
    wait_until(lambda: server_bytes(server, t.bucket, key, at, len(piece)) == piece, 1800,
               f"{t.name}: the edit on the server", interval=0.05)
    server_s = time.monotonic() - t0
    t.wait_drained()
    by_kind = proxy.snapshot()
    return {"size_mib": size / MiB, "close_s": close_s, "server_s": server_s, "mib_up": proxy.bytes_up / MiB,
            "mib_down": proxy.bytes_down / MiB, "requests": sum(by_kind.values()), "by_kind": by_kind}


def cold_read(t: Target, proxy: DelayProxy, rtt_ms: int) -> dict[str, Any]:
    drop_caches()
    proxy.reset()
    before = status_kib(t.pid, "VmRSS") / 1024 if t.pid else 0.0
    spy = None
    if (out := os.environ.get("BENCH_PROFILE_READ")) and t.name == "mountd" and t.pid:
        # py-spy's collapsed stacks of the daemon during the read (BENCH_PROFILE_READ: a path prefix)
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(t.pid),
                                "--format", "raw", "--rate", "200", "-o", f"{out}-{rtt_ms}ms.txt"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # (attached)
    cpu0 = cpu_seconds(t.pid)
    with RssSampler(t.pid) as rss:
        mb_s = seq_read(t.root / read_key(rtt_ms))
    cpu_s = cpu_seconds(t.pid) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    return {"mb_s": mb_s, "rss_peak_mib": rss.peak_mib, "rss_before_mib": before, "cpu_s": cpu_s,
            "mib_down": proxy.bytes_down / MiB, "requests": sum(proxy.snapshot().values())}


def run(work: Path, names: list[str], rtts: list[int], small: int, base: int, count: int,
        bandwidth: float | None, mountd_commit: str | None, log: Any,
        server_name: str = "rclone", edit_size: int = 0, read_size: int = 0) -> dict[str, Any]:
    work = work.resolve()
    rclone, server, targets, mountd_desc = make_targets(work, names, mountd_commit,
                                                        server_class=SERVERS[server_name])
    res: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(work, tool_versions(rclone), mountd_desc),
        "targets": names, "rtts_ms": rtts, "small_files": small, "append_base_mib": base / MiB,
        "appends": count, "bandwidth": bandwidth, "results": {}, "errors": {}, "loadavg": {},
        "server": server_name, "edit_mib": edit_size / MiB, "read_mib": read_size / MiB}
    t_start = time.monotonic()
    log(f"bench.latency: seeding {work}")
    seed(server, targets, rtts, base, edit_size, read_size, work)
    server.start()
    if isinstance(server, SeaweedBenchServer):
        seed_over_s3(server, targets, rtts, base, edit_size, read_size, work)
    proxy = DelayProxy(server.port, 0.0, bandwidth, classify=request_kind)
    out = work / "latency.json"
    try:
        res["server_warm_up_s"] = server.warm_up([t.bucket for t in targets])
        for rtt in rtts:
            proxy.rtt_s = rtt / 1000
            for t in targets:
                key = f"{t.name}@{rtt}"
                res["loadavg"][key] = os.getloadavg()[0]
                phase = "mount"
                try:
                    t.stop()
                    t.clean()
                    t.start(proxy.endpoint_url)
                    r = res["results"][key] = {}
                    if read_size:
                        phase = "cold read"
                        r["read"] = c = cold_read(t, proxy, rtt)
                        log(f"  {key:10} cold read: {c['mb_s']:.0f} MB/s, peak RSS "
                            f"{c['rss_peak_mib']:.0f} MiB (before {c['rss_before_mib']:.0f}), "
                            f"daemon CPU {c['cpu_s']:.1f}s, "
                            f"{c['requests']} requests")
                    if small:
                        phase = "small-file write-back"
                        r["small"] = small_writeback(t, server, proxy, rtt, small)
                        s = r["small"]
                        log(f"  {key:10} small: create {s['create_s']:.2f}s, on server {s['server_s']:.2f}s, "
                            f"drained {s['drained_s']:.2f}s, {s['requests'] / small:.2f} req/file "
                            f"{s['by_kind']}")
                    if count:
                        phase = "append"
                        r["append"] = appends(t, server, proxy, rtt, base, count)
                        a = r["append"]
                        log(f"  {key:10} append: {a['mib_up']:.1f} MiB up, {a['mib_down']:.1f} MiB down, "
                            f"{a['total_s']:.2f}s {a['by_kind']}")
                    if edit_size:
                        phase = "edit"
                        r["edit"] = e = edit(t, server, proxy, rtt, edit_size)
                        log(f"  {key:10} edit: {e['mib_up']:.1f} MiB up, {e['mib_down']:.1f} MiB down, "
                            f"close {e['close_s']:.2f}s, on the server {e['server_s']:.2f}s {e['by_kind']}")
                except Exception as e:  # noqa: BLE001 - recorded and reported; the others still run
                    res["errors"][key] = f"{phase}: {type(e).__name__}: {e}"
                    log(f"bench.latency: {key} FAILED: {res['errors'][key]}\n{t.log_tail()}")
                finally:
                    try:
                        t.stop()
                    except Exception as e:  # noqa: BLE001
                        log(f"bench.latency: stopping {t.name} failed: {e}")
                        fusermount_lazy(t.root)
                res["duration_s"] = time.monotonic() - t_start
                out.write_text(json.dumps(res, indent=1))
    finally:
        proxy.close()
        server.stop()
    res["duration_s"] = time.monotonic() - t_start
    return res


def _fmt_kinds(by_kind: dict[str, int], per: int) -> str:
    return ", ".join(f"{k} {v / per:.2f}" if per > 1 else f"{k} {v}"
                     for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]))


def _rows(res: dict[str, Any], part: str, cells: Any) -> list[str]:
    """One table row per target and RTT that measured `part`: target, RTT, then `cells(figures)`."""
    out = []
    for key, r in res["results"].items():
        name, rtt = key.split("@")
        if part in r:
            out.append(f"| {name} | {rtt} ms | {cells(r[part])} |")
    return out


def section(res: dict[str, Any], command: str) -> str:
    m = res["machine"]
    small = res["small_files"]
    load = ", ".join(f"{k} {v:.1f}" for k, v in res["loadavg"].items())
    on = "" if res.get("server", "rclone") == "rclone" else " (SeaweedFS)"
    lines = [
        f"## Latency: small-file write-back, appends, edits and cold reads{on}",
        "",
        "Each target through a proxy on 127.0.0.1 that adds a fixed round-trip time (half on each "
        "chunk each way, one more RTT per new connection) and counts the requests and bytes the mount "
        f"sent; {SERVER_NAMES[res.get('server', 'rclone')]} behind it. How each figure is taken: the "
        "docstring of `bench/latency.py`. One repetition per figure.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {m['cpu']}, {m['memory']}, kernel {m['kernel']}, {m['disk']} |",
        f"| mountd | {m['mountd']} |",
        f"| date | {res['started']} (took {res['duration_s'] / 60:.1f} min) |",
        f"| load average (1 min) at the start of each target | {load} |",
        f"| command | `{command}` |",
    ]
    def table(part: str, intro: str, columns: list[str], cells: Any) -> list[str]:
        head = "| target | added RTT | " + " | ".join(columns) + " |"
        return ["", intro, "", head, "|---" * (len(columns) + 2) + "|", *_rows(res, part, cells)]

    if small:
        lines += table(
            "small", f"Small-file write-back: {small:,} files of 1 KiB.",
            ["create, until the last close", "first create → all on the server",
             "requests per file (all kinds)", "of which", "then `stat` of each", "`ls -l`", "delete each"],
            lambda s: f"{s['create_s']:.2f} s | **{s['server_s']:.2f} s** | "
                      f"**{s['requests'] / small:.2f}** | {_fmt_kinds(s['by_kind'], small)} | "
                      + " | ".join(f"{s[k]:.2f} s" if k in s else "" for k in ("stat_s", "ls_s", "delete_s")))
    if res["appends"]:
        lines += table(
            "append",
            f"Appends: a {res['append_base_mib']:.0f} MiB object grown by {res['appends']} appends of 1 MiB, "
            f"each closed and on the server before the next ({res['appends']} MiB of new data).",
            ["MiB sent to the server", "MiB received", "close → on the server, all appends",
             "median per append", "requests"],
            lambda a: f"**{a['mib_up']:,.1f}** | {a['mib_down']:,.1f} | {a['total_s']:.2f} s | "
                      f"{a['append_s_median']:.2f} s | {_fmt_kinds(a['by_kind'], 1)}")
    if res.get("read_mib"):
        lines += table(
            "read",
            f"Cold read: a {res['read_mib']:,.0f} MiB object read whole with 1 MiB reads, right after the "
            "mount (page cache dropped, cache empty).",
            ["MB/s", "daemon's peak RSS", "MiB received", "requests"],
            lambda c: f"**{c['mb_s']:,.0f}** | {c['rss_peak_mib']:,.0f} MiB | {c['mib_down']:,.1f} | "
                      f"{c['requests']:,}")
    if res.get("edit_mib"):
        lines += table(
            "edit",
            f"Edit: 4 KiB written in the middle of a {res['edit_mib']:,.0f} MiB object (open O_RDWR, pwrite, "
            "close), from a fresh mount with an empty cache.",
            ["MiB received", "MiB sent to the server", "open, write, close", "→ new bytes on the server",
             "requests"],
            lambda e: f"**{e['mib_down']:,.1f}** | **{e['mib_up']:,.1f}** | {e['close_s']:.2f} s | "
                      f"{e['server_s']:.2f} s | {_fmt_kinds(e['by_kind'], 1)}")
    if res["errors"]:
        lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
    return "\n".join(lines) + "\n"


def write_section(md: Path, body: str, server: str = "rclone") -> None:
    begin, notes, end = markers(server)
    write_marked_section(md, begin, end, notes, body)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rtt", default="0,20", help="added round-trip times in ms, comma-separated")
    p.add_argument("--small-files", type=int, default=5000, help="1 KiB files in the write-back scenario")
    p.add_argument("--append-base", type=int, default=256, help="MiB of the object the appends grow")
    p.add_argument("--appends", type=int, default=20, help="appends of 1 MiB (0: no append scenario)")
    p.add_argument("--edit-size", type=int, default=1024,
                   help="MiB of the object edited in its middle (0: no edit scenario)")
    p.add_argument("--read-size", type=int, default=1024,
                   help="MiB of the object read cold (0: no cold-read scenario)")
    p.add_argument("--bandwidth", type=float, help="cap each direction of the proxy at this many MB/s")
    p.add_argument("--targets", default=",".join(TARGET_NAMES))
    p.add_argument("--server", choices=sorted(SERVERS), default="rclone",
                   help="the S3 server behind the proxy (seaweedfs: UploadPartCopy works)")
    p.add_argument("--mountd-commit", metavar="REV", help="benchmark mountd as of this commit")
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("BENCH_WORK", "/var/tmp/mountd-bench")) / "latency")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                   help="write the latency section of docs/benchmarks.md (default: on)")
    p.add_argument("--report", type=Path, metavar="JSON", help="only write the section from a results file")
    a = p.parse_args(argv)
    if a.report:
        res = json.loads(a.report.read_text())
        write_section(DOCS_MD, section(res, res.get("command", "")), res.get("server", "rclone"))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench.latency: error: run as root with /dev/fuse", file=sys.stderr)
        return 2
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    if unknown := set(names) - set(TARGET_NAMES):
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    res = run(a.work, names, _ints(a.rtt), a.small_files, a.append_base * MiB, a.appends,
              a.bandwidth * 1e6 if a.bandwidth else None, a.mountd_commit,
              log=lambda s: print(s, file=sys.stderr, flush=True), server_name=a.server,
              edit_size=a.edit_size * MiB, read_size=a.read_size * MiB)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    res["command"] = f".venv/bin/python -m bench.latency {argv_text}".strip()
    out = a.work / "latency.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"bench.latency: figures in {out}", file=sys.stderr)
    if a.docs:
        write_section(DOCS_MD, section(res, res["command"]), a.server)
        print(f"bench.latency: wrote the latency section of {DOCS_MD}", file=sys.stderr)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
