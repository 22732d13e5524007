"""Bot requests as Prefect background tasks, one task per pool, served by task workers.

The API creates a task run with ``.delay()`` and returns; a long-lived task worker of the
request's pool (``python -m flows.bot worker --pool bot-chat``) picks it up within a few
hundred milliseconds over Prefect's websocket, with no flow-run process to start. Each
worker also retries deliveries Discord did not take and re-dispatches requests whose worker
died, so no request is lost.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from bot_config import BOT_POOLS, get_bot_config
from store import bot as requests
from tasks.bot_handling import deliver, handle_request

log = logging.getLogger("relay.bot")
MAINTENANCE_SECONDS = 5.0
STRANDED_GRACE_SECONDS = 60.0


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
    """Create the background task run that answers the request; returns its id."""
    future = POOL_TASKS[pool].delay(request_id)
    requests.mark_dispatched(request_id)
    return str(future.task_run_id)


def maintain(pool: str, grace: float = STRANDED_GRACE_SECONDS) -> None:
    """One pass: retry due deliveries, and dispatch again the requests stranded by a dead
    worker (queued or running ``grace`` seconds past their kind's deadline)."""
    for request_id in requests.deliveries_due(pool=pool):
        if requests.claim_delivery(request_id):
            deliver(request_id)
    for kind, choice in get_bot_config().providers.items():
        for request_id in requests.stranded(choice.deadline_seconds + grace, pool, kind):
            requests.requeue(request_id)
            log.warning("bot request %s was stranded; dispatching it again", request_id)
            dispatch(request_id, pool)


def _maintenance_loop(pool: str, stop: threading.Event) -> None:
    while not stop.wait(MAINTENANCE_SECONDS):
        try:
            maintain(pool)
        except Exception:
            log.exception("bot maintenance pass failed; trying again")


def serve_pool(pool: str, limit: int) -> None:
    """Serve the pool's task until interrupted, with the maintenance loop beside it."""
    from prefect.task_worker import serve

    stop = threading.Event()
    threading.Thread(target=_maintenance_loop, args=(pool, stop), daemon=True).start()
    try:
        serve(POOL_TASKS[pool], limit=limit)
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.bot worker --pool bot-chat [--limit N]``."""
    parser = argparse.ArgumentParser(prog="python -m flows.bot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve one pool's bot requests")
    worker.add_argument("--pool", choices=BOT_POOLS, required=True)
    worker.add_argument(
        "--limit", type=int, default=32, help="requests answered at once by this process"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    log.info("bot worker for %s (limit %d) starting", args.pool, args.limit)
    serve_pool(args.pool, args.limit)
    log.info("bot worker for %s stopped after %.0f s", args.pool, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
