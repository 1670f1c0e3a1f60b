"""Secret option values kept out of view: the logging filter that masks them and the SDK loggers held quiet.

It owns the set of secret values of every remote opened in this process (`SECRETS`). Values of
options whose names look secret (`key`, `token`, `sas`, `connection_string`, ...), also inside
nested tables and the parts of a connection string, are registered when a store is built. The
SDKs print request headers (signatures, SAS tokens, bearer tokens) at DEBUG, so their loggers
stay at WARNING whatever level the daemon runs at. It must never log or return a secret itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

# Loggers of the SDKs: at DEBUG they print request headers and URLs (signatures, SAS tokens,
# bearer tokens). They stay at WARNING whatever level the daemon runs at.
SDK_LOGGERS = ("botocore", "boto3", "aiobotocore", "s3fs", "gcsfs", "google", "google.auth", "adlfs", "azure",
               "urllib3", "aiohttp", "fsspec", "requests_oauthlib", "oauthlib", "msal")
# option names whose values are secrets (matched case-insensitively, also inside nested tables)
SECRET_OPTION = re.compile(r"secret|key|token|password|sas|credential|connection_string|signature", re.I)


class SecretFilter(logging.Filter):
    """Masks registered secret values in every record that passes a handler it is attached to."""

    def __init__(self) -> None:
        super().__init__("mountd-secrets")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        masked = msg
        for s in self.secrets:
            masked = masked.replace(s, "***")
        if masked != msg or record.exc_info:
            record.msg, record.args = masked, None
            if record.exc_info:  # a traceback could quote a secret: keep only its last line
                record.msg += f" [{record.exc_info[0].__name__ if record.exc_info[0] else 'error'}]"
                record.exc_info = None
                record.exc_text = None
        return True


SECRETS = SecretFilter()


def _secret_values(options: Mapping[str, Any], under_secret: bool = False) -> Iterator[str]:
    for k, v in options.items():
        secret = under_secret or bool(SECRET_OPTION.search(str(k)))
        if isinstance(v, Mapping):
            yield from _secret_values(v, secret)
        elif secret and isinstance(v, str) and len(v) >= 4:
            yield v
            # parts of a connection string are secrets on their own too
            for part in v.split(";"):
                name, _, value = part.partition("=")
                if value and SECRET_OPTION.search(name) and len(value) >= 4:
                    yield value


def guard_secrets(options: Mapping[str, Any]) -> None:
    """Register the secret values of one remote's options and quiet the SDK loggers."""
    SECRETS.secrets.update(_secret_values(options))
    for name in SDK_LOGGERS:
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    # gcsfs logs a traceback at ERROR each time it gives up on a request; the error reaches us anyway
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        if SECRETS not in handler.filters:
            handler.addFilter(SECRETS)
