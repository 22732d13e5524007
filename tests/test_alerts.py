"""The failure automation's idempotency check must not depend on set iteration order."""

from __future__ import annotations

import uuid

from prefect.automations import Automation
from prefect.events.actions import CallWebhook

from deployments.alerts import ALERT_NAME, PAYLOAD, _spec, failure_trigger


def _automation(trigger) -> Automation:
    return Automation(
        name=ALERT_NAME,
        description="d",
        enabled=True,
        trigger=trigger,
        actions=[CallWebhook(block_document_id=uuid.UUID(int=1), payload=PAYLOAD)],
    )


def test_server_copy_with_events_in_another_order_is_unchanged():
    ours = failure_trigger()
    # What the server sends back: the same events, listed in the other order; many events
    # make it near-certain that at least one pair iterates differently after parsing.
    events = [f"prefect.flow-run.State{i}" for i in range(40)]
    ours = ours.model_copy(update={"expect": set(events)})
    payload = ours.model_dump(mode="json")
    payload["expect"] = list(reversed(payload["expect"]))
    theirs = type(ours).model_validate(payload)
    assert _spec(_automation(ours)) == _spec(_automation(theirs))


def test_a_real_change_is_seen():
    ours = failure_trigger()
    other = ours.model_copy(update={"expect": {"prefect.flow-run.Failed"}})
    assert _spec(_automation(ours)) != _spec(_automation(other))
