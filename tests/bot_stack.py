"""The bot's test stack: fake providers and Discord, key pool blocks with their limits, a bot
config file, task worker processes, and helpers to ask and wait. Used by tests/test_bot.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from api.app import create_app
from blocks.keys import ApiKeyPool
from deployments.bootstrap import ensure_limit
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT, reload_settings
from tests.environ import environment
from tests.fake_discord import FakeDiscord
from tests.fake_providers import FakeMiniMax, FakeOpenAI, FakeStability
from tests.pg import create_database, drop_database

WEBHOOK_TOKEN = "bot-webhook-token-do-not-leak"
KEYS = {"sk-chat-a": 600, "sk-chat-b": 600}


def _config(chat_pool: str = "openai-main", chat_deadline: float = 20.0, **limits) -> dict:
    chat_limits = {"cooldown_seconds": 0, "per_user_daily": 1000, "global_daily": 100000}
    chat_limits.update(limits)
    return {
        "routes": [
            {
                "name": "chat-channels",
                "kinds": ["chat"],
                "channels": ["chat-*"],
                "pool": "bot-chat",
            },
            {
                "name": "media-channels",
                "kinds": ["image", "video"],
                "channels": ["art-*", "video-*"],
                "pool": "bot-media",
            },
        ],
        "fallback": {"chat": "bot-chat", "image": "bot-media", "video": "bot-media"},
        "limits": {
            "chat": chat_limits,
            "image": {"cooldown_seconds": 0, "per_user_daily": 100, "global_daily": 1000},
            "video": {"cooldown_seconds": 0, "per_user_daily": 100, "global_daily": 1000},
        },
        "providers": {
            "chat": {
                "key_pool": chat_pool,
                "model": "gpt-4o-mini",
                "deadline_seconds": chat_deadline,
            },
            "image": {"key_pool": "stability-main", "model": "core", "deadline_seconds": 30},
            "video": {
                "key_pool": "minimax-main",
                "model": "MiniMax-Hailuo-02",
                "deadline_seconds": 60,
            },
        },
        "max_prompt_chars": 500,
    }


@pytest.fixture(scope="module")
def fakes():
    with (
        FakeOpenAI(keys={**KEYS, "sk-burst-1": 6, "sk-burst-2": 6, **REST_KEYS}) as openai,
        FakeStability(keys={"sk-stab": 100}) as stability,
        FakeMiniMax(keys={"sk-mm": 100}, video_seconds=0.5) as minimax,
        FakeDiscord(retry_after=0.1) as discord,
    ):
        yield {"openai": openai, "stability": stability, "minimax": minimax, "discord": discord}


REST_KEYS = {"sk-rest-429": 600, "sk-rest-401": 600, "sk-rest-ok": 600}


def _save_pool(name: str, provider: str, base_url: str, keys: list[dict]) -> None:
    secrets = {key["name"]: key.pop("secret") for key in keys}
    pool = ApiKeyPool(
        provider=provider, base_url=base_url, timeout_seconds=5, keys=keys, secrets=secrets
    )
    pool.save(name, overwrite=True)
    from blocks.keys import limits_for

    with get_client(sync_client=True) as client:
        for limit in limits_for(pool):
            ensure_limit(client, limit)


@pytest.fixture(scope="module")
def bot_env(fakes, tmp_path_factory):
    """PostgreSQL store, key pool blocks and limits, a bot config file, and the task worker
    processes (two for bot-chat, one for bot-media) with their logs."""
    name, url = create_database()
    folder = tmp_path_factory.mktemp("bot")
    config = folder / "bot.yaml"
    config.write_text(yaml.safe_dump(_config()))
    values = {
        "RELAY_DATABASE_URL": url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_WEBHOOK_ALLOWED_HOSTS": fakes["discord"].host,
        "RELAY_BOT_CONFIG": str(config),
        "RELAY_SECRET_KEY": "test-sealing-key",
        "RELAY_BOT_DELIVERY_RETRY_SECONDS": "1",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    restore = ExitStack()
    restore.enter_context(environment(values))
    openai_url = fakes["openai"].base_url
    _save_pool(
        "openai-main",
        "openai",
        openai_url,
        [{"name": k[3:], "secret": k, "requests_per_minute": n} for k, n in KEYS.items()],
    )
    _save_pool(
        "stability-main",
        "stability",
        fakes["stability"].base_url,
        [{"name": "stab", "secret": "sk-stab", "requests_per_minute": 100, "max_concurrent": 2}],
    )
    _save_pool(
        "minimax-main",
        "minimax",
        fakes["minimax"].base_url,
        [{"name": "mm", "secret": "sk-mm", "requests_per_minute": 100, "max_concurrent": 1}],
    )
    workers, logs = [], []
    for index, pool in enumerate(["bot-chat", "bot-chat", "bot-media"]):
        log = folder / f"worker-{index}.log"
        logs.append(log)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--pool", pool],
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    _wait_for_subscriptions(logs)
    yield {"config": config, "logs": logs, "url": url, "folder": folder}
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
    restore.close()
    from store.db import engine_for

    engine_for(url).dispose()
    drop_database(name)


def _wait_for_subscriptions(logs: list[Path], limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if all("Subscribing to runs" in log.read_text() for log in logs):
            return
        time.sleep(0.3)
    raise AssertionError("task workers did not start: " + logs[0].read_text()[-2000:])


@pytest.fixture
def api(bot_env):  # noqa: ARG001 (the workers must run)
    with TestClient(create_app(reload_settings(), dispatchers())) as client:
        yield client


def write_config(path: Path, config: dict) -> None:
    """Write the bot config that every process of the stack reads."""
    before = path.stat().st_mtime_ns
    path.write_text(yaml.safe_dump(config))
    # A new mtime even within the clock's granularity: every process re-reads it.
    later = max(path.stat().st_mtime_ns, before + 1_000_000)
    os.utime(path, ns=(later, later))


@pytest.fixture
def use_config(bot_env):
    def write(**kwargs) -> None:
        write_config(bot_env["config"], _config(**kwargs))

    yield write
    write()


def _ask(api, discord, kind="chat", prompt="hello", user="1001", channel="chat-general", **extra):
    body = {
        "kind": kind,
        "prompt": prompt,
        "user_id": user,
        "channel": channel,
        "webhook_url": discord.url_for("42", WEBHOOK_TOKEN),
        **extra,
    }
    return api.post("/api/bot/requests", json=body)


def _wait_finished(api, request_id: str, limit: float = 60.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        view = api.get(f"/api/bot/requests/{request_id}").json()
        if view["status"] in ("completed", "failed", "refused") and view["delivery_status"] in (
            "delivered",
            "failed",
        ):
            return view
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} did not finish: {view}")


def _messages_for(discord, request_user: str) -> list[str]:
    return [
        r.payload.get("content", "")
        for r in discord.requests
        if r.payload.get("content", "").startswith(f"<@{request_user}>")
    ]


def _messages_for_prefix(discord, prefix: str) -> list[str]:
    return [
        r.payload.get("content", "")
        for r in discord.requests
        if r.payload.get("content", "").startswith(prefix)
    ]
