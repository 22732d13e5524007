"""A task worker told to stop exits within RELAY_WORKERS_STOP_SECONDS, even when the
Prefect server stops answering (flows/stopping.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect.settings import PREFECT_API_URL

from flows.bot import dispatch
from flows.pool_tasks import RunCounter
from flows.stopping import wait_for_runs
from relay_settings import PROJECT_ROOT
from store.db import engine_for
from store.workers import list_workers
from tests.frozen_proxy import frozen_proxy
from tests.pg import create_database, drop_database

STOP_SECONDS = 1.0


def test_waiting_for_runs_ends_when_the_last_run_ends():
    running, started, finish = RunCounter(), threading.Event(), threading.Event()

    def run() -> None:
        with running:
            started.set()
            finish.wait()

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    threading.Timer(0.2, finish.set).start()
    assert wait_for_runs(running.count, time.monotonic() + 60) == 0
    assert finish.is_set()
    thread.join()


def test_waiting_for_runs_gives_up_at_the_deadline():
    running = RunCounter()
    with running:
        assert wait_for_runs(running.count, time.monotonic() + 0.2) == 1
    assert wait_for_runs(running.count, time.monotonic() - 1) == 0


@pytest.fixture
def store_url() -> Iterator[str]:
    name, url = create_database("relay_stop")
    yield url
    engine_for(url).dispose()
    drop_database(name)


def _wait_for_log(log: Path, text: str, count: int = 1, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} never logged:\n{log.read_text()}"
        threading.Event().wait(0.1)


@pytest.mark.usefixtures("prefect_server")
def test_a_stopped_worker_exits_within_its_bound_when_prefect_stops_answering(store_url, tmp_path):
    server = urlsplit(PREFECT_API_URL.value())
    with frozen_proxy((server.hostname or "127.0.0.1", server.port or 80)) as proxy:
        env = {
            **os.environ,
            "PREFECT_API_URL": f"http://127.0.0.1:{proxy.port}{server.path}",
            "RELAY_DATABASE_URL": store_url,
            "RELAY_METRICS_WORKER_PORT": "0",
            "RELAY_WORKERS_STOP_SECONDS": str(STOP_SECONDS),
        }
        log = tmp_path / "worker.log"
        command = [sys.executable, "-m", "cli", "worker", "--pool", "bot-chat", "--limit", "2"]
        worker = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        try:
            _wait_for_log(log, "Subscribing to runs")
            # Runs it answers leave Prefect events to send (requests unknown to this store:
            # each ends at once, "not claimed").
            for _ in range(3):
                dispatch(str(uuid.uuid4()), "bot-chat")
            _wait_for_log(log, "Finished in state", count=3)
            assert [w.pid for w in list_workers(engine_for(store_url))] == [worker.pid]
            proxy.freeze()  # the Prefect server, as this worker sees it, stops answering
            stopping = time.monotonic()
            worker.terminate()
            assert worker.wait(timeout=60) == 0, log.read_text()
            took = time.monotonic() - stopping
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    output = log.read_text()
    assert "task worker for bot-chat stopping" in output
    # Prefect alone waits for its unsent events without limit (10 s and more here); the
    # worker gave them its bound and left.
    assert f"not sent within {STOP_SECONDS:.0f} s: exiting without them" in output, output
    # Its bound, and the store's retirement before it (Prefect alone: 10 s and more).
    assert took < STOP_SECONDS + 8, took
    assert list_workers(engine_for(store_url)) == [], "a stopped worker is still listed"
