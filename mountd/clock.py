"""The one clock of the times the mount stamps: every mtime, ctime and atime the daemon sets.

The kernel hands the daemon times from its own clock too: `utimensat(UTIME_NOW)` (`touch`,
`os.utime(path, None)`) arrives as a setattr carrying the kernel's "now" (the kernel sends
FATTR_MTIME with FATTR_MTIME_NOW, and pyfuse3 keeps the kernel's value without saying it was
"now"), and a file written through FUSE passthrough gets the mtime the local tier's file system
gave it. For a FUSE inode that "now" is the kernel's `current_time()`: the coarse real-time clock,
which moves once per scheduler tick (1 to 10 ms), raised since Linux 6.13 to the latest
fine-grained time handed to a multigrain file system (ext4, xfs, btrfs, tmpfs). A daemon stamping
with `time.time_ns()` is up to a tick ahead of it: `create` then `utime(path, None)` moved mtime
back in 194 of 200 tries.

So `now_ns()` reads the same coarse clock, and keeps a floor as the kernel does: a time from the
kernel that is not in the future (a "now", or a time inside the current tick) raises it
(`observed`), and no stamp is below it. A stamp is then never later than the true time and
never earlier than one made before it on this mount, unless the system clock is set back, as on
any file system. Times have the kernel's granularity (one tick), as on a local disk without
multigrain timestamps.
"""

from __future__ import annotations

import time

# Linux's CLOCK_REALTIME_COARSE (the `time` module does not name it): the clock of current_time()
CLOCK_REALTIME_COARSE: int = getattr(time, "CLOCK_REALTIME_COARSE", 5)

_floor = 0


def now_ns() -> int:
    """Now, in the kernel's file-time clock: never earlier than an earlier stamp or observed time."""
    return max(time.clock_gettime_ns(CLOCK_REALTIME_COARSE), _floor)


def observed(t: int | None) -> None:
    """A time the kernel set (a "now" of utimensat, a passthrough write's mtime): later stamps are
    not earlier, unless it lies in the future (an explicit time, not a now)."""
    global _floor
    if t is not None and _floor < t <= time.time_ns():
        _floor = t
