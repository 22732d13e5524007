"""``python -m api`` (``make api``): the REST API, plus in the embedded mode a Prefect server
and a serve process that runs the submitted flows."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import uvicorn

from flows.runtime import prefect_api
from relay_settings import get_settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("relay.api")


def _wait_for_deployment(name: str, server: subprocess.Popen, limit: float = 120.0) -> None:
    """Accept uploads only once the serve process has registered the deployment."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                time.sleep(0.5)
    log.warning("deployment %s is not served yet; submissions answer 503 until it is", name)


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL: Prefect 3.8's serve does not always exit on SIGTERM alone."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    with prefect_api() as api_url:
        server = None
        if embedded:
            log.info("embedded mode: Prefect at %s, serving the flows locally", api_url)
            # Poll the local server every second: submissions start within ~1 s, not 10.
            env = {"PREFECT_RUNNER_POLL_FREQUENCY": "1", **os.environ}
            server = subprocess.Popen([sys.executable, "-m", "deployments.serve"], env=env)
            _wait_for_deployment(settings.transcribe_deployment, server)
        try:
            from api.app import create_app

            uvicorn.run(
                create_app(settings),
                host=settings.api_host,
                port=settings.api_port,
                access_log=settings.api_access_log,
            )
        finally:
            if server:
                _stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
