"""API submissions on the warm transcription task worker (``RELAY_TRANSCRIBE_VIA=task-worker``).

Real Prefect server, a real ``python -m cli worker`` process with its warm
LocalCluster, the store on the real PostgreSQL, and Dask's real scheduling of priorities.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from uuid import UUID

import dask
import pytest
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client

from api.app import create_app
from flows.chunks import chunk_priority
from flows.pool_tasks import dispatchers
from flows.runtime import SCHEDULER_SATURATION
from relay_pools import Workload, get_pool, pools_serving
from relay_settings import PROJECT_ROOT, RelaySettings
from store import job_chunks, jobs
from tasks.split import Chunk
from tasks.wer import word_error_rate
from tests.audio import DATA
from tests.environ import environment
from tests.pg import create_database, drop_database
from tests.prefect_runs import wait_chunk_runs
from tests.worker_process import asr_cpu_worker

TOKEN = "warm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def settings(prefect_server, tmp_path_factory):  # noqa: ARG001 (the server must be up)
    name, url = create_database()
    data = tmp_path_factory.mktemp("warm-data")
    with environment({"RELAY_DATABASE_URL": url, "RELAY_DATA_DIR": str(data)}):
        yield RelaySettings(
            database_url=url, data_dir=str(data), api_token=TOKEN, transcribe_via="task-worker"
        )
        from store.db import engine_for

        engine_for(url).dispose()
    drop_database(name)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings, dispatchers())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def task_worker(settings, tmp_path_factory):
    """``python -m cli worker --pool asr-cpu``: no Dask address, so it keeps its
    own warm LocalCluster (one worker: this machine has two cores for everything)."""
    log = tmp_path_factory.mktemp("asr-tasks") / "worker.log"
    with asr_cpu_worker(
        log,
        4,
        RELAY_DATABASE_URL=settings.database_url,
        RELAY_DATA_DIR=settings.data_dir,
    ):
        yield log


def upload(client: TestClient, path: Path):
    with path.open("rb") as handle:
        return client.post(
            "/api/transcriptions",
            headers=AUTH,
            files={"file": (path.name, handle, "application/octet-stream")},
        )


def wait_final(client: TestClient, job_id: str, limit: float = 240.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {body}")


def wait_task_run(task_run_id: str, limit: float):
    """The task run once it has ended."""
    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as prefect:
        while not (task_run := prefect.read_task_run(UUID(task_run_id))).state.is_final():
            assert time.monotonic() < deadline, task_run.state
            time.sleep(0.2)
    return task_run


def test_uploads_run_on_the_warm_task_worker_and_its_cluster(client, task_worker):
    accepted = upload(client, DATA / "weather.mp3")
    assert accepted.status_code == 202, accepted.text
    first = accepted.json()
    assert first["flow_run_id"] is None and first["task_run_id"]
    done = wait_final(client, first["job_id"])
    assert done["status"] == "completed", (done, task_worker.read_text()[-3000:])
    text = client.get(f"/api/transcriptions/{first['job_id']}/transcript", headers=AUTH).text
    assert word_error_rate((DATA / "weather.txt").read_text(), text) < 0.35, text
    assert done["progress_percent"] == 100.0 and done["work_pool"] == "asr-cpu"

    # Prefect shows it: the background task run, and the transcribe flow run tagged with it.
    task_run = wait_task_run(first["task_run_id"], limit=30)  # it ends just after its job
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(done["flow_run_id"]))
    assert task_run.name == "transcribe-on-asr-cpu" and task_run.state.is_completed()
    assert flow_run.state.is_completed() and flow_run.name and flow_run.flow_id
    assert {f"relay-task-run:{task_run.id}", f"relay-job:{first['job_id']}"} <= set(flow_run.tags)
    # Its chunks are task runs of that flow run itself (no subflow), without the job's tags:
    # a tagged task run takes concurrency slots on the server first, on the decoding worker.
    chunk_runs = wait_chunk_runs(flow_run.id, jobs.get_job(first["job_id"]).chunks_total)
    assert all(not run.tags for run in chunk_runs), [run.tags for run in chunk_runs]
    # The cluster's workers only decode: the task runs stay in the flow's process, where
    # Prefect's bookkeeping of each (0.13 to 0.2 s) costs no worker any decoding time.
    address = re.search(r"warm LocalCluster at (\S+)", task_worker.read_text())
    assert address, task_worker.read_text()[-3000:]
    with Client(address.group(1), timeout=10) as dask_client:
        ran = dask_client.run_on_scheduler(_task_prefixes)
    assert "decode-chunk" in ran and not any("transcribe" in name for name in ran), ran

    # A second job finds the same warm Dask worker process (no cluster start, no model load).
    second = upload(client, DATA / "library.m4a").json()
    assert wait_final(client, second["job_id"])["status"] == "completed"
    pids = {c.worker_pid for job in (first, second) for c in job_chunks.get_chunks(job["job_id"])}
    assert len(pids - {None}) == 1, pids
    hosts = {c.worker_host for job in (first, second) for c in job_chunks.get_chunks(job["job_id"])}
    assert hosts == {socket.gethostname()}, hosts  # each chunk names its worker's host


def test_decoding_progress_reaches_the_store_window_by_window(settings, tmp_path):  # noqa: ARG001
    """What a Dask worker does while it decodes a chunk: the job's progress moves with each
    decoded window (tasks/windows.py; they land a batch at a time), then the chunk's end adds
    only the rest."""

    from tasks.asr import AsrOptions, ProgressReporter, recognise
    from tasks.split import write_chunks
    from tasks.windows import pause_windows
    from tests.audio import meeting_twice

    path = PROJECT_ROOT / "samples" / "meeting.ogg"
    samples = meeting_twice(tmp_path)
    (chunk,) = write_chunks(samples, [], str(tmp_path / "chunks"))
    job = jobs.create_job(str(path), path.name, work_pool="asr-cpu")
    job_chunks.add_chunks(job.id, [(0, chunk.start, chunk.end)])
    reporter = ProgressReporter(job.id, 0, every=0.0, after=0.0)
    seen: list[float] = []

    def report(seconds: float) -> None:
        reporter(seconds)
        seen.append(jobs.get_job(job.id).audio_seconds_done)

    result = recognise(chunk, AsrOptions(), on_progress=report)
    assert len(seen) == len(pause_windows(samples / 32768.0)) // 2 >= 3
    assert seen == sorted(seen) and 0 < seen[0] < seen[-1] <= chunk.duration
    # The last window ends with the chunk; its last sentence ends on the speech before that.
    assert seen[-1] == pytest.approx(chunk.duration, abs=0.01)
    assert 0 <= seen[-1] - result.segments[-1].end < 2.0
    job_chunks.finish_chunk(job.id, 0, asr_seconds=result.asr_seconds, worker_pid=1, segments=3)
    assert jobs.get_job(job.id).audio_seconds_done == pytest.approx(chunk.duration)
    other = jobs.create_job(str(path), path.name, work_pool="asr-cpu")
    job_chunks.add_chunks(other.id, [(0, 0.0, 20.0)])
    ProgressReporter(other.id, 0)(5.0)  # by default nothing in a chunk's first two seconds
    assert jobs.get_job(other.id).audio_seconds_done == 0.0
    ProgressReporter(other.id, 0, after=0.0)(5.0)
    assert jobs.get_job(other.id).audio_seconds_done == 5.0


def test_a_run_from_an_older_dispatch_leaves_the_job_alone(settings):  # noqa: ARG001
    """A job dispatched again (its worker went silent) may be run only by the new dispatch:
    the first task run, arriving late, does nothing."""
    from flows.asr_tasks import run_job
    from store.leases import LeaseOutcome

    job = jobs.create_job("/x/late.wav", "late.wav", None, "asr-cpu", 10.0, "{}", "first")
    assert run_job("asr-cpu", job.id, "/x/late.wav", {}, "older") == LeaseOutcome.SUPERSEDED
    stored = jobs.get_job(job.id)
    assert (stored.status, stored.lease_expires_at, stored.flow_run_id) == ("queued", None, None)
    assert (stored.lease_token, stored.lease_owner) == ("first", None)


def test_a_short_job_lease_is_looked_at_three_times_a_lease():
    from flows.asr_tasks import maintenance_interval

    assert maintenance_interval(60.0) == 15.0  # the default lease: every 15 s
    assert maintenance_interval(15.0) == 5.0  # a stranded job waits at most 20 s, not 30
    assert maintenance_interval(1.5) == 1.0


def test_the_task_pools_pass_what_the_deployments_pass():
    import yaml

    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    for pool in pools_serving(Workload.TRANSCRIPTION):
        options = get_pool(pool).options
        (deployment,) = [d for d in declared if d["name"] == pool]
        assert options and {k: deployment["parameters"][k] for k in options} == options


def test_dask_runs_every_first_chunk_then_the_shorter_jobs_first():
    """Three jobs waiting behind a busy worker (the bench scenario: 10, 5 and 15 minutes,
    submitted in that order): Dask takes every job's first chunk, then the 5-minute job, then
    the 10-minute one, then the 15-minute one."""
    RAN.clear()
    GATE.clear()

    def split(minutes: int) -> list[Chunk]:
        return [
            Chunk(i, i * 120.0, min((i + 1) * 120.0, minutes * 60.0), "")
            for i in range(-(-minutes * 60 // 120))
        ]

    with (
        dask.config.set({"distributed.scheduler.worker-saturation": SCHEDULER_SATURATION}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        busy = dask_client.submit(_hold, pure=False)
        submitted, futures = {}, [busy]
        for job, minutes in (("ten", 10), ("five", 5), ("fifteen", 15)):
            chunks = split(minutes)
            for chunk in chunks:
                priority = chunk_priority(minutes * 60.0, chunk.index)  # as transcribe_chunk
                future = dask_client.submit(_work, job, chunk.index, priority=priority, pure=False)
                submitted[future.key] = (job, chunk.index)
                futures.append(future)
        # Tasks Dask had already handed to the worker run first, whatever came after them
        # (the first few of a new kind of task are not queued at the scheduler).
        (worker,) = cluster.workers.values()
        _wait_until_placed(dask_client, set(submitted), worker)
        held = {submitted[key] for key in worker.state.tasks if key in submitted}
        GATE.set()
        dask_client.gather(futures)
    assert len(held) <= 2, held
    rest = [pair for pair in RAN if pair not in held]
    firsts = {(job, 0) for job in ("ten", "five", "fifteen")} - held
    assert set(rest[: len(firsts)]) == firsts, RAN
    expected = [
        (job, index)
        for job, count in (("five", 3), ("ten", 5), ("fifteen", 8))
        for index in range(1, count)
        if (job, index) not in held
    ]
    assert rest[len(firsts) :] == expected, RAN


def test_a_job_left_by_a_dead_task_worker_is_run_again(client, settings, task_worker):
    """A job whose coordinator died mid-run (its lease ran out) is taken up again by the
    pool's task worker with the options it was submitted with, and completes."""
    import json
    import shutil
    from datetime import timedelta

    from sqlalchemy import update
    from sqlmodel import col

    from store.db import session_scope
    from store.models import TranscriptionJob, utcnow

    folder = Path(settings.data_dir) / "uploads" / "orphan"
    folder.mkdir(parents=True)
    source = shutil.copy(DATA / "weather.mp3", folder / "weather.mp3")
    job = jobs.create_job(
        str(source), "weather.mp3", None, "asr-cpu", 20.0, json.dumps({"word_timestamps": True})
    )
    jobs.start_job(job.id, None, 20.0, f"{settings.data_dir}/jobs/{job.id}")
    job_chunks.add_chunks(job.id, [(0, 0.0, 20.0)])
    with session_scope() as session:  # its worker held it, then died: the lease ran out
        session.execute(
            update(TranscriptionJob)
            .where(col(TranscriptionJob.id) == job.id)
            .values(
                lease_owner="gone:1",
                lease_token="dead-run",
                lease_expires_at=utcnow() - timedelta(minutes=1),
            )
        )
    done = wait_final(client, job.id, limit=180)
    assert done["status"] == "completed", (done, task_worker.read_text()[-3000:])
    assert done["chunks"]["done"] == done["chunks"]["total"] == 1
    transcript = client.get(
        f"/api/transcriptions/{job.id}/transcript", params={"format": "json"}, headers=AUTH
    ).json()
    assert all(segment["words"] for segment in transcript["segments"])  # its own options
    assert f"job {job.id} lost its worker" in task_worker.read_text()


