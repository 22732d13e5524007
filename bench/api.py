"""API benchmark: status reads with 10,000 jobs in PostgreSQL, and submission latency.

Prints one JSON line per figure. Run: ``make bench-api`` or
``.venv/bin/python -m bench.api [--jobs 10000] [--seconds 15] [--connections 32]``.

- ``status_reads``: the API as ``make api`` runs it, with 1 and then 2 worker processes
  (``RELAY_API_WORKERS``), on a fresh PostgreSQL database holding ``--jobs`` jobs, beside the
  ceiling ``bench/minimal_app.py`` (one primary-key SELECT) with as many processes,
  alternating ``--rounds`` times; the same load generator (``bench/load.py``, its own
  process) asks each for random jobs' status. A line per run, then the medians and ratios.
- ``submission_to_running``: the embedded mode (temporary Prefect server, serve process,
  API); time from ``202 Accepted`` on an upload to its flow run being RUNNING.
"""

from __future__ import annotations

import argparse
import json
import os
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
import psutil
import psycopg

from relay_settings import PROJECT_ROOT

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


def start_api(env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``python -m cli api`` as ``make api`` runs it; its output to ``log`` or nowhere."""
    output = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "api"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def wait_settled(pid: int, limit: float = 120.0) -> None:
    """Until the server's processes stop using CPU (every worker has imported and started):
    one still starting would take CPU from the measured run."""
    deadline = time.monotonic() + limit
    quiet = 0
    before = _cpu_seconds(pid)
    while quiet < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} kept busy for {limit} s")
        time.sleep(0.5)
        now = _cpu_seconds(pid)
        quiet = quiet + 1 if now - before < 0.05 else 0
        before = now


def _cpu_seconds(pid: int) -> float:
    parent = psutil.Process(pid)
    processes = [parent, *parent.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes if p.is_running())


def wait_ready(port: int, path: str = "/api/health", limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2, headers=AUTH)
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not come up")


def _contender(name: str, url: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    """Relay as ``make api`` runs it, or the minimal app, on ``port`` with ``workers``."""
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": url,
        "RELAY_API_TOKEN": TOKEN,
        "RELAY_API_PORT": str(port),
        "RELAY_API_WORKERS": str(workers),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # status reads never call Prefect
        # As measured: one line per request costs about a quarter of the throughput.
        "RELAY_API_ACCESS_LOG": os.environ.get("RELAY_API_ACCESS_LOG", "false"),
    }
    if name == "relay":
        return start_api(env, log)
    command = [sys.executable, "-m", "uvicorn", "bench.minimal_app:app", "--port", str(port)]
    command += ["--workers", str(workers), "--no-access-log"]
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _measure(name: str, url: str, ids_file: Path, workers: int, seconds: float, connections: int):
    port = free_port()
    log = ids_file.with_suffix(".log")
    server = _contender(name, url, port, workers, log)
    try:
        wait_settled(server.pid)
        wait_ready(port, f"/api/transcriptions/{ids_file.read_text().split()[0]}")
        load = [sys.executable, "-m", "bench.load", str(port), str(ids_file), str(seconds)]
        done = subprocess.run(
            [*load, str(connections), TOKEN], cwd=PROJECT_ROOT, capture_output=True, check=True
        )
        return json.loads(done.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)


def status_reads(jobs: int, seconds: float, connections: int, rounds: int) -> None:
    """Relay beside the minimal app (the ceiling), alternating, for 1 and 2 API processes."""
    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        ids_file = Path(tempfile.mkstemp(prefix="relay-bench-ids-")[1])
        ids_file.write_text("\n".join(fill(url, jobs)))
        for workers in (1, 2):
            runs: dict[str, list[dict]] = {"relay": [], "minimal": []}
            for number in range(rounds):
                order = ("relay", "minimal") if number % 2 == 0 else ("minimal", "relay")
                for contender in order:
                    figures = _measure(contender, url, ids_file, workers, seconds, connections)
                    runs[contender].append(figures)
                    emit(figure="status_reads_run", contender=contender, workers=workers,
                         round=number, **figures)  # fmt: skip
            relay, ceiling = _medians(runs["relay"]), _medians(runs["minimal"])
            throughput = relay["requests_per_second"] / ceiling["requests_per_second"]
            emit(
                figure="status_reads",
                workers=workers,
                jobs_in_store=jobs,
                connections=connections,
                rounds=rounds,
                relay=relay,
                minimal_app=ceiling,
                throughput_ratio=round(throughput, 3),
                p99_ratio=round(relay["p99_ms"] / ceiling["p99_ms"], 3),
                errors=sum(run["errors"] for run in runs["relay"] + runs["minimal"]),
                load_average=round(os.getloadavg()[0], 2),
                target="throughput_ratio >= 0.9, p99_ratio <= 1.3",
            )
        ids_file.unlink()
        ids_file.with_suffix(".log").unlink(missing_ok=True)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _medians(runs: list[dict]) -> dict[str, float]:
    keys = ("requests_per_second", "p50_ms", "p99_ms")
    return {key: round(statistics.median(run[key] for run in runs), 2) for key in keys}


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
    parser.add_argument("--rounds", type=int, default=3, help="alternations per worker count")
    parser.add_argument("--submissions", type=int, default=5)
    args = parser.parse_args()
    status_reads(args.jobs, args.seconds, args.connections, args.rounds)
    if args.submissions:
        submission_to_running(args.submissions)


if __name__ == "__main__":
    main()
