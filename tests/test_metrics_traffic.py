"""Metrics after real traffic, on PostgreSQL and a real Prefect server: bot requests answered
by a bot-chat task worker process through the fake OpenAI (one key answering 429), one
refused by the API, a transcription read and cancelled. Each process's /metrics counts what
ended in it, and no label or sample carries an id, a prompt, a user id or a secret."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL

from api.app import create_app
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT, reload_settings
from store import jobs
from tests.bot_stack import WEBHOOK_TOKEN, _ask, _config, _save_pool, _wait_finished
from tests.environ import environment
from tests.metrics_scrape import (
    label_problems,
    leaks,
    parse,
    route_templates,
    total,
    value,
)
from tests.pg import create_database, drop_database
from tests.test_dask_config import free_port

# The stack's fixtures (the fake providers and Discord) live beside its helpers.
pytest_plugins = ["tests.bot_stack"]
pytestmark = pytest.mark.usefixtures("prefect_server")
SECRETS = {"first": "sk-metrics-throttled", "second": "sk-metrics-fine"}


@pytest.fixture(scope="module")
def worker(fakes, tmp_path_factory):
    """A PostgreSQL store, the ``metrics-openai`` key pool (its first key answers 429), a
    bot config with a chat cooldown, and one bot-chat task worker serving /metrics."""
    name, url = create_database()
    folder = tmp_path_factory.mktemp("metrics-traffic")
    config = folder / "bot.yaml"
    config.write_text(yaml.safe_dump(_config(chat_pool="metrics-openai", cooldown_seconds=60)))
    values = {
        "RELAY_DATABASE_URL": url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_WEBHOOK_ALLOWED_HOSTS": fakes["discord"].host,
        "RELAY_BOT_CONFIG": str(config),
        "RELAY_SECRET_KEY": "test-sealing-key",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    restore = ExitStack()
    restore.enter_context(environment(values))
    keys = [{"name": n, "secret": s, "requests_per_minute": 600} for n, s in SECRETS.items()]
    _save_pool("metrics-openai", "openai", fakes["openai"].base_url, keys)
    fakes["openai"].keys.update({secret: 600 for secret in SECRETS.values()})
    fakes["openai"].fail(SECRETS["first"], 429)
    port, log = free_port(), folder / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--pool", "bot-chat", "--metrics-port", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while "Subscribing to runs" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/metrics"
    process.terminate()
    process.wait(timeout=30)
    fakes["openai"].reset_script()
    restore.close()
    from store.db import engine_for

    engine_for(url).dispose()
    drop_database(name)


def test_each_process_counts_what_ended_in_it_and_labels_stay_closed(worker, fakes):
    app = create_app(reload_settings(), dispatchers())
    discord = fakes["discord"]
    with TestClient(app) as api:
        # This process's counters hold what earlier tests in it did: count from here.
        before = parse(api.get("/metrics").text)
        users = ["user-private-0", "user-private-1"]
        asked = [_ask(api, discord, prompt=f"private {user}", user=user) for user in users]
        answered = [response.json()["request_id"] for response in asked]
        refused = _ask(api, discord, prompt="private prompt again", user="user-private-0")
        assert refused.status_code == 429
        views = [_wait_finished(api, request_id) for request_id in answered]
        assert [v["status"] for v in views] == ["completed", "completed"], views
        job = jobs.create_job("/in/private-name.mp3", "private-name.mp3", work_pool="asr-cpu")
        assert api.get(f"/api/transcriptions/{job.id}").status_code == 200
        assert api.post(f"/api/transcriptions/{job.id}/cancel").status_code == 200
        api_text = api.get("/metrics").text
    worker_text = httpx.get(worker).text
    at_api, at_worker = parse(api_text), parse(worker_text)

    # The worker answered both requests: counted there, with Relay's added latency.
    chat = {"kind": "chat", "provider": "openai"}
    assert value(at_worker, "relay_bot_requests_total", **chat, outcome="completed") == 2
    assert value(at_worker, "relay_bot_added_latency_seconds_count", kind="chat") == 2
    assert value(at_worker, "relay_provider_throttled_total", provider="openai", key="first") >= 1
    assert value(at_worker, "relay_provider_calls_total", provider="openai", key="second") == 2

    # The API refused one and cancelled the job: counted there.
    def grew(name: str, **labels: str) -> float:
        return total(at_api, name, **labels) - total(before, name, **labels)

    assert grew("relay_bot_requests_total", kind="chat", provider="none", outcome="refused") == 1
    assert grew("relay_transcriptions_total", pool="asr-cpu", outcome="cancelled") == 1
    assert grew("relay_bot_requests_total", outcome="completed") == 0
    # And the store's gauges, as the API reads them at the scrape.
    assert value(at_api, "relay_work_items", workload="bot", state="completed") == 2
    assert value(at_api, "relay_work_items", workload="bot", state="refused") == 1
    # Listed by name (its 429s rest it a second at a time: whether it rests at the scrape is
    # a race; tests/test_metrics.py checks the value itself).
    assert value(at_api, "relay_api_key_resting", provider="openai", key="first") in (0, 1)
    assert grew("http_requests_total", handler="/api/bot/requests", method="POST") == 3

    handlers = route_templates(app)
    # Key names (counters keep those of keys the session's other tests used in this
    # process): a name's form; the secrets themselves are checked absent below.
    for samples in (at_api, at_worker):
        assert label_problems(samples, handlers) == []
    private = [
        *answered,
        refused.json()["request_id"],
        job.id,
        "private",  # prompts, user ids and the file's name
        "chat-general",  # the channel
        WEBHOOK_TOKEN,
        *SECRETS.values(),
        "test-sealing-key",
    ]
    assert leaks(api_text + worker_text, private) == []


def test_a_transcription_is_counted_with_its_audio_where_it_ran(tmp_path):
    """The ``transcribe`` flow in this process, as a task worker runs it: one job completed
    (its audio and real-time factor), one failed (not media)."""
    from prometheus_client import REGISTRY, generate_latest

    from flows.transcribe import transcribe

    def counts() -> dict:
        return parse(generate_latest(REGISTRY).decode())

    sample = PROJECT_ROOT / "samples" / "meeting.ogg"
    not_media = tmp_path / "notes.mp3"
    not_media.write_text("not audio at all")
    before = counts()
    for source in (sample, not_media):
        job = jobs.create_job(str(source), source.name, work_pool="asr-cpu")
        transcribe(str(source), job_id=job.id, return_state=True)
    after = counts()

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    pool = {"pool": "asr-cpu"}
    assert grew("relay_transcriptions_total", **pool, outcome="completed") == 1
    assert grew("relay_transcriptions_total", **pool, outcome="failed") == 1
    assert grew("relay_transcription_audio_seconds_total", **pool) == pytest.approx(24.5, abs=0.5)
    assert grew("relay_transcription_realtime_factor_count", **pool) == 1
    assert grew("relay_transcription_realtime_factor_sum", **pool) > 0.5
