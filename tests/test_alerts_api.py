"""POST /api/alerts: Alertmanager's webhook in, embeds out to the alerts Discord destination
(a fake Discord over real HTTP); 503 when Discord does not take them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from blocks.discord import DiscordDestination
from relay_settings import RelaySettings
from tasks.alerts import COLOURS, Alert, AlertStatus, alert_messages
from tests.fake_discord import FakeDiscord, allowed_fake_discord

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "alerts-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def group(*alerts: dict, status: str = "firing") -> dict:
    """A webhook body as Alertmanager sends it (version 4)."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="RelayWorkerDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "relay-discord",
        "groupLabels": {"alertname": "RelayWorkerDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def alert(status: str, name: str, **labels: str) -> dict:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", **labels},
        "annotations": {
            "summary": f"{name} on {labels.get('pool', '?')}",
            "description": "No scrape succeeded for 5 minutes.",
            "runbook_url": "https://relay.example/docs/ops-workers.md#down",
        },
        "startsAt": "2026-12-07T05:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "a1b2c3",
    }


@pytest.fixture
def discord(relay_env):
    with allowed_fake_discord(relay_env, retry_after=0.2) as fake:
        DiscordDestination(webhook_url=fake.url_for(token="alerts-secret")).save(
            "test-alerts", overwrite=True
        )
        yield fake


@pytest.fixture
def client(discord):  # noqa: ARG001 (the destination it posts to)
    settings = RelaySettings(api_token=TOKEN, discord_alerts_block="test-alerts")
    with TestClient(create_app(settings, {})) as test_client:
        yield test_client


def test_a_group_is_posted_as_one_embed_per_alert(client: TestClient, discord: FakeDiscord):
    body = group(
        alert("resolved", "RelayQueueTooOld", pool="asr-cpu"),
        alert("firing", "RelayWorkerDown", pool="bot-chat", host="h1"),
    )
    answer = client.post("/api/alerts", json=body, headers=AUTH)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"alerts": 2, "messages": 1}
    [request] = discord.requests
    assert request.token == "alerts-secret"
    firing, resolved = request.payload["embeds"]  # firing first
    assert firing["title"] == "[FIRING] RelayWorkerDown: RelayWorkerDown on bot-chat"
    assert firing["color"] == COLOURS["firing"] and resolved["color"] == COLOURS["resolved"]
    assert firing["url"] == "https://relay.example/docs/ops-workers.md#down"
    assert firing["description"] == "No scrape succeeded for 5 minutes."
    fields = {f["name"]: f["value"] for f in firing["fields"]}
    assert fields == {"Severity": "critical", "Labels": "host=h1, pool=bot-chat"}
    assert request.payload.get("allowed_mentions") == {"parse": []}  # pings nobody


def test_without_the_token_nothing_is_posted(client: TestClient, discord: FakeDiscord):
    answer = client.post("/api/alerts", json=group(alert("firing", "X")))
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
    assert discord.requests == []


def test_discord_refusing_them_is_a_503_so_alertmanager_sends_them_again(
    client: TestClient, discord: FakeDiscord
):
    discord.script("404")
    answer = client.post("/api/alerts", json=group(alert("firing", "X")), headers=AUTH)
    assert answer.status_code == 503
    assert answer.json()["error"] == "alerts_not_delivered"
    assert "alerts-secret" not in answer.text


def test_no_alerts_destination_is_a_503(relay_env):
    relay_env(DISCORD_ALERTS_BLOCK="")
    settings = RelaySettings(api_token=TOKEN, discord_block="no-such-block-here")
    with TestClient(create_app(settings, {})) as client:
        answer = client.post("/api/alerts", json=group(alert("firing", "X")), headers=AUTH)
    assert answer.status_code == 503
    assert "no Discord destination 'no-such-block-here'" in answer.json()["message"]


def test_a_big_group_goes_four_alerts_to_a_message_and_says_what_it_left_out():
    alerts = [
        Alert(AlertStatus.FIRING, f"A{i:02d}", starts_at=datetime(2026, 1, 1, tzinfo=UTC))
        for i in range(45)
    ]
    messages = alert_messages(alerts)
    assert [len(m.embeds) for m in messages] == [4] * 10 + [0]
    assert messages[-1].content == "… and 5 more alerts in this group."
    assert sum(len(str(embed)) for embed in messages[0].embeds) < 6000
