"""API benchmark: status reads with 10,000 jobs in PostgreSQL, and submission latency.

Prints one JSON line per figure. Run: ``make bench-api`` or
``.venv/bin/python -m bench.api [--jobs 10000] [--seconds 15] [--connections 32]``.

- ``status_reads``: one API process (uvicorn, as ``make api`` runs it) on a fresh PostgreSQL
  database holding ``--jobs`` jobs; a keep-alive load generator on 127.0.0.1 (raw asyncio
  sockets, so the client costs little of the two cores) asks for random jobs' status.
- ``submission_to_running``: the embedded mode (temporary Prefect server, serve process,
  API); time from ``202 Accepted`` on an upload to its flow run being RUNNING.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg

from relay_settings import PROJECT_ROOT

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-token"


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill(url: str, count: int) -> list[str]:
    """``count`` jobs in every state, as a busy store holds them; returns their ids."""
    os.environ["RELAY_DATABASE_URL"] = url
    from relay_settings import reload_settings

    reload_settings()
    from sqlalchemy import insert

    from store.db import get_engine
    from store.models import JobStatus, TranscriptionJob, utcnow

    engine = get_engine()
    states = [JobStatus.COMPLETED] * 6 + [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED]
    now = utcnow()
    rows = []
    for i in range(count):
        state = states[i % len(states)]
        created = now - timedelta(seconds=count - i)
        rows.append(
            TranscriptionJob(
                source_name=f"file-{i}.mp3",
                source_path=f"/data/inbox/file-{i}.mp3",
                status=state,
                duration_seconds=60.0 + i % 1700,
                chunks_total=5,
                chunks_done=5 if state == JobStatus.COMPLETED else 2,
                audio_seconds_done=30.0,
                flow_run_id=str(uuid.uuid4()),
                work_pool="asr-cpu",
                created_at=created,
                started_at=None if state == JobStatus.QUEUED else created,
                finished_at=created + timedelta(seconds=20) if state == "completed" else None,
                language="en" if state == JobStatus.COMPLETED else None,
            ).model_dump()
        )
    with engine.begin() as connection:
        connection.execute(insert(TranscriptionJob), rows)
    engine.dispose()
    return [row["id"] for row in rows]


async def _client(port: int, ids: list[str], stop: float, latencies: list[float], errors: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            path = f"/api/transcriptions/{random.choice(ids)}"
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            ).encode()
            sent = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if b" 200 " not in status_line:
                errors.append(status_line)
    finally:
        writer.close()


async def _load(port: int, ids: list[str], seconds: float, connections: int):
    latencies: list[float] = []
    errors: list = []
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, ids, stop, latencies, errors) for _ in range(connections)))
    return latencies, errors, time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_api(env: dict[str, str]) -> subprocess.Popen:
    """``python -m cli api`` as ``make api`` runs it, quiet."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "api"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(port: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not come up")


def status_reads(jobs: int, seconds: float, connections: int) -> None:
    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    api = None
    try:
        ids = fill(url, jobs)
        port = free_port()
        env = {
            **os.environ,
            "RELAY_DATABASE_URL": url,
            "RELAY_API_TOKEN": TOKEN,
            "RELAY_API_PORT": str(port),
            "PREFECT_API_URL": "http://127.0.0.1:9/api",  # status reads never call Prefect
            # As measured: one line per request costs about a quarter of the throughput.
            "RELAY_API_ACCESS_LOG": os.environ.get("RELAY_API_ACCESS_LOG", "false"),
        }
        api = start_api(env)
        wait_ready(port)
        asyncio.run(_load(port, ids, 2.0, connections))  # warm-up
        latencies, errors, wall = asyncio.run(_load(port, ids, seconds, connections))
        emit(
            figure="status_reads",
            jobs_in_store=jobs,
            connections=connections,
            requests=len(latencies),
            errors=len(errors),
            requests_per_second=round(len(latencies) / wall),
            p50_ms=round(statistics.median(latencies) * 1000, 2),
            p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
            access_log=env["RELAY_API_ACCESS_LOG"],
            target="≥1000 req/s, p99 < 50 ms, one API process",
        )
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def submission_to_running(runs: int) -> None:
    """Embedded mode end to end: upload -> 202 -> flow run RUNNING, as ``make api`` runs it."""
    state = Path(tempfile.mkdtemp(prefix="relay-bench-api-"))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env |= {
        "RELAY_DATABASE_URL": f"sqlite:///{state / 'relay.db'}",
        "RELAY_DATA_DIR": str(state / "data"),
        "RELAY_API_TOKEN": TOKEN,
        "RELAY_API_PORT": str(port),
        "PREFECT_HOME": str(state / "prefect"),
    }
    api = start_api(env)
    sample = PROJECT_ROOT / "samples" / "meeting.ogg"
    delays: list[float] = []
    try:
        wait_ready(port, limit=120)
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        for _ in range(runs):
            with sample.open("rb") as handle:
                response = client.post("/api/transcriptions", files={"file": handle})
            accepted = time.perf_counter()
            response.raise_for_status()
            job, run_id = response.json()["job_id"], response.json()["flow_run_id"]
            link = client.get(f"/api/transcriptions/{job}").json()["flow_run_url"]
            prefect = link.split("/runs/flow-run/")[0] + "/api"
            while True:
                run = httpx.get(f"{prefect}/flow_runs/{run_id}", timeout=10).json()
                if run["state"]["type"] != "SCHEDULED" and run["state"]["type"] != "PENDING":
                    delays.append(time.perf_counter() - accepted)
                    break
                if time.perf_counter() - accepted > 120:
                    raise RuntimeError(f"flow run {run_id} never started")
                time.sleep(0.05)
            while client.get(f"/api/transcriptions/{job}").json()["status"] == "running":
                time.sleep(0.5)
        emit(
            figure="submission_to_running",
            mode="embedded (temporary Prefect server + serve process)",
            runs=runs,
            mean_seconds=round(statistics.mean(delays), 2),
            max_seconds=round(max(delays), 2),
        )
    finally:
        api.terminate()
        api.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--submissions", type=int, default=5)
    args = parser.parse_args()
    status_reads(args.jobs, args.seconds, args.connections)
    if args.submissions:
        submission_to_running(args.submissions)


if __name__ == "__main__":
    main()
