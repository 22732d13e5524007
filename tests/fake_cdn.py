"""Discord's CDN on the fake Discord (tests/fake_discord.py): the files users attach to a
slash command, served by GET at ``/attachments/<channel>/<id>/<name>?ex=…&is=…&hm=…`` as
cdn.discordapp.com serves them, with the attachment objects Discord puts in
``data.resolved.attachments``."""

from __future__ import annotations

import itertools
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.fake_discord import FakeDiscord

CHANNEL = "600000000000000001"
_PATH = re.compile(r"/attachments/(?P<channel>\d+)/(?P<id>\d+)/(?P<name>[^/]+)")
_ids = itertools.count(1_400_000_000_000_000_000)


@dataclass
class _Served:
    content: bytes
    chunked: bool = False  # sent without a Content-Length, as a stream of unknown length
    delay: float = 0.0  # seconds before the answer starts (a slow download)


@dataclass
class FakeCdn:
    """Serves attachments from ``discord``'s port; ``downloads`` lists the ids fetched."""

    discord: FakeDiscord
    downloads: list[str] = field(default_factory=list)
    _files: dict[str, _Served] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.discord.routes.append(("GET", _PATH, self._serve))

    def attach(
        self,
        content: bytes,
        filename: str,
        *,
        declared_size: int | None = None,
        chunked: bool = False,
        delay: float = 0.0,
        content_type: str = "audio/ogg",
    ) -> dict[str, Any]:
        """Serve ``content`` and return its attachment object (``declared_size``: the size
        Discord states, when a test wants it to differ from the content's)."""
        ident = str(next(_ids))
        self._files[ident] = _Served(content, chunked, delay)
        signature = f"ex=6810a2f1&is=680f5171&hm={secrets.token_hex(32)}&"
        return {
            "id": ident,
            "filename": filename,
            "size": len(content) if declared_size is None else declared_size,
            "url": f"http://{self.discord.host}/attachments/{CHANNEL}/{ident}/{filename}?{signature}",
            "proxy_url": f"http://{self.discord.host}/proxy/{ident}/{filename}",
            "content_type": content_type,
        }

    def _serve(
        self, _fake: FakeDiscord, found: re.Match[str], _headers: Any, _body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        served = self._files.get(found["id"])
        if served is None or found["channel"] != CHANNEL:
            return 404, {"message": "404: Not Found", "code": 0}, {}
        self.downloads.append(found["id"])
        if served.delay:
            threading.Event().wait(served.delay)  # the CDN is slow: it answers this late
        headers = {"Content-Type": "application/octet-stream"}
        if served.chunked:
            headers["Transfer-Encoding"] = "chunked"
        return 200, served.content, headers
