"""Flow runs a dead process left Running that no heartbeat watches.

Prefect's dead-run automation (deployments/deadruns.py) crashes a deployment run whose
heartbeats stop. A run that never beats stays Running after its process died: the
``transcribe`` run of a task worker (its heartbeat is off, flows/runtime.py: the job's lease
is its heartbeat; its chunks are task runs of its own, no subflow). Relay learns that its
process died when the job's lease runs out; the recovery that takes the job over marks it
Crashed here, so the Prefect UI stops showing work that nobody does.
"""

from __future__ import annotations

import logging
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Crashed

log = logging.getLogger("relay.dead_runs")
UNFINISHED = [StateType.RUNNING, StateType.PENDING]


def crash_silent_runs(flow_run_id: str, reason: str) -> list[str]:
    """Mark the run ``flow_run_id`` Crashed while it is unfinished, unless it is a deployment
    run (the dead-run automation crashes those when their heartbeats stop). Returns the ids
    marked; never raises (recovery goes on without it)."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            silent = [run] if run.deployment_id is None and _unfinished(run) else []
            for found in silent:
                client.set_flow_run_state(found.id, Crashed(message=reason), force=True)
    except Exception as err:  # the Prefect API unreachable, the run deleted: nothing to tidy
        log.warning("could not mark the runs of %s Crashed: %s", flow_run_id, err)
        return []
    return [str(found.id) for found in silent]


def _unfinished(run: FlowRun) -> bool:
    return run.state_type in UNFINISHED
