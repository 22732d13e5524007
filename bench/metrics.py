"""Metrics benchmark: what a /metrics scrape costs with a big store, and what the request
metrics add to every status read.

Prints one JSON line per figure, each beside its anchor from the same run. Run:
``make bench-metrics`` or ``.venv/bin/python -m bench.metrics [--rows 100000]``.

- ``scrape``: a fresh PostgreSQL database holding ``--rows`` transcription jobs and as many
  bot requests (``--active`` of each queued or running, the rest finished), vacuumed as
  autovacuum would leave it; a real Prefect server (late runs); the app in this process.
  Milliseconds per scrape (p50 of ``--scrapes``), the store's share, and the SQL
  statements one scrape issues (counted by a SQLAlchemy listener); anchor: one ``SELECT 1``
  round trip on the same engine.
- ``request_metrics_in_process``: the same status read through two apps in this process,
  with and without the request metrics, in turn: what the middleware adds, without the
  network's noise.
- ``status_read_instrumentation``: two API processes (``python -m cli api``) on that
  database, one with ``RELAY_METRICS_HTTP=false``; ``GET /api/transcriptions/{id}`` on one
  keep-alive connection each, in alternating rounds; p50 with and without.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
import psycopg
from sqlalchemy import event, text

from bench.api import free_port, start_api, wait_ready

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

FILL = [
    """INSERT INTO transcription_job (id, source_name, source_path, status, duration_seconds,
         chunks_total, chunks_done, chunks_failed, audio_seconds_done, work_pool, created_at)
       SELECT md5('job' || i), 'file.mp3', '/data/inbox/file.mp3',
         CASE WHEN i <= :active / 2 THEN 'queued' WHEN i <= :active THEN 'running'
              WHEN i % 20 = 0 THEN 'failed' WHEN i % 50 = 1 THEN 'cancelled'
              ELSE 'completed' END,
         60 + i % 1700, 5, 5, 0, 30, CASE WHEN i % 4 = 0 THEN 'asr-gpu' ELSE 'asr-cpu' END,
         now() - make_interval(secs => :rows - i)
       FROM generate_series(1, :rows) AS i""",
    """INSERT INTO bot_request (id, kind, prompt, user_id, channel, route, pool, status,
         upstream_calls, created_at, delivery_status, delivery_attempts, delivery_messages_sent)
       SELECT md5('bot' || i), CASE WHEN i % 3 = 0 THEN 'image' ELSE 'chat' END, 'a prompt',
         'user-' || i % 5000, 'chat-general', 'chat-channels',
         CASE WHEN i % 3 = 0 THEN 'bot-media' ELSE 'bot-chat' END,
         CASE WHEN i <= :active / 2 THEN 'queued' WHEN i <= :active THEN 'running'
              WHEN i % 25 = 0 THEN 'refused' WHEN i % 40 = 0 THEN 'failed'
              ELSE 'completed' END,
         1, now() - make_interval(secs => :rows - i), 'delivered', 1, 1
       FROM generate_series(1, :rows) AS i""",
]


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def p50_ms(run: Callable[[], object], times: int) -> float:
    """Median milliseconds of ``run()`` over ``times`` calls."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        spent.append(time.perf_counter() - started)
    return round(statistics.median(spent) * 1000, 3)


def fill(rows: int, active: int) -> list[str]:
    """The store's tables, filled and vacuumed; returns some job ids to read."""
    from store.db import get_engine

    engine = get_engine()  # migrates the fresh database first
    with engine.begin() as connection:
        for statement in FILL:
            connection.execute(text(statement), {"rows": rows, "active": active})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE transcription_job"))
        connection.execute(text("VACUUM ANALYZE bot_request"))
        ids = connection.execute(text("SELECT id FROM transcription_job LIMIT 2000")).scalars()
        return list(ids)


