"""Files users attach to a slash command: where they may come from (Discord's CDN, by host)
and their download, stopped at a size limit whatever the file declared."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx

BLOCK_BYTES = 1024 * 1024
TIMEOUT = httpx.Timeout(30.0)  # connect, and each read: a stalled download is dropped


class DownloadError(Exception):
    """The attachment could not be fetched; ``too_large``: it passed the size limit."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def attachment_host(url: str) -> str:
    """The host of an attachment URL, with its port when it names one (as logged and
    shown: never the path or the query)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an invalid URL"
    host = (parts.hostname or "").lower()
    return f"{host}:{port}" if host and port is not None else host or "a URL without a host"


def refused_host(url: str, allowed: Iterable[str]) -> str | None:
    """None when ``url`` may be downloaded: https on an allowed host, or http(s) on an
    allowed ``host:port`` (a CDN in a lab or a test), with no credentials; else the host
    refused."""
    hosts = {entry.strip().lower() for entry in allowed if entry.strip()}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return attachment_host(url)
    host, scheme = (parts.hostname or "").lower(), parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        return attachment_host(url)  # credentials are never sent anywhere
    if scheme == "https" and port in (None, 443) and host in hosts:
        return None
    if scheme in ("http", "https") and port is not None and f"{host}:{port}" in hosts:
        return None
    return attachment_host(url)


async def download(url: str, target: Path, limit: int) -> int:
    """Fetch ``url`` into ``target``, stopping once more than ``limit`` bytes arrived (the
    file is removed then); the bytes written. Redirects are not followed (the allow-list
    is the only way in). DownloadError says what went wrong, without the URL's query."""
    where = attachment_host(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    received = 0
    try:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise DownloadError(f"Discord's CDN answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise DownloadError(too_large(limit, int(declared)), too_large=True)
            async with await anyio.open_file(target, "wb") as out:
                async for block in response.aiter_bytes(BLOCK_BYTES):
                    received += len(block)
                    if received > limit:  # more than it declared: stopped here
                        raise DownloadError(too_large(limit), too_large=True)
                    await out.write(block)
    except httpx.HTTPError as err:
        target.unlink(missing_ok=True)
        raise DownloadError(f"could not download {where}: {type(err).__name__}") from err
    except DownloadError:
        target.unlink(missing_ok=True)
        raise
    return received


def too_large(limit: int, size: int | None = None) -> str:
    """Why a file over ``limit`` bytes is refused (``size``: what it declared)."""
    told = f"{size:,} bytes, " if size is not None else ""
    return f"the file is {told}over the limit of {limit:,} bytes (RELAY_MAX_UPLOAD_BYTES)"
