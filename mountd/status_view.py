"""`mountd status --watch`: a live view of one mount, redrawn from its control socket with rich.

It only reads: one `status` request per interval. Upload progress is computed here, between
two snapshots (entries applied and bytes sent since the watch began, the current rate). It
never keeps the control connection open between requests and ends by itself, with a message,
when the mount goes away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mountd.control import ControlClientError, request


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fetch(mountpoint: str) -> dict[str, Any]:
    try:
        for msg in request(mountpoint, "status", {}, socket_timeout=10):
            if "result" in msg:
                return msg["result"]
    except (OSError, ValueError) as e:  # the daemon went away mid-answer (it is stopping)
        raise ControlClientError(f"no answer from the daemon of {mountpoint}: {e}") from None
    raise ControlClientError("no answer")


@dataclass
class Progress:
    """Upload progress since the watch began, from successive snapshots."""

    start_applied: int | None = None
    start_bytes: int = 0
    last_bytes: int = 0
    last_time: float = 0.0
    rate: float = 0.0

    def update(self, st: dict[str, Any], now: float) -> tuple[int, int, float]:
        """(entries applied since start, bytes sent since start, bytes per second now)."""
        stats = st.get("statistics") or {}
        applied = int((stats.get("uploader") or {}).get("applied", 0))
        sent = int((stats.get("reconciler") or {}).get("bytes_uploaded", 0))
        if self.start_applied is None:
            self.start_applied, self.start_bytes, self.last_bytes, self.last_time = applied, sent, sent, now
        elif now > self.last_time:
            self.rate = (sent - self.last_bytes) / (now - self.last_time)
            self.last_bytes, self.last_time = sent, now
        return applied - self.start_applied, sent - self.start_bytes, self.rate


def render(st: dict[str, Any], done: int, sent: int, rate: float) -> Group:
    stats = st.get("statistics") or {}
    head = Text.assemble((f"{st['name']}", "bold"), f" at {st['mountpoint']}  pid {st['pid']}  ",
                         ("local tier ", "dim"), st["local_path"])
    remotes = Table("remote", "at", "url", "state", box=None, header_style="bold")
    for r in st["remotes"]:
        state = Text("ok", "green") if r["reachable"] else Text(f"unreachable: {r['error']}", "red")
        remotes.add_row(r["name"], r["at"], r["url"] + (" (read-only)" if r["read_only"] else ""), state)

    pending = int(st["pending_uploads"])
    bar = ProgressBar(total=max(done + pending, 1), completed=done, width=40)
    uploads = Table.grid(padding=(0, 2))
    uploads.add_row(Text("uploads", "bold"), bar,
                    f"{done} done, {pending} pending, {len(st['in_flight'])} in flight, "
                    f"{_size(sent)} sent, {_size(rate)}/s")
    rec = stats.get("reconciler") or {}
    if rec.get("bytes_deduplicated"):
        uploads.add_row("", "", f"dedup saved {_size(rec['bytes_deduplicated'])}")
    leaving = stats.get("departures") or {}
    if leaving.get("departing"):
        # files moved out of a remote whose bytes are still being fetched (their objects stay till then)
        size = _size(leaving.get("departing_bytes", 0))
        uploads.add_row(Text("moving out", "bold"), "",
                        f"{leaving['departing']} files ({size}) still to fetch from the remotes they left, "
                        f"{leaving.get('departed', 0)} done")

    queue = Table("pending entry", "attempts", "last error", box=None, header_style="bold")
    in_flight = set(st["in_flight"])
    for p in st["pending"][:10]:
        ident = f"{p['remote']}:{p['key']}"
        queue.add_row(Text(ident, "yellow" if ident in in_flight else ""), str(p["attempts"]),
                      Text(p["error"] or "", "red"))
    parts: list[Any] = [head, remotes, uploads]
    if st["pending"]:
        parts.append(queue)
    tiers = (stats.get("cache") or {}).get("tiers") or {}
    if tiers:
        cache = Table("cache tier", "used", "cap", "hits", "misses", "evictions", box=None,
                      header_style="bold")
        for name, t in tiers.items():
            cache.add_row(name, _size(t.get("bytes", 0)), _size(t.get("cap", 0)), str(t.get("hits", 0)),
                          str(t.get("misses", 0)), str(t.get("evictions", 0)))
        parts.append(cache)
    reader = stats.get("reader") or {}
    fuse = stats.get("fuse") or {}
    calls = sorted((fuse.get("calls") or {}).items(), key=lambda kv: -kv[1])[:6]
    parts.append(Text(f"reads: {reader.get('memory_hits', 0)} from memory, "
                      f"{reader.get('gets', 0)} remote GETs "
                      f"({_size(reader.get('bytes_fetched', 0))});  requests: "
                      + ", ".join(f"{op} {n}" for op, n in calls), "dim"))
    for e in st["last_errors"][-3:]:
        parts.append(Text(f"error {e['remote']}:{e['key']}: {e['error']}", "red"))
    return Group(*parts)


def watch(mountpoint: str, interval: float, console: Console | None = None) -> int:
    """Redraw until interrupted or unmounted; returns the exit code."""
    console = console or Console()
    progress = Progress()
    try:
        st = fetch(mountpoint)
    except ControlClientError as e:
        click.echo(f"mountd: error: {e}", err=True)
        return 1
    try:
        with Live(render(st, *progress.update(st, time.monotonic())), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(interval)  # the refresh period the user asked for
                try:
                    st = fetch(mountpoint)
                except ControlClientError:
                    live.stop()
                    console.print(f"{mountpoint} is no longer mounted", markup=False, highlight=False)
                    return 0
                live.update(render(st, *progress.update(st, time.monotonic())), refresh=True)
    except KeyboardInterrupt:
        return 0
