"""`python -m bench.largedirs [--objects 100000] [--tree 3000x100] [--targets mountd,mountd-old,rclone,s3fs]`:
directories of many objects (issue 22), every target on the same data in one run.

The objects are 100-byte files written straight into one bucket directory of `rclone serve s3` on
127.0.0.1 (bench/server.py): `d10k/` (`--small`, 10,000 objects), `d100k/` (`--objects`) and
`tree/` (`--tree DIRSxN`: DIRS directories of N objects). The server runs with `-vv`
(`RCLONE_VERBOSE=2`), which logs one line per S3 request; the requests a mount sent for a command
are the lines its command added to that log (by kind: LIST, HEAD, GET; `LIST log` is mountd's
change-log poll). Every target reads the same bucket (nothing is written), and the server lists
it once before any timing, so it has every ETag and listing in memory for every target alike.

For each target, each group below starts from a fresh mount with an empty cache, and every cold
command is run after dropping the page cache (`echo 3 > /proc/sys/vm/drop_caches`):

1. `ls -l d10k | wc -l` cold, then again warm;
2. `stat` of one named file of `d10k/` (its own fresh mount, so no listing precedes it);
3. `stat` of one named file of `d100k/` (likewise);
4. `ls -l d100k | wc -l` cold, then warm; the daemon's peak RSS (VmRSS sampled every 20 ms, and
   VmHWM at the end) during the cold listing;
5. `find tree | wc -l` cold, with the peak RSS; for mountd targets the daemon is then stopped and
   started again on the same metadata db (the seconds until the mount answers) and `find` runs
   again, page cache dropped (within `listing_ttl` of the listings: it should ask for none); then
   `find` warm and `du -s` of the tree (not run when the cold `find` timed out).

Each command has a timeout (`--timeout`, 150 s by default): a timed-out command is killed and
recorded as such. `mountd` is HEAD's `mountd/` (exported with git archive, as `python -m bench
--mountd-commit` does); `mountd-old` is commit 60f09a5, before the large-directory change, from a
git worktree (`--old-src`, created when missing), run with the same interpreter. Both run with the
benchmark's mountd configuration (bench/targets.py: defaults for `listing_ttl` and `read_timeout`).
With `--rtt MS`, every mount reaches the server through bench/proxy.py's `DelayProxy`, which adds
that round-trip time to every request (issue 19, item 4: metadata at latency); the figures go to
WORK/largedirs-rttMS.json, not to the docs section.
With `--profile`, only mountd's cold and warm `ls -l` of `d100k/` and the cold `find` of the tree
run, the cold ones under `py-spy record` (raw stacks in WORK/profile/; the figures are then not
published; with BENCH_PROFILE_GIL=1 only the thread holding the GIL is sampled, which shows where
the CPU goes when the daemon is bound by the GIL).
The figures go to WORK/largedirs.json and the section of docs/benchmarks.md between the
`large-dirs` markers; the notes after `<!-- large-dirs:notes -->` in that section are kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.proxy import DelayProxy
from bench.report import write_marked_section
from bench.runner import _rclone
from bench.server import S3Server
from bench.system import (
    RssSampler,
    cpu_seconds,
    drop_caches,
    fusermount_lazy,
    machine_info,
    mountd_source,
    tool_versions,
)
from bench.targets import REPO, MountdTarget, RcloneTarget, S3fsTarget, Target

DOCS_MD = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- large-dirs:begin (written by `python -m bench.largedirs`; edits here are overwritten) -->"
NOTES = "<!-- large-dirs:notes (kept by `python -m bench.largedirs`) -->"
END = "<!-- large-dirs:end -->"
OLD_COMMIT = "60f09a5"  # `--old-commit`
BUCKET = "bench-largedirs"
OBJECT_SIZE = 100
TARGET_NAMES = ("mountd", "mountd-old", "rclone", "s3fs")
REQUEST = re.compile(rb"serve s3: ([A-Z]+ [A-Z]+)")


class OldMountd(MountdTarget):
    name = "mountd-old"


def make_target(name: str, work: Path, server: S3Server, new_src: Path, old_src: Path) -> Target:
    if name == "mountd":
        t: Target = MountdTarget(work, server, new_src)
    elif name == "mountd-old":
        t = OldMountd(work, server, old_src)
    else:
        t = {"rclone": RcloneTarget, "s3fs": S3fsTarget}[name](work, server)
    t.bucket = BUCKET
    if isinstance(t, MountdTarget):
        t.config = work / "state" / f"{name}.toml"
    return t


def name_of(i: int) -> str:
    return f"obj-{i:07d}.dat"


def seed(bucket: Path, small: int, big: int, dirs: int, per_dir: int, stamp: Path) -> float:
    """Writes the objects as files of the bucket directory (skipped when `stamp` says it is done)."""
    want = {"small": small, "big": big, "dirs": dirs, "per_dir": per_dir, "size": OBJECT_SIZE}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return 0.0
    t0 = time.monotonic()
    stamp.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(bucket)], check=True)

    def fill(d: Path, n: int) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            fd = os.open(d / name_of(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, f"{d.name}/{name_of(i)}\n".encode().ljust(OBJECT_SIZE, b"."))
            os.close(fd)

    fill(bucket / "d10k", small)
    fill(bucket / "d100k", big)
    for j in range(dirs):
        fill(bucket / "tree" / f"dir-{j:05d}", per_dir)
    os.sync()
    stamp.write_text(json.dumps(want))
    return time.monotonic() - t0


class ServerLog:
    """The S3 requests `rclone serve s3 -vv` logged since a mark, by kind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def since(self, offset: int) -> dict[str, int]:
        time.sleep(0.2)  # the server writes its line as it answers; let the last ones land
        with open(self.path, "rb") as f:
            f.seek(offset)
            lines = f.read().split(b"\n")
        kinds: dict[str, int] = {}
        for i, line in enumerate(lines):
            m = REQUEST.search(line)
            if not m:
                continue
            kind = m.group(1).decode().replace(" OBJECT", "").replace(" BUCKET", "")
            if kind == "LIST" and i + 1 < len(lines) and b'prefix:".mountd-log/' in lines[i + 1]:
                kind = "LIST log"
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


