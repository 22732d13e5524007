"""Prefect background tasks: create deferred task runs cheaply, serve them from warm processes.

A background task run (what ``task.delay()`` makes) is picked up within a few hundred
milliseconds by a long-lived task worker over Prefect's websocket: no flow-run process to
start, no imports to pay per run. Relay uses it for bot requests and for transcriptions
submitted through the API.

``adefer`` / ``defer`` are the one place Relay builds those runs on Prefect internals: under
Prefect 3.9.1 plain ``.delay()`` still costs 2.5-3.5x the submit time and 5x the worker's
CPU per run (bench/delay.py, docs/prefect.md); tests/test_deferred.py fails when they move.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from uuid import uuid4

from prefect import Task
from prefect.client.orchestration import PrefectClient
from prefect.context import SyncClientContext
from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
from prefect.states import Scheduled, State
from prefect.task_worker import store_parameters

log = logging.getLogger("relay.tasks")
_stores: dict[str, ResultStore] = {}


async def adefer(client: PrefectClient, task: Task, parameters: dict[str, object]) -> str:
    """What ``task.delay(**parameters)`` does, on an open client; returns the task run id.

    It stores the parameters where task workers read them and creates the scheduled
    (deferred) task run. Unlike ``.delay()`` it stores no settings context: a worker runs
    with its own settings (its own PREFECT_API_URL on another host), and rebuilding the
    caller's settings made every task run re-read the TOML profile files (about 60 % of a
    chat request's CPU).
    """
    parameters_id = uuid4()
    store = await _parameter_store(task)
    await store_parameters(store, parameters_id, {"parameters": parameters, "context": {}})
    state: State[None] = Scheduled()
    state.state_details.deferred = True
    state.state_details.task_parameters_id = parameters_id
    task_run = await client.create_task_run(
        task=task,
        name=task.name,
        flow_run_id=None,
        dynamic_key=f"{task.task_key}-{uuid4().hex}",
        state=state,
        task_inputs={name: [] for name in parameters},
    )
    return str(task_run.id)


def defer(task: Task, parameters: dict[str, object]) -> str:
    """``adefer`` from a thread without an event loop (maintenance loops re-dispatching
    work), on a client of its own; returns the task run id."""
    from prefect.client.orchestration import get_client

    async def create() -> str:
        async with get_client() as client:
            return await adefer(client, task, parameters)

    return asyncio.run(create())


async def _parameter_store(task: Task) -> ResultStore:
    if task.task_key not in _stores:
        storage = await get_or_create_default_task_scheduling_storage()
        _stores[task.task_key] = await ResultStore(result_storage=storage).aupdate_for_task(
            task.with_options(persist_result=True)
        )
    return _stores[task.task_key]


def serve_warm(
    tasks: Sequence[Task],
    limit: int,
    maintenance: Callable[[], object] | None = None,
    every: float = 5.0,
) -> None:
    """Serve the ``tasks``' background runs until interrupted, ``limit`` at once, with
    ``maintenance`` called every ``every`` seconds in a thread beside them.

    One Prefect client serves every task run of the process: without it each run builds its
    own (an SSL context with the CA bundle each time: about 15 % of a chat request's CPU).
    Task runs start in copies of this context, so they find it; httpx's client is
    thread-safe.
    """
    from prefect.task_worker import serve

    stop = threading.Event()
    if maintenance is not None:
        threading.Thread(target=_repeat, args=(maintenance, every, stop), daemon=True).start()
    try:
        with SyncClientContext.get_or_create():
            serve(*tasks, limit=limit)
    finally:
        stop.set()


def _repeat(action: Callable[[], object], every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            action()
        except Exception:
            log.exception("%s failed; trying again", getattr(action, "__name__", "maintenance"))
