"""The `mountd` command line. Every failure is one line on stderr and a non-zero exit code."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, NoReturn

import click

from mountd import __version__
from mountd.config import load_config
from mountd.control import ControlClientError, request
from mountd.errors import MountdError
from mountd.launch import run_foreground, start_background, take_ready_fd
from mountd.mount_options import apply_mount_options

log = logging.getLogger("mountd")


class DurationType(click.ParamType):
    """Seconds or a duration such as "90s", "10m", "1h30m"."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from mountd.units import parse_duration

        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = DurationType()


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"mountd: error: {message}", err=True)
    sys.exit(code)


def setup_logging(level: str) -> None:
    from mountd.logs import configure

    configure(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mountd")
def main() -> None:
    """Mount an artifact repository (local tier + object-store remotes) as one directory."""


@main.command()
@click.argument("source")
@click.argument("mountpoint", type=click.Path())  # checked by daemon.check_mountpoint, in one line
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (logs to stderr).")
@click.option("--require-remotes", is_flag=True,
              help="Fail instead of mounting when a remote is unreachable.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-file", type=click.Path(dir_okay=False), help="Where a background daemon logs.")
@click.option("-o", "options", multiple=True,
              help="Mount options as in fstab: ro, allow_other, uid=, gid=, nosuid, ... "
                   "(see docs/operations.md).")
def mount(source: str, mountpoint: str, foreground: bool, require_remotes: bool, log_level: str,
          log_file: str | None, options: tuple[str, ...]) -> None:
    """Mount SOURCE (a TOML config file or a remote URL) at MOUNTPOINT."""
    from mountd import daemon

    try:
        config = apply_mount_options(load_config(source), options)
        daemon.check_mountpoint(mountpoint)
        if not foreground:
            start_background(source, mountpoint, config.local_path, require_remotes=require_remotes,
                             log_level=log_level, log_file=log_file, options=options)
            return
    except MountdError as e:
        fail(str(e))
    setup_logging(log_level)
    try:
        left = run_foreground(config, mountpoint, require_remotes=require_remotes, options=options)
    except MountdError as e:
        fail(str(e))
    if left:
        click.echo(f"mountd: {left} write-back entries left pending; they resume at the next mount", err=True)


def _control(mountpoint: str, op: str, **args: Any) -> Any:
    try:
        result = None
        for msg in request(mountpoint, op, args, socket_timeout=None):
            if "result" in msg:
                result = msg["result"]
        return result
    except ControlClientError as e:
        fail(str(e))


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--timeout", type=DURATION, default=None,
              help="How long to wait for pending uploads, e.g. 30s or 5m (default: writeback.drain_timeout).")