def run_cmd(cmd: str, timeout: float) -> dict[str, Any]:
    """Runs `cmd` under bash (pipefail); its wall time, stdout's last line, and whether it timed out."""
    t0 = time.monotonic()
    p = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return {"cmd": cmd, "seconds": None, "timed_out": timeout, "rc": None, "out": "", "err": ""}
    took = time.monotonic() - t0
    errs = err.decode(errors="replace").strip().splitlines()
    return {"cmd": cmd, "seconds": took, "timed_out": None, "rc": p.returncode,
            "out": out.decode(errors="replace").strip()[-200:],
            "err": f"{errs[0][:200]} ({len(errs)} error lines)" if errs else ""}


def db_bytes(t: Target) -> int | None:
    if not isinstance(t, MountdTarget):
        return None
    return sum(p.stat().st_size for p in t.state.rglob("*") if p.is_file() and ".db" in p.name)


class Runner:
    def __init__(self, server: S3Server, slog: ServerLog, timeout: float, log: Any,
                 profile_dir: Path | None = None, endpoint: str | None = None) -> None:
        self.server = server
        self.endpoint = endpoint  # a DelayProxy's (`--rtt`), else the server's own
        self.slog = slog
        self.timeout = timeout
        self.log = log
        self.profile_dir = profile_dir

    def fresh(self, t: Target) -> None:
        self.stop(t)
        t.clean()
        t.start(self.endpoint)
        drop_caches()

    def stop(self, t: Target) -> None:
        """Unmounts; a daemon that does not let go within 90 s is unmounted lazily and killed."""
        if t.proc is None:
            return
        done = threading.Event()

        def stopper() -> None:
            try:
                t.stop()
            except Exception as e:  # noqa: BLE001 - the run goes on with the next target
                self.log(f"largedirs: stopping {t.name}: {e}")
            done.set()

        threading.Thread(target=stopper, daemon=True).start()
        if not done.wait(90):
            self.log(f"largedirs: {t.name} did not unmount within 90 s; lazy unmount and kill")
            proc = t.proc
            fusermount_lazy(t.root)
            if proc is not None:
                proc.kill()
            done.wait(30)
        t.proc = None

    def measure(self, t: Target, cmd: str, cold: bool, rss: bool = False,
                profile: str = "") -> dict[str, Any]:
        if cold:
            drop_caches()
        mark = self.slog.mark()
        spy = None
        if profile and self.profile_dir is not None and t.pid:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(t.pid),
                                    "-r", "50", "--nonblocking", "-f", "raw",
                                    *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
                                    "-o", str(self.profile_dir / f"{profile}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        server_pid = self.server.proc.pid if self.server.proc is not None else None
        cpu_before = (cpu_seconds(t.pid), cpu_seconds(server_pid))
        with RssSampler(t.pid if rss else None) as sampler:
            r = run_cmd(cmd.format(root=t.root), self.timeout)
        r["cpu_s"] = cpu_seconds(t.pid) - cpu_before[0]  # the mount's daemon
        r["server_cpu_s"] = cpu_seconds(server_pid) - cpu_before[1]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        r["requests"] = self.slog.since(mark)
        r["cold"] = cold
        if rss:
            r["rss_peak_mib"] = sampler.peak_mib
            r["vmhwm_mib"] = sampler.hwm_kib / 1024
        what = "timed out" if r["timed_out"] else f"{r['seconds']:.2f}s rc={r['rc']} out={r['out']!r}"
        self.log(f"largedirs: {t.name:10} {'cold' if cold else 'warm'} `{cmd}`: {what} {r['err']} "
                 f"requests={r['requests']}" + (f" rss={r['rss_peak_mib']:.0f} MiB" if rss else "")
                 + f" cpu={r['cpu_s']:.1f}s server_cpu={r['server_cpu_s']:.1f}s")
        return r

    def target(self, t: Target, big: int, tree: tuple[int, int], small: int, profile: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"load1_at_start": round(os.getloadavg()[0], 2)}
        if not profile:
            self.fresh(t)
            out["small_ls_cold"] = self.measure(t, "ls -l {root}/d10k | wc -l", True)
            out["small_ls_warm"] = self.measure(t, "ls -l {root}/d10k | wc -l", False)
            self.fresh(t)
            out["small_stat_cold"] = self.measure(t, f"stat -c %s {{root}}/d10k/{name_of(small // 2)}", True)
            self.fresh(t)
            out["big_stat_cold"] = self.measure(t, f"stat -c %s {{root}}/d100k/{name_of(big // 2)}", True)
        self.fresh(t)
        out["big_ls_cold"] = self.measure(t, "ls -l {root}/d100k | wc -l", True, rss=True,
                                          profile="ls-d100k" if profile else "")
        out["big_ls_warm"] = self.measure(t, "ls -l {root}/d100k | wc -l", False)
        out["big_db_bytes"] = db_bytes(t)
        if tree[0]:
            self.fresh(t)
            out["tree_find_cold"] = self.measure(t, "find {root}/tree | wc -l", True, rss=True,
                                                 profile="find-tree" if profile else "")
            if not out["tree_find_cold"]["timed_out"] and isinstance(t, MountdTarget) and not profile:
                # the same db, a new daemon: ready how soon, and is the tree listed again?
                # (within `listing_ttl` of its listing it must not be)
                self.stop(t)
                t0 = time.monotonic()
                t.start(self.endpoint)
                out["remount_s"] = time.monotonic() - t0
                out["tree_find_after_remount"] = self.measure(t, "find {root}/tree | wc -l", True)
            if not out["tree_find_cold"]["timed_out"] and not profile:
                out["tree_find_warm"] = self.measure(t, "find {root}/tree | wc -l", False)
                out["tree_du"] = self.measure(t, "du -s --apparent-size --block-size=1 {root}/tree", False)
            out["tree_db_bytes"] = db_bytes(t)
        self.stop(t)
        return out


def run(work: Path, names: list[str], small: int, big: int, tree: tuple[int, int], timeout: float,
        old_src: Path, profile: bool, log: Any = print, rtt_ms: float = 0.0) -> dict[str, Any]:
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if "mountd-old" in names and not (old_src / "mountd").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_src), OLD_COMMIT],
                       check=True)
    new_src, desc = mountd_source(REPO, work, "HEAD")
    old_desc = subprocess.run(["git", "-C", str(old_src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip() \
        if "mountd-old" in names else "not run"
    rclone = _rclone()
    server = S3Server(rclone, work / "s3")
    res: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "machine": machine_info(work, tool_versions(rclone), desc),
                           "mountd_old": f"commit {old_desc}", "small": small, "big": big,
                           "tree": list(tree), "timeout_s": timeout, "rtt_ms": rtt_ms, "targets": {}}
    t0 = time.monotonic()
    targets = [make_target(n, work, server, new_src, old_src) for n in names]
    for t in targets:
        fusermount_lazy(t.root)  # a mount left behind by an interrupted run
    log(f"largedirs: seeding {small:,} + {big:,} + {tree[0]:,}x{tree[1]:,} objects")
    res["seed_s"] = seed(server.bucket_dir(BUCKET), small, big, tree[0], tree[1],
                         work / "s3" / "largedirs-seed.json")
    os.environ["RCLONE_VERBOSE"] = "2"  # the server only (its Popen copies the environment now)
    try:
        server.start()
    finally:
        del os.environ["RCLONE_VERBOSE"]
    slog = ServerLog(work / "s3" / "rclone-serve-s3.log")
    proxy: DelayProxy | None = None
    try:
        # what the run reads, listed once so that the server has every ETag and listing in memory
        prefixes = (["d100k"] if profile else ["d10k", "d100k"]) + (["tree"] if tree[0] else [])
        res["server_warm_up_s"] = server.warm_up([f"{BUCKET}/{d}" for d in prefixes])
        log(f"largedirs: seeded in {res['seed_s']:.0f}s, server warm-up {res['server_warm_up_s']:.0f}s")
        if rtt_ms:
            proxy = DelayProxy(server.port, rtt_ms / 1000)
        runner = Runner(server, slog, timeout, log, work / "profile" if profile else None,
                        proxy.endpoint_url if proxy is not None else None)
        for t in targets:
            try:
                res["targets"][t.name] = runner.target(t, big, tree, small, profile)
            except Exception as e:  # noqa: BLE001 - the other targets still run
                log(f"largedirs: {t.name} failed: {e!r}")
                res["targets"].setdefault(t.name, {})["error"] = repr(e)
                runner.stop(t)
    finally:
        for t in targets:
            fusermount_lazy(t.root)
        if proxy is not None:
            proxy.close()
        server.stop()
    res["duration_s"] = time.monotonic() - t0
    return res


# ---------------------------------------------------------------------------------------------- report


def _reqs(r: dict[str, Any]) -> str:
    kinds = r.get("requests") or {}
    order = sorted(kinds.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{v:,} {k}" for k, v in order) or "none"


def _cell(r: dict[str, Any] | None, expect: int | None = None, rss: bool = False,
          missing: str = "not run (the cold one timed out)") -> str:
    if r is None:
        return missing
    if r["timed_out"]:
        text = f"**timed out after {r['timed_out']:.0f} s**"
    else:
        text = f"{r['seconds']:.2f} s"
        if r["rc"]:
            text = f"**fails (exit {r['rc']}) after {r['seconds']:.1f} s**"
        if expect is not None:
            lines = int(r["out"]) if r["out"].isdigit() else None
            shown = f"{lines:,} line{'s' * (lines != 1)}" if lines is not None else "no count"
            text += f", {shown}" if lines == expect else f", **{shown}** (want {expect:,})"
        if r["err"]:
            err = re.sub(r"'/\S*/mnt/[^/]+/", "'", r["err"]).replace("|", "/")  # paths in the mount
            text += f"; stderr: `{err}`"
    text += f" ({_reqs(r)})"
    if rss:
        text += f"; peak RSS {r['rss_peak_mib']:.0f} MiB (VmHWM {r['vmhwm_mib']:.0f})"
    return text


def section(res: dict[str, Any], command: str) -> str:
    names = list(res["targets"])
    small, big, (dirs, per) = res["small"], res["big"], res["tree"]
    m = res["machine"]
    lines = [
        "## Large directories (issue 22)\n",
        f"`rclone serve s3` on 127.0.0.1 over one bucket of {OBJECT_SIZE}-byte objects written as files "
        f"into its directory; every target reads the same bucket, one after the other, from fresh mounts "
        f"with the page cache dropped before each cold command. Requests are those the server logged "
        f"(`-vv`) while the command ran. Each command has a {res['timeout_s']:.0f} s timeout. How each "
        f"figure is taken: the docstring of `bench/largedirs.py`.\n",
        "| | |", "|---|---|",
        f"| machine | {m.get('cpu', '')}, {m.get('memory', '')}, kernel {m.get('kernel', '')}, "
        f"{m.get('disk', '')} |",
        f"| mountd | {m.get('mountd', '')}"
        + (f" (after the change); mountd-old: {res['mountd_old']} (before)" if "mountd-old" in names else "")
        + " |",
        f"| peers | {m.get('rclone', '')} (`rclone mount --vfs-cache-mode full`); s3fs-fuse "
        f"{m.get('s3fs-fuse', '').split(' ')[0]} |",
        f"| date | {res['started']} (took {res['duration_s'] / 60:.1f} min; seeding "
        f"{res['seed_s']:.0f} s, the server's first listing {res['server_warm_up_s']:.0f} s) |",
        f"| command | `{command}` |",
        "| load average (1 min) at each target's start | " + ", ".join(
            f"{n} {res['targets'][n]['load1_at_start']}" for n in names
            if "load1_at_start" in res["targets"][n]) + " |",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, key: str, expect: int | None = None, rss: bool = False,
            missing: str = "not run (the cold one timed out)") -> None:
        cells = [_cell(res["targets"][n].get(key), expect, rss, missing) if "error" not in res["targets"][n]
                 else f"error: {res['targets'][n]['error'][:120]}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row(f"{small:,} objects in one directory: cold `ls -l \\| wc -l`", "small_ls_cold", small + 1)
    row("same, warm", "small_ls_warm", small + 1)
    row(f"{small:,}: cold `stat` of one named file (fresh mount)", "small_stat_cold")
    row(f"**{big:,} objects in one directory: cold `stat` of one named file** (fresh mount)", "big_stat_cold")
    row(f"**{big:,}: cold `ls -l \\| wc -l`**, peak RSS of the daemon", "big_ls_cold", big + 1, rss=True)
    row(f"{big:,}: warm `ls -l \\| wc -l`", "big_ls_warm", big + 1)
    if dirs:
        total = dirs * per + dirs + 1
        row(f"**{dirs * per:,} objects in {dirs:,} directories of {per}: cold `find \\| wc -l`**",
            "tree_find_cold", total, rss=True)
        row("same, warm", "tree_find_warm", total)
        row("same, after a remount on the same metadata db (page cache dropped)", "tree_find_after_remount",
            total, missing="— (mountd only)")
        row("`du -s` of the tree (after `find`)", "tree_du")
        remounts = [f"{n} {res['targets'][n]['remount_s']:.2f} s" for n in names
                    if "remount_s" in res["targets"][n]]
        if remounts:
            lines.append("| remount on that db, until the mount answers | " + " | ".join(
                f"{res['targets'][n]['remount_s']:.2f} s" if "remount_s" in res["targets"][n] else "—"
                for n in names) + " |")
    dbs = [(n, res["targets"][n].get("big_db_bytes"), res["targets"][n].get("tree_db_bytes")) for n in names]
    db_text = "; ".join(f"{n}: {b / 2**20:.1f} MiB after the {big:,} listing"
                        + (f", {tr / 2**20:.1f} MiB after the tree" if tr else "")
                        for n, b, tr in dbs if b)
    if db_text:
        lines.append(f"\nmountd's metadata db (its files under the state directory): {db_text}.\n")
    return "\n".join(lines) + "\n"


def write_section(md: Path, body: str) -> None:
    """The large-dirs section of `md`, its hand-written notes kept (`report.write_marked_section`)."""
    write_marked_section(md, BEGIN, END, NOTES, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.largedirs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=100_000, help="objects in the large directory")
    p.add_argument("--small", type=int, default=10_000, help="objects in the smaller directory")
    p.add_argument("--tree", default="3000x100", help="DIRSxN: DIRS directories of N objects (0x0: none)")
    p.add_argument("--targets", default=",".join(TARGET_NAMES))
    p.add_argument("--timeout", type=float, default=150, help="seconds each command may take")
    p.add_argument("--old-src", type=Path, default=Path("/tmp/mountd-old"),
                   help=f"a worktree of commit {OLD_COMMIT} (created when missing)")
    p.add_argument("--work", type=Path,
                   default=Path(os.environ.get("BENCH_WORK", "/var/tmp/mountd-bench")) / "largedirs")
    p.add_argument("--profile", action="store_true",
                   help="mountd's d100k listing only, under py-spy (WORK/profile/); nothing published")
    p.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                   help="every mount reaches the server through a DelayProxy adding this round-trip time "
                        "(figures in WORK/largedirs-rttMS.json; the docs section is not written)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                   help="write the large-dirs section of docs/benchmarks.md (default: on)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="only write the section from a results file of an earlier run")
    a = p.parse_args(argv)
    if a.report:
        res = json.loads(a.report.read_text())
        write_section(DOCS_MD, section(res, res.get("command", "")))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench.largedirs: error: run as root with /dev/fuse", file=sys.stderr)
        return 2
    names = ["mountd"] if a.profile else [n.strip() for n in a.targets.split(",") if n.strip()]
    if unknown := set(names) - set(TARGET_NAMES):
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    dirs, _, per = a.tree.partition("x")
    res = run(a.work, names, a.small, a.objects, (int(dirs), int(per or 0)), a.timeout, a.old_src.resolve(),
              a.profile, log=lambda s: print(s, file=sys.stderr, flush=True), rtt_ms=a.rtt)
    out = a.work / ("largedirs-profile.json" if a.profile else
                    f"largedirs-rtt{a.rtt:g}.json" if a.rtt else "largedirs.json")
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    res["command"] = f".venv/bin/python -m bench.largedirs {argv_text}".strip()
    out.write_text(json.dumps(res, indent=1))
    print(f"bench.largedirs: figures in {out}", file=sys.stderr)
    if a.docs and not a.profile and not a.rtt:
        write_section(DOCS_MD, section(res, res["command"]))
        print(f"bench.largedirs: wrote the large-dirs section of {DOCS_MD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
