"""One Prefect background task per pool, made from the registry (``work-pools/pools.yaml``).

A pool's task workers serve its task; the API creates runs of it through the pool's
dispatcher. Prefect routes a run to the workers subscribed to its *task key*, which it
derives from the function's name and a hash of its code: tasks made by one factory from one
function would all share a key, so a ``bot-chat`` worker would take ``bot-media`` runs, and
any edit of the function would strand the runs an older release created. Each pool's task
therefore gets its registry name as its key, and its workers also take the keys the task
had in earlier releases (``previous_keys``).
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient

from flows.deferred import adefer, defer
from relay_pools import get_pool, task_pools
from store.workers import WorkerKind, heartbeating


class RunCounter:
    """How many runs of a pool's task this process is running now (its work in flight,
    reported with its heartbeat); task runs execute in the worker's threads."""

    def __init__(self) -> None:
        self._running = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self._running += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._running -= 1

    def count(self) -> int:
        """Runs started and not finished yet."""
        with self._lock:
            return self._running

    def __reduce__(self) -> tuple[type[RunCounter], tuple[()]]:
        # The pool's task function closes over its counter, and Prefect ships the running
        # task (context included) with every chunk it hands to Dask: a counter arrives
        # there new, since what it counts is this process's runs (and a lock cannot travel).
        return (RunCounter, ())


@dataclass(frozen=True)
class PoolTask:
    """A pool's background task: what its workers serve and how work is handed to it."""

    pool: str
    task: Task
    previous: tuple[Task, ...] = ()
    running: RunCounter = field(default_factory=RunCounter, compare=False)

    @property
    def served(self) -> tuple[Task, ...]:
        """Every task a worker of the pool subscribes to (today's key and earlier ones)."""
        return (self.task, *self.previous)

    async def adispatch(self, client: PrefectClient, **parameters: object) -> str:
        """Create a run of the pool's task on an open client; returns the task run id."""
        return await adefer(client, self.task, parameters)

    def dispatch(self, **parameters: object) -> str:
        """``adispatch`` from a thread without an event loop (maintenance loops)."""
        return defer(self.task, parameters)


@cache
def pool_task(pool: str) -> PoolTask:
    """The background task of a task-served pool; ValueError for a pool without one."""
    spec = get_pool(pool).task
    if spec is None:
        raise ValueError(
            f"pool {pool!r} serves no background task; expected one of {', '.join(task_pools())}"
        )
    running = RunCounter()
    run = _bind_pool(_load(spec.run), pool, running)
    return PoolTask(
        pool,
        _keyed(run, spec.name, spec.name),
        tuple(_keyed(run, spec.name, key) for key in spec.previous_keys),
        running,
    )


def dispatchers() -> dict[str, PoolTask]:
    """Every task-served pool's ``PoolTask``: what the API is given to hand work over."""
    return {pool: pool_task(pool) for pool in task_pools()}


def serve_pool_task(pool: str, limit: int | None = None) -> None:
    """Serve ``pool``'s task with the serve function the registry names, until interrupted,
    beating as one of the pool's task workers (store/workers.py) meanwhile."""
    spec = get_pool(pool).task
    if spec is None:
        raise ValueError(f"pool {pool!r} has no task workers; it runs flow runs only")
    served = pool_task(pool)
    with heartbeating(WorkerKind.TASK_WORKER, pool, served.running.count):
        _load(spec.serve)(served, limit or spec.limit)


class KeyedTask(Task):
    """A task whose key is given, not derived from its code. Prefect's task worker serves
    copies made with ``with_options``, which would derive the key again: keep it there."""

    def with_options(self, *args: Any, **kwargs: Any) -> Task:
        """``Task.with_options``, keeping this task's key."""
        copy = super().with_options(*args, **kwargs)
        copy.task_key = self.task_key
        return copy


def _keyed(run: Callable[..., object], name: str, key: str) -> Task:
    task = KeyedTask(run, name=name, cache_policy=NO_CACHE, persist_result=False, retries=0)
    task.task_key = key
    return task


def _bind_pool(run: Callable[..., object], pool: str, running: RunCounter) -> Callable[..., object]:
    """``run`` with its first argument (the pool) given: the task's parameters are the rest.
    Each call counts as work in flight while it runs."""

    def run_on_pool(*args: object, **kwargs: object) -> object:
        with running:
            return run(pool, *args, **kwargs)

    signature = inspect.signature(run)
    run_on_pool.__signature__ = signature.replace(  # type: ignore[attr-defined]  # read by inspect
        parameters=list(signature.parameters.values())[1:]
    )
    run_on_pool.__doc__ = run.__doc__
    return run_on_pool


def _load(target: str) -> Callable[..., object]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
