"""The expiry notice: Discord keeps an interaction's token 15 minutes, so shortly before
(``RELAY_DISCORD_EXPIRY_NOTICE_SECONDS`` after the interaction) the "thinking…" message of a
request whose answer is not posted yet is edited, once, to say where a late answer will go
(the route's fallback channel) or, with no fallback, that it will not be posted and how to
read it. The bot workers' maintenance loop sends them (flows/bot.py); the store makes each
one a unit of work under a lease, so one worker sends it (store/followups.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bot_config import get_bot_config
from relay_settings import get_settings
from store import bot as bot_store
from store import followups
from store.leases import Lease
from store.models import BotRequest, FollowUp, as_utc
from tasks.bot_delivery import destination_url, token_refused
from tasks.discord_webhook import DeliveryOutcome, WebhookMessage, edit_original

log = logging.getLogger("relay.bot")
RETRY_SECONDS = 5.0  # Discord busy or unreachable: the next maintenance pass tries again


def send_notices(pool: str | None = None) -> list[str]:
    """Send the expiry notices due for ``pool``'s requests; returns the requests whose notice
    this process took. Several workers may run it at once: each notice is taken by one."""
    taken = []
    for request_id in followups.notices_due(pool):
        lease = followups.claim_notice(request_id)
        if lease is not None:
            send_notice(request_id, lease)
            taken.append(request_id)
    return taken


def send_notice(request_id: str, lease: Lease) -> FollowUp | None:
    """Edit the request's "thinking…" message into its expiry notice, holding the notice's
    ``lease``; returns what the store now says of its follow-up (None: nothing recorded:
    to be tried again, or the lease was lost). Never raises."""
    request = bot_store.get_request(request_id)
    if request is None or request.interaction_at is None:
        return None
    if followups.token_dead_by_age(request):
        return _finish(request_id, lease, FollowUp.EXPIRED, "the token is older than 15 min")
    try:
        url = destination_url(request)
        text = notice_text(request)
    except Exception as err:  # a broken request or configuration: no notice, say why
        log.warning("bot request %s: no expiry notice: %s", request_id, type(err).__name__)
        return _finish(request_id, lease, FollowUp.NOTICE_FAILED, "it could not be written")
    # One try, well inside the notice's lease: an edit still under way once the lease ran
    # out could land after the answer's first follow-up and overwrite it. A give-up is
    # tried again later, under a new lease.
    budget = get_settings().discord.expiry_notice_lease_seconds / 3
    result = edit_original(
        url,
        WebhookMessage(text),
        timeout=min(10.0, budget),
        max_attempts=1,
        label=f"request {request_id}: notice",
    )
    if result.delivered:
        return _finish(request_id, lease, FollowUp.NOTICED, "sent")
    if token_refused(result):
        return _finish(request_id, lease, FollowUp.EXPIRED, f"Discord answered {result.reason}")
    if result.outcome is DeliveryOutcome.GAVE_UP:
        followups.retry_notice(request_id, lease, RETRY_SECONDS)
        return None
    return _finish(request_id, lease, FollowUp.NOTICE_FAILED, result.reason or "refused")


def notice_text(request: BotRequest) -> str:
    """What the "thinking…" message becomes: until when Relay may answer there, and where a
    later answer goes."""
    assert request.interaction_at is not None  # an interaction's request
    dies = as_utc(request.interaction_at) + timedelta(seconds=followups.TOKEN_SECONDS)
    stamp = int(dies.timestamp())  # Discord shows <t:…:t> in the reader's own time zone
    head = (
        f"⏳ Relay is still working on your /{request.kind}. Discord lets Relay answer here "
        f"until <t:{stamp}:t> (15 minutes)."
    )
    fallback = get_bot_config().fallback_for(request.kind, request.route)
    if fallback is not None:
        return f"{head} If the answer is not ready by then, it will be posted in " + (
            f"{fallback.shown()}, mentioning you."
        )
    base = get_settings().public_url.rstrip("/")
    where = f"{base}/api/bot/requests/{request.id}" if base else f"/api/bot/requests/{request.id}"
    return (
        f"{head} An answer ready later will not be posted: it stays readable as request "
        f"`{request.id}` at {where} (Relay's API; an operator can read it for you)."
    )


def _finish(request_id: str, lease: Lease, followup: FollowUp, why: str) -> FollowUp | None:
    if not followups.finish_notice(request_id, lease, followup):
        log.info("bot request %s: notice not recorded (answered or taken meanwhile)", request_id)
        return None
    log.info("bot request %s: expiry notice %s (%s)", request_id, followup, why)
    return followup
