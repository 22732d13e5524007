"""Handing accepted jobs to Prefect, never inline: a flow run of the pool's deployment
(``arun_deployment(..., timeout=0)``) or a background task run for its warm task worker,
created through the pool's dispatcher (the registry's, given to ``create_app``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Protocol
from uuid import UUID

from fastapi import Request
from prefect.client.orchestration import PrefectClient, get_client
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.states import Cancelling
from starlette.datastructures import State

from api.errors import ApiError
from tasks.asr import JobOptions


class Dispatcher(Protocol):
    """Creates runs of one pool's background task (``flows.pool_tasks.PoolTask``)."""

    async def adispatch(self, client: PrefectClient, **parameters: object) -> str:
        """Create one run with these parameters on an open client; its task run id."""
        ...


Dispatchers = Mapping[str, Dispatcher]


async def dispatch(request: Request, pool: str, **parameters: object) -> str:
    """Hand work to ``pool``'s task workers with the app's dispatcher and long-lived client;
    the task run id. ApiError 503 when the pool has no dispatcher."""
    dispatchers: Dispatchers = request.app.state.dispatchers
    if pool not in dispatchers:
        raise ApiError(
            503,
            "no_task_worker_pool",
            f"no background task for pool {pool!r}; expected one of {', '.join(dispatchers)}",
        )
    return await dispatchers[pool].adispatch(await app_prefect_client(request), **parameters)


async def submit_transcription(
    deployment: str, parameters: dict[str, object], work_queue: str | None = None
) -> str:
    """Create the flow run on the transcription deployment (in ``work_queue`` of its pool
    when that queue exists, so short files overtake long ones); returns its id at once."""
    try:
        flow_run = await arun_deployment(
            name=deployment,
            parameters=parameters,
            timeout=0,
            work_queue_name=await _existing_queue(deployment, work_queue),
        )
    except ObjectNotFound as err:
        raise ApiError(
            503,
            "deployment_missing",
            f"deployment {deployment!r} does not exist on the Prefect server: run "
            "`make bootstrap` / `prefect deploy`, or `make api` for the embedded mode",
        ) from err
    except Exception as err:
        reason = str(err) or type(err).__name__
        raise ApiError(
            503, "submission_failed", f"could not submit to deployment {deployment!r}: {reason}"
        ) from err
    return str(flow_run.id)


async def app_prefect_client(request: Request) -> PrefectClient:
    """The API process's long-lived Prefect client: opened on first use, closed by
    ``close_app_prefect_client`` when the app shuts down."""
    state = request.app.state
    client: PrefectClient | None = getattr(state, "prefect_client", None)
    if client is None:
        stack = AsyncExitStack()
        opened = await stack.enter_async_context(get_client())
        if getattr(state, "prefect_client", None) is None:
            state.prefect_client, state.prefect_client_stack = opened, stack
        else:  # another request opened one while this one awaited
            await stack.aclose()
        client = state.prefect_client
    return client


async def close_app_prefect_client(state: State) -> None:
    """Close the client ``app_prefect_client`` opened, if it did (the app's shutdown)."""
    stack: AsyncExitStack | None = getattr(state, "prefect_client_stack", None)
    state.prefect_client = state.prefect_client_stack = None
    if stack is not None:
        await stack.aclose()


async def submit_to_task_worker(
    request: Request,
    pool: str,
    job_id: str,
    source: str,
    options: JobOptions,
    token: str | None,
) -> str:
    """Create the job's background task run for ``pool``'s warm task workers; its id."""
    try:
        return await dispatch(
            request, pool, job_id=job_id, source=source, options=options, token=token
        )
    except ApiError:
        raise
    except Exception as err:
        reason = str(err) or type(err).__name__
        raise ApiError(
            503, "submission_failed", f"could not hand the job to pool {pool!r}: {reason}"
        ) from err


async def _existing_queue(deployment: str, work_queue: str | None) -> str | None:
    """The queue if the deployment's pool has it (a served deployment has no pool)."""
    if not work_queue:
        return None
    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        if not target.work_pool_name:
            return None
        try:
            await client.read_work_queue_by_name(work_queue, work_pool_name=target.work_pool_name)
        except ObjectNotFound:
            return None
    return work_queue


async def cancel_flow_run(flow_run_id: str) -> None:
    """Ask Prefect to cancel the run (its worker or serve process stops it)."""
    async with get_client() as client:
        await client.set_flow_run_state(UUID(flow_run_id), Cancelling(), force=True)


def flow_run_url(flow_run_id: str | None) -> str | None:
    """Link to the run in the Prefect UI."""
    if not flow_run_id:
        return None
    base = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None
