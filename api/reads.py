"""Store reads from the event loop: in a worker thread, at most as many at once as the
engine's pool keeps connections.

Starlette's thread pool runs 40 calls at once, while the store's engine keeps 10 connections
(store.db). Under load the extra threads each opened and closed an overflow connection per
request, a new PostgreSQL backend every time; ``bench/api.py`` measured that churn as a tail
of 100+ ms. Holding reads to the pool's size makes them queue for a kept connection instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

import anyio
from anyio.to_thread import run_sync

from store.db import POOL_SIZE

P = ParamSpec("P")
T = TypeVar("T")

# One limiter per event loop: a limiter's waiters belong to the loop that made them, and a
# process can run several loops one after another (tests, uvicorn reloads).
_limiters: WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = WeakKeyDictionary()


def _reads() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(POOL_SIZE)
    return limiter


async def read(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` in a worker thread, one of at most POOL_SIZE reads."""
    if kwargs:
        return await run_sync(lambda: function(*args, **kwargs), limiter=_reads())
    return await run_sync(function, *args, limiter=_reads())


# Work given up on by ``within``: kept referenced until it ends (the loop holds tasks weakly).
_abandoned: set[asyncio.Future[Any]] = set()


async def within(seconds: float, work: Awaitable[T]) -> T:
    """``work``'s result, or TimeoutError once ``seconds`` have passed. A thread cannot be
    stopped: work given up on runs to its end (a read keeps its connection until then), and
    its result or error is dropped."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    _abandoned.add(task)
    task.add_done_callback(_forget)
    return await asyncio.wait_for(asyncio.shield(task), seconds)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" for work given up