def scrape_cost(rows: int, active: int, scrapes: int) -> None:
    from fastapi.testclient import TestClient
    from prefect.testing.utilities import prefect_test_harness

    from api.app import create_app
    from blocks.keys import ApiKeyPool
    from relay_settings import reload_settings
    from store.db import get_engine

    with prefect_test_harness(server_startup_timeout=120):
        # bot.yaml's chat key pool, with daily quotas: their use today is read too.
        keys = [{"name": n, "requests_per_minute": 500, "requests_per_day": 10_000} for n in "ab"]
        secrets = {"a": "sk-bench-a", "b": "sk-bench-b"}
        base = "http://127.0.0.1:9"
        ApiKeyPool(provider="openai", base_url=base, keys=keys, secrets=secrets).save("openai")
        app = create_app(reload_settings(), {})
        with TestClient(app) as client:
            client.get("/metrics")  # warm: the key pool blocks are read once a minute
            figures = {"rows_each": rows, "queued_or_running_each": active, "scrapes": scrapes}
            emit(**_scrape(client, scrapes), indexes="as migrated (0007)", **figures)
            with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as db:
                db.execute(text(PROPOSED_INDEX))
                db.execute(text("VACUUM ANALYZE bot_request"))
            emit(**_scrape(client, scrapes), indexes=PROPOSED_INDEX, **figures)


PROPOSED_INDEX = "CREATE INDEX ix_bot_request_status ON bot_request (status)"


def _scrape(client, scrapes: int) -> dict[str, object]:
    """One scrape's figures: GET /metrics, the exposition alone, the store's reads alone,
    the statements issued, and the anchor: one ``SELECT 1`` on the same engine."""
    from prometheus_client import generate_latest

    from store.db import get_engine, reader
    from store.gauges import read_gauges

    statements: list[object] = []

    def count(*args: object) -> None:
        statements.append(args[2])

    event.listen(get_engine(), "before_cursor_execute", count)
    scrape = p50_ms(lambda: client.get("/metrics").raise_for_status(), scrapes)
    event.remove(get_engine(), "before_cursor_execute", count)
    registry = client.app.state.metrics_registry
    with reader().connect() as connection:
        anchor = p50_ms(lambda: connection.execute(text("SELECT 1")).scalar(), scrapes * 5)
    return {
        "figure": "scrape",
        "scrape_p50_ms": scrape,
        "collect_p50_ms": p50_ms(lambda: generate_latest(registry), scrapes),
        "store_reads_p50_ms": p50_ms(read_gauges, scrapes),
        "sql_statements_per_scrape": len(statements) / scrapes,
        "exposition_bytes": len(client.get("/metrics").content),
        "anchor_select_1_p50_ms": anchor,
        "note": "scrape: GET /metrics in this process (TestClient); collect: the exposition "
        "alone; store reads: the SQL alone. PostgreSQL on 127.0.0.1, late runs from a real "
        "Prefect server, tables vacuumed after the bulk fill",
    }


def middleware_cost(ids: list[str], calls: int) -> None:
    """The request metrics' own cost: the same status read through two apps in this
    process, with and without them, one call each in turn (no network, no other process)."""
    import asyncio

    from api.app import create_app
    from relay_settings import reload_settings

    settings = reload_settings()
    apps = {
        "with": create_app(settings, {}),
        "without": create_app(settings.model_copy(update={"metrics_http": False}), {}),
    }
    seen: dict[str, list[float]] = {"with": [], "without": []}

    async def call(variant: str, job_id: str) -> None:
        path = f"/api/transcriptions/{job_id}"
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [(b"host", b"bench")], "http_version": "1.1",
                 "scheme": "http", "server": ("bench", 80), "client": ("127.0.0.1", 1),
                 "root_path": ""}  # fmt: skip
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(str(message["status"])))

        started = time.perf_counter()
        await apps[variant](scope, receive, send)
        seen[variant].append(time.perf_counter() - started)
        if statuses != [200]:
            raise RuntimeError(f"status read answered {statuses}")

    async def run() -> None:
        for index in range(calls + 200):
            order = ("with", "without") if index % 2 == 0 else ("without", "with")
            for variant in order:
                await call(variant, random.choice(ids))
        for variant in seen:
            del seen[variant][:200]  # warm-up

    asyncio.run(run())
    with_p50, without_p50 = (statistics.median(seen[v]) * 1e6 for v in ("with", "without"))
    emit(
        figure="request_metrics_in_process",
        calls_each=calls,
        with_p50_us=round(with_p50, 1),
        without_p50_us=round(without_p50, 1),
        added_p50_us=round(with_p50 - without_p50, 1),
        note="GET /api/transcriptions/{id} through the ASGI app, in turn with and without "
        "RELAY_METRICS_HTTP; the anchor is the read without",
    )


