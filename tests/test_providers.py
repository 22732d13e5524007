"""Provider clients against the fake OpenAI, Stability and MiniMax servers: real HTTP, no mocks."""

from __future__ import annotations

import time

import pytest

from tasks.providers import ChatAnswer, MediaAnswer, UpstreamError, minimax, openai_api, stability
from tests.fake_providers import FakeMiniMax, FakeOpenAI, FakeStability

KEY = "sk-test-relay-0123456789abcdef"  # distinctive, so a leak in a message is easy to spot
OTHER = "sk-test-relay-other-9876543210"


def _raises(kind: str, call, *args, **kwargs) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert error.kind == kind, error
    assert KEY not in str(error) and KEY not in repr(error) and OTHER not in str(error)
    return error


# -- OpenAI ----------------------------------------------------------------------------------


@pytest.fixture
def fake_openai():
    with FakeOpenAI(keys={KEY: 50, OTHER: 50}) as fake:
        yield fake


def test_openai_chat_answers(fake_openai: FakeOpenAI) -> None:
    answer = openai_api.chat(
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=5,
        prompt="hello there",
        system_prompt="be brief",
        max_tokens=50,
    )
    assert answer == ChatAnswer(text="Echo: hello there", model="gpt-4o-mini", total_tokens=6)
    sent = fake_openai.requests[-1].fields
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_tokens"] == 50


def test_openai_chat_long_answer(fake_openai: FakeOpenAI) -> None:
    answer = openai_api.chat(
        api_key=KEY, base_url=fake_openai.base_url, timeout=5, prompt="long:4500 tell a story"
    )
    assert len(answer.text) == 4500


def test_openai_client_is_reused() -> None:
    first = openai_api._client(KEY, "http://127.0.0.1:1/v1", 5)
    assert openai_api._client(KEY, "http://127.0.0.1:1/v1", 5.0) is first
    assert openai_api._client(OTHER, "http://127.0.0.1:1/v1", 5) is not first
    assert first.max_retries == 0


@pytest.mark.parametrize("model", ["gpt-image-1", "dall-e-3"])
def test_openai_image_answers_png(fake_openai: FakeOpenAI, model: str) -> None:
    answer = openai_api.image(
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=5,
        prompt="large:20000 a fox",
        model=model,
    )
    assert isinstance(answer, MediaAnswer)
    assert answer.data.startswith(b"\x89PNG\r\n\x1a\n") and len(answer.data) == 20000
    assert answer.mime_type == "image/png" and answer.file_name == "image.png"
    asked = fake_openai.requests[-1].fields
    assert ("response_format" in asked) == model.startswith("dall-e")


def test_openai_429_is_one_request_with_the_reset_header_parsed() -> None:
    with FakeOpenAI(keys={KEY: 2}, window_seconds=3.0) as fake:
        openai_api.chat(api_key=KEY, base_url=fake.base_url, timeout=5, prompt="one")
        time.sleep(1.0)  # sync-ok: the second request must land 1 s later in the 3 s window
        openai_api.chat(api_key=KEY, base_url=fake.base_url, timeout=5, prompt="two")
        error = _raises(
            "rate_limited",
            openai_api.chat,
            api_key=KEY,
            base_url=fake.base_url,
            timeout=5,
            prompt="three",
        )
        # retry-after says 2 s (one slot frees); x-ratelimit-reset-requests ~3 s wins.
        assert error.status == 429
        assert 2.5 < error.retry_after <= 3.0
        assert len(fake.requests) == 3  # the SDK did not retry


