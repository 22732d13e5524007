"""The bot's routes, per-user limits and providers, read from ``bot.yaml``.

A top-level configuration module like ``relay_settings``: the API routes and admits
requests with it, the bot task workers pick providers with it.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, TypeGuard

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from relay_pools import Workload, pools_serving
from relay_settings import PROJECT_ROOT, get_settings

Kind = Literal["chat", "image", "video"]
KINDS: tuple[str, ...] = ("chat", "image", "video")
# Kinds with per-user limits: the bot's, and /transcribe from Discord (limits only: it is a
# transcription job, not a bot request).
LimitedKind = Literal["chat", "image", "video", "transcribe"]
TRANSCRIBE = "transcribe"


def is_kind(value: str) -> TypeGuard[Kind]:
    """Whether ``value`` names a kind of request the bot handles."""
    return value in KINDS


def _bot_pool(pool: str) -> str:
    if pool not in pools_serving(Workload.BOT):
        known = ", ".join(pools_serving(Workload.BOT))
        raise ValueError(f"{pool!r} is not a bot pool of work-pools/pools.yaml ({known})")
    return pool


# A pool of the registry whose workload is the bot.
BotPool = Annotated[str, AfterValidator(_bot_pool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FallbackBlock(_Strict):
    """Where an interaction's answer goes once Discord's 15 minutes for it have run out: a
    Relay Discord Destination block, and how the expiry notice names it to the user."""

    block: str = Field(min_length=1)
    channel: str = Field(default="", description="as users know it: '#bot-answers', '<#id>'")

    def shown(self) -> str:
        """The place, as the expiry notice names it."""
        return self.channel or "Relay's channel for late answers"


class Route(_Strict):
    """Requests of these kinds in channels matching these patterns go to ``pool``; an
    interaction's late answer to ``fallback_block`` (shown to users as ``fallback_channel``)."""

    name: str
    kinds: tuple[Kind, ...]
    channels: tuple[str, ...]
    pool: BotPool
    fallback_block: str | None = Field(default=None, min_length=1)
    fallback_channel: str = ""

    def matches(self, kind: str, channel: str) -> bool:
        """True when this route takes ``kind`` requests from ``channel``."""
        name = channel.lower().lstrip("#")
        return kind in self.kinds and any(
            fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.channels
        )


class KindLimits(_Strict):
    """Per-user cooldown and daily limits, and the global daily limit, of one kind."""

    cooldown_seconds: float = Field(ge=0)
    per_user_daily: int = Field(ge=0)
    global_daily: int = Field(ge=0)


DEFAULT_TRANSCRIBE_LIMITS = KindLimits(cooldown_seconds=30, per_user_daily=20, global_daily=500)


class ProviderChoice(_Strict):
    """Which key pool (block) and model answer one kind, and how long a request may wait."""

    key_pool: str
    model: str
    deadline_seconds: float = Field(gt=0)


class BotConfig(_Strict):
    """All of ``bot.yaml``."""

    routes: tuple[Route, ...]
    fallback: dict[Kind, BotPool]
    limits: dict[LimitedKind, KindLimits]
    providers: dict[Kind, ProviderChoice]
    max_prompt_chars: int = Field(default=4000, gt=0)
    # Per kind: where late interaction answers go when their route names no fallback_block.
    fallback_blocks: dict[Kind, FallbackBlock] = {}

    @model_validator(mode="after")
    def _every_kind_configured(self) -> BotConfig:
        for section in ("fallback", "limits", "providers"):
            missing = [kind for kind in KINDS if kind not in getattr(self, section)]
            if missing:
                raise ValueError(f"bot config: {section} has no entry for {', '.join(missing)}")
        return self

    def limits_of(self, kind: str) -> KindLimits:
        """The limits of ``kind``; /transcribe's defaults when the file has none (a
        bot.yaml from before it existed). KeyError for an unknown kind."""
        if kind == TRANSCRIBE and TRANSCRIBE not in self.limits:
            return DEFAULT_TRANSCRIBE_LIMITS
        return self.limits[kind]  # type: ignore[index]  # str, not LimitedKind

    def route(self, kind: str, channel: str) -> tuple[str, str]:
        """``(route name, pool)`` for a request; the kind's fallback when no route matches."""
        for route in self.routes:
            if route.matches(kind, channel):
                return route.name, route.pool
        if not is_kind(kind):
            raise KeyError(kind)  # as the lookup would
        return f"fallback-{kind}", self.fallback[kind]

    def fallback_for(self, kind: str, route_name: str) -> FallbackBlock | None:
        """Where a late interaction answer of ``kind`` taken in by route ``route_name`` goes:
        the route's ``fallback_block``, else its kind's, else nowhere (None)."""
        for route in self.routes:
            if route.name == route_name and route.fallback_block:
                return FallbackBlock(block=route.fallback_block, channel=route.fallback_channel)
        return self.fallback_blocks.get(kind) if is_kind(kind) else None

    def dispatch_seconds(self, kind: str, lease_seconds: float) -> float:
        """How long a queued request of ``kind`` may wait for its task run to start before
        it is dispatched again: twice its deadline, plus a running request's lease."""
        deadline = self.providers[kind].deadline_seconds  # type: ignore[index]  # str, not Kind
        return 2 * deadline + lease_seconds


def config_path() -> Path:
    """``RELAY_BOT_CONFIG`` or the committed ``bot.yaml``."""
    return Path(get_settings().bot.config or PROJECT_ROOT / "bot.yaml")


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> BotConfig:  # noqa: ARG001 (mtime: cache key)
    return BotConfig.model_validate(yaml.safe_load(Path(path).read_text()) or {})


def get_bot_config() -> BotConfig:
    """The bot configuration, re-read when the file changes."""
    path = config_path()
    return _load(str(path), path.stat().st_mtime)
