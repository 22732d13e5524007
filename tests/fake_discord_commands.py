"""Discord's application commands endpoints, added to a ``FakeDiscord`` (its ``routes``).

``FakeCommands(fake, application_id, token)`` keeps the commands registered per scope
(``None``: global, else a guild id), answers GET and PUT (bulk overwrite) at
``/applications/{app}/commands`` and ``/applications/{app}/guilds/{guild}/commands`` as
Discord does: ids kept per command across overwrites, a new version when a command changes,
the fields Discord adds (``id``, ``application_id``, ``version``, ``guild_id``, ...) and the
ones it leaves out (an empty ``options``, an option's ``required: false``). It refuses a
request without ``Authorization: Bot <token>`` (401), a guild the application is not in (403),
a malformed command list (400), and answers 429 when scripted (``rate_limit``).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.fake_discord import FakeDiscord

_COMMANDS = re.compile(
    r"/api(?:/v\d+)?/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands"
)
_NAME = re.compile(r"[-_a-z0-9]{1,32}")
Scope = str | None  # a guild id; None: global


@dataclass
class CommandCall:
    """One request the fake received on a commands endpoint, and its answer's status."""

    method: str
    scope: Scope
    application_id: str
    authorization: str | None
    body: Any
    status: int
    received_at: float


class FakeCommands:
    """Application commands of one application, kept per scope."""

    def __init__(
        self,
        fake: FakeDiscord,
        application_id: str,
        token: str,
        guilds: set[str] | None = None,  # the guilds the application is in; None: any
    ) -> None:
        self.fake = fake
        self.application_id = application_id
        self.token = token
        self.guilds = guilds
        self.registered: dict[Scope, list[dict[str, Any]]] = {}
        self.drops: set[str] = set()  # command fields this Discord does not keep (a test's)
        self.calls: list[CommandCall] = []
        self._script: deque[tuple[str, float]] = deque()
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self._lock = threading.Lock()
        fake.routes.append(
            ("GET", _COMMANDS, lambda _, found, h, b: self._handle("GET", found, h, b))
        )
        fake.routes.append(
            ("PUT", _COMMANDS, lambda _, found, h, b: self._handle("PUT", found, h, b))
        )

    def rate_limit(self, *behaviours: str, retry_after: float = 0.2) -> None:
        """Answer the next requests with 429: ``"body"`` (``retry_after`` in the JSON body
        and ``Retry-After``), ``"header"`` (only ``Retry-After``), or ``"500"``."""
        with self._lock:
            self._script.extend((behaviour, retry_after) for behaviour in behaviours)

    def writes(self) -> list[CommandCall]:
        """The PUTs received (accepted or not)."""
        return [call for call in self.calls if call.method == "PUT"]

    def discord_shaped(self, scope: Scope, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``commands`` as Discord keeps and answers them in ``scope``: ids kept by type
        and name, the version new when a command changes."""
        before = {(c["type"], c["name"]): c for c in self.registered.get(scope, [])}
        shaped = []
        for command in commands:
            kind = int(command.get("type", 1))
            old = before.get((kind, command["name"]))
            stored = {
                "id": old["id"] if old else str(next(self._ids)),
                "application_id": self.application_id,
                "version": "",
                "default_member_permissions": command.get("default_member_permissions"),
                "type": kind,
                "name": command["name"],
                "description": command.get("description", ""),
                "dm_permission": True,
                "contexts": command.get("contexts"),
                "integration_types": [0],
                "nsfw": bool(command.get("nsfw", False)),
            }
            options = [_option(option) for option in command.get("options") or []]
            if options:
                stored["options"] = options
            if scope is not None:
                stored["guild_id"] = scope
            for name in self.drops:
                stored.pop(name, None)
            same = old is not None and _content(old) == _content(stored)
            stored["version"] = old["version"] if old and same else str(next(self._ids))
            shaped.append(stored)
        return shaped

    def _handle(
        self, method: str, found: re.Match[str], headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        scope: Scope = found["guild"]
        payload = json.loads(body) if body else None
        status, answer, extra = self._answer(method, scope, found["app"], headers, payload)
        with self._lock:
            self.calls.append(
                CommandCall(
                    method=method,
                    scope=scope,
                    application_id=found["app"],
                    authorization=headers.get("Authorization"),
                    body=payload,
                    status=status,
                    received_at=time.monotonic(),
                )
            )
        return status, answer, extra

    def _answer(
        self, method: str, scope: Scope, app: str, headers: Any, payload: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}, {}
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            behaviour, wait = scripted
            if behaviour == "500":
                return 500, {"message": "500: Internal Server Error", "code": 0}, {}
            limited: dict[str, Any] = {"message": "You are being rate limited.", "global": False}
            if behaviour == "body":
                limited["retry_after"] = wait
            return 429, limited, {"Retry-After": f"{wait:g}", "X-RateLimit-Scope": "user"}
        if app != self.application_id or (
            scope is not None and self.guilds is not None and scope not in self.guilds
        ):
            return 403, {"message": "Missing Access", "code": 50001}, {}
        if method == "GET":
            return 200, self.registered.get(scope, []), {}
        problem = _invalid(payload)
        if problem:
            errors = {"_errors": [{"code": "BASE_TYPE_INVALID", "message": problem}]}
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": errors}, {}
        shaped = self.discord_shaped(scope, payload)
        self.registered[scope] = shaped
        return 200, shaped, {}


def _option(option: dict[str, Any]) -> dict[str, Any]:
    """An option as Discord answers it: ``required`` only when true."""
    shaped = {key: value for key, value in option.items() if key != "required"}
    if option.get("required"):
        shaped["required"] = True
    return shaped


def _content(command: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in command.items() if key not in ("id", "version")}


def _invalid(payload: Any) -> str | None:
    """What Discord's form validation would refuse in a bulk overwrite, or None."""
    if not isinstance(payload, list):
        return "expected a list of commands"
    if len(payload) > 100:
        return "more than 100 commands"
    seen = set()
    for command in payload:
        if not isinstance(command, dict) or not _NAME.fullmatch(str(command.get("name", ""))):
            return f"bad command name in {command!r}"
        if int(command.get("type", 1)) == 1 and not 1 <= len(command.get("description", "")) <= 100:
            return f"{command['name']}: description must be 1 to 100 characters"
        key = (int(command.get("type", 1)), command["name"])
        if key in seen:
            return f"{command['name']}: application command names must be unique"
        seen.add(key)
    return None
