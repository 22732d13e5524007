"""Bearer-token check for every endpoint but health."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError

# Declares the scheme in the OpenAPI document; the check itself is check_token's.
bearer = HTTPBearer(
    auto_error=False, description="RELAY_API_TOKEN (open on 127.0.0.1 when it is not set)"
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def require_token(request: Request, _: BearerCredentials = None) -> None:
    """Dependency: refuse the request (401) unless it carries the API token. ``async`` on
    purpose: a plain ``def`` dependency costs every request a hop to the thread pool."""
    check_token(request)


def check_token(request: Request) -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <RELAY_API_TOKEN>``.

    With no token configured the API only listens on 127.0.0.1 (see ``python -m cli api``).
    """
    check_bearer(request, request.app.state.settings.api.token.get_secret_value())


def check_bearer(request: Request, expected: str) -> None:
    """Refuse the request (401) unless it carries ``Authorization: Bearer <expected>``; any
    request passes when ``expected`` is empty."""
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer …)")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "wrong bearer token")