def umount(mountpoint: str, timeout: float | None) -> None:
    """Drain pending uploads (bounded) and unmount MOUNTPOINT."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mountd.daemon import mounted_at

    left = None
    try:
        with Progress(TextColumn("draining uploads"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = None
            for msg in request(mountpoint, "umount", {"timeout": timeout} if timeout else {},
                               socket_timeout=None):
                if "progress" in msg:
                    pending = int(msg["progress"]["pending"])
                    if task is None:
                        task = bar.add_task("drain", total=pending)
                    total = max(bar.tasks[0].total or 0, pending)
                    bar.update(task, total=total, completed=total - pending)
                else:
                    left = (msg["result"] or {}).get("left", 0)
    except ControlClientError as e:
        if mounted_at(mountpoint) is None:
            fail(f"{mountpoint} is not mounted")
        click.echo(f"mountd: {e}; unmounting with fusermount3 -u", err=True)
        r = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
        if r.returncode:
            fail(r.stderr.strip() or "fusermount3 -u failed")
        return
    deadline = time.monotonic() + 30
    while mounted_at(mountpoint) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        click.echo(f"mountd: {left} write-back entries left pending; they resume at the next mount", err=True)


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Redraw live, with upload progress, until Ctrl-C or unmount.")
@click.option("--interval", type=DURATION, default="1s", show_default=True, help="Refresh period of --watch.")
def status(mountpoint: str, as_json: bool, watch: bool, interval: float) -> None:
    """Remotes, pending uploads and errors of a mount."""
    if watch:
        from mountd.status_view import watch as watch_status

        sys.exit(watch_status(mountpoint, interval))
    st = _control(mountpoint, "status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"repository {st['name']} at {st['mountpoint']} "
               f"(pid {st['pid']}, local tier {st['local_path']})")
    click.echo("remotes:")
    for r in st["remotes"]:
        state = "ok" if r["reachable"] else f"UNREACHABLE: {r['error']}"
        ro = " read-only" if r["read_only"] else ""
        click.echo(f"  {r['name']:<12} {r['at']:<16} {r['url']}{ro}  [{state}]")
    click.echo(f"pending uploads: {st['pending_uploads']}  (in flight: {len(st['in_flight'])})")
    leaving = (st.get("statistics") or {}).get("departures") or {}
    if leaving.get("departing"):
        left = leaving.get("departing_bytes", 0)
        click.echo(f"moving out of remotes: {leaving['departing']} files ({left} bytes) still to fetch; "
                   "their objects stay until then")
    for p in st["pending"][:20]:
        err = f"  error: {p['error']}" if p["error"] else ""
        nxt = p.get("next_attempt")
        when = f"  next attempt in {max(0.0, nxt - time.time()):.0f}s" if p["attempts"] and nxt else ""
        click.echo(f"  {p['remote']}:{p['key']}  attempts={p['attempts']}{when}{err}")
    if st["last_errors"]:
        click.echo("last errors:")
        for e in st["last_errors"][-5:]:
            click.echo(f"  {e['remote']}:{e['key']}: {e['error']}")
    cache = (st.get("statistics") or {}).get("cache")
    if cache:
        click.echo("cache:")
        for line in _cache_lines(cache):
            click.echo(line)


def _mount_of(path: str) -> tuple[str, str]:
    """The mountd mountpoint containing `path`, and `path` relative to it."""
    from mountd.control import socket_path

    real = os.path.realpath(path)
    cur = real
    while True:
        if socket_path(cur).exists():
            return cur, "/" + os.path.relpath(real, cur) if real != cur else "/"
        if cur == "/":
            fail(f"{path} is not inside a mountd mount")
        cur = os.path.dirname(cur)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--wait", is_flag=True, help="Return only when everything under PATH is in its remote.")
@click.option("--timeout", type=DURATION, default="1h", show_default=True,
              help="How long to wait with --wait, e.g. 90s or 10m.")
def sync(path: str, wait: bool, timeout: float) -> None:
    """Upload pending changes under PATH now."""
    mp, rel = _mount_of(path)
    res = _control(mp, "sync", path=rel.replace("/./", "/"), wait=wait, timeout=timeout)
    if wait and res["left"]:
        for e in res.get("errors", [])[:20]:
            click.echo(f"  {e['remote']}:{e['key']}: {e['error']}", err=True)
        fail(f"{res['left']} entries under {path} are not uploaded yet")


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def conflicts(mountpoint: str, as_json: bool) -> None:
    """Every conflict this mount met: another host had changed a file first."""
    res = _control(mountpoint, "conflicts")
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    if not res["conflicts"]:
        click.echo(f"{mountpoint}: no conflicts")
        return
    for c in res["conflicts"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["detected_at"]))
        ours = (f"this host's version kept as {c['copy_path']}" if c["copy_path"]
                else f"this host's version not uploaded ({c['resolution']})")
        click.echo(f"{when}  {c['path']}: another host's version {c['found_version'] or '(deleted)'} "
                   f"is at the name (this host expected {c['expected_version'] or 'no object'}); {ours}")


@main.command("log-level")
@click.argument("mountpoint", type=click.Path())
@click.argument("level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def log_level(mountpoint: str, level: str) -> None:
    """Change the log level of a running mount (until it stops)."""
    res = _control(mountpoint, "log_level", level=level.upper())
    click.echo(f"{mountpoint}: log level {res['level']}")


@main.command("docker-plugin")
@click.option("--socket", "socket_path", default="/run/docker/plugins/mountd.sock", show_default=True,
              type=click.Path(dir_okay=False), help="Where dockerd looks for the plugin.")
@click.option("--config-dir", default="/etc/mountd", show_default=True, type=click.Path(file_okay=False),
              help="Repository configs: a volume's -o repo=NAME is NAME.toml here.")
@click.option("--state-dir", default="/var/lib/mountd/docker-plugin", show_default=True,
              type=click.Path(file_okay=False), help="Known volumes and the repositories' mountpoints.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def docker_plugin(socket_path: str, config_dir: str, state_dir: str, log_level: str) -> None:
    """Serve Docker's volume plugin protocol: docker volume create -d mountd -o repo=NAME [-o path=DIR]."""
    from pathlib import Path

    from mountd.docker_plugin import serve

    setup_logging(log_level)
    try:
        serve(Path(socket_path), Path(config_dir), Path(state_dir), ready_fd=take_ready_fd())
    except OSError as e:
        fail(f"docker plugin: {socket_path}: {e.strerror or e}")


