"""A real ``python -m cli worker --pool POOL`` process for a test module, its output in a log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from relay_settings import PROJECT_ROOT


@contextmanager
def asr_cpu_worker(log: Path, limit: int, **env: str) -> Iterator[subprocess.Popen]:
    """An asr-cpu task worker on the session's Prefect server with its own warm LocalCluster
    of one Dask worker (no RELAY_DASK_ADDRESS: this machine has two cores for everything),
    plus ``env``; stopped as an operator would (SIGTERM), killed if it hangs."""
    variables = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RELAY_DASK_ADDRESS": "",
        "RELAY_DASK_WORKERS": "1",
        **env,
    }
    command = [sys.executable, "-m", "cli", "worker", "--pool", "asr-cpu", "--limit", str(limit)]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=variables, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
