"""A TCP proxy on 127.0.0.1 that a test can freeze: a server that stops answering (stalled,
overloaded, cut off) without closing a single connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class FrozenProxy:
    """Relays every connection to ``upstream`` until ``freeze()``; from then on it holds
    what either side sends and opens nothing new (connections stay open, silent)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="frozen-proxy", daemon=True).start()

    def freeze(self) -> None:
        """Stop relaying, in both directions, on every connection."""
        self._flowing.clear()

    def close(self) -> None:
        """Close the listener and every relayed connection."""
        self._closed.set()
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = [self._listener, *self._sockets], []
        for sock in sockets:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._flowing.wait()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                if self._closed.is_set():
                    return
                target.sendall(data)
        with suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@contextmanager
def frozen_proxy(upstream: tuple[str, int]) -> Iterator[FrozenProxy]:
    """A ``FrozenProxy`` to ``upstream``, closed on the way out."""
    proxy = FrozenProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
