"""Registering Relay's slash commands with Discord: ``python -m cli discord commands``.

For each scope of ``RELAY_DISCORD_COMMANDS`` (global, then each guild named) it reads what
Discord has registered, compares it with ``relay_commands``' JSON for the scope's command sets
(only the fields Relay sets), and bulk-overwrites the scope only when something differs. A
second run therefore writes nothing. The bot token goes in one header and nowhere else: not
in output, errors or logs. docs/discord-commands.md is the operator's page.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import requests

from relay_commands import commands_of
from relay_discord import CommandScope, DiscordSettings

ATTEMPTS = 5  # requests per call before a 429 or a 5xx is an error
MAX_WAIT_SECONDS = 60.0  # a longer Retry-After (Discord's daily create limit) is an error
BACKOFF_SECONDS = 0.5  # first wait after a 5xx or a network error; doubles
TIMEOUT_SECONDS = 15.0
USER_AGENT = "DiscordBot (https://github.com/relay, 1) Relay command registration"
# The fields Relay sets, with the value Discord's answers imply when they leave one out.
COMMAND_DEFAULTS: dict[str, Any] = {
    "type": 1,
    "description": "",
    "options": [],
    "default_member_permissions": None,
    "contexts": None,
}
OPTION_DEFAULTS: dict[str, Any] = {"required": False}


class RegistrationError(Exception):
    """Registration stopped; the message names the problem and never holds the token."""


@dataclass(frozen=True)
class ScopeChange:
    """What differs in one scope between Discord and Relay's commands, and whether it was
    written."""

    scope: CommandScope
    added: tuple[str, ...]
    changed: tuple[str, ...]  # "name (field, field)"
    removed: tuple[str, ...]
    wanted: tuple[str, ...]
    written: bool = False

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def describe(self, check: bool = False) -> str:
        """One line for the operator: ``guild 7…: added stats; removed legacy``."""
        if self.unchanged:
            return f"{self.scope.label}: unchanged ({_count(self.wanted)})"
        parts = [
            f"{verb} {', '.join(names)}"
            for verb, names in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if names
        ]
        outcome = "not written (--check)" if check else f"wrote {_count(self.wanted)}"
        return f"{self.scope.label}: {'; '.join(parts)}; {outcome}"


def _count(names: tuple[str, ...]) -> str:
    if not names:
        return "no commands"
    return f"{len(names)} command{'s' if len(names) != 1 else ''}: {', '.join(names)}"


def wanted_commands(scope: CommandScope, dms: bool = False) -> list[dict[str, Any]]:
    """The JSON Relay registers in ``scope``, in relay_commands' order (shown in the bot's
    direct messages too when ``dms``: RELAY_DISCORD_ALLOW_DMS)."""
    in_guild = scope.guild_id is not None
    return [c.to_discord(in_guild=in_guild, dms=dms) for c in commands_of(scope.sets)]


def comparable(command: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``command`` cut to ``fields`` (the ones Relay sets), Discord's defaults filled in."""
    cut = {name: command.get(name, COMMAND_DEFAULTS.get(name)) for name in fields}
    if "options" in cut:
        wanted_options = {key for option in fields["options"] for key in option}
        cut["options"] = [
            {key: option.get(key, OPTION_DEFAULTS.get(key)) for key in wanted_options | {"name"}}
            for option in cut["options"] or []
        ]
    return cut


def compare(
    scope: CommandScope, wanted: list[dict[str, Any]], registered: list[dict[str, Any]]
) -> ScopeChange:
    """What writing ``wanted`` over ``registered`` would add, change and remove."""
    mine = {_key(command): command for command in wanted}
    theirs = {_key(command): command for command in registered}
    changed = []
    for key in mine.keys() & theirs.keys():
        ours, current = comparable(mine[key], mine[key]), comparable(theirs[key], mine[key])
        fields = [name for name in ours if ours[name] != current[name]]
        if fields:
            changed.append((key, f"{key[1]} ({', '.join(fields)})"))
    return ScopeChange(
        scope,
        added=tuple(key[1] for key in mine if key not in theirs),
        changed=tuple(text for _, text in sorted(changed)),
        removed=tuple(_label(key) for key in theirs if key not in mine),
        wanted=tuple(command["name"] for command in wanted),
    )


def _key(command: dict[str, Any]) -> tuple[int, str]:
    return int(command.get("type", 1)), str(command.get("name", ""))


def _label(key: tuple[int, str]) -> str:
    return key[1] if key[0] == 1 else f"{key[1]} (type {key[0]})"


