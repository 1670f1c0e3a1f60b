"""The Prometheus endpoint: scraped over HTTP on 127.0.0.1 while real programs use the mount."""

from __future__ import annotations

import os
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import mountd_cmd

METRICS_TOML = """
[metrics]
listen = "127.0.0.1:0"
"""


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and labels (without `repository`) -> value."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "repository"))
            if "repository" in s.labels:
                assert s.labels["repository"] == "test"
            out[(s.name, labels)] = s.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_counters_move_during_a_workload(make_repo):
    repo = make_repo(extra_toml=METRICS_TOML)
    (repo.remote_dir / "remote-only.bin").write_bytes(os.urandom(50_000))
    repo.start()
    url = repo.status()["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    before = scrape(url)
    assert value(before, "mountd_pending_uploads") == 0
    assert value(before, "mountd_remote_unreachable", remote="main") == 0
    assert value(before, "process_resident_memory_bytes") > 0

    # a workload of real programs: write, copy, list, read back, read an object only the remote has
    payload = os.urandom(300_000)
    (repo.data / "a.bin").write_bytes(payload)
    subprocess.run(["cp", str(repo.data / "a.bin"), str(repo.data / "b.bin")], check=True)
    subprocess.run(["ls", "-l", str(repo.data)], check=True, capture_output=True)
    assert (repo.data / "remote-only.bin").read_bytes()
    assert not (repo.mp / "missing").exists()
    during = scrape(url)
    # (writes of files on the local tier go from the kernel to the local file: FUSE passthrough)
    assert (value(during, "mountd_fuse_requests_total", op="create")
            > value(before, "mountd_fuse_requests_total", op="create"))
    assert value(during, "mountd_fuse_errors_total", op="lookup") >= 1  # "missing" is ENOENT
    assert value(during, "mountd_remote_download_bytes_total") >= 50_000

    repo.sync()
    after = scrape(url)
    assert value(after, "mountd_pending_uploads") == 0
    assert value(after, "mountd_uploads_applied_total") >= 2
    # a.bin went up; b.bin has the same sha256, so the remote copied it instead
    assert value(after, "mountd_remote_upload_bytes_total") == len(payload)
    assert value(after, "mountd_dedup_saved_bytes_total") == len(payload)
    assert value(after, "mountd_remote_errors_total", kind="upload") == 0
    for op in ("create", "flush", "read", "lookup"):
        count = value(after, "mountd_fuse_request_duration_seconds_count", op=op)
        assert count >= 1, op
        assert value(after, "mountd_fuse_request_duration_seconds_bucket", op=op, le="+Inf") == count
        assert value(after, "mountd_fuse_requests_total", op=op) == count
    assert value(after, "mountd_remote_reads_total") >= 1
    tiers = {dict(labels)["tier"] for (name, labels) in after if name == "mountd_cache_misses_total"}
    assert tiers == {"previews", "storage"}, tiers
    assert sum(value(after, "mountd_cache_misses_total", tier=t) for t in tiers) >= 1
    assert sum(value(after, "mountd_cache_size_bytes", tier=t) for t in tiers) >= 50_000

    # the same bytes again, past the kernel's page cache: a cache tier (or the memory buffer) answers
    hits = sum(value(after, "mountd_cache_hits_total", tier=t) for t in (*tiers, "memory"))
    with open(repo.data / "remote-only.bin", "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert len(f.read()) == 50_000
    again = scrape(url)
    assert sum(value(again, "mountd_cache_hits_total", tier=t) for t in (*tiers, "memory")) > hits
    assert value(again, "mountd_remote_reads_total") == value(after, "mountd_remote_reads_total")


def test_metrics_listen_is_validated_and_off_by_default(tmp_path):
    from mountd.config import MetricsConfig, load_config

    assert MetricsConfig().listen is None
    assert MetricsConfig(listen="9464").address == ("127.0.0.1", 9464)
    assert MetricsConfig(listen="127.0.0.1:9464").address == ("127.0.0.1", 9464)
    bad = tmp_path / "bad.toml"
    bad.write_text('[metrics]\nlisten = "localhost:http"\n[[remote]]\nname = "r"\nurl = "memory://x"\n')
    r = mountd_cmd("mount", str(bad), str(tmp_path), check=False)
    assert r.returncode == 1 and "metrics.listen" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(Exception, match="metrics.listen"):
        load_config(bad)
