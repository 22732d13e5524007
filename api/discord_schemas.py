"""What Discord POSTs to the interactions endpoint and what Relay answers, as far as Relay
reads them (Discord's "Interaction" and "Interaction Response" objects; unknown fields are
ignored, as Discord adds some)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.discord_request import EPHEMERAL

DISCORD_EPOCH_MS = 1420070400000  # 2015-01-01, where a snowflake's milliseconds count from


class InteractionType(IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2


class ResponseType(IntEnum):
    PONG = 1
    CHANNEL_MESSAGE = 4  # CHANNEL_MESSAGE_WITH_SOURCE: the answer, now
    DEFERRED_CHANNEL_MESSAGE = 5  # "Relay is thinking…": the answer comes as follow-ups


class _Discord(BaseModel):
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


class DiscordUser(_Discord):
    id: str = Field(pattern=r"^[0-9]{1,20}$")
    username: str | None = None


class GuildMember(_Discord):
    user: DiscordUser
    permissions: str = Field(default="0", pattern=r"^[0-9]{1,40}$", description="bit set")


class PartialChannel(_Discord):
    id: str
    name: str | None = None


class CommandOptionValue(_Discord):
    name: str
    type: int
    value: str | int | float | bool | None = None


class Attachment(_Discord):
    """A file the user attached to a command (Discord's "Attachment" object)."""

    id: str
    filename: str = Field(max_length=1024)
    size: int = Field(ge=0, description="bytes, as Discord declares them")
    url: str = Field(max_length=4096)
    content_type: str | None = None


class Resolved(_Discord):
    """What the command's options refer to, by id (Relay reads attachments only)."""

    attachments: dict[str, Attachment] = {}


class CommandData(_Discord):
    id: str | None = None
    name: str
    options: list[CommandOptionValue] = []
    resolved: Resolved | None = None


class Interaction(_Discord):
    """An interaction as Discord sends it (``PING`` or a slash command)."""

    id: str = Field(pattern=r"^[0-9]{1,20}$")
    application_id: str = Field(pattern=r"^[0-9]{1,20}$")
    type: int
    token: str = Field(default="", max_length=1000)
    data: CommandData | None = None
    guild_id: str | None = None
    channel_id: str | None = None
    channel: PartialChannel | None = None
    member: GuildMember | None = None  # in a guild
    user: DiscordUser | None = None  # in a direct message

    @property
    def created_at(self) -> datetime:
        """When Discord created the interaction (its id says; its token lives 15 minutes)."""
        milliseconds = (int(self.id) >> 22) + DISCORD_EPOCH_MS
        return datetime.fromtimestamp(milliseconds / 1000, UTC)

    @property
    def user_id(self) -> str:
        """Who ran the command."""
        if self.member is not None:
            return self.member.user.id
        return self.user.id if self.user is not None else ""

    @property
    def channel_name(self) -> str:
        """The channel's name (routes match names), else its id; ``dm`` outside a guild."""
        if self.channel is not None and self.channel.name:
            return self.channel.name
        if self.guild_id is None:
            return "dm"
        return self.channel_id or "unknown"

    @property
    def permissions(self) -> int:
        """The member's permissions in the channel (0 outside a guild)."""
        return int(self.member.permissions) if self.member is not None else 0

    def option(self, name: str) -> str | int | float | bool | None:
        """The value the user gave an option, None when left out."""
        options = self.data.options if self.data is not None else []
        return next((o.value for o in options if o.name == name), None)

    def attachment(self, name: str) -> Attachment | None:
        """The file given as the ATTACHMENT option ``name`` (its id points into
        ``data.resolved.attachments``), None when left out."""
        ident = self.option(name)
        resolved = self.data.resolved if self.data is not None else None
        if ident is None or resolved is None:
            return None
        return resolved.attachments.get(str(ident))


class AllowedMentions(BaseModel):
    parse: list[str] = []
    users: list[str] | None = None


class InteractionMessage(BaseModel):
    content: str | None = None
    flags: int | None = Field(default=None, description="64: ephemeral (only the user sees it)")
    allowed_mentions: AllowedMentions | None = None
    embeds: list[dict[str, Any]] | None = Field(
        default=None, max_length=10, description="Discord embeds, e.g. /stats's figures"
    )


class InteractionResponse(BaseModel):
    """Relay's answer to an interaction (Discord's "Interaction Response")."""

    type: ResponseType = Field(
        description="1 PONG, 4 a message now, 5 deferred (the answer follows)"
    )
    data: InteractionMessage | None = None


def pong() -> InteractionResponse:
    """The answer to Discord's PING."""
    return InteractionResponse(type=ResponseType.PONG)


def deferred() -> InteractionResponse:
    """ "Relay is thinking…": the answer comes as follow-ups on the interaction's webhook."""
    return InteractionResponse(type=ResponseType.DEFERRED_CHANNEL_MESSAGE)


def ephemeral(content: str, embeds: list[dict[str, Any]] | None = None) -> InteractionResponse:
    """A message only the user sees (a refusal, a mistake, an answer for them), pinging
    nobody; ``embeds`` shown under its text."""
    return InteractionResponse(
        type=ResponseType.CHANNEL_MESSAGE,
        data=InteractionMessage(
            content=content[:2000],
            flags=EPHEMERAL,
            allowed_mentions=AllowedMentions(),
            embeds=embeds,
        ),
    )
