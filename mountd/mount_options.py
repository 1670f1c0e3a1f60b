"""The meaning of mount options, for fstab (`mount.mountd`) and for `mountd mount -o` alike.

Each option is ignored (what mount(8) and systemd keep for themselves: `_netdev`, `x-*`,
`noauto`, ...), handed to FUSE (`ro`, `nosuid`, `noatime`, ...), turned into an override of the
config's `[mount]` table (`allow_other`, `default_permissions`, `uid=`, `gid=`), or read by
whoever starts the daemon (`log_level=`, `log_file=`, `require_remotes`). Anything else is a
`ConfigError` naming the option. It only parses: it never mounts and never prints.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Iterable
from dataclasses import dataclass, field

from mountd.config import RepoConfig
from mountd.errors import ConfigError

IGNORED = {"_netdev", "auto", "noauto", "nofail", "defaults", "user", "nouser", "users", "owner", "group",
           "rw", "loud", "silent"}
FUSE_FLAGS = {"ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "dirsync", "atime",
              "noatime", "nodiratime", "relatime", "norelatime", "strictatime", "lazytime", "nolazytime"}
CONFIG_FLAGS = {"allow_other", "default_permissions"}
HELPER_FLAGS = {"require_remotes"}
HELPER_VALUES = {"log_level", "log_file"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class MountOptions:
    """Options split by who acts on them."""

    fuse: list[str] = field(default_factory=list)
    mount: dict[str, object] = field(default_factory=dict)  # overrides of the config's [mount] table
    helper: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)  # what the helper passes on to `mountd mount -o`


def _split(options: Iterable[str]) -> list[str]:
    return [o.strip() for opt in options for o in opt.split(",") if o.strip()]


def _id(kind: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        what = "user" if kind == "uid" else "group"
        raise ConfigError(f"mount option {kind}={value}: no such {what} (give a name or a number)") from None


def parse_options(options: Iterable[str], *, sloppy: bool = False) -> MountOptions:
    """Classify comma-separated option strings; unknown ones are errors unless `sloppy` (mount -s)."""
    out = MountOptions()
    for opt in _split(options):
        key, eq, value = opt.partition("=")
        if opt in IGNORED or key.startswith("x-") or key == "comment":
            out.ignored.append(opt)
            continue
        if opt in FUSE_FLAGS:
            out.fuse.append(opt)
        elif opt in CONFIG_FLAGS:
            out.mount[opt] = True
        elif key in ("uid", "gid") and eq:
            out.mount[key] = _id(key, value)
        elif opt in HELPER_FLAGS:
            out.helper[opt] = "1"
            continue
        elif key in HELPER_VALUES and eq and value:
            if key == "log_level" and value.upper() not in LOG_LEVELS:
                raise ConfigError(f"mount option log_level={value}: use one of {', '.join(LOG_LEVELS)}")
            out.helper[key] = value
            continue
        elif sloppy:
            out.ignored.append(opt)
            continue
        else:
            raise ConfigError(f"unknown mount option {opt!r}: mountd takes ro, allow_other, "
                              "default_permissions, uid=, gid=, log_level=, log_file=, require_remotes, "
                              "the generic flags (nosuid, nodev, noexec, noatime, ...) and ignores _netdev, "
                              "noauto, nofail and x-*")
        out.forward.append(opt)
    return out


def apply_mount_options(config: RepoConfig, options: Iterable[str]) -> RepoConfig:
    """The config with the `[mount]` overrides the options ask for (uid=, gid=, allow_other, ...)."""
    overrides = parse_options(options).mount
    if not overrides:
        return config
    return config.model_copy(update={"mount": config.mount.model_copy(update=overrides)})


def fuse_options(options: Iterable[str]) -> set[str]:
    """The options that go to the kernel mount as they are (ro, nosuid, noatime, ...)."""
    return set(parse_options(options).fuse)
