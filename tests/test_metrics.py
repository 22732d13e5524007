"""``GET /metrics`` through the real app on SQLite and PostgreSQL with a real Prefect server:
gauges read from the store at each scrape (bounded: the same few queries whatever the
tables hold), key quotas from key pool blocks, late runs from Prefect (and a scrape that
still answers when Prefect does not), the request metrics by route template, the token, and
the task workers' own endpoint."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import delete, event

import tasks.gauges
from api.app import create_app
from blocks.keys import ApiKeyPool
from relay_settings import PROJECT_ROOT, reload_settings
from store import jobs, usage
from store.db import get_engine, session_scope
from store.models import (
    ApiKeyState,
    BotRequest,
    BotRequestStatus,
    JobStatus,
    TranscriptionJob,
    UsageCounter,
    Video,
    VideoBatch,
    VideoStatus,
)
from tasks.gauges import RelayGauges, worker_ages
from tasks.metrics import serve_worker_metrics
from tests.metrics_scrape import (
    configured_key_names,
    label_problems,
    parse,
    route_templates,
    total,
    value,
)

pytestmark = pytest.mark.usefixtures("prefect_server", "database_url", "store")
NOW = datetime.now(UTC)


@pytest.fixture
def store() -> Iterator[None]:
    """An empty store for each test (the database is the module's)."""
    with session_scope() as session:
        for model in (TranscriptionJob, BotRequest, Video, VideoBatch, ApiKeyState, UsageCounter):
            session.execute(delete(model))
    yield


@pytest.fixture
def keys_config(relay_env, tmp_path):
    """A bot config whose chat kind spends the ``metrics-openai`` key pool: two keys, one
    with a daily quota."""
    config = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    config["providers"]["chat"]["key_pool"] = "metrics-openai"
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(config))
    keys = [
        {"name": "primary", "requests_per_minute": 60, "requests_per_day": 100},
        {"name": "spare", "requests_per_minute": 60},
    ]
    secrets = {"primary": "sk-metrics-primary-secret", "spare": "sk-metrics-spare-secret"}
    pool = ApiKeyPool(provider="openai", base_url="http://127.0.0.1:9", keys=keys, secrets=secrets)
    pool.save("metrics-openai", overwrite=True)
    relay_env(BOT_CONFIG=path, METRICS_PREFECT_TIMEOUT_SECONDS=15)  # a cold Prefect is slow
    return secrets


def client() -> TestClient:
    return TestClient(create_app(reload_settings(), {}))


def scrape(api: TestClient, **headers: str) -> dict:
    response = api.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def _job(status: JobStatus, pool: str | None, age: float, audio: float = 60.0, done: float = 0):
    return TranscriptionJob(
        source_name="a.mp3",
        source_path="/in/a.mp3",
        status=status,
        work_pool=pool,
        duration_seconds=audio,
        audio_seconds_done=done,
        created_at=datetime.now(UTC) - timedelta(seconds=age),
    )


def _request(status: BotRequestStatus, pool: str, age: float) -> BotRequest:
    return BotRequest(
        kind="chat",
        prompt="a private prompt",
        user_id="user-7",
        channel="chat-x",
        route="r",
        pool=pool,
        status=status,
        created_at=datetime.now(UTC) - timedelta(seconds=age),
    )


