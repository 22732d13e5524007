"""Pools of provider API keys, kept as Prefect blocks, and the limit names each key spends."""

from __future__ import annotations

import math
import re
from typing import Literal

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.prefect_sync import load_block

Provider = Literal["openai", "stability", "minimax"]
HOLD_SECONDS = 2.0  # a process spends a slot it took from Prefect within this long, or drops it
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class ApiKey(BaseModel):
    """One key's name and its provider-side limits (the secret is in the pool's ``secrets``)."""

    name: str = Field(description="Short name shown in logs and status (never the secret).")
    requests_per_minute: int = Field(gt=0, description="The provider's requests per minute.")
    requests_per_day: int | None = Field(
        default=None, gt=0, description="Requests per calendar day (UTC); none: no daily cap."
    )
    max_concurrent: int | None = Field(
        default=None, gt=0, description="Calls in flight at once; none: no cap."
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("key names are 1-40 lowercase letters, digits, '-' or '_'")
        return value


class ApiKeyPool(Block):
    """Several API keys of one provider; every call through Relay spends one key's quota."""

    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Relay API Key Pool"
    _block_type_slug = "relay-api-key-pool"
    _description = "API keys of one AI provider with each key's rate, daily and concurrency limits."

    provider: Provider = Field(description="openai, stability or minimax.")
    base_url: str = Field(description="The provider's API root (a proxy or test server works).")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one call.")
    keys: list[ApiKey] = Field(min_length=1, description="The keys, each with its limits.")
    # Secrets in a flat mapping: Prefect 3.8 mixes up secret fields of models in a list.
    secrets: dict[str, SecretStr] = Field(description="Each key's secret, by key name.")

    @model_validator(mode="after")
    def _one_secret_per_key(self) -> ApiKeyPool:
        names = [key.name for key in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("key names must be unique within a pool")
        if set(names) != set(self.secrets):
            raise ValueError("every key needs exactly one secret (secrets are keyed by name)")
        return self

    def secret(self, key_name: str) -> str:
        """The secret of one key."""
        return self.secrets[key_name].get_secret_value()


def rate_limit_name(provider: str, key: str) -> str:
    """The Prefect rate limit (slot decay) one key's calls spend."""
    return f"key.{provider}.{key}.rpm"


def concurrency_limit_name(provider: str, key: str) -> str:
    """The Prefect concurrency limit a key's calls hold while in flight."""
    return f"key.{provider}.{key}.concurrent"


def rate_limit_shape(requests_per_minute: int, hold: float = HOLD_SECONDS) -> tuple[int, float]:
    """``(limit, slot_decay_per_second)`` of a key's Prefect rate limit.

    A bucket of ``limit`` slots refilled at ``decay`` per second grants at most
    ``limit + decay * (60 + hold)`` slots to calls made within any 60 s window when every
    slot is spent within ``hold`` seconds of being granted. Keeping that at or below the
    provider's requests per minute means no sliding minute ever sees more calls than allowed.
    """
    burst = max(1, min(requests_per_minute // 10, 20))
    decay = (requests_per_minute - burst) / (60.0 + hold)
    # Rounded down so the bound holds after rounding; a 1-rpm key still refills.
    return burst, max(math.floor(decay * 10_000) / 10_000, 0.0001)


def limits_for(pool: ApiKeyPool) -> list[dict[str, object]]:
    """The global limits (quota-file shape) the bootstrap creates for a pool's keys."""
    specs: list[dict[str, object]] = []
    for key in pool.keys:
        limit, decay = rate_limit_shape(key.requests_per_minute)
        specs.append(
            {
                "name": rate_limit_name(pool.provider, key.name),
                "limit": limit,
                "slot_decay_per_second": decay,
            }
        )
        if key.max_concurrent:
            specs.append(
                {
                    "name": concurrency_limit_name(pool.provider, key.name),
                    "limit": key.max_concurrent,
                }
            )
    return specs


def daily_quotas() -> dict[tuple[str, str], int | None]:
    """Every saved key pool's keys with their daily quota: ``(provider, key name) ->
    requests_per_day`` (None: no daily cap). Names and numbers only, never secrets; none
    before the key pool block type is registered (no pool saved yet)."""
    quotas: dict[tuple[str, str], int | None] = {}
    with get_client(sync_client=True) as client:
        try:
            documents = client.read_block_documents_by_type(ApiKeyPool.get_block_type_slug())
        except ObjectNotFound:
            return quotas
        except PrefectHTTPStatusError as err:  # what this call raises for an unknown type
            if err.response.status_code == 404:
                return quotas
            raise
    for document in documents:
        if document.name is None:  # an anonymous block: no pool of Relay's
            continue
        pool = load_block(ApiKeyPool, document.name)
        quotas |= {(pool.provider, key.name): key.requests_per_day for key in pool.keys}
    return quotas
