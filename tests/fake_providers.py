"""OpenAI, Stability and MiniMax look-alikes on 127.0.0.1, for tests and benchmarks.

Each fake speaks its provider's HTTP protocol (paths, auth, bodies, error shapes, rate-limit
headers) and enforces its own per-key limit: at most ``keys[key]`` accepted billable requests
in any sliding ``window_seconds``; one more is answered with the provider's 429. Rejected
requests do not count. Everything is recorded so a test can check what a client really sent.

Prompt conventions: ``long:N ...`` (chat: N characters of text), ``large:N ...`` (media of N
bytes), ``refuse ...`` (the provider's content-moderation refusal), ``fail-video ...`` (MiniMax
task ends in ``Fail``).

Scripting per key: ``fail(key, status, times, code)``, ``revoke(key)``, ``hang(key, seconds)``,
``reset_script()``.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import email.parser
import email.policy
import itertools
import json
import math
import re
import socket
import struct
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_SIZE_PROMPT = re.compile(r"^(long|large):(\d+)\b")
_SENTENCE = (
    "the quick relay carries each message across the wire while small workers hum along "
    "and every answer finds its way home before the kettle boils"
)
_WORDS = _SENTENCE.split()


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
        self, keys: dict[str, int], latency: float = 0.0, window_seconds: float = 60.0
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
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The base URL a client is configured with."""
        return self.origin

    def start(self) -> FakeProvider:
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

    def __enter__(self) -> FakeProvider:
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


# -- content -----------------------------------------------------------------------------------


def sized(prompt: str | None, kind: str) -> int | None:
    """N from a ``long:N`` / ``large:N`` prompt of that kind, else None."""
    match = _SIZE_PROMPT.match(prompt or "")
    return int(match.group(2)) if match and match.group(1) == kind else None


def readable_text(length: int) -> str:
    """Exactly `length` characters of words, with a newline every dozen words or so."""
    pieces: list[str] = []
    total = 0
    for index, word in enumerate(itertools.cycle(_WORDS)):
        if total >= length:
            break
        piece = word + ("\n" if index % 12 == 11 else " ")
        pieces.append(piece)
        total += len(piece)
    return "".join(pieces)[:length]


def png_bytes(size: int | None = None) -> bytes:
    """A valid 1x1 PNG, padded with a tEXt chunk to `size` bytes when that is bigger."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x20\x60\xa0"))
    end = chunk(b"IEND", b"")
    padding = (size or 0) - len(head) - len(pixels) - len(end) - 12 - len(b"Comment\x00")
    text = chunk(b"tEXt", b"Comment\x00" + b"x" * padding) if padding > 0 else b""
    return head + pixels + text + end


def mp4_bytes(size: int | None = None) -> bytes:
    """An ``ftyp`` box and a ``free`` box filling to `size` bytes (4 KB by default)."""
    ftyp = struct.pack(">I", 32) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2avc1mp41"
    free_size = max((size or 4096) - len(ftyp), 8)
    return ftyp + struct.pack(">I", free_size) + b"free" + b"\x00" * (free_size - 8)


def go_duration(seconds: float) -> str:
    """OpenAI's reset header format: ``"20ms"``, ``"1.2s"``, ``"6m0s"``."""
    if seconds < 0.9995:
        return f"{max(round(seconds * 1000), 1)}ms"
    minutes, rest = divmod(round(seconds, 1), 60)
    text = f"{rest:.1f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


# -- OpenAI ------------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Project does not have access to this model.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
_OPENAI_CODES: dict[str, tuple[int, str, str]] = {
    "insufficient_quota": (
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
    ),
    "content_policy_violation": (
        400,
        "Your request was rejected as a result of our safety system.",
        "invalid_request_error",
    ),
}


