"""The registry of work pools, read from ``work-pools/pools.yaml``.

A configuration module like ``relay_settings``: every part that needs to know which pools
exist and what they serve (bootstrap, the local stack, task workers, the API's
dispatchers, the bot's routes, the infra tests) asks here instead of listing pools itself.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay_settings import PROJECT_ROOT

POOLS_DIR = PROJECT_ROOT / "work-pools"


class Workload(StrEnum):
    """What a pool's workers run."""

    TRANSCRIPTION = "transcription"
    BATCH = "batch"
    BOT = "bot"


class Queue(BaseModel):
    """One work queue of a pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(ge=1)
    concurrency_limit: int | None = None
    description: str | None = None


class TaskSpec(BaseModel):
    """The background task a pool's task workers serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    run: str = Field(pattern=r"^[\w.]+:\w+$", description="module:function(pool, **parameters)")
    serve: str = Field(pattern=r"^[\w.]+:\w+$", description="module:function(pool_task, limit)")
    limit: int = Field(default=8, ge=1)
    previous_keys: tuple[str, ...] = ()


class Pool(BaseModel):
    """One work pool: the Prefect pool itself and what Relay runs on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    workload: Workload
    task: TaskSpec | None = None
    options: dict[str, str] = Field(default_factory=dict)
    gpu: bool = False
    type: str = "process"
    description: str | None = None
    concurrency_limit: int | None = None
    queues: dict[str, Queue]

    @model_validator(mode="after")
    def _task_workloads_name_their_task(self) -> Pool:
        if self.workload is not Workload.BATCH and not self.task:
            raise ValueError(f"pool {self.name}: a {self.workload} pool needs a `task`")
        return self

    def base_job_template(self, folder: Path = POOLS_DIR) -> dict[str, Any]:
        """The pool's base job template (``<name>.json`` beside ``pools.yaml``)."""
        return json.loads((folder / f"{self.name}.json").read_text())


@cache
def load_pools(folder: Path = POOLS_DIR) -> dict[str, Pool]:
    """Every pool of ``pools.yaml`` by name; ValueError naming the file on a bad entry."""
    path = folder / "pools.yaml"
    entries = yaml.safe_load(path.read_text()) or {}
    try:
        return {name: Pool(name=name, **entry) for name, entry in entries.items()}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def pools_serving(workload: Workload) -> tuple[str, ...]:
    """The names of the pools that run ``workload``, in the registry's order."""
    return tuple(name for name, pool in load_pools().items() if pool.workload is workload)


def task_pools() -> tuple[str, ...]:
    """The pools whose task workers serve a background task."""
    return tuple(name for name, pool in load_pools().items() if pool.task)


def get_pool(name: str) -> Pool:
    """One pool; ValueError naming the known pools for another name."""
    pools = load_pools()
    if name not in pools:
        raise ValueError(f"no work pool {name!r}; expected one of {', '.join(pools)}")
    return pools[name]
