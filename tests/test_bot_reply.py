"""Bot replies over real HTTP against the fake Discord on 127.0.0.1."""

from __future__ import annotations

import random
import re
import string
from typing import Any

import pytest

from tasks.bot_reply import BotReply, ReplyFile, deliver_reply
from tasks.discord_limits import split_message
from tasks.discord_webhook import DeliveryOutcome, DeliveryResult
from tests.fake_discord import FakeDiscord, allowed_fake_discord, nothing_logged_holds

TOKEN = "reply-secret-token"
USER = "123456789012345678"
MENTION = f"<@{USER}>"


@pytest.fixture
def discord(relay_env):
    """A fake Discord, allow-listed for this test only."""
    with allowed_fake_discord(relay_env, retry_after=0.1, hang_seconds=1.0) as fake:
        yield fake


@pytest.fixture(autouse=True)
def token_never_logged(caplog):
    """Every scenario: no log record at any level holds the token."""
    with nothing_logged_holds(caplog, TOKEN):
        yield


def webhook(fake: FakeDiscord) -> str:
    return fake.url_for(webhook_id="42", token=TOKEN)


def reply(**fields: Any) -> BotReply:
    return BotReply(**{"request_id": "req-1", "user_id": USER, "kind": "chat", **fields})


def delivered(parts: int, attempts: int) -> DeliveryResult:
    """The result of a delivery whose ``parts`` were all accepted (HTTP 200, ``?wait=true``)."""
    return DeliveryResult(DeliveryOutcome.DELIVERED, attempts, parts, parts, status_code=200)


def squash(text: str) -> str:
    return "".join(text.split())


def words_text(count: int, paragraph_every: int = 0, line_every: int = 0) -> str:
    out = []
    for i in range(count):
        out.append(f"word{i}")
        if paragraph_every and i % paragraph_every == paragraph_every - 1:
            out.append("\n\n")
        elif line_every and i % line_every == line_every - 1:
            out.append("\n")
        else:
            out.append(" ")
    return "".join(out).strip()


def code_text() -> str:
    code = "\n".join(f"    value_{i} = compute({i}, 'x' * {i})  # step {i}" for i in range(400))
    plain = "\n".join(f"row {i}: {'-' * (i % 30)}" for i in range(60))
    return (
        f"Here is the code:\n\n```python\n{code}\n```\n\nAnd the table:\n\n```\n{plain}\n```\n"
        f"{words_text(300, paragraph_every=40)}"
    )


TEXTS = {
    "paragraphs": words_text(3000, paragraph_every=120),
    "one long word": "".join(random.Random(1).choices(string.ascii_letters, k=5000)),
    "short lines": "\n".join(f"line {i}" for i in range(1500)),
    "code block": code_text(),
    "crlf and spaces": "\r\n".join(f"item {i}   with   gaps" for i in range(400)),
}


def assert_reassembles(text: str, parts: list[str], limit: int) -> None:
    """Parts fit, keep fences balanced, and read back as the text: in order, nothing lost
    but whitespace at the cuts and the fence lines added around them."""
    whole = squash(text)
    reachable = {0}  # where in the squashed text the parts so far can end
    for i, part in enumerate(parts):
        assert 0 < len(part) <= limit
        assert part.count("```") % 2 == 0, f"part {i} has unbalanced fences"
        reopen = re.match(r"```[\w+#.-]*\n", part) if i > 0 else None
        heads = ["", reopen.group(0)] if reopen else [""]
        tails = ["", "\n```"] if i < len(parts) - 1 and part.endswith("\n```") else [""]
        cores = [part[len(h) : len(part) - len(t)] for h in heads for t in tails]
        # Each core is a verbatim piece of the text (a closing fence may follow a shorter gap).
        cores = [c for c in cores if c in text or c.removesuffix("\n```") in text]
        reachable = {
            pointer + len(squash(core))
            for pointer in reachable
            for core in cores
            if whole.startswith(squash(core), pointer)
        }
        assert reachable, f"part {i} is not the next piece of the text: {part[:60]!r}"
    assert len(whole) in reachable


@pytest.mark.parametrize("limit", [2000, 300, 40])
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_split_message_properties(name, limit):
    text = TEXTS[name]

    parts = split_message(text, limit)

    assert_reassembles(text, parts, limit)
    assert len(parts) <= 2 * len(text) // limit + 2  # cuts are not needlessly early


def test_split_message_reopens_code_with_its_language():
    parts = split_message(code_text(), 500)

    inside = [p for p in parts[1:] if p.startswith("```python\n")]
    assert len(inside) >= 10
    assert all(p.endswith("\n```") for p in inside[:-1])
    assert split_message("short") == ["short"] and split_message("  \n ") == []


def test_split_message_prefers_paragraphs_then_lines_then_words():
    text = "a" * 1500 + "\n\n" + "b" * 200 + "\n" + "c " * 300
    parts = split_message(text, 2000)
    assert parts[0] == "a" * 1500
    assert split_message("x" * 30 + "\n" + "y " * 20, 40)[0] == "x" * 30


def test_long_chat_answer_arrives_in_order_mentioning_only_the_user(discord):
    text = ("@everyone <@&999> " + words_text(1200, paragraph_every=100))[:4500]
    assert len(text) == 4500

    result = deliver_reply(webhook(discord), reply(text=text))

    assert result == delivered(3, 3)
    contents = [r.payload["content"] for r in discord.requests]
    assert contents[0].startswith(f"{MENTION}\n@everyone")
    assert all(MENTION not in c for c in contents[1:])
    assert squash("".join(contents)) == squash(MENTION + text)
    for request in discord.requests:
        assert request.token == TOKEN and request.query["wait"].lower() == "true"
        assert request.payload["allowed_mentions"] == {"parse": [], "users": [USER]}
        assert request.payload["username"] == "Relay"
        assert len(request.payload["content"]) <= 2000