def test_gauges_come_from_the_store_at_each_scrape(keys_config):
    with session_scope() as session:
        session.add_all(
            [
                _job(JobStatus.QUEUED, "asr-cpu", age=120, audio=300),
                _job(JobStatus.QUEUED, "asr-cpu", age=30, audio=100),
                _job(JobStatus.RUNNING, "asr-cpu", age=500, audio=200, done=50),
                _job(JobStatus.COMPLETED, "asr-cpu", age=900),
                _job(JobStatus.QUEUED, None, age=10),
                _request(BotRequestStatus.QUEUED, "bot-chat", age=7),
                _request(BotRequestStatus.COMPLETED, "bot-chat", age=70),
                _request(BotRequestStatus.REFUSED, "bot-media", age=5),
                VideoBatch(id="old", created_at=NOW - timedelta(days=1)),
                VideoBatch(id="new", created_at=NOW),
            ]
        )
        session.flush()
        statuses = [VideoStatus.DONE] * 3 + [VideoStatus.FAILED, VideoStatus.CLAIMED]
        for i, status in enumerate([*statuses, VideoStatus.PENDING, VideoStatus.PENDING]):
            batch = "new" if i < 5 else "old"
            session.add(Video(source_key=f"k{i}", source=f"/v/{i}", name=f"{i}", status=status,
                              batch_id=batch))  # fmt: skip
    for _ in range(30):
        assert usage.spend_key_day("openai", "primary", 100)
    # Resting from now on: NOW is the module's import, maybe minutes ago in a full run.
    usage.cool_key("openai", "spare", datetime.now(UTC) + timedelta(minutes=5), "rate_limited: 429")
    with client() as api:
        samples = scrape(api)
        assert value(samples, "relay_work_items", workload="transcription", state="queued") == 3
        assert value(samples, "relay_work_items", workload="bot", state="refused") == 1
        assert value(samples, "relay_work_items", workload="video", state="pending") == 2
        assert value(samples, "relay_work_items", workload="video", state="cancelled") is None
        assert value(samples, "relay_queue_depth", pool="asr-cpu") == 2
        assert value(samples, "relay_queue_depth", pool="unassigned") == 1
        assert value(samples, "relay_queue_depth", pool="bot-chat") == 1
        assert value(samples, "relay_queue_depth", pool="bot-media") == 0
        assert value(samples, "relay_queue_depth", pool="batch-video") == 2
        assert 119 < value(samples, "relay_queue_oldest_age_seconds", pool="asr-cpu") < 180
        assert 6 < value(samples, "relay_queue_oldest_age_seconds", pool="bot-chat") < 60
        assert value(samples, "relay_queue_oldest_age_seconds", pool="asr-gpu") == 0
        assert value(samples, "relay_queued_audio_seconds", pool="asr-cpu") == 300 + 100 + 150
        assert value(samples, "relay_batch_videos", state="done") == 3
        assert value(samples, "relay_batch_videos", state="failed") == 1
        assert value(samples, "relay_batch_videos", state="pending") == 1  # the claimed one
        quota = {"provider": "openai", "key": "primary"}
        assert value(samples, "relay_api_key_daily_quota", **quota) == 100
        assert value(samples, "relay_api_key_daily_quota_left", **quota) == 70
        assert value(samples, "relay_api_key_daily_quota", provider="openai", key="spare") is None
        assert value(samples, "relay_api_key_resting", provider="openai", key="spare") == 1
        assert value(samples, "relay_api_key_resting", **quota) == 0

        # Fresh at every scrape: no cache between the store and Prometheus.
        usage.clear_key("openai", "spare")
        jobs.create_job("/in/b.mp3", "b.mp3", work_pool="asr-cpu")
        again = scrape(api)
        assert value(again, "relay_queue_depth", pool="asr-cpu") == 3
        assert value(again, "relay_api_key_resting", provider="openai", key="spare") == 0
        text = api.get("/metrics").text
    assert not any(secret in text for secret in keys_config.values())
    assert "private prompt" not in text and "user-7" not in text


@pytest.mark.usefixtures("keys_config")
def test_a_scrape_costs_the_same_few_queries_whatever_the_store_holds():
    with client() as api:
        api.get("/metrics")  # the key pools are read once, then kept a minute
        counts = []
        for rows in (0, 200):
            with session_scope() as session:
                session.add_all(_job(JobStatus.QUEUED, "asr-cpu", age=i) for i in range(rows))
                session.add_all(
                    _request(BotRequestStatus.QUEUED, "bot-chat", i) for i in range(rows)
                )
            statements: list[object] = []
            listener = statements_into(statements)
            event.listen(get_engine(), "before_cursor_execute", listener)
            try:
                samples = scrape(api)
            finally:
                event.remove(get_engine(), "before_cursor_execute", listener)
            counts.append(len(statements))
            assert value(samples, "relay_queue_depth", pool="bot-chat") == rows
    # The gauges' reads (PostgreSQL: and SET LOCAL), and the workers' heartbeats.
    assert counts[0] == counts[1] <= 8, counts


def statements_into(statements: list[object]):
    """A ``before_cursor_execute`` listener that keeps each SQL statement."""

    def listener(*args: object) -> None:
        statements.append(args[2])

    return listener


def test_late_prefect_runs_are_counted_per_pool():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.states import Late, State

    with get_client(sync_client=True) as prefect:
        with contextlib.suppress(ObjectAlreadyExists):
            prefect.create_work_pool(WorkPoolCreate(name="batch-video", type="process"))
        flow_id = prefect.create_flow_from_name("metrics-late-probe")
        deployment = prefect.create_deployment(
            flow_id=flow_id, name="late-probe", work_pool_name="batch-video"
        )
        late: State = Late(scheduled_time=NOW - timedelta(minutes=5))
        run = prefect.create_flow_run_from_deployment(deployment, state=late)
        try:
            with client() as api:
                samples = scrape(api)
        finally:  # no worker of a later test may pick it up
            prefect.delete_flow_run(run.id)
    assert value(samples, "relay_prefect_late_runs", pool="batch-video") == 1
    assert value(samples, "relay_prefect_late_runs", pool="asr-cpu") == 0


