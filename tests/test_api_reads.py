"""Status reads under load: held to the store's pool (no connection churn), and the API
served by several processes (RELAY_API_WORKERS)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from prefect.settings import PREFECT_API_URL
from sqlalchemy import event

from api import reads
from api.app import create_app
from flows.pool_tasks import dispatchers
from relay_settings import RelaySettings
from store import jobs
from store.db import POOL_SIZE, get_engine
from tests.audio import ROOT
from tests.pg import create_database, drop_database

TOKEN = "reads-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_reads_wait_for_a_kept_connection_instead_of_opening_more():
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocking_read(number: int) -> int:
        started.release()
        release.wait(timeout=30)
        return number

    async def scenario() -> tuple[int, int, list[int]]:
        calls = [asyncio.create_task(reads.read(blocking_read, n)) for n in range(POOL_SIZE + 7)]
        for _ in range(POOL_SIZE):  # the first POOL_SIZE reach their thread
            await asyncio.to_thread(started.acquire, timeout=30)
        limiter = reads._reads()
        statistics = limiter.statistics()
        release.set()
        return statistics.borrowed_tokens, statistics.tasks_waiting, await asyncio.gather(*calls)

    in_flight, waiting, results = asyncio.run(scenario())
    assert (in_flight, waiting) == (POOL_SIZE, 7)
    assert results == list(range(POOL_SIZE + 7))


def test_concurrent_status_reads_never_open_more_connections_than_the_pool(tmp_path):
    name, url = create_database("relay_reads")
    previous = os.environ["RELAY_DATABASE_URL"]
    os.environ["RELAY_DATABASE_URL"] = url
    from relay_settings import reload_settings

    reload_settings()
    try:
        job_ids = [jobs.create_job(f"/data/f{i}.mp3", f"f{i}.mp3").id for i in range(5)]
        engine = get_engine()
        engine.dispose()  # count connections from zero
        opened: list[int] = []
        event.listen(engine, "connect", lambda *_: opened.append(1))
        settings = RelaySettings(database_url=url, data_dir=str(tmp_path), api_token=TOKEN)
        app = create_app(settings, dispatchers())

        async def burst() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
                paths = [f"/api/transcriptions/{job_ids[i % 5]}" for i in range(96)]
                answers = await asyncio.gather(*(client.get(p, headers=AUTH) for p in paths))
            return [answer.status_code for answer in answers]

        assert asyncio.run(burst()) == [200] * 96
        assert 1 <= len(opened) <= POOL_SIZE
    finally:
        get_engine().dispose()
        os.environ["RELAY_DATABASE_URL"] = previous
        reload_settings()
        drop_database(name)


def _api_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    return env | extra


def test_several_api_workers_are_refused_in_the_embedded_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cli", "api"],
        cwd=ROOT,
        env=_api_env(RELAY_API_WORKERS="2", PREFECT_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "RELAY_API_WORKERS=2 needs a Prefect server" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.usefixtures("prefect_server")
def test_two_api_workers_share_the_port(tmp_path):
    name, url = create_database("relay_workers")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _api_env(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        RELAY_DATABASE_URL=url,
        RELAY_DATA_DIR=str(tmp_path),
        RELAY_API_TOKEN=TOKEN,
        RELAY_API_PORT=str(port),
        RELAY_API_WORKERS="2",
    )
    log = tmp_path / "api.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "api"], cwd=ROOT, env=env, stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not (_answers(base) and len(_workers(process.pid)) == 2):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
            created = client.get("/api/transcriptions").json()
            assert created["items"] == []
            for _ in range(20):  # fresh connections: either worker may take each
                answer = httpx.get(f"{base}/api/transcriptions", headers=AUTH, timeout=10)
                assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
        drop_database(name)


def _workers(pid: int) -> list[psutil.Process]:
    """uvicorn's worker processes under its supervisor."""
    children = psutil.Process(pid).children()
    return [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
