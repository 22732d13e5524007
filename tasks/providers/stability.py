"""Stability AI image generation (v2beta stable-image), one HTTP attempt per call."""

from __future__ import annotations

import threading

import httpx

from tasks.providers import MediaAnswer
from tasks.providers.errors import UpstreamError, clean_message, parse_retry_after

ENDPOINTS = ("core", "ultra", "sd3")
RATE_WINDOW_SECONDS = 10.0  # Stability's window; its 429 says nothing about when to retry

_http: httpx.Client | None = None
_http_lock = threading.Lock()


def image(
    *,
    api_key: str,
    base_url: str,
    timeout: float,
    prompt: str,
    endpoint: str = "core",
    output_format: str = "png",
    aspect_ratio: str | None = None,
) -> MediaAnswer:
    """One generated image for `prompt`; raises `UpstreamError` when none came."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown Stability endpoint {endpoint!r}; one of {ENDPOINTS}")
    form = {"prompt": prompt, "output_format": output_format}
    if aspect_ratio:
        form["aspect_ratio"] = aspect_ratio
    url = f"{base_url.rstrip('/')}/v2beta/stable-image/generate/{endpoint}"
    try:
        response = _client().post(
            url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "image/*"},
            files={"none": ""},  # forces multipart/form-data, as Stability's examples do
            data=form,
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise UpstreamError(
            f"Stability did not answer within {timeout:g} s", kind="unavailable"
        ) from None
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"could not connect to Stability ({type(exc).__name__})", kind="unavailable"
        ) from None
    if response.status_code != 200:
        raise _error_for(response, api_key)
    finish_reason = response.headers.get("finish-reason", "SUCCESS").upper()
    if finish_reason == "CONTENT_FILTERED":
        raise UpstreamError("Stability filtered the image for content", kind="refused", status=200)
    mime_type = response.headers.get("content-type", "").split(";")[0].strip()
    if not mime_type.startswith("image/") or not response.content:
        raise UpstreamError("Stability answered without an image", kind="unavailable", status=200)
    extension = mime_type.removeprefix("image/").replace("jpeg", "jpg")
    return MediaAnswer(data=response.content, mime_type=mime_type, file_name=f"image.{extension}")


def _client() -> httpx.Client:
    """The process's one connection pool to Stability (httpx clients are thread-safe)."""
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=50)
            )
        return _http


def _error_for(response: httpx.Response, api_key: str) -> UpstreamError:
    """The `UpstreamError` for a non-200 answer, from its status and JSON error body."""
    status = response.status_code
    name, detail = _error_body(response)
    detail = clean_message(detail or name or f"status {status}", api_key)
    if status == 429:
        wait = parse_retry_after(response.headers)
        return UpstreamError(
            "Stability rate limit reached for this key",
            kind="rate_limited",
            status=status,
            retry_after=wait if wait else RATE_WINDOW_SECONDS,
        )
    if status == 403 and name == "content_moderation":
        return UpstreamError(
            f"Stability refused the prompt: {detail}", kind="refused", status=status
        )
    if status in (401, 403):
        return UpstreamError(
            f"Stability rejected the API key ({status})", kind="unauthorized", status=status
        )
    if status == 402:
        return UpstreamError(
            "Stability: the account behind this key is out of credits",
            kind="unauthorized",
            status=status,
        )
    if status >= 500 or status == 408:
        return UpstreamError(
            f"Stability is unavailable ({status})", kind="unavailable", status=status
        )
    return UpstreamError(f"Stability refused the request: {detail}", kind="refused", status=status)


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    """``name`` and the joined ``errors`` of Stability's JSON error body, when readable."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    errors = body.get("errors")
    detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else None
    name = body.get("name")
    return (name if isinstance(name, str) else None), detail