class FakeOpenAI(FakeProvider):
    """``POST /v1/chat/completions`` and ``POST /v1/images/generations``."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the SDK appends ``/chat/completions``."""
        return f"{self.origin}/v1"

    def _route(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        return {"/v1/chat/completions": "chat", "/v1/images/generations": "image"}.get(path)

    def _prompt(self, fields: dict[str, Any]) -> str | None:
        if "messages" not in fields:
            return super()._prompt(fields)
        users = [m for m in fields.get("messages") or [] if m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else None

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None, **kw: Any) -> Reply:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        outcome = {401: "unauthorized", 429: "rate_limited"}.get(status, "failed")
        return Reply.json(status, body, outcome=outcome, **kw)

    def _unauthorized(self) -> Reply:
        return self._error(401, *_OPENAI_ERRORS[401])

    def _rate_limited(self, limit: int, one_slot: float, full_reset: float) -> Reply:
        message = (
            f"Rate limit reached for requests per min (RPM): Limit {limit}, Used {limit}, "
            f"Requested 1. Please try again in {go_duration(one_slot)}."
        )
        headers = {
            "retry-after": str(max(math.ceil(one_slot), 1)),
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": go_duration(full_reset),
        }
        return self._error(429, message, "requests", "rate_limit_exceeded", headers=headers)

    def _failure(self, status: int, code: str | int | None) -> Reply:
        if isinstance(code, str) and code in _OPENAI_CODES:
            code_status, message, kind = _OPENAI_CODES[code]
            return self._error(code_status, message, kind, code)
        message, kind, default_code = _OPENAI_ERRORS.get(
            status,
            (
                f"Error {status}.",
                "server_error" if status >= 500 else "invalid_request_error",
                None,
            ),
        )
        headers = {"retry-after": "1", "x-ratelimit-reset-requests": "1s"} if status == 429 else {}
        return self._error(status, message, kind, code or default_code, headers=headers)

    def _answer(self, endpoint: str, request: ProviderRequest) -> Reply:
        fields, prompt = request.fields, request.prompt or ""
        if prompt.startswith("refuse"):
            return self._failure(400, "content_policy_violation")
        limit, remaining, reset = self._remaining(request.key)
        headers = {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": go_duration(reset),
        }
        model = fields.get("model")
        if endpoint == "image":
            model = model or "dall-e-2"
            if "response_format" in fields and not str(model).startswith("dall-e"):
                message = "Unknown parameter: 'response_format'."
                return self._error(400, message, "invalid_request_error", "unknown_parameter")
            image = base64.b64encode(png_bytes(sized(prompt, "large"))).decode()
            return Reply.json(
                200, {"created": int(time.time()), "data": [{"b64_json": image}]}, headers
            )
        if not model or not fields.get("messages"):
            return self._failure(400, None)
        length = sized(prompt, "long")
        content = readable_text(length) if length is not None else f"Echo: {prompt}"
        prompt_tokens, completion_tokens = len(prompt.split()), max(len(content) // 4, 1)
        completion = {
            "id": f"chatcmpl-fake{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return Reply.json(200, completion, headers)


# -- Stability ---------------------------------------------------------------------------------

_STABILITY_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "prompt: cannot be empty"),
    401: ("unauthorized", "Missing or invalid API key"),
    402: ("payment_required", "You lack sufficient credits to make this request."),
    403: ("content_moderation", "Your request was flagged by our content moderation system."),
    404: ("not_found", "The requested resource was not found."),
    429: ("rate_limit_exceeded", "You have exceeded the rate limit for this key."),
    500: ("internal_error", "An unexpected server error occurred."),
}
_STABILITY_PATH = re.compile(r"^/v2beta/stable-image/generate/(core|ultra|sd3)$")


class FakeStability(FakeProvider):
    """``POST /v2beta/stable-image/generate/{core,ultra,sd3}`` (multipart form)."""

    def _route(self, method: str, path: str) -> str | None:
        return "generate" if method == "POST" and _STABILITY_PATH.match(path) else None

    def _parse(self, endpoint: str, headers: Any, body: bytes) -> dict[str, Any]:  # noqa: ARG002
        content_type = headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ValueError("content-type: must be multipart/form-data")
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, Any] = {"accept": headers.get("Accept", "image/*")}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name and not part.get_filename():
                fields[name] = (part.get_payload(decode=True) or b"").decode()
        return fields

    @staticmethod
    def _error(status: int, name: str, detail: str, **kw: Any) -> Reply:
        body = {"id": f"fake{time.monotonic_ns()}", "name": name, "errors": [detail]}
        outcome = {401: "unauthorized", 429: "rate_limited"}.get(status, "failed")
        return Reply.json(status, body, outcome=outcome, **kw)

    def _unauthorized(self) -> Reply:
        return self._error(401, *_STABILITY_ERRORS[401])

    def _rate_limited(self, limit: int, one_slot: float, full_reset: float) -> Reply:  # noqa: ARG002
        detail = f"You have exceeded the rate limit of {limit} requests within a window."
        return self._error(429, "rate_limit_exceeded", detail)  # Stability sends no reset header

    def _failure(self, status: int, code: str | int | None) -> Reply:
        name, detail = _STABILITY_ERRORS.get(status, ("internal_error", f"Error {status}."))
        return self._error(status, str(code or name), detail)

    def _answer(self, endpoint: str, request: ProviderRequest) -> Reply:  # noqa: ARG002
        fields, prompt = request.fields, request.prompt or ""
        if not prompt:
            return self._failure(400, None)
        if prompt.startswith("refuse"):
            return self._failure(403, "content_moderation")
        output_format = fields.get("output_format") or "png"
        if output_format not in ("png", "jpeg", "webp"):
            return self._error(400, "bad_request", "output_format: must be png, jpeg or webp")
        seed = str(zlib.crc32(prompt.encode()))
        image = png_bytes(sized(prompt, "large"))
        if "application/json" in fields["accept"]:
            body = {"image": base64.b64encode(image).decode(), "finish_reason": "SUCCESS"}
            return Reply.json(200, {**body, "seed": int(seed)})
        headers = {
            "Content-Type": f"image/{output_format}",
            "finish-reason": "SUCCESS",
            "seed": seed,
        }
        return Reply(200, image, headers)


