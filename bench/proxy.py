"""A TCP proxy on 127.0.0.1 that counts the bytes clients send to the S3 server (the dedup scenario).

Owns its listening socket and one pair of relay threads per connection. `bytes_up` counts
everything a client sent (requests, headers, bodies), which bounds from above what the server
received. It forwards only to the upstream port on 127.0.0.1 and never inspects or logs payloads.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from bench.server import LOOPBACK, free_port


class CountingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, self.port))
        self._listener.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.bytes_up = self.bytes_down = 0

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._connection, args=(client, upstream), daemon=True).start()

    def _connection(self, client: socket.socket, upstream: socket.socket) -> None:
        up = threading.Thread(target=self._relay, args=(client, upstream, True), daemon=True)
        up.start()
        self._relay(upstream, client, False)
        up.join()
        client.close()
        upstream.close()

    def _relay(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                with self._lock:
                    if up:
                        self.bytes_up += n
                    else:
                        self.bytes_down += n
                dst.sendall(view[:n])
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class RequestCountingProxy(CountingProxy):
    """A CountingProxy that also counts the HTTP requests clients send, by kind (the two-host
    scenario: what an idle host spends following the change log).

    It reads the request line and headers of each request to find where the next one starts
    (`Content-Length` or chunked bodies); bodies are skipped, never kept. `requests` maps a kind
    (`classify(method, target)`, by default `"GET /?list-type=2..."` cut to the method and whether
    the change log is the subject) to its count."""

    def __init__(self, upstream_port: int, classify=None) -> None:
        self.requests: dict[str, int] = {}
        self.classify = classify or (lambda method, target: method)
        super().__init__(upstream_port)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.requests = {}

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    def _connection(self, client: socket.socket, upstream: socket.socket) -> None:
        super()._connection(_Tap(client, _RequestParser(self._count)), upstream)  # type: ignore[arg-type]

    def _count(self, method: str, target: str) -> None:
        kind = self.classify(method, target)
        with self._lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1


class _Tap:
    """A client socket whose received bytes also go through `parser` (the request direction)."""

    def __init__(self, sock: socket.socket, parser: _RequestParser) -> None:
        self._sock = sock
        self._parser = parser

    def recv_into(self, buf: bytearray) -> int:
        n = self._sock.recv_into(buf)
        if n:
            self._parser.feed(bytes(memoryview(buf)[:n]))
        return n

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _RequestParser:
    """Splits a stream of HTTP/1.1 requests at their boundaries; calls `on_request(method, target)`
    once per request line."""

    def __init__(self, on_request) -> None:
        self.on_request = on_request
        self.head = b""
        self.body_left = 0  # bytes of a Content-Length body still to skip
        self.chunked = False
        self.chunk_line = b""  # a chunk-size line (or the CRLF after a chunk) being read
        self.chunk_state = ""  # "size", "data", "crlf", "trailer"

    def feed(self, data: bytes) -> None:
        while data:
            if self.body_left:
                step = min(self.body_left, len(data))
                self.body_left -= step
                data = data[step:]
                if self.chunked and not self.body_left:
                    self.chunk_state = "crlf"
                continue
            if self.chunked:
                data = self._chunk_framing(data)
                continue
            self.head += data
            data = b""
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        self.on_request(parts[0], parts[1] if len(parts) > 1 else "")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.chunked, self.chunk_state = True, "size"
        else:
            self.body_left = int(headers.get(b"content-length", b"0") or 0)

    def _chunk_framing(self, data: bytes) -> bytes:
        """Reads the framing of a chunked body up to the next chunk's data; returns what is left."""
        self.chunk_line += data
        end = self.chunk_line.find(b"\r\n")
        if end < 0:
            return b""
        line, rest = self.chunk_line[:end], self.chunk_line[end + 2:]
        self.chunk_line = b""
        if self.chunk_state == "crlf":
            self.chunk_state = "size"
        elif self.chunk_state == "size":
            size = int(line.split(b";")[0] or b"0", 16)
            if size:
                self.body_left, self.chunk_state = size, "data"
            else:
                self.chunk_state = "trailer"
        elif self.chunk_state == "trailer" and not line:  # the empty line that ends the trailers
            self.chunked, self.chunk_state = False, ""
        return rest


class DelayProxy(RequestCountingProxy):
    """A RequestCountingProxy that adds a fixed round-trip time (the latency scenarios).

    Every chunk forwarded in either direction is held for half of `rtt_s` after it arrived (a
    delay line: a reader thread stamps the chunks, a sender thread sends each when its time comes,
    so the delay never limits throughput), and a new connection waits one `rtt_s` before its first
    byte is forwarded (the TCP handshake a distant server costs). A request and its response thus
    take one RTT more than on the loopback, however the client pipelines or reuses connections.
    `bandwidth` (bytes/s, each direction, shared by all connections; None: no cap) paces the
    senders. `rtt_s` may be changed between measurements."""

    def __init__(self, upstream_port: int, rtt_s: float = 0.0, bandwidth: float | None = None,
                 classify=None) -> None:
        self.rtt_s = rtt_s
        self.bandwidth = bandwidth
        self._paced_until = {True: 0.0, False: 0.0}
        super().__init__(upstream_port, classify)

    def _connection(self, client: socket.socket, upstream: socket.socket) -> None:
        if self.rtt_s:
            time.sleep(self.rtt_s)
        super()._connection(client, upstream)

    def _relay(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        super()._relay(src, _DelayLine(self, dst, up), up)  # type: ignore[arg-type]

    def _due(self, arrived: float, size: int, up: bool) -> float:
        due = arrived + self.rtt_s / 2
        if self.bandwidth:
            with self._lock:
                due = self._paced_until[up] = max(due, self._paced_until[up]) + size / self.bandwidth
        return due


class _DelayLine:
    """Stands for the destination socket of one direction: `sendall` stamps a copy of the chunk and
    queues it, a thread of its own sends each at the time `proxy._due` gives; `shutdown` sends what
    is queued first. Bounded: a capped sender holds the reader back (at most 32 chunks queued)."""

    def __init__(self, proxy: DelayProxy, dst: socket.socket, up: bool) -> None:
        self._proxy, self._dst, self._up = proxy, dst, up
        self._line: queue.Queue[tuple[float, bytes] | None] = queue.Queue(maxsize=32)
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def sendall(self, data: memoryview) -> None:
        self._line.put((time.monotonic(), bytes(data)))

    def shutdown(self, how: int) -> None:
        self._line.put(None)
        self._sender.join()

    def _send(self) -> None:
        try:
            while (item := self._line.get()) is not None:
                due = self._proxy._due(item[0], len(item[1]), self._up)
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                self._dst.sendall(item[1])
        except OSError:
            while self._line.get() is not None:  # drain, so the reader is never blocked on a dead peer
                pass
        finally:
            with contextlib.suppress(OSError):
                self._dst.shutdown(socket.SHUT_WR)
