"""Loading a block by name from synchronous code, typed."""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.blocks.core import Block

BlockT = TypeVar("BlockT", bound=Block)


def load_block(kind: type[BlockT], name: str) -> BlockT:
    """``kind.load(name)`` run synchronously, even under a running event loop (where Prefect's
    dispatch would otherwise hand back a coroutine). Raises ``ValueError`` for an unknown name.
    """
    # Block.load is async_dispatch-ed: typed as "the block or a coroutine of it" and its
    # ``_sync`` switch is not in the signature; with _sync=True it is always the block.
    block = kind.load(name, _sync=True)  # type: ignore[call-arg]  # async_dispatch pops _sync before the call
    return cast(BlockT, block)
