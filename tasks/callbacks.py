"""Completion callbacks: POST a job's end to its client's URL, signed as Standard Webhooks
say (docs/callbacks.md), retried with backoff, never failing or changing the job.

The process that ends a job tries its callback at once (``deliver_now``: a few attempts,
``RELAY_CALLBACK_INLINE_ATTEMPTS``), so a flow run is not held for minutes of retries;
what is left stays due in the store, and the workers' maintenance passes try it again
(``deliver_due``). Each attempt checks the URL again after DNS (tasks/safe_http.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

import httpx

from relay_settings import CallbackSettings, get_settings
from store import callbacks
from store.callbacks import Claimed
from store.models import Callback, CallbackKind, CallbackStatus, CallbackSubject
from tasks import safe_http
from tasks.callback_events import body_of, event_of
from tasks.discord_webhook import DeliveryOutcome
from tasks.interaction_reply import post_follow_up

log = logging.getLogger("relay.callbacks")
KEY_PREFIX = "whsec_"
# An answer that may differ next time: the receiver is busy, restarting or timed out.
RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Attempt:
    """How one POST went: taken (2xx), or not, and whether trying again may help."""

    delivered: bool
    retry: bool
    error: str | None = None


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (or the base64 alone); ValueError when
    it is empty or not base64."""
    encoded = secret.strip().removeprefix(KEY_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("RELAY_CALLBACK_SIGNING_KEY is not whsec_<base64 key>") from None
    if not key:
        raise ValueError("RELAY_CALLBACK_SIGNING_KEY is not set")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, message_id: str, body: bytes) -> dict[str, str]:
    """The headers of one attempt: its own timestamp, the delivery's id."""
    now = int(time.time())
    return {
        "content-type": "application/json",
        "user-agent": "Relay-Callbacks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature(key, message_id, now, body),
    }


def message_id(callback_id: str) -> str:
    """The ``webhook-id`` of a callback: the same on every attempt."""
    return f"msg_{callback_id}"


def post_once(
    url: str, body: bytes, key: bytes, msg_id: str, settings: CallbackSettings
) -> Attempt:
    """One signed POST, to an address checked just now."""
    try:
        target = safe_http.check(url, allow_private=settings.allow_private)
    except safe_http.UrlRefusedError as err:
        # A name that stopped resolving may come back; one that moved inside is refused.
        return Attempt(False, err.reason == safe_http.Refusal.UNRESOLVABLE, f"refused: {err}")
    try:
        status = safe_http.post(
            target, body, signed_headers(key, msg_id, body), settings.timeout_seconds
        )
    except httpx.TimeoutException:
        return Attempt(False, True, f"no answer within {settings.timeout_seconds} s")
    except httpx.HTTPError as err:
        return Attempt(False, True, f"could not connect: {type(err).__name__}: {err}")
    if 200 <= status < 300:
        return Attempt(True, False)
    if 300 <= status < 400:
        return Attempt(False, False, f"answered {status}: redirects are not followed")
    retry = status >= 500 or status in RETRIED_STATUSES
    return Attempt(False, retry, f"answered {status}")


def backoff(failures: int, settings: CallbackSettings) -> float:
    """The wait after ``failures`` failed attempts: doubling, up to the longest."""
    return float(
        min(settings.backoff_seconds * 2 ** max(failures - 1, 0), settings.backoff_max_seconds)
    )


def deliver_now(subject: CallbackSubject, subject_id: str) -> CallbackStatus | None:
    """Try the callback of a job that has just ended (its final status written), if it has
    one that is due; returns how it stands (None: none due here). Never raises."""
    settings = get_settings().callback
    try:
        claimed = callbacks.claim_for(
            subject, subject_id, _hold(settings, settings.inline_attempts)
        )
        return _deliver(claimed, settings.inline_attempts, settings) if claimed else None
    except Exception:  # a callback never fails the job that ended
        log.exception("%s %s: callback not attempted", subject, subject_id)
        return None


