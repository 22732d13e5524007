"""Retry-time parsing, provider error messages, and the fake providers themselves (their
window enforcement and records), before the clients are tested against them."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest

from tasks.providers import UpstreamError, openai_api
from tasks.providers.errors import clean_message, parse_duration, parse_retry_after
from tests.fake_providers import FakeOpenAI, readable_text
from tests.test_providers import KEY, _raises

# -- parse_retry_after -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("1.2s", 1.2), ("7", 7.0)],
)
def test_parse_duration_reads_go_durations(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


def test_parse_duration_rejects_garbage() -> None:
    assert parse_duration("soon") is None
    assert parse_duration("5x") is None
    assert parse_duration("1s junk") is None


def test_parse_retry_after_reads_each_header() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"x-ratelimit-reset-requests": "6m0s"}) == 360.0
    assert parse_retry_after({"x-ratelimit-reset-tokens": "20ms"}) == pytest.approx(0.02)
    assert parse_retry_after({"Retry-After": "not a date"}) is None


def test_parse_retry_after_takes_the_largest() -> None:
    headers = {
        "retry-after": "1",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-reset-tokens": "1m2s",
    }
    assert parse_retry_after(headers) == 62.0
    assert parse_retry_after({"retry-after-ms": "4000", "retry-after": "2"}) == 4.0


def test_parse_retry_after_reads_an_http_date() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": later}) == pytest.approx(30, abs=2)
    earlier = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": earlier}) == 0.0


def test_clean_message_masks_keys_and_truncates() -> None:
    assert KEY not in clean_message(f"bad key {KEY} given", KEY)
    assert "sk-abc1" not in clean_message("Incorrect API key provided: sk-abc1****wxyz.", "x")
    assert len(clean_message("word " * 200, KEY)) == 300


def test_upstream_error_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        UpstreamError("nope", kind="later")


# -- the fakes themselves --------------------------------------------------------------------


def test_fake_enforces_its_window_and_records() -> None:
    with FakeOpenAI(keys={KEY: 3}, window_seconds=0.6) as fake:
        for _ in range(3):
            openai_api.chat(api_key=KEY, base_url=fake.base_url, timeout=5, prompt="hi")
        _raises(
            "rate_limited",
            openai_api.chat,
            api_key=KEY,
            base_url=fake.base_url,
            timeout=5,
            prompt="hi",
        )
        assert fake.max_in_window(KEY) == 3
        assert len(fake.accepted(KEY)) == 3 and fake.rejected(KEY) == 1
        time.sleep(0.65)  # sync-ok: the window slides past the first requests (time is the input)
        openai_api.chat(api_key=KEY, base_url=fake.base_url, timeout=5, prompt="again")
        assert fake.max_in_window(KEY) == 3
        assert [r.status for r in fake.requests] == [200, 200, 200, 429, 200]
        assert {r.key for r in fake.requests} == {KEY}
        assert fake.requests[-1].prompt == "again"


def test_fake_measures_peak_concurrency() -> None:
    with FakeOpenAI(keys={KEY: 100}, latency=0.3) as fake:
        threads = [
            threading.Thread(
                target=openai_api.chat,
                kwargs={"api_key": KEY, "base_url": fake.base_url, "timeout": 5, "prompt": "x"},
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert fake.peak_concurrency(KEY) == 4
        assert len(fake.accepted(KEY)) == 4


def test_readable_text_has_exact_length_words_and_lines() -> None:
    text = readable_text(2500)
    assert len(text) == 2500 and "\n" in text and " " in text
