"""Dead flow runs: heartbeats, the automation that crashes a silent run, and the job's recovery.

The integration test kills a process worker and its flow-run process together (SIGKILL to
both process groups: nobody is left to report) and waits for Prefect's server to mark the
run Crashed (the dead-run automation) and for a task worker of the pool to run the job
again (its lease ran out). About two minutes: the automation waits three heartbeats of
30 s, Prefect's minimum.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Running
from sqlmodel import col, update

from bench import deadruns as bench
from deployments import bootstrap
from deployments.alerts import _spec
from deployments.deadruns import (
    CRASH_MESSAGE,
    DEAD_RUN_NAME,
    HEARTBEAT_ENV,
    HEARTBEAT_SECONDS,
    MISSED_BEATS,
    WATCHED_TAG,
    dead_run_automation,
    dead_run_trigger,
)
from flows.asr_tasks import LEASE_RAN_OUT, MAINTENANCE_SECONDS
from flows.dead_runs import crash_silent_runs
from relay_pools import load_pools
from relay_settings import PROJECT_ROOT, get_settings
from store import jobs
from store.db import session_scope
from store.models import JobStatus, TranscriptionJob

# SIGKILL to Crashed: the 90 s after the last heartbeat (at most 30 s before the kill),
# the proactive trigger's 5 s evaluation period, and 10 s for a busy two-core machine.
CRASHED_WITHIN = HEARTBEAT_SECONDS * MISSED_BEATS + 5 + 10
# SIGKILL to the job taken over: its lease (renewed every third of it) runs out, and the
# next maintenance pass of the pool's task worker takes it.
TAKEN_OVER_WITHIN = get_settings().job.lease_seconds + MAINTENANCE_SECONDS + 10


def test_every_pool_runs_its_flow_runs_with_the_watched_heartbeat():
    for name, pool in load_pools().items():
        env = pool.base_job_template()["variables"]["properties"]["env"]["default"]
        assert env.get(HEARTBEAT_ENV) == str(HEARTBEAT_SECONDS), name
    text = (PROJECT_ROOT / "prefect.yaml").read_text()
    assert f"tags: &tags [{WATCHED_TAG}]" in text  # every deployment of it is watched


def test_the_trigger_is_prefects_documented_one_for_relays_runs():
    trigger = dead_run_trigger()
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect >= {"prefect.flow-run.heartbeat", "prefect.flow-run.Crashed"}
    assert trigger.posture.value == "Proactive" and trigger.for_each == {"prefect.resource.id"}
    assert trigger.within.total_seconds() == HEARTBEAT_SECONDS * MISSED_BEATS
    # A heartbeat of another run, or of an untagged run, opens no watch.
    assert trigger.match_related.includes(  # type: ignore[union-attr]
        [_related(f"prefect.tag.{WATCHED_TAG}", "tag")]
    )
    for others in ([_related("prefect.tag.other", "tag")], [_related("prefect.flow.f", "flow")]):
        assert not trigger.match_related.includes(others)  # type: ignore[union-attr]


def test_the_automation_compares_equal_after_a_round_trip():
    ours = dead_run_automation()
    theirs = Automation.model_validate(json.loads(ours.model_dump_json()))
    assert _spec(theirs) == _spec(ours)


def _related(resource_id: str, role: str):
    from prefect.events.schemas.events import RelatedResource

    return RelatedResource.model_validate(
        {"prefect.resource.id": resource_id, "prefect.resource.role": role}
    )


@pytest.mark.usefixtures("database_url")
def test_a_run_takes_a_free_jobs_lease_and_not_a_live_one():
    job = jobs.create_job("/x.mp3", "x.mp3", work_pool="asr-cpu", dispatch_token="api-token")
    lease = jobs.take_for_run(job.id, "host:1", 30)  # dispatched, never started: free
    assert lease is not None and lease.token != "api-token"
    assert jobs.take_for_run(job.id, "host:2", 30) is None  # held by a live run
    assert jobs.expired("asr-cpu") == []
    with session_scope() as session:  # the holder stopped renewing a while ago
        session.execute(
            update(TranscriptionJob)
            .where(col(TranscriptionJob.id) == job.id)
            .values(lease_expires_at=TranscriptionJob.created_at)
        )
    assert jobs.expired("asr-cpu") == [job.id]  # what the pool's maintenance pass finds
    taken = jobs.take_over(job.id, "host:3", 30)
    assert taken is not None and not jobs.complete_job(job.id, "en", "m", token=lease.token)
    assert jobs.complete_job(job.id, "en", "m", token=taken.token)
    assert jobs.take_for_run(job.id, "host:4", 30) is None  # finished


@pytest.fixture(scope="module")
def dead_run_env(prefect_server, state_dir):  # noqa: ARG001 (the server it needs)
    """The session's server bootstrapped (twice) and the transcription deployment deployed."""
    env = bench.scenario_env(
        str(PREFECT_API_URL.value()), os.environ["RELAY_DATABASE_URL"], str(state_dir / "data")
    )
    first = bootstrap.bootstrap()
    second = bootstrap.bootstrap()
    bench.deploy(env)
    return env, first, second