def deliver_due(limit: int = 20, budget_seconds: float = 30.0) -> list[str]:
    """One attempt at each due callback (the workers' maintenance passes): retries, and
    callbacks whose process died mid-delivery. Returns those attempted. Never raises.
    Takes no new one after ``budget_seconds``: receivers that time out must not hold up the
    rest of the pass (recovering stranded jobs); the next pass goes on."""
    settings, attempted = get_settings().callback, list[str]()
    started = time.monotonic()
    try:
        for callback_id in callbacks.due(limit):
            if attempted and time.monotonic() - started > budget_seconds:
                break
            claimed = callbacks.claim(callback_id, _hold(settings, 1))
            if claimed is not None:
                _deliver(claimed, 1, settings)
                attempted.append(callback_id)
    except Exception:
        log.exception("callbacks: maintenance pass failed; the next one tries again")
    return attempted


def _deliver(claimed: Claimed, tries: int, settings: CallbackSettings) -> CallbackStatus | None:
    """Up to ``tries`` attempts (waiting the backoff between them), then record the outcome
    under the claim's lease."""
    callback, lease = claimed.callback, claimed.lease
    if callback.kind == CallbackKind.DISCORD:
        made, outcome = 1, _follow_up(callback, settings)
    else:
        made, outcome = _post_signed(callback, tries, settings)
    if outcome.delivered:
        status = CallbackStatus.DELIVERED
    elif outcome.retry and callback.attempts + made < settings.attempts:
        status = CallbackStatus.RETRYING
    else:
        status = CallbackStatus.FAILED
    recorded = callbacks.record(
        callback.id,
        lease,
        status=status,
        attempts=made,
        error=outcome.error,
        retry_in=backoff(callback.attempts + made, settings),
    )
    where = f"{callback.subject} {callback.subject_id}"
    if recorded == CallbackStatus.FAILED:
        log.warning("%s: callback given up: %s", where, outcome.error)
    elif recorded is None:
        log.warning("%s: callback lease lost; the new holder records it", where)
    return recorded


def _follow_up(callback: Callback, settings: CallbackSettings) -> Attempt:
    """A /transcribe job's end, told on its Discord interaction (tasks/interaction_reply)."""
    try:
        url = callbacks.url_of(callback)
    except ValueError as err:  # sealed under another secret key
        return Attempt(False, False, str(err))
    result = post_follow_up(callback.subject_id, url, settings.timeout_seconds)
    retry = result.outcome is DeliveryOutcome.GAVE_UP  # a refusal stays one (an expired token)
    return Attempt(result.delivered, retry, result.reason)


def _post_signed(callback: Callback, tries: int, settings: CallbackSettings) -> tuple[int, Attempt]:
    """Up to ``tries`` signed POSTs to a client's URL; how many were made, and the last."""
    made, outcome = 0, Attempt(False, False, "not attempted")
    try:
        key = signing_key(settings.signing_key.get_secret_value())
        event = event_of(callback)
        url = callbacks.url_of(callback)
    except ValueError as err:  # no key any more, or a URL sealed under another secret key
        outcome = Attempt(False, False, str(err))
    else:
        if event is None:
            outcome = Attempt(False, False, f"{callback.subject} {callback.subject_id} is gone")
        else:
            body = body_of(event)
            while made < tries and callback.attempts + made < settings.attempts:
                if made:
                    time.sleep(backoff(callback.attempts + made, settings))
                outcome = post_once(url, body, key, message_id(callback.id), settings)
                made += 1
                if outcome.delivered or not outcome.retry:
                    break
    return made, outcome


def _hold(settings: CallbackSettings, tries: int) -> float:
    """A lease long enough for ``tries`` attempts and the waits between them."""
    waits = sum(backoff(n, settings) for n in range(1, tries))
    return tries * (settings.timeout_seconds + 5.0) + waits + 30.0
