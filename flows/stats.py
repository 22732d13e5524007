"""Admin statistics: the ``relay-stats`` flow, hourly by default (prefect.yaml).

store figures (store/stats.py) + key quotas (the key pool blocks) + workers (Prefect's
work pools) -> a summary (tasks/stats.py) -> an artifact in the Prefect UI and an embed
posted to the admin Discord destination (``RELAY_DISCORD_ADMIN_BLOCK``). Discord failing
never fails the run: the summary is its result and its artifact all the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus as PrefectWorkerStatus

from blocks.keys import daily_quotas
from relay_pools import load_pools
from relay_settings import get_settings
from store.stats import collect
from tasks.stats import StatsSummary, WorkerKind, WorkerStatus, post_stats, stats_fields, summarize

# A worker silent for longer than this is gone, not stale: it is no longer listed.
FORGOTTEN_AFTER = timedelta(days=1)


@flow(name="relay-stats", log_prints=True, persist_result=False)
def relay_stats(hours: float = 1.0) -> StatsSummary:
    """Post the statistics of the last ``hours`` to the admin Discord destination."""
    logger = get_run_logger()
    until = datetime.now(UTC)
    figures = collect(until - timedelta(hours=hours), until)
    summary = summarize(figures, _quotas(), [*prefect_workers(until), *task_workers()])
    create_markdown_artifact(
        key="relay-stats", markdown=_table(summary), description=f"Relay statistics, {hours:g} h"
    )
    result = post_stats(get_settings().discord.admin_block, summary)
    if result.delivered:
        logger.info("admin statistics posted to Discord")
    else:  # the figures are in the artifact and the result; Discord is only told
        logger.warning("admin statistics not posted (%s): %s", result.outcome, result.reason)
    return summary


def prefect_workers(now: datetime) -> list[WorkerStatus]:
    """The Prefect workers of Relay's pools seen in the last day: up while Prefect counts
    them online, stale once silent for three of their heartbeats (Prefect's rule)."""
    found = []
    with get_client(sync_client=True) as client:
        for pool in load_pools():
            try:
                workers = client.read_workers_for_work_pool(pool)
            except Exception as err:  # a pool not bootstrapped yet: nothing to list
                get_run_logger().info("no workers read for pool %s: %s", pool, err)
                continue
            for worker in workers:
                seen = worker.last_heartbeat_time
                if seen is not None and now - seen > FORGOTTEN_AFTER:
                    continue
                up = worker.status == PrefectWorkerStatus.ONLINE
                found.append(WorkerStatus(WorkerKind.PREFECT, pool, worker.name, up, seen))
    return found


def task_workers() -> list[WorkerStatus]:
    """Relay's own task workers (``python -m cli worker --pool P``).

    TODO(issue 15, item 4): list them from ``store.workers.list_workers()`` (the workers'
    heartbeat table, marked stale after three silent heartbeats) once it is merged; until
    then the statistics show Prefect's workers only.
    """
    return []


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
