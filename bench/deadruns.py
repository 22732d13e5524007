"""Dead flow runs (issue 15, item 5): a process worker and its flow-run process SIGKILLed
together; how long until Prefect marks the run Crashed and Relay runs its job again.

A real Prefect server (a temporary one, or ``PREFECT_API_URL`` with ``--use-api``) with
Relay's bootstrap (the dead-run automation) and the ``transcribe/asr-cpu`` deployment of
prefect.yaml; a process worker of ``asr-cpu`` in a process group of its own, and a
transcription task worker of the pool (whose maintenance pass recovers stranded jobs). A
10-minute file is submitted; once its run is Running, has sent a heartbeat, holds its
job's lease and has cut its first chunk, the worker's process group and the
flow-run process's group are killed with SIGKILL in one go: nobody is left to report.

Figures come from the server's and the store's own timestamps where they exist:

- ``seconds_to_crashed``: SIGKILL to the run's Crashed state (set by the automation:
  90 s after the last heartbeat, evaluated every 5 s, so 60 to 95 s after the kill);
- ``seconds_to_taken_over``: SIGKILL to the job's lease taken by the task worker
  (the lease runs out ``RELAY_JOB_LEASE_SECONDS`` after its last renewal, then the next
  maintenance pass, every 15 s, takes it; polled, the store keeps no time of it);
- ``seconds_to_running_again``: SIGKILL to the job started again by the new run.

Prints one JSON line. Run: ``.venv/bin/python -m bench.deadruns`` (about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import imageio_ffmpeg
import psutil
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.settings import PREFECT_API_URL

from blocks.prefect_sync import settled
from relay_settings import PROJECT_ROOT
from store.models import as_utc

POOL = "asr-cpu"
DEPLOYMENT = "transcribe/asr-cpu"
PREFECT = str(Path(sys.executable).parent / "prefect")
SAMPLE = PROJECT_ROOT / "tests" / "data" / "weather.mp3"  # 16 s of speech
HEARTBEAT = "prefect.flow-run.heartbeat"
# A process worker of the pool, as `make stack` starts one.
PROCESS_WORKER = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"]
T = TypeVar("T")


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


@dataclass(frozen=True)
class DeadRun:
    """A run whose worker and flow-run process were killed, and when (wall clock, UTC)."""

    flow_run_id: str
    job_id: str
    lease_token: str
    killed_at: datetime
    killed_pids: tuple[int, ...]
    last_heartbeat_at: datetime


@dataclass(frozen=True)
class Figures:
    """What became of a dead run; seconds counted from the SIGKILL."""

    flow_run_id: str
    seconds_to_crashed: float
    seconds_to_taken_over: float
    seconds_to_running_again: float
    seconds_since_heartbeat_at_kill: float
    crash_message: str
    job_status: str
    job_options: str  # what the run that took the job over runs it with
    heartbeats: dict[str, int]  # flow run id -> heartbeat events the server received


def long_input(folder: Path, loops: int = 40) -> Path:
    """The sample ``loops`` times over (about 10 minutes): a run that stays running."""
    path = folder / "long.mp3"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [ffmpeg, "-y", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(SAMPLE)]
    subprocess.run([*command, "-c", "copy", str(path)], check=True)
    return path


def wait_for(check: Callable[[], T | None], limit: float, what: str, every: float = 0.5) -> T:
    """Poll ``check`` until it returns something, within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {limit:.0f} s")


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A process in a process group of its own; its whole group is stopped at the end."""
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace`` s (nothing if already gone)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def task_worker_ready(log: Path) -> bool | None:
    """The task worker listens for its pool's task runs (the stack waits for this line)."""
    return True if "Subscribing to runs of task(s)" in log.read_text(errors="replace") else None


def heartbeats_since(since: datetime) -> dict[str, list[datetime]]:
    """Heartbeat events the server received since ``since``, by flow run id."""
    found: dict[str, list[datetime]] = {}
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
                event=EventNameFilter(name=[HEARTBEAT]),
            ),
            limit=50,  # the most the API gives a page; a scenario sees a handful
        )
    for event in page.events:
        run_id = event.resource.id.removeprefix("prefect.flow-run.")
        found.setdefault(run_id, []).append(event.occurred)
    return found


def kill_run(
    worker: subprocess.Popen,
    job_id: str,
    since: datetime,
    limit: float,
    ready: Callable[[], bool | None],
) -> DeadRun:
    """Submit the long file, wait until its run is fully under way (and ``ready()``: the
    task worker listens), then SIGKILL the worker's process group and the flow-run
    process's group together."""
    from prefect.deployments import run_deployment

    from store import jobs

    source = str(long_input(Path(tempfile.mkdtemp(prefix="relay-deadrun-"))))
    # A non-default option: the run that takes the job over must run it with it too.
    parameters = {"source": source, "job_id": job_id, "beam_size": 3}
    run_id = str(settled(run_deployment(DEPLOYMENT, parameters=parameters, timeout=0)).id)

    def under_way() -> datetime | None:
        if not ready():
            return None
        job = jobs.get_job(job_id)
        if job is None or job.lease_expires_at is None or job.chunks_total < 1:
            return None  # the run has not taken the job's lease or cut its first chunk yet
        beats = heartbeats_since(since).get(run_id)
        return max(beats) if beats else None

    last_beat = wait_for(under_way, limit, "the run under way", every=1.0)
    job = jobs.get_job(job_id)
    assert job is not None and job.lease_token is not None
    children = psutil.Process(worker.pid).children(recursive=True)
    groups = {os.getpgid(worker.pid)} | {g for child in children if (g := _group(child))}
    for group in groups:  # one after the other without a pause: nobody is left to report
        os.killpg(group, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    return DeadRun(
        run_id,
        job_id,
        job.lease_token,
        killed_at,
        tuple(sorted({worker.pid, *(child.pid for child in children)})),
        last_beat,
    )


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def follow(dead: DeadRun, limit: float, since: datetime) -> Figures:
    """Watch the job until a new run has started it and the run until it has ended; the
    moments come from the server's and the store's timestamps, except the takeover (the
    store keeps no time of it: polled every 0.2 s)."""
    from store import jobs

    taken_at: datetime | None = None
    run = job = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (run is None or job is None):
        found = jobs.get_job(dead.job_id)
        if taken_at is None and found is not None and found.lease_token != dead.lease_token:
            taken_at = datetime.now(UTC)
        if found is not None and found.started_at and found.flow_run_id != dead.flow_run_id:
            job = found  # started again by the run that took it over
        if run is None:
            run = _if_final(dead.flow_run_id)
        time.sleep(0.2)
    if run is None or job is None or run.state is None:
        raise TimeoutError(f"within {limit:.0f} s: run ended {run is not None}, job {job}")
    return Figures(
        flow_run_id=dead.flow_run_id,
        seconds_to_crashed=_after(dead.killed_at, run.state.timestamp),
        seconds_to_taken_over=_after(dead.killed_at, taken_at),
        seconds_to_running_again=_after(dead.killed_at, as_utc(job.started_at)),
        seconds_since_heartbeat_at_kill=_after(dead.last_heartbeat_at, dead.killed_at),
        crash_message=run.state.message or "",
        job_status=str(job.status),
        job_options=job.options or "",
        heartbeats={key: len(value) for key, value in heartbeats_since(since).items()},
    )


def _if_final(flow_run_id: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
    return run if run.state and run.state.is_final() else None


def _after(start: datetime, end: datetime | None) -> float:
    return round((end - start).total_seconds(), 1) if end else -1.0


def run_scenario(env: dict[str, str], workdir: Path, limit: float = 150.0) -> Figures:
    """Workers up, a run killed with its worker, what came of it; the API at ``env``'s
    ``PREFECT_API_URL`` must have been bootstrapped and the deployment deployed."""
    since = datetime.now(UTC)
    with ExitStack() as stack:
        task_log = workdir / "task-worker.log"
        tasks = [sys.executable, "-m", "cli", "worker", "--pool", POOL, "--limit", "2"]
        stack.enter_context(started(tasks, env, task_log))
        worker_log = workdir / "process-worker.log"
        worker = stack.enter_context(started(PROCESS_WORKER, env, worker_log))
        ready = partial(task_worker_ready, task_log)
        dead = kill_run(worker, uuid.uuid4().hex, since, limit, ready)
        return follow(dead, limit, since)


def deploy(env: dict[str, str]) -> None:
    """The transcription deployment of prefect.yaml, as `make stack` deploys it."""
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", DEPLOYMENT],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def scenario_env(api_url: str, database_url: str, data_dir: str) -> dict[str, str]:
    """What the workers of this run share: the server, the store, one Dask worker each."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": data_dir,
        "RELAY_DASK_WORKERS": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--use-api", action="store_true", help="PREFECT_API_URL's server")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-deadruns-"))
    os.environ["RELAY_DATABASE_URL"] = f"sqlite:///{workdir / 'relay.db'}"
    os.environ["RELAY_DATA_DIR"] = str(workdir / "data")
    # The temporary server's telemetry competes for its SQLite file (as in tests/conftest.py).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from deployments.bootstrap import bootstrap
    from relay_settings import reload_settings

    reload_settings()
    with ExitStack() as stack:
        if not args.use_api:
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        env = scenario_env(
            str(PREFECT_API_URL.value()), os.environ["RELAY_DATABASE_URL"], str(workdir / "data")
        )
        bootstrap()
        deploy(env)
        figures = run_scenario(env, workdir)
    emit(figure="dead_flow_run", **asdict(figures), logs=str(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
