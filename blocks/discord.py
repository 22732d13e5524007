"""Where Relay posts job notifications: a Discord webhook kept as a Prefect block."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from relay_settings import RelaySettings, get_settings

EVENTS = ("started", "completed", "failed")
DISCORD_HOSTS = frozenset(
    {"discord.com", "discordapp.com", "canary.discord.com", "ptb.discord.com"}
)
ALLOWED_HOSTS_ENV = "RELAY_WEBHOOK_ALLOWED_HOSTS"

# /api/webhooks/<id>/<token>, also the versioned form Discord hands out (/api/v10/webhooks/...).
_WEBHOOK_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(?P<id>\d+)/(?P<token>[A-Za-z0-9_-]+)/?$")
_WEBHOOK_PATH_ANYWHERE = re.compile(r"(/api(?:/v\d+)?/webhooks/[^/\s]+/)[^/?#\s'\"]+")


def allowed_hosts(settings: RelaySettings | None = None) -> tuple[str, ...]:
    """Extra webhook hosts (``host`` or ``host:port``): the setting ``webhook_allowed_hosts``
    (``RELAY_WEBHOOK_ALLOWED_HOSTS``) of ``settings``, else of the process, and the host of
    ``RELAY_DISCORD_API_URL`` when it is not Discord's."""
    settings = settings or get_settings()
    raw = settings.webhook.allowed_hosts
    hosts = [entry.strip().lower() for entry in raw.split(",") if entry.strip()]
    # Interaction follow-ups go to the configured Discord API (a fake one in tests).
    api = urlsplit(settings.discord.api_url)
    if api.hostname and api.hostname.lower() not in DISCORD_HOSTS:
        hosts.append(api.netloc.lower())
    return tuple(hosts)


_ID = r"[0-9]{1,20}"
_TOKEN = r"[A-Za-z0-9_-]{1,1000}"  # interaction tokens run to 200+ characters


def webhook_url_pattern(extra_hosts: tuple[str, ...]) -> str:
    """The webhook URLs intake accepts: Discord's, plus any URL on an allow-listed host."""
    discord = "|".join(re.escape(h) for h in sorted(DISCORD_HOSTS))
    accepted = [rf"https://({discord})(:443)?/api(/v[0-9]{{1,3}})?/webhooks/{_ID}/{_TOKEN}/?"]
    for entry in extra_hosts:
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        netloc = re.escape(host) + (f":{port}" if port else "(:[1-9][0-9]{0,3})?")
        accepted.append(rf"https?://{netloc}(/[A-Za-z0-9._~/-]*)?")
    return "^(" + "|".join(accepted) + ")$"


def validate_webhook_url(url: str, allowed_hosts: Iterable[str] = ()) -> str:
    """Return ``url`` if it is a Discord webhook URL or on an allow-listed host.

    Raises ``ValueError`` otherwise; the message names the scheme and host but never the path,
    which holds the webhook's token.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("webhook URL is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("webhook URL must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook URL must not contain credentials before the host")

    if _host_candidates(host, parts.scheme, port) & {h.strip().lower() for h in allowed_hosts}:
        return url.strip()

    if host not in DISCORD_HOSTS:
        raise ValueError(
            f"webhook host {host!r} is not a Discord webhook host "
            f"({', '.join(sorted(DISCORD_HOSTS))}) nor in {ALLOWED_HOSTS_ENV}"
        )
    if parts.scheme != "https" or port not in (None, 443):
        raise ValueError(f"Discord webhook URLs must use https on the default port ({host})")
    if parts.fragment or not _WEBHOOK_PATH.match(parts.path):
        raise ValueError(
            f"not a Discord webhook URL: the path on {host} must be /api/webhooks/<id>/<token>"
        )
    return url.strip()


def redact_webhook_url(url: str) -> str:
    """The URL without its secret: ``https://discord.com/api/webhooks/123/***``."""
    try:
        parts = urlsplit(url.strip())
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<invalid webhook URL>"
    match = _WEBHOOK_PATH.match(parts.path)
    if match:
        return f"{parts.scheme}://{netloc}/api/webhooks/{match['id']}/***"
    # An allow-listed host may use any path; treat all of it as secret.
    return f"{parts.scheme}://{netloc}/***"


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` with webhook tokens (and all of ``url``'s path, when given) replaced by ``***``."""
    if url:
        url = url.strip()
        text = text.replace(url, redact_webhook_url(url))
    text = _WEBHOOK_PATH_ANYWHERE.sub(r"\1***", text)
    if url:
        try:
            path = urlsplit(url).path
        except ValueError:
            path = ""
        if len(path) > 1:
            text = text.replace(path, "/***")
    return text


def _host_candidates(host: str, scheme: str, port: int | None) -> set[str]:
    netloc_host = f"[{host}]" if ":" in host else host
    effective_port = port or (443 if scheme == "https" else 80)
    return {host, netloc_host, f"{netloc_host}:{effective_port}"}


class DiscordDestination(Block):
    """A Discord channel (or thread) that receives Relay's job notifications by webhook."""

    # Pydantic would otherwise echo the rejected URL, token included, in its error text.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Relay Discord Destination"
    _block_type_slug = "relay-discord-destination"
    _description = "Discord webhook that receives Relay job notifications."

    webhook_url: SecretStr = Field(
        description="Discord webhook URL, https://discord.com/api/webhooks/<id>/<token>."
    )
    username: str = Field(default="Relay", description="Name the messages are posted under.")
    avatar_url: str | None = Field(default=None, description="Avatar image for the messages.")
    thread_id: str | None = Field(default=None, description="Post into this thread instead.")
    events: list[str] = Field(
        default_factory=lambda: ["completed", "failed"],
        description="Job events to post: any of 'started', 'completed', 'failed'.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(validate_webhook_url(value.get_secret_value(), allowed_hosts()))

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        unknown = [event for event in value if event not in EVENTS]
        if unknown:
            raise ValueError(
                f"unknown event(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(EVENTS)}"
            )
        return list(dict.fromkeys(value))
