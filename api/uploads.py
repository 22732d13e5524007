"""Reading a submission: the file onto disk safely (size cap, safe names, allowed folders)
and its options, validated."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body
from api.idempotency import fingerprint
from api.schemas import PathSubmission, UploadFields
from relay_settings import RelaySettings

COPY_BLOCK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str | None) -> str:
    """The upload's base name with anything odd replaced; never a path."""
    base = Path((filename or "").replace("\\", "/")).name
    cleaned = _UNSAFE.sub("_", base).strip("._") or "upload"
    return cleaned[-200:]


def save_upload(upload: UploadFile, folder: Path) -> tuple[Path, str]:
    """Copy the upload (already spooled to disk by the parser) into ``folder``, block by
    block; its path and the SHA-256 of its content."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe_name(upload.filename)
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while block := upload.file.read(COPY_BLOCK):
            digest.update(block)
            out.write(block)
    return target, digest.hexdigest()


@dataclass(frozen=True)
class Submission:
    """A file to transcribe with its options, and a digest of what was asked."""

    source: Path
    options: UploadFields
    uploaded: bool  # saved under data_dir/uploads/<job id> (removed on refusal)
    fingerprint: str

    def discard(self) -> None:
        """Remove what this request stored (an upload), as when it is refused."""
        if self.uploaded:
            shutil.rmtree(self.source.parent, ignore_errors=True)


async def read_submission(request: Request, settings: RelaySettings, job_id: str) -> Submission:
    """A multipart upload (field ``file``) or JSON ``{"path": ...}``; ApiError for anything else."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        return await _from_upload(request, settings, job_id)
    if kind.startswith("application/json"):
        return await _from_json(request, settings)
    raise ApiError(
        415,
        "unsupported_content_type",
        "send multipart/form-data with a 'file' field or JSON with a 'path'",
    )


async def _from_upload(request: Request, settings: RelaySettings, job_id: str) -> Submission:
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "missing_file", "multipart body needs a 'file' field with the media")
    fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
    try:
        options = UploadFields.model_validate(fields)
    except ValidationError as err:
        raise ApiError(422, "invalid_options", problems(err)) from err
    folder = Path(settings.data_dir) / "uploads" / job_id
    path, content = await run_in_threadpool(save_upload, upload, folder)
    await upload.close()
    return Submission(path, options, True, fingerprint(content, options.model_dump_json()))


async def _from_json(request: Request, settings: RelaySettings) -> Submission:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {err}") from err
    try:
        submission = PathSubmission.model_validate(body)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", problems(err)) from err
    path = allowed_path(submission.path, settings.allowed_source_roots())
    return Submission(path, submission, False, fingerprint(submission.model_dump_json()))


def problems(err: ValidationError) -> str:
    """A pydantic error as one line: ``field: what is wrong; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())


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
