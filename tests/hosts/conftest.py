"""The one multi-host layout every scenario of this package shares (started once: about 45 s).

db, redis, prefect, dask, api-1/2 and asr-1/2 start here; the bot and batch hosts join in
their own scenarios. The fake OpenAI and Discord run outside the hosts, on the bridge's own
address. Leases are as short as the scenarios can afford (a deployment keeps the defaults).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import yaml

from bench.speech import clip
from relay_settings import PROJECT_ROOT
from tests.bot_stack import _config as bot_config
from tests.fake_discord import FakeDiscord
from tests.fake_providers import FakeOpenAI
from tests.netns import Network
from tests.relay_hosts import Layout

API_HOSTS = ["api-1", "api-2"]
ASR_HOSTS = ["asr-1", "asr-2"]
BOT_KEYS = {"sk-hosts-a": 60, "sk-hosts-b": 60}  # accepted calls a minute, each
FIGURES = PROJECT_ROOT / ".relay" / "hosts-figures.json"
# A dead coordinator's job, bot request or video is taken over within its lease.
LEASES = {
    "RELAY_JOB_LEASE_SECONDS": "15",
    "RELAY_BOT_REQUEST_LEASE_SECONDS": "10",
    "RELAY_BOT_DELIVERY_LEASE_SECONDS": "20",
    "RELAY_BOT_DELIVERY_RETRY_SECONDS": "1",
    "RELAY_BATCH_LEASE_SECONDS": "15",
}


@pytest.fixture(scope="package")
def layout() -> Iterator[Layout]:
    """Every host of the transcription layout, started and ready, and the fakes."""
    net = Network()
    with ExitStack() as stack:
        stack.callback(net.close)
        openai = stack.enter_context(FakeOpenAI(keys=BOT_KEYS, latency=3.0, host=net.gateway))
        discord = stack.enter_context(FakeDiscord(retry_after=0.1, host=net.gateway))
        config = net.data / "bot.yaml"
        config.write_text(yaml.safe_dump(bot_config(chat_deadline=180.0)))
        bot = {"RELAY_BOT_CONFIG": str(config), "RELAY_WEBHOOK_ALLOWED_HOSTS": discord.host}
        hosts = Layout(net, extra_env={**LEASES, **bot})
        hosts.fakes = {"openai": openai, "discord": discord}
        stack.callback(hosts.close)
        hosts.start_db()
        hosts.start_redis()
        hosts.start_prefect()
        hosts.bootstrap()
        hosts.start_dask()
        for name in API_HOSTS:
            hosts.start_api(name)
        for name in ASR_HOSTS:
            hosts.start_asr(name)
        hosts.wait_ready("api-1", ASR_HOSTS)
        yield hosts


@pytest.fixture(autouse=True)
def healed(layout: Layout) -> Iterator[None]:
    """After each scenario, the layout the next one expects, also where it failed before
    putting back what it broke: both API hosts and both ASR hosts whole, no extra hosts
    running (asr-3, the bot hosts), every link up."""
    yield
    hosts = layout.net.hosts
    for name, host in hosts.items():
        host.restore()
        if name not in (*API_HOSTS, *ASR_HOSTS) and name.startswith(("asr-", "bot-")):
            host.kill()
    for name in API_HOSTS:
        if "api" not in hosts[name].processes:
            layout.start_api(name)
    broken = [n for n in ASR_HOSTS if {"dask-worker", "asr-tasks"} - set(hosts[n].processes)]
    for name in broken:
        hosts[name].kill()
        layout.start_asr(name)
    if broken:
        layout.wait_ready("api-1", ASR_HOSTS)


@pytest.fixture(scope="package")
def figures() -> Iterator[list[dict[str, Any]]]:
    """Each scenario's figures, written to .relay/hosts-figures.json (docs/hosts.md)."""
    found: list[dict[str, Any]] = []
    yield found
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(found, indent=1))


@pytest.fixture(scope="package")
def speech() -> tuple[bytes, str]:
    """Ten minutes of generated speech (mp3, bench.speech's first script) and what it says."""
    path, reference = clip(10)
    return path.read_bytes(), reference
