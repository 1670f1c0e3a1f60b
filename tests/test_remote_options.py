"""A remote's `options` are checked against what its cloud's client accepts, when the config loads.

An unknown name, or a value of a type the client does not take, fails `load_config` (which
`mountd check`, `mountd mount`, mount.mountd and the docker plugin's volume create all call)
with one line naming the remote, the option and the accepted names, closest first. Option
values never appear in it: they may be secrets. Correct options of each cloud still load, and
the store built from them answers its server.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mountd.backend import StoreTuning
from mountd.backend.factory import open_store
from mountd.config import RemoteConfig, load_config
from mountd.errors import ConfigError, RemoteError
from tests.conftest import is_mounted, mountd_cmd

SERVER_FIXTURE = {"s3": "s3_server", "gcs": "gcs_server", "azure": "azurite_server"}
SECRET = "s3cr3t-Value-0042"


def toml(value: Any) -> str:
    """A TOML value, tables inline (tests/servers.py writes flat options only)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def config_file(tmp_path: Path, url: str, options: dict[str, Any]) -> Path:
    path = tmp_path / "repo.toml"
    path.write_text(textwrap.dedent(f"""
        [local]
        path = "{tmp_path / 'local'}"
        [cache]
        path = "{tmp_path / 'cache'}"
        [[remote]]
        name = "models"
        url = "{url}"
        at = "/models"
        options = {toml(options)}
        """))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    assert "remote 'models'" in message and "remote[0].options" in message, message
    return message


@pytest.mark.parametrize(("url", "option", "closest"), [
    # issue 21: this one failed only inside the daemon
    ("s3://bucket/models", "aws_access_key_id", "client_kwargs.aws_access_key_id"),
    ("s3://bucket", "regoin", "region"),
    ("gs://bucket", "tokne", "token"),
    ("az://container/runs", "account_nme", "account_name"),
    ("abfss://raw@lake.dfs.core.windows.net/x", "sas_tokn", "sas_token"),
])
def test_an_unknown_option_of_each_cloud_fails_at_load(tmp_path, url, option, closest):
    message = load_error(config_file(tmp_path, url, {option: SECRET}))
    assert f"unknown option {option!r}" in message and f"did you mean {closest}" in message, message
    accepted = message.split("; accepted: ", 1)[1].split(", ")
    assert accepted[0] == closest and len(accepted) > 10, message
    assert SECRET not in message


@pytest.mark.parametrize("url", ["file:///srv/bucket", "memory://bucket"])
def test_file_and_memory_remotes_take_no_options(tmp_path, url):
    message = load_error(config_file(tmp_path, url, {"region": SECRET}))
    assert f"unknown option 'region': {url.split('://')[0]}:// takes no options" in message, message
    assert SECRET not in message
    assert load_config(config_file(tmp_path, url, {})).remote[0].options == {}


@pytest.mark.parametrize(("url", "options", "expected"), [
    ("s3://bucket", {"anon": "yes"}, "option 'anon' for s3:// must be true or false, not a string"),
    ("s3://bucket", {"secret": 12345678}, "option 'secret' for s3:// must be a string, not a whole number"),
    ("s3://bucket", {"client_kwargs": "verify"},
     "option 'client_kwargs' for s3:// must be a table, not a string"),
    ("s3://bucket", {"client_kwargs": {"aws_secret_access_key": SECRET, "verfy": False}},
     "unknown option 'client_kwargs.verfy' for s3:// (did you mean verify?); accepted: verify, "),
    ("gs://bucket", {"token": 12345678},
     "option 'token' for gs:// must be a string or a table, not a whole number"),
    ("gs://bucket", {"requests_timeout": 5},
     "option 'requests_timeout' cannot be set for gs://: mountd sets it"),
    ("az://container", {"account_key": True},
     "option 'account_key' for az:// must be a string, not true or false"),
    ("az://container", {"read_timeout": 5}, "option 'read_timeout' cannot be set for az://: mountd sets it"),
])
def test_a_value_the_client_cannot_take_is_named_not_quoted(tmp_path, url, options, expected):
    message = load_error(config_file(tmp_path, url, options))
    assert expected in message, message
    assert SECRET not in message and "12345678" not in message


def test_links_options_are_checked_per_scheme(tmp_path):
    url = f"links://{tmp_path / 'list.txt'}"
    message = load_error(config_file(tmp_path, url, {"s3": {"region": "eu-west-1"}, "gs": {"tokne": SECRET}}))
    assert "unknown option 'tokne' for gs:// (did you mean token?)" in message and SECRET not in message
    message = load_error(config_file(tmp_path, url, {"regoin": "eu-west-1"}))
    assert "unknown option 'regoin' for links://" in message and "did you mean region" in message, message
    message = load_error(config_file(tmp_path, url, {"s4": {"region": "eu-west-1"}}))
    assert "option table 's4' of a links:// remote must be named after a scheme" in message, message
    config = load_config(config_file(tmp_path, url, {"s3": {"region": "eu-west-1"}, "gs": {"token": "anon"}}))
    assert config.remote[0].options["gs"] == {"token": "anon"}


@pytest.mark.parametrize(("kind", "extra"), [
    ("s3", {"region": "us-east-1", "path_style": True, "client_kwargs": {"use_ssl": False},
            "config_kwargs": {"max_pool_connections": 4}, "requester_pays": False}),
    ("gcs", {"consistency": "none", "requester_pays": False, "retries": 1}),
    ("azure", {"max_concurrency": 2, "location_mode": "primary", "assume_container_exists": True}),
])
def test_correct_options_of_each_cloud_load_and_the_store_answers(request, tmp_path, kind, extra):
    server = request.getfixturevalue(SERVER_FIXTURE[kind])
    bucket = server.new_bucket()
    config = load_config(config_file(tmp_path, server.url(bucket, "models"), {**server.options(), **extra}))
    store = open_store(config.remote[0], tuning=StoreTuning(timeout=10))
    store.put_bytes("a.txt", b"payload", {"mode": "33188"})
    assert store.read_range("a.txt", 0, 7) == b"payload"
    assert [o.key for o in store.list_dir("").objects] == ["a.txt"]


def test_the_option_the_check_refuses_fails_in_the_client_too(s3_server):
    """The name is refused because s3fs hands it to AioSession, which has no such parameter (issue 21)."""
    options = {**s3_server.options(), "aws_access_key_id": "AKIAEXAMPLE"}
    remote = RemoteConfig(name="models", url=s3_server.url(s3_server.new_bucket()), options=options)
    store = open_store(remote, tuning=StoreTuning(timeout=10))
    with pytest.raises(RemoteError, match="unexpected keyword argument 'aws_access_key_id'"):
        store.probe()


def test_mountd_check_and_mount_fail_in_one_line_before_mounting(tmp_path):
    options = {"aws_access_key_id": "AKIAEXAMPLE", "secret": SECRET}
    config = config_file(tmp_path, "s3://bucket/models", options)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for args in (("check", str(config)), ("mount", str(config), str(mountpoint))):
        r = mountd_cmd(*args, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("mountd: error: ")
        assert "unknown option 'aws_access_key_id' for s3://" in lines[0], lines[0]
        assert SECRET not in r.stderr and "AKIAEXAMPLE" not in r.stderr
    assert not is_mounted(mountpoint) and not (tmp_path / "local").exists()
