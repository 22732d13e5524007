"""Health and worker status through the real API: live, ready (store, Prefect, Dask) and
/api/workers with real task workers, a real Prefect worker and a real Dask cluster, on
PostgreSQL and the session's Prefect server; and `python -m cli workers`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from api.app import create_app
from cli.main import main
from flows.pool_tasks import RunCounter, _bind_pool
from relay_settings import PROJECT_ROOT, RelaySettings
from store.workers import WorkerKind
from tests.environ import environment
from tests.pg import create_database, drop_database

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "health-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT = 0.5  # the workers' RELAY_WORKERS_HEARTBEAT_SECONDS here: stale after 1.5 s
STOP_SECONDS = 5  # RELAY_WORKERS_STOP_SECONDS: a stopped task worker is gone by then


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    """A PostgreSQL job store for the module, the process's configured store meanwhile."""
    name, url = create_database("relay_health")
    with environment({"RELAY_DATABASE_URL": url}):
        yield url
    from store.db import engine_for

    engine_for(url).dispose()
    drop_database(name)


def _settings(url: str, **values: Any) -> RelaySettings:
    given: dict[str, Any] = {"health_timeout_seconds": 2, **values}
    return RelaySettings(database_url=url, api_token=TOKEN, **given)


@pytest.fixture(scope="module")
def client(store_url) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(store_url), {})) as test_client:
        yield test_client


def _wait_for(what: Callable[[], object], limit: float = 60.0, why: str = "") -> object:
    deadline = time.monotonic() + limit
    while not (found := what()):
        assert time.monotonic() < deadline, why or "timed out"
        time.sleep(0.2)
    return found