def test_image_under_the_limit_is_attached_intact(discord, tmp_path):
    data = random.Random(2).randbytes(300_000)
    (tmp_path / "cat.png").write_bytes(data)
    image = ReplyFile("cat.png", tmp_path / "cat.png")

    result = deliver_reply(webhook(discord), reply(kind="image", text="A cat", files=(image,)))

    assert result == delivered(1, 1)
    [request] = discord.requests
    assert request.files == {"cat.png": data}
    assert request.payload["content"] == f"{MENTION}\nA cat"
    assert request.payload["attachments"] == [{"id": 0, "filename": "cat.png"}]


@pytest.mark.parametrize("url", ["https://cdn.example/clips/big.mp4", None])
def test_file_over_the_limit_becomes_a_line(discord, tmp_path, url):
    (tmp_path / "big.mp4").write_bytes(b"v" * 20_000)
    video = ReplyFile("big.mp4", tmp_path / "big.mp4", url)

    result = deliver_reply(
        webhook(discord), reply(kind="video", files=(video,)), attachment_limit=10_000
    )

    assert result.delivered and result.parts_total == 1
    [request] = discord.requests
    assert request.files == {}
    content = request.payload["content"]
    assert content.startswith(f"{MENTION}\n")
    if url:
        assert "big.mp4: https://cdn.example/clips/big.mp4" in content
    else:
        assert "big.mp4 (19.5 KiB) is too large to attach" in content


def test_files_are_grouped_ten_per_message_within_the_limit(discord, tmp_path):
    files = []
    for i in range(13):
        (tmp_path / f"img{i}.png").write_bytes(bytes([i]) * (100 if i < 11 else 800))
        files.append(ReplyFile(f"img{i}.png", tmp_path / f"img{i}.png"))

    result = deliver_reply(
        webhook(discord), reply(kind="image", files=tuple(files)), attachment_limit=1500
    )

    assert result == delivered(3, 3)
    first, second, third = discord.requests
    assert list(first.files) == [f"img{i}.png" for i in range(10)]
    assert first.payload["content"] == MENTION
    assert list(second.files) == ["img10.png", "img11.png"]  # 100 + 800 + 800 > 1500
    assert list(third.files) == ["img12.png"]
    assert third.files["img12.png"] == bytes([12]) * 800


@pytest.mark.parametrize("behaviour", ["429", "429-header"])
def test_rate_limit_waits_retry_after_then_delivers(discord, behaviour):
    discord.script(behaviour, "ok")

    result = deliver_reply(webhook(discord), reply(text="hello"), timeout=2)

    assert result == delivered(1, 2)
    first, second = discord.requests
    assert discord.retry_after <= second.received_at - first.received_at < 1.0


def test_5xx_gives_up_then_resumes_without_reposting(discord):
    answer = reply(text=words_text(1200, paragraph_every=100)[:4500])
    discord.script("ok", "500", "500")

    failed = deliver_reply(webhook(discord), answer, timeout=2, max_attempts=2)

    assert (failed.outcome, failed.parts_sent, failed.parts_total) == (
        DeliveryOutcome.GAVE_UP,
        1,
        3,
    )
    assert failed.attempts == 3
    assert "message 2 of 3" in failed.reason and "gave up after 2 attempts" in failed.reason
    assert "HTTP 500" in failed.reason and TOKEN not in failed.reason

    resumed = deliver_reply(webhook(discord), answer, timeout=2, skip_messages=1)

    assert resumed == delivered(3, 2)
    posted = [r.payload["content"] for r in discord.requests if r.behaviour == "ok"]
    assert len(posted) == 3 and len(discord.requests) == 5
    assert posted[0].startswith(MENTION) and len(set(posted)) == 3
    assert squash("".join(posted)) == squash(MENTION + answer.text)


def test_failure_is_one_short_message(discord, tmp_path):
    (tmp_path / "x.png").write_bytes(b"png")
    refused = reply(
        kind="image",
        text="ignored caption",
        files=(ReplyFile("x.png", tmp_path / "x.png"),),
        failure="The prompt was refused by the safety filter.",
    )

    result = deliver_reply(webhook(discord), refused)

    assert result == delivered(1, 1)
    [request] = discord.requests
    assert request.payload["content"] == (
        f"{MENTION} ⚠️ The prompt was refused by the safety filter."
    )
    assert request.files == {}


def test_invalid_url_is_refused_without_any_request(discord):
    result = deliver_reply(f"https://evil.example/api/webhooks/1/{TOKEN}", reply(text="hi"))

    assert (result.outcome, result.parts_sent, result.attempts) == (
        DeliveryOutcome.REJECTED,
        0,
        0,
    )
    assert "'evil.example' is not a Discord webhook host" in result.reason
    assert TOKEN not in result.reason
    assert discord.requests == []


def test_unreachable_server_is_reported_not_raised(discord):
    url = webhook(discord)
    discord.stop()

    result = deliver_reply(url, reply(text="hi"), max_attempts=2)

    assert (result.delivered, result.attempts) == (False, 2)
    assert "connection failed" in result.reason and TOKEN not in result.reason