def _read_round(port: int, ids: list[str], requests: int) -> list[float]:
    """``requests`` status reads on one keep-alive connection; seconds each."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        stream = sock.makefile("rb")
        spent = []
        for _ in range(requests):
            request = f"GET /api/transcriptions/{random.choice(ids)} HTTP/1.1\r\nHost: x\r\n\r\n"
            started = time.perf_counter()
            sock.sendall(request.encode())
            status = stream.readline()
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
            spent.append(time.perf_counter() - started)
            if b" 200 " not in status:
                raise RuntimeError(f"status read answered {status!r}")
    return spent


def instrumentation_cost(url: str, ids: list[str], rounds: int, requests: int) -> None:
    ports = {"with": free_port(), "without": free_port()}
    processes = []
    try:
        for variant, port in ports.items():
            env = {
                **os.environ,
                "RELAY_DATABASE_URL": url,
                "RELAY_API_PORT": str(port),
                "PREFECT_API_URL": "http://127.0.0.1:9/api",  # status reads never call it
                "RELAY_API_ACCESS_LOG": "false",
                "RELAY_METRICS_HTTP": "true" if variant == "with" else "false",
            }
            processes.append(start_api(env))
            wait_ready(port)
        seen: dict[str, list[float]] = {"with": [], "without": []}
        for port in ports.values():
            _read_round(port, ids, requests // 2)  # warm-up
        for index in range(rounds):  # alternate, so drift in the machine's load hits both
            order = ("with", "without") if index % 2 == 0 else ("without", "with")
            for variant in order:
                seen[variant] += _read_round(ports[variant], ids, requests)
        # The metrics it made: each read counted once, under its route template.
        metrics = httpx.get(f"http://127.0.0.1:{ports['with']}/metrics").text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('http_requests_total{handler="/api/transcriptions/{job_id}"')
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    with_p50 = statistics.median(seen["with"]) * 1000
    without_p50 = statistics.median(seen["without"]) * 1000
    emit(
        figure="status_read_instrumentation",
        requests_each=len(seen["with"]),
        rounds=rounds,
        with_p50_ms=round(with_p50, 3),
        without_p50_ms=round(without_p50, 3),
        added_p50_ms=round(with_p50 - without_p50, 3),
        with_mean_ms=round(statistics.mean(seen["with"]) * 1000, 3),
        without_mean_ms=round(statistics.mean(seen["without"]) * 1000, 3),
        reads_counted=counted,
        note="one keep-alive connection, sequential requests; two API processes on the "
        "same PostgreSQL database, RELAY_METRICS_HTTP true / false",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--active", type=int, default=1_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    name = f"relay_bench_metrics_{random.randrange(16**8):08x}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    os.environ["RELAY_DATABASE_URL"] = url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from relay_settings import reload_settings

    reload_settings()
    try:
        ids = fill(args.rows, args.active)
        scrape_cost(args.rows, args.active, args.scrapes)
        middleware_cost(ids, args.calls)
        instrumentation_cost(url, ids, args.rounds, args.requests)
    finally:
        from store.db import engine_for

        engine_for(url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
