"""Relay's Discord slash commands: the one definition that registration sends to Discord
(``python -m cli discord commands``) and that the interactions endpoint answers.

A Discord application has one interactions URL and one public key, so commands are split
between guilds by *command sets* (chat-only, media-only, admin): each guild gets the sets the
operator names for it in RELAY_DISCORD_COMMANDS (docs/discord-commands.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class OptionType(IntEnum):
    """Discord's application command option types (the ones Relay uses)."""

    STRING = 3
    INTEGER = 4
    ATTACHMENT = 11


class Context(IntEnum):
    """Where a command may be used (Discord's interaction context types)."""

    GUILD = 0
    BOT_DM = 1


# Discord's permission bits: /stats is shown to members who may manage the server, and
# the endpoint checks the member's permissions again (docs/discord.md).
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
PROMPT_MAX_CHARS = 4000  # bot.yaml's max_prompt_chars is the limit enforced; this one is shown


@dataclass(frozen=True)
class CommandOption:
    """One option of a command."""

    name: str
    description: str
    type: OptionType = OptionType.STRING
    required: bool = True
    max_length: int | None = None

    def to_discord(self) -> dict[str, Any]:
        """The option as Discord's API takes it."""
        option: dict[str, Any] = {
            "type": int(self.type),
            "name": self.name,
            "description": self.description,
            "required": self.required,
        }
        if self.max_length is not None:
            option["max_length"] = self.max_length
        return option


@dataclass(frozen=True)
class SlashCommand:
    """A slash command: its name, description, options and who may see it."""

    name: str
    description: str
    options: tuple[CommandOption, ...] = ()
    admin: bool = False  # shown to members with MANAGE_GUILD only, checked again on Relay's side

    def to_discord(self, *, in_guild: bool = False, dms: bool = False) -> dict[str, Any]:
        """The command as Discord's bulk-overwrite endpoint takes it (a CHAT_INPUT command).
        ``contexts`` only on a global command (Discord ignores it on a guild's): in guilds,
        and in the bot's DMs too when ``dms`` (RELAY_DISCORD_ALLOW_DMS) and not an admin's."""
        command: dict[str, Any] = {
            "name": self.name,
            "type": 1,
            "description": self.description,
            "options": [option.to_discord() for option in self.options],
            "default_member_permissions": str(MANAGE_GUILD) if self.admin else None,
        }
        if not in_guild:
            where = (Context.GUILD, Context.BOT_DM) if dms and not self.admin else (Context.GUILD,)
            command["contexts"] = [int(context) for context in where]
        return command


def _prompt(what: str) -> CommandOption:
    return CommandOption("prompt", what, max_length=PROMPT_MAX_CHARS)


COMMANDS: dict[str, SlashCommand] = {
    command.name: command
    for command in (
        SlashCommand("chat", "Ask the chat model", (_prompt("What to ask"),)),
        SlashCommand("image", "Generate an image", (_prompt("What the image shows"),)),
        SlashCommand("video", "Generate a short video", (_prompt("What the video shows"),)),
        SlashCommand(
            "transcribe",
            "Transcribe an audio or video file (up to 30 minutes)",
            (
                CommandOption("file", "The audio or video file", OptionType.ATTACHMENT),
                CommandOption("language", "Its language (e.g. en)", required=False, max_length=16),
            ),
        ),
        SlashCommand(
            "status",
            "Status of a transcription job",
            (CommandOption("job", "The job id Relay gave you", max_length=64),),
        ),
        SlashCommand("stats", "Relay's statistics (admins)", admin=True),
    )
}

# The commands a guild may be given, by set (RELAY_DISCORD_COMMANDS names sets per guild).
COMMAND_SETS: dict[str, tuple[str, ...]] = {
    "chat": ("chat",),
    "media": ("image", "video"),
    "transcribe": ("transcribe", "status"),
    "admin": ("stats",),
}
# The bot request kind each request command creates (bot.yaml routes and limits by kind).
REQUEST_KINDS: dict[str, str] = {"chat": "chat", "image": "image", "video": "video"}


def commands_of(sets: tuple[str, ...]) -> list[SlashCommand]:
    """The commands of the named ``sets``, in definition order; ValueError for an unknown set."""
    unknown = [name for name in sets if name not in COMMAND_SETS]
    if unknown:
        raise ValueError(
            f"unknown command set(s) {', '.join(unknown)}; expected {', '.join(COMMAND_SETS)}"
        )
    wanted = {command for name in sets for command in COMMAND_SETS[name]}
    return [command for name, command in COMMANDS.items() if name in wanted]
