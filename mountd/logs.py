"""Logging: one line per event on stderr (journald takes it from there)."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "azure", "gcsfs", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
