"""Bearer-token check for every endpoint but health."""

from __future__ import annotations

import hmac

from fastapi import Request

from api.errors import ApiError


def require_token(request: Request) -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <RELAY_API_TOKEN>``.

    With no token configured the API only listens on 127.0.0.1 (see ``python -m cli api``).
    """
    expected = request.app.state.settings.api.token.get_secret_value()
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer …)")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "wrong bearer token")
