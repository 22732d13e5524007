"""``GET /metrics``: Prometheus text. The API's requests per route template (through
prometheus-fastapi-instrumentator), what finished in this process (``tasks.metrics``), and
the gauges read from the store at each scrape (``tasks.gauges``).

With several API processes (``RELAY_API_WORKERS`` > 1) every process writes its counters
to files in one folder (prometheus_client's multiprocess mode, which ``python -m cli api``
empties and names before the processes start), and whichever process is scraped adds them
all up. Open by default, as Prometheus expects; ``RELAY_METRICS_TOKEN`` closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info

from api.auth import check_bearer
from api.errors import error_responses
from relay_settings import DEFAULT_STATE_DIR, RelaySettings
from tasks.gauges import RelayGauges, WorkerRow
from tasks.metrics import http_request_done

log = logging.getLogger("relay.metrics")

router = APIRouter(tags=["metrics"])
# Declares the optional scheme in the OpenAPI document; the check is check_bearer's.
metrics_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MetricsToken",
    description="RELAY_METRICS_TOKEN (the endpoint is open when it is not set)",
)


def multiproc_dir(settings: RelaySettings) -> Path:
    """Where the API's processes keep their metric files when there are several."""
    default = DEFAULT_STATE_DIR / "metrics" / f"api-{settings.api.port}"
    return Path(settings.metrics.multiproc_dir or default)


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics: requests, work finished here, gauges from the store",
    response_class=Response,  # no default body: the 200 is text, the 401 JSON
    responses={
        200: {
            "description": "Prometheus text format 0.0.4 (docs/ops-metrics.md)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(401, _401="RELAY_METRICS_TOKEN is set: missing or wrong token"),
    },
    openapi_extra={"security": [{}]},  # besides MetricsToken: open when none is set
)
def metrics(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)] = None,
) -> Response:
    check_bearer(request, request.app.state.settings.metrics.token.get_secret_value())
    exposition: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(exposition), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def install(
    app: FastAPI,
    settings: RelaySettings,
    workers: Callable[[], Iterable[WorkerRow]] | None = None,
) -> RelayGauges:
    """The route, the request metrics (unless ``RELAY_METRICS_HTTP=false``) and the
    exposition registry; returns the gauges' collector (its ``prefect`` reader is closed
    with the app). ``workers`` lists live workers' heartbeats for
    ``relay_worker_last_seen_seconds``."""
    gauges = RelayGauges(settings.metrics.prefect_timeout_seconds, workers)
    exposition = CollectorRegistry(auto_describe=False)
    if settings.api.workers > 1 and values.ValueClass is not values.MutexValue:
        path = str(multiproc_dir(settings))
        MultiProcessCollector(exposition, path=path)  # type: ignore[no-untyped-call]
    else:
        if settings.api.workers > 1:  # started some other way than `python -m cli api`
            log.error("RELAY_API_WORKERS > 1 without PROMETHEUS_MULTIPROC_DIR: each process "
                      "serves only its own counters")  # fmt: skip
        exposition.register(_ThisProcess())
    exposition.register(gauges)
    app.state.metrics_registry = exposition
    if settings.metrics.http:
        # Route templates, never raw paths: a path no route matches counts as handler "none".
        Instrumentator(should_group_status_codes=True, should_group_untemplated=True).add(
            _record
        ).instrument(app)
    app.include_router(router)
    return gauges


def _record(info: Info) -> None:
    http_request_done(
        info.modified_handler, info.method, info.modified_status, info.modified_duration
    )


class _ThisProcess(Collector):
    """The process's own registry (one API process): requests, work finished here, and
    prometheus_client's process and Python collectors."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()
