"""``work-pools/pools.yaml`` is the one registry of pools: everything else agrees with it,
and each pool's background task reaches that pool's workers only."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect import Task
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.tasks import _generate_task_key  # the key Prefect would give on its own

from bot_config import BotConfig, get_bot_config
from flows.deferred import defer
from flows.pool_tasks import dispatchers, pool_task
from relay_pools import Workload, get_pool, load_pools, pools_serving, task_pools
from relay_settings import PROJECT_ROOT

DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
FLOWS_OF = {
    Workload.TRANSCRIPTION: {"flows/transcribe.py:transcribe"},
    Workload.BATCH: {
        "flows/reprocess.py:reprocess_videos",
        "flows/batch_worker.py:reprocess_worker",
    },
    Workload.BOT: set(),  # bot requests run as background tasks only
}
# Small maintenance flows an operator schedules: any pool with process workers may run them
# (prefect.yaml puts relay-stats on batch-video, whose workers are CPU-only and mostly idle).
MAINTENANCE_FLOWS = {"flows/stats.py:relay_stats"}


def test_every_pool_has_its_job_template_and_queues():
    for name, pool in load_pools().items():
        assert pool.base_job_template()["variables"]["type"] == "object", name
        assert pool.queues, f"{name} has no work queue"


def test_prefect_yaml_deploys_each_workload_to_its_pools_with_their_options():
    for deployment in DEPLOYMENTS:
        pool = get_pool(deployment["work_pool"]["name"])
        runnable = FLOWS_OF[pool.workload] | MAINTENANCE_FLOWS
        assert deployment["entrypoint"] in runnable, deployment["name"]
        parameters = deployment.get("parameters", {})
        assert {k: parameters.get(k) for k in pool.options} == pool.options, deployment["name"]
    deployed = {d["work_pool"]["name"] for d in DEPLOYMENTS}
    for workload in (Workload.TRANSCRIPTION, Workload.BATCH):
        assert set(pools_serving(workload)) <= deployed, f"a {workload} pool has no deployment"


def test_a_registry_entry_that_misses_its_task_is_refused_by_name(tmp_path):
    (tmp_path / "pools.yaml").write_text(
        "bot-extra:\n  workload: bot\n  queues: {default: {priority: 1}}\n"
    )
    needs_task = r"(?s)pools\.yaml.*pool bot-extra: a bot pool needs a `task`"
    with pytest.raises(ValueError, match=needs_task):
        load_pools.__wrapped__(tmp_path)


def test_bot_routes_may_only_name_bot_pools():
    config = get_bot_config().model_dump()
    config["routes"][0]["pool"] = "asr-cpu"
    with pytest.raises(ValueError, match="'asr-cpu' is not a bot pool"):
        BotConfig.model_validate(config)


def test_each_pool_task_has_its_own_fixed_key_where_prefect_would_give_one_to_all():
    tasks = dispatchers()
    assert set(tasks) == set(task_pools()) == {"asr-cpu", "asr-gpu", "bot-chat", "bot-media"}
    for pool, made in tasks.items():
        spec = get_pool(pool).task
        assert made.task.task_key == made.task.name == spec.name
        assert {t.task_key for t in made.previous} == set(spec.previous_keys)
        assert all(t.fn is made.task.fn for t in made.served)
        # Prefect's task worker serves copies made by with_options: they keep the key.
        assert made.task.with_options(persist_result=True).task_key == spec.name
    # One factory, one function: Prefect's own key (name + code hash) is the same for both.
    chat, media = tasks["bot-chat"].task, tasks["bot-media"].task
    assert _generate_task_key(chat.fn) == _generate_task_key(media.fn)
    assert chat.task_key != media.task_key


def test_a_pool_tasks_parameters_are_its_run_function_without_the_pool():
    asr = inspect.signature(pool_task("asr-cpu").task.fn)
    assert list(asr.parameters) == ["job_id", "source", "options", "token"]
    assert list(inspect.signature(pool_task("bot-chat").task.fn).parameters) == ["request_id"]
    with pytest.raises(ValueError, match="pool 'batch-video' serves no background task"):
        pool_task("batch-video")


@pytest.fixture
def chat_worker(prefect_server, tmp_path):  # noqa: ARG001 (the server must be up)
    """``python -m cli worker --pool bot-chat`` against the session's Prefect server."""
    log = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--pool", "bot-chat", "--limit", "4"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while "Subscribing to runs" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    yield log
    process.terminate()
    process.wait(timeout=30)


def _state(task_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_task_run(UUID(task_run_id)).state_type.value


def _wait_completed(task_run_ids: list[str], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while any(_state(run) != "COMPLETED" for run in task_run_ids):
        assert time.monotonic() < deadline, {run: _state(run) for run in task_run_ids}
        time.sleep(0.2)


def test_a_chat_worker_takes_chat_runs_old_and_new_and_never_a_media_run(chat_worker: Path):
    media = pool_task("bot-media").dispatch(request_id="registry-media-1")
    # What the previous release's API created: a run under the task's old derived key.
    (old_key,) = get_pool("bot-chat").task.previous_keys
    previous_release = Task(lambda request_id: request_id, name="answer-bot-chat")
    previous_release.task_key = old_key
    legacy = defer(previous_release, {"request_id": "registry-legacy-1"})
    chat = pool_task("bot-chat").dispatch(request_id="registry-chat-1")

    _wait_completed([legacy, chat])
    assert _state(media) == "SCHEDULED", "the bot-chat worker took a bot-media run"
    assert "registry-media-1" not in chat_worker.read_text()
    with get_client(sync_client=True) as client:
        client.delete_task_run(UUID(media))  # no later bot-media worker of this session sees it


def test_a_pools_task_travels_to_dask_with_its_run_counter():
    """Prefect ships the running task, context included, with every chunk it hands to Dask;
    the task's function closes over the pool's run counter (its lock cannot be pickled)."""
    import cloudpickle  # type: ignore[import-untyped]

    from flows.pool_tasks import pool_task

    served = pool_task("asr-cpu")
    with served.running:
        copy = cloudpickle.loads(cloudpickle.dumps(served.task))
        assert served.running.count() == 1
    assert copy.name == served.task.name and copy.task_key == served.task.task_key
