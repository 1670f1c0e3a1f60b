"""`LatencyHistogram`: counts of durations in fixed buckets, cheap enough for every FUSE request.

It only counts (one bisect and two additions per observation); exporting the counts in
Prometheus format is the metrics module's job, done when a scrape asks. It never allocates
per observation and never takes a lock: it is used from the trio thread only.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# upper bounds in seconds: from a hot page-cache hit (tens of µs) to a slow remote (tens of s)
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                              0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> dict[str, Any]:
        """Cumulative counts per upper bound (the Prometheus convention), and the sum."""
        cumulative, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return {"buckets": cumulative, "sum": self.total, "count": running}
