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
from uuid import uuid4

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient
from prefect.context import SyncClientContext
from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
from prefect.states import Scheduled
from prefect.task_worker import store_parameters

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
    """Create the background task run that answers the request (``.delay()``); returns its
    id. For threads and scripts; the API uses ``adispatch`` with its long-lived client."""
    future = POOL_TASKS[pool].delay(request_id)
    return str(future.task_run_id)


async def adispatch(client: PrefectClient, request_id: str, pool: str) -> str:
    """What ``.delay()`` does, on the API's open client: store the task's parameters where
    task workers read them and create its scheduled (deferred) task run.

    Unlike ``.delay()`` it stores no settings context: a worker runs with its own settings
    (its own PREFECT_API_URL on another host), and rebuilding the caller's settings made
    every task run re-read the TOML profile files, about 60 % of a chat request's CPU.
    """
    task = POOL_TASKS[pool]
    parameters_id = uuid4()
    store = await _parameter_store(task)
    await store_parameters(
        store, parameters_id, {"parameters": {"request_id": request_id}, "context": {}}
    )
    state = Scheduled()
    state.state_details.deferred = True
    state.state_details.task_parameters_id = parameters_id
    task_run = await client.create_task_run(
        task=task,
        name=task.name,
        flow_run_id=None,
        dynamic_key=f"{task.task_key}-{uuid4().hex}",
        state=state,
        task_inputs={"request_id": []},
    )
    return str(task_run.id)


_stores: dict[str, ResultStore] = {}


async def _parameter_store(task: Task) -> ResultStore:
    if task.task_key not in _stores:
        storage = await get_or_create_default_task_scheduling_storage()
        _stores[task.task_key] = await ResultStore(result_storage=storage).aupdate_for_task(
            task.with_options(persist_result=True)
        )
    return _stores[task.task_key]


def maintain(pool: str, grace: float = STRANDED_GRACE_SECONDS) -> None:
    """One pass: retry due deliveries, and dispatch again the requests stranded by a dead
    worker (queued, or running, for twice their kind's deadline plus ``grace``). Several
    workers may run it at once: each delivery and each re-dispatch is taken by one."""
    for request_id in requests.deliveries_due(pool=pool):
        lease = requests.claim_delivery(request_id)
        if lease is not None:
            deliver(request_id, lease)
    for kind, choice in get_bot_config().providers.items():
        older_than = 2 * choice.deadline_seconds + grace
        for request_id in requests.stranded(older_than, pool, kind):
            if requests.take_stranded(request_id, older_than):
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

    import tasks.providers.minimax
    import tasks.providers.openai_api
    import tasks.providers.stability  # noqa: F401 (imported once now, not by the first requests)

    stop = threading.Event()
    threading.Thread(target=_maintenance_loop, args=(pool, stop), daemon=True).start()
    # One Prefect client for every task run of this process: without it each run builds its
    # own (an SSL context with the CA bundle each time: about 15 % of a chat request's CPU).
    # Task runs start in copies of this context, so they find it; httpx's client is
    # thread-safe.
    try:
        with SyncClientContext.get_or_create():
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
