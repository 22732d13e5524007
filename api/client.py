"""A small synchronous client of Relay's bot endpoints for scripts and bots of one's own
(Discord itself uses the interactions endpoint); it only needs ``httpx``. A refusal (HTTP
429: a cooldown or daily limit) is an answer, not an error; every other failure (401, 404,
422, 503, Relay unreachable) raises ``RelayError`` with the server's code and message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

FINAL_STATUSES = frozenset({"completed", "failed", "refused"})


class RelayError(Exception):
    """Relay answered with an error (or could not be reached: ``status_code`` 0)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message = status_code, code, message


@dataclass(frozen=True)
class Submitted:
    """What Relay said to a submitted request: queued (``accepted``) or refused, and why."""

    request_id: str | None
    accepted: bool
    status: str
    route: str | None = None
    pool: str | None = None
    refusal: str | None = None  # the message to show the user when refused
    retry_after_seconds: float | None = None


class RelayBotClient:
    """Submit bot requests to Relay and follow them; usable as a context manager.

    ``client`` lets a caller pass its own ``httpx.Client`` (a FastAPI ``TestClient`` in
    tests); it is then not closed by ``close()``, its own timeout applies, and ``base_url``
    may be empty (paths resolve against the client's base URL).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 5.0,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self._prefix = f"{base_url.rstrip('/')}/api/bot/requests"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owned = client is None
        self._http = client if client is not None else httpx.Client(timeout=timeout)

    def submit(
        self,
        kind: str,
        prompt: str,
        *,
        user_id: str,
        channel: str,
        guild: str | None = None,
        webhook_url: str | None = None,
        destination: str | None = None,
    ) -> Submitted:
        """Queue a ``chat``, ``image`` or ``video`` request; a 429 comes back as a refusal."""
        body: dict[str, Any] = {"kind": kind, "prompt": prompt, "user_id": user_id}
        optional = {"guild": guild, "webhook_url": webhook_url, "destination": destination}
        body.update(channel=channel, **{k: v for k, v in optional.items() if v is not None})
        response = self._request("POST", self._prefix, json=body)
        data = _json(response)
        if response.status_code == 429:
            wait = data.get("retry_after_seconds")
            if wait is None and response.headers.get("Retry-After", "").isdigit():
                wait = response.headers["Retry-After"]
            return Submitted(
                request_id=data.get("request_id"),
                accepted=False,
                status="refused",
                refusal=str(data.get("message") or "the request was refused"),
                retry_after_seconds=float(wait) if wait is not None else None,
            )
        _raise_for(response, data)
        return Submitted(
            request_id=data["request_id"],
            accepted=True,
            status=data.get("status", "queued"),
            route=data.get("route"),
            pool=data.get("pool"),
        )

    def status(self, request_id: str) -> dict[str, Any]:
        """The request's status view (``status``, ``answer_text``, ``error``, ...)."""
        response = self._request("GET", f"{self._prefix}/{quote(request_id, safe='')}")
        data = _json(response)
        _raise_for(response, data)
        return data

    def wait(self, request_id: str, timeout: float = 120.0, poll: float = 0.5) -> dict[str, Any]:
        """Poll until the request is completed, failed or refused; ``TimeoutError`` if not
        within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.status(request_id)
            if view.get("status") in FINAL_STATUSES:
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"bot request {request_id} still {view.get('status')}")
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    def close(self) -> None:
        """Close the HTTP connection pool (unless the caller passed its own client)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> RelayBotClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, headers=self._headers, **kwargs)
        except httpx.TransportError as err:
            raise RelayError(0, "unreachable", f"{type(err).__name__}: {err}") from err


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _raise_for(response: httpx.Response, data: dict[str, Any]) -> None:
    if response.is_success:
        return
    code = str(data.get("error") or f"http_{response.status_code}")
    message = str(data.get("message") or response.text[:200] or response.reason_phrase)
    raise RelayError(response.status_code, code, message)
