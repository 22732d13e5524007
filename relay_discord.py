"""Settings group of Discord: where notifications go, and the application behind the
interactions endpoint (``RELAY_DISCORD_<FIELD>``, ``settings.discord``).

Kept in its own module so that relay_settings.py stays readable; nothing here reads the
environment: ``RelaySettings`` does.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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
