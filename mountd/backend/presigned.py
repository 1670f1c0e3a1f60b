"""`PresignedRanges`: ranged GETs (and HEADs) of S3 objects over plain `http.client` keep-alive connections.

It owns a small pool of idle connections per endpoint and a cache of presigned GET URLs (one
per object path, renewed long before it expires). The body of a GET is read by C code
(`BufferedReader.read` into one bytes object) in the caller's worker thread, so a GET of many
MiB holds the GIL for microseconds, where the SDK path (aiobotocore/aiohttp on fsspec's one
event-loop thread) parses the stream in Python: measured on 127.0.0.1, 8 parallel 8 MiB GETs
move about 4x more bytes per second this way.

HEADs go the same way, signed by the caller for each request: botocore's own `head_object` took
0.78 ms of CPU per call on the benchmark machine, against 0.06 ms to sign a URL and 0.19 ms for
the request here, and a cold `ls -l` of a directory makes one HEAD per object (for the
attributes stored in its metadata).

Small PUTs (a file under `FAST_PUT_MAX`, a marker, a change-log entry) go the same way, their
headers (user metadata, the condition) signed into the URL: through botocore a PutObject cost
about 1.6 ms of CPU on fsspec's event-loop thread plus two handoffs of the GIL between threads,
which bounded how many small files a second a mount could send (one core, 7-9 ms per file).

It is only a fast path and never decides an error: any answer but 206/200/416, any connection
or TLS failure, returns None and the caller makes the same GET through its SDK, which retries
and maps errors to errno. It never logs or returns a presigned URL (it carries a signature).
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable

URL_LIFETIME = 3600  # seconds a presigned URL is valid
URL_REUSE = 1800  # a cached URL is renewed after this many seconds
MAX_URLS = 1024
MAX_IDLE = 16  # idle connections kept per endpoint
FAST_PUT_MAX = 1 << 20  # larger PUTs go through the SDK, which can stop one midway (cancel_upload)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_Conn = http.client.HTTPConnection


class NotThere(Exception):
    """The server answered 404 to a signed request: no object at that key."""


class PresignedRanges:
    def __init__(self, presign: Callable[[str, int], str], *, timeout: float,
                 verify: bool | str | None = None) -> None:
        self._presign = presign  # (bucket/key path, lifetime seconds) -> URL
        self._timeout = timeout
        self._verify = verify
        self._lock = threading.Lock()
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._tls: ssl.SSLContext | None = None
        # a proxy is the SDK's business (it honours NO_PROXY and friends): no fast path then
        self.enabled = not any(os.environ.get(v) for v in PROXY_VARS)

    def read(self, path: str, start: int, end: int, *, if_match: str | None = None) -> bytes | None:
        """Bytes [start, end) of the object at `path` (bucket/key), b"" past its end; None: ask the
        SDK (also when `if_match`, an ETag with its quotes, is not the object's now: a 412).
        NotThere for a 404: a correctly signed request for a key that is not there, which the
        SDK would only ask again (a missing directory index cost two GETs)."""
        if not self.enabled:
            return None
        for fresh in (False, True):
            url = self._url(path, fresh)
            if url is None:
                return None
            status, data = self._get(url, start, end, if_match)
            if status in (206, 416):
                return data
            if status == 404:
                raise NotThere(path)
            if status != 403:
                return None
            # 403: the cached URL may have outlived its credentials; once more with a new one
        return None

    # ------------------------------------------------------------------------------------------
    def _url(self, path: str, fresh: bool) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._urls.get(path)
            if hit is not None and not fresh and now - hit[1] < URL_REUSE:
                self._urls.move_to_end(path)
                return hit[0]
        try:
            url = self._presign(path, URL_LIFETIME)
        except Exception:  # noqa: BLE001 - the SDK path will report what is wrong
            return None
        with self._lock:
            self._urls[path] = (url, now)
            self._urls.move_to_end(path)
            while len(self._urls) > MAX_URLS:
                self._urls.popitem(last=False)
        return url

    def head(self, sign: Callable[[], str]) -> tuple[int, dict[str, str]] | None:
        """(200, the headers with lower-case names) of a HEAD of the URL that `sign` makes, or
        (404, {}): a correctly signed request for a key that is not there (the one answer decided
        here: a lookup of a missing name is common, and asking again costs a round trip); None for
        any other answer or failure: the SDK then makes the same request."""
        answer = self._signed("HEAD", sign)
        if answer is None or answer[0] not in (200, 404):
            return None
        return answer[0], answer[1] if answer[0] == 200 else {}

    def get_signed(self, sign: Callable[[], str]) -> bytes | None:
        """The body of a 200 answer to a GET of the URL that `sign` makes (a listing page); None
        for any other answer or failure: the SDK then makes the same request."""
        answer = self._signed("GET", sign)
        return answer[2] if answer is not None and answer[0] == 200 else None

    def put(self, sign: Callable[[dict[str, str]], str], body: bytes,
            headers: dict[str, str]) -> dict[str, str] | None:
        """The headers (lower-case names) of a 200 answer to a PUT of `body` with `headers` to
        the URL that `sign` makes for them (they are signed with it); None for any other answer
        or failure: the SDK then makes the same request and decides what the error means (a 412
        is a VersionMismatch there; a PUT sends the same bytes again harmlessly)."""
        if not self.enabled or len(body) > FAST_PUT_MAX:
            return None
        try:
            for v in headers.values():
                v.encode("latin-1")  # http.client's header encoding; anything else: the SDK
            url = sign(headers)
        except Exception:  # noqa: BLE001 - the SDK path will report what is wrong
            return None
        answer = self._request("PUT", url, dict(headers), body)
        return answer[1] if answer is not None and answer[0] == 200 else None

    def _signed(self, method: str, sign: Callable[[], str]) -> tuple[int, dict[str, str], bytes] | None:
        if not self.enabled:
            return None
        try:
            url = sign()
        except Exception:  # noqa: BLE001 - the SDK path will report what is wrong
            return None
        return self._request(method, url, {})

    def _get(self, url: str, start: int, end: int, if_match: str | None) -> tuple[int, bytes]:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if if_match is not None:
            headers["If-Match"] = if_match
        answer = self._request("GET", url, headers)
        if answer is None:
            return 0, b""
        status, headers, body = answer
        if status == 206 or status == 200 and "content-range" in headers:
            return 206, body  # (rclone serve s3 answers a range with 200 and a Content-Range)
        if status == 200 and start == 0:  # the server ignored the range
            return 206, body[:end]
        # 200 for a range further in (a whole object): not read as a range here; 416: past the end
        return (0 if status == 200 else status), b""

    def _request(self, method: str, url: str, headers: dict[str, str],
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes] | None:
        """(status, headers with lower-case names, body) over a kept-alive connection; None when
        no answer came."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            return None
        where = (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))
        target = u.path + ("?" + u.query if u.query else "")
        for attempt in range(2):
            conn, reused = self._take(where)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and attempt == 0:
                    continue  # an idle keep-alive connection the server had closed
                return None
            if resp.will_close:
                conn.close()
            else:
                self._give(where, conn)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        return None

    def _take(self, where: tuple[str, str, int]) -> tuple[_Conn, bool]:
        with self._lock:
            idle = self._idle.get(where)
            if idle:
                return idle.pop(), True
        scheme, host, port = where
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._timeout,
                                               context=self._context()), False
        return http.client.HTTPConnection(host, port, timeout=self._timeout), False

    def _give(self, where: tuple[str, str, int], conn: _Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            if self._verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                cafile = self._verify if isinstance(self._verify, str) else os.environ.get("AWS_CA_BUNDLE")
                if not cafile:
                    try:
                        import certifi  # botocore's default bundle

                        cafile = certifi.where()
                    except ImportError:
                        cafile = None
                ctx = ssl.create_default_context(cafile=cafile)
            self._tls = ctx
        return self._tls

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()
