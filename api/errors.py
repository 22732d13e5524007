"""Every error is JSON ``{"error": code, "message": text, ...}``; no stack trace to clients."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("relay.api")


class ApiError(Exception):
    """An error a client should see, with its HTTP status and machine-readable code."""

    def __init__(self, status: int, code: str, message: str, /, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": code, "message": message, **extra}


class ErrorBody(BaseModel):
    """Every error answer: a machine-readable code, a sentence for people, and details."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="machine-readable code, e.g. not_found or too_long")
    message: str = Field(description="what went wrong and what to do about it")


DESCRIPTIONS = {
    400: "malformed request (not JSON where JSON was sent)",
    401: "missing or wrong bearer token",
    403: "not allowed",
    404: "no such resource",
    409: "not in a state that allows this",
    410: "gone: the data was removed",
    413: "too large or too long",
    415: "unsupported media or content type",
    422: "the request breaks a rule of this operation; the message names it",
    429: "over a limit; Retry-After says when to try again",
    503: "a service Relay depends on is unavailable",
}


def problem_text(problem: Mapping[str, Any]) -> str:
    """One validation problem (pydantic's ``errors()`` item) as ``where: what``."""
    where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
    return f"{where}: {problem['msg']}"


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` for error statuses, each with the ErrorBody schema. A
    description of one's own is given as ``_413="..."``."""
    out: dict[int | str, dict[str, object]] = {}
    for status in statuses:
        description = described.get(f"_{status}", DESCRIPTIONS.get(status, "error"))
        out[status] = {"model": ErrorBody, "description": description}
    return out


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media",
    422: "invalid_request",
    503: "unavailable",
}


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the JSON error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        body = error_body(err.code, err.message, **err.extra)
        return JSONResponse(body, status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(err.status_code, "error")
        headers = dict(err.headers or {})
        if err.status_code == 405:  # RFC 9110: say which methods the resource has
            headers["Allow"] = ", ".join(_allowed_methods(request))
        body = error_body(code, str(err.detail))
        return JSONResponse(body, status_code=err.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [problem_text(e) for e in err.errors()]
        return JSONResponse(
            error_body("invalid_request", "; ".join(problems) or "invalid request"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"internal error ({type(err).__name__})"),
            status_code=500,
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's):
    each is tried against the app's routes, included routers too."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed
