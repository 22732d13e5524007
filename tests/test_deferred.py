"""flows/deferred.py's ``adefer`` / ``defer``: the one place Relay builds background task runs
on Prefect internals (``store_parameters``, ``ResultStore.aupdate_for_task``,
``get_or_create_default_task_scheduling_storage``, the deferred state's details).

These fail when Prefect moves them underneath: the run must be the one ``.delay()`` makes,
its parameters must be where Prefect's own task worker reads them, and that worker must run
it. Why Relay does not call ``.delay()``: docs/prefect.md (bench/delay.py measures it).
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
from prefect.states import StateType
from prefect.task_worker import TaskWorker, read_parameters, should_try_to_read_parameters

from flows.deferred import adefer, defer

pytestmark = pytest.mark.usefixtures("prefect_server")
received: list[tuple[str, int]] = []


@task(name="relay-deferred-probe", cache_policy=NO_CACHE, persist_result=False, retries=0)
def probe(word: str, count: int = 1) -> str:
    received.append((word, count))
    return word * count


async def read_run(task_run_id: str | UUID) -> TaskRun:
    async with get_client() as client:
        return await client.read_task_run(UUID(str(task_run_id)))


async def stored_parameters(run: TaskRun) -> dict:
    """The record as Prefect's task worker reads it (task_worker.TaskWorker's own calls)."""
    store = await ResultStore(
        result_storage=await get_or_create_default_task_scheduling_storage()
    ).aupdate_for_task(probe)
    return await read_parameters(store, run.state.state_details.task_parameters_id)


def test_adefer_makes_the_run_delay_makes_without_the_callers_settings():
    async def both() -> tuple[TaskRun, TaskRun]:
        async with get_client() as client:
            ours = await adefer(client, probe, {"word": "hi", "count": 2})
        theirs = await asyncio.to_thread(lambda: probe.delay("hi", count=2).task_run_id)
        return await read_run(ours), await read_run(theirs)

    ours, theirs = asyncio.run(both())
    for run in (ours, theirs):
        assert run.state.type == StateType.SCHEDULED
        assert run.state.state_details.deferred is True
        assert run.state.state_details.task_parameters_id is not None
        assert run.flow_run_id is None
        assert should_try_to_read_parameters(probe, run)
    assert (
        (ours.task_key, ours.name) == (theirs.task_key, theirs.name) == (probe.task_key, probe.name)
    )
    assert set(ours.task_inputs) == set(theirs.task_inputs) == {"word", "count"}

    ours_stored = asyncio.run(stored_parameters(ours))
    theirs_stored = asyncio.run(stored_parameters(theirs))
    assert ours_stored["parameters"] == theirs_stored["parameters"] == {"word": "hi", "count": 2}
    # The difference on purpose: .delay() ships the caller's settings for the worker to rebuild
    # per run (the cost bench/delay.py measures); a Relay run carries none, so a worker on
    # another host keeps its own PREFECT_API_URL.
    assert ours_stored["context"] == {}
    assert theirs_stored["context"]["settings_context"]


def test_prefects_task_worker_runs_a_deferred_run_with_its_parameters():
    received.clear()
    task_run_id = defer(probe, {"word": "yo", "count": 3})

    async def work() -> TaskRun:
        run = await read_run(task_run_id)
        # What the worker does with a run its websocket delivers, without waiting for one.
        async with TaskWorker(probe) as worker:
            await worker.execute_task_run(run)
        return await read_run(task_run_id)

    finished = asyncio.run(work())
    assert received == [("yo", 3)]
    assert finished.state.type == StateType.COMPLETED, finished.state
