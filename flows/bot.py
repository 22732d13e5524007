"""Bot requests as Prefect background tasks, one task per pool, served by task workers.

The API creates a task run with ``.delay()`` and returns; a long-lived task worker of the
request's pool (``python -m cli worker --pool bot-chat``) picks it up within a few
hundred milliseconds over Prefect's websocket, with no flow-run process to start. Each
worker also retries deliveries Discord did not take, re-dispatches requests whose worker
died, so no request is lost, and tells an interaction's user where a late answer will go
before Discord's 15 minutes run out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from bot_config import get_bot_config
from flows.deferred import serve_warm
from flows.pool_tasks import PoolTask, pool_task
from relay_settings import get_settings
from store import bot as requests
from tasks.bot_delivery import deliver
from tasks.bot_handling import handle_request
from tasks.callbacks import deliver_due
from tasks.expiry_notice import send_notices
from tasks.prefect_limits import limits

log = logging.getLogger("relay.bot")
MAINTENANCE_SECONDS = 5.0


def answer_request(pool: str, request_id: str) -> str:
    """Answer a request routed to ``pool`` (the pool's background task,
    ``answer-<pool>``); returns how it ended."""
    log.debug("answering bot request %s on %s", request_id, pool)
    return handle_request(request_id)


def dispatch(request_id: str, pool: str) -> str:
    """Create the background task run that answers the request; returns its id. For
    threads and scripts; the API uses the pool's dispatcher with its long-lived client."""
    return pool_task(pool).dispatch(request_id=request_id)


@dataclass(frozen=True)
class MaintenancePass:
    """What one maintenance pass did: the deliveries it retried, the requests it
    dispatched again, the callbacks it sent, the interactions' expiry notices it sent."""

    delivered: tuple[str, ...] = ()
    redispatched: tuple[str, ...] = ()
    callbacks: tuple[str, ...] = ()
    noticed: tuple[str, ...] = ()


def maintain(pool: str) -> MaintenancePass:
    """One pass: send the interactions' expiry notices due, retry due deliveries and
    completion callbacks (of any workload), and dispatch again the requests whose lease ran
    out (their task run never started, or their worker died). Several workers may run it at
    once: each notice, delivery, callback and re-dispatch is taken by one. Notices go first:
    a stranded request dispatched again may be answered within the second."""
    noticed = send_notices(pool)
    delivered, redispatched = [], []
    for request_id in requests.deliveries_due(pool=pool):
        lease = requests.claim_delivery(request_id)
        if lease is not None:
            deliver(request_id, lease)
            delivered.append(request_id)
    config, lease_seconds = get_bot_config(), get_settings().bot.request_lease_seconds
    for kind in config.providers:
        for request_id in requests.expired(pool, kind):
            if requests.take_over(request_id, config.dispatch_seconds(kind, lease_seconds)):
                log.warning("bot request %s was stranded; dispatching it again", request_id)
                dispatch(request_id, pool)
                redispatched.append(request_id)
    called_back = deliver_due()
    return MaintenancePass(
        tuple(delivered), tuple(redispatched), tuple(called_back), tuple(noticed)
    )


def serve_pool(served: PoolTask, limit: int) -> None:
    """Serve the pool's task until interrupted, with the maintenance loop beside it
    (``python -m cli worker --pool``)."""
    import tasks.providers.minimax
    import tasks.providers.openai_api
    import tasks.providers.stability  # noqa: F401 (imported once now, not by the first requests)

    try:
        serve_warm(served.served, limit, partial(maintain, served.pool), MAINTENANCE_SECONDS)
    finally:
        limits.close()  # the key quota's Prefect client
