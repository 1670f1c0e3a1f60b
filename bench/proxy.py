"""A TCP proxy on 127.0.0.1 that counts the bytes clients send to the S3 server (the dedup scenario).

Owns its listening socket and one pair of relay threads per connection. `bytes_up` counts
everything a client sent (requests, headers, bodies), which bounds from above what the server
received. It forwards only to the upstream port on 127.0.0.1 and never inspects or logs payloads.
"""

from __future__ import annotations

import contextlib
import socket
import threading

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
