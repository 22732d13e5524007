"""Clients for the paid AI providers: one module each, one attempt per call, no retries.

Every function takes the API key and connection settings as arguments (the quota layer picks
the key), returns a small answer dataclass, or raises `UpstreamError` whose ``kind`` tells the
caller whether to cool the key down, disable it, try another one, or give up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.providers.errors import UpstreamError, parse_retry_after

__all__ = ["ChatAnswer", "MediaAnswer", "UpstreamError", "parse_retry_after"]


@dataclass(frozen=True)
class ChatAnswer:
    """A chat completion's text."""

    text: str
    model: str
    total_tokens: int | None = None


@dataclass(frozen=True)
class MediaAnswer:
    """A generated image or video, downloaded."""

    data: bytes = field(repr=False)
    mime_type: str
    file_name: str
    source_url: str | None = None

    def __repr__(self) -> str:
        return (
            f"MediaAnswer(<{len(self.data)} bytes>, mime_type={self.mime_type!r}, "
            f"file_name={self.file_name!r}, source_url={self.source_url!r})"
        )
