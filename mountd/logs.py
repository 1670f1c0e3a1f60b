"""Logging: one line per event on stderr (journald takes it from there)."""

from __future__ import annotations

import logging
import sys


class _DroppedConnectionNoise(logging.Filter):
    """aiohttp leaves the body-writing task of a request whose connection dropped (a server that
    went away) unawaited, and asyncio reports it as an ERROR with a traceback. The request itself
    fails and is reported (and retried) by the caller, so this copy goes to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.ERROR
                and record.getMessage().startswith("Task exception was never retrieved")):
            text = repr(getattr(record, "future", "")) + str(record.exc_info[1] if record.exc_info else "")
            if ("ClientConnection" in text or "closing transport" in text
                    or "write_bytes" in record.getMessage()):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "azure", "gcsfs", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("asyncio").addFilter(_DroppedConnectionNoise())
