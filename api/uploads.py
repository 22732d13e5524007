"""Getting a submitted file onto disk safely: size cap, safe names, allowed folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body

COPY_BLOCK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str | None) -> str:
    """The upload's base name with anything odd replaced; never a path."""
    base = Path((filename or "").replace("\\", "/")).name
    cleaned = _UNSAFE.sub("_", base).strip("._") or "upload"
    return cleaned[-200:]


def save_upload(upload: UploadFile, folder: Path) -> Path:
    """Copy the upload (already spooled to disk by the parser) into ``folder``, block by block."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe_name(upload.filename)
    with target.open("wb") as out:
        shutil.copyfileobj(upload.file, out, COPY_BLOCK)
    return target


def allowed_path(raw: str, roots: list[Path]) -> Path:
    """The submitted path, resolved, if it lies inside an allowed folder; else 403."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise ApiError(422, "invalid_path", f"path must be absolute: {raw}")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ApiError(
            403,
            "path_not_allowed",
            f"{raw} is outside the folders Relay may read "
            f"({', '.join(str(r) for r in roots)}; see RELAY_SOURCE_ROOTS)",
        )
    return resolved


class UploadLimit:
    """ASGI middleware: refuse request bodies over the cap before they reach the disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        import json

        body = json.dumps(
            error_body(
                "upload_too_large",
                f"upload is larger than the limit of {self.max_bytes} bytes "
                "(RELAY_MAX_UPLOAD_BYTES)",
                max_bytes=self.max_bytes,
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLargeError(Exception):
    pass
