"""A TCP proxy on loopback that delays every reply by ``delay_s`` (settable while running).

Client -> server bytes pass at once; server -> client bytes are held until ``delay_s`` after
they arrived, so a request/reply protocol (Redis) sees a round trip that much longer while its
bandwidth is unchanged: a Redis far away, or one that answers slowly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque


class DelayProxy:
    def __init__(self, target_port: int, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, upstream]
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            self._start_delayed(upstream, client)

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _start_delayed(self, src: socket.socket, dst: socket.socket) -> None:
        held: deque[tuple[float, bytes] | None] = deque()
        ready = threading.Condition()

        def receive() -> None:
            try:
                while data := src.recv(1 << 20):
                    with ready:
                        held.append((time.monotonic() + self.delay_s, data))
                        ready.notify()
            except OSError:
                pass
            with ready:
                held.append(None)
                ready.notify()

        def send() -> None:
            try:
                while True:
                    with ready:
                        while not held:
                            ready.wait()
                        item = held.popleft()
                    if item is None:
                        break
                    due, data = item
                    time.sleep(max(0.0, due - time.monotonic()))
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                self._close_pair(src, dst)

        threading.Thread(target=receive, daemon=True).start()
        threading.Thread(target=send, daemon=True).start()

    @staticmethod
    def _close_pair(a: socket.socket, b: socket.socket) -> None:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
