"""Pools, bootstrap, prefect.yaml and process workers against a real Prefect server.

The bootstrap runs twice (the second changes nothing), ``prefect deploy --all`` deploys from
the repo's prefect.yaml, and ``prefect deployment run`` sends real speech to a process
worker on the pinned pool; a run for a pool without a worker waits until one starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL

from blocks.keys import ApiKeyPool, rate_limit_shape
from blocks.prefect_sync import load_block
from deployments import bootstrap
from deployments.alerts import ALERT_NAME
from deployments.serve import stop
from relay_pools import load_pools
from store import jobs
from store.models import JobStatus
from tasks.wer import word_error_rate
from tests.audio import DATA, ROOT
from tests.environ import environment
from tests.fake_discord import FakeDiscord

pytestmark = pytest.mark.usefixtures("prefect_server", "deployed")
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def discord() -> Iterator[FakeDiscord]:
    with FakeDiscord(retry_after=0.2) as fake:
        yield fake


@pytest.fixture(scope="module")
def env(discord: FakeDiscord) -> Iterator[dict[str, str]]:
    """What a worker host has: the server's URL, the job store, a Discord destination."""
    values = {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "RELAY_DISCORD_WEBHOOK_URL": discord.url_for(token="deploy-secret"),
        "RELAY_WEBHOOK_ALLOWED_HOSTS": discord.host,
        "RELAY_DISCORD_BLOCK": "deploy-test-discord",
        "RELAY_OPENAI_KEY_PRIMARY": "sk-deploy-openai-1",
        "RELAY_OPENAI_KEY_SECONDARY": "sk-deploy-openai-2",
        "RELAY_MINIMAX_KEY_PRIMARY": "sk-deploy-minimax",
        "RELAY_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    # The bootstrap runs in this process and reads RELAY_DISCORD_BLOCK.
    with environment(values):
        yield {**os.environ}


@pytest.fixture(scope="module")
def deployed(env):
    """The bootstrap, twice, then every deployment in prefect.yaml."""
    first = bootstrap.bootstrap()
    second = bootstrap.bootstrap()
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return first, second


@contextmanager
def worker_on(env: dict[str, str], pool: str, log: Path) -> Iterator[subprocess.Popen]:
    """A process worker of ``pool`` for the duration of the block."""
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", "2"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield worker
    finally:
        # SIGTERM, then SIGKILL: a Prefect 3.9.1 worker that gets SIGTERM while a flow-run
        # process it started is still exiting keeps polling (seen in a clean-clone run).
        stop(worker, grace=30)


def run_deployment_cli(env: dict[str, str], name: str, **params: str) -> str:
    """``prefect deployment run NAME --param k=v``; returns the flow run id it printed."""
    args = [PREFECT, "deployment", "run", name]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout).group(1)


def wait_final(flow_run_id: str, limit: float = 240.0):
    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state and run.state.type.value in FINAL:
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish: {run.state}")


def test_bootstrap_creates_everything_once(deployed):
    first, second = deployed
    # What an earlier test of the session bootstrapped is "unchanged" here; the server's
    # state itself is checked below.
    handled = {"created", "updated", "unchanged"}
    assert {kind for kind, _, outcome in first if outcome in handled} >= {
        "work pool",
        "work queue",
        "limit",
        "automation",
    }
    changed = [item for item in second if item[2] in ("created", "updated")]
    assert changed == [], f"a second bootstrap changed {changed}"
    assert "deploy-secret" not in json.dumps(first)  # the webhook token is never printed
    assert any(
        kind == "block" and name.startswith("deploy-test-discord (") and outcome == "created"
        for kind, name, outcome in first
    ), first

    with get_client(sync_client=True) as client:
        pools = load_pools()
        for name, spec in pools.items():
            pool = client.read_work_pool(name)
            assert pool.base_job_template == spec.base_job_template(), name
            for queue, queue_spec in spec.queues.items():
                stored = client.read_work_queue_by_name(queue, work_pool_name=name)
                assert stored.priority == queue_spec.priority, f"{name}/{queue}"
        assert client.read_global_concurrency_limit_by_name("discord-webhook").limit == 5
        env = pools["asr-gpu"].base_job_template()["variables"]["properties"]["env"]["default"]
        assert env["RELAY_ASR_DEVICE"] == "cuda" and env["RELAY_ASR_COMPUTE_TYPE"] == "float16"


def test_bootstrap_saves_the_key_pools_set_in_the_environment_with_a_limit_per_key(deployed):
    first, _ = deployed
    pools = {name: outcome for kind, name, outcome in first if kind == "key pool"}
    assert pools == {
        "openai": "created",
        "stability": "skipped (no key set)",
        "minimax": "created",
    }
    assert "sk-deploy" not in json.dumps(first)
    openai = load_block(ApiKeyPool, "openai")
    assert openai.base_url == "http://127.0.0.1:9/v1"  # RELAY_OPENAI_BASE_URL wins
    assert [k.name for k in openai.keys] == ["primary", "secondary"]
    assert openai.secret("secondary") == "sk-deploy-openai-2"
    with get_client(sync_client=True) as client:
        rpm = client.read_global_concurrency_limit_by_name("key.openai.primary.rpm")
        assert (rpm.limit, rpm.slot_decay_per_second) == rate_limit_shape(500)
        concurrent = client.read_global_concurrency_limit_by_name("key.minimax.primary.concurrent")
        assert concurrent.limit == 3 and not concurrent.slot_decay_per_second