def test_bootstrap_keeps_one_dead_run_automation(dead_run_env):
    _, first, second = dead_run_env
    assert ("automation", DEAD_RUN_NAME, "unchanged") in second
    assert any(
        name == DEAD_RUN_NAME and outcome in {"created", "updated", "unchanged"}
        for _, name, outcome in first
    )
    found = Automation.read(name=DEAD_RUN_NAME)
    assert _spec(found) == _spec(dead_run_automation())  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_run_killed_with_its_worker_ends_crashed_and_its_job_runs_again(dead_run_env, tmp_path):
    env, _, _ = dead_run_env
    started = time.monotonic()
    figures = bench.run_scenario(env, tmp_path, limit=CRASHED_WITHIN + 60)
    print(json.dumps({"figure": "dead_flow_run", **figures.__dict__}))  # the closing note's
    print(f"test wall time: {time.monotonic() - started:.0f} s")
    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}

    # Crashed by the automation (no survivor reported anything), within its window.
    assert figures.crash_message == CRASH_MESSAGE, logs
    assert 0 < figures.seconds_to_crashed <= CRASHED_WITHIN, figures
    # The job's lease ran out and the pool's task worker runs it again.
    assert 0 < figures.seconds_to_taken_over <= TAKEN_OVER_WITHIN, figures
    assert figures.seconds_to_running_again <= TAKEN_OVER_WITHIN + 10, figures
    assert figures.job_status in (JobStatus.RUNNING, JobStatus.COMPLETED), figures
    assert json.loads(figures.job_options)["beam_size"] == 3, figures  # as it was submitted
    assert figures.heartbeats.keys() == {figures.flow_run_id}, figures  # only the deployment run


def test_the_recovery_crashes_a_silent_run_and_leaves_deployment_runs_to_the_automation(
    prefect_server,  # noqa: ARG001
):
    @flow(name="relay-dead-run-probe")
    def probe() -> None:
        pass

    reason = f"job j1: {LEASE_RAN_OUT}"
    with get_client(sync_client=True) as client:
        silent = client.create_flow_run(probe, state=Running())  # a task worker's run
        flow_id = client.create_flow_from_name("relay-dead-run-probe")
        deployment = client.create_deployment(flow_id=flow_id, name="probe")
        deployed = client.create_flow_run_from_deployment(deployment)
        client.set_flow_run_state(deployed.id, Running(), force=True)

        assert crash_silent_runs(str(silent.id), reason) == [str(silent.id)]
        assert crash_silent_runs(str(deployed.id), reason) == []  # the automation's to crash
        crashed = client.read_flow_run(silent.id).state
        assert crashed is not None and crashed.is_crashed() and crashed.message == reason
        left = client.read_flow_run(deployed.id).state
        assert left is not None and left.is_running()
    assert crash_silent_runs(str(silent.id), reason) == []  # already final: nothing to do
