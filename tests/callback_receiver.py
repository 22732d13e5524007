"""A callback receiver on 127.0.0.1 for the tests: a real HTTP server in a thread that
records every request and answers as the test scripts it (a status, or a redirect)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers with the statuses in ``script`` in turn, then ``200``; ``(302, url)`` answers
    a redirect. ``on_receipt`` runs for each request before it is answered."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[int | tuple[int, str]] = []
        self.on_receipt: Callable[[Received], None] | None = None
        self._arrived = threading.Condition()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/relay?token=receiver-secret"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` requests have arrived (the test's synchronisation point)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} of {count} callbacks arrived")
            return list(self.received)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        got = Received(
            handler.path,
            {k.lower(): v for k, v in handler.headers.items()},
            handler.rfile.read(length),
        )
        if self.on_receipt is not None:
            self.on_receipt(got)
        with self._arrived:
            answer = self.script.pop(0) if self.script else 200
        status, location = answer if isinstance(answer, tuple) else (answer, None)
        handler.send_response(status)
        if location:
            handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        with self._arrived:  # counted once answered: the sender has its status by then
            self.received.append(got)
            self._arrived.notify_all()


@contextmanager
def receiver(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 for the block (https with ``tls``)."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state._answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
