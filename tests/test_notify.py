"""Discord notifications over real HTTP against a fake Discord on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
from prefect import flow
from pydantic import SecretStr, ValidationError

from blocks.discord import DiscordDestination, redact_webhook_url, validate_webhook_url
from tasks.discord_webhook import DeliveryOutcome, DeliveryResult
from tasks.notify import JobEvent, deliver, notify_job
from tests.fake_discord import FakeDiscord, allowed_fake_discord, nothing_logged_holds

TOKEN = "secret-token"
GREEN, RED = 0x2ECC71, 0xE74C3C


@pytest.fixture
def discord(relay_env):
    """A fake Discord, allow-listed for this test only."""
    with allowed_fake_discord(relay_env, retry_after=0.3, hang_seconds=2.0) as fake:
        yield fake


@pytest.fixture(autouse=True)
def token_never_logged(caplog):
    """Every scenario: no log record at any level holds the token."""
    with nothing_logged_holds(caplog, TOKEN):
        yield


def destination(fake: FakeDiscord, **fields: object) -> DiscordDestination:
    return DiscordDestination(webhook_url=fake.url_for(token=TOKEN), **fields)


def completed(**fields: object) -> JobEvent:
    values: dict = {
        "event": "completed",
        "job_id": "job-1",
        "file_name": "meeting.mp3",
        "duration_seconds": 83.4,
        "language": "en",
        "realtime_factor": 0.25,
        "status_url": "https://relay.example/api/transcriptions/job-1",
        "transcript_text": "Welcome to the weekly planning meeting.",
    }
    return JobEvent(**{**values, **fields})


def test_completed_event_posts_embed_and_transcript(discord, caplog):
    result = deliver(destination(discord), completed())

    assert (result.outcome, result.attempts, result.status_code, result.reason) == (
        DeliveryOutcome.DELIVERED,
        1,
        200,
        None,
    )
    [request] = discord.requests
    assert request.token == TOKEN
    assert request.query["wait"].lower() == "true"
    assert request.files == {}
    payload = request.payload
    assert payload["content"] == "Welcome to the weekly planning meeting."
    assert payload["username"] == "Relay"
    assert payload["allowed_mentions"] == {"parse": []}
    [embed] = payload["embeds"]
    assert embed["title"] == "Transcription completed: meeting.mp3"
    assert embed["url"] == "https://relay.example/api/transcriptions/job-1"
    assert embed["color"] == GREEN
    assert {f["name"]: f["value"] for f in embed["fields"]} == {
        "Duration": "1:23",
        "Language": "en",
        "Real-time factor": "0.25",
    }
    assert embed["footer"]["text"] == "job job-1"
    # urllib3's DEBUG request line and our INFO line were logged, both redacted.
    assert '"POST /api/webhooks/1/***?wait=True' in caplog.text
    assert (
        f"posted completed to http://{discord.host}/api/webhooks/1/*** (attempt 1)" in caplog.text
    )


@pytest.mark.parametrize("length", [2000, 2001, 9000])
def test_transcript_over_2000_characters_is_attached(discord, length):
    text = ("Ça va? 👋 " * 1000)[:length]

    result = deliver(destination(discord), completed(transcript_text=text))

    assert result.delivered
    [request] = discord.requests
    if length <= 2000:
        assert request.payload["content"] == text
        assert request.files == {}
    else:
        assert request.files == {"transcript-job-1.txt": text.encode("utf-8")}
        assert "transcript-job-1.txt" in request.payload["content"]
        assert len(request.payload["content"]) <= 2000
        assert request.payload["embeds"][0]["title"] == "Transcription completed: meeting.mp3"


def test_failure_event_carries_the_reason(discord):
    reason = "talk.mp3: audio is 31:00 long (1860.0 s), over the limit of 30:00 (1800 s)"
    event = JobEvent("failed", "job-2", "talk.mp3", duration_seconds=1860.0, error=reason)

    assert deliver(destination(discord), event).delivered

    [embed] = discord.requests[0].payload["embeds"]
    assert embed["title"] == "Transcription failed: talk.mp3"
    assert embed["description"] == reason
    assert embed["color"] == RED
    assert {f["name"]: f["value"] for f in embed["fields"]} == {"Duration": "31:00"}
    assert "content" not in discord.requests[0].payload


def test_discord_length_limits_are_respected(discord):
    event = JobEvent("failed", "job-3", "x" * 300, language="l" * 2000, error="e" * 5000)

    assert deliver(destination(discord), event).delivered

    [embed] = discord.requests[0].payload["embeds"]
    assert len(embed["title"]) == 256 and embed["title"].endswith("…")
    assert len(embed["description"]) == 4096 and embed["description"].endswith("…")
    assert len(embed["fields"][0]["value"]) == 1024


@pytest.mark.parametrize("behaviour", ["429", "429-header"])
def test_rate_limit_waits_retry_after_then_delivers(discord, behaviour):
    discord.script(behaviour, "ok")

    result = deliver(destination(discord), completed(), timeout=2)

    assert (result.delivered, result.attempts) == (True, 2)
    first, second = discord.requests
    assert second.received_at - first.received_at >= discord.retry_after


def test_repeated_5xx_gives_up_after_max_attempts_with_backoff(discord):
    discord.script("500", "500", "500", "ok")

    result = deliver(destination(discord), completed(), timeout=2, max_attempts=3)

    assert (result.delivered, result.attempts, result.status_code) == (False, 3, 500)
    assert result.outcome == DeliveryOutcome.GAVE_UP
    assert "gave up after 3 attempts" in result.reason and "HTTP 500" in result.reason
    times = [r.received_at for r in discord.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.5 and times[2] - times[1] >= 1.0


def test_hang_times_out_then_retries(discord):
    discord.script("hang", "ok")
    started = time.monotonic()

    result = deliver(destination(discord), completed(), timeout=0.3, max_attempts=3)

    assert (result.delivered, result.attempts) == (True, 2)
    assert time.monotonic() - started < 0.3 + 0.5 + 0.7  # timeout + backoff, not the hang


def test_hanging_server_gives_up_in_bounded_time(discord):
    discord.script("hang", "hang", "hang")
    started = time.monotonic()

    result = deliver(destination(discord), completed(), timeout=0.3, max_attempts=2)

    assert (result.delivered, result.attempts, result.status_code) == (False, 2, None)
    assert "no response within 0.3 s" in result.reason
    assert time.monotonic() - started < 2 * 0.3 + 0.5 + 0.7


def test_unreachable_server_gives_up_without_raising(discord):
    url = discord.url_for(token=TOKEN)
    discord.stop()

    result = deliver(DiscordDestination(webhook_url=url), completed(), max_attempts=2)

    assert (result.delivered, result.attempts) == (False, 2)
    assert "connection failed" in result.reason and TOKEN not in result.reason


def test_404_gives_up_after_one_attempt(discord):
    discord.script("404", "ok")

    result = deliver(destination(discord), completed(), timeout=2)

    assert (result.delivered, result.attempts, result.status_code) == (False, 1, 404)
    assert result.outcome == DeliveryOutcome.REJECTED
    assert "Unknown Webhook" in result.reason
    assert len(discord.requests) == 1


@pytest.mark.parametrize(
    ("events", "event"), [(["failed"], "completed"), (["completed", "failed"], "started")]
)
def test_events_not_enabled_are_skipped(discord, events, event):
    result = deliver(destination(discord, events=events), completed(event=event))

    assert (result.outcome, result.attempts, result.reason) == (
        DeliveryOutcome.SKIPPED,
        0,
        "event not enabled",
    )
    assert discord.requests == []


def test_thread_id_and_identity_reach_discord(discord):
    dest = destination(
        discord,
        thread_id="1234567890",
        username="Relay bot",
        avatar_url="https://x.example/a.png",
        events=["started"],
    )

    assert deliver(dest, completed(event="started"), timeout=2).delivered

    [request] = discord.requests
    assert request.query["thread_id"] == "1234567890"
    assert request.payload["username"] == "Relay bot"
    assert request.payload["avatar_url"] == "https://x.example/a.png"


def test_unknown_event_names_are_refused(discord):
    with pytest.raises(ValidationError, match="'finished'"):
        destination(discord, events=["completed", "finished"])


@pytest.mark.parametrize(
    "url",
    [
        f"https://discord.com/api/webhooks/123456789012345678/{TOKEN}",
        f"https://discordapp.com/api/webhooks/123456789012345678/{TOKEN}",
        f"https://canary.discord.com/api/webhooks/1/{TOKEN}",
        f"https://ptb.discord.com/api/v10/webhooks/1/{TOKEN}",
    ],
)
def test_discord_webhook_urls_are_accepted(url):
    assert validate_webhook_url(url) == url
    assert redact_webhook_url(url).endswith("/***")
    assert TOKEN not in redact_webhook_url(url)


def test_allow_listed_host_is_accepted(discord):
    url = discord.url_for(token=TOKEN)
    assert validate_webhook_url(url, [discord.host]) == url
    assert validate_webhook_url(url, ["127.0.0.1"]) == url  # a bare host allows any port
    assert redact_webhook_url(url) == f"http://{discord.host}/api/webhooks/1/***"
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        validate_webhook_url(url, ["127.0.0.1:1"])


@pytest.mark.parametrize(
    "url",
    [
        f"http://evil.example/api/webhooks/1/{TOKEN}",
        f"https://discord.com.evil.example/api/webhooks/1/{TOKEN}",
        f"https://discord.com/{TOKEN}",
        f"https://discord.com/api/channels/1/{TOKEN}",
        f"http://discord.com/api/webhooks/1/{TOKEN}",
        f"https://discord.com:8443/api/webhooks/1/{TOKEN}",
        f"ftp://discord.com/api/webhooks/1/{TOKEN}",
        f"https://user:{TOKEN}@discord.com/api/webhooks/1/x",
        f"https://discord.com/api/webhooks/1/{TOKEN}#frag",
        f"https://discord.com:{TOKEN}/api/webhooks/1/x",
    ],
)
def test_other_urls_are_rejected_without_showing_the_token(discord, url):
    with pytest.raises(ValueError) as rejected:
        validate_webhook_url(url, [discord.host])
    assert TOKEN not in str(rejected.value)

    with pytest.raises(ValidationError) as invalid_block:
        DiscordDestination(webhook_url=url)
    assert TOKEN not in str(invalid_block.value)
    assert TOKEN not in repr(invalid_block.value.errors(include_input=False))


@pytest.mark.parametrize(
    "webhook_url",
    [SecretStr(f"http://evil.example/api/webhooks/1/{TOKEN}"), f"https://discord.com/{TOKEN}"],
)
def test_deliver_never_raises_on_a_broken_destination(webhook_url):
    # model_construct skips validation, as a stale or hand-built block could.
    broken = DiscordDestination.model_construct(webhook_url=webhook_url, events=["completed"])

    result = deliver(broken, completed())

    assert (result.delivered, result.attempts) == (False, 0)
    assert result.reason and TOKEN not in result.reason


@flow
def notify_flow(block_name: str, event: JobEvent) -> DeliveryResult:
    return notify_job(block_name, event)


@pytest.mark.usefixtures("prefect_server")
def test_notify_job_without_a_saved_destination_does_not_raise():
    result = notify_flow("no-such-destination", completed())  # a real flow and task run

    assert result.outcome == DeliveryOutcome.SKIPPED
    assert result.reason == "no Discord destination 'no-such-destination' configured"


@pytest.mark.usefixtures("prefect_server")
def test_notify_job_posts_through_a_saved_destination(discord, relay_env):
    destination(discord, thread_id="42").save("test-dest", overwrite=True)

    result = notify_job.fn("test-dest", completed())

    assert (result.delivered, result.attempts) == (True, 1)
    [request] = discord.requests
    assert request.token == TOKEN and request.query["thread_id"] == "42"
    assert request.payload["content"] == "Welcome to the weekly planning meeting."

    # The same block, loaded where its host is not allowed: refused, reported, not raised.
    relay_env(WEBHOOK_ALLOWED_HOSTS="")
    refused = notify_flow("test-dest", completed())
    assert not refused.delivered and refused.outcome == DeliveryOutcome.REJECTED
    assert "could not load Discord destination 'test-dest'" in refused.reason
    assert "is not a Discord webhook host" in refused.reason
    assert len(discord.requests) == 1
