"""The benchmark harness keeps working: its quick mode runs once against all four targets, and the
two-host scenario (`bench.multihost`) runs in small.

Real everything: `rclone serve s3` on 127.0.0.1, mountd, `rclone mount`, s3fs-fuse and a local
directory, driven by `python -m bench --quick` in a subprocess (as `bash bench/run.sh --quick` does
after installing). The figures are not judged here, only that every scenario produced one.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.metrics import METRICS, TARGET_ORDER, Results, expected_metrics
from bench.report import write_docs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_mode_measures_every_scenario_on_every_target(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--work", str(tmp_path / "work"),
                        "--out", str(out), "--no-docs"],
                       cwd=REPO, capture_output=True, text=True, timeout=220)
    assert out.exists(), f"no results file; bench said:\n{r.stderr[-4000:]}"
    res = Results.load(out)
    assert res.errors == {}, f"targets failed: {res.errors}\n{r.stderr[-4000:]}"
    assert r.returncode == 0, r.stderr[-4000:]
    assert res.targets == list(TARGET_ORDER)
    for target in TARGET_ORDER:
        for key in expected_metrics(target):
            values = res.values(key, target)
            assert len(values) == res.sizes["reps"] == 1, (target, key, values)
            # a kernel CPU time is counted in clock ticks: a 16 MiB read may add none
            may_be_zero = key == "read_cache_sys"
            assert all(math.isfinite(v) and (v > 0 or may_be_zero and v == 0) for v in values), (
                target, key, values)
    # the counting proxy saw every byte of the peers' copies (neither deduplicates)
    content_mib = res.sizes["dedup_copies"] * res.sizes["dedup"] / 2**20
    for peer in ("rclone", "s3fs"):
        assert res.values("dedup_mib", peer)[0] >= content_mib, (peer, res.values("dedup_mib", peer))
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text(), "a mount was left behind"

    md, png = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png"
    md.write_text("# Benchmarks\n\nhand-written intro stays\n")
    write_docs(res, md, png)
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written intro stays\n")
    assert all(f"| {t} " in text or f" {t} |" in text for t in TARGET_ORDER)
    assert text.count("\n| ") >= len(METRICS) * 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_two_hosts_quick_b_sees_every_change_and_idle_hosts_list_the_log_once_a_poll(tmp_path: Path) -> None:
    """`python -m bench.multihost` in small: two daemons on one moto bucket, 3 changes, 2 s idle."""
    from bench.multihost import BEGIN, END, run, section, write_section

    res = run(tmp_path / "work", changes=3, idle=2, server_kind="moto", reader_sleeps=[0.01], full_log=False,
              mountd_commit=None, seed=1, log=lambda s: None)
    (rnd,) = res.rounds
    s = rnd.summary()
    assert s["missed"] == 0 and s["torn_reads"] == 0, (s, rnd.torn_samples)
    assert s["seen"] == 3, s  # (how soon is the benchmark's to say, not a timed test's)
    for host, f in res.idle["after the changes"].items():
        assert set(f["by_kind"]) <= {"LIST log"}, (host, f)
        assert f["requests"] <= f["seconds"] / res.poll_interval_s + 1, (host, f)
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text(), "a mount was left behind"

    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nintro\n<!-- results:start -->\nx\n<!-- results:end -->\n")
    for _ in range(2):  # the second write replaces the first
        write_section(md, section(res, "cmd"))
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n<!-- results:start -->\nx\n<!-- results:end -->\n")
    assert text.count(BEGIN) == text.count(END) == 1 and "## Two hosts on one bucket" in text


@pytest.mark.timeout(30)
def test_delay_proxy_adds_its_round_trip_to_each_request_and_counts_them() -> None:
    """bench.latency's proxy in front of a tiny HTTP server on 127.0.0.1: a request on a new
    connection takes two added RTTs (handshake and exchange), the next on the same connection
    one; each is counted by kind with its body's bytes; a bandwidth cap paces the bodies."""
    import http.client
    import http.server
    import threading
    import time

    from bench.proxy import DelayProxy

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_PUT(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rtt = 0.1
    proxy = DelayProxy(server.server_address[1], rtt_s=rtt)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)

        def timed(method: str, body: bytes | None = None) -> float:
            t0 = time.monotonic()
            conn.request(method, "/bucket/key", body=body)
            assert conn.getresponse().read() == b"ok"
            return time.monotonic() - t0

        first, second = timed("GET"), timed("GET")
        assert 2 * rtt <= first < 2 * rtt + 0.5, first
        assert rtt <= second < rtt + 0.5, second
        proxy.bandwidth = 2e6  # 2 MB/s: 400 kB take 0.2 s more
        assert rtt + 0.2 <= timed("PUT", b"x" * 400_000) < rtt + 1.0
        assert proxy.snapshot() == {"GET": 2, "PUT": 1}
        assert 400_000 < proxy.bytes_up < 401_000
        conn.close()
    finally:
        proxy.close()
        server.shutdown()


def test_latency_section_goes_after_the_others_and_keeps_its_notes(tmp_path: Path) -> None:
    from bench.latency import BEGIN, END, NOTES, section, write_section

    figures = {"small": {"create_s": 1.0, "server_s": 2.0, "requests": 30,
                         "by_kind": {"PUT": 10, "HEAD": 20}},
               "append": {"mib_up": 21.0, "mib_down": 1.0, "total_s": 3.0, "append_s_median": 0.1,
                          "by_kind": {"PUT": 20}},
               "edit": {"mib_up": 16.0, "mib_down": 16.0, "close_s": 0.5, "server_s": 1.5,
                        "by_kind": {"GET": 1, "PUT": 1, "POST": 2}},
               "read": {"mb_s": 512.3, "rss_peak_mib": 99.6, "mib_down": 1024.0, "requests": 1100}}
    res = {"machine": {"cpu": "c", "memory": "m", "kernel": "k", "disk": "d", "mountd": "commit x"},
           "small_files": 10, "appends": 20, "append_base_mib": 1, "loadavg": {"mountd@20": 1.0},
           "edit_mib": 1024, "read_mib": 1024,
           "started": "now", "duration_s": 60, "errors": {}, "results": {"mountd@20": figures}}
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n<!-- two-hosts:begin -->\nx\n<!-- two-hosts:end -->\n")
    write_section(md, section(res, "cmd"))
    md.write_text(md.read_text().replace(NOTES + "\n", NOTES + "\nhand-written\n"))
    write_section(md, section(res, "cmd2"))
    text = md.read_text()
    where = [text.index(s) for s in ("<!-- two-hosts:end -->", BEGIN, "hand-written", END)]
    assert where == sorted(where), where
    assert text.count(BEGIN) == 1 and "`cmd2`" in text and "`cmd`" not in text
    assert "| mountd | 20 ms | 1.00 s | **2.00 s** | **3.00** | HEAD 2.00, PUT 1.00 | " in text
    assert "| mountd | 20 ms | **21.0** | 1.0 |" in text
    assert "| mountd | 20 ms | **16.0** | **16.0** | 0.50 s | 1.50 s | POST 2, GET 1, PUT 1 |" in text
    assert "| mountd | 20 ms | **512** | 100 MiB | 1,024.0 | 1,100 |\n" in text
