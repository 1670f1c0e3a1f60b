"""`mount.mountd`: the helper mount(8) runs for `mount -t mountd CONFIG MOUNTPOINT -o OPTIONS`.

It owns the meaning of mount options, for fstab and for `mountd mount -o` alike: each option is
ignored (what mount(8) and systemd keep for themselves: `_netdev`, `x-*`, `noauto`, ...), handed
to FUSE (`ro`, `nosuid`, `noatime`, ...), turned into a config override (`allow_other`,
`default_permissions`, `uid=`, `gid=`), or read by the helper (`log_level=`, `log_file=`,
`require_remotes`). Anything else is an error naming the option. The helper daemonizes through
the same background spawn as `mountd mount`, so it returns only once the mount answers; it never
mounts by itself and never prints a traceback.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mountd.config import RepoConfig
from mountd.errors import ConfigError
from mountd.sdnotify import NOTIFY_ENV

# mount(8) exit codes: 1 incorrect invocation, 32 mount failure
EXIT_USAGE = 1
EXIT_FAILURE = 32

IGNORED = {"_netdev", "auto", "noauto", "nofail", "defaults", "user", "nouser", "users", "owner", "group", "rw",
           "loud", "silent"}
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
            raise ConfigError(f"unknown mount option {opt!r}: mountd takes ro, allow_other, default_permissions, "
                              "uid=, gid=, log_level=, log_file=, require_remotes, the generic flags (nosuid, "
                              "nodev, noexec, noatime, ...) and ignores _netdev, noauto, nofail and x-*")
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


@dataclass
class HelperArgs:
    source: str
    mountpoint: str
    options: list[str]
    fake: bool = False
    sloppy: bool = False
    verbose: bool = False


def parse_argv(argv: Sequence[str]) -> HelperArgs:
    """`mount.mountd SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`, as mount(8) calls helpers."""
    positional: list[str] = []
    args = HelperArgs("", "", [])
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            args.options.append(next(it, ""))
        elif arg.startswith("-o") and len(arg) > 2:
            args.options.append(arg[2:])
        elif arg in ("-t", "-N"):
            value = next(it, "")
            if arg == "-N":
                raise ConfigError(f"mount.mountd does not support -N {value} (mount from inside that namespace)")
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvrw"):
            args.fake |= "f" in arg
            args.sloppy |= "s" in arg
            args.verbose |= "v" in arg
            if "r" in arg:
                args.options.append("ro")
        elif arg.startswith("-"):
            raise ConfigError(f"mount.mountd: unknown argument {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ConfigError("usage: mount.mountd CONFIG MOUNTPOINT [-sfnv] [-o OPTIONS] "
                          "(or: mount -t mountd CONFIG MOUNTPOINT)")
    args.source, args.mountpoint = positional
    return args


def main(argv: Sequence[str] | None = None) -> None:
    from mountd import cli, daemon
    from mountd.config import load_config
    from mountd.errors import MountdError

    try:
        args = parse_argv(sys.argv[1:] if argv is None else argv)
        opts = parse_options(args.options, sloppy=args.sloppy)
        source = args.source if "://" in args.source else os.path.abspath(args.source)
        config = apply_mount_options(load_config(source), opts.forward)
        daemon.check_mountpoint(args.mountpoint)
    except MountdError as e:
        print(f"mount.mountd: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILURE)
    if args.verbose:
        print(f"mount.mountd: mounting {config.name} at {args.mountpoint} (ignored: {', '.join(opts.ignored) or '-'})",
              file=sys.stderr)
    if args.fake:
        return
    # the daemon is nobody's main process: systemd readiness belongs to whoever ran mount(8)
    for var in NOTIFY_ENV:
        os.environ.pop(var, None)
    try:
        cli._spawn_background(source, os.path.abspath(args.mountpoint), config.local_path,
                              "require_remotes" in opts.helper, opts.helper.get("log_level", "INFO").upper(),
                              opts.helper.get("log_file"), tuple(opts.forward))
    except SystemExit as e:  # the spawn already printed the one-line reason
        sys.exit(EXIT_FAILURE if e.code else 0)


if __name__ == "__main__":
    main()
