"""Settings group of Discord: where notifications go, and the application behind the
interactions endpoint (``RELAY_DISCORD_<FIELD>``, ``settings.discord``).

Kept in its own module so that relay_settings.py stays readable; nothing here reads the
environment: ``RelaySettings`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from relay_commands import COMMAND_SETS, commands_of

DEFAULT_COMMANDS = "global=chat,media,transcribe"
_GUILD_ID = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class CommandScope:
    """Where commands are registered (a guild, or globally: ``guild_id`` None) and which sets."""

    guild_id: str | None
    sets: tuple[str, ...]

    @property
    def label(self) -> str:
        """``global`` or ``guild <id>``, as registration prints it."""
        return "global" if self.guild_id is None else f"guild {self.guild_id}"


def parse_command_scopes(text: str) -> tuple[CommandScope, ...]:
    """``global=chat,media;700000000000000001=admin`` as scopes, global first; ValueError
    naming the part that is wrong."""
    scopes: dict[str | None, CommandScope] = {}
    for part in (piece.strip() for piece in text.split(";")):
        if not part:
            continue
        scope, equals, names = (s.strip() for s in part.partition("="))
        if not equals:
            raise ValueError(
                f"{part!r} has no '=': write SCOPE=SET,SET where SCOPE is global or a guild id"
            )
        if scope != "global" and not _GUILD_ID.fullmatch(scope):
            raise ValueError(f"{scope!r} in {part!r} is neither 'global' nor a guild id (digits)")
        guild_id = None if scope == "global" else scope
        if guild_id in scopes:
            raise ValueError(f"{scope} is named twice ({part!r})")
        sets = tuple(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
        unknown = [name for name in sets if name not in COMMAND_SETS]
        if unknown:
            raise ValueError(
                f"unknown command set {', '.join(map(repr, unknown))} in {part!r}; the sets "
                f"are {', '.join(COMMAND_SETS)}"
            )
        scopes[guild_id] = CommandScope(guild_id, sets)
    if None not in scopes:
        raise ValueError(
            f"{text!r} does not say what is global: add global=SETS (global= for none)"
        )
    global_names = {command.name for command in commands_of(scopes[None].sets)}
    for guild in scopes.values():
        twice = [c.name for c in commands_of(guild.sets) if c.name in global_names]
        if guild.guild_id is not None and twice:
            raise ValueError(
                f"{', '.join(twice)} would be registered both globally and in guild "
                f"{guild.guild_id}, where members would see it twice"
            )
    return (scopes.pop(None), *scopes.values())


class _DiscordGroup(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # as relay_settings' groups


class DiscordSettings(_DiscordGroup):
    """Discord: notifications, and the application behind the interactions endpoint."""

    block: str = Field(
        default="relay-discord", description="Name of the Discord destination block to notify."
    )
    admin_block: str = Field(
        default="relay-discord-admin",
        description="Discord destination block the admin statistics (relay-stats) go to; "
        "nothing is posted while it does not exist.",
    )
    alerts_block: str = Field(
        default="",
        description="Discord destination block failed and crashed flow runs and "
        "Alertmanager alerts go to (empty: the `block` above).",
    )

    public_key: str = Field(
        default="",
        pattern=r"^([0-9a-fA-F]{64})?$",
        description="The Discord application's public key (hex), which signs every "
        "interaction; empty: POST /api/discord/interactions answers 503.",
    )
    application_id: str = Field(
        default="",
        pattern=r"^([0-9]{1,20})?$",
        description="The Discord application's id: interaction follow-ups and command "
        "registration.",
    )
    bot_token: SecretStr = Field(
        default=SecretStr(""),
        description="The application's bot token, for command registration only.",
    )
    api_url: str = Field(
        default="https://discord.com/api/v10",
        description="Discord's HTTP API base URL (interaction follow-ups, command "
        "registration); its host is an allowed webhook host.",
    )
    guilds: str = Field(
        default="",
        description="Comma-separated guild (server) ids whose interactions Relay answers; "
        "empty: every guild the application is installed in.",
    )
    allow_dms: bool = Field(
        default=False,
        description="Answer slash commands sent in direct messages (outside any guild).",
    )
    attachment_hosts: str = Field(
        default="cdn.discordapp.com,media.discordapp.net",
        description="Comma-separated hosts (host, or host:port for plain http) /transcribe "
        "downloads attachments from; an attachment elsewhere is refused.",
    )
    progress_seconds: float = Field(
        default=5.0,
        ge=0.5,
        description="Least time between two edits of a /transcribe message with the job's "
        "progress.",
    )
    commands: str = Field(
        default=DEFAULT_COMMANDS,
        description="Which command sets (chat, media, transcribe, admin) `python -m cli "
        "discord commands` registers where: 'global=SETS;GUILD_ID=SETS;...', sets "
        "comma-separated (docs/discord-commands.md).",
    )
    expiry_notice_seconds: float = Field(
        default=780.0,
        gt=0,
        le=900,
        description="Age of an interaction at which, its answer not posted yet, Relay edits "
        "its 'thinking…' message to say where a late answer will go (Discord's interaction "
        "tokens live 15 minutes; docs/discord-expiry.md).",
    )
    expiry_notice_lease_seconds: float = Field(
        default=30.0,
        gt=1,
        description="How long one worker sends an expiry notice alone before another may.",
    )

    @field_validator("commands")
    @classmethod
    def _commands_parse(cls, value: str) -> str:
        parse_command_scopes(value)
        return value

    def command_scopes(self) -> tuple[CommandScope, ...]:
        """Where each command set is registered: global first, then each guild named."""
        return parse_command_scopes(self.commands)

    def alerts_destination(self) -> str:
        """The block alerts are posted to."""
        return self.alerts_block or self.block

    def allowed_guilds(self) -> frozenset[str]:
        """The guild allow-list; empty: every guild."""
        return frozenset(g.strip() for g in self.guilds.split(",") if g.strip())

    def attachment_host_list(self) -> frozenset[str]:
        """The hosts attachments may be downloaded from, lower case."""
        return frozenset(h.strip().lower() for h in self.attachment_hosts.split(",") if h.strip())

    def followup_url(self, token: str) -> str:
        """The webhook URL of an interaction's follow-ups (its token is the secret part)."""
        return f"{self.api_url.rstrip('/')}/webhooks/{self.application_id}/{token}"
