"""The opt-in Prometheus endpoint (`[metrics] listen`), served by prometheus_client.

Pull-based: nothing here runs on the FUSE fast path. At each scrape the collector asks the trio
thread for one `statistics()` snapshot of every component (the only thread allowed to touch
the SQLite connection) and turns it into metric families. The HTTP server runs in
prometheus_client's own thread; it never mutates mount state and never exposes secrets (no
URLs, only remote names).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


def _num(d: dict[str, Any], *path: str) -> float:
    for key in path[:-1]:
        d = d.get(key) or {}
    value = d.get(path[-1], 0)
    return float(value) if isinstance(value, int | float) else 0.0


class MountCollector(Collector):
    """Metric families computed from one statistics snapshot per scrape."""

    def __init__(self, name: str, snapshot: Snapshot) -> None:
        self.name = name
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._snapshot()
        except (trio.RunFinishedError, trio.Cancelled, RuntimeError) as e:
            log.debug("metrics scrape while stopping: %s", e)
            return
        st: dict[str, Any] = snap["statistics"]
        yield from self._fuse(st.get("fuse") or {})
        yield from self._cache(st)
        yield from self._transfer(st)
        yield from self._uploads(st)
        unreachable = GaugeMetricFamily("mountd_remote_unreachable", "1 while the remote failed its probe",
                                        labels=["repository", "remote"])
        for remote, down in snap["remotes"].items():
            unreachable.add_metric([self.name, remote], 1.0 if down else 0.0)
        yield unreachable

    def _fuse(self, fuse: dict[str, Any]) -> Iterator[Metric]:
        labels = ["repository", "op"]
        calls = CounterMetricFamily("mountd_fuse_requests", "FUSE requests handled, by operation",
                                    labels=labels)
        errors = CounterMetricFamily("mountd_fuse_errors", "FUSE requests answered with an error",
                                     labels=labels)
        latency = HistogramMetricFamily("mountd_fuse_request_duration_seconds",
                                        "Time to answer a FUSE request, by operation", labels=labels)
        for op, n in sorted((fuse.get("calls") or {}).items()):
            calls.add_metric([self.name, op], n)
            errors.add_metric([self.name, op], (fuse.get("errors") or {}).get(op, 0))
        for op, h in sorted((fuse.get("latency") or {}).items()):
            buckets = [("+Inf" if b == float("inf") else repr(b), c) for b, c in h["buckets"]]
            latency.add_metric([self.name, op], buckets, h["sum"])
        yield from (calls, errors, latency)

    def _cache(self, st: dict[str, Any]) -> Iterator[Metric]:
        labels = ["repository", "tier"]
        hits = CounterMetricFamily("mountd_cache_hits", "Chunk reads served by a cache tier", labels=labels)
        misses = CounterMetricFamily("mountd_cache_misses", "Chunk reads a cache tier could not serve",
                                     labels=labels)
        evictions = CounterMetricFamily("mountd_cache_evictions", "Entries evicted from a cache tier to stay "
                                        "under its cap", labels=labels)
        expirations = CounterMetricFamily("mountd_cache_expirations", "Entries dropped from a cache tier "
                                          "because they expired", labels=labels)
        size = GaugeMetricFamily("mountd_cache_size_bytes", "Bytes held by a cache tier", labels=labels)
        cap = GaugeMetricFamily("mountd_cache_capacity_bytes", "Size cap of a cache tier", labels=labels)
        # the read path's in-memory buffer of recent chunks is the first place a read looks
        reader = st.get("reader") or {}
        hits.add_metric([self.name, "memory"], _num(reader, "memory_hits") or _num(reader, "block_hits"))
        tiers = (st.get("cache") or {}).get("tiers") or {}
        for tier, t in sorted(tiers.items()):
            hits.add_metric([self.name, tier], _num(t, "hits"))
            misses.add_metric([self.name, tier], _num(t, "misses"))
            evictions.add_metric([self.name, tier], _num(t, "evictions"))
            expirations.add_metric([self.name, tier], _num(t, "expirations"))
            size.add_metric([self.name, tier], _num(t, "bytes"))
            cap.add_metric([self.name, tier], _num(t, "cap"))
        yield from (hits, misses, evictions, expirations, size, cap)

    def _one(self, family: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str,
             value: float) -> Metric:
        metric = family(name, doc, labels=["repository"])
        metric.add_metric([self.name], value)
        return metric

    def _transfer(self, st: dict[str, Any]) -> Iterator[Metric]:
        yield self._one(CounterMetricFamily, "mountd_remote_download_bytes", "Bytes read from remotes",
                        _num(st, "reader", "bytes_fetched"))
        yield self._one(CounterMetricFamily, "mountd_remote_reads", "Ranged GETs sent to remotes",
                        _num(st, "reader", "gets"))
        yield self._one(CounterMetricFamily, "mountd_remote_upload_bytes", "Bytes sent to remotes",
                        _num(st, "reconciler", "bytes_uploaded"))
        yield self._one(CounterMetricFamily, "mountd_dedup_saved_bytes",
                        "Bytes not sent because the content was already stored (dedup by sha256)",
                        _num(st, "reconciler", "bytes_deduplicated"))
        yield self._one(CounterMetricFamily, "mountd_conflicts",
                        "Writes refused because another host had changed the key first "
                        "(kept as conflict copies unless on_conflict says otherwise)",
                        _num(st, "reconciler", "conflicts"))
        errors = CounterMetricFamily("mountd_remote_errors", "Failed remote operations, by kind",
                                     labels=["repository", "kind"])
        errors.add_metric([self.name, "read"], _num(st, "reader", "errors"))
        errors.add_metric([self.name, "upload"], _num(st, "uploader", "failed"))
        errors.add_metric([self.name, "listing"], _num(st, "vfs", "listing_errors"))
        yield errors

    def _uploads(self, st: dict[str, Any]) -> Iterator[Metric]:
        yield self._one(GaugeMetricFamily, "mountd_pending_uploads",
                        "Journal entries not yet applied to their remote",
                        _num(st, "uploader", "pending"))
        yield self._one(GaugeMetricFamily, "mountd_uploads_in_flight", "Journal entries being applied now",
                        _num(st, "uploader", "in_flight"))
        yield self._one(CounterMetricFamily, "mountd_uploads_applied",
                        "Journal entries applied to their remote",
                        _num(st, "uploader", "applied"))
        yield self._one(GaugeMetricFamily, "mountd_local_free_bytes",
                        "Free bytes on the local tier's filesystem",
                        _num(st, "local", "free_bytes"))


async def serve(name: str, address: tuple[str, int], snapshot: Callable[[], dict[str, Any]], *,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics until cancelled; `task_status` gets the URL (the real port when 0 was asked).

    `snapshot` is called on the trio thread, once per scrape.
    """
    token = trio.lowlevel.current_trio_token()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MountCollector(name, lambda: trio.from_thread.run_sync(snapshot, trio_token=token)))
    ProcessCollector(registry=registry)
    host, port = address
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        log.error("metrics endpoint not started: cannot listen on %s:%d: %s", host, port, e.strerror)
        task_status.started("")
        return
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("metrics at %s", url)
    try:
        task_status.started(url)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.shutdown)
            server.server_close()
            thread.join(5)
