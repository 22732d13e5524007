"""Prefect's dual sync/async calls, made from synchronous code and typed as such.

Prefect types a call it dispatches by context (``Block.load``, ``run_deployment``,
``create_progress_artifact``, ...) as "the value or a coroutine of it"; from synchronous
code it is the value, and these say so to the type checker.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from prefect.blocks.core import Block

BlockT = TypeVar("BlockT", bound=Block)
T = TypeVar("T")


def settled(value: T | Coroutine[Any, Any, T]) -> T:
    """The value of a dispatched Prefect call made outside an event loop."""
    if isinstance(value, Coroutine):
        value.close()
        raise RuntimeError("called under an event loop: use Prefect's async variant there")
    return value


def load_block(kind: type[BlockT], name: str) -> BlockT:
    """``kind.load(name)`` run synchronously, even under a running event loop (where Prefect's
    dispatch would otherwise hand back a coroutine). Raises ``ValueError`` for an unknown name.
    """
    # With _sync=True, async_dispatch always runs the synchronous load: the block itself.
    block = kind.load(name, _sync=True)  # type: ignore[call-arg]  # async_dispatch pops _sync; its signature omits it
    return cast(BlockT, block)
