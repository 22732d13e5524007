"""Waiting on what the Prefect server records of a flow run."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def wait_chunk_runs(flow_run_id: UUID, count: int, limit: float = 30.0) -> list:
    """The flow run's ``count`` chunk task runs, completed (the server records task runs
    from their events, a moment after the job's end)."""
    runs: list = []
    deadline = time.monotonic() + limit
    of_flow = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as prefect:
        while time.monotonic() < deadline:
            runs = prefect.read_task_runs(flow_run_filter=of_flow)
            chunk_runs = [r for r in runs if r.name.startswith("chunk-")]
            if len(chunk_runs) == count and all(r.state.is_completed() for r in chunk_runs):
                return chunk_runs
            time.sleep(0.2)
    raise AssertionError(f"{count} completed chunk task runs expected: {runs}")
