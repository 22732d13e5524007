"""Dask worker preload: load the faster-whisper model when the worker starts.

``dask worker SCHEDULER --preload deployments.dask_preload`` (run from the repo root, or
with it on ``PYTHONPATH``). Chunk tasks then find the model in the worker process's cache
(``tasks.asr.load_model``), so no job pays for loading it. Uses the same RELAY_ASR_*
settings as the flow, so the cached model is the one the tasks ask for.
"""

from __future__ import annotations

import logging
import time

from relay_settings import get_settings
from tasks.asr import AsrOptions, load_model

log = logging.getLogger("relay.dask_preload")


def dask_setup(worker) -> None:  # noqa: ARG001  (Dask's preload hook signature)
    """Called by Dask once in each worker process, before it takes any task."""
    started = time.perf_counter()
    options = AsrOptions.from_settings(get_settings())
    load_model(options)

    try:  # chunks report their progress to the job store: connect now, not mid-chunk
        from store.db import get_engine

        get_engine()
    except Exception as err:
        log.warning("the job store is not reachable from this worker: %s", err)
    log.info(
        "model %s (%s/%s) loaded in %.1f s",
        options.model,
        options.device,
        options.compute_type,
        time.perf_counter() - started,
    )