def _cache_lines(cache: dict[str, Any]) -> list[str]:
    from mountd.units import format_size

    lines = []
    for name, t in [*cache["tiers"].items(), ("pinned", cache["pinned"])]:
        cap = f" of {format_size(t['cap'])}" if t["cap"] is not None else ""
        lines.append(f"  {name:<12} {t['entries']:>7} files {format_size(t['on_disk']):>8}{cap:<10} "
                     f"hits {t['hits']}  misses {t['misses']}  evictions {t['evictions']}  "
                     f"expirations {t['expirations']}")
    for p in cache["pins"]:
        lines.append(f"  pinned path  {p['path']}  ({p['objects']} objects)")
    return lines


@main.command()
@click.argument("path", type=click.Path())
def pin(path: str) -> None:
    """Keep PATH (a file or a whole tree) on the local tier: fetched now, never evicted."""
    mp, rel = _mount_of(path)
    result: dict[str, Any] = {}
    try:
        for msg in request(mp, "pin", {"path": rel}, socket_timeout=None):
            if "progress" in msg:
                p = msg["progress"]
                click.echo(f"\rpinning {rel}: {p['files']}/{p['of']} files, {p['bytes']}/{p['total']} bytes",
                           nl=False, err=True)
            else:
                result = msg["result"] or {}
    except ControlClientError as e:
        fail(str(e))
    click.echo("", err=True)
    if result.get("failed"):
        fail(f"{len(result['failed'])} files under {path} could not be fetched "
             f"(first: {result['failed'][0]}); the pin stays, run mountd pin again when the remote answers")
    click.echo(f"pinned {path}: {result.get('files', 0)} files, {result.get('bytes', 0)} bytes")


@main.command()
@click.argument("path", type=click.Path())
def unpin(path: str) -> None:
    """Stop keeping PATH on the local tier (its pinned chunks are dropped)."""
    mp, rel = _mount_of(path)
    res = _control(mp, "unpin", path=rel)
    click.echo(f"unpinned {path} ({res['dropped_chunks']} chunks dropped)")


@main.group()
def cache() -> None:
    """Inspect and manage the cache tiers of a mount."""


@cache.command("stats")
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait", is_flag=True, help="First wait until fetches and chunk writes under way are done.")
def cache_stats(mountpoint: str, as_json: bool, wait: bool) -> None:
    """Per tier: entries, bytes, cap, hits, misses, evictions, expirations."""
    st = _control(mountpoint, "cache_stats", wait=wait)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    for line in _cache_lines(st):
        click.echo(line.strip())
    r = st["reads"]
    click.echo(f"reads: {r['hits']} from disk, {r['memory_hits']} from memory, {r['gets']} GETs "
               f"({r['bytes_fetched']} bytes), {r['prefetched']} prefetched, {r['errors']} errors")


@cache.command("prune")
@click.argument("mountpoint", type=click.Path())
def cache_prune(mountpoint: str) -> None:
    """Remove expired entries now."""
    res = _control(mountpoint, "cache_prune")
    click.echo("expired: " + ", ".join(f"{t} {n}" for t, n in res["expired"].items()))


@cache.command("clear")
@click.argument("mountpoint", type=click.Path())
@click.option("--tier", default=None, help="Clear only this tier (default: every tier; pins are kept).")
def cache_clear(mountpoint: str, tier: str | None) -> None:
    """Empty the cache tiers (pinned data stays)."""
    res = _control(mountpoint, "cache_clear", tier=tier)
    click.echo("removed: " + ", ".join(f"{t} {n}" for t, n in res["removed"].items()))


@main.command()
@click.argument("source")
@click.option("--write", is_flag=True,
              help="Also write a temporary object to each writable remote and delete it.")
@click.option("--timeout", type=DURATION, default="15s", show_default=True,
              help="Limit of each step, e.g. 10s.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(source: str, write: bool, timeout: float, as_json: bool) -> None:
    """Validate SOURCE (a config file or URL) and probe each remote: list, read, and with --write, write.

    Changes no data (--write deletes what it wrote). Exits 1 when any remote fails a step."""
    from dataclasses import asdict

    from mountd.check import check_config

    try:
        config = load_config(source)
    except MountdError as e:
        fail(str(e))
    results = check_config(config, write=write, timeout=timeout)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        click.echo(f"{source}: config ok ({len(config.remote)} remotes)")
        for r in results:
            state = "skip" if r.skipped else ("ok" if r.ok else "FAIL")
            click.echo(f"  {state:<4} {r.remote:<12} {r.step:<5} {r.detail} ({r.seconds:.2f}s)")
    sys.stdout.flush()
    bad = sum(not r.ok for r in results)
    if bad:
        click.echo(f"mountd: error: {bad} check(s) failed", err=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
