"""Completion callbacks: signed POSTs to a real receiver on 127.0.0.1, their retries, the
SSRF guard and the leased rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime

import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook

from relay_settings import reload_settings
from store import bot as bot_requests
from store import callbacks, jobs
from store.callbacks import CALLBACK_LEASES
from store.db import get_engine
from store.models import (
    BotRequestStatus,
    Callback,
    CallbackStatus,
    CallbackSubject,
    JobStatus,
    table_of,
)
from tasks import safe_http
from tasks.callbacks import deliver_due, deliver_now, message_id
from tests.callback_receiver import Received, receiver
from tests.tls_receiver import certificates

SECRET = "whsec_" + base64.b64encode(b"relay-callback-test-key-32-bytes").decode()
TRANSCRIPTION = CallbackSubject.TRANSCRIPTION


@pytest.fixture
def calls(database_url, relay_env):  # noqa: ARG001 (the store each test runs on)
    """Callbacks allowed to 127.0.0.1 (the receiver), with quick retries."""
    relay_env(
        CALLBACK_SIGNING_KEY=SECRET,
        CALLBACK_ALLOW_PRIVATE="true",
        CALLBACK_BACKOFF_SECONDS="0.05",
        CALLBACK_BACKOFF_MAX_SECONDS="0.2",
        CALLBACK_TIMEOUT_SECONDS="5",
        CALLBACK_INLINE_ATTEMPTS="1",
        CALLBACK_ATTEMPTS="4",
    )
    with receiver() as listening:
        yield listening
    # Nothing a test left due may post to a later test's receiver (a port used again).
    with get_engine().begin() as connection:
        connection.execute(
            update(table_of(Callback))
            .where(CALLBACK_LEASES.unfinished)
            .values(status=CallbackStatus.FAILED)
        )


def ended_job(url: str, status: JobStatus = JobStatus.COMPLETED) -> str:
    """A job given ``url`` as its callback, ended with ``status``."""
    job = jobs.create_job("/in/a.wav", "a.wav", callback_url=url)
    assert callbacks.get(TRANSCRIPTION, job.id).status == CallbackStatus.WAITING
    if status == JobStatus.COMPLETED:
        assert jobs.complete_job(job.id, "en", "tiny.en")
    else:
        assert jobs.fail_job(job.id, "the audio was unreadable")
    return job.id


def resolving_to(addresses: list[str]):
    """A stand-in for DNS: every name resolves to ``addresses``."""
    return lambda _host, _port: addresses


def verified(got: Received) -> dict:
    """The body, once the signature checks out with the reference implementation."""
    return Webhook(SECRET).verify(got.body, got.headers)


def settled(job_id: str, until: set[CallbackStatus], limit: float = 20.0):
    """Run maintenance passes until the job's callback is in one of ``until``."""
    deadline = time.monotonic() + limit
    while (found := callbacks.get(TRANSCRIPTION, job_id)).status not in until:
        assert time.monotonic() < deadline, f"callback stayed {found.status}: {found.last_error}"
        deliver_due()
        time.sleep(0.05)
    return found


def test_a_job_end_is_posted_once_signed_and_verifiable(calls):
    job_id = ended_job(calls.url)
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.DELIVERED
    (got,) = calls.wait_for(1)
    body = verified(got)
    assert body["type"] == "transcription.completed"
    assert body["data"]["job_id"] == job_id and body["data"]["status"] == "completed"
    assert body["data"]["status_url"] == f"/api/transcriptions/{job_id}"
    assert got.path == "/hooks/relay?token=receiver-secret"
    assert got.headers["webhook-id"] == message_id(callbacks.get(TRANSCRIPTION, job_id).id)
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    # Delivered means never again: not by the ender, not by a maintenance pass.
    assert deliver_now(TRANSCRIPTION, job_id) is None and job_id not in deliver_due()
    stored = callbacks.get(TRANSCRIPTION, job_id)
    assert stored.status == CallbackStatus.DELIVERED and stored.attempts == 1
    assert stored.delivered_at is not None and len(calls.received) == 1
    # The URL's token is sealed at rest, and shown without its query.
    assert "receiver-secret" not in stored.url_sealed + stored.url_shown
    assert stored.url_shown == f"http://127.0.0.1:{calls.port}/hooks/relay"


def test_retries_after_two_500s_keep_the_webhook_id(calls, relay_env):
    relay_env(CALLBACK_INLINE_ATTEMPTS="3")
    calls.script = [500, 503]
    job_id = ended_job(calls.url, JobStatus.FAILED)
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.DELIVERED
    received = calls.wait_for(3)
    assert len({got.headers["webhook-id"] for got in received}) == 1
    assert [verified(got)["type"] for got in received] == ["transcription.failed"] * 3
    assert verified(received[-1])["data"]["error"] == "the audio was unreadable"
    stored = callbacks.get(TRANSCRIPTION, job_id)
    assert stored.status == CallbackStatus.DELIVERED and stored.attempts == 3


