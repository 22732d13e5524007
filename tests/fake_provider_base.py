"""The machinery every fake provider shares: a threaded server on 127.0.0.1, API-key auth,
per-key enforcement of requests per sliding window (one more gets the provider's 429),
scripting per key (``fail``, ``revoke``, ``hang``, ``reset_script``) and a record of every
request. The providers themselves are in ``tests/fake_providers.py``.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass
class ProviderRequest:
    """One request a fake received, and how it was answered."""

    method: str
    path: str
    key: str | None  # as sent in the Authorization header
    prompt: str | None
    billable: bool
    fields: dict[str, Any] = field(default_factory=dict)  # JSON body, form fields or query
    status: int = 200  # HTTP status answered
    outcome: str = "ok"  # ok | unauthorized | rate_limited | failed | not_found | dropped
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    """What a fake answers: status, body, headers and the outcome recorded for it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"

    @classmethod
    def json(
        cls,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        outcome: str = "ok",
    ) -> Reply:
        """A JSON reply."""
        return cls(
            status,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})},
            outcome,
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of new connections from a benchmark's thread pool


@dataclass
class _Failure:
    status: int
    code: str | int | None
    times: int | None  # None: forever


class FakeProvider:
    """Common machinery: server, auth, window enforcement, scripting, records.

    Subclasses say which paths exist (`_route`), which of them are billable, and how the
    provider phrases its answers and errors.
    """

    free_endpoints: frozenset[str] = frozenset()  # not counted against the key's window
    keyless_endpoints: frozenset[str] = frozenset()  # answered without an API key

    def __init__(
        self,
        keys: dict[str, int],
        latency: float = 0.0,
        window_seconds: float = 60.0,
        host: str = "127.0.0.1",  # the multi-host tests bind their bridge's address
    ) -> None:
        self.keys = dict(keys)  # API key -> accepted billable requests allowed per window
        self.latency = latency
        self.window_seconds = window_seconds
        self.requests: list[ProviderRequest] = []
        self._accepted: dict[str, list[float]] = defaultdict(list)
        self._rejected: dict[str, int] = defaultdict(int)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)
        self._failures: dict[str, _Failure] = {}
        self._revoked: set[str] = set()
        self._hangs: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _Server((host, 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The base URL a client is configured with."""
        return self.origin

    def start(self) -> Self:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging handlers are released, never waited for."""
        self._stopping.set()
        self._server.shutdown()
        # Close kept-alive connections too, so a pooled client cannot reach a stopped fake.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------

    def fail(
        self, key: str, status: int, times: int | None = None, code: str | int | None = None
    ) -> None:
        """Answer `key`'s calls with `status` and the provider's error body, `times` times or
        forever; `code` picks the error variant (OpenAI error code, Stability error name,
        MiniMax ``base_resp`` status code)."""
        with self._lock:
            self._failures[key] = _Failure(status, code, times)

    def revoke(self, key: str) -> None:
        """From now on `key` is answered as an invalid key."""
        with self._lock:
            self._revoked.add(key)

    def hang(self, key: str, seconds: float) -> None:
        """Sleep `seconds` before answering each call with `key` (until `reset_script`)."""
        with self._lock:
            self._hangs[key] = seconds

    def reset_script(self) -> None:
        """Forget scripted failures, revocations and hangs."""
        with self._lock:
            self._failures.clear()
            self._revoked.clear()
            self._hangs.clear()

    # -- records ---------------------------------------------------------------------------

    def accepted(self, key: str) -> list[float]:
        """Monotonic times of `key`'s accepted billable requests."""
        with self._lock:
            return list(self._accepted.get(key, []))

    def rejected(self, key: str) -> int:
        """How many rate-limit answers `key` got."""
        with self._lock:
            return self._rejected.get(key, 0)

    def max_in_window(self, key: str) -> int:
        """The most accepted billable requests of `key` within any sliding window."""
        stamps = self.accepted(key)
        best = start = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] >= self.window_seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def peak_concurrency(self, key: str) -> int:
        """The most billable requests of `key` the fake was handling at once."""
        with self._lock:
            return self._peak.get(key, 0)

    def requests_for(
        self, key: str | None = None, path: str | None = None
    ) -> list[ProviderRequest]:
        """Recorded requests, filtered by key and/or path."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (key is None or r.key == key) and (path is None or r.path == path)
            ]

    # -- provider hooks --------------------------------------------------------------------

    def _route(self, method: str, path: str) -> str | None:
        """The endpoint name for a request, None for an unknown path."""
        raise NotImplementedError

    def _parse(self, endpoint: str, headers: Any, body: bytes) -> dict[str, Any]:  # noqa: ARG002
        """The request's fields; ValueError when it is unreadable."""
        return json.loads(body) if body else {}

    def _prompt(self, fields: dict[str, Any]) -> str | None:
        prompt = fields.get("prompt")
        return prompt if isinstance(prompt, str) else None

    def _unauthorized(self) -> Reply:
        raise NotImplementedError

    def _rate_limited(self, limit: int, one_slot: float, full_reset: float) -> Reply:
        raise NotImplementedError

    def _failure(self, status: int, code: str | int | None) -> Reply:
        raise NotImplementedError

    def _answer(self, endpoint: str, request: ProviderRequest) -> Reply:
        """The successful answer (or a content error) for an admitted request."""
        raise NotImplementedError

    def _not_found(self) -> Reply:
        return Reply.json(404, {"error": "not found"}, outcome="not_found")

    # -- request handling ------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply | None:
        """Answer one request; None when the fake is stopping (drop the connection)."""
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query))
        endpoint = self._route(method, parts.path)
        auth = headers.get("Authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if endpoint is None:
            reply = self._not_found()
            self._record(ProviderRequest(method, parts.path, key, None, False), reply)
            return reply
        billable = endpoint not in self.free_endpoints
        try:
            fields = {**query, **self._parse(endpoint, headers, body)}
            parse_error = None
        except ValueError as exc:
            fields, parse_error = dict(query), str(exc)
        request = ProviderRequest(method, parts.path, key, self._prompt(fields), billable, fields)
        if billable and key is not None:
            self._enter(key)
        try:
            reply = self._admit(request, endpoint, key, billable)
            if reply is None and parse_error is not None:
                reply = self._failure(400, None)
            with self._lock:
                delay = self._hangs.get(key) if key is not None else None
            if delay and self._stopping.wait(delay):
                request.outcome = "dropped"
                return None
            if reply is None:
                if billable and self.latency and self._stopping.wait(self.latency):
                    return None
                reply = self._answer(endpoint, request)
            with self._lock:
                request.status, request.outcome = reply.status, reply.outcome
            return reply
        finally:
            if billable and key is not None:
                self._leave(key)

    def _admit(
        self, request: ProviderRequest, endpoint: str, key: str | None, billable: bool
    ) -> Reply | None:
        """Auth, scripted failures and the window; None means answer normally."""
        with self._lock:
            self.requests.append(request)
            if endpoint in self.keyless_endpoints:
                return None
            if key is None or key not in self.keys or key in self._revoked:
                return self._unauthorized()
            failure = self._failures.get(key)
            if failure is not None:
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        del self._failures[key]
                reply = self._failure(failure.status, failure.code)
                if reply.outcome == "rate_limited":
                    self._rejected[key] += 1
                return reply
            if not billable:
                return None
            now = time.monotonic()
            stamps, limit = self._accepted[key], self.keys[key]
            in_window = len(stamps) - bisect.bisect_right(stamps, now - self.window_seconds)
            if in_window >= limit:
                self._rejected[key] += 1
                if in_window == 0:
                    return self._rate_limited(limit, self.window_seconds, self.window_seconds)
                one_slot = stamps[-in_window] + self.window_seconds - now
                full_reset = stamps[-1] + self.window_seconds - now
                return self._rate_limited(limit, one_slot, full_reset)
            stamps.append(now)
            return None

    def _remaining(self, key: str | None) -> tuple[int, int, float]:
        """``(limit, remaining, seconds to full reset)`` of `key`'s window, for headers."""
        with self._lock:
            if key is None or key not in self.keys:
                return 0, 0, 0.0
            now = time.monotonic()
            stamps, limit = self._accepted[key], self.keys[key]
            in_window = len(stamps) - bisect.bisect_right(stamps, now - self.window_seconds)
            reset = stamps[-1] + self.window_seconds - now if in_window else 0.0
            return limit, max(limit - in_window, 0), max(reset, 0.0)

    def _record(self, request: ProviderRequest, reply: Reply) -> None:
        with self._lock:
            request.status, request.outcome = reply.status, reply.outcome
            self.requests.append(request)

    def _enter(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] += 1
            self._peak[key] = max(self._peak[key], self._in_flight[key])

    def _leave(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] -= 1


def _handler_for(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with fake._lock:
                fake._connections.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reply = fake._handle(method, self.path, self.headers, body)
            if reply is None:
                self.close_connection = True
                return
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a hang longer than its timeout)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler
