"""Background-task submission: Prefect's plain ``Task.delay()`` against Relay's ``adefer`` /
``defer`` (flows/deferred.py), in one run, against one real Prefect server and one task worker.

A ``prefect server start`` on a fresh PostgreSQL database, as the stack runs it (or, with
``--embedded``, the temporary SQLite server flows start), and one Relay task worker
(``serve_warm``, as ``python -m cli worker`` runs it) in a process of its own serving a
no-op task. Each contender submits ``--runs`` task runs one after another, after a warm-up
run that is picked up and finished, in blocks of ``--runs / --rounds`` in a rotating order;
the worker's CPU time is read around each block.
Prints one JSON line per contender. Run: ``.venv/bin/python -m bench.delay``.

- ``submit``: the call's wall time in the caller: what a request handler waits for.
- ``pickup``: from the task run's creation (server clock) to its Running state: the
  worker's side, where a ``.delay()`` run first rebuilds the caller's settings.
- ``worker_cpu_ms_per_run``: the worker process's CPU time divided by the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import prefect
import psutil
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.stack import wait_http
from flows.deferred import adefer, defer, serve_warm
from flows.runtime import prefect_api

WORKER_LIMIT = 10
PREFECT_PORT = 4392
FINISH_TIMEOUT_SECONDS = 300.0


@task(name="bench-delay-noop", cache_policy=NO_CACHE, persist_result=False, retries=0)
def noop(i: int) -> int:
    """Nothing to do: what is measured is getting a run to a worker."""
    return i


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"median_ms": at(0.5), "p95_ms": at(0.95)}


class OpenClient:
    """One long-lived async Prefect client on a loop thread, as the API holds one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.client = self.call(self._open())

    async def _open(self):
        return await get_client().__aenter__()

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.call(self.client.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)


def contenders(api: OpenClient) -> dict[str, Callable[[int], str]]:
    """Each way of creating ``noop(i)``'s background run; each returns the task run id."""
    return {
        "delay": lambda i: str(noop.delay(i).task_run_id),
        "relay_adefer": lambda i: api.call(adefer(api.client, noop, {"i": i})),
        "relay_defer": lambda i: defer(noop, {"i": i}),
    }


def wait_finished(ids: list[str]) -> list:
    """The task runs, once every one has finished (completed or not)."""
    wanted = TaskRunFilter(id=TaskRunFilterId(any_=[UUID(i) for i in ids]))
    deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=wanted, limit=len(ids))
            if len(runs) == len(ids) and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} task runs not finished in time")
            time.sleep(0.2)  # polling the API for an outcome, not ordering anything


@dataclass
class Tally:
    """One contender's figures, gathered over the rounds."""

    submit_seconds: list[float] = field(default_factory=list)
    pickup_seconds: list[float] = field(default_factory=list)
    completed: int = 0
    worker_cpu_seconds: float = 0.0


def measure_block(
    submit: Callable[[int], str], runs: int, worker: psutil.Process, tally: Tally
) -> None:
    """Submit ``runs`` runs back to back, wait until the worker has finished them all."""
    cpu_before = sum(worker.cpu_times()[:2])
    ids = []
    for i in range(runs):
        started = time.perf_counter()
        ids.append(submit(i))
        tally.submit_seconds.append(time.perf_counter() - started)
    finished = wait_finished(ids)
    tally.worker_cpu_seconds += sum(worker.cpu_times()[:2]) - cpu_before
    tally.completed += sum(r.state.is_completed() for r in finished)
    tally.pickup_seconds += [(r.start_time - r.created).total_seconds() for r in finished]


def measure(
    ways: dict[str, Callable[[int], str]], runs: int, rounds: int, worker: psutil.Process
) -> None:
    """Each contender in turn, ``rounds`` times in a rotating order (the machine's load
    drifts; no contender should always go first), then one line per contender."""
    for submit in ways.values():
        wait_finished([submit(-1)])  # warm-up: the first store, connection and subscription
    tallies = {name: Tally() for name in ways}
    names = list(ways)
    per_block = max(1, runs // rounds)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            measure_block(ways[name], per_block, worker, tallies[name])
    for name, tally in tallies.items():
        count = len(tally.submit_seconds)
        emit(
            figure="background_task_submission",
            contender=name,
            prefect=prefect.__version__,
            runs=count,
            completed=tally.completed,
            submit=percentiles(tally.submit_seconds),
            pickup=percentiles(tally.pickup_seconds),
            worker_cpu_ms_per_run=round(1000 * tally.worker_cpu_seconds / count, 1),
        )


@contextmanager
def postgres_server(work: Path) -> Iterator[str]:
    """``prefect server start`` on a fresh PostgreSQL database, as the stack runs it: the
    embedded SQLite server stalls creates for seconds while a worker writes its runs."""
    from tests.pg import create_database, drop_database

    name, url = create_database("relay_bench_delay")
    api_url = f"http://127.0.0.1:{PREFECT_PORT}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(work),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": url.replace(
            "postgresql://", "postgresql+asyncpg://"
        ),
    }
    prefect_cli = str(Path(sys.executable).parent / "prefect")
    with (work / "server.log").open("w") as log:
        server = subprocess.Popen(
            [prefect_cli, "server", "start", "--port", str(PREFECT_PORT)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"{api_url}/health", "the Prefect server")
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        server.terminate()
        server.wait(timeout=60)
        drop_database(name)


@contextmanager
def task_worker() -> Iterator[psutil.Process]:
    # A log line per run would cost the worker more than the runs: warnings only.
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "bench.delay", "--worker"], env=env)
    try:
        yield psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delay", description=__doc__)
    parser.add_argument("--runs", type=int, default=50, help="submissions per contender")
    parser.add_argument("--rounds", type=int, default=5, help="blocks per contender, rotated")
    parser.add_argument(
        "--embedded", action="store_true", help="the temporary SQLite server, not PostgreSQL"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_warm([noop], WORKER_LIMIT)
        return
    with ExitStack() as stack:
        if args.embedded:
            stack.enter_context(prefect_api())
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-delay-")))
            stack.enter_context(postgres_server(work))
        worker = stack.enter_context(task_worker())
        api = OpenClient()
        try:
            measure(contenders(api), args.runs, args.rounds, worker)
        finally:
            api.close()


if __name__ == "__main__":
    main()
