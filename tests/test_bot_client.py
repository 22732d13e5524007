"""``api.client.RelayBotClient`` against the real app, in process, on the paths that need no
Prefect server or task worker: bad input, the token, unknown ids and a refusal (429)."""

from __future__ import annotations

import time
from typing import cast

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from api.client import RelayBotClient, RelayError, Submitted
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT
from tests.fake_discord import FakeDiscord


@pytest.fixture
def discord():
    with FakeDiscord() as fake:
        yield fake


@pytest.fixture
def relay(relay_env, discord, tmp_path, monkeypatch):
    """A client of an app with token ``t``, webhooks allowed to the fake Discord and a bot
    config whose chat requests are over the per-user daily limit from the first one."""
    config = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    config["limits"]["chat"]["per_user_daily"] = 0
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("RELAY_BOT_CONFIG", str(path))
    settings = relay_env(
        API_TOKEN="t",
        WEBHOOK_ALLOWED_HOSTS=discord.host,
        SECRET_KEY="test-sealing-key",
        DATA_DIR=tmp_path / "data",
    )
    app = create_app(settings, dispatchers())
    with TestClient(app) as http, RelayBotClient("", "t", client=_httpx(http)) as client:
        yield client


def _error(call, *args, **kwargs) -> RelayError:
    with pytest.raises(RelayError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"kind": "song"}, "kind"),
        ({"webhook_url": "https://evil.example.com/api/webhooks/1/x"}, "webhook_url"),
    ],
)
def test_bad_input_raises_with_the_servers_reason(relay, changes, needle):
    args = {"kind": "image", "prompt": "a cat", "user_id": "11", "channel": "art-cats", **changes}
    err = _error(relay.submit, args.pop("kind"), args.pop("prompt"), **args)
    assert err.status_code == 422 and err.code == "invalid_request"
    assert needle in err.message


def _httpx(test_client: TestClient) -> httpx.Client:
    """Starlette's TestClient is built on httpx2 where that is installed (it is, here), not
    httpx; RelayBotClient only calls request() and close(), which both spell alike."""
    return cast(httpx.Client, test_client)


def test_wrong_token_is_401(relay_env):
    settings = relay_env(API_TOKEN="t")
    with TestClient(create_app(settings, dispatchers())) as http:
        client = RelayBotClient("", "wrong", client=_httpx(http))
        err = _error(client.submit, "chat", "hi", user_id="1", channel="general")
        assert (err.status_code, err.code, err.message) == (
            401,
            "unauthorized",
            "wrong bearer token",
        )
        unauthenticated = RelayBotClient("", None, client=_httpx(http))
        assert _error(unauthenticated.status, "x").status_code == 401


def test_unknown_request_is_404(relay):
    err = _error(relay.status, "nope")
    assert (err.status_code, err.code) == (404, "not_found") and "nope" in err.message


def test_over_the_daily_limit_is_a_refusal_told_in_discord(relay, discord):
    sent = relay.submit(
        "chat", "hello", user_id="5150", channel="general", webhook_url=discord.url_for("9")
    )
    assert isinstance(sent, Submitted)
    assert not sent.accepted and sent.status == "refused" and sent.request_id
    assert "today's limit of 0 chat requests" in (sent.refusal or "")
    assert sent.retry_after_seconds is not None and sent.retry_after_seconds > 0
    view = relay.status(sent.request_id)
    assert view["status"] == "refused" and "limit" in view["error"] and view["retry_at"]
    assert relay.wait(sent.request_id, timeout=1)["status"] == "refused"
    deadline = time.monotonic() + 5
    while not discord.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    posted = [r.payload.get("content", "") for r in discord.requests]
    assert any("<@5150>" in text and "today's limit" in text for text in posted), posted