# The one Dask worker runs in this process (processes=False): it records into this list.
RAN: list[tuple[str, int]] = []


def _task_prefixes(dask_scheduler) -> list[str]:
    return sorted(dask_scheduler.task_prefixes)


def _task_states(dask_scheduler) -> dict:
    return {key: task.state for key, task in dask_scheduler.tasks.items()}


def _wait_until_placed(dask_client: Client, keys: set, worker, limit: float = 30.0) -> None:
    """Until every chunk waits behind the busy worker: queued at the scheduler, or handed
    to the worker and known there."""
    deadline = time.monotonic() + limit
    while True:
        states = dask_client.run_on_scheduler(_task_states)
        handed = {key for key in keys if states.get(key) == "processing"}
        placed = all(states.get(key) in ("processing", "queued") for key in keys)
        if placed and handed <= set(worker.state.tasks):
            return
        assert time.monotonic() < deadline, {key: states.get(key) for key in keys}
        time.sleep(0.05)


def _work(job: str, index: int) -> None:
    RAN.append((job, index))


GATE = threading.Event()


def _hold() -> None:
    GATE.wait(timeout=30)


def test_cancelling_a_running_job_stops_its_waiting_chunks(client, settings, task_worker):
    """DELETE on a running job: the job is cancelled at once, its waiting chunks never run,
    the flow run ends Cancelled and no transcript or chunk folder is left."""
    import numpy as np

    from tasks.media import decode, probe
    from tests.audio import save, silence

    speech = decode(probe(PROJECT_ROOT / "samples" / "meeting.ogg"))
    long_file = save(
        np.concatenate([np.concatenate([speech, silence(1.0)]) for _ in range(10)]),
        Path(settings.data_dir) / "four-minutes.flac",
    )
    accepted = upload(client, long_file).json()
    job_id = accepted["job_id"]
    deadline = time.monotonic() + 120
    while (body := client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json())[
        "audio_seconds_done"
    ] == 0:
        assert time.monotonic() < deadline and body["status"] in ("queued", "running"), body
        time.sleep(0.2)
    assert body["chunks"]["total"] >= 3
    cancelled = client.post(f"/api/transcriptions/{job_id}/cancel", headers=AUTH)
    assert cancelled.json()["status"] == "cancelled"
    wait_task_run(accepted["task_run_id"], limit=120)
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(body["flow_run_id"]))
    job = jobs.get_job(job_id)
    assert job.status == "cancelled", task_worker.read_text()[-3000:]
    assert job.chunks_done < job.chunks_total, job
    assert flow_run.state.is_cancelled(), flow_run.state
    assert not (Path(settings.data_dir) / "jobs" / job_id).exists()
