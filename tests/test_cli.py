"""The command line: every failure is one clear line on stderr (no traceback) and a non-zero exit.

Each case runs the real `mountd` command in a subprocess, the way a user would. The "no
/dev/fuse" and "no permission" cases run it in a private mount namespace (`unshare`) where
/dev/fuse is hidden or replaced, so the machine's own device is never touched.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from mountd.config import (
    CacheConfig,
    LocalConfig,
    MetricsConfig,
    MountOptions,
    RemoteConfig,
    RepoConfig,
    TierConfig,
    WritebackConfig,
    load_config,
)
from tests.conftest import PYTHON, REPO, is_mounted, mountd_cmd


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting that it is one line)."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mountd: error: "), lines[0]
    return lines[0]


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def base_config(tmp_path: Path, extra: str = "", remote: str | None = None) -> str:
    if remote is None:
        (tmp_path / "remote").mkdir(exist_ok=True)  # (a file:// remote's directory must exist)
    remote = remote or f'url = "file://{tmp_path / "remote"}"'
    return textwrap.dedent(f"""
        [local]
        path = "{tmp_path / 'local'}"
        [cache]
        path = "{tmp_path / 'cache'}"
        """) + textwrap.dedent(extra) + textwrap.dedent(f"""
        [[remote]]
        name = "main"
        {remote}
        """)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the mountpoint
# ---------------------------------------------------------------------------------------------
def test_missing_mountpoint(tmp_path):
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path))
    line = one_error_line(mountd_cmd("mount", str(cfg), str(tmp_path / "nope"), check=False))
    assert "does not exist" in line and f"mkdir -p {tmp_path / 'nope'}" in line


def test_mountpoint_not_empty(tmp_path):
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path))
    mp = tmp_path / "mp"
    mp.mkdir()
    (mp / "something").write_text("x")
    line = one_error_line(mountd_cmd("mount", str(cfg), str(mp), check=False))
    assert "not empty" in line and str(mp) in line


def test_mountpoint_is_a_file(tmp_path):
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path))
    (tmp_path / "f").write_text("x")
    line = one_error_line(mountd_cmd("mount", str(cfg), str(tmp_path / "f"), check=False))
    assert "not a directory" in line


def test_already_mounted(repo, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    cfg = write_config(other / "r.toml", base_config(other))
    for args in ((), ("--foreground",)):
        line = one_error_line(mountd_cmd("mount", str(cfg), str(repo.mp), *args, check=False))
        assert "already mounted" in line and f"mountd umount {repo.mp}" in line
    # the same repository (same local tier) at a second mountpoint: its state is locked
    mp2 = tmp_path / "mp2"
    mp2.mkdir()
    line = one_error_line(mountd_cmd("mount", str(repo.config), str(mp2), "--foreground", check=False))
    assert "in use by another mountd" in line and str(repo.proc.pid) in line
    assert (repo.data / "x").write_text("still served") and is_mounted(repo.mp)


# ---------------------------------------------------------------------------------------------
# the configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,field,hint", [
    ('[writeback]\ndelay = "5 parsecs"\n', "writeback.delay", "'5s'"),
    ('[mount]\nallow_others = true\n', "mount.allow_others", "unknown field"),
    ('[cache]\nchunk_size = "1K"\n', "cache.chunk_size", "between 64K and 1G"),
    ('[writeback]\nconcurrency = 0\n', "writeback.concurrency", "greater than or equal to 1"),
    ('[local]\nmax_dirty = "lots"\n', "local.max_dirty", "'8M'"),
    ('[metrics]\nlisten = "localhost"\n', "metrics.listen", "HOST:PORT"),
])
def test_invalid_config_names_the_field(tmp_path, extra, field, hint):
    # the [local]/[cache] tables of base_config come first: put the faulty table in a file of its own
    body = base_config(tmp_path)
    table = extra.split("]")[0] + "]"
    if table in body:
        body = body.replace(table + "\n", extra, 1)
    else:
        body = extra + body
    cfg = write_config(tmp_path / "bad.toml", body)
    mp = tmp_path / "mp"
    mp.mkdir()
    line = one_error_line(mountd_cmd("mount", str(cfg), str(mp), check=False))
    assert f"`{field}`" in line and hint in line, line
    assert str(cfg) in line
    assert not is_mounted(mp)


def test_invalid_remote_fields(tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    cases = {
        'url = "ftp://host/x"': ("remote[0].url", "unsupported scheme ftp://"),
        'url = "/just/a/path"': ("remote[0].url", "must start with a scheme"),
        f'url = "file://{tmp_path}"\nat = "models"': ("remote[0].at", "absolute path"),
    }
    for remote, (field, hint) in cases.items():
        cfg = write_config(tmp_path / "bad.toml", base_config(tmp_path, remote=remote))
        line = one_error_line(mountd_cmd("mount", str(cfg), str(mp), check=False))
        assert f"`{field}`" in line and hint in line, line
    cfg = write_config(tmp_path / "none.toml", f'[local]\npath = "{tmp_path}"\n')
    line = one_error_line(mountd_cmd("mount", str(cfg), str(mp), check=False))
    assert "`remote`" in line and "required" in line


def test_config_file_missing_or_not_toml(tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    line = one_error_line(mountd_cmd("mount", str(tmp_path / "absent.toml"), str(mp), check=False))
    assert "no such config file" in line
    bad = tmp_path / "bad.toml"
    bad.write_text("[mount\nallow_other = true\n")
    line = one_error_line(mountd_cmd("mount", str(bad), str(mp), check=False))
    assert "not valid TOML" in line and "line 1" in line


def test_secrets_never_echoed_in_config_errors(tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    remote = 'url = "s3://AKIAEXAMPLE:verysecretvalue@bucket/x?sig=alsosecret"\nat = "nope"'
    cfg = write_config(tmp_path / "bad.toml", base_config(tmp_path, remote=remote))
    r = mountd_cmd("mount", str(cfg), str(mp), check=False)
    line = one_error_line(r)
    assert "verysecretvalue" not in r.stderr and "alsosecret" not in r.stderr
    assert "`remote[0].at`" in line


def _doc_sections() -> dict[str, str]:
    """docs/configuration.md split at its level-2 headings."""
    text = (REPO / "docs" / "configuration.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_configuration_doc_describes_every_field():
    sections = _doc_sections()
    models = {"Top level": (RepoConfig, {"name"}), "`[[remote]]`": (RemoteConfig, None),
              "`[local]`": (LocalConfig, None), "`[cache]`": (CacheConfig, None),
              "`[writeback]`": (WritebackConfig, None), "`[mount]`": (MountOptions, None),
              "`[metrics]`": (MetricsConfig, None)}
    for heading, (model, only) in models.items():
        body = next(b for h, b in sections.items() if h.startswith(heading))
        documented = set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.MULTILINE))
        fields = set(only or model.model_fields)
        if model is CacheConfig:
            fields |= set(TierConfig.model_fields)
        assert documented == fields, f"{heading}: missing {fields - documented}, stale {documented - fields}"


def test_configuration_doc_examples_load(tmp_path):
    text = (REPO / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        if "[[remote]]" not in block:  # a fragment: add the one required table
            block += '\n[[remote]]\nname = "r"\nurl = "file:///srv/bucket"\n'
        cfg = load_config(write_config(tmp_path / f"example{i}.toml", block))
        assert cfg.remote
    cfg = load_config(write_config(tmp_path / "full.toml", next(b for b in blocks if 'name = "team-a"' in b)))
    assert cfg.name == "team-a" and cfg.local.max_dirty == 20 << 30 and cfg.writeback.delay == 2.0
    assert [r.at for r in cfg.remote] == ["/models", "/datasets"] and cfg.remote[1].read_only


# ---------------------------------------------------------------------------------------------
# remotes that cannot be reached
# ---------------------------------------------------------------------------------------------
def test_unreachable_remote_with_require_remotes(tmp_path):
    """An S3 endpoint on 127.0.0.1 where nothing listens: refused at once, named in one line."""
    port = free_port()
    remote = textwrap.dedent(f"""\
        url = "s3://bucket/prefix"
        at = "/s3"
        options = {{ endpoint_url = "http://127.0.0.1:{port}", key = "k", secret = "s3cr3t-value" }}
        """)
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path, extra='[mount]\nread_timeout = "3s"\n',
                                                        remote=remote))
    mp = tmp_path / "mp"
    mp.mkdir()
    for args in (("--foreground",), ()):
        r = mountd_cmd("mount", str(cfg), str(mp), "--require-remotes", *args, check=False, timeout=120)
        line = one_error_line(r)
        assert "remote 'main'" in line and f"127.0.0.1:{port}" in line, line
        assert "s3cr3t-value" not in r.stderr
        assert not is_mounted(mp)


def test_unusable_file_remote_with_require_remotes(tmp_path):
    """A file:// remote whose directory cannot exist (its parent is a regular file)."""
    (tmp_path / "plainfile").write_text("x")
    cfg = write_config(tmp_path / "r.toml",
                       base_config(tmp_path, remote=f'url = "file://{tmp_path / "plainfile" / "bucket"}"'))
    mp = tmp_path / "mp"
    mp.mkdir()
    line = one_error_line(mountd_cmd("mount", str(cfg), str(mp), "--foreground", "--require-remotes",
                                     check=False, timeout=120))
    assert "remote 'main'" in line, line
    assert not is_mounted(mp)


