"""``python -m cli bootstrap`` (``make bootstrap``): make a Prefect server ready for Relay.

Idempotent: running it twice changes nothing. Against the server at ``PREFECT_API_URL`` it

- creates or updates the work pools from ``work-pools/<pool>.json`` and the limits and
  queues in ``work-pools/pools.yaml``;
- creates or updates the global concurrency / rate limits in ``deployments/quotas.yaml``;
- registers Relay's block types and, when ``RELAY_DISCORD_WEBHOOK_URL`` is set, saves that
  webhook as the Discord destination named by ``RELAY_DISCORD_BLOCK`` (and likewise
  ``RELAY_DISCORD_ADMIN_WEBHOOK_URL`` as ``RELAY_DISCORD_ADMIN_BLOCK``, the admin
  statistics', and ``RELAY_DISCORD_ALERTS_WEBHOOK_URL`` as ``RELAY_DISCORD_ALERTS_BLOCK``);
- saves the provider key pools of ``deployments/keys.yaml`` whose keys are set in the
  environment, and gives every key of every saved pool its Prefect rate limit (and
  concurrency limit);
- keeps the automation that marks a flow run Crashed once its heartbeats stop
  (deployments/deadruns.py);
- with an alerts destination saved (``RELAY_DISCORD_ALERTS_BLOCK``, else
  ``RELAY_DISCORD_BLOCK``), keeps an automation that posts to it whenever any flow run
  fails or crashes.

Every line it prints says what it did: ``created``, ``updated`` or ``unchanged``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from blocks.discord import DiscordDestination, redact_webhook_url
from blocks.keys import ApiKeyPool, limits_for
from blocks.prefect_sync import load_block
from deployments.alerts import ensure_failure_alert
from deployments.deadruns import ensure_dead_run_automation
from relay_pools import Pool, Queue, load_pools
from relay_settings import PROJECT_ROOT, DiscordSettings, get_settings

log = logging.getLogger("relay.bootstrap")
QUOTAS_FILE = PROJECT_ROOT / "deployments" / "quotas.yaml"
KEYS_FILE = PROJECT_ROOT / "deployments" / "keys.yaml"
BLOCK_TYPES = (DiscordDestination, ApiKeyPool)


def ensure_pool(client: SyncPrefectClient, pool: Pool) -> str:
    """Create the pool, or bring its template, description and limit up to date."""
    wanted = {
        "base_job_template": pool.base_job_template(),
        "description": pool.description,
        "concurrency_limit": pool.concurrency_limit,
    }
    try:
        current = client.read_work_pool(pool.name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type, **wanted))
        return "created"
    if current.type != pool.type:
        raise RuntimeError(
            f"work pool {pool.name!r} exists with type {current.type!r}, not {pool.type!r}; "
            "delete it or rename the pool in work-pools/pools.yaml"
        )
    changed = {key: value for key, value in wanted.items() if getattr(current, key) != value}
    if not changed:
        return "unchanged"
    client.update_work_pool(pool.name, WorkPoolUpdate(**changed))
    return "updated"


def ensure_queue(client: SyncPrefectClient, pool: str, name: str, spec: Queue) -> str:
    """Create the pool's queue, or bring its priority, limit and description up to date."""
    wanted = spec.model_dump()
    try:
        current = client.read_work_queue_by_name(name, work_pool_name=pool)
    except ObjectNotFound:
        client.create_work_queue(name=name, work_pool_name=pool, **wanted)
        return "created"
    changed = {key: value for key, value in wanted.items() if getattr(current, key) != value}
    if not changed:
        return "unchanged"
    client.update_work_queue(current.id, **changed)
    return "updated"


def ensure_limit(client: SyncPrefectClient, spec: dict[str, Any]) -> str:
    """Create or update one global concurrency / rate limit from the quota file."""
    decay = spec.get("slot_decay_per_second")
    try:
        current = client.read_global_concurrency_limit_by_name(spec["name"])
    except ObjectNotFound:
        current = None
    if (
        current is not None
        and current.limit == spec["limit"]
        and (decay is None or current.slot_decay_per_second == decay)
    ):
        return "unchanged"
    client.upsert_global_concurrency_limit_by_name(spec["name"], spec["limit"], decay)
    return "created" if current is None else "updated"


