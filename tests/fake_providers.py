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
import email.parser
import email.policy
import itertools
import math
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

from tests.fake_content import go_duration, mp4_bytes, png_bytes, readable_text, sized
from tests.fake_provider_base import FakeProvider, ProviderRequest, Reply

__all__ = ["FakeMiniMax", "FakeOpenAI", "FakeStability", "ProviderRequest", "readable_text"]


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
    def _error(status: int, message: str, kind: str, code: str | int | None, **kw: Any) -> Reply:
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
            payload = part.get_payload(decode=True)  # bytes for a leaf part
            if isinstance(name, str) and name and not part.get_filename():
                fields[name] = (payload if isinstance(payload, bytes) else b"").decode()
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
