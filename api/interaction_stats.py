"""``/stats`` from Discord: the operations statistics (the hourly admin post's embed, over
the last 24 h), shown only to the admin who asked.

Discord's ``default_member_permissions`` only hides the command from other members; Relay
checks again that the member may manage the server (MANAGE_GUILD or ADMINISTRATOR) and that
the command comes from a server at all. The figures come from the store (``store.stats``),
the key pool blocks (daily quotas) and the worker census, read at once and each given up on
after STATS_READ_SECONDS: Discord waits 3 s for the answer. Quotas or workers not read in
time are left out and the embed says so; without the store's figures there is no answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import BackgroundTasks, Request

from api import reads
from api.discord_schemas import Interaction, InteractionResponse, ephemeral
from blocks.keys import daily_quotas
from relay_commands import ADMINISTRATOR, MANAGE_GUILD
from relay_settings import RelaySettings
from store.db import engine_for
from store.stats import StoreFigures, collect
from tasks.discord_limits import FIELD_VALUE_LIMIT, truncate
from tasks.stats import StatsSummary, stats_embed, summarize, workers_of
from tasks.worker_census import SourceStatus, take_census

log = logging.getLogger("relay.interactions")
STATS_HOURS = 24.0  # the window the counts are over
# How long each source may take (all three are read at once; Discord waits 3 s in all).
STATS_READ_SECONDS = 2.0
CENSUS_SOURCE_SECONDS = 1.5  # each source of the worker census (under the read's time)
MAY_SEE_STATS = MANAGE_GUILD | ADMINISTRATOR
# Keys' daily quotas are configuration (the key pool blocks): read again at most this often.
QUOTAS_MAX_AGE_SECONDS = 60.0
T = TypeVar("T")
Quotas = dict[tuple[str, str], int | None]
_quotas: tuple[float, Quotas] | None = None


async def stats_command(
    request: Request,
    interaction: Interaction,
    background: BackgroundTasks,  # noqa: ARG001 (a command handler's signature)
) -> InteractionResponse:
    """The statistics embed for a member who may manage the server, else a refusal."""
    refusal = refusal_of(interaction)
    if refusal is not None:
        return ephemeral(refusal)
    settings: RelaySettings = request.app.state.settings
    until = datetime.now(UTC)
    since = until - timedelta(hours=STATS_HOURS)
    figures, quotas, census = await asyncio.gather(
        _bounded("store", reads.read(collect, since, until)),
        _bounded("key quotas", asyncio.to_thread(recent_quotas)),
        _bounded(
            "workers", take_census(_census_settings(settings), engine_for(settings.database_url))
        ),
    )
    if not isinstance(figures, StoreFigures):
        return ephemeral(f"Relay could not read its statistics: {figures}. Try again in a minute.")
    missing = [f"key quotas: {quotas}"] if isinstance(quotas, str) else []
    if isinstance(census, str):
        missing.append(f"workers: {census}")
    else:
        missing += [
            f"workers from {name}: {source.detail or 'no answer'}"
            for name, source in census.sources
            if source.status == SourceStatus.ERROR
        ]
    summary = summarize(
        figures,
        {} if isinstance(quotas, str) else quotas,
        [] if isinstance(census, str) else workers_of(census),
    )
    return ephemeral("Relay's statistics (only you see them):", [_embed(summary, missing)])


def recent_quotas() -> Quotas:
    """``daily_quotas()`` (one Prefect call per key pool), read again at most every
    QUOTAS_MAX_AGE_SECONDS; a read given up on still fills it for the next /stats."""
    global _quotas
    now = time.monotonic()
    if _quotas is None or now - _quotas[0] > QUOTAS_MAX_AGE_SECONDS:
        _quotas = (now, daily_quotas())
    return _quotas[1]


def _census_settings(settings: RelaySettings) -> RelaySettings:
    """The settings with each census source given less than the whole read's time, so that
    one silent source (a Dask scheduler) is named and the others' workers still shown."""
    seconds = min(settings.health.timeout_seconds, CENSUS_SOURCE_SECONDS)
    health = settings.health.model_copy(update={"timeout_seconds": seconds})
    return settings.model_copy(update={"health": health})


def refusal_of(interaction: Interaction) -> str | None:
    """Why this interaction may not see the statistics; None when it may."""
    if interaction.guild_id is None or interaction.member is None:
        return "/stats is answered in a server only, to members who may manage it."
    if not interaction.permissions & MAY_SEE_STATS:
        return (
            "/stats is for members who may manage this server "
            "(Manage Server or Administrator permission)."
        )
    return None


async def _bounded(what: str, work: Awaitable[T]) -> T | str:
    """``work``'s result, or a line saying why there is none (the error is logged)."""
    try:
        return await reads.within(STATS_READ_SECONDS, work)
    except TimeoutError:
        log.warning("/stats: %s not read within %s s", what, STATS_READ_SECONDS)
        return f"not read within {STATS_READ_SECONDS:g} s"
    except Exception as err:  # the answer names the failure's kind, the log says more
        log.warning("/stats: %s not read: %r", what, err)
        return f"not read ({type(err).__name__})"


def _embed(summary: StatsSummary, missing: list[str]) -> dict[str, Any]:
    embed = stats_embed(summary)
    if missing:
        text = truncate("\n".join(missing), FIELD_VALUE_LIMIT)
        embed["fields"].append({"name": "Not read", "value": text, "inline": False})
    return embed