def test_openai_500_is_one_request(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail(KEY, 500)
    error = _raises(
        "unavailable",
        openai_api.chat,
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=5,
        prompt="hi",
    )
    assert error.status == 500
    assert len(fake_openai.requests) == 1


def test_openai_key_errors_are_unauthorized(fake_openai: FakeOpenAI) -> None:
    url = fake_openai.base_url
    _raises(
        "unauthorized", openai_api.chat, api_key="sk-unknown", base_url=url, timeout=5, prompt="hi"
    )
    fake_openai.revoke(KEY)
    error = _raises(
        "unauthorized", openai_api.chat, api_key=KEY, base_url=url, timeout=5, prompt="hi"
    )
    assert error.status == 401
    fake_openai.fail(OTHER, 429, code="insufficient_quota")
    _raises("unauthorized", openai_api.image, api_key=OTHER, base_url=url, timeout=5, prompt="x")
    fake_openai.fail(OTHER, 403)
    _raises("unauthorized", openai_api.chat, api_key=OTHER, base_url=url, timeout=5, prompt="x")


def test_openai_bad_request_is_refused_with_the_providers_message(fake_openai: FakeOpenAI) -> None:
    error = _raises(
        "refused",
        openai_api.image,
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=5,
        prompt="refuse this picture",
    )
    assert "safety system" in error.message and error.status == 400
    fake_openai.fail(KEY, 400, times=1)
    _raises(
        "refused",
        openai_api.chat,
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=5,
        prompt="hi",
    )
    openai_api.chat(api_key=KEY, base_url=fake_openai.base_url, timeout=5, prompt="hi")


def test_openai_hang_times_out(fake_openai: FakeOpenAI) -> None:
    fake_openai.hang(KEY, 5)
    started = time.monotonic()
    error = _raises(
        "unavailable",
        openai_api.chat,
        api_key=KEY,
        base_url=fake_openai.base_url,
        timeout=0.4,
        prompt="hi",
    )
    assert time.monotonic() - started < 2
    assert "time" in error.message
    assert len(fake_openai.requests) == 1


def test_openai_connection_refused_is_unavailable() -> None:
    with FakeOpenAI(keys={KEY: 1}) as fake:
        url = fake.base_url
    _raises("unavailable", openai_api.chat, api_key=KEY, base_url=url, timeout=2, prompt="hi")


# -- Stability -------------------------------------------------------------------------------


@pytest.fixture
def fake_stability():
    with FakeStability(keys={KEY: 50}, window_seconds=10) as fake:
        yield fake


def test_stability_image_answers(fake_stability: FakeStability) -> None:
    answer = stability.image(
        api_key=KEY,
        base_url=fake_stability.base_url,
        timeout=5,
        prompt="large:3000 a cat",
        endpoint="ultra",
        aspect_ratio="16:9",
    )
    assert answer.data.startswith(b"\x89PNG") and len(answer.data) == 3000
    assert answer.mime_type == "image/png" and answer.file_name == "image.png"
    sent = fake_stability.requests[-1]
    assert sent.path == "/v2beta/stable-image/generate/ultra"
    assert sent.fields["aspect_ratio"] == "16:9" and sent.fields["output_format"] == "png"
    assert sent.fields["accept"] == "image/*" and sent.key == KEY


def test_stability_429_waits_its_window() -> None:
    with FakeStability(keys={KEY: 1}, window_seconds=10) as fake:
        stability.image(api_key=KEY, base_url=fake.base_url, timeout=5, prompt="one")
        error = _raises(
            "rate_limited",
            stability.image,
            api_key=KEY,
            base_url=fake.base_url,
            timeout=5,
            prompt="two",
        )
        assert error.retry_after == 10.0 and error.status == 429
        assert fake.max_in_window(KEY) == 1 and fake.rejected(KEY) == 1


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, None, "unauthorized"),
        (402, None, "unauthorized"),
        (403, "content_moderation", "refused"),
        (400, None, "refused"),
        (500, None, "unavailable"),
        (503, None, "unavailable"),
    ],
)
def test_stability_errors_map(
    fake_stability: FakeStability, status: int, code: str | None, kind: str
) -> None:
    fake_stability.fail(KEY, status, code=code)
    error = _raises(
        kind,
        stability.image,
        api_key=KEY,
        base_url=fake_stability.base_url,
        timeout=5,
        prompt="a cat",
    )
    assert error.status == status


def test_stability_moderation_and_revocation(fake_stability: FakeStability) -> None:
    url = fake_stability.base_url
    error = _raises(
        "refused", stability.image, api_key=KEY, base_url=url, timeout=5, prompt="refuse this"
    )
    assert "moderation" in error.message
    fake_stability.revoke(KEY)
    _raises("unauthorized", stability.image, api_key=KEY, base_url=url, timeout=5, prompt="x")


def test_stability_hang_times_out(fake_stability: FakeStability) -> None:
    fake_stability.hang(KEY, 5)
    started = time.monotonic()
    _raises(
        "unavailable",
        stability.image,
        api_key=KEY,
        base_url=fake_stability.base_url,
        timeout=0.4,
        prompt="a cat",
    )
    assert time.monotonic() - started < 2


# -- MiniMax ---------------------------------------------------------------------------------


@pytest.fixture
def fake_minimax():
    with FakeMiniMax(keys={KEY: 50}, video_seconds=0.3) as fake:
        yield fake


