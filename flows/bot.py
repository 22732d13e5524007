"""Bot requests as Prefect background tasks, one task per pool, served by task workers.

The API creates a task run with ``.delay()`` and returns; a long-lived task worker of the
request's pool (``python -m flows.bot worker --pool bot-chat``) picks it up within a few
hundred milliseconds over Prefect's websocket, with no flow-run process to start. Each
worker also retries deliveries Discord did not take and re-dispatches requests whose worker
died, so no request is lost.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient

from bot_config import BOT_POOLS, get_bot_config
from flows.deferred import adefer, defer, serve_warm, worker_main
from relay_settings import get_settings
from store import bot as requests
from tasks.bot_handling import deliver, handle_request

log = logging.getLogger("relay.bot")
MAINTENANCE_SECONDS = 5.0


@task(name="answer-bot-chat", cache_policy=NO_CACHE, persist_result=False, retries=0)
def answer_on_bot_chat(request_id: str) -> str:
    """Answer a request routed to the bot-chat pool."""
    return handle_request(request_id)


@task(name="answer-bot-media", cache_policy=NO_CACHE, persist_result=False, retries=0)
def answer_on_bot_media(request_id: str) -> str:
    """Answer a request routed to the bot-media pool."""
    return handle_request(request_id)


POOL_TASKS = {"bot-chat": answer_on_bot_chat, "bot-media": answer_on_bot_media}


def dispatch(request_id: str, pool: str) -> str:
    """Create the background task run that answers the request; returns its id. For
    threads and scripts; the API uses ``adispatch`` with its long-lived client."""
    return defer(POOL_TASKS[pool], {"request_id": request_id})


async def adispatch(client: PrefectClient, request_id: str, pool: str) -> str:
    """Create the request's background task run on the API's open client (``adefer``)."""
    return await adefer(client, POOL_TASKS[pool], {"request_id": request_id})


def maintain(pool: str) -> None:
    """One pass: retry due deliveries, and dispatch again the requests whose lease ran out
    (their task run never started, or their worker died). Several workers may run it at
    once: each delivery and each re-dispatch is taken by one."""
    for request_id in requests.deliveries_due(pool=pool):
        lease = requests.claim_delivery(request_id)
        if lease is not None:
            deliver(request_id, lease)
    config, lease_seconds = get_bot_config(), get_settings().bot_request_lease_seconds
    for kind in config.providers:
        for request_id in requests.expired(pool, kind):
            if requests.take_over(request_id, config.dispatch_seconds(kind, lease_seconds)):
                log.warning("bot request %s was stranded; dispatching it again", request_id)
                dispatch(request_id, pool)


def serve_pool(pool: str, limit: int) -> None:
    """Serve the pool's task until interrupted, with the maintenance loop beside it."""
    import tasks.providers.minimax
    import tasks.providers.openai_api
    import tasks.providers.stability  # noqa: F401 (imported once now, not by the first requests)

    serve_warm(POOL_TASKS[pool], limit, partial(maintain, pool), MAINTENANCE_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.bot worker --pool bot-chat [--limit N]``."""
    return worker_main(
        argv,
        module="flows.bot",
        description=__doc__,
        pools=BOT_POOLS,
        default_limit=32,
        limit_help="requests answered at once by this process",
        serve_pool=serve_pool,
    )


if __name__ == "__main__":
    sys.exit(main())