def test_prefect_yaml_deploys_every_flow_to_its_pool():
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["asr-cpu", "asr-gpu"])
            )
        )
    by_name = {d.name: d for d in found}
    assert by_name["asr-cpu"].work_pool_name == "asr-cpu"
    assert by_name["asr-gpu"].work_pool_name == "asr-gpu"
    assert by_name["asr-gpu"].parameters["device"] == "cuda"
    assert all(d.work_queue_name == "long" for d in found)
    assert all(d.global_concurrency_limit.limit == 4 for d in found)
    with get_client(sync_client=True) as client:
        batch = client.read_deployment_by_name("reprocess-videos/batch-video")
        worker = client.read_deployment_by_name("reprocess-worker/batch-video")
    assert batch.work_pool_name == worker.work_pool_name == "batch-video"
    assert batch.global_concurrency_limit.limit == 1
    [nightly] = batch.schedules
    assert isinstance(nightly.schedule, CronSchedule)
    assert (nightly.slug, nightly.schedule.cron, nightly.active) == ("nightly", "0 2 * * *", True)
    with get_client(sync_client=True) as client:
        admin = client.read_deployment_by_name("relay-stats/admin")
    [hourly] = admin.schedules  # a slug and no `active:`: edits in the UI survive a redeploy
    assert isinstance(hourly.schedule, CronSchedule)
    assert (hourly.slug, hourly.schedule.cron, hourly.active) == ("hourly", "0 * * * *", True)
    assert (admin.work_pool_name, admin.parameters) == ("batch-video", {"hours": 1})


def test_a_schedule_paused_in_the_ui_stays_paused_after_a_redeploy(env):
    with get_client(sync_client=True) as client:
        batch = client.read_deployment_by_name("reprocess-videos/batch-video")
        [nightly] = batch.schedules
        client.update_deployment_schedule(batch.id, nightly.id, active=False)  # as the UI does
    again = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "reprocess-videos/batch-video"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    with get_client(sync_client=True) as client:
        [after] = client.read_deployment_by_name("reprocess-videos/batch-video").schedules
    assert (after.id, after.slug, after.active) == (nightly.id, "nightly", False)


def test_deployment_run_completes_on_the_cpu_pool(env, tmp_path):
    with worker_on(env, "asr-cpu", tmp_path / "worker.log"):
        job_id = uuid.uuid4().hex
        run_id = run_deployment_cli(
            env, "transcribe/asr-cpu", source=str(DATA / "weather.mp3"), job_id=job_id
        )
        run = wait_final(run_id)
    assert run.state.type.value == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    assert run.work_pool_name == "asr-cpu"
    job = jobs.get_job(job_id)
    assert job.status == JobStatus.COMPLETED and job.flow_run_id == run_id
    assert job.work_pool == "asr-cpu"  # the pool's job template reached the flow run
    text = Path(job.output_dir, "transcript.txt").read_text()
    # A transcript of the speech. Not tighter: on an AVX2-only CPU, one thread decodes this
    # 16-s window without its last sentence (0.27 there; 0.06 elsewhere): docs/benchmarks.md.
    assert word_error_rate((DATA / "weather.txt").read_text(), text) < 0.35, text


def test_run_for_a_pool_without_worker_waits_then_runs(env, tmp_path):
    job_id = uuid.uuid4().hex
    # The GPU deployment, told to use the CPU: this machine has no GPU, only the pool matters.
    run_id = run_deployment_cli(
        env,
        "transcribe/asr-gpu",
        source=str(DATA / "library.m4a"),
        job_id=job_id,
        device="cpu",
        compute_type="int8",
    )
    with get_client(sync_client=True) as client:
        waiting = client.read_flow_run(uuid.UUID(run_id))
        pool = client.read_work_pool("asr-gpu")
    # No worker has ever polled the pool, so nothing can have taken the run: it waits in
    # the asr-gpu pool (not another pool's, which does have workers in this module).
    assert pool.status is not None and pool.status.value == "NOT_READY", pool.status
    assert (waiting.state.type.value, waiting.work_pool_name) == ("SCHEDULED", "asr-gpu")
    assert jobs.get_job(job_id) is None  # nothing ran

    with worker_on(env, "asr-gpu", tmp_path / "worker.log"):
        run = wait_final(run_id)
    assert run.state.type.value == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    assert run.work_pool_name == "asr-gpu"
    assert jobs.get_job(job_id).status == JobStatus.COMPLETED


def test_failed_run_is_posted_by_the_automation(env, tmp_path, discord):
    with worker_on(env, "asr-cpu", tmp_path / "worker.log"):
        run_id = run_deployment_cli(env, "transcribe/asr-cpu", source="/no/such/file.mp3")
        run = wait_final(run_id)
        assert run.state.type.value == "FAILED"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            posts = [r.payload.get("content") or "" for r in discord.requests]
            alert = [p for p in posts if run.name in p and "ended Failed" in p]
            if alert:
                break
            time.sleep(1)
    assert alert, f"{ALERT_NAME!r} never posted; Discord got {posts}"
    assert "does not exist" in alert[0] or "no such file" in alert[0].lower()