def _video(fake: FakeMiniMax, prompt: str = "a dog on a skateboard", **kwargs) -> MediaAnswer:
    options = {"timeout": 5, "poll_interval": 0.05, "deadline_seconds": 5} | kwargs
    return minimax.video(api_key=KEY, base_url=fake.base_url, prompt=prompt, **options)


def test_minimax_video_answers(fake_minimax: FakeMiniMax) -> None:
    statuses: list[str] = []
    answer = _video(fake_minimax, "large:10000 a dog", on_status=statuses.append)
    assert answer.data[4:8] == b"ftyp" and len(answer.data) == 10000
    assert answer.mime_type == "video/mp4" and answer.file_name == "output.mp4"
    assert answer.source_url.startswith(fake_minimax.origin + "/download/")
    assert statuses[0] == "Queueing" and "Processing" in statuses and statuses[-1] == "Success"
    # Only the create call counts; the download carries no key (pre-signed URL).
    assert len(fake_minimax.accepted(KEY)) == 1
    download = fake_minimax.requests[-1]
    assert download.path.startswith("/download/") and download.key is None


def test_minimax_only_create_calls_count() -> None:
    with FakeMiniMax(keys={KEY: 1}, video_seconds=0.2) as fake:
        _video(fake)
        error = _raises("rate_limited", _video, fake)
        assert error.retry_after == 60.0
        assert fake.max_in_window(KEY) == 1 and fake.rejected(KEY) == 1


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (1002, "rate_limited"),
        (1039, "rate_limited"),
        (1004, "unauthorized"),
        (2049, "unauthorized"),
        (1008, "unauthorized"),
        (1026, "refused"),
        (1027, "refused"),
        (2013, "refused"),
        (1013, "unavailable"),
        (4242, "unavailable"),
    ],
)
def test_minimax_base_resp_codes_map(fake_minimax: FakeMiniMax, code: int, kind: str) -> None:
    fake_minimax.fail(KEY, 200, code=code)
    error = _raises(kind, _video, fake_minimax)
    assert f"code {code}" in error.message
    assert fake_minimax.requests[-1].status == 200  # HTTP 200 all the same


def test_minimax_scripted_http_errors(fake_minimax: FakeMiniMax) -> None:
    fake_minimax.fail(KEY, 429, times=1)
    assert _raises("rate_limited", _video, fake_minimax).retry_after == 60.0
    fake_minimax.fail(KEY, 500, times=1)
    assert _raises("unavailable", _video, fake_minimax).status == 500
    fake_minimax.fail(KEY, 401, times=1)
    _raises("unauthorized", _video, fake_minimax)
    assert _video(fake_minimax).data  # the script ran out


def test_minimax_unknown_and_revoked_keys(fake_minimax: FakeMiniMax) -> None:
    with pytest.raises(UpstreamError) as caught:
        minimax.video(api_key="nobody", base_url=fake_minimax.base_url, timeout=5, prompt="x")
    assert caught.value.kind == "unauthorized"
    fake_minimax.revoke(KEY)
    _raises("unauthorized", _video, fake_minimax)


def test_minimax_refused_prompt(fake_minimax: FakeMiniMax) -> None:
    error = _raises("refused", _video, fake_minimax, "refuse this")
    assert "1026" in error.message


def test_minimax_failed_task_is_unavailable(fake_minimax: FakeMiniMax) -> None:
    statuses: list[str] = []
    _raises("unavailable", _video, fake_minimax, "fail-video please", on_status=statuses.append)
    assert statuses[-1] == "Fail"


def test_minimax_deadline(fake_minimax: FakeMiniMax) -> None:
    fake_minimax.video_seconds = 30
    started = time.monotonic()
    error = _raises("unavailable", _video, fake_minimax, deadline_seconds=0.3)
    assert "not ready after 0.3 s" in error.message
    assert time.monotonic() - started < 1.5


def test_minimax_hang_times_out(fake_minimax: FakeMiniMax) -> None:
    fake_minimax.hang(KEY, 5)
    started = time.monotonic()
    _raises("unavailable", _video, fake_minimax, timeout=0.4)
    assert time.monotonic() - started < 2


def test_stop_does_not_wait_for_hanging_handlers() -> None:
    fake = FakeStability(keys={KEY: 5}).start()
    fake.hang(KEY, 30)
    _raises(
        "unavailable", stability.image, api_key=KEY, base_url=fake.base_url, timeout=0.2, prompt="x"
    )
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