def register_blocks() -> list[str]:
    """Register (or update) every Relay block type with the Prefect server."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def save_discord_destination(webhook_url: str, name: str) -> str:
    """Save the webhook as the named destination; unchanged when it already says the same."""
    wanted = DiscordDestination(webhook_url=SecretStr(webhook_url))
    current = load_destination(name)
    if current is not None and (
        current.webhook_url.get_secret_value() == webhook_url and current.events == wanted.events
    ):
        return "unchanged"
    wanted.save(name, overwrite=True)
    return "updated" if current is not None else "created"


def destination_variables(discord: DiscordSettings) -> dict[str, str]:
    """Which webhook variable is saved as which destination block (the alerts' only when
    ``RELAY_DISCORD_ALERTS_BLOCK`` names a block of their own)."""
    return {
        "RELAY_DISCORD_WEBHOOK_URL": discord.block,
        "RELAY_DISCORD_ADMIN_WEBHOOK_URL": discord.admin_block,
        "RELAY_DISCORD_ALERTS_WEBHOOK_URL": discord.alerts_block,
    }


def load_destination(name: str) -> DiscordDestination | None:
    """The saved Discord destination, or None when there is none."""
    try:
        return load_block(DiscordDestination, name)
    except ValueError:
        return None


def key_pool_from_spec(spec: dict[str, Any], env: dict[str, str]) -> ApiKeyPool | None:
    """The pool a ``keys.yaml`` entry describes, with the keys set in ``env``; None if none."""
    present = [key for key in spec["keys"] if env.get(key["secret_env"])]
    if not present:
        return None
    keys = [{k: v for k, v in key.items() if k != "secret_env"} for key in present]
    secrets = {key["name"]: env[key["secret_env"]] for key in present}
    base_url = env.get(spec.get("base_url_env") or "", "") or spec["base_url"]
    return ApiKeyPool(
        provider=spec["provider"],
        base_url=base_url,
        timeout_seconds=spec.get("timeout_seconds", 60.0),
        keys=keys,
        secrets=secrets,
    )


def save_key_pool(name: str, wanted: ApiKeyPool) -> str:
    """Save the pool block; unchanged when the saved one says the same (secrets included)."""
    try:
        current = load_block(ApiKeyPool, name)
    except ValueError:
        current = None
    if current is not None and _pool_data(current) == _pool_data(wanted):
        return "unchanged"
    wanted.save(name, overwrite=True)
    return "updated" if current is not None else "created"


def _pool_data(pool: ApiKeyPool) -> dict[str, Any]:
    data = pool.model_dump(exclude={"block_document_id", "block_document_name"})
    data["secrets"] = {name: secret.get_secret_value() for name, secret in pool.secrets.items()}
    return {key: value for key, value in data.items() if not key.startswith("_")}


def ensure_key_pools(client: SyncPrefectClient, env: dict[str, str]) -> list[tuple[str, str, str]]:
    """Save the pools of keys.yaml that have keys set, and every pool's per-key limits."""
    report: list[tuple[str, str, str]] = []
    specs = (yaml.safe_load(KEYS_FILE.read_text()) or {}).get("pools", {})
    for name, spec in specs.items():
        wanted = key_pool_from_spec(spec, env)
        outcome = save_key_pool(name, wanted) if wanted else "skipped (no key set)"
        report.append(("key pool", name, outcome))
    for document in client.read_block_documents_by_type(ApiKeyPool.get_block_type_slug()):
        if document.name is None:  # an anonymous block: no pool of Relay's
            continue
        pool = load_block(ApiKeyPool, document.name)
        for limit in limits_for(pool):
            report.append(("limit", str(limit["name"]), ensure_limit(client, limit)))
    return report


def bootstrap() -> list[tuple[str, str, str]]:
    """Do everything; returns ``(kind, name, outcome)`` for each thing it looked at."""
    settings = get_settings()
    report: list[tuple[str, str, str]] = []
    with get_client(sync_client=True) as client:
        for name, pool in load_pools().items():
            report.append(("work pool", name, ensure_pool(client, pool)))
            for queue, queue_spec in pool.queues.items():
                outcome = ensure_queue(client, name, queue, queue_spec)
                report.append(("work queue", f"{name}/{queue}", outcome))
        quotas = yaml.safe_load(QUOTAS_FILE.read_text()) or {}
        for limit in quotas.get("limits", []):
            report.append(("limit", limit["name"], ensure_limit(client, limit)))
    for slug in register_blocks():
        report.append(("block type", slug, "registered"))
    for variable, block in destination_variables(settings.discord).items():
        webhook = os.environ.get(variable)
        if webhook and block:
            outcome = save_discord_destination(webhook, block)
            report.append(("block", f"{block} ({redact_webhook_url(webhook)})", outcome))
    with get_client(sync_client=True) as client:
        report.extend(ensure_key_pools(client, dict(os.environ)))
    report.extend(ensure_dead_run_automation())
    destination = load_destination(settings.discord.alerts_destination())
    if destination is not None:
        report.extend(ensure_failure_alert(destination))
    return report


def main() -> int:
    """Bootstrap the server at PREFECT_API_URL; prints what it did."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        report = bootstrap()
    except ValueError as err:  # a refused webhook URL, a malformed pools file
        log.error("bootstrap stopped: %s", err)
        return 2
    for kind, name, outcome in report:
        log.info("%-11s %-40s %s", kind, name, outcome)
    return 0
