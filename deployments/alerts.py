"""An automation that posts to Discord whenever any flow run fails or crashes.

Prefect's server runs it (trigger on ``prefect.flow-run.Failed`` / ``Crashed`` events, a
``call-webhook`` action), so it covers every flow and every worker, even a run whose
process died before Relay's own notifier could say anything.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast
from urllib.parse import urlsplit

from prefect.automations import Automation
from prefect.blocks.webhook import Webhook
from prefect.events.actions import CallWebhook
from prefect.events.schemas.automations import EventTrigger, Posture
from pydantic import SecretStr

from blocks.discord import DISCORD_HOSTS, DiscordDestination
from blocks.prefect_sync import load_block

ALERT_NAME = "relay: Discord post when a flow run fails"
WEBHOOK_BLOCK = "relay-discord-alerts"

# Discord message JSON; the state message is quoted safely by Jinja's tojson.
PAYLOAD = (
    '{"username": "Relay", "allowed_mentions": {"parse": []}, "content": '
    '{{ ("Flow run **" ~ flow_run.name ~ "** of `" ~ flow.name ~ "` ended "'
    ' ~ flow_run.state.name ~ ": " ~ (flow_run.state.message or "no message"))'
    "[:1900] | tojson }}}"
)


def failure_trigger() -> EventTrigger:
    """Any flow run entering Failed or Crashed, once per run."""
    return EventTrigger(
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def ensure_failure_alert(destination: DiscordDestination) -> list[tuple[str, str, str]]:
    """Keep the webhook block and the automation in step with the Discord destination."""
    url = destination.webhook_url.get_secret_value()
    report = [("block", WEBHOOK_BLOCK, _ensure_webhook_block(url))]
    block_id = load_block(Webhook, WEBHOOK_BLOCK)._block_document_id
    report.append(("automation", ALERT_NAME, _ensure_automation(block_id)))
    return report


def _ensure_webhook_block(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    wanted = Webhook(
        method="POST",
        url=SecretStr(url),
        headers={"Content-Type": "application/json"},
        # Discord itself is public; an allow-listed test or proxy host may be private.
        allow_private_urls=host not in DISCORD_HOSTS,
    )
    try:
        current = load_block(Webhook, WEBHOOK_BLOCK)
    except ValueError:
        current = None
    if current is not None and (
        current.url.get_secret_value() == url
        and current.allow_private_urls == wanted.allow_private_urls
        and current.method == "POST"
    ):
        return "unchanged"
    wanted.save(WEBHOOK_BLOCK, overwrite=True)
    return "updated" if current is not None else "created"


def _ensure_automation(block_id) -> str:
    return ensure_automation(
        Automation(
            name=ALERT_NAME,
            description="Posts the failed or crashed flow run and its message to Discord.",
            enabled=True,
            trigger=failure_trigger(),
            actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
        )
    )


def ensure_automation(wanted: Automation) -> str:
    """Create the automation named ``wanted.name``, or bring it up to date (by name):
    ``created``, ``updated`` or ``unchanged``."""
    try:
        # Prefect declares read's overloads async; from sync code it reads synchronously.
        current = cast(Automation | None, Automation.read(name=wanted.name))
    except ValueError:
        current = None
    if current is None:
        wanted.create()
        return "created"
    if _spec(current) == _spec(wanted):
        return "unchanged"
    wanted.id = current.id
    wanted.update()
    return "updated"


def _spec(automation: Automation) -> dict:
    """The fields we own, in Python mode: sets such as ``expect`` compare as sets.

    JSON mode turns them into lists whose order follows the set's insertion history, so
    the copy read back from the server could differ from ours in order alone.
    """
    return automation.model_dump(include={"name", "description", "enabled", "trigger", "actions"})