def test_what_the_ender_could_not_deliver_the_maintenance_pass_retries(calls):
    calls.script = [500, 500]
    job_id = ended_job(calls.url)
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.RETRYING
    stored = callbacks.get(TRANSCRIPTION, job_id)
    assert stored.attempts == 1 and stored.last_error == "answered 500"
    assert settled(job_id, {CallbackStatus.DELIVERED}).attempts == 3
    received = calls.wait_for(3)
    assert len({got.headers["webhook-id"] for got in received}) == 1
    time.sleep(0.3)  # sync-ok: proves a quiet period (several backoffs) sends nothing more
    assert deliver_due() == [] and len(calls.received) == 3


def test_a_callback_whose_sender_died_is_taken_over_after_its_lease(calls):
    job_id = ended_job(calls.url)
    dead = callbacks.claim_for(TRANSCRIPTION, job_id, seconds=0.3)  # claimed, never recorded
    assert dead is not None and deliver_now(TRANSCRIPTION, job_id) is None  # held: not due
    assert settled(job_id, {CallbackStatus.DELIVERED}).attempts == 1
    assert len(calls.wait_for(1)) == 1
    # The dead holder's late record is fenced out: the delivery stands.
    assert (
        callbacks.record(
            dead.callback.id, dead.lease, status=CallbackStatus.FAILED, attempts=1, error="late"
        )
        is None
    )
    assert callbacks.get(TRANSCRIPTION, job_id).status == CallbackStatus.DELIVERED


def test_attempts_run_out_and_a_failing_callback_never_fails_the_job(calls):
    calls.script = [500] * 10
    job_id = ended_job(calls.url)
    found = settled(job_id, {CallbackStatus.FAILED})
    assert found.attempts == 4 and found.last_error == "answered 500"
    assert jobs.get_job(job_id).status == JobStatus.COMPLETED


@pytest.mark.parametrize("answer", [404, 410, 400])
def test_a_4xx_gives_up_at_once(calls, answer):
    calls.script = [answer]
    job_id = ended_job(calls.url)
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.FAILED
    assert callbacks.get(TRANSCRIPTION, job_id).last_error == f"answered {answer}"


def test_a_redirect_is_not_followed(calls):
    with receiver() as target:
        calls.script = [(302, target.url)]
        job_id = ended_job(calls.url)
        assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.FAILED
        calls.wait_for(1)
        assert "redirects are not followed" in callbacks.get(TRANSCRIPTION, job_id).last_error
        assert target.received == []


@pytest.mark.usefixtures("calls")
def test_an_unreachable_receiver_is_retried():
    with receiver() as gone:
        url = gone.url
    job_id = ended_job(url)  # nothing listens there any more
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.RETRYING
    assert "could not connect" in callbacks.get(TRANSCRIPTION, job_id).last_error
    assert jobs.get_job(job_id).status == JobStatus.COMPLETED


def test_the_address_checked_is_the_address_connected_to(calls, monkeypatch):
    # hooks.example resolves (here) to the receiver: the POST goes to that address, named.
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["127.0.0.1"]))
    url = f"http://hooks.example:{calls.port}/in"
    job_id = ended_job(url)
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.DELIVERED
    (got,) = calls.wait_for(1)
    assert got.headers["host"] == f"hooks.example:{calls.port}" and got.path == "/in"


def test_a_name_that_moved_to_a_private_address_is_refused_at_delivery(
    calls, relay_env, monkeypatch
):
    relay_env(CALLBACK_ALLOW_PRIVATE="false")
    url = f"http://hooks.example:{calls.port}/in"
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["93.184.216.34"]))
    safe_http.check(url, allow_private=False)  # what intake found
    job_id = ended_job(url)
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["127.0.0.1"]))  # DNS changed
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.FAILED
    error = callbacks.get(TRANSCRIPTION, job_id).last_error
    assert "refused" in error and "127.0.0.1" in error
    assert calls.received == [] and jobs.get_job(job_id).status == JobStatus.COMPLETED


def test_cancelling_a_job_makes_its_callback_due_and_deleting_forgets_it(calls):
    job = jobs.create_job("/in/a.wav", "a.wav", callback_url=calls.url)
    assert deliver_now(TRANSCRIPTION, job.id) is None  # still running: nothing to say
    assert jobs.cancel_job(job.id)
    assert deliver_now(TRANSCRIPTION, job.id) == CallbackStatus.DELIVERED
    assert verified(calls.wait_for(1)[0])["type"] == "transcription.cancelled"
    assert jobs.delete_job(job.id) and callbacks.get(TRANSCRIPTION, job.id) is None


def test_a_run_that_lost_its_job_does_not_make_the_callback_due(calls):
    job = jobs.create_job("/in/a.wav", "a.wav", dispatch_token="t-old", callback_url=calls.url)
    assert not jobs.complete_job(job.id, "en", "tiny.en", token="t-other")  # fenced out
    deliver_due()
    assert callbacks.get(TRANSCRIPTION, job.id).status == CallbackStatus.WAITING
    assert calls.received == []


