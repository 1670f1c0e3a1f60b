"""End-to-end mounts of real object-store servers on 127.0.0.1 (moto, rclone serve s3, Azurite, GCS emulator).

Each test mounts a repository whose remotes are buckets on servers started by the test suite,
drives it with syscalls, and checks the buckets directly through the SDKs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import mountd_cmd
from tests.servers import (
    AZURITE_KEY,
    REMOTE_KIND_FIXTURE,
    CountingProxy,
    ErrorServer,
    S3Server,
    free_port,
    remote_block,
    toml_inline,
)


def test_s3_mount_write_upload_read_back_list(make_repo, s3_server: S3Server):
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "models/seeded.bin", b"seeded by the SDK")
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data"))
    repo.start()
    assert sorted(os.listdir(repo.data)) == ["models"]
    assert (repo.data / "models" / "seeded.bin").read_bytes() == b"seeded by the SDK"
    blob = os.urandom(3 << 20)
    (repo.data / "models" / "ckpt.pt").write_bytes(blob)
    (repo.data / "empty-dir").mkdir()
    repo.sync()
    objects = s3_server.objects(bucket)
    assert objects["models/ckpt.pt"] == blob
    assert objects["empty-dir/"] == b""
    head = s3_server.client().head_object(Bucket=bucket, Key="models/ckpt.pt")
    assert head["Metadata"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert sorted(os.listdir(repo.data / "models")) == ["ckpt.pt", "seeded.bin"]
    repo.stop()
    # a fresh local tier: everything comes back from the bucket
    import shutil

    shutil.rmtree(repo.local)
    shutil.rmtree(repo.cache, ignore_errors=True)
    repo.start()
    assert sorted(os.listdir(repo.data)) == ["empty-dir", "models"]
    with open(repo.data / "models" / "ckpt.pt", "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == blob[1 << 20 : (1 << 20) + 4096]
    assert (hashlib.sha256((repo.data / "models" / "ckpt.pt").read_bytes()).digest()
            == hashlib.sha256(blob).digest())


AWKWARD = {
    "a": b"file a",  # and a/b below: the directory wins, the file is skipped
    "a/b": b"below a",
    "//x": b"empty segments",
    "../x": b"dot-dot",
    "n" * 300: b"name over 255 bytes",
    "ok/./y": b"dot segment",
    "fine.txt": b"fine",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_awkward_keys_and_a_large_directory(make_repo, request, kind):
    """Keys that cannot be POSIX names are skipped with a warning; 2,500 keys list across pages."""
    server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    big = [f"big/k{i:05d}" for i in range(2_500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: server.put(bucket, k, b"x"), big))
    refused = []
    for key, data in AWKWARD.items():  # seeded where the backend allows it (Azure refuses some names)
        try:
            server.put(bucket, key, data)
        except Exception:
            refused.append(key)
    assert set(refused) <= {"//x", "../x", "ok/./y"}, refused
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data"))
    repo.start()
    top = ["a", "big", "fine.txt", *(["ok"] if "ok/./y" not in refused else [])]
    assert sorted(os.listdir(repo.data)) == top
    assert (repo.data / "a" / "b").read_bytes() == b"below a"
    assert (repo.data / "fine.txt").read_bytes() == b"fine"
    if "ok/./y" not in refused:
        assert os.listdir(repo.data / "ok") == []
    names = os.listdir(repo.data / "big")
    assert len(names) == 2_500 and sorted(names) == [k.split("/")[1] for k in big]
    log = repo.log()
    assert "skipping key" in log
    assert "n" * 300 in log
    assert repo.proc is not None and repo.proc.poll() is None  # never crashed
    assert sorted(os.listdir(repo.data)) == top  # a second listing agrees


def test_several_clouds_in_one_mount_with_a_read_only_remote(make_repo, s3_server, azurite_server,
                                                             gcs_server):
    s3_bucket, az_bucket, gcs_bucket = (s3_server.new_bucket(), azurite_server.new_bucket(),
                                        gcs_server.new_bucket())
    gcs_server.put(gcs_bucket, "datasets/val.csv", b"id,label\n1,cat\n")
    remotes = (s3_server.remote_toml("models", s3_bucket, "/models")
               + azurite_server.remote_toml("runs", az_bucket, "/runs", prefix="team")
               + gcs_server.remote_toml("data", gcs_bucket, "/datasets", prefix="datasets", read_only=True))
    repo = make_repo(remote_toml=remotes)
    repo.start()
    assert sorted(os.listdir(repo.mp)) == ["datasets", "models", "runs"]
    (repo.mp / "models" / "m.pt").write_bytes(b"weights")
    (repo.mp / "runs" / "r1.log").write_bytes(b"loss=0.1")
    assert (repo.mp / "datasets" / "val.csv").read_bytes() == b"id,label\n1,cat\n"
    for attempt in (lambda: (repo.mp / "datasets" / "new.csv").write_bytes(b"x"),
                    lambda: (repo.mp / "datasets" / "val.csv").unlink(),
                    lambda: os.mkdir(repo.mp / "datasets" / "d"),
                    lambda: open(repo.mp / "datasets" / "val.csv", "r+b")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    repo.sync()
    assert s3_server.objects(s3_bucket) == {"m.pt": b"weights"}
    assert azurite_server.objects(az_bucket) == {"team/r1.log": b"loss=0.1"}
    assert gcs_server.objects(gcs_bucket) == {"datasets/val.csv": b"id,label\n1,cat\n"}
    st = repo.status()
    assert ({r["name"]: r["read_only"] for r in st["remotes"]}
            == {"models": False, "runs": False, "data": True})


# --- errors at mount time and from `mountd check` ---------------------------------------------------


@pytest.fixture
def broken_remotes(s3_server, s3_persistent_server, azurite_server):
    """A config body with one good remote and one of each failure; yields (toml, cleanup objects)."""
    good = s3_server.new_bucket()
    s3_server.put(good, "models/w.bin", b"weights")
    errors = ErrorServer(500)
    stall = CountingProxy(s3_server.port)
    stall.stall()
    denied_bucket = s3_persistent_server.new_bucket()
    az = azurite_server.new_bucket()
    toml = (s3_server.remote_toml("good", good, "/good")
            + azurite_server.remote_toml("azgood", az, "/az")
            + s3_server.remote_toml("nobucket", "no-such-bucket", "/nobucket")
            + s3_server.remote_toml("down", good, "/down", endpoint_url=f"http://127.0.0.1:{free_port()}")
            + s3_server.remote_toml("broken", good, "/broken", endpoint_url=errors.endpoint_url)
            + s3_server.remote_toml("stalled", good, "/stalled", endpoint_url=stall.endpoint_url)
            + remote_block("denied", s3_persistent_server.url(denied_bucket), "/denied",
                           {**s3_persistent_server.options(), "secret": "wrong-secret-value"}))
    yield toml
    errors.close()
    stall.close()


EXPECTED_FAILURES = {
    "nobucket": "'no-such-bucket' of s3://no-such-bucket does not exist",
    "down": "unreachable",
    "broken": "HTTP 500",
    "stalled": "no answer",
    "denied": "access denied",
}


def test_check_names_each_failing_remote(tmp_path, broken_remotes):
    cfg = tmp_path / "repo.toml"
    cfg.write_text(f'[local]\npath = "{tmp_path}/local"\n[mount]\nread_timeout = "2s"\n' + broken_remotes)
    r = mountd_cmd("check", str(cfg), "--write", "--timeout", "8s", check=False, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    by_remote: dict[str, list[str]] = {}
    for line in lines[1:]:
        parts = line.split()
        by_remote.setdefault(parts[1], []).append(line)
    # list, read, write, conditions (moto and Azurite refuse a second create-only write)
    assert [ln.split()[0] for ln in by_remote["good"]] == ["ok", "ok", "ok", "ok"]
    assert "read 1 byte of 'models/w.bin'" in "\n".join(by_remote["good"])
    assert "conditional writes enforced" in by_remote["good"][3]
    # azgood is empty: nothing to read
    assert [ln.split()[0] for ln in by_remote["azgood"]] == ["ok", "skip", "ok", "ok"]
    for name, text in EXPECTED_FAILURES.items():
        assert len(by_remote[name]) == 1 and by_remote[name][0].split()[0] == "FAIL", by_remote[name]
        assert f"remote '{name}'" in by_remote[name][0] and text in by_remote[name][0], by_remote[name][0]
    assert "wrong-secret-value" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "5 check(s) failed" in r.stderr
    assert s3_server_keys_unchanged(r)


def s3_server_keys_unchanged(r) -> bool:
    return ".mountd-check-" not in r.stdout or "wrote and deleted" in r.stdout


def test_mount_refuses_broken_remotes_with_require_remotes_and_mounts_without(make_repo, broken_remotes):
    repo = make_repo(remote_toml=broken_remotes)
    # probes are bounded by 2.5 x read_timeout: room for a 500 to come back (with one retry) on a busy machine
    repo.config.write_text(repo.config.read_text().replace('listing_ttl = "1h"',
                                                           'listing_ttl = "1h"\nread_timeout = "3s"'))
    r = mountd_cmd("mount", str(repo.config), str(repo.mp), "--foreground", "--require-remotes", check=False,
                   timeout=120)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mountd: error: remote '"), r.stderr
    assert any(f"remote '{n}'" in err[0] for n in EXPECTED_FAILURES), err
    assert "Traceback" not in r.stderr and "wrong-secret-value" not in r.stderr
    repo.expected_log_errors.append("unreachable")
    repo.start()  # without --require-remotes: mounts, serves the good remotes
    assert (repo.mp / "good" / "models" / "w.bin").read_bytes() == b"weights"
    st = {x["name"]: x for x in repo.status()["remotes"]}
    assert st["good"]["reachable"] and st["azgood"]["reachable"]
    for name, text in EXPECTED_FAILURES.items():
        assert not st[name]["reachable"] and f"remote '{name}'" in st[name]["error"], st[name]
        assert text in st[name]["error"] or (name == "stalled" and "no answer" in st[name]["error"])
    for name in EXPECTED_FAILURES:
        assert f"remote '{name}'" in repo.log()
    assert "wrong-secret-value" not in repo.log()


# --- offline, stalls, secrets -----------------------------------------------------------------------


def _fast_timeouts(repo) -> None:
    repo.config.write_text(repo.config.read_text().replace('listing_ttl = "1h"',
                                                           'listing_ttl = "1h"\nread_timeout = "2s"'))


def _wait_status(repo, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = repo.status()
        if pred(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)  # status is polled: the daemon has no event to wait on from outside


@pytest.mark.slow
def test_offline_start_queues_writes_and_reconnects(make_repo, tmp_path):
    server = S3Server(tmp_path / "s3", persistent=True)  # rclone serve s3 keeps data across restarts
    server.start()
    try:
        bucket = server.new_bucket()
        server.put(bucket, "seed.txt", b"seeded")
        repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data"))
        _fast_timeouts(repo)
        repo.start()  # cache the listing while online
        assert (repo.data / "seed.txt").read_bytes() == b"seeded"
        repo.stop()
        server.stop()
        repo.expected_log_errors.append("unreachable")
        repo.start()  # offline: mounts anyway
        st = repo.status()
        assert not st["remotes"][0]["reachable"] and "remote 'main'" in st["remotes"][0]["error"]
        assert "seed.txt" in os.listdir(repo.data)  # listing served from the local metadata
        (repo.data / "new.txt").write_bytes(b"written offline")
        assert (repo.data / "new.txt").read_bytes() == b"written offline"
        assert repo.status()["pending_uploads"] == 1
        server.start()  # same port
        repo.sync(timeout=60)
        assert server.get(bucket, "new.txt") == b"written offline"
        st = _wait_status(repo, lambda s: s["remotes"][0]["reachable"])
        assert st["remotes"][0]["reachable"], st["remotes"][0]
        assert "reachable again" in repo.log()
    finally:
        server.stop()


@pytest.mark.slow
def test_stalled_remote_reads_fail_eio_and_writes_queue(make_repo, s3_server, counting_proxy):
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "cold.bin", os.urandom(100_000))
    proxy = counting_proxy(s3_server)
    repo = make_repo(remote_toml=s3_server.remote_toml("main", bucket, "/data",
                                                       endpoint_url=proxy.endpoint_url))
    _fast_timeouts(repo)
    repo.start()
    assert os.listdir(repo.data) == ["cold.bin"]
    os.stat(repo.data / "cold.bin")
    proxy.stall()
    t0 = time.monotonic()
    with pytest.raises(OSError) as e, open(repo.data / "cold.bin", "rb") as f:
        f.read(4096)
    assert e.value.errno == errno.EIO
    assert time.monotonic() - t0 < 30
    (repo.data / "queued.txt").write_bytes(b"waits for the server")
    assert repo.status()["pending_uploads"] >= 1
    proxy.resume()
    repo.sync(timeout=60)
    assert s3_server.get(bucket, "queued.txt") == b"waits for the server"


def test_secrets_never_in_debug_logs_status_or_ps(make_repo, s3_persistent_server, azurite_server):
    s3_bucket, az_bucket = s3_persistent_server.new_bucket(), azurite_server.new_bucket()
    remotes = (s3_persistent_server.remote_toml("s3", s3_bucket, "/s3")
               + azurite_server.remote_toml("az", az_bucket, "/az")
               + remote_block("bad", s3_persistent_server.url(s3_bucket), "/bad",
                              {**s3_persistent_server.options(), "secret": "wrong-but-secret-value-42"}))
    repo = make_repo(remote_toml=remotes)  # MountedRepo runs the daemon with --log-level DEBUG
    repo.expected_log_errors.append("access denied")
    repo.start()
    (repo.mp / "s3" / "f.txt").write_bytes(b"x" * 1000)
    (repo.mp / "az" / "g.txt").write_bytes(b"y" * 1000)
    repo.sync(repo.mp / "s3")
    repo.sync(repo.mp / "az")
    assert (repo.mp / "s3" / "f.txt").read_bytes() == b"x" * 1000
    os.listdir(repo.mp / "bad")
    status = mountd_cmd("status", str(repo.mp), "--json").stdout + mountd_cmd("status", str(repo.mp)).stdout
    ps = "\n".join(line for line in subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True,
                                                     text=True).stdout.splitlines() if " -m mountd " in line)
    assert str(repo.config) in ps  # the daemon's own command line is there
    secrets = [s3_persistent_server.secret, "wrong-but-secret-value-42", AZURITE_KEY, AZURITE_KEY[:20]]
    log = repo.log()
    assert "DEBUG" in log and "access denied" in log
    for secret in secrets:
        assert secret not in log, f"secret in the daemon log: {secret[:6]}..."
        assert secret not in status
        assert secret not in ps


def test_links_remote_shows_listed_objects_read_only(make_repo, tmp_path, s3_server, gcs_server):
    s3_bucket, gcs_bucket = s3_server.new_bucket(), gcs_server.new_bucket()
    weights = os.urandom(300_000)
    s3_server.put(s3_bucket, "models/v1/weights.bin", weights)
    gcs_server.put(gcs_bucket, "sets/val.csv", b"a,b\n")
    local = tmp_path / "elsewhere"
    local.mkdir()
    (local / "notes.txt").write_bytes(b"on disk")
    links = tmp_path / "links.txt"
    links.write_text("\n".join([
        "# objects we keep elsewhere",
        f"s3://{s3_bucket}/models/v1/weights.bin",
        f"gs://{gcs_bucket}/sets/val.csv",
        f"file://{local}/notes.txt",
        "not a url",
        f"s3://{s3_bucket}/other/weights.bin",  # the name is taken by the first line
        "",
    ]))
    s3_opts, gcs_opts = s3_server.options(), gcs_server.options()
    remote = (f'\n[[remote]]\nname = "refs"\nurl = "links://{links}"\nat = "/refs"\n'
              f"options.s3 = {toml_inline(s3_opts)}\noptions.gs = {toml_inline(gcs_opts)}\n")
    repo = make_repo(remote_toml=remote)
    repo.start()
    assert sorted(os.listdir(repo.mp / "refs")) == ["notes.txt", "val.csv", "weights.bin"]
    assert os.stat(repo.mp / "refs" / "weights.bin").st_size == len(weights)
    with open(repo.mp / "refs" / "weights.bin", "rb") as f:
        f.seek(100_000)
        assert f.read(1000) == weights[100_000:101_000]
    assert (repo.mp / "refs" / "val.csv").read_bytes() == b"a,b\n"
    assert (repo.mp / "refs" / "notes.txt").read_bytes() == b"on disk"
    for attempt in (lambda: (repo.mp / "refs" / "new.txt").write_bytes(b"x"),
                    lambda: (repo.mp / "refs" / "val.csv").unlink(),
                    lambda: open(repo.mp / "refs" / "notes.txt", "r+b")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    st = repo.status()
    assert st["pending_uploads"] == 0 and st["statistics"]["vfs"]["materialized"] == 0  # nothing copied
    assert s3_server.keys(s3_bucket) == ["models/v1/weights.bin"]
    log = repo.log()
    assert "line 5 is not an object URL" in log and "the name 'weights.bin' is taken" in log
    assert {r["name"]: r["read_only"] for r in st["remotes"]} == {"refs": True}


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_dedup_and_rename_copy_on_the_server(make_repo, request, counting_proxy, kind):
    """Identical content and renames cost server-side copies, not uploads: counted at a proxy."""
    server = request.getfixturevalue(REMOTE_KIND_FIXTURE[kind])
    bucket = server.new_bucket()
    proxy = counting_proxy(server)
    repo = make_repo(remote_toml=server.remote_toml("main", bucket, "/data", endpoint_url=proxy.endpoint_url))
    repo.start()
    blob = os.urandom(4 << 20)
    (repo.data / "one.bin").write_bytes(blob)
    repo.sync()
    sent_once = proxy.bytes_up
    assert sent_once >= len(blob)
    (repo.data / "two.bin").write_bytes(blob)  # same bytes under another name
    os.rename(repo.data / "one.bin", repo.data / "renamed.bin")
    repo.sync()
    assert proxy.bytes_up - sent_once < len(blob) // 4, proxy.bytes_up - sent_once
    assert server.objects(bucket) == {"two.bin": blob, "renamed.bin": blob}
