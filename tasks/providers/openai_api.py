"""OpenAI chat completions and image generation, one attempt per call (``max_retries=0``)."""

from __future__ import annotations

import base64
import binascii
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletionMessageParam

from tasks.providers import ChatAnswer, MediaAnswer
from tasks.providers.errors import UpstreamError, clean_message, parse_retry_after

DEFAULT_RETRY_AFTER = 5.0  # seconds, when a 429 carries no usable header
CLIENT_CACHE_SIZE = 32  # one client per (key, base URL, timeout); keys in a pool are few

_clients: OrderedDict[tuple[str, str, float], openai.OpenAI] = OrderedDict()
_clients_lock = threading.Lock()

T = TypeVar("T")


def chat(
    *,
    api_key: str,
    base_url: str,
    timeout: float,
    prompt: str,
    model: str = "gpt-4o-mini",
    system_prompt: str | None = None,
    max_tokens: int | None = None,
) -> ChatAnswer:
    """One chat completion for `prompt`; raises `UpstreamError` when no answer came."""
    messages: list[ChatCompletionMessageParam] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    extra: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens is not None else {}
    client = _client(api_key, base_url, timeout)
    completion = _call(
        api_key,
        lambda: client.chat.completions.create(model=model, messages=messages, **extra),
    )
    if not completion.choices:
        raise UpstreamError("OpenAI returned no choices", kind="unavailable")
    choice = completion.choices[0]
    refusal = getattr(choice.message, "refusal", None)
    if refusal or choice.finish_reason == "content_filter":
        reason = clean_message(refusal or "the answer was filtered", api_key)
        raise UpstreamError(f"OpenAI refused: {reason}", kind="refused")
    usage = completion.usage
    return ChatAnswer(
        text=choice.message.content or "",
        model=completion.model or model,
        total_tokens=usage.total_tokens if usage is not None else None,
    )


def image(
    *,
    api_key: str,
    base_url: str,
    timeout: float,
    prompt: str,
    model: str = "gpt-image-1",
    size: str = "1024x1024",
) -> MediaAnswer:
    """One generated image for `prompt`, decoded; raises `UpstreamError` when none came."""
    # gpt-image models always answer base64 and reject response_format; DALL-E needs asking.
    extra: dict[str, Any] = {"response_format": "b64_json"} if model.startswith("dall-e") else {}
    client = _client(api_key, base_url, timeout)
    result = _call(
        api_key,
        lambda: client.images.generate(model=model, prompt=prompt, size=size, n=1, **extra),
    )
    encoded = result.data[0].b64_json if result.data else None
    if not encoded:
        raise UpstreamError("OpenAI returned no image data", kind="unavailable")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UpstreamError("OpenAI returned an unreadable image", kind="unavailable") from None
    mime_type, extension = _image_type(data)
    return MediaAnswer(data=data, mime_type=mime_type, file_name=f"image.{extension}")


def _client(api_key: str, base_url: str, timeout: float) -> openai.OpenAI:
    """A cached client per (key, URL, timeout), so connections are reused between calls."""
    cache_key = (api_key, base_url, float(timeout))
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is not None:
            _clients.move_to_end(cache_key)
            return client
        client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        _clients[cache_key] = client
        # An evicted client may still be in use by another thread: let it be collected, not closed.
        while len(_clients) > CLIENT_CACHE_SIZE:
            _clients.popitem(last=False)
        return client


def _call(api_key: str, request: Callable[[], T]) -> T:
    """Run one SDK request, turning its exceptions into `UpstreamError`."""
    try:
        return request()
    except openai.RateLimitError as exc:
        if _error_code(exc) == "insufficient_quota":
            raise UpstreamError(
                "OpenAI: the account behind this key is out of quota",
                kind="unauthorized",
                status=429,
            ) from None
        wait = parse_retry_after(exc.response.headers)
        raise UpstreamError(
            "OpenAI rate limit reached for this key",
            kind="rate_limited",
            status=429,
            retry_after=wait if wait else DEFAULT_RETRY_AFTER,
        ) from exc
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        # from None: OpenAI's own 401 message echoes part of the key.
        raise UpstreamError(
            f"OpenAI rejected the API key ({exc.status_code})",
            kind="unauthorized",
            status=exc.status_code,
        ) from None
    except openai.APITimeoutError as exc:
        raise UpstreamError("OpenAI did not answer in time", kind="unavailable") from exc
    except openai.APIConnectionError as exc:
        raise UpstreamError("could not connect to OpenAI", kind="unavailable") from exc
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status >= 500 or status in (408, 409):
            raise UpstreamError(
                f"OpenAI is unavailable ({status})", kind="unavailable", status=status
            ) from exc
        message = clean_message(_provider_message(exc), api_key)
        raise UpstreamError(
            f"OpenAI refused the request: {message}", kind="refused", status=status
        ) from exc
    except openai.OpenAIError as exc:  # unreadable answers and the like
        raise UpstreamError(
            f"OpenAI gave an unusable answer ({type(exc).__name__})", kind="unavailable"
        ) from exc


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    return exc.code or body.get("code") or body.get("type")


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message")
    return message if isinstance(message, str) and message else f"status {exc.status_code}"


def _image_type(data: bytes) -> tuple[str, str]:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "image/png", "png"