# -- MiniMax -----------------------------------------------------------------------------------

_MINIMAX_MESSAGES: dict[int, str] = {
    1000: "unknown error",
    1001: "request timeout",
    1002: "rate limit exceeded(RPM)",
    1004: "login fail: Please carry the API secret key in the 'Authorization' field",
    1008: "insufficient balance",
    1013: "internal service error",
    1026: "input new_sensitive",
    1027: "output new_sensitive",
    1039: "rate limit exceeded(TPM)",
    2013: "invalid params",
    2049: "invalid api key",
}
_MINIMAX_STATUS_CODES = {400: 2013, 401: 1004, 402: 1008, 403: 1004, 429: 1002}


@dataclass
class _VideoTask:
    created: float
    prompt: str
    file_id: str


class FakeMiniMax(FakeProvider):
    """Video tasks: create (billable), query, retrieve, and a download URL on the same server."""

    def __init__(
        self,
        keys: dict[str, int],
        latency: float = 0.0,
        window_seconds: float = 60.0,
        video_seconds: float = 0.5,
    ) -> None:
        super().__init__(keys, latency, window_seconds)
        self.video_seconds = video_seconds
        self._tasks: dict[str, _VideoTask] = {}
        self._files: dict[str, int | None] = {}  # file id -> requested size
        self._ids = itertools.count(306_000_000_000_000)

    def _route(self, method: str, path: str) -> str | None:
        if method == "POST" and path == "/v1/video_generation":
            return "create"
        if method == "GET" and path == "/v1/query/video_generation":
            return "query"
        if method == "GET" and path == "/v1/files/retrieve":
            return "retrieve"
        if method == "GET" and re.fullmatch(r"/download/\d+\.mp4", path):
            return "download"
        return None

    free_endpoints = frozenset({"query", "retrieve", "download"})
    keyless_endpoints = frozenset({"download"})  # pre-signed URL, like MiniMax's CDN links

    def _parse(self, endpoint: str, headers: Any, body: bytes) -> dict[str, Any]:
        if endpoint == "download":
            return {}
        return super()._parse(endpoint, headers, body)

    @staticmethod
    def _base_resp(code: int, outcome: str = "failed", **extra: Any) -> Reply:
        message = _MINIMAX_MESSAGES.get(code, "success" if code == 0 else "error")
        body = {**extra, "base_resp": {"status_code": code, "status_msg": message}}
        return Reply.json(200, body, outcome=outcome if code else "ok")

    def _unauthorized(self) -> Reply:
        return self._base_resp(1004, "unauthorized")

    def _rate_limited(self, limit: int, one_slot: float, full_reset: float) -> Reply:  # noqa: ARG002
        return self._base_resp(1002, "rate_limited")

    def _failure(self, status: int, code: str | int | None) -> Reply:
        if code is not None:
            code = int(code)
            outcome = "rate_limited" if code in (1002, 1039) else "failed"
            return self._base_resp(code, outcome)
        if status >= 500:
            return Reply.json(status, {"error": "internal server error"}, outcome="failed")
        code = _MINIMAX_STATUS_CODES.get(status, 1000)
        outcome = {1002: "rate_limited", 1004: "unauthorized"}.get(code, "failed")
        return self._base_resp(code, outcome)

    def _answer(self, endpoint: str, request: ProviderRequest) -> Reply:
        fields, prompt = request.fields, request.prompt
        if endpoint == "create":
            if not prompt or not fields.get("model"):
                return self._base_resp(2013)
            if prompt.startswith("refuse"):
                return self._base_resp(1026)
            task_id, file_id = str(next(self._ids)), str(next(self._ids))
            with self._lock:
                self._tasks[task_id] = _VideoTask(time.monotonic(), prompt, file_id)
                self._files[file_id] = sized(prompt, "large")
            return self._base_resp(0, task_id=task_id)
        if endpoint == "query":
            return self._query(fields.get("task_id", ""))
        if endpoint == "retrieve":
            return self._retrieve(fields.get("file_id", ""))
        return self._download(request.path.removeprefix("/download/").removesuffix(".mp4"))

    def _query(self, task_id: str) -> Reply:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return self._base_resp(2013)
        elapsed = time.monotonic() - task.created
        if elapsed < self.video_seconds * 0.3:
            return self._base_resp(0, task_id=task_id, status="Queueing", file_id="")
        if elapsed < self.video_seconds:
            return self._base_resp(0, task_id=task_id, status="Processing", file_id="")
        if task.prompt.startswith("fail-video"):
            return self._base_resp(0, task_id=task_id, status="Fail", file_id="")
        return self._base_resp(0, task_id=task_id, status="Success", file_id=task.file_id)

    def _retrieve(self, file_id: str) -> Reply:
        with self._lock:
            known = file_id in self._files
            size = self._files.get(file_id)
        if not known:
            return self._base_resp(2013)
        file = {
            "file_id": int(file_id),
            "bytes": len(mp4_bytes(size)),
            "created_at": int(time.time()),
            "filename": "output.mp4",
            "purpose": "video_generation",
            "download_url": f"{self.origin}/download/{file_id}.mp4",
        }
        return self._base_resp(0, file=file)

    def _download(self, file_id: str) -> Reply:
        with self._lock:
            known = file_id in self._files
            size = self._files.get(file_id)
        if not known:
            return Reply(404, b"not found", {"Content-Type": "text/plain"}, "not_found")
        return Reply(200, mp4_bytes(size), {"Content-Type": "video/mp4"})