def test_unreachable_remote_without_require_remotes_mounts_and_says_so(make_repo):
    port = free_port()
    remote_toml = textwrap.dedent(f"""
        [[remote]]
        name = "down"
        url = "s3://bucket/prefix"
        at = "/down"
        options = {{ endpoint_url = "http://127.0.0.1:{port}", key = "k", secret = "s" }}
        [[remote]]
        name = "main"
        url = "file://REMOTE_DIR"
        at = "/data"
        """)
    repo = make_repo(remote_toml=remote_toml)
    repo.config.write_text(repo.config.read_text().replace("REMOTE_DIR", str(repo.remote_dir))
                           .replace('listing_ttl = "1h"', 'listing_ttl = "1h"\nread_timeout = "3s"'))
    repo.expected_log_errors.append("unreachable")
    repo.start()
    (repo.data / "f").write_text("local writes still work")
    out = mountd_cmd("status", str(repo.mp)).stdout
    assert "UNREACHABLE" in out and "down" in out
    main_line = next(line for line in out.splitlines() if line.strip().startswith("main"))
    assert "[ok]" in main_line and "/data" in main_line


# ---------------------------------------------------------------------------------------------
# /dev/fuse
# ---------------------------------------------------------------------------------------------
def _in_private_namespace(script: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_no_dev_fuse(tmp_path):
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path))
    mp = tmp_path / "mp"
    mp.mkdir()
    # a private /dev without fuse in it, seen only by this command
    r = _in_private_namespace(f"mount -t tmpfs none /dev\n"
                              f"exec {PYTHON} -m mountd mount {cfg} {mp} --foreground")
    line = one_error_line(r)
    assert "/dev/fuse does not exist" in line and "modprobe fuse" in line


