"""Config parsing: sizes, durations, TOML files and bare URLs, and the errors users see."""

from pathlib import Path

import pytest

from mountd.config import config_from_url, load_config, redact_url
from mountd.errors import ConfigError
from mountd.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("512", 512), ("8M", 8 << 20), ("10G", 10 << 30), ("1.5K", 1536), ("4MiB", 4 << 20), ("2gb", 2 << 30),
    (7, 7),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "8Q", "-1", "M", "1.2.3G", True])
def test_bad_sizes_say_what_is_valid(text):
    with pytest.raises(ValueError, match="'8M'"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("5s", 5), ("12h", 43200), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25), ("90", 90), (1.5, 1.5),
])
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["5x", "h", "1h 2q", "", "-3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="'5s'"):
        parse_duration(text)


def test_bare_url_is_one_remote_at_root():
    c = config_from_url("file:///srv/bucket")
    assert [(r.name, r.url, r.at) for r in c.remote] == [("default", "file:///srv/bucket", "/")]
    assert c.cache.tiers["previews"].max_object_size == 4 << 20
    assert c.cache.tiers["storage"].max_size == 10 << 30
    assert c.writeback.delay == 5.0
    assert c.local_path.name == c.name


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "repo.toml"
    p.write_text(text)
    return p


def test_full_config(tmp_path):
    c = load_config(_write(tmp_path, """
        [local]
        path = "/tmp/x/local"
        max_dirty = "2G"
        [cache]
        chunk_size = "4M"
        [cache.tiers.hot]
        max_size = "100M"
        expires = "1h"
        globs = ["*.json"]
        [[remote]]
        name = "models"
        url = "s3://bucket/models"
        at = "/models/"
        options = { endpoint_url = "http://127.0.0.1:9000" }
        read_whole = ["*.pt"]
        [[remote]]
        name = "ds"
        url = "gs://datasets"
        at = "/datasets"
        read_only = true
        [writeback]
        delay = "1s"
        """.replace("\n        ", "\n")))
    assert c.name == "repo"
    assert c.local.max_dirty == 2 << 30
    assert list(c.cache.tiers) == ["hot"]
    assert c.remote[0].at == "/models"
    assert c.remote[1].read_only
    assert c.writeback.delay == 1.0


@pytest.mark.parametrize(("body", "field", "hint"), [
    ('[[remote]]\nname="a"\nurl="s3://b"\nat="rel"\n', "remote[0].at", "absolute path"),
    ('[[remote]]\nname="a"\nurl="ftp://b"\n', "remote[0].url", "unsupported scheme"),
    ('[[remote]]\nname="a"\nurl="bucket"\n', "remote[0].url", "must start with a scheme"),
    ('[cache]\nchunk_size="8Q"\n[[remote]]\nname="a"\nurl="s3://b"\n', "cache.chunk_size", "'8M'"),
    ('[writeback]\ndelay="soon"\n[[remote]]\nname="a"\nurl="s3://b"\n', "writeback.delay", "'5s'"),
    ('[writeback]\ndelai="1s"\n[[remote]]\nname="a"\nurl="s3://b"\n', "writeback.delai", "unknown field"),
    ('[local]\npath="/x"\n', "remote", "required"),
    ('[[remote]]\nname="a"\nurl="s3://b"\n[[remote]]\nname="a"\nurl="s3://c"\nat="/c"\n', "remote", "unique"),
    ('[[remote]]\nurl="s3://b"\n', "remote[0].name", "required"),
])
def test_bad_config_names_the_field(tmp_path, body, field, hint):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, body))
    msg = str(e.value)
    assert f"`{field}`" in msg and hint in msg and "\n" not in msg


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[[remote]\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_secrets_are_redacted_from_urls():
    assert redact_url("az://user:secretkey@container/x?sig=SAS") == "az://container/x"
    c = config_from_url("s3://bucket/prefix")
    assert "secret" not in repr(c.remote[0])