def test_a_signing_key_removed_meanwhile_fails_the_callback_unsigned_never_sent(calls, relay_env):
    job_id = ended_job(calls.url)
    relay_env(CALLBACK_SIGNING_KEY="")
    assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.FAILED
    assert "not set" in callbacks.get(TRANSCRIPTION, job_id).last_error
    assert calls.received == []
    reload_settings()


def test_the_body_is_compact_json_with_zoned_times(calls):
    job_id = ended_job(calls.url)
    deliver_now(TRANSCRIPTION, job_id)
    (got,) = calls.wait_for(1)
    assert got.headers["content-type"] == "application/json"
    body = json.loads(got.body)
    for moment in (body["timestamp"], body["data"]["created_at"], body["data"]["finished_at"]):
        assert datetime.fromisoformat(moment).tzinfo is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",  # a name resolving to loopback
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://224.0.0.1/hook",  # multicast
        "http://0.0.0.0/hook",
    ],
)
def test_private_addresses_are_refused_unless_allowed(url):
    with pytest.raises(safe_http.UrlRefusedError) as refused:
        safe_http.check(url, allow_private=False)
    assert refused.value.reason == safe_http.Refusal.PRIVATE
    if "224." not in url and "0.0.0.0" not in url:
        assert safe_http.check(url, allow_private=True).address


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "/relative", "http:///nohost", "https://user:pw@example.com/"]
)
def test_only_absolute_http_urls_without_credentials(url):
    with pytest.raises(safe_http.UrlRefusedError) as refused:
        safe_http.check(url, allow_private=True)
    assert refused.value.reason == safe_http.Refusal.INVALID


def test_a_name_with_any_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["93.184.216.34", "10.0.0.7"]))
    with pytest.raises(safe_http.UrlRefusedError, match=r"10\.0\.0\.7"):
        safe_http.check("https://hooks.example/x", allow_private=False)
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["93.184.216.34"]))
    target = safe_http.check("https://hooks.example/x?a=1", allow_private=False)
    assert target.pinned_url == "https://93.184.216.34:443/x?a=1"
    assert target.host_header == "hooks.example"


def test_a_bot_request_refused_at_intake_is_due_at_once(calls):
    refused = bot_requests.create_request(
        kind="chat",
        prompt="hi",
        user_id="u1",
        channel="chat-x",
        route="chat-channels",
        pool="bot-chat",
        status=BotRequestStatus.REFUSED,
        error="over the daily limit",
        callback_url=calls.url,
    )
    subject = CallbackSubject.BOT_REQUEST
    assert callbacks.get(subject, refused.id).status == CallbackStatus.PENDING
    assert deliver_now(subject, refused.id) == CallbackStatus.DELIVERED
    event = verified(calls.wait_for(1)[0])
    assert event["type"] == "bot_request.refused"
    assert event["data"]["error"] == "over the daily limit"


def test_the_status_read_brings_the_job_and_its_callback_together(calls):
    plain = jobs.create_job("/in/a.wav", "a.wav")
    assert callbacks.job_and_callback(plain.id) == (jobs.get_job(plain.id), None)
    job_id = ended_job(calls.url)
    job, callback = callbacks.job_and_callback(job_id)
    assert job == jobs.get_job(job_id) and callback == callbacks.get(TRANSCRIPTION, job_id)
    assert callbacks.job_and_callback("no-such-job") is None


def test_a_maintenance_pass_takes_no_new_callback_once_its_budget_is_spent(calls):
    first, second = ended_job(calls.url), ended_job(calls.url)
    assert len(deliver_due(budget_seconds=0)) == 1
    assert len(deliver_due(budget_seconds=0)) == 1
    assert deliver_due() == [] and len(calls.wait_for(2)) == 2
    for job_id in (first, second):
        assert callbacks.get(TRANSCRIPTION, job_id).status == CallbackStatus.DELIVERED


def test_https_goes_to_the_checked_address_with_the_name_in_sni_and_the_certificate(
    calls, monkeypatch, tmp_path
):
    server_tls, client_tls = certificates("hooks.example", tmp_path)
    monkeypatch.setattr(safe_http, "TLS_VERIFY", client_tls)
    monkeypatch.setattr(safe_http, "resolve", resolving_to(["127.0.0.1"]))
    with receiver(tls=server_tls) as secure:
        job_id = ended_job(f"https://hooks.example:{secure.port}/in")
        assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.DELIVERED
        (got,) = secure.wait_for(1)
    assert got.headers["host"] == f"hooks.example:{secure.port}"
    assert verified(got)["data"]["job_id"] == job_id
    # A certificate for another name is refused: the check is against the name, not the IP.
    server_tls, _ = certificates("elsewhere.example", tmp_path)
    with receiver(tls=server_tls) as impostor:
        job_id = ended_job(f"https://hooks.example:{impostor.port}/in")
        assert deliver_now(TRANSCRIPTION, job_id) == CallbackStatus.RETRYING
        assert "could not connect" in callbacks.get(TRANSCRIPTION, job_id).last_error
    assert calls.received == []
