"""``python -m api`` (``make api``): the REST API, plus in the embedded mode a Prefect server,
a serve process that runs the submitted flows and the bot task workers."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack

import uvicorn

from deployments.serve import served_bot_tasks, served_flows, served_task_workers
from flows.runtime import prefect_api
from relay_settings import get_settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("relay.api")


def main() -> int:
    """Start the API (and the embedded Prefect pieces when no PREFECT_API_URL is set)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if not settings.api_token and settings.api_host not in LOOPBACK:
        print(
            f"error: RELAY_API_TOKEN is not set, so the API may only bind to 127.0.0.1, "
            f"not {settings.api_host}",
            file=sys.stderr,
        )
        return 2
    if not settings.api_token:
        log.warning(
            "RELAY_API_TOKEN is not set: the API accepts anyone on this machine and "
            "listens on %s only",
            settings.api_host,
        )
    embedded = not os.environ.get("PREFECT_API_URL")
    with prefect_api() as api_url, ExitStack() as stack:
        if embedded:
            log.info("embedded mode: Prefect at %s, serving the flows locally", api_url)
            stack.enter_context(served_flows(settings.transcribe_deployment))
            stack.enter_context(served_bot_tasks())
            if settings.transcribe_via == "task-worker":  # submissions need the pool's worker
                pool = settings.transcribe_deployment.split("/")[-1]
                stack.enter_context(served_task_workers("flows.asr_tasks", (pool,)))
        from api.app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            access_log=settings.api_access_log,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
