"""The one error every provider client raises, and the rate-limit headers it reads."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Literal

ErrorKind = Literal["rate_limited", "unauthorized", "unavailable", "refused"]
KINDS: tuple[str, ...] = ("rate_limited", "unauthorized", "unavailable", "refused")

MESSAGE_LIMIT = 300  # characters of a provider's own message we pass on

# OpenAI reset headers are Go durations: "1s", "6m0s", "20ms", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# Keys an upstream may echo back in its own messages (OpenAI masks only the middle).
_KEY_LIKE = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9_\-*.]{6,}")


class UpstreamError(Exception):
    """An upstream call that gave no answer; `kind` says what the caller should do.

    - ``rate_limited``: cool this key down for ``retry_after`` seconds, try another key;
    - ``unauthorized``: bad, revoked or out-of-credit key: disable it for long;
    - ``unavailable``: 5xx, connection error, timeout: cool the key briefly, try another;
    - ``refused``: the request itself is bad or refused: do not retry, tell the user.

    The message is short, human, and never contains the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind | str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown UpstreamError kind {kind!r}")
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"UpstreamError({self.message!r}, kind={self.kind!r}, status={self.status!r}, "
            f"retry_after={self.retry_after!r})"
        )


def clean_message(text: str, api_key: str, limit: int = MESSAGE_LIMIT) -> str:
    """A provider's message made safe to show: the key masked, one line, at most `limit` chars."""
    if api_key:
        text = text.replace(api_key, "***")
    text = _KEY_LIKE.sub("***", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_duration(value: str) -> float | None:
    """Seconds in a Go duration (``"6m0s"``, ``"20ms"``) or a plain number; None if neither."""
    value = value.strip()
    if (seconds := _number(value)) is not None:
        return seconds
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait before trying this key again, from the rate-limit headers present.

    Reads ``Retry-After`` (seconds or an HTTP-date), ``retry-after-ms`` and OpenAI's
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``; the largest wins, since
    the key is usable only once every exhausted limit has reset. None when none is readable.
    """
    if not headers:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    waits: list[float | None] = []
    if (millis := _number(lowered.get("retry-after-ms"))) is not None:
        waits.append(millis / 1000)
    if (value := lowered.get("retry-after")) is not None:
        seconds = _number(value)
        waits.append(seconds if seconds is not None else _seconds_until(value))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if (value := lowered.get(name)) is not None and (
            seconds := parse_duration(value)
        ) is not None:
            waits.append(seconds)
    readable = [max(wait, 0.0) for wait in waits if wait is not None]
    return max(readable) if readable else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() - time.time()
