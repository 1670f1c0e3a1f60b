"""The repository configuration: a frozen, validated model.

A repository is described by a TOML file or by a bare remote URL (one remote at "/", defaults
elsewhere). Every field has a default except the remotes. `load_config` turns any pydantic
validation failure into one `ConfigError` whose message names the field (``remote[0].at``) and
how to fix it, so the CLI can print it on one line. The `options` of each remote are checked
there too, against what its cloud's client accepts (`mountd.backend.options`), so a misspelt or
unknown option fails at load, naming the remote, and not inside the daemon.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mountd.backend.options import option_problem
from mountd.errors import ConfigError
from mountd.units import parse_duration, parse_size

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

SUPPORTED_SCHEMES = ("file", "memory", "s3", "gs", "gcs", "az", "abfs", "abfss", "links")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _state_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/mountd")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "mountd"


def _cache_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/mountd")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mountd"


class LocalConfig(_Model):
    """The fast local tier: dirty files, local-only paths, pinned files, and the metadata db."""

    path: Path | None = None
    max_dirty: Size = parse_size("50G")
    # writes get ENOSPC while less than this is free, so the metadata db can always commit
    # (an unlink that frees space must never fail for want of space)
    reserve: Size = parse_size("64M")


class TierConfig(_Model):
    max_size: Size
    expires: Duration
    max_object_size: Size | None = None
    min_object_size: Size | None = None
    globs: tuple[str, ...] = ()


def _default_tiers() -> dict[str, TierConfig]:
    return {
        "previews": TierConfig(max_size=parse_size("1G"), expires=parse_duration("12h"),
                               max_object_size=parse_size("4M")),
        "storage": TierConfig(max_size=parse_size("10G"), expires=parse_duration("7d")),
    }


class CacheConfig(_Model):
    path: Path | None = None
    chunk_size: Size = parse_size("8M")
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers)
    prefetch: Size = parse_size("64M")  # largest window fetched ahead of a sequential reader
    fetch_concurrency: int = Field(default=8, ge=1, le=256)  # parallel ranged GETs (read_whole, prefetch)
    # objects of several chunks, once all cached, are merged into one file the kernel reads directly
    passthrough: bool = True

    @field_validator("chunk_size")
    @classmethod
    def _chunk_size_sane(cls, v: int) -> int:
        if not (64 * 1024 <= v <= 1 << 30):
            raise ValueError("chunk_size must be between 64K and 1G (default 8M)")
        return v

    @field_validator("tiers")
    @classmethod
    def _tiers_present(cls, v: dict[str, TierConfig]) -> dict[str, TierConfig]:
        if not v:
            raise ValueError("at least one tier is needed; remove [cache.tiers] to get the defaults")
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"tier name {name!r} may only hold letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _tiers_hold_a_chunk(self) -> CacheConfig:
        for name, tier in self.tiers.items():
            if tier.max_size < self.chunk_size:
                raise ValueError(f"tiers.{name}.max_size ({tier.max_size} bytes) is smaller than chunk_size "
                                 f"({self.chunk_size} bytes); raise max_size or lower chunk_size")
        return self


class RemoteConfig(_Model):
    name: str
    url: str
    at: str = "/"
    options: dict[str, Any] = Field(default_factory=dict, repr=False)
    read_only: bool = False
    immutable: bool = False
    read_whole: tuple[str, ...] = ()
    # refuse to mount unless the server enforces conditional writes (checked with a test object)
    require_conditional: bool = False

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("name must be 1-64 letters, digits, '_', '.' or '-', "
                             "starting with a letter or digit")
        return v

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        m = re.match(r"^([a-z0-9]+)://", v)
        if not m:
            raise ValueError("url must start with a scheme such as s3://, gs://, az://, file:// "
                             f"(got {redact_url(v)!r})")
        if m.group(1) not in SUPPORTED_SCHEMES:
            raise ValueError(f"unsupported scheme {m.group(1)}://; use one of "
                             + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES))
        return v

    @field_validator("at")
    @classmethod
    def _at_ok(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"at must be an absolute path inside the mount such as '/models' (got {v!r})")
        parts = [p for p in v.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"at must not contain '.' or '..' (got {v!r})")
        return "/" + "/".join(parts)

    @model_validator(mode="after")
    def _links_are_read_only(self) -> RemoteConfig:
        if self.scheme == "links":  # a list of other objects' URLs: nothing to write to
            object.__setattr__(self, "read_only", True)
        return self

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


class WritebackConfig(_Model):
    delay: Duration = 5.0
    dedup: bool = True
    concurrency: int = Field(default=4, ge=1, le=256)
    ignore: tuple[str, ...] = ()
    drain_timeout: Duration = 60.0
    fsync: Literal["local", "upload"] = "local"
    retry_initial: Duration = 1.0
    retry_max: Duration = 300.0
    multipart_threshold: Size = parse_size("64M")
    multipart_chunk: Size = parse_size("16M")
    yield_max: Duration = 10.0
    # another host changed a key since this host last saw it: keep this host's bytes as a
    # conflict copy beside it, overwrite (unsafe: the other host's bytes are lost), or keep them
    # dirty here and report the entry as failing
    on_conflict: Literal["keep-both", "overwrite", "fail"] = "keep-both"
    # how this host names itself in conflict copies; "" takes the host name
    host: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,32}$")


class MountOptions(_Model):
    """Kernel-facing options and metadata freshness."""

    listing_ttl: Duration = 60.0
    # how often each remote's change log is read for other hosts' changes (0: never; vfs/feed.py)
    poll_interval: Duration = 1.0
    attr_timeout: Duration = 1.0
    allow_other: bool = False
    default_permissions: bool = True
    read_timeout: Duration = 30.0
    read_ahead_kb: int = Field(default=1024, ge=0)
    passthrough: bool = True
    # after each request the daemon reads the FUSE device this long before it sleeps: a request
    # that comes in meanwhile skips the wake-up of an idle CPU (0 turns it off)
    device_poll: Duration = 50e-6
    file_mode: int = 0o644
    dir_mode: int = 0o755
    uid: int | None = None
    gid: int | None = None


class MetricsConfig(_Model):
    """The opt-in Prometheus endpoint: `listen = "127.0.0.1:9464"` (or just a port) turns it on."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen_ok(cls, v: str | None) -> str | None:
        if v is None:
            return None
        host, _, port = v.rpartition(":")
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen must be HOST:PORT or PORT, such as '127.0.0.1:9464' (got {v!r})")
        return f"{host.strip('[]') or '127.0.0.1'}:{int(port)}"

    @property
    def address(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


class RepoConfig(_Model):
    name: str = "default"
    local: LocalConfig = Field(default_factory=LocalConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    remote: tuple[RemoteConfig, ...]
    writeback: WritebackConfig = Field(default_factory=WritebackConfig)
    mount: MountOptions = Field(default_factory=MountOptions)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("remote")
    @classmethod
    def _remotes_ok(cls, v: tuple[RemoteConfig, ...]) -> tuple[RemoteConfig, ...]:
        if not v:
            raise ValueError("at least one [[remote]] with name and url is needed")
        names = [r.name for r in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"remote names must be unique; repeated: {', '.join(sorted(dup))}")
        ats = [r.at for r in v]
        dup = {a for a in ats if ats.count(a) > 1}
        if dup:
            raise ValueError(f"two remotes are attached at the same path: {', '.join(sorted(dup))}")
        return v

    @model_validator(mode="after")
    def _fill_paths(self) -> RepoConfig:
        if self.local.path is None:
            object.__setattr__(self, "local",
                               self.local.model_copy(update={"path": _state_home() / self.name}))
        if self.cache.path is None:
            object.__setattr__(self, "cache",
                               self.cache.model_copy(update={"path": _cache_home() / self.name}))
        return self

    @property
    def local_path(self) -> Path:
        assert self.local.path is not None
        return self.local.path

    @property
    def cache_path(self) -> Path:
        assert self.cache.path is not None
        return self.cache.path


def redact_url(url: str) -> str:
    """The URL without userinfo or query strings, which may carry keys or SAS tokens."""
    url = re.sub(r"^([a-z0-9]+://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0]


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before[parse_size(), int]", "function-before[parse_duration(), float]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _explain(err: ValidationError, source: str) -> ConfigError:
    e = err.errors(include_url=False)[0]
    field = _field_path(tuple(e["loc"]))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling; docs/configuration.md lists every field)"
    elif e["type"] == "missing":
        msg = "required field is missing"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return ConfigError(f"{source}: invalid config field `{field}`: {msg}{more}")


def _check_options(config: RepoConfig, source: str) -> RepoConfig:
    """The config, if every remote's options can be given to its client; else one line naming the
    first remote and option that cannot."""
    for i, remote in enumerate(config.remote):
        problem = option_problem(remote.scheme, remote.options)
        if problem:
            raise ConfigError(f"{source}: invalid config field `remote[{i}].options` "
                              f"(remote {remote.name!r}): {problem}")
    return config


def config_from_url(url: str, **overrides: Any) -> RepoConfig:
    """A one-remote repository at "/" for a bare URL; its state dirs are named after the URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", redact_url(url).split("://", 1)[-1]).strip("-")[-40:] or "repo"
    data: dict[str, Any] = {"name": f"{slug}-{digest}",
                            "remote": [{"name": "default", "url": url, "at": "/"}]}
    data.update(overrides)
    try:
        config = RepoConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, url) from None
    return _check_options(config, redact_url(url))


def load_config(source: str | Path) -> RepoConfig:
    """Read a TOML config file or accept a bare remote URL."""
    text = str(source)
    if re.match(r"^[a-z0-9]+://", text):
        return config_from_url(text)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (give a TOML file or a URL such as file:///srv/bucket)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    data.setdefault("name", path.stem)
    try:
        config = RepoConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, str(path)) from None
    return _check_options(config, str(path))
