"""Answering one bot request: the provider call through its key pool, the answer stored."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from bot_config import BotConfig, is_kind
from relay_settings import get_settings
from store.bot import StoredFile
from store.models import BotRequest
from tasks.providers import ChatAnswer, MediaAnswer
from tasks.quota import KeyPool, Spent, key_pool


@dataclass(frozen=True)
class Answer:
    """What the provider gave, stored: the text and the files under the request's folder."""

    text: str
    files: list[StoredFile]
    provider: str
    model: str
    spent: Spent
    upstream_seconds: float


def answer_folder(request_id: str) -> Path:
    """Where a request's files live: ``<data_dir>/bot/<request id>/``."""
    return Path(get_settings().data_dir) / "bot" / request_id


def ask_provider(request: BotRequest, config: BotConfig) -> Answer:
    """Call the kind's provider with a key of its pool; raises ``UpstreamError`` (refused or
    every key failing) or ``QuotaExhaustedError`` (no key free before the deadline)."""
    if not is_kind(request.kind):
        raise KeyError(request.kind)  # as the lookup would: the API takes no other kind
    choice = config.providers[request.kind]
    pool = key_pool(choice.key_pool)
    deadline = time.monotonic() + choice.deadline_seconds
    call = _caller(pool, request, choice.model, deadline)
    started = time.monotonic()
    result, spent = pool.call(call, deadline)
    elapsed = time.monotonic() - started
    if isinstance(result, ChatAnswer):
        return Answer(result.text, [], pool.provider, result.model, spent, elapsed)
    stored = _store(request.id, result)
    return Answer("", [stored], pool.provider, choice.model, spent, elapsed)


class _CallArguments(TypedDict):
    """What every provider call takes besides its key and model."""

    base_url: str
    timeout: float
    prompt: str


def _caller(
    pool: KeyPool, request: BotRequest, model: str, deadline: float
) -> Callable[[str], ChatAnswer | MediaAnswer]:
    """``secret -> answer`` for the request's kind on the pool's provider."""
    from tasks.providers import minimax, openai_api, stability

    block, prompt = pool.block, request.prompt
    common: _CallArguments = {
        "base_url": block.base_url,
        "timeout": block.timeout_seconds,
        "prompt": prompt,
    }
    if request.kind == "chat":
        if block.provider != "openai":
            raise ValueError(f"chat needs an openai key pool, not {block.provider}")
        return lambda secret: openai_api.chat(api_key=secret, model=model, **common)
    if request.kind == "image":
        if block.provider == "openai":
            return lambda secret: openai_api.image(api_key=secret, model=model, **common)
        if block.provider == "stability":
            return lambda secret: stability.image(api_key=secret, endpoint=model, **common)
        raise ValueError(f"images need an openai or stability key pool, not {block.provider}")
    if block.provider != "minimax":
        raise ValueError(f"videos need a minimax key pool, not {block.provider}")
    return lambda secret: minimax.video(
        api_key=secret,
        model=model,
        deadline_seconds=max(deadline - time.monotonic(), 1.0),
        **common,
    )


def _store(request_id: str, media: MediaAnswer) -> StoredFile:
    folder = answer_folder(request_id)
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", media.file_name)[:100] or "answer.bin"
    (folder / name).write_bytes(media.data)
    return StoredFile(name=name, size=len(media.data), mime_type=media.mime_type)
