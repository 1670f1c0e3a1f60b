"""Error classification: any exception of an SDK call becomes one `RemoteError` that names the remote.

It owns how failures are told apart (a missing bucket, a missing object, denied credentials,
server errors, timeouts, an unreachable endpoint) from what the SDKs carry: the HTTP status and
error code anywhere in the exception chain, and the words of their messages. It must never put
a secret into a message: it quotes at most the first line of an error, and not even that when
the line could carry a credential.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from mountd.backend.secrets import SECRETS
from mountd.errors import ObjectNotFound, RemoteDenied, RemoteError, RemoteUnavailable, VersionMismatch

_MISSING_BUCKET_CODES = ("nosuchbucket", "containernotfound", "bucket does not exist", "nosuchcontainer",
                         "the specified bucket does not exist", "no such container", "bucketnotfound")
_DENIED_CODES = ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "authenticationfailed",
                 "authorizationfailure", "authorizationpermissionmismatch", "invalidauthenticationinfo",
                 "forbidden", "unauthorized", "invalid credentials", "permission",
                 "noauthenticationinformation", "expiredtoken", "invalidtoken", "accountisdisabled")
# a precondition failed (412), or a create-only write met an object (Azure's 409), or S3's 409
# for two conditional writes of one key at once
_CONDITION_CODES = ("PreconditionFailed", "ConditionNotMet", "BlobAlreadyExists",
                    "ConditionalRequestConflict", "conditionNotMet")
_TIMEOUT_WORDS = ("timeout", "timed out", "readtimeout", "connecttimeout")
_UNREACHABLE_WORDS = ("could not connect", "connection refused", "cannot connect", "connectionerror",
                      "connection reset", "name or service not known", "temporary failure in name resolution",
                      "endpointconnectionerror", "serverdisconnected", "connection aborted",
                      "remotedisconnected", "clientconnectorerror", "nodename nor servname")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def http_status(e: BaseException) -> int | None:
    """The HTTP status of an SDK error anywhere in the exception chain (botocore, gcsfs, azure, aiohttp)."""
    for x in _chain(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code:
                return int(code)
        for attr in ("status_code", "status", "code"):
            v = getattr(x, attr, None)
            if isinstance(v, int) and 100 <= v < 600:
                return v
    return None


def _error_code(e: BaseException) -> str:
    for x in _chain(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict) and resp.get("Error", {}).get("Code"):
            return str(resp["Error"]["Code"])
        code = getattr(x, "error_code", None)
        if code:
            return str(getattr(code, "value", code))
    return ""


def _short(e: BaseException) -> str:
    """The first line of an error, or only its type when it could hold a credential."""
    text = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    for marker in ("accountkey=", "sharedaccesssignature=", "sig=", "signature=", "x-amz-credential", "token",
                   "authorization", "secret", "password"):
        if marker in text.lower():
            return type(e).__name__
    for s in SECRETS.secrets:
        text = text.replace(s, "***")
    return text[:160]


class Translate:
    """Turns any exception of a backend call into the RemoteError family, naming the remote."""

    def __init__(self, name: str, display_url: str, bucket: str = "", endpoint: str = "",
                 timeout: float = 0) -> None:
        self.name = name
        self.display_url = display_url
        self.bucket = bucket
        self.endpoint = endpoint
        self.timeout = timeout
        self.errors = 0

    @contextlib.contextmanager
    def __call__(self, what: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except RemoteError:
            self.errors += 1
            raise
        except Exception as e:
            self.errors += 1
            raise self.classify(what, key, e) from None

    def _where(self) -> str:
        return f"{self.display_url} (endpoint {self.endpoint})" if self.endpoint else self.display_url

    def classify(self, what: str, key: str, e: BaseException) -> RemoteError:
        status = http_status(e)
        code = _error_code(e)
        texts = " ".join(f"{type(x).__name__} {x}" for x in _chain(e)).lower() + " " + code.lower()
        detail = f"HTTP {status} {code}".strip() if status else (code or type(e).__name__)
        subject = f"{what} {key!r}" if key else what
        if any(s in texts for s in _MISSING_BUCKET_CODES):
            return RemoteError(self.name, f"{subject}: the bucket/container {self.bucket!r} of "
                                          f"{self.display_url} does not exist (create it, or fix `url`)")
        # gcsfs raises a 412 as a FileExistsError without errno or status (an OS-level one has EEXIST)
        if status == 412 or code in _CONDITION_CODES or (isinstance(e, FileExistsError) and e.errno is None):
            return VersionMismatch(self.name, f"{subject}: another version is there now ({detail})")
        if status == 404 or isinstance(e, FileNotFoundError) or code in ("NoSuchKey", "BlobNotFound", "404"):
            return ObjectNotFound(self.name, f"{subject}: not found in {self.display_url}")
        if status in (401, 403) or isinstance(e, PermissionError) or any(s in texts for s in _DENIED_CODES):
            return RemoteDenied(self.name, f"{subject}: access denied by {self._where()} ({detail}); check "
                                           "the credentials in `options` or the SDK's environment")
        if status is not None and (status >= 500 or status == 429):
            return RemoteUnavailable(self.name, f"{subject}: server error from {self._where()} ({detail})")
        if any(s in texts for s in _TIMEOUT_WORDS) or isinstance(e, TimeoutError):
            limit = f" within {self.timeout:g}s" if self.timeout else ""
            return RemoteUnavailable(self.name,
                                     f"{subject}: no answer from {self._where()}{limit} (timed out)")
        if any(s in texts for s in _UNREACHABLE_WORDS) or isinstance(e, ConnectionError):
            return RemoteUnavailable(self.name, f"{subject}: {self._where()} unreachable ({_short(e)})")
        if isinstance(e, OSError) and e.errno in (errno.ENOENT,):
            return ObjectNotFound(self.name, f"{subject}: not found in {self.display_url}")
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            return RemoteDenied(self.name, f"{subject}: permission denied ({_short(e)})")
        if isinstance(e, OSError):
            return RemoteUnavailable(self.name, f"{subject}: {_short(e)}")
        return RemoteError(self.name, f"{subject}: {type(e).__name__}: {_short(e)}")
