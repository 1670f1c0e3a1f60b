"""Machine-level helpers for the benchmark: page-cache drops, mount checks, RSS sampling, machine facts.

Owns nothing persistent. It must never touch a mount it did not make: `fusermount_lazy` is only
called by the targets on their own mountpoints.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def drop_caches() -> None:
    """Flush dirty pages, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll `predicate` until it is true; returns the seconds waited, raises TimeoutError after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - t0


def fusermount_lazy(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its waited-for children so far (0 if gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak_mib` is the highest seen.

    VmHWM (the kernel's own high-water mark) is read at stop too, but it counts since the process
    started, so the sampled peak is the figure for one phase."""

    def __init__(self, pid: int | None, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid:
            self._stop.set()
            self._thread.join()
            self.hwm_kib = status_kib(self.pid, "VmHWM")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.splitlines()[0] if out else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _disk_of(path: Path) -> str:
    """'/dev/vda ext4 (virtio, non-rotational), 252 GiB' for the filesystem holding `path`."""
    src = _first_line(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(path)]) or "?"
    dev = src.split()[0]
    disk = _first_line(["lsblk", "-no", "PKNAME", dev]) or Path(dev).name
    facts = []
    rot = Path(f"/sys/block/{disk}/queue/rotational")
    if rot.exists():
        facts.append("rotational" if rot.read_text().strip() == "1" else "non-rotational")
    if disk.startswith("vd"):
        facts.insert(0, "virtio")
    return f"{src} ({', '.join(facts) or 'unknown device'}), {shutil.disk_usage(path).total / 2**30:.0f} GiB"


def machine_info(workdir: Path, tools: dict[str, str], mountd: str) -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": f"{cpu or platform.processor()} ({os.cpu_count()} cores)",
        "memory": f"{_status_like('/proc/meminfo', 'MemTotal') / 2**20:.0f} GiB",
        "kernel": platform.release(),
        "memory returned to the host": _memory_return(),
        "disk": _disk_of(workdir),
        "python": sys.version.split()[0],
        "mountd": mountd,
        **tools,
    }


def mountd_source(repo: Path, work: Path, commit: str | None) -> tuple[Path, str]:
    """Where the benchmarked mountd package comes from, and how to describe it.

    With `commit`, that commit's `mountd/` is exported (git archive) under WORK/mountd-src/<sha>, so
    a run measures exactly one commit; without, a copy of the working tree's `mountd/` taken now (so
    edits made to the tree while the run goes on do not reach the daemons it starts later)."""
    if commit is None:
        head = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
        dirty = _first_line(["git", "-C", str(repo), "status", "--porcelain", "--", "mountd"])
        dest = work / "mountd-src" / "worktree"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(repo / "mountd", dest / "mountd", ignore=shutil.ignore_patterns("__pycache__"))
        _compile(dest)
        return dest, f"working tree at commit {head}" + (" + uncommitted changes" if dirty else "")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", commit], capture_output=True,
                         text=True, check=True).stdout.strip()
    dest = work / "mountd-src" / sha
    if not (dest / "mountd").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", sha, "mountd"], capture_output=True,
                                 check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        _compile(dest)
    return dest, f"commit {sha}"


def _compile(src: Path) -> None:
    """Bytecode for the copy, as an installation has: with PYTHONDONTWRITEBYTECODE set (as on
    the machines this ran on) every daemon start would compile mountd again (~0.1 s of a remount)."""
    import compileall

    compileall.compile_dir(str(src / "mountd"), quiet=1)


def _memory_return() -> str:
    """Whether this VM hands memory back to its host: freed pages reported by the balloon (the
    host then takes them back, and touching them again is slow) and DAMON reclaiming cold pages.
    Both make the reads after a page-cache drop depend on which pages the kernel picks."""
    found = []
    for features in Path("/sys/bus/virtio/drivers/virtio_balloon").glob("virtio*/features"):
        try:
            bits = features.read_text().strip()
        except OSError:
            continue
        if len(bits) > 5 and bits[5] == "1":  # VIRTIO_BALLOON_F_REPORTING
            found.append("free page reporting (virtio-balloon)")
            break
    for kdamond in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("[0-9]*"):
        try:
            if (kdamond / "state").read_text().strip() == "on":
                actions = sorted({a.read_text().strip() for a in kdamond.glob("contexts/*/schemes/*/action")})
                found.append(f"DAMON ({', '.join(actions) or 'monitoring only'})")
        except OSError:
            continue
    return "; ".join(found) or "none found"


def _status_like(path: str, field: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def tool_versions(rclone: str) -> dict[str, str]:
    return {
        "rclone": _first_line([rclone, "version"]),
        "s3fs-fuse": _first_line(["s3fs", "--version"]).replace(
            "Amazon Simple Storage Service File System ", ""),
        "fio": _first_line(["fio", "--version"]),
        "libfuse": _first_line(["fusermount3", "-V"]),
    }
