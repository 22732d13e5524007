"""Admin statistics: the ``relay-stats`` flow, hourly by default (prefect.yaml).

store figures (store/stats.py) + key quotas (the key pool blocks) + workers (the census of
``GET /api/workers``) -> a summary (tasks/stats.py) -> an artifact in the Prefect UI and an embed
posted to the admin Discord destination (``RELAY_DISCORD_ADMIN_BLOCK``). Discord failing
never fails the run: the summary is its result and its artifact all the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.asyncutils import run_coro_as_sync

from blocks.keys import daily_quotas
from relay_settings import get_settings
from store.stats import collect
from tasks.stats import (
    StatsSummary,
    WorkerStatus,
    post_stats,
    stats_fields,
    summarize,
    workers_of,
)
from tasks.worker_census import Census, SourceStatus, take_census


@flow(name="relay-stats", log_prints=True, persist_result=False)
def relay_stats(hours: float = 1.0) -> StatsSummary:
    """Post the statistics of the last ``hours`` to the admin Discord destination."""
    logger = get_run_logger()
    until = datetime.now(UTC)
    figures = collect(until - timedelta(hours=hours), until)
    summary = summarize(figures, _quotas(), workers())
    create_markdown_artifact(
        key="relay-stats", markdown=_table(summary), description=f"Relay statistics, {hours:g} h"
    )
    result = post_stats(get_settings().discord.admin_block, summary)
    if result.delivered:
        logger.info("admin statistics posted to Discord")
    else:  # the figures are in the artifact and the result; Discord is only told
        logger.warning("admin statistics not posted (%s): %s", result.outcome, result.reason)
    return summary


def workers() -> list[WorkerStatus]:
    """Every worker the census knows (the heartbeat table, Prefect's pools, the Dask
    scheduler: tasks/worker_census.py, as ``GET /api/workers`` lists them), up or stale."""
    census: Census = run_coro_as_sync(take_census(get_settings()))
    for name, source in census.sources:
        if source.status == SourceStatus.ERROR:
            get_run_logger().warning("workers not read from %s: %s", name, source.detail)
    return workers_of(census)


def _table(summary: StatsSummary) -> str:
    rows = (f"| {name} | {text.replace(chr(10), '<br>')} |" for name, text in stats_fields(summary))
    return "\n".join(["| figure | value |", "|---|---|", *rows]) + "\n"


def _quotas() -> dict[tuple[str, str], int | None]:
    """Each key's daily quota; none when the blocks cannot be read (statistics go on)."""
    try:
        return daily_quotas()
    except Exception as err:
        get_run_logger().warning("key quotas not read: %s", err)
        return {}
