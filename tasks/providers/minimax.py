"""MiniMax (Hailuo) video generation: create a task, poll it, retrieve and download the file.

MiniMax answers most errors with HTTP 200 and a non-zero ``base_resp.status_code``, so every
JSON answer is checked there as well as by its HTTP status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tasks.providers import MediaAnswer
from tasks.providers.errors import ErrorKind, UpstreamError, clean_message, parse_retry_after

DEFAULT_RETRY_AFTER = 60.0  # MiniMax limits per minute and sends no reset header
POLL_FAILURES_TOLERATED = 3  # consecutive transient poll errors before the task is given up

# base_resp.status_code -> what the caller should do (unknown codes: unavailable).
_CODE_KINDS: dict[int, ErrorKind] = {
    1002: "rate_limited",  # rate limit
    1039: "rate_limited",  # token limit
    1004: "unauthorized",  # authentication failed
    2049: "unauthorized",  # invalid API key
    1008: "unauthorized",  # insufficient balance
    1026: "refused",  # sensitive content in the prompt
    1027: "refused",  # sensitive content in the generated video
    2013: "refused",  # invalid parameters
    1000: "unavailable",  # unknown error
    1001: "unavailable",  # timeout
    1013: "unavailable",  # internal service error
}

_http: httpx.Client | None = None
_http_lock = threading.Lock()


def video(
    *,
    api_key: str,
    base_url: str,
    timeout: float,
    prompt: str,
    model: str = "MiniMax-Hailuo-02",
    poll_interval: float = 5.0,
    deadline_seconds: float = 900.0,
    on_status: Callable[[str], None] | None = None,
) -> MediaAnswer:
    """Generate one video for `prompt` and download it; raises `UpstreamError` when none came.

    `timeout` bounds each HTTP call; `deadline_seconds` bounds the whole wait for the task.
    Only the create call is billable, so a transient error while polling is tolerated a few
    times in a row instead of losing a task already paid for.
    """
    base = base_url.rstrip("/")
    started = time.monotonic()
    created = _api(
        api_key,
        timeout,
        "POST",
        f"{base}/v1/video_generation",
        json={"model": model, "prompt": prompt},
    )
    task_id = created.get("task_id")
    if not task_id:
        raise UpstreamError("MiniMax created no video task", kind="unavailable")
    file_id = _wait_for_file(
        api_key,
        timeout,
        base,
        str(task_id),
        deadline_seconds=deadline_seconds,
        started=started,
        poll_interval=poll_interval,
        on_status=on_status,
    )
    retrieved = _api(
        api_key, timeout, "GET", f"{base}/v1/files/retrieve", params={"file_id": file_id}
    )
    file = retrieved.get("file") or {}
    download_url = file.get("download_url")
    if not download_url:
        raise UpstreamError("MiniMax gave no download URL for the video", kind="unavailable")
    data = _download(download_url, timeout)
    file_name = file.get("filename") or f"{task_id}.mp4"
    return MediaAnswer(
        data=data, mime_type="video/mp4", file_name=file_name, source_url=download_url
    )


def _wait_for_file(
    api_key: str,
    timeout: float,
    base: str,
    task_id: str,
    *,
    deadline_seconds: float,
    started: float,
    poll_interval: float,
    on_status: Callable[[str], None] | None,
) -> str:
    """Poll the task until it succeeds (its file id), fails, or the deadline passes."""
    deadline = started + deadline_seconds
    failures = 0
    while True:
        try:
            state = _api(
                api_key,
                timeout,
                "GET",
                f"{base}/v1/query/video_generation",
                params={"task_id": task_id},
            )
            failures = 0
        except UpstreamError as exc:
            failures += 1
            transient = exc.kind in ("unavailable", "rate_limited")
            if not transient or failures >= POLL_FAILURES_TOLERATED:
                raise
            state = {}
        status = str(state.get("status") or "")
        if status and on_status is not None:
            on_status(status)
        if status == "Success":
            if not state.get("file_id"):
                raise UpstreamError("MiniMax finished the video without a file", kind="unavailable")
            return str(state["file_id"])
        if status == "Fail":
            reason = (state.get("base_resp") or {}).get("status_msg") or "no reason given"
            raise UpstreamError(
                f"MiniMax could not make the video: {clean_message(str(reason), api_key)}",
                kind="unavailable",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamError(f"video not ready after {deadline_seconds:g} s", kind="unavailable")
        time.sleep(min(poll_interval, remaining))


def _api(api_key: str, timeout: float, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    """One authenticated MiniMax call; its JSON body once both HTTP and base_resp say OK."""
    try:
        response = _client().request(
            method, url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout, **kwargs
        )
    except httpx.TimeoutException:
        raise UpstreamError(
            f"MiniMax did not answer within {timeout:g} s", kind="unavailable"
        ) from None
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"could not connect to MiniMax ({type(exc).__name__})", kind="unavailable"
        ) from None
    status = response.status_code
    if status == 429:
        wait = parse_retry_after(response.headers)
        raise UpstreamError(
            "MiniMax rate limit reached for this key",
            kind="rate_limited",
            status=status,
            retry_after=wait if wait else DEFAULT_RETRY_AFTER,
        )
    if status in (401, 403):
        raise UpstreamError(
            f"MiniMax rejected the API key ({status})", kind="unauthorized", status=status
        )
    if status >= 500 or status == 408:
        raise UpstreamError(f"MiniMax is unavailable ({status})", kind="unavailable", status=status)
    if status >= 400:
        raise UpstreamError(
            f"MiniMax refused the request ({status})", kind="refused", status=status
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UpstreamError("MiniMax gave an unreadable answer", kind="unavailable", status=status)
    _check_base_resp(body, response.headers, api_key)
    return body


def _check_base_resp(body: dict[str, Any], headers: httpx.Headers, api_key: str) -> None:
    """Raise the `UpstreamError` a non-zero ``base_resp.status_code`` stands for."""
    base_resp = body.get("base_resp") or {}
    try:
        code = int(base_resp.get("status_code") or 0)
    except (TypeError, ValueError):
        code = -1
    if code == 0:
        return
    kind = _CODE_KINDS.get(code, "unavailable")
    reason = clean_message(str(base_resp.get("status_msg") or "no message"), api_key)
    retry_after = None
    if kind == "rate_limited":
        retry_after = parse_retry_after(headers) or DEFAULT_RETRY_AFTER
    messages = {
        "rate_limited": "MiniMax rate limit reached for this key",
        "unauthorized": "MiniMax rejected the API key or the account is out of balance",
        "refused": "MiniMax refused the request",
        "unavailable": "MiniMax could not serve the request",
    }
    raise UpstreamError(
        f"{messages[kind]} (code {code}: {reason})", kind=kind, retry_after=retry_after
    )


def _download(url: str, timeout: float) -> bytes:
    """The finished video; no Authorization header, the URL is pre-signed and may be a CDN's."""
    try:
        response = _client().get(url, timeout=timeout, follow_redirects=True)
    except httpx.TimeoutException:
        raise UpstreamError(
            f"the video download did not finish within {timeout:g} s", kind="unavailable"
        ) from None
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"could not download the video ({type(exc).__name__})", kind="unavailable"
        ) from None
    if response.status_code != 200 or not response.content:
        raise UpstreamError(
            f"the video download failed ({response.status_code})",
            kind="unavailable",
            status=response.status_code,
        )
    return response.content


def _client() -> httpx.Client:
    """The process's one connection pool to MiniMax (httpx clients are thread-safe)."""
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(limits=httpx.Limits(max_connections=50))
        return _http