def test_live_is_200_without_a_token_and_without_any_dependency(client):
    assert client.get("/api/health/live").json() == {"status": "ok"}
    broken = _settings(f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere")
    with TestClient(create_app(broken, {})) as down:
        response = down.get("/api/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_is_200_with_each_check_and_its_latency(client):
    response = client.get("/api/health/ready")  # no token: probes cannot send one
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    for name in ("store", "prefect"):
        check = body["checks"][name]
        assert check["status"] == "ok" and check["error"] is None, body
        assert 0 < check["latency_ms"] < 2000, check
    assert body["checks"]["dask"] is None  # RELAY_DASK_ADDRESS is not set
    assert set(body["task_workers"]) == {"asr-cpu", "asr-gpu", "bot-chat", "bot-media"}


def test_ready_is_503_naming_the_store_when_it_is_unreachable():
    port = _closed_port()
    broken = _settings(f"postgresql://relay:pa55word@127.0.0.1:{port}/nowhere")
    with TestClient(create_app(broken, {})) as down:
        response = down.get("/api/health/ready")
        census = down.get("/api/workers", headers=AUTH).json()
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready" and body["task_workers"] is None
    assert body["checks"]["store"]["status"] == "error" and body["checks"]["store"]["error"]
    assert body["checks"]["prefect"]["status"] == "ok"
    assert str(port) not in response.text and "pa55word" not in response.text  # open endpoint
    assert census["sources"]["store"]["status"] == "error"  # a 200, the failure in the body


def test_ready_is_503_naming_prefect_when_it_is_unreachable(store_url):
    app = create_app(_settings(store_url, health_timeout_seconds=1), {})
    url = f"http://127.0.0.1:{_closed_port()}/api"

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as api:
            return await api.get("/api/health/ready"), await api.get("/api/workers", headers=AUTH)

    with temporary_settings({PREFECT_API_URL: url}):  # the app's Prefect clients read it
        ready, workers = asyncio.run(ask())
    assert ready.status_code == 503, ready.text
    checks = ready.json()["checks"]
    assert checks["prefect"]["status"] == "error" and checks["store"]["status"] == "ok"
    assert url not in ready.text
    assert workers.status_code == 200
    assert workers.json()["sources"]["prefect"]["status"] == "error"


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None,
        protocol="tcp://",
    ) as cluster:  # fmt: skip
        yield cluster.scheduler_address


def test_ready_and_workers_check_the_dask_scheduler_when_one_is_configured(store_url, dask_cluster):
    app = create_app(_settings(store_url, dask_address=dask_cluster), {})
    with TestClient(app) as api:
        ready = api.get("/api/health/ready")
        census = api.get("/api/workers", headers=AUTH).json()
    assert ready.status_code == 200 and ready.json()["checks"]["dask"]["status"] == "ok"
    assert census["sources"]["dask"] == {"status": "ok", "detail": None}
    (dask,) = [w for w in census["workers"] if w["kind"] == WorkerKind.DASK_WORKER]
    assert dask["host"] == "127.0.0.1" and not dask["stale"] and dask["in_flight"] == 0
    assert dask["last_heartbeat_at"].endswith(("Z", "+00:00"))

    gone = f"tcp://127.0.0.1:{_closed_port()}"
    with TestClient(create_app(_settings(store_url, dask_address=gone), {})) as api:
        ready = api.get("/api/health/ready")
        census = api.get("/api/workers", headers=AUTH).json()
    assert ready.status_code == 503 and ready.json()["checks"]["dask"]["status"] == "error"
    assert gone not in ready.text
    assert census["sources"]["dask"]["status"] == "error"


def test_workers_needs_the_token(client):
    assert client.get("/api/workers").status_code == 401


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


@dataclass
class Fleet:
    """Real workers against the module's store and the session's Prefect server."""

    killed: subprocess.Popen  # a bot-chat task worker the test kills with SIGKILL
    stopped: subprocess.Popen  # a bot-chat task worker the test stops with SIGTERM
    prefect: subprocess.Popen  # a Prefect process worker of batch-video
    prefect_name: str


@pytest.fixture(scope="module")
def fleet(store_url, tmp_path_factory) -> Iterator[Fleet]:
    """Started at once (each takes seconds to import Prefect): two task workers beating
    every 0.5 s and a Prefect worker beating every second."""
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RELAY_DATABASE_URL": store_url,
        "RELAY_WORKERS_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "1",  # stale 3 s after it is killed
        "RELAY_WORKERS_STOP_SECONDS": str(STOP_SECONDS),
    }
    logs = tmp_path_factory.mktemp("fleet")
    task_worker = [sys.executable, "-m", "cli", "worker", "--pool", "bot-chat", "--limit", "2"]
    name = f"health-{uuid.uuid4().hex[:8]}"
    # Its own queue: it never takes a flow run another test left in the pool.
    prefect_worker = [str(Path(sys.executable).parent / "prefect"), "worker", "start"]
    prefect_worker += ["--pool", "batch-video", "--type", "process"]
    prefect_worker += ["--name", name, "--work-queue", name]
    started = Fleet(
        _start(task_worker, logs / "killed.log", env),
        _start(task_worker, logs / "stopped.log", env),
        _start(prefect_worker, logs / "prefect-worker.log", env),
        name,
    )
    yield started
    for process in (started.killed, started.stopped, started.prefect):
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _census(client) -> dict:
    response = client.get("/api/workers", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _by_pid(client, pid: int) -> dict | None:
    found = [w for w in _census(client)["workers"] if w["pid"] == pid]
    return found[0] if found else None


def _listed_live(client, pid: int) -> dict | None:
    """Its row once listed and not stale. Stale is 3 heartbeats of 0.5 s here: a beat late by
    more than 1.5 s on a loaded host is not what these tests are about, so they wait for a
    live row (the census's rule itself: tests/test_workers.py)."""
    row = _by_pid(client, pid)
    return row if row and not row["stale"] else None


def test_workers_lists_real_task_workers_and_marks_a_killed_one_stale(client, fleet, capsys):
    killed, stopped = fleet.killed, fleet.stopped
    for pid in (killed.pid, stopped.pid):
        _wait_for(partial(_listed_live, client, pid), 90, "a task worker never beat")
    row = _by_pid(client, killed.pid)
    assert row["kind"] == "task-worker" and row["pool"] == "bot-chat"
    assert row["host"] == socket.gethostname() and row["name"] == f"{row['host']}:{killed.pid}"
    assert row["in_flight"] == 0 and row["heartbeat_seconds"] == HEARTBEAT
    assert not row["stale"] and row["started_at"] <= row["last_heartbeat_at"]
    assert client.get("/api/health/ready").json()["task_workers"]["bot-chat"] == 2
    sources = _census(client)["sources"]
    assert sources["store"]["status"] == sources["prefect"]["status"] == "ok", sources
    assert sources["dask"] == {"status": "skipped", "detail": "RELAY_DASK_ADDRESS is not set"}

    assert main(["workers"]) == 0  # the CLI, in this process: same store, same Prefect
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["KIND", "POOL", "HOST"] and "STALE" in header
    mine = [r for r in rows if f":{killed.pid}" in r]
    assert len(mine) == 1 and mine[0].split()[:2] == ["task-worker", "bot-chat"]
    assert mine[0].split()[-1] == "no"

    killed.send_signal(signal.SIGKILL)  # no chance to retire: it must turn stale
    stopped.terminate()  # a clean exit retires its row
    # Its bound, then the store's retirement and the interpreter's exit, on a busy host.
    assert stopped.wait(timeout=STOP_SECONDS + 30) == 0
    _wait_for(lambda: (_by_pid(client, killed.pid) or {}).get("stale"), 30, "never stale")
    stale = _by_pid(client, killed.pid)
    assert stale["seconds_since_heartbeat"] > 3 * HEARTBEAT
    assert _by_pid(client, stopped.pid) is None, "a stopped worker is still listed"
    ready = client.get("/api/health/ready")
    # No listening bot-chat worker is no reason to be unready.
    assert ready.status_code == 200 and ready.json()["task_workers"]["bot-chat"] == 0


def test_workers_lists_a_real_prefect_worker_and_marks_it_stale_once_killed(client, fleet):
    def listed() -> dict | None:
        found = [w for w in _census(client)["workers"] if w["name"] == fleet.prefect_name]
        return found[0] if found else None

    # Listed and live. A beat here is a write to the session's SQLite Prefect server, shared
    # with every test before this one: one persisted over 3 s late (stop 21's CI) shows the
    # worker stale by the server's own clock, which is the census telling the truth.
    _wait_for(lambda: (row := listed()) and not row["stale"], 90, "never listed live")
    row = listed()
    assert row["kind"] == "process-worker" and row["pool"] == "batch-video", row
    assert row["heartbeat_seconds"] == 1, row
    assert row["started_at"] and row["last_heartbeat_at"] and row["in_flight"] is None
    fleet.prefect.send_signal(signal.SIGKILL)
    _wait_for(lambda: (listed() or {}).get("stale"), 30, "Prefect never saw it go")


def test_a_pool_tasks_runs_count_as_work_in_flight():
    counter, started, release = RunCounter(), threading.Event(), threading.Event()

    def run(pool: str, request_id: str) -> str:
        started.set()
        release.wait(10)
        return f"{pool}:{request_id}"

    bound = _bind_pool(run, "bot-chat", counter)
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(bound(request_id="r1")))
    thread.start()
    assert started.wait(10)
    assert counter.count() == 1
    release.set()
    thread.join(10)
    assert results == ["bot-chat:r1"] and counter.count() == 0


def test_the_document_says_what_each_endpoint_answers(client):
    paths = client.get("/openapi.json").json()["paths"]
    ready, live = paths["/api/health/ready"]["get"], paths["/api/health/live"]["get"]
    for status in ("200", "503"):
        schema = ready["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/Ready"), (status, schema)
    assert "security" not in ready and "security" not in live  # probes send no token
    workers = paths["/api/workers"]["get"]
    assert workers["security"] and "401" in workers["responses"]
    assert workers["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Census"
    )
