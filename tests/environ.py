"""Module-long environment changes for fixtures that start processes (which read os.environ)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from relay_settings import RelaySettings, reload_settings


@contextmanager
def environment(values: dict[str, str]) -> Iterator[RelaySettings]:
    """Set ``values`` in ``os.environ`` (and Relay's settings, given to the block) for the
    block, then restore."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    settings = reload_settings()
    try:
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reload_settings()
