"""A Discord-compatible webhook server on 127.0.0.1 for tests, scripted per request.

Behaviours, consumed one per request (``ok`` once the script runs out):

- ``"ok"``: 204, or 200 with a message object when the query has ``wait=true``;
- ``"ok-bucket-empty"``: ``ok``, saying the rate-limit bucket is empty for ``retry_after``;
- ``"429"``: Discord's rate-limit answer, ``retry_after`` in the JSON body and the headers;
- ``"429-header"``: a 429 whose wait is only in the ``Retry-After`` header;
- ``"429-reset-after"``: a 429 whose wait is only in ``X-RateLimit-Reset-After``;
- ``"redirect <url>"``: a 307 to ``url``;
- ``"hang"``: answer ``ok`` only after ``hang_seconds`` (longer than the client's timeout);
- ``"404-message"``: 404 "Unknown Message" (10008: the message is gone, not the webhook);
- any other status code (``"500"``, ``404``, ...): that status with a Discord error body
  (401 "Invalid Webhook Token" and 404 "Unknown Webhook": what a dead interaction token
  gets).

``script`` queues behaviours for any request; ``script_for(token, ...)`` for the requests
to one webhook token only (an interaction's), taken before the shared queue.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_ERRORS = {
    400: (50035, "Invalid Form Body"),
    401: (50027, "Invalid Webhook Token"),
    404: (10015, "Unknown Webhook"),
    500: (0, "500: Internal Server Error"),
    502: (0, "502: Bad Gateway"),
    503: (0, "503: Service Unavailable"),
}


# Execute Webhook (and an interaction's follow-up: the application's id and the interaction's
# token), and editing or deleting one of its messages, with or without the API version.
_WEBHOOK = re.compile(
    r"/api(?:/v\d+)?/webhooks/(?P<id>\d+)/(?P<token>[^/]+)(?:/messages/(?P<message>[^/]+))?"
)
WEBHOOK_METHODS = ("POST", "PATCH", "DELETE")
# Other routes of Discord's API a test needs: (method, path pattern, handler). A handler
# gets the fake, the path's match, the headers and the raw body, and returns the status,
# the answer (JSON; bytes: sent as they are; None: no body) and extra headers
# (``Transfer-Encoding: chunked``: the body is sent in chunks, without a length).
Route = tuple[
    str,
    re.Pattern[str],
    Callable[["FakeDiscord", re.Match[str], Any, bytes], tuple[int, Any, dict[str, str]]],
]


@dataclass
class WebhookRequest:
    """One request the fake received, as the test wants to inspect it."""

    method: str
    webhook_id: str | None
    token: str | None
    query: dict[str, str]
    headers: dict[str, str]
    payload: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # attachment file name -> content
    behaviour: str = "ok"
    received_at: float = field(default_factory=time.monotonic)
    message: str | None = None  # PATCH / DELETE: the message id, "@original" included


class FakeDiscord:
    """Start with ``with FakeDiscord() as discord:``; ``discord.url_for()`` is a webhook URL."""

    def __init__(
        self, retry_after: float = 0.3, hang_seconds: float = 2.0, host: str = "127.0.0.1"
    ) -> None:
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.requests: list[WebhookRequest] = []
        self.routes: list[Route] = []
        self._script: deque[str] = deque()
        self._scripts: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1_100_000_000_000_000_000)
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the entry for ``RELAY_WEBHOOK_ALLOWED_HOSTS``."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"{host}:{port}"

    def url_for(self, webhook_id: str = "1", token: str = "secret-token") -> str:
        """The webhook URL a destination should post to."""
        return f"http://{self.host}/api/webhooks/{webhook_id}/{token}"

    @property
    def api_url(self) -> str:
        """The base of Discord's HTTP API here, for ``RELAY_DISCORD_API_URL``."""
        return f"http://{self.host}/api/v10"

    def script(self, *behaviours: str | int) -> None:
        """Queue how the next requests are answered, one behaviour per request."""
        with self._lock:
            self._script.extend(str(b) for b in behaviours)

    def script_for(self, token: str, *behaviours: str | int) -> None:
        """Queue how the next requests to webhook ``token`` are answered, one per request."""
        with self._lock:
            self._scripts.setdefault(token, deque()).extend(str(b) for b in behaviours)

    def requests_to(self, token: str, method: str | None = None) -> list[WebhookRequest]:
        """The requests received for webhook ``token`` (of ``method`` when given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.token == token and (method is None or r.method == method)
            ]

    def start(self) -> FakeDiscord:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_behaviour(self, token: str | None = None) -> str:
        with self._lock:
            own = self._scripts.get(token or "")
            if own:
                return own.popleft()
            return self._script.popleft() if self._script else "ok"

    def _record(self, request: WebhookRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _handler_for(fake: FakeDiscord) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self._route("POST")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_DELETE(self) -> None:
            self._route("DELETE")

        def do_GET(self) -> None:
            self._route("GET")

        def do_PUT(self) -> None:
            self._route("PUT")

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            webhook = _WEBHOOK.fullmatch(parts.path)
            if webhook is None:
                for route_method, pattern, handle in fake.routes:
                    found = pattern.fullmatch(parts.path)
                    if found and route_method == method:
                        status, answer, headers = handle(fake, found, self.headers, body)
                        if answer is None or isinstance(answer, bytes):
                            self._send(status, answer or b"", headers)
                        else:
                            self._json(status, answer, headers)
                        return
                self._json(404, {"message": "404: Not Found", "code": 0})
                return
            message = webhook["message"]
            if (method == "POST") != (message is None) or method not in WEBHOOK_METHODS:
                self._json(405, {"message": "405: Method Not Allowed", "code": 0})
                return
            payload, files = _parse_body(self.headers.get("Content-Type", ""), body)
            behaviour = fake._next_behaviour(webhook["token"])
            fake._record(
                WebhookRequest(
                    method=method,
                    webhook_id=webhook["id"],
                    token=webhook["token"],
                    query=query,
                    headers=dict(self.headers.items()),
                    payload=payload,
                    files=files,
                    behaviour=behaviour,
                    message=message,
                )
            )
            if method == "DELETE" and behaviour == "ok":
                self._send(204, b"", {})
                return
            if method == "PATCH" and behaviour == "ok":
                query = {**query, "wait": "true"}  # an edit always answers with the message
            self._answer(behaviour, webhook["id"], query, payload, files)

        def _answer(
            self,
            behaviour: str,
            webhook_id: str,
            query: dict[str, str],
            payload: dict[str, Any],
            files: dict[str, bytes],
        ) -> None:
            if behaviour == "hang":
                if fake._stopping.wait(fake.hang_seconds):
                    return
                behaviour = "ok"
            if behaviour in ("ok", "ok-bucket-empty"):
                headers = {}
                if behaviour == "ok-bucket-empty":
                    headers = {
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset-After": f"{fake.retry_after:g}",
                    }
                if query.get("wait", "").lower() != "true":
                    self._send(204, b"", headers)
                    return
                message = _message(next(fake._ids), webhook_id, payload, files)
                self._json(200, message, headers)
            elif behaviour in ("429", "429-header", "429-reset-after"):
                wait = fake.retry_after
                body = {"message": "You are being rate limited.", "global": False}
                headers = {
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Scope": "user",
                }
                if behaviour == "429":
                    body["retry_after"] = wait
                if behaviour == "429-reset-after":
                    headers["X-RateLimit-Reset-After"] = f"{wait:g}"
                else:
                    headers["Retry-After"] = f"{wait:g}"
                self._json(429, body, headers)
            elif behaviour == "404-message":
                self._json(404, {"message": "Unknown Message", "code": 10008})
            elif behaviour.startswith("redirect "):
                location = behaviour.removeprefix("redirect ")
                self._json(307, {"message": "moved"}, {"Location": location})
            else:
                status = int(behaviour)
                code, text = _ERRORS.get(status, (0, f"{status}: error"))
                self._json(status, {"message": text, "code": code})

        def _json(self, status: int, body: dict[str, Any], headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self._send(status, data, {"Content-Type": "application/json", **(headers or {})})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            chunked = headers.get("Transfer-Encoding") == "chunked"
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if not chunked:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not chunked:
                    self.wfile.write(data)
                    return
                for start in range(0, len(data), 65536):
                    piece = data[start : start + 65536]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the "hang" behaviour)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output (and caplog) quiet

    return Handler


def _parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """JSON body, or multipart with ``payload_json`` and file parts (any field name)."""
    if not content_type.startswith("multipart/form-data"):
        return (json.loads(body) if body else {}), {}
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    payload: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        decoded = part.get_payload(decode=True)  # bytes for a leaf part
        content = decoded if isinstance(decoded, bytes) else b""
        filename = part.get_filename()
        if filename:
            files[filename] = content
        elif name == "payload_json":
            payload = json.loads(content)
    return payload, files


def _message(
    message_id: int, webhook_id: str, payload: dict[str, Any], files: dict[str, bytes]
) -> dict[str, Any]:
    """The message object Discord returns for ``?wait=true``."""
    return {
        "id": str(message_id),
        "type": 0,
        "channel_id": "1000000000000000001",
        "webhook_id": webhook_id,
        "content": payload.get("content", ""),
        "embeds": payload.get("embeds", []),
        "attachments": [
            {"id": str(message_id + i + 1), "filename": name, "size": len(data)}
            for i, (name, data) in enumerate(files.items())
        ],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }


@contextmanager
def allowed_fake_discord(relay_env: Callable[..., Any], **options: Any) -> Iterator[FakeDiscord]:
    """A fake Discord that Relay's webhook allow-list (``RELAY_WEBHOOK_ALLOWED_HOSTS``) lets
    through, for the block."""
    with FakeDiscord(**options) as fake:
        relay_env(WEBHOOK_ALLOWED_HOSTS=fake.host)
        yield fake


@contextmanager
def nothing_logged_holds(caplog: Any, secret: str) -> Iterator[None]:
    """No log record at any level (urllib3's DEBUG included) written in the block holds
    ``secret``."""
    caplog.set_level(logging.DEBUG)
    yield
    leaked = [r.getMessage() for r in caplog.records if secret in r.getMessage()]
    assert leaked == [] and secret not in caplog.text
