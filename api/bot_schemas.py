"""Request and response bodies of the bot API."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.callbacks import CALLBACK_URL_FIELD, CallbackUrl, CallbackView
from api.schemas import NO_NUL, NOT_BLANK
from blocks.discord import allowed_hosts, validate_webhook_url, webhook_url_pattern
from store.models import FollowUp, UtcDatetime
from tasks.callback_events import BotRequestEnded


class BotRequestIn(BaseModel):
    """A request forwarded by the Discord bot."""

    model_config = ConfigDict(hide_input_in_errors=True, extra="forbid")

    kind: Literal["chat", "image", "video"]
    # The pattern documents what _not_blank enforces (with a message that says so).
    prompt: str = Field(
        min_length=1,
        description="not only white space; no NUL character",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    user_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Discord user id")
    channel: str = Field(min_length=1, max_length=100, pattern=NO_NUL, description="channel name")
    guild: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    destination: str | None = Field(
        default=None,
        max_length=128,
        pattern=NO_NUL,
        description="name of a Discord destination block",
    )
    webhook_url: str | None = Field(
        default=None, description="Discord webhook or interaction follow-up URL"
    )
    callback_url: CallbackUrl | None = CALLBACK_URL_FIELD

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("the prompt contains a NUL character")
        if not re.fullmatch(NOT_BLANK, value):
            raise ValueError("the prompt is empty")
        return value.strip()

    @field_validator("webhook_url")
    @classmethod
    def _valid_webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        hosts = allowed_hosts()
        url = validate_webhook_url(value, hosts)  # its messages name what is wrong
        # The OpenAPI document states this pattern: what it says is what intake accepts.
        if not re.fullmatch(webhook_url_pattern(hosts), value):
            raise ValueError(
                "webhook_url must be a Discord webhook URL "
                "(https://discord.com/api/webhooks/<id>/<token>, no query) or a URL on a host "
                "of RELAY_WEBHOOK_ALLOWED_HOSTS"
            )
        return url


class BotAccepted(BaseModel):
    request_id: str
    status: str
    kind: str
    route: str
    pool: str
    status_url: str


class AnswerFile(BaseModel):
    name: str
    size: int
    mime_type: str


class BotRequestView(BotRequestEnded):
    """The request as its GET shows it: what its completion callback says, and more."""

    status: str = Field(description="queued, running, completed, failed or refused")
    user_id: str
    channel: str
    destination: str | None = Field(description="block name or redacted webhook URL")
    key_name: str | None = Field(description="which key of the pool answered (its name)")
    upstream_calls: int
    upstream_seconds: float | None
    answer_files: list[AnswerFile]
    delivery_status: str = Field(description="pending, delivered, retrying or failed")
    delivery_attempts: int
    delivery_error: str | None
    interaction_at: UtcDatetime | None = Field(
        default=None,
        description="a Discord interaction's request: when Discord created the interaction "
        "(its follow-up token lives 15 minutes from then)",
    )
    followup: FollowUp | None = Field(
        default=None,
        description="a Discord interaction's request: live, noticed (told where a late answer "
        "goes), notice_failed, expired (the answer goes to the route's fallback block), or "
        "closed (answered while its token lived)",
    )
    callback: CallbackView | None = None


class Refusal(BaseModel):
    """A request over a cooldown or daily limit: recorded (and told on Discord), not run."""

    error: str = Field(description="cooldown, user_daily_limit or global_daily_limit")
    message: str
    request_id: str
    retry_at: UtcDatetime
    retry_after_seconds: float
