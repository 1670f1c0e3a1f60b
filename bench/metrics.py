"""What the benchmark reports: one `Metric` per figure, the targets' goals, and the results file.

Owns the result schema (`Results`, saved as JSON) shared by the runner and the report; it runs
nothing. A metric's figure for a target is the list of its repetitions; the report shows their
median and spread.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_ORDER = ("local", "mountd", "rclone", "s3fs")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    short: str  # the chart's panel title
    unit: str
    higher_is_better: bool
    local: bool = True  # measured for the local directory too
    local_note: str = ""  # what the local column holds when it is not the same operation
    not_for: tuple[str, ...] = ()  # targets for which it means nothing


METRICS: tuple[Metric, ...] = (
    Metric("write_close", "seq write {big}: until close", "write {big}: until close", "MB/s", True),
    Metric("write_server", "seq write {big}: from the first write until the object is on the server",
           "write {big}: until on the server", "MB/s", True, local_note="direct upload",
           not_for=("s3fs",)),  # s3fs-fuse uploads inside close()
    Metric("write_upload", "seq write {big}: from close until the object is on the server",
           "write {big}: close to server", "MB/s", True, local_note="direct upload",
           not_for=("s3fs",)),  # s3fs-fuse uploads inside close()
    Metric("read_cold", "seq read {big}: cold, from the server", "read {big}: cold", "MB/s", True,
           local_note="disk"),
    Metric("read_cache", "seq read {big}: from the daemon's cache (page cache dropped)",
           "read {big}: daemon cache", "MB/s", True, local_note="disk"),
    Metric("read_cache_sys", "seq read {big} from the daemon's cache: the reading thread's kernel CPU time",
           "read {big}, daemon cache: reader's kernel CPU", "s", False, local_note="disk"),
    Metric("read_warm", "seq read {big}: warm (kernel page cache)", "read {big}: page cache", "MB/s", True),
    Metric("rand4k_cache", "random 4 KiB reads of the cached file, page cache dropped",
           "random 4 KiB: daemon cache", "IOPS", True),
    Metric("rand4k_warm", "random 4 KiB reads of the cached file, page cache warm",
           "random 4 KiB: page cache", "IOPS", True),
    Metric("model_cold", "model load (mmap, reads by offsets) {big}: cold", "model load {big}: cold",
           "MB/s", True, local_note="disk"),
    Metric("model_cache", "model load {big}: daemon cache, page cache dropped",
           "model load {big}: daemon cache", "MB/s", True, local_note="disk"),
    Metric("small_create", "{small_count} small files: create+write", "{small_count} files: create+write",
           "s", False),
    Metric("small_stat", "{small_count} small files: stat all", "{small_count} files: stat", "s", False),
    Metric("small_ls", "{small_count} small files: ls -l", "{small_count} files: ls -l", "s", False),
    Metric("small_delete", "{small_count} small files: delete", "{small_count} files: delete", "s", False),
    Metric("list_cold", "ls -l of a directory of {list_count} remote objects, cold",
           "ls -l {list_count} objects, cold", "s", False),
    Metric("dedup_mib", "{dedup_copies} copies of the same {dedup}: MiB sent to the server",
           "dedup {dedup_copies} × {dedup}: MiB sent", "MiB", False, local=False),
    Metric("rss_mib", "peak daemon RSS while reading {big}", "peak daemon RSS, {big} read", "MiB", False,
           local=False),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Goal:
    """A target of the issues: `metric` of mountd compared with `ref` (a target or a constant)."""

    metric: str
    ref: str  # a target name, or "const"
    factor: float  # mountd must be >= factor * ref (higher is better) or <= factor * ref
    source: str
    const: float = 0.0  # the reference when ref == "const" (0: the dedup content size in MiB)
    ref_label: str = ""


GOALS: tuple[Goal, ...] = (
    Goal("small_create", "rclone", 0.5, "issue 7"),
    Goal("small_stat", "rclone", 1.0, "issue 7"),
    Goal("small_ls", "rclone", 1.0, "issue 7"),
    Goal("read_cold", "rclone", 1.0, "issue 7"),
    Goal("write_close", "local", 0.8, "issue 7, issue 4"),
    Goal("write_upload", "local", 0.8, "issue 4", ref_label="the direct fsspec upload"),
    Goal("read_cache", "rclone", 2.0, "issue 3"),
    Goal("read_warm", "local", 0.5, "issue 3"),
    Goal("rand4k_cache", "rclone", 10.0, "issue 3"),
    Goal("rand4k_warm", "rclone", 10.0, "issue 3, read with the page cache warm"),
    Goal("dedup_mib", "const", 1.05, "issue 4", ref_label="the content size"),
    Goal("rss_mib", "const", 1.0, "issue 7", const=300.0, ref_label="300 MiB"),
)


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Results:
    mode: str
    sizes: dict[str, Any]
    machine: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    loadavg: dict[str, list[float]] = field(default_factory=dict)  # 1-min load average at each round's start
    notes: dict[str, str] = field(default_factory=dict)
    started: str = ""
    duration_s: float = 0.0
    targets: list[str] = field(default_factory=list)

    def add(self, target: str, key: str, value: float) -> None:
        assert key in METRIC_BY_KEY, key
        self.metrics.setdefault(key, {}).setdefault(target, []).append(float(value))

    def values(self, key: str, target: str) -> list[float]:
        return self.metrics.get(key, {}).get(target, [])

    def med(self, key: str, target: str) -> float | None:
        v = self.values(key, target)
        return median(v) if v else None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Results:
        return cls(**json.loads(path.read_text()))


def expected_metrics(target: str) -> list[str]:
    """The metrics a complete run holds for `target`."""
    return [m.key for m in METRICS if (target != "local" or m.local) and target not in m.not_for]
