"""What the OpenAPI document says beyond the route signatures: the upload's two bodies, and
the rules that depend on configuration (webhook hosts, prompt length)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import DESCRIPTIONS as _DESCRIPTIONS
from api.schemas import PathSubmission, UploadFields
from blocks.discord import allowed_hosts, webhook_url_pattern
from bot_config import get_bot_config


def upload_request_body() -> dict[str, Any]:
    """``openapi_extra`` of ``POST /api/transcriptions``: a multipart upload or a JSON path."""
    options = UploadFields.model_json_schema()["properties"]
    fields = {name: _without_null(prop) for name, prop in options.items()}
    file = {
        "type": "string",
        "format": "binary",
        "description": "the audio or video file (any format ffmpeg reads)",
    }
    multipart = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": file, **fields},
        "additionalProperties": False,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": PathSubmission.model_json_schema()},
            },
        }
    }


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A form field is left out, never null: ``anyOf [X, null]`` becomes X."""
    choices = [c for c in prop.get("anyOf", [prop]) if c.get("type") != "null"]
    kept = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**kept, **choices[0]}


def install(app: FastAPI) -> None:
    """Generate the document once, with the configured rules filled in."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _one_error_shape(document)
            bot_in = document["components"]["schemas"].get("BotRequestIn")
            if bot_in is not None:
                fields = bot_in["properties"]
                fields["prompt"]["maxLength"] = get_bot_config().max_prompt_chars
                url = fields["webhook_url"]
                choices = url.get("anyOf", [url])
                choices[0]["pattern"] = webhook_url_pattern(allowed_hosts())
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _one_error_shape(document: dict[str, Any]) -> None:
    """FastAPI documents its own validation-error body for every operation with parameters;
    Relay's handler answers those with ErrorBody (api/errors.py), so the document says so."""
    schemas = document["components"]["schemas"]
    for operations in document["paths"].values():
        for operation in operations.values():
            invalid = operation["responses"].get("422")
            content = (invalid or {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
                invalid["description"] = _DESCRIPTIONS[422]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