def test_no_permission_to_mount(tmp_path):
    """Root without CAP_SYS_ADMIN (as in a container without it): the kernel refuses the mount."""
    cfg = write_config(tmp_path / "r.toml", base_config(tmp_path))
    mp = tmp_path / "mp"
    mp.mkdir()
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    for args in (("--foreground",), ()):
        r = subprocess.run([*drop, PYTHON, "-m", "mountd", "mount", str(cfg), str(mp), *args],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
        line = one_error_line(r)
        assert f"cannot mount {mp}" in line and "not permitted" in line and "CAP_SYS_ADMIN" in line, line
        assert not is_mounted(mp)


# ---------------------------------------------------------------------------------------------
# status and umount
# ---------------------------------------------------------------------------------------------
def test_status_output(make_repo):
    repo = make_repo(delay="1h")
    repo.start()
    (repo.data / "waiting.bin").write_bytes(b"x" * 100)
    r = mountd_cmd("status", str(repo.mp))
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"repository test at {repo.mp}")
    assert any(line.split()[:2] == ["main", "/data"] and f"file://{repo.remote_dir}" in line
               and "[ok]" in line for line in lines), r.stdout
    assert "pending uploads: 1" in r.stdout and "main:waiting.bin" in r.stdout
    st = json.loads(mountd_cmd("status", str(repo.mp), "--json").stdout)
    assert st["pending_uploads"] == 1 and st["remotes"][0]["name"] == "main" and st["remotes"][0]["reachable"]
    repo.stop()
    assert (repo.remote_dir / "waiting.bin").read_bytes() == b"x" * 100


def test_status_and_umount_of_something_not_mounted(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for cmd in ("status", "umount"):
        line = one_error_line(mountd_cmd(cmd, str(plain), check=False))
        assert "not mounted" in line and str(plain) in line
    line = one_error_line(mountd_cmd("umount", str(tmp_path / "missing"), check=False))
    assert "not mounted" in line
    line = one_error_line(mountd_cmd("sync", str(plain), check=False))
    assert "not inside a mountd mount" in line


def test_umount_twice(make_repo):
    repo = make_repo()
    repo.start()
    repo.stop()
    line = one_error_line(mountd_cmd("umount", str(repo.mp), check=False))
    assert "not mounted" in line


def test_a_file_remote_whose_directory_is_missing_is_unreachable_not_empty(make_repo):
    """A file:// remote's directory that is gone (an NFS export not mounted yet, a typo) is an
    unreachable remote: the mount comes up with the files it knew, cached bytes still read,
    `status` and `check` say which path is missing, and nothing is made in its place."""
    repo = make_repo(extra_toml='read_timeout = "3s"\n')
    repo.start()
    (repo.data / "weights.bin").write_bytes(b"known and cached")
    repo.sync()
    repo.stop()
    away = repo.remote_dir.with_name("remote-not-mounted")
    repo.remote_dir.rename(away)
    repo.expected_log_errors.append("does not exist")
    repo.start()
    assert (repo.data / "weights.bin").read_bytes() == b"known and cached"  # from the cache
    out = mountd_cmd("status", str(repo.mp)).stdout
    main_line = next(line for line in out.splitlines() if line.strip().startswith("main"))
    assert "UNREACHABLE" in main_line, out
    check = mountd_cmd("check", str(repo.config), check=False)
    assert check.returncode != 0 and f"{repo.remote_dir} does not exist" in check.stdout + check.stderr
    (repo.data / "new.txt").write_text("queued")
    assert not repo.remote_dir.exists()  # nothing made in its place
    away.rename(repo.remote_dir)
    repo.sync()
    assert (repo.remote_dir / "new.txt").read_text() == "queued"
