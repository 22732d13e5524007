"""Metrics of Relay's processes as they are started for real: several API processes adding up
their counters (prometheus_client's multiprocess mode, its folder emptied at start), and
the Dask scheduler and workers and the Prefect process workers as `make stack` starts them
(Dask's /metrics, Prefect's --with-healthcheck)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL

from deployments.stack import (
    dask_scheduler_command,
    dask_workers_command,
    process_worker_command,
    process_worker_env,
    stack_env,
)
from relay_settings import PROJECT_ROOT
from tests.metrics_scrape import parse, total
from tests.test_dask_config import free_port

pytestmark = pytest.mark.usefixtures("prefect_server")


@contextmanager
def running(commands: list[list[str]], env: dict[str, str], log: Path) -> Iterator[None]:
    """The commands as processes for the block, their output in ``log``."""
    with log.open("w") as output:
        processes = [
            subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=output)
            for command in commands
        ]
        try:
            yield
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def wait_for(url: str, log: Path, limit: float = 120.0, **headers: str) -> httpx.Response:
    """The first answer below 500 at ``url``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code < 500:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer: {log.read_text()[-3000:]}")


def test_several_api_processes_add_up_their_counters(tmp_path):
    port, folder = free_port(), tmp_path / "metrics"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_DATA_DIR": str(tmp_path / "data"),
        "RELAY_API_PORT": str(port),
        "RELAY_API_WORKERS": "2",
        "RELAY_API_ACCESS_LOG": "false",
        "RELAY_METRICS_MULTIPROC_DIR": str(folder),
    }
    # An earlier run's counts in the folder: the API must start from nothing.
    earlier = "from tasks.metrics import http_request_done as d; d('/api/queue','GET','2xx',1)"
    for _ in range(2):
        stale = {**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        folder.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-c", earlier], cwd=PROJECT_ROOT, env=stale, check=True)
    assert len(list(folder.glob("*.db"))) == 4  # two processes' counters and histograms
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with running([[sys.executable, "-m", "cli", "api"]], env, log):
        wait_for(f"{base}/metrics", log)
        sent = 0
        with ThreadPoolExecutor(8) as pool:  # new connections: both processes take some
            deadline = time.monotonic() + 60
            while len({p.stem.rsplit("_", 1)[1] for p in folder.glob("counter_*.db")}) < 2:
                assert time.monotonic() < deadline, "one process took every request"
                answers = list(pool.map(lambda _: httpx.get(f"{base}/api/queue"), range(16)))
                assert all(a.status_code == 200 for a in answers)
                sent += len(answers)
        for _ in range(6):  # whichever process answers the scrape, it counts them all
            samples = parse(httpx.get(f"{base}/metrics").text)
            assert total(samples, "http_requests_total", handler="/api/queue") == sent
            counted = total(samples, "http_request_duration_seconds_count", handler="/api/queue")
            assert counted == sent


def test_dask_scheduler_and_worker_as_the_stack_starts_them_serve_metrics(state_dir, tmp_path):
    port, scheduler_http, worker_http = free_port(), free_port(), free_port()
    env = {
        **stack_env(),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_DATA_DIR": str(state_dir / "data"),
    }
    commands = [
        dask_scheduler_command(port, scheduler_http),
        dask_workers_command(port, 1, worker_http),
    ]
    log = tmp_path / "dask.log"
    with running(commands, env, log):
        worker = wait_for(f"http://127.0.0.1:{worker_http}/metrics", log)
        scheduler = wait_for(f"http://127.0.0.1:{scheduler_http}/metrics", log)
        # The scheduler counts the worker once it has registered.
        deadline = time.monotonic() + 60
        while total(parse(scheduler.text), "dask_scheduler_workers") < 1:
            assert time.monotonic() < deadline, scheduler.text[-2000:]
            time.sleep(0.5)
            scheduler = httpx.get(f"http://127.0.0.1:{scheduler_http}/metrics")
    assert "Prometheus metrics are not available" not in scheduler.text + worker.text
    assert any(name.startswith("dask_worker_") for name, _ in parse(worker.text))
    assert any(name.startswith("dask_scheduler_") for name, _ in parse(scheduler.text))


def test_a_process_worker_as_the_stack_starts_it_answers_its_health_check(tmp_path):
    health = free_port()
    env = process_worker_env({**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, health)
    log = tmp_path / "worker.log"
    with running([process_worker_command("metrics-health-probe", 1)], env, log):
        answer = wait_for(f"http://127.0.0.1:{health}/health", log)
    assert answer.status_code == 200 and answer.json() == {"message": "OK"}
