"""`RequestActivity`: when the mount last served a FUSE request.

The FUSE handlers stamp it and the uploader reads it, so that new uploads can wait for a pause
in a burst of requests (a `tar -x`, a loop creating thousands of files) instead of sharing the
interpreter with them: upload threads hold the GIL for most of a small file's upload, and each
FUSE round trip waits for it several times. Stamping is one attribute store per request.
"""

from __future__ import annotations

import time

# requests closer together than this are one burst. 10 ms was too short for one command: `ls -l`
# of 5,000 files reads the directory in a single request, then formats for ~30 ms without asking
# the mount anything, and uploads starting in that gap took both cores from it (34-76 ms against
# 30 ms). A person typing, or a program between two phases, leaves longer gaps and does not hold
# uploads; a steady stream of requests holds them at most `writeback.yield_max`.
QUIET_GAP = 0.05


class RequestActivity:
    def __init__(self) -> None:
        self.last = 0.0  # time.perf_counter() of the latest request's start or end

    def touch(self) -> None:
        self.last = time.perf_counter()

    def idle_for(self) -> float:
        return time.perf_counter() - self.last
