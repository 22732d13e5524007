"""Dead flow runs: Prefect's flow-run heartbeats and the automation that crashes a silent run.

A flow run whose process dies with its worker (a host lost, a container evicted, both
killed at once) reports nothing: Prefect's server would show it Running forever. Prefect's
documented remedy ("detect zombie flows") is used as it is: every deployment run of
Relay's pools beats every ``HEARTBEAT_SECONDS`` (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in
each pool's base job template), and a proactive automation marks a run Crashed when no
heartbeat, and no final state, followed its last heartbeat within ``MISSED_BEATS`` beats.

Only runs tagged ``relay`` are watched (prefect.yaml's deployments, the batch workers):
Prefect 3.9 beats every 180 s by default, so a run of someone else's flow on the same server
(or ``python -m cli transcribe`` against it) would be crashed after 90 s while still alive.
Relay's own job recovery (store/leases.py) then runs the job again: docs/ops-deadruns.md.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

from deployments.alerts import ensure_automation

DEAD_RUN_NAME = "relay: crash flow runs whose heartbeat stopped"
HEARTBEAT_SECONDS = 30  # Prefect's minimum; the pools' templates set it (a test checks)
MISSED_BEATS = 3
WATCHED_TAG = "relay"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
CRASH_MESSAGE = (
    f"No heartbeat for {HEARTBEAT_SECONDS * MISSED_BEATS} s: the flow run's process is "
    "presumed dead (Relay's dead-run automation)."
)
# What ends a run's watch: another heartbeat, or any final state.
ENDINGS = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)


def dead_run_trigger() -> EventTrigger:
    """After a heartbeat of a ``relay`` run, expect another (or its end) within 3 beats."""
    return EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", *ENDINGS},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={
            "prefect.resource.role": "tag",
            "prefect.resource.id": f"prefect.tag.{WATCHED_TAG}",
        },
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=HEARTBEAT_SECONDS * MISSED_BEATS),
    )


def dead_run_automation() -> Automation:
    """The automation as Relay wants it on the server."""
    return Automation(
        name=DEAD_RUN_NAME,
        description=(
            f"Marks a flow run tagged '{WATCHED_TAG}' Crashed when its heartbeats (every "
            f"{HEARTBEAT_SECONDS} s) stop for {HEARTBEAT_SECONDS * MISSED_BEATS} s; "
            "see docs/ops-deadruns.md."
        ),
        enabled=True,
        trigger=dead_run_trigger(),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=CRASH_MESSAGE)],
    )


def ensure_dead_run_automation() -> list[tuple[str, str, str]]:
    """Create the automation, or bring it up to date; ``(kind, name, outcome)`` lines."""
    return [("automation", DEAD_RUN_NAME, ensure_automation(dead_run_automation()))]