class CommandsApi:
    """Discord's application commands endpoints for one application, with the bot token."""

    def __init__(
        self,
        settings: DiscordSettings,
        sleep: Callable[[float], None] = time.sleep,
        say: Callable[[str], None] = print,
    ) -> None:
        self.base = f"{settings.api_url.rstrip('/')}/applications/{settings.application_id}"
        self.application_id = settings.application_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bot {settings.bot_token.get_secret_value()}"
        self.session.headers["User-Agent"] = USER_AGENT
        self.sleep = sleep
        self.say = say

    def close(self) -> None:
        self.session.close()

    def url(self, scope: CommandScope) -> str:
        guild = "" if scope.guild_id is None else f"/guilds/{scope.guild_id}"
        return f"{self.base}{guild}/commands"

    def registered(self, scope: CommandScope) -> list[dict[str, Any]]:
        """The commands Discord has registered in ``scope``."""
        return self._call("GET", scope)

    def overwrite(
        self, scope: CommandScope, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Replace every command of ``scope`` with ``commands``; Discord's answer."""
        return self._call("PUT", scope, commands)

    def _call(self, method: str, scope: CommandScope, body: Any = None) -> list[dict[str, Any]]:
        what = f"{scope.label}: {method} commands"
        for attempt in range(1, ATTEMPTS + 1):
            last = attempt == ATTEMPTS
            try:
                response = self.session.request(
                    method,
                    self.url(scope),
                    json=body,
                    timeout=TIMEOUT_SECONDS,
                    allow_redirects=False,  # the token goes to Discord's API and nowhere else
                )
            except requests.RequestException as error:
                if last:
                    raise RegistrationError(f"{what}: {type(error).__name__}: {error}") from None
                self._wait(_backoff(attempt), f"{what}: {type(error).__name__}")
                continue
            status = response.status_code
            if 200 <= status < 300:
                answer = _json(response)
                if not isinstance(answer, list):
                    raise RegistrationError(f"{what}: HTTP {status} without a list of commands")
                return answer
            if status == 429 or status >= 500:
                wait = _retry_after(response) if status == 429 else None
                if wait is not None and wait > MAX_WAIT_SECONDS:
                    raise RegistrationError(
                        f"{what}: Discord rate-limits this for {wait:g} s (HTTP 429); run again "
                        "later (Discord allows 200 command creations a day per guild)"
                    )
                if last:
                    raise RegistrationError(f"{what}: HTTP {status} after {ATTEMPTS} tries")
                self._wait(
                    wait if wait is not None else _backoff(attempt), f"{what}: HTTP {status}"
                )
                continue
            raise RegistrationError(self._refusal(what, scope, response))
        raise AssertionError("unreachable")

    def _wait(self, seconds: float, why: str) -> None:
        self.say(f"{why}; retrying in {seconds:g} s")
        self.sleep(seconds)

    def _refusal(self, what: str, scope: CommandScope, response: requests.Response) -> str:
        status, message = response.status_code, _discord_message(response)
        if status == 401:
            return (
                f"{what}: the bot token was refused (HTTP 401: {message}); check "
                "RELAY_DISCORD_BOT_TOKEN"
            )
        if status == 403 and scope.guild_id is not None:
            return (
                f"{what}: HTTP 403 ({message}): is the application in guild {scope.guild_id}, "
                "invited with the applications.commands scope?"
            )
        if status in (403, 404) and scope.guild_id is None:
            return (
                f"{what}: HTTP {status} ({message}): is RELAY_DISCORD_APPLICATION_ID "
                f"({self.application_id}) the application of this bot token?"
            )
        return f"{what}: HTTP {status} ({message})"


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds Discord asks to wait: ``retry_after`` in the JSON body, else ``Retry-After``."""
    body = _json(response)
    for candidate in (
        body.get("retry_after") if isinstance(body, dict) else None,
        response.headers.get("Retry-After"),
    ):
        try:
            seconds = float(str(candidate))
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def _backoff(attempt: int) -> float:
    return BACKOFF_SECONDS * 2.0 ** (attempt - 1)


def _discord_message(response: requests.Response) -> str:
    body = _json(response)
    message = str(body.get("message")) if isinstance(body, dict) else response.reason
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        message = f"{message}: {errors}"
    return message[:500]


def missing_settings(settings: DiscordSettings) -> list[str]:
    """The settings registration needs that are not set, each as a sentence."""
    missing = []
    if not settings.application_id:
        missing.append(
            "RELAY_DISCORD_APPLICATION_ID is not set (the application's id: Discord's "
            "Developer Portal, General Information)"
        )
    if not settings.bot_token.get_secret_value():
        missing.append("RELAY_DISCORD_BOT_TOKEN is not set (the application's bot token: Bot)")
    return missing


def register(
    settings: DiscordSettings,
    check: bool = False,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ScopeChange]:
    """Bring every scope of ``settings.commands`` to Relay's commands (``check``: only
    compare); one line per scope through ``say``. RegistrationError when Discord refuses."""
    api = CommandsApi(settings, sleep=sleep, say=say)
    changes = []
    try:
        for scope in settings.command_scopes():
            wanted = wanted_commands(scope, settings.allow_dms)
            change = compare(scope, wanted, api.registered(scope))
            if not (change.unchanged or check):
                answer = api.overwrite(scope, wanted)
                change = replace(change, written=True)
                after = compare(scope, wanted, answer)
                if not after.unchanged:
                    differs = ", ".join(after.added + after.changed + after.removed)
                    say(f"{scope.label}: warning: Discord's answer differs in {differs}")
            say(change.describe(check))
            changes.append(change)
    finally:
        api.close()
    allowed = settings.allowed_guilds()
    for scope in settings.command_scopes():
        if allowed and scope.guild_id is not None and scope.guild_id not in allowed:
            say(
                f"note: guild {scope.guild_id} is not in RELAY_DISCORD_GUILDS, so Relay "
                "refuses its commands"
            )
    return changes


def main(check: bool = False) -> int:
    """The CLI's work: 0 when done (or, with ``check``, nothing differs), 1 when Discord
    refused or, with ``check``, something differs, 2 when a setting is missing or wrong."""
    from pydantic import ValidationError

    from relay_settings import get_settings

    try:
        settings = get_settings().discord
    except ValidationError as error:
        for problem in error.errors():
            name = "RELAY_" + "_".join(str(part) for part in problem["loc"]).upper()
            message = str(problem["msg"]).removeprefix("Value error, ")
            print(f"error: {name}: {message}", file=sys.stderr)
        return 2
    missing = missing_settings(settings)
    for sentence in missing:
        print(f"error: {sentence}", file=sys.stderr)
    if missing:
        return 2
    try:
        changes = register(settings, check=check)
    except RegistrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if check and not all(change.unchanged for change in changes) else 0
