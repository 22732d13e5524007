"""The Discord webhook client over real HTTP against the fake Discord on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from tasks.discord_limits import split_message
from tasks.discord_webhook import (
    EPHEMERAL,
    Attachment,
    DeliveryOutcome,
    DeliveryResult,
    Sender,
    WebhookMessage,
    delete_original,
    edit_original,
    post_messages,
)
from tests.fake_discord import FakeDiscord, allowed_fake_discord, nothing_logged_holds

TOKEN = "client-secret-token"
USER = "123456789012345678"


@pytest.fixture
def discord(relay_env):
    """A fake Discord, allow-listed for this test only."""
    with allowed_fake_discord(relay_env, retry_after=0.3, hang_seconds=1.0) as fake:
        yield fake


@pytest.fixture(autouse=True)
def token_never_logged(caplog):
    """Every scenario: no log record at any level holds the token."""
    with nothing_logged_holds(caplog, TOKEN):
        yield


def webhook(fake: FakeDiscord) -> str:
    return fake.url_for(webhook_id="7", token=TOKEN)


def long_text() -> str:
    return "\n\n".join(f"Paragraph {i}: " + "lorem ipsum " * 60 for i in range(8))


@pytest.mark.parametrize("behaviour", ["429", "429-header", "429-reset-after"])
def test_429_waits_as_discord_asks_then_delivers(discord, behaviour):
    discord.script(behaviour, "ok")

    result = post_messages(webhook(discord), [WebhookMessage("hello")], timeout=2)

    assert result == DeliveryResult(DeliveryOutcome.DELIVERED, 2, 1, 1, status_code=200)
    first, second = discord.requests
    assert first.behaviour == behaviour and second.payload["content"] == "hello"
    # The 429 asked for 0.3 s, far below the 5xx backoff of 0.5 s: the wait came from it.
    assert discord.retry_after <= second.received_at - first.received_at < 0.5


def test_an_emptied_bucket_is_waited_out_before_the_next_part_not_after_the_last():
    with FakeDiscord(retry_after=1.5) as discord:  # a wait far above any HTTP round trip
        discord.script("ok-bucket-empty", "ok", "ok-bucket-empty")
        hosts = [discord.host]
        messages = [WebhookMessage("one"), WebhookMessage("two")]

        result = post_messages(webhook(discord), messages, webhook_hosts=hosts)
        last = post_messages(webhook(discord), [WebhookMessage("three")], webhook_hosts=hosts)
        answered = time.monotonic()

    assert result == DeliveryResult(DeliveryOutcome.DELIVERED, 2, 2, 2, status_code=200)
    assert last.delivered
    first, second, third = discord.requests
    assert second.received_at - first.received_at >= discord.retry_after  # no 429 provoked
    assert answered - third.received_at < discord.retry_after  # nothing left to wait for


def test_5xx_is_retried_with_backoff_then_given_up(discord):
    discord.script("503", "500", "502", "ok")

    result = post_messages(webhook(discord), [WebhookMessage("hello")], max_attempts=3)

    assert (result.outcome, result.attempts, result.status_code) == (
        DeliveryOutcome.GAVE_UP,
        3,
        502,
    )
    assert (result.parts_sent, result.parts_total) == (0, 1)
    assert result.reason == "gave up after 3 attempts: HTTP 502: 502: Bad Gateway"
    times = [r.received_at for r in discord.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.5 and times[2] - times[1] >= 1.0


@pytest.mark.parametrize(("status", "message"), [(400, "Invalid Form Body"), (404, "Unknown")])
def test_4xx_is_rejected_without_a_retry(discord, status, message):
    discord.script(status, "ok")

    result = post_messages(webhook(discord), [WebhookMessage("hello")], max_attempts=4)

    assert (result.outcome, result.attempts, result.status_code) == (
        DeliveryOutcome.REJECTED,
        1,
        status,
    )
    assert result.reason.startswith(f"HTTP {status}: {message}")
    assert len(discord.requests) == 1


def test_long_text_is_split_and_a_retry_resumes_after_the_parts_recorded(discord):
    parts = split_message(long_text())
    assert len(parts) >= 3
    messages = [WebhookMessage(part) for part in parts]
    discord.script("ok", "500", "500")

    failed = post_messages(webhook(discord), messages, max_attempts=2, timeout=2)

    assert (failed.outcome, failed.parts_sent, failed.parts_total, failed.attempts) == (
        DeliveryOutcome.GAVE_UP,
        1,
        len(parts),
        3,
    )
    assert failed.reason.startswith(f"message 2 of {len(parts)} not posted: gave up after 2")

    resumed = post_messages(webhook(discord), messages, already_sent=failed.parts_sent)

    assert resumed == DeliveryResult(
        DeliveryOutcome.DELIVERED, len(parts) - 1, len(parts), len(parts), status_code=200
    )
    posted = [r.payload["content"] for r in discord.requests if r.behaviour == "ok"]
    assert posted == parts  # each part once, in order
    assert all(len(content) <= 2000 for content in posted)


def test_everything_already_sent_posts_nothing(discord):
    messages = [WebhookMessage("one"), WebhookMessage("two")]

    result = post_messages(webhook(discord), messages, already_sent=5)

    assert result == DeliveryResult(DeliveryOutcome.DELIVERED, 0, 2, 2)
    assert discord.requests == []


def test_files_sender_and_mentions_reach_discord(discord, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00video")
    files = (Attachment("notes.txt", b"text"), Attachment("clip.mp4", tmp_path / "clip.mp4"))
    sender = Sender(username="R" * 100, thread_id="55", mention_users=(USER,))

    result = post_messages(
        webhook(discord), [WebhookMessage("@everyone look", files=files)], sender=sender
    )

    assert result.delivered
    [request] = discord.requests
    assert request.query == {"thread_id": "55", "wait": "True"}
    assert request.files == {"notes.txt": b"text", "clip.mp4": b"\x00video"}
    assert request.payload["attachments"] == [
        {"id": 0, "filename": "notes.txt"},
        {"id": 1, "filename": "clip.mp4"},
    ]
    assert request.payload["allowed_mentions"] == {"parse": [], "users": [USER]}
    assert request.payload["username"] == "R" * 79 + "…"  # Discord's 80 characters
    assert request.payload["content"] == "@everyone look"


def test_a_host_outside_the_allow_list_is_refused_before_any_request(discord):
    url = f"https://relay-proxy.example/api/webhooks/7/{TOKEN}"

    result = post_messages(url, [WebhookMessage("hello")])

    assert (result.outcome, result.attempts, result.parts_sent) == (
        DeliveryOutcome.REJECTED,
        0,
        0,
    )
    assert "'relay-proxy.example' is not a Discord webhook host" in result.reason
    assert "RELAY_WEBHOOK_ALLOWED_HOSTS" in result.reason
    assert discord.requests == []


def test_the_allow_list_comes_from_the_settings_or_the_caller(discord, relay_env):
    relay_env(WEBHOOK_ALLOWED_HOSTS="")

    refused = post_messages(webhook(discord), [WebhookMessage("hello")])
    allowed = post_messages(
        webhook(discord), [WebhookMessage("hello")], webhook_hosts=[discord.host]
    )

    assert refused.outcome == DeliveryOutcome.REJECTED and "127.0.0.1" in refused.reason
    assert allowed.delivered and len(discord.requests) == 1


def test_a_redirect_is_not_followed(discord):
    with FakeDiscord() as elsewhere:
        discord.script(f"redirect {elsewhere.url_for(token=TOKEN)}")

        result = post_messages(webhook(discord), [WebhookMessage("hello")])

        assert (result.outcome, result.attempts, result.status_code) == (
            DeliveryOutcome.REJECTED,
            1,
            307,
        )
        assert result.reason == "HTTP 307: a redirect to 127.0.0.1, not followed"
        assert elsewhere.requests == []


@pytest.mark.parametrize("scenario", ["unreachable", "404", "hang"])
def test_the_token_is_in_no_result(discord, scenario):
    url = webhook(discord)
    if scenario == "unreachable":
        discord.stop()
    else:
        discord.script(scenario, scenario)

    result = post_messages(
        url, [WebhookMessage("a"), WebhookMessage("b")], timeout=0.3, max_attempts=2
    )

    assert not result.delivered and result.reason
    assert TOKEN not in repr(result)
    if scenario == "unreachable":
        assert "connection failed" in result.reason and "/api/webhooks/7/***" in result.reason


def test_an_interactions_original_response_is_edited_pinging_nobody(discord):
    discord.script("502", "ok")  # retried as a post is
    message = WebhookMessage(f"<@{USER}> still working")
    result = edit_original(webhook(discord), message, max_attempts=3)
    assert result == DeliveryResult(DeliveryOutcome.DELIVERED, 2, 1, 1, status_code=200)
    edit = discord.requests[-1]
    assert (edit.method, edit.message, edit.token) == ("PATCH", "@original", TOKEN)
    # Edit Webhook Message takes no username; the edit pings nobody, not even the user.
    assert edit.payload == {"content": message.content, "allowed_mentions": {"parse": []}}


@pytest.mark.parametrize(
    ("behaviour", "outcome", "code"),
    [
        ("ok", DeliveryOutcome.DELIVERED, None),
        ("404-message", DeliveryOutcome.DELIVERED, None),  # deleted already: gone either way
        ("404", DeliveryOutcome.REJECTED, 10015),  # Unknown Webhook: the token is dead
        ("401", DeliveryOutcome.REJECTED, 50027),
    ],
)
def test_deleting_the_original_response_says_whether_the_token_lives(
    discord, behaviour, outcome, code
):
    discord.script(behaviour)
    result = delete_original(webhook(discord))
    assert result.outcome is outcome and result.discord_code == code
    assert result.delivered == (result.parts_sent == 1)
    (delete,) = discord.requests
    assert (delete.method, delete.message, delete.payload) == ("DELETE", "@original", {})
    assert TOKEN not in str(result)


def test_edits_and_deletes_keep_to_the_allowed_hosts(discord):
    outside = f"https://example.com/api/webhooks/7/{TOKEN}"
    for result in (edit_original(outside, WebhookMessage("x")), delete_original(outside)):
        assert result.outcome is DeliveryOutcome.REJECTED and "example.com" in result.reason
        assert TOKEN not in str(result)
    assert discord.requests == []


def test_an_ephemeral_message_carries_its_flag(discord):
    result = post_messages(webhook(discord), [WebhookMessage("only you", flags=EPHEMERAL)])
    assert result.delivered and discord.requests[0].payload["flags"] == 64
    assert "flags" not in post_messages_payload(discord, WebhookMessage("everyone"))


def post_messages_payload(discord: FakeDiscord, message: WebhookMessage) -> dict:
    post_messages(webhook(discord), [message])
    return discord.requests[-1].payload
