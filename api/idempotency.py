"""``Idempotency-Key`` on the POSTs that create work: a client on a flaky link retries with
the same key and gets the first answer; nothing new is created (store/idempotency.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.errors import ApiError
from store import idempotency
from store.idempotency import KeyState

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Any unique string (a UUID): a retry with the same key and the same request "
        "gets the first answer (marked `Idempotent-Replayed: true`) and creates nothing. Keys "
        "are kept for 24 hours.",
    ),
]
REPLAYED_HEADER = "Idempotent-Replayed"
# A request that held its key this long without an answer died; its key is free again.
STALE_SECONDS = 600.0
KEEP_SECONDS = 86_400.0


def fingerprint(*parts: str | bytes) -> str:
    """What a request asked for, as one digest (the same request gives the same one)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


class KeyedRequest:
    """One request's use of its key: ``start`` it, then ``answer`` or ``release``."""

    def __init__(self, operation: str, key: str | None) -> None:
        self.operation, self.key = operation, key

    async def start(self, asked: str) -> JSONResponse | None:
        """The recorded answer for a retry; None when this request must run. Raises ApiError
        409 while the first request is still running, 422 when the key was used for another."""
        if self.key is None:
            return None
        check = await run_in_threadpool(
            idempotency.begin,
            self.operation,
            self.key,
            asked,
            stale_seconds=STALE_SECONDS,
            keep_seconds=KEEP_SECONDS,
        )
        if check.state == KeyState.ANSWERED:
            headers = {REPLAYED_HEADER: "true"}
            if check.retry_after:
                headers["Retry-After"] = check.retry_after
            body = json.loads(check.body or "null")
            return JSONResponse(body, status_code=check.status_code or 200, headers=headers)
        if check.state == KeyState.IN_PROGRESS:
            raise ApiError(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being handled; retry shortly",
            )
        if check.state == KeyState.MISMATCH:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request; a new request needs "
                "a new key",
            )
        return None

    async def answer(self, response: JSONResponse) -> JSONResponse:
        """Record ``response`` as this key's answer; returns it."""
        if self.key is not None:
            await run_in_threadpool(
                idempotency.record,
                self.operation,
                self.key,
                response.status_code,
                bytes(response.body).decode(),
                response.headers.get("retry-after"),
            )
        return response

    async def release(self) -> None:
        """The request created nothing: a retry with the key runs afresh."""
        if self.key is not None:
            await run_in_threadpool(idempotency.release, self.operation, self.key)
