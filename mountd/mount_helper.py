"""`mount.mountd`: the helper mount(8) runs for `mount -t mountd CONFIG MOUNTPOINT -o OPTIONS`.

It owns mount(8)'s side of a mount: its arguments (`-sfnv`, `-o`, `-t`), its exit codes, and
keeping systemd's readiness for whoever ran mount(8). The options mean what they mean for
`mountd mount -o` (`mount_options.py`), and the daemon starts the same way (`launch.py`), so the
helper returns only once the mount answers. It never mounts by itself and never prints a
traceback: every failure is one line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mountd.errors import ConfigError
from mountd.mount_options import apply_mount_options, parse_options
from mountd.sdnotify import NOTIFY_ENV

# mount(8) exit codes: 1 incorrect invocation, 32 mount failure
EXIT_USAGE = 1
EXIT_FAILURE = 32


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
                raise ConfigError(f"mount.mountd does not support -N {value} "
                                  "(mount from inside that namespace)")
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
    from mountd import daemon
    from mountd.config import load_config
    from mountd.errors import MountdError
    from mountd.launch import start_background

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
        ignored = ", ".join(opts.ignored) or "-"
        print(f"mount.mountd: mounting {config.name} at {args.mountpoint} (ignored: {ignored})",
              file=sys.stderr)
    if args.fake:
        return
    # the daemon is nobody's main process: systemd readiness belongs to whoever ran mount(8)
    for var in NOTIFY_ENV:
        os.environ.pop(var, None)
    try:
        start_background(source, os.path.abspath(args.mountpoint), config.local_path,
                         require_remotes="require_remotes" in opts.helper,
                         log_level=opts.helper.get("log_level", "INFO").upper(),
                         log_file=opts.helper.get("log_file"), options=opts.forward)
    except MountdError as e:
        print(f"mount.mountd: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