@pytest.mark.parametrize("prefect", ["refusing", "silent"])
def test_a_scrape_without_prefect_serves_the_store_gauges(prefect, monkeypatch, caplog):
    """Prefect refusing connections, or accepting and never answering: the late runs are
    left out (and logged), everything else is served within the timeout."""
    monkeypatch.setattr(tasks.gauges, "_logged", {})  # its warnings are once a minute
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if prefect == "silent":
            silent.listen(8)
        port = silent.getsockname()[1]
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            gauges = RelayGauges(prefect_timeout=0.5)
            started = time.monotonic()
            families = {family.name for family in gauges.collect()}
            elapsed = time.monotonic() - started
    gauges.prefect.close(wait=True)  # its threads give up once the socket is gone
    assert "relay_prefect_late_runs" not in families
    assert {"relay_work_items", "relay_queue_depth", "relay_batch_videos"} <= families
    # refusing: Prefect's client retries a refused connection for about 1.5 s
    assert elapsed < (0.5 + 1.0 if prefect == "silent" else 2.5), elapsed
    assert "late runs" in caplog.text


def test_requests_are_counted_by_route_template():
    app = create_app(reload_settings(), {})
    with TestClient(app) as api:
        job = jobs.create_job("/in/c.mp3", "c.mp3", work_pool="asr-cpu")
        for _ in range(3):
            assert api.get(f"/api/transcriptions/{job.id}").status_code == 200
        assert api.get("/api/transcriptions/no-such-job").status_code == 404
        assert api.get(f"/no/such/path/{job.id}").status_code == 404
        assert api.request("BREW", "/api/queue").status_code == 405
        assert api.post(f"/api/transcriptions/{job.id}/cancel").status_code == 200
        samples = scrape(api)
        text = api.get("/metrics").text
    handlers = route_templates(app)
    template = "/api/transcriptions/{job_id}"
    assert total(samples, "http_requests_total", handler=template, status="2xx") >= 3
    assert total(samples, "http_requests_total", handler=template, status="4xx") >= 1
    assert total(samples, "http_requests_total", handler="none", method="GET") >= 1
    assert total(samples, "http_requests_total", handler="/api/queue", method="other") >= 1
    assert total(samples, "http_request_duration_seconds_count", handler=template) >= 4
    assert total(samples, "relay_transcriptions_total", pool="asr-cpu", outcome="cancelled") >= 1
    assert job.id not in text and "no-such-job" not in text
    keys = configured_key_names()
    assert "primary" in keys  # this module's; the session's other tests may have saved more
    assert label_problems(samples, handlers, keys=keys) == []


def test_the_metrics_token_closes_the_endpoint(relay_env):
    relay_env(METRICS_TOKEN="scrape-secret", API_TOKEN="api-secret")
    with client() as api:
        assert api.get("/metrics").status_code == 401
        wrong = api.get("/metrics", headers={"Authorization": "Bearer api-secret"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        assert scrape(api, Authorization="Bearer scrape-secret")
        # The API's own token still guards the API, and only it.
        assert api.get("/api/queue", headers={"Authorization": "Bearer api-secret"}).is_success


def test_worker_ages_from_heartbeat_rows():
    """The hook store/workers.py will feed: plain (kind, pool, host, last_seen_at) rows."""
    rows = [
        ("task", "bot-chat", "host-a", NOW - timedelta(seconds=4)),
        ("task", "bot-chat", "host-a", NOW - timedelta(seconds=40)),  # the stalest shows
        ("task", "asr-cpu", "host-b", (NOW - timedelta(seconds=2)).replace(tzinfo=None)),
        ("dask", "nowhere", "host-c", NOW + timedelta(seconds=3)),  # a clock ahead: 0
    ]
    family = worker_ages(rows, NOW)
    ages = {tuple(s.labels[k] for k in ("kind", "pool", "host")): s.value for s in family.samples}
    assert ages == {
        ("task", "bot-chat", "host-a"): 40.0,
        ("task", "asr-cpu", "host-b"): 2.0,
        ("dask", "other", "host-c"): 0.0,
    }
    gauges = RelayGauges(prefect_timeout=0.5, workers=lambda: rows)
    try:
        names = {family.name for family in gauges.collect()}
    finally:
        gauges.prefect.close()
    assert "relay_worker_last_seen_seconds" in names


def test_a_workers_own_endpoint_with_and_without_token():
    from tasks import metrics

    metrics.provider_called("openai", "primary")
    open_server = serve_worker_metrics(0, "127.0.0.1")
    guarded = serve_worker_metrics(0, "127.0.0.1", token="w-token")
    assert open_server is not None and guarded is not None
    try:
        open_url = f"http://127.0.0.1:{open_server.server_port}/metrics"
        guarded_url = f"http://127.0.0.1:{guarded.server_port}/metrics"
        samples = parse(httpx.get(open_url).text)
        assert value(samples, "relay_provider_calls_total", provider="openai", key="primary") >= 1
        assert httpx.get(guarded_url).status_code == 401
        wrong = httpx.get(guarded_url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.get(guarded_url, headers={"Authorization": "Bearer w-token"})
        assert right.status_code == 200 and "relay_provider_calls_total" in right.text
        # A second worker on the same port: logged, and the worker goes on without metrics.
        assert serve_worker_metrics(open_server.server_port, "127.0.0.1") is None
    finally:
        for server in (open_server, guarded):
            server.shutdown()
            server.server_close()
